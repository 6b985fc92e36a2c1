/**
 * Protocol anomalies (CRS 920/921) and methods: request smuggling shapes (Content-Length with
 * Transfer-Encoding, odd or repeated framing headers, a request line inside a header), invalid
 * header names and values, header floods, CR/LF injection in URL values, null bytes, and
 * methods other than the ordinary seven.
 */
import type { WafRequest } from './index.js';
import { ALL, PATH, URL, custom, regex, type BuiltinMatch, type Family, type Paranoia, type Signature } from './signature.js';

const MAX_HEADERS: Record<Paranoia, number> = { 1: 100, 2: 50, 3: 40 };
const BAD_VALUE = /[\x00-\x08\x0a-\x1f\x7f]/;
// One test per header value on the hot path: framing anomalies, and what the value signatures
// look at in every header (lookups `${`/`%{`/`#{`, Shellshock `() {`, Java class names).
const SUSPECT_CHAR = /[\x00-\x08\x0a-\x1f\x7f{]/;
/** One alternation regex per header value cost a quarter of a hot hit's inspection; a class and three indexOf are a fraction. */
function suspectValue(value: string): boolean {
  if (value.length <= CLEAN_VALUE_MAX && cleanValues.has(value)) return false;
  const suspect = SUSPECT_CHAR.test(value) || value.indexOf('HTTP/') !== -1 || value.indexOf('java.') !== -1 || value.indexOf('getRuntime') !== -1;
  if (!suspect && value.length <= CLEAN_VALUE_MAX) {
    if (cleanValues.size >= CLEAN_VALUES) cleanValues.clear();
    cleanValues.add(value);
  }
  return suspect;
}

/** Header values seen clean: a client sends the same User-Agent, Accept and cookies every time. Bounded. */
const cleanValues = new Set<string>();
const CLEAN_VALUES = 8192;
const CLEAN_VALUE_MAX = 1024;

/** RFC 9110 tchar, as a table: a regex per header name cost more than the rest of the name checks. */
const TCHAR = new Uint8Array(128);
for (const c of "!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz") TCHAR[c.charCodeAt(0)] = 1;
function isToken(name: string): boolean {
  if (name.length === 0) return false;
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (c >= 128 || TCHAR[c] === 0) return false;
  }
  return true;
}
/** Headers a server may fetch or log, where scanners plant out-of-band callback domains. */
const CALLBACK_HEADERS = new Set(['referer', 'contact', 'origin', 'forwarded', 'x-real-ip', 'x-wap-profile', 'x-forwarded-for', 'x-forwarded-host']);
const CALLBACK_HINT = /oast|burpcollab|interact|dnslog|ceye|bxss|xss\.ht|requestrepo|canarytoken|eyes\.sh/i;
const REQUEST_IN_VALUE = /(?:^|\s)(?:GET|POST|HEAD|PUT|DELETE|OPTIONS|PATCH|TRACE|CONNECT)\s+\S{1,2000}\s+HTTP\/\d|HTTP\/[0-3](?:\.\d)?(?:\s|$)/;
const DIGITS = /^\d{1,18}$/;

export const methodRuleIds = ['method-disallowed', 'method-unknown', 'method-invalid'];
export const protocolRuleIds = [
  'protocol-cl-te', 'protocol-transfer-encoding', 'protocol-content-length-repeated', 'protocol-content-length-invalid',
  'protocol-header-name', 'protocol-header-value', 'protocol-header-count', 'protocol-request-in-header', 'protocol-host-repeated',
  'protocol-arg-count',
];
export const protocolRuleIdsP2 = ['protocol-host-missing', 'protocol-get-body', 'protocol-range', 'protocol-absolute-target'];
export const protocolRuleIdsP3 = ['protocol-user-agent-missing'];

function found(ruleId: string, family: Family, message: string, part: string, matched: string): BuiltinMatch {
  return { ruleId, family, message, part, matched: matched.length > 120 ? matched.slice(0, 120) : matched };
}

const METHOD_TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,32}$/;

/** The ordinary methods pass; TRACE/TRACK/CONNECT/DEBUG, unknown and malformed ones do not. */
export function checkMethod(method: string): BuiltinMatch | undefined {
  switch (method) {
    case 'GET':
    case 'HEAD':
    case 'POST':
    case 'PUT':
    case 'PATCH':
    case 'DELETE':
    case 'OPTIONS':
      return undefined;
    case 'TRACE':
    case 'TRACK':
    case 'CONNECT':
    case 'DEBUG':
      return found('method-disallowed', 'method', 'disallowed method', 'method', method);
  }
  if (typeof method !== 'string' || !METHOD_TOKEN.test(method)) return found('method-invalid', 'method', 'invalid method', 'method', String(method));
  const upper = method.toUpperCase();
  if (upper === 'TRACE' || upper === 'TRACK' || upper === 'CONNECT' || upper === 'DEBUG') return found('method-disallowed', 'method', 'disallowed method', 'method', method);
  return found('method-unknown', 'method', 'unknown method', 'method', method);
}

/** Case-insensitive `name === lower` (lower-case ASCII `lower`), without allocating. */
function isName(name: string, lower: string): boolean {
  if (name.length !== lower.length) return false;
  for (let i = 0; i < lower.length; i++) if ((name.charCodeAt(i) | 0x20) !== lower.charCodeAt(i)) return false;
  return true;
}

/**
 * Framing and header-syntax checks over the raw header list. Indexes (into rawHeaders) of
 * values that the header value signatures should read are pushed on `suspects`.
 */
