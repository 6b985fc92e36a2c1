/**
 * Path traversal and local/remote file inclusion (CRS 930, 931): `../` after decoding (every
 * encoding reaches the signatures decoded), well-known OS, server and secret files, remote
 * includes (a URL to an IP address or ending in `?`), and XML external entities.
 */
import { ALL, ARG, BODY, COOKIE, HEADER, PATH, regex, type Signature } from './signature.js';

const NO_HEADERS = PATH | ARG | COOKIE | BODY;
// Slashes, with the Unicode look-alikes NFKC leaves alone (∕ ∖ ⁄ ⧵).
const SL = '[\\\\/\\u2215\\u2216\\u2044\\u29f5]';
const B = `(?:^|${SL}|[=:'"])`;

// Every quantifier follows a fixed start (a slash, `;` or the value's start), keeping it linear.
const TRAVERSAL = new RegExp(`(?:^|${SL}|;)\\.{2,}(?:${SL}|;|\\x00|$)|\\.\\.${SL}{1,2}\\.\\.`);

const UNIX_FILES = String.raw`etc${SL}(?:passwd|shadow|group|gshadow|hosts|hostname|issue|motd|crontab|sudoers|resolv\.conf|fstab|mtab|os-release|lsb-release|redhat-release|debian_version|profile|environment|inittab|shells|master\.passwd|pwd\.db|spwd\.db|my\.cnf|(?:security|pam\.d|ssh|apache2?|httpd|nginx|mysql|php\d?(?:\.\d)?|init\.d|network|sysconfig|cron\.d|ssl)${SL})`;
const PROC_FILES = String.raw`proc${SL}(?:self|thread-self|\d{1,7})${SL}|proc${SL}(?:version|cpuinfo|meminfo|mounts|net${SL}|sched_debug|partitions|cmdline|environ|kcore)`;
const VAR_FILES = String.raw`var${SL}(?:log${SL}|run${SL}secrets|lib${SL}(?:mysql|php)|mail${SL}|spool${SL}cron|www${SL}\.)|usr${SL}local${SL}(?:etc|apache2?)${SL}|root${SL}\.|home${SL}[^\\/\s]{1,40}${SL}\.(?:ssh|bash_history|aws)`;
const DOTFILES = String.raw`\.(?:htaccess|htpasswd|htdigest|env(?:\.[\w-]{1,20})?(?=$|[?#;&\s])|git${SL}(?:config|HEAD|index|logs)|svn${SL}|hg${SL}|bzr${SL}|ssh${SL}(?:id_\w{1,20}|authorized_keys|known_hosts)|bash_history|zsh_history|mysql_history|psql_history|aws${SL}credentials|docker${SL}config\.json|kube${SL}config|npmrc|netrc|pgpass|git-credentials|user\.ini|DS_Store)`;
const WINDOWS_FILES = String.raw`(?:boot\.ini|win\.ini|system\.ini|autoexec\.bat|config\.sys|(?:windows|winnt)${SL}(?:system32|win\.ini|repair|panther|system\.ini)|system32${SL}(?:config|drivers)|inetpub${SL}|web\.config|applicationhost\.config|machine\.config|\$recycle\.bin|pagefile\.sys|unattend\.xml|sysprep\.inf)`;
const APP_FILES = String.raw`(?:WEB-INF|META-INF)(?:${SL}|$)|wp-config\.php|config\.inc\.php|localsettings\.php|php\.ini(?=$|[?#;&\s])`;

const FILES = new RegExp(`${B}(?:${UNIX_FILES}|${PROC_FILES}|${VAR_FILES}|${DOTFILES}|${WINDOWS_FILES}|${APP_FILES})|[a-z]:${SL}(?:${WINDOWS_FILES}|windows${SL}|users${SL}[^\\\\/]{1,40}${SL}(?:ntuser\\.dat|appdata))`, 'i');

export const traversalSignatures: readonly Signature[] = [
  regex('lfi-traversal', 'lfi', 1, NO_HEADERS, 'path traversal', TRAVERSAL),
  regex('lfi-os-file', 'lfi', 1, NO_HEADERS, 'sensitive file access', FILES),
  regex('lfi-remote-include', 'lfi', 1, ARG | COOKIE, 'remote file inclusion', /^\s{0,8}(?:https?|ftps?):\/\/(?:[^?#\s]{1,500}\?+|\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}(?::\d{1,5})?\/[^?#\s]{0,200}\.(?:txt|php\d?|phtml|jsp|asp|sh|pl|py)(?:\?[^\s]{0,100})?)$/i),
  regex('lfi-xxe', 'lfi', 1, ARG | BODY, 'XML external entity', /<!ENTITY\s[^>]{0,300}?\b(?:SYSTEM|PUBLIC)\b|<!DOCTYPE\s[^>[]{0,300}\[\s{0,20}<!ENTITY|<xi:include\b/i),
  // Paranoia 2: any `..`, any /etc/ or drive path, and headers too.
  regex('lfi-dots', 'lfi', 2, ALL, 'dot-dot sequence', /\.\.[\\/;]|(?:^|[\\/;])\.\./),
  regex('lfi-system-path', 'lfi', 2, ARG | COOKIE | HEADER | BODY, 'system path', /(?:^|[\s=:'"/\\])(?:etc|proc|sys|dev|boot|var|root)[\\/][a-z]|^[a-z]:[\\/]/i),
  regex('lfi-os-file-header', 'lfi', 2, HEADER, 'sensitive file in a header', FILES),
];
