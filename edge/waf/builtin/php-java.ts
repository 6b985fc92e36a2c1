/**
 * PHP (CRS 933) and Java (CRS 944) injection: PHP open tags, stream wrappers, high-risk
 * function calls, superglobals and serialized objects; Log4Shell lookups (plain and nested),
 * Java runtime/reflection classes, OGNL and SpEL expressions, Spring4Shell class-loader
 * paths and serialized Java objects.
 */
import { ALL, ARG, BODY, COOKIE, HEADER, PATH, custom, regex, type Signature } from './signature.js';

const SCOPE = PATH | ARG | COOKIE | HEADER | BODY;

const PHP_STRONG = 'shell_exec|passthru|proc_open|pcntl_exec|popen|base64_decode|gzinflate|gzuncompress|gzdecode|str_rot13|create_function|call_user_func(?:_array)?|file_get_contents|file_put_contents|phpinfo|unserialize|highlight_file|show_source|move_uploaded_file|fsockopen|pfsockopen|assert_options|preg_replace|posix_\\w{2,20}|escapeshellcmd|escapeshellarg|register_shutdown_function|ini_set|putenv|get_defined_vars|array_map|convert_uudecode|hex2bin';

export const phpSignatures: readonly Signature[] = [
  regex('php-open-tag', 'php', 1, SCOPE, 'PHP open tag', /<\?(?:php\b|=|\s)/i),
  regex('php-wrapper', 'php', 1, ALL, 'PHP stream wrapper', /\b(?:php|expect|phar|zip|glob|data|zlib|compress\.zlib|compress\.bzip2|rar|ogg|ssh2\.\w{1,10})\s{0,4}:\/\//i),
  regex('php-function', 'php', 1, SCOPE, 'high-risk PHP function call', new RegExp(`\\b(?:${PHP_STRONG})\\s{0,8}\\(|\\b(?:eval|assert|system|exec|include|include_once|require|require_once|fopen|readfile|print_r|var_dump)\\s{0,4}\\(\\s{0,8}(?:[$'"\`(]|base64|str_rot|gz|chr\\b)`, 'i')),
  regex('php-variables', 'php', 1, SCOPE, 'PHP superglobal', /\$_(?:GET|POST|REQUEST|COOKIE|SERVER|FILES|ENV|SESSION)\b|\$GLOBALS\b|\$HTTP_\w{1,20}_VARS\b|\$\{\s{0,4}@/),
  regex('php-object', 'php', 1, SCOPE, 'PHP serialized object', /\b[OC]:\d{1,5}:"[\w\\]{1,200}":\d{1,5}:\{/),
  regex('php-config', 'php', 1, SCOPE, 'PHP configuration directive', /\b(?:allow_url_include|allow_url_fopen|auto_prepend_file|auto_append_file|disable_functions|open_basedir|safe_mode)\s{0,4}=/i),
  // Paranoia 2: any PHP-ish function call or `<?`.
  regex('php-function-name', 'php', 2, SCOPE, 'PHP function name', /\b(?:eval|assert|system|exec|include|require|fopen|readfile|phpinfo|chr)\s{0,4}\(|<\?(?!xml\b)/i),
];

/** Log4Shell: `${jndi:`, and any lookup nested in another (the obfuscated forms). */
const LOG4J = /\$\{[^}]{0,30}\$\{|\$\{\s{0,8}(?:jndi|ctx|env|sys|java|lower|upper|main|date|base64|bundle|docker|k8s|kubernetes|log4j|marker|spring|web|event|map|sd|script)\s{0,8}:|\bjndi\s{0,4}:\s{0,4}(?:ldaps?|rmi|dns|iiop|corba|nis|nds|https?)\s{0,4}:/i;

export const javaSignatures: readonly Signature[] = [
  custom('java-log4shell', 'java', 1, ALL, 'Log4j JNDI lookup', (form) => {
    if (!form.includes('${') && !/jndi/i.test(form)) return undefined;
    const m = LOG4J.exec(form);
    return m === null ? undefined : m[0];
  }),
  regex('java-runtime', 'java', 1, SCOPE, 'Java runtime or reflection class', /\bjava\.lang\.(?:Runtime|ProcessBuilder|ProcessImpl|System|Class|Thread|reflect)\b|\bRuntime\s*\.\s*getRuntime\s*\(|\bProcessBuilder\b|\bjavax\.script\.ScriptEngine|\bjava\.(?:io\.File(?:InputStream|OutputStream|Reader|Writer)?|net\.(?:URL|Socket|URLClassLoader))\b|getClass\s*\(\s*\)\s*\.\s*(?:forName|getClassLoader)|\.getDeclaredMethod\s*\(|\borg\.apache\.commons\.collections|\bcom\.sun\.org\.apache\.xalan|\bjava\.beans\.XMLDecoder|\bcom\.sun\.rowset\.JdbcRowSetImpl|\b(?:TemplatesImpl|JndiDataSourceFactory|JdbcRowSetImpl)\b|\bnew\s+java\.\w|\bT\s*\(\s*java\.|<java\s+version\s*=/),
  regex('java-ognl', 'java', 1, SCOPE, 'OGNL / expression language', /[%$#]\{\s{0,8}\(?\s{0,8}#|#_memberAccess|@ognl\.|\bognl\.OgnlContext|DEFAULT_MEMBER_ACCESS|#(?:context|attr|request|application|session|parameters)\s*\[|\bxwork\.MethodAccessor|@java\.lang\.|\(#\w{1,40}\s*=|%\{[^}]{0,100}@\w/),
  regex('java-classloader', 'java', 1, SCOPE, 'class loader manipulation', /\bclass\s*\.\s*(?:module\s*\.\s*)?classLoader\b|\bclass\s*\[\s*['"]?(?:module|classLoader)|\[\s*['"]classLoader['"]\s*\]|\.classLoader\.(?:resources|URLs|parent|DefaultAssertionStatus)/i),
  regex('java-serialized', 'java', 1, SCOPE, 'serialized Java object', /(?:^|[\s"'=:,])(?:rO0AB|KztAAU|Cs7QAF)|\brO0ABX[NQ]|^\s*aced0005|\xac\xed\x00\x05/),
  // Paranoia 2: any lookup syntax or Java package reference.
  regex('java-expression', 'java', 2, SCOPE, 'expression language syntax', /[$#%]\{[^}]{0,100}[.(@#]|\bjava\.(?:lang|io|net|util)\.\w/),
];
