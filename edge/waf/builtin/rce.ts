/**
 * OS command injection (CRS 932): a shell command right after a command separator (`;`, `|`,
 * `&`, newline, backtick, `$(`), shell-only syntax (`${IFS}`, `/dev/tcp/`, Shellshock),
 * download-and-run, reverse shells, Windows shells, and server-side template probes.
 * Commands that are also English words ("find", "more", "type") need command-like arguments,
 * and the words are matched lower-case only (shells are case-sensitive; prose capitalises).
 */
import { ARG, BODY, COOKIE, HEADER, PATH, custom, regex, type Signature } from './signature.js';

const SCOPE = PATH | ARG | COOKIE | HEADER | BODY;

/** Commands that are an attack on their own after a separator (`;id`, `|whoami`). */
const ALONE = 'whoami|id|uname|ls|dir|pwd|ifconfig|ipconfig|hostname|ps|env|printenv|netstat|systeminfo|tasklist|lsb_release|bash|sh|zsh|ksh|dash|csh|tcsh|getent|nproc';
/** Commands that count with command-like arguments (flags, paths, `$`, quotes, digits). */
const WITH_ARGS = 'cat|more|less|head|tail|type|find|sort|sleep|kill|echo|printf|ping|host|dig|nslookup|touch|rm|cp|mv|grep|egrep|awk|sed|curl|wget|nc|ncat|netcat|telnet|php|python[23]?|perl|ruby|node|lua|chmod|chown|base64|xxd|tftp|ftp|powershell|pwsh|cmd|certutil|net|sc|reg|wmic|bitsadmin|crontab|useradd|usermod|mkfifo|socat|busybox|nohup|timeout|tar|openssl|ssh|scp|lynx|fetch|gcc|whois|traceroute|tracert|nmap|eval|exec|expr|xargs|tee|od|tac|nl|strings|rev|cut|ls|id|uname|ps|dir|env|sudo|su|systemctl|service|mshta|rundll32|regsvr32|cscript|wscript|taskkill|del|icacls|attrib|vssadmin|dd|stat|readlink|iptables|killall|pkill|passwd|chattr|unset|export|source|start|bash|sh|zsh';
const NET = 'curl|wget|nc|ncat|netcat|ping|nslookup|dig|host|telnet|ftp|tftp|lynx|fetch|whois|traceroute|tracert|ssh|scp|socat|nmap';

// A separator, then an optional subshell brace, prefix command and bin path.
const SEP = String.raw`(?:[;\n\r\x60|]|&|\$\()\s{0,8}(?:[({]\s{0,4})?(?:(?:sudo|nohup|busybox|env|exec|timeout\s+\d{1,4})\s+)?(?:\/(?:usr\/)?(?:local\/)?s?bin\/)?`;
const ARGS = String.raw`(?:\s{1,8}(?:-{1,2}[a-zA-Z]|[/~.$'"]|\\\\|[a-zA-Z]:\\|(?:https?|ftps?|tftp):\/\/)|\s{0,8}<\s{0,4}[/~.$])`;

const AFTER_SEPARATOR = new RegExp(
  `${SEP}(?:(?:${ALONE})(?=\\s{0,8}(?:$|[;|&\\x60)#>]|-{1,2}[a-zA-Z]|\\/))|(?:${WITH_ARGS})${ARGS}|(?:sleep|ping|timeout|kill|nc|ncat|telnet)\\s{1,8}\\d|(?:${NET})\\s{1,8}[\\w.-]{1,100}\\.[a-z]{2,12}\\b)`,
);
/** Output redirected into a file: `|echo x > /tmp/y`. */
const REDIRECT = new RegExp(`${SEP}(?:echo|printf|cat|id|whoami|uname|ls)\\b[^\\n;|&]{0,200}>{1,2}\\s{0,4}[/~.$]`);
const WINDOWS = /(?:[;\n\r|]|&)\s{0,8}(?:whoami|ipconfig|systeminfo|tasklist|net\s+(?:user|localgroup|view|share|use)\b|powershell|certutil|bitsadmin|wmic|cmd(?:\.exe)?\s*\/[ck]|(?:type|dir)\s+[a-z]:\\)/i;
const SUBSTITUTION = new RegExp(`(?:\\$\\(|\\x60)\\s{0,8}(?:\\/(?:usr\\/)?s?bin\\/)?(?:${ALONE}|${WITH_ARGS})(?:\\s|\\)|\\x60|$)`);
const BRACES = new RegExp(`\\{\\s{0,4}(?:${ALONE}|${WITH_ARGS}),[^}]{0,100}\\}`);