export function checkHeaders(req: WafRequest, paranoia: Paranoia, suspects?: number[]): BuiltinMatch | undefined {
  const raw = req.rawHeaders ?? [];
  const count = raw.length >> 1;
  if (count > MAX_HEADERS[paranoia]) return found('protocol-header-count', 'protocol', 'too many headers', 'headers', String(count));
  let contentLength = 0;
  let transferEncoding = 0;
  let hosts = 0;
  for (let i = 0; i + 1 < raw.length; i += 2) {
    const name = raw[i]!;
    const value = raw[i + 1]!;
    if (typeof name !== 'string' || !isToken(name)) return found('protocol-header-name', 'protocol', 'invalid header name', 'header', String(name));
    if (typeof value !== 'string') continue;
    let versionAllowed = false;
    switch (name.length) {
      case 14:
        if (isName(name, 'content-length')) {
          contentLength++;
          if (!DIGITS.test(value.trim())) return found('protocol-content-length-invalid', 'protocol', 'Content-Length is not a number', 'header:content-length', value);
        }
        break;
      case 17:
        if (isName(name, 'transfer-encoding')) {
          transferEncoding++;
          if (value !== 'chunked') return found('protocol-transfer-encoding', 'protocol', 'Transfer-Encoding other than chunked', 'header:transfer-encoding', value);
        }
        break;
      case 4:
        if (isName(name, 'host')) hosts++;
        if (CALLBACK_HINT.test(value)) suspects?.push(i);
        break;
      case 3:
      case 7:
        versionAllowed = isName(name, 'via') || isName(name, 'upgrade');
        if (!versionAllowed && CALLBACK_HEADERS.has(name.toLowerCase()) && CALLBACK_HINT.test(value)) suspects?.push(i);
        break;
      case 6:
      case 9:
      case 13:
      case 15:
      case 16:
        if (CALLBACK_HEADERS.has(name.toLowerCase()) && CALLBACK_HINT.test(value)) suspects?.push(i);
        break;
    }
    if (suspectValue(value)) {
      if (BAD_VALUE.test(value)) return found('protocol-header-value', 'protocol', 'invalid character in header value', `header:${name.toLowerCase()}`, value);
      const m = versionAllowed ? null : REQUEST_IN_VALUE.exec(value);
      if (m !== null) return found('protocol-request-in-header', 'protocol', 'HTTP request line in a header', `header:${name.toLowerCase()}`, m[0]);
      if (suspects !== undefined && suspects[suspects.length - 1] !== i) suspects.push(i);
    }
  }
  if (contentLength > 1) return found('protocol-content-length-repeated', 'protocol', 'several Content-Length headers', 'header:content-length', String(contentLength));
  if (transferEncoding > 1) return found('protocol-transfer-encoding', 'protocol', 'several Transfer-Encoding headers', 'header:transfer-encoding', String(transferEncoding));
  if (contentLength > 0 && transferEncoding > 0) return found('protocol-cl-te', 'protocol', 'both Content-Length and Transfer-Encoding', 'header:transfer-encoding', 'chunked');
  if (hosts > 1) return found('protocol-host-repeated', 'protocol', 'several Host headers', 'header:host', String(hosts));
  // Parsed headers too, for callers whose rawHeaders are partial.
  const h = req.headers ?? {};
  const te = h['transfer-encoding'];
  const cl = h['content-length'];
  if (te !== undefined && transferEncoding === 0) {
    if (te !== 'chunked') return found('protocol-transfer-encoding', 'protocol', 'Transfer-Encoding other than chunked', 'header:transfer-encoding', String(te));
    if (cl !== undefined) return found('protocol-cl-te', 'protocol', 'both Content-Length and Transfer-Encoding', 'header:transfer-encoding', 'chunked');
  }
  if (cl !== undefined && contentLength === 0 && !DIGITS.test(String(cl).trim())) return found('protocol-content-length-invalid', 'protocol', 'Content-Length is not a number', 'header:content-length', String(cl));
  if (paranoia >= 2) {
    if (h.host === undefined) return found('protocol-host-missing', 'protocol', 'no Host header', 'header:host', '');
    if ((req.method === 'GET' || req.method === 'HEAD') && ((cl !== undefined && cl !== '0') || te !== undefined)) return found('protocol-get-body', 'protocol', 'GET or HEAD with a body', 'header:content-length', String(cl ?? te));
    const range = h.range;
    if (typeof range === 'string' && range.split(',').length > 5) return found('protocol-range', 'protocol', 'too many ranges', 'header:range', range);
    if (req.path !== undefined && !req.path.startsWith('/') && !(req.method === 'OPTIONS' && req.path === '*')) return found('protocol-absolute-target', 'protocol', 'request target not origin-form', 'path', req.path);
  }
  if (paranoia >= 3 && h['user-agent'] === undefined) return found('protocol-user-agent-missing', 'protocol', 'no User-Agent header', 'header:user-agent', '');
  return undefined;
}

export const valueAnomalySignatures: readonly Signature[] = [
  // CR/LF in what came in the URL: header injection and response splitting.
  regex('protocol-crlf', 'protocol', 1, URL, 'CR/LF injection', /\r\n|[\r\n\u560a\u560d]\s{0,8}(?:[A-Za-z][\w-]{1,40}\s{0,4}:|HTTP\/\d)|[\r\n](?:GET|POST|HEAD|PUT)\s/),
  regex('protocol-newline', 'protocol', 2, URL | PATH, 'line break in URL value', /[\r\n]/),
  custom('nullbyte-char', 'nullbyte', 1, ALL, 'null byte', (form) => {
    const i = form.indexOf('\0');
    return i === -1 ? undefined : form.slice(Math.max(0, i - 40), i + 40);
  }),
  regex('protocol-control-char', 'protocol', 2, URL, 'control character', /[\x01-\x08\x0b\x0c\x0e-\x1f\x7f]/),
  regex('protocol-non-ascii', 'protocol', 3, PATH, 'non-printable character', /[^\x20-\x7e]/),
];
