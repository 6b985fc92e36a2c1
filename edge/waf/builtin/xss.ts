/**
 * Cross-site scripting (CRS 941): script and other active tags, event-handler attributes,
 * script URIs, script data URIs, JavaScript sinks right after a break-out character, CSS
 * expressions. Ordinary markup (`<b>`, `<p>`, "a<b") is left to paranoia 2 and 3.
 */
import { ARG, BODY, COOKIE, HEADER, PATH, custom, regex, type Signature } from './signature.js';

const SCOPE = PATH | ARG | COOKIE | HEADER | BODY;

/** `word` with up to 4 whitespace/NUL characters allowed between letters (browsers drop them in URLs). */
function spaced(word: string): string {
  return [...word].join('[\\s\\x00]{0,4}');
}

const HANDLER = /(?:^|[\s"'`/;(<])on[a-z]{3,40}\s{0,10}=/i;
// Unquoted attribute context: the handler's value calls something.
const HANDLER_CALL = /(?:^|[\s"'`/;(<])on[a-z]{3,40}\s{0,10}=\s{0,10}['"`]?[\w$.[\]]{1,80}[(`=]/i;

const handler = custom('xss-event-handler', 'xss', 1, SCOPE, 'event handler attribute', (form) => {
  if (form.indexOf('=') === -1) return undefined;
  const quoted = form.includes('<') || form.includes('"') || form.includes("'") || form.includes('`');
  const m = (quoted ? HANDLER : HANDLER_CALL).exec(form);
  return m === null ? undefined : m[0];
});

export const xssSignatures: readonly Signature[] = [
  regex('xss-script-tag', 'xss', 1, SCOPE, 'script tag', /<\/?script\b/i),
  regex('xss-active-tag', 'xss', 1, SCOPE, 'active HTML tag', /<\/?(?:iframe|frame|frameset|object|embed|applet|meta|base|style|math|isindex|xss|xmp|bgsound|layer|ilayer|import|portal)(?=[\s/>]|$)/i),
  handler,
  regex('xss-script-uri', 'xss', 1, SCOPE, 'script URI', new RegExp(`(?:${spaced('javascript')}|${spaced('vbscript')}|${spaced('livescript')})[\\s\\x00]{0,4}:[^(=\\\\[\`<]{0,200}[(=\\\\[\`<]`, 'i')),
  regex('xss-data-uri', 'xss', 1, SCOPE, 'script data URI', /\bdata\s{0,4}:\s{0,4}(?:text\/html|image\/svg[+ ]xml|text\/(?:x-)?(?:javascript|ecmascript)|application\/(?:x-)?(?:javascript|ecmascript)|application\/xhtml[+ ]xml)/i),
  regex('xss-js-sink', 'xss', 1, SCOPE, 'JavaScript call after a break-out', /(?:^|[;'"`\-+*/|&({=[,!?:>}])\s{0,10}(?:alert|prompt|confirm|eval|atob|settimeout|setinterval|fetch|import)\s{0,10}(?:`|\(\s{0,10}(?:[^\sa-z_$]|[a-z_$][\w$]{0,40}\s{0,4}[.([]))|\bdocument\s*\.\s*(?:cookie|domain|write(?:ln)?\s*\()|\bwindow\s*\.\s*location\s*=|\.\s*fromCharCode\s*\(|\bconstructor\s*\.\s*constructor\b|\[\s*['"`]constructor['"`]\s*\]|\b(?:top|self|window|parent|frames|globalThis)\s*\[\s*['"`]/i),
  regex('xss-css', 'xss', 1, SCOPE, 'CSS script vector', /[:=]\s{0,10}expression\s*\(|-moz-binding\s*:|\bbehavior\s*:\s*url\s*\(|@import\s+(?:url|['"])/i),
  regex('xss-template', 'xss', 1, SCOPE, 'client template injection', /\{\{[^}]{0,200}\b(?:constructor|\$eval|\$on|\$emit)\b/i),
  // Paranoia 2: any HTML tag; paranoia 3: any '<' that could open one.
  regex('xss-html-tag', 'xss', 2, SCOPE, 'HTML tag', /<\/?[a-z][a-z0-9-]{0,30}(?=[\s/>]|$)/i),
  regex('xss-angle', 'xss', 3, SCOPE, 'markup character', /<[a-z!/?%]|\bon[a-z]{3,40}\s*=/i),
];