/** Shell quoting tricks (`w'h'o'am'i`, `c\\at`, `wh$@oami`, `who^ami`) removed, as CRS t:cmdLine. */
function unquoted(s: string): string {
  return s.replace(/\$(?:@|\*|\{\}|\(\))|['"\\^]/g, '');
}
const OBFUSCATION = /['"\\^]|\$[@*({]/;

const separated = custom('rce-command', 'rce', 1, SCOPE, 'shell command after a separator', (form) => {
  let m = AFTER_SEPARATOR.exec(form) ?? REDIRECT.exec(form) ?? WINDOWS.exec(form) ?? SUBSTITUTION.exec(form) ?? BRACES.exec(form);
  if (m === null && OBFUSCATION.test(form)) {
    const plain = unquoted(form);
    m = AFTER_SEPARATOR.exec(plain) ?? SUBSTITUTION.exec(plain);
  }
  return m === null ? undefined : m[0];
});

export const rceSignatures: readonly Signature[] = [
  separated,
  regex('rce-shellshock', 'rce', 1, SCOPE, 'Shellshock function definition', /^\s*\(\s*\)\s*\{/),
  regex('rce-shell-syntax', 'rce', 1, SCOPE, 'shell-only syntax', /\$\{IFS\}|(?:\/[\w.]{0,8}[?*][\w.?*]{0,8}){2}|\$IFS\b|\/dev\/(?:tcp|udp)\/|\bbash\s+-[ic]\b|\bsh\s+-c\s|\/bin\/(?:ba|z|k|c|da|tc)?sh\b|\bnc(?:at)?\s+(?:-\w{1,8}\s+){0,4}-[a-z]{0,6}[ec]\s|\bmkfifo\s|\brm\s+-[rf]{1,3}\s+\/|\b(?:python[23]?|perl|ruby|php|node)\s+-[cer]\s|\bchmod\s+(?:[0-7]{3,4}|\+x)\s|\b(?:wget|curl)\s[^|;&\n]{0,200}\|\s{0,4}(?:ba|z|k)?sh\b|\b(?:wget|curl)\s+(?:-\w{1,20}\s+){0,4}-[oO]\s{1,4}\/tmp\//),
  regex('rce-windows', 'rce', 1, SCOPE, 'Windows shell', /\bcmd(?:\.exe)?\s*\/[ck]\s|\bpowershell(?:\.exe)?\s+(?:-\w{1,20}\s+){0,6}-(?:e(?:nc(?:odedcommand)?)?|c(?:ommand)?|w(?:indowstyle)?|nop(?:rofile)?|exec(?:utionpolicy)?)\b|\b(?:iex|invoke-expression|invoke-webrequest|invoke-shellcode|start-process)\b|\.downloadstring\s*\(|\bcertutil(?:\.exe)?\s+-urlcache|%(?:comspec|systemroot|windir)%/i),
  regex('rce-template', 'rce', 1, SCOPE, 'server-side template injection', /\{\{\s{0,8}['\"]?\d{1,6}['\"]?\s{0,4}[*+]\s{0,4}['\"]?\d{1,6}['\"]?\s{0,8}\}\}|[$#]\{\s{0,8}\d{1,6}\s{0,4}\*\s{0,4}\d{1,6}\s{0,8}\}|<%=\s{0,8}\d{1,6}\s{0,4}\*\s{0,4}\d{1,6}|__(?:class|mro|subclasses|globals|builtins|import|init)__|\{\{[^}]{0,100}\b(?:config|lipsum|cycler|joiner|namespace|request\.application)\b[^}]{0,100}\}\}|\{%[^%]{0,100}\b(?:import|popen|system)\b|freemarker\.template\.utility\.Execute|\?new\(\)\s{0,4}\(/),
  // Paranoia 2: any command word after a separator, any case.
  regex('rce-command-word', 'rce', 2, SCOPE, 'command word after a separator', new RegExp(`(?:[;\\n\\r\\x60|]|&&|\\$\\()\\s{0,8}(?:${ALONE}|${WITH_ARGS})\\b`, 'i')),
  // Paranoia 3: shell metacharacters followed by a word.
  regex('rce-metachar', 'rce', 3, PATH | ARG | COOKIE, 'shell metacharacter', /[;|`]\s{0,4}[a-z]{2,}|\$\(|\$\{/i),
];
