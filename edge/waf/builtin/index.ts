/**
 * The built-in WAF rule set: compiles the signature families for one paranoia level and walks
 * a request's parts (method, headers, path, query, cookies, body) through them. Values made only
 * of inert characters skip decoding and all but a few signatures, so ordinary requests stay cheap.
 * Paranoia 2 and 3 run as a second pass after the paranoia-1 pass, so what paranoia 1 finds is
 * found (and reported the same way) at every level.
 */
import type { IncomingHttpHeaders } from 'node:http';
import { MAX_DECODE, addDecodedForms, needsDecoding } from '../decode.js';
import { javaSignatures, phpSignatures } from './php-java.js';
import { checkHeaders, checkMethod, methodRuleIds, protocolRuleIds, protocolRuleIdsP2, protocolRuleIdsP3, valueAnomalySignatures } from './protocol.js';
import { rceSignatures } from './rce.js';
import { SCANNER_AGENT, SCANNER_HEADERS, scannerRuleIds, scannerSignatures } from './scanners.js';
import { ARG, BODY, COOKIE, CTL, HEADER, NON_ASCII, PATH, SEGMENT, URL, charMask, maskOf, type BuiltinMatch, type Paranoia, type Signature } from './signature.js';
import { sqliSignatures } from './sqli.js';
import { ssrfSignatures } from './ssrf.js';
import { traversalSignatures } from './traversal.js';
import { xssSignatures } from './xss.js';

export type { BuiltinMatch, Family, Paranoia } from './signature.js';

/** What the WAF sees of one request. `path` and `query` are raw (as received, not decoded); `query` has no leading '?'. */
export interface WafRequest {
  method: string;
  path: string;
  query: string;
  headers: IncomingHttpHeaders;
  rawHeaders: readonly string[];
  /** The first bytes of the body (size-limited by the caller) or undefined when none was read. */
  body: Buffer | undefined;
}

export interface BuiltinRuleSet {
  readonly paranoia: Paranoia;
  /** Every rule id this set can return (for per-rule metrics). */
  readonly ruleIds: readonly string[];
  /** The first match, or undefined. Must never throw, whatever the input. */
  inspect(request: WafRequest): BuiltinMatch | undefined;
}

/**
 * What each signature needs in a value (any one of these characters), so that a value without
 * them skips it. Signatures not listed read every value.
 */
const NEEDS: Record<string, number> = {
  'xss-script-tag': maskOf('<'), 'xss-active-tag': maskOf('<'), 'xss-event-handler': maskOf('='), 'xss-script-uri': maskOf(':'),
  'xss-data-uri': maskOf(':'), 'xss-js-sink': maskOf('(`.['), 'xss-css': maskOf('(:@'), 'xss-template': maskOf('{'), 'xss-html-tag': maskOf('<'),
  'xss-angle': maskOf('<='), 'sqli-timing': maskOf('( '), 'sqli-functions': maskOf('(\'"'), 'sqli-case': maskOf('('), 'sqli-stacked': maskOf(';'),
  'sqli-exec-comment': maskOf('/'), 'sqli-quote-keyword': maskOf('\'"`'), 'rce-command': maskOf(';|&`${') | CTL, 'rce-shellshock': maskOf('('),
  'rce-template': maskOf('{<_.?'), 'rce-command-word': maskOf(';|&`$') | CTL, 'rce-metachar': maskOf(';|`$'), 'php-open-tag': maskOf('<'),
  'php-wrapper': maskOf(':'), 'php-function': maskOf('('), 'php-variables': maskOf('$'), 'php-object': maskOf(':'), 'php-config': maskOf('='),
  'php-function-name': maskOf('(<'), 'java-log4shell': maskOf('{:'), 'java-runtime': maskOf('.('), 'java-ognl': maskOf('{#@('),
  'java-classloader': maskOf('.['), 'java-expression': maskOf('{.'), 'ssrf-metadata-host': maskOf('.:'), 'ssrf-metadata-path': maskOf('/'),
  'ssrf-scheme': maskOf(':'), 'ssrf-internal-url': maskOf('/'), 'ssrf-private-url': maskOf('/'), 'lfi-traversal': maskOf('.'),
  'lfi-os-file': maskOf('./\\-') | NON_ASCII, 'lfi-remote-include': maskOf(':'), 'lfi-xxe': maskOf('<'), 'lfi-dots': maskOf('.'),
  'lfi-system-path': maskOf('/\\'), 'protocol-crlf': CTL | NON_ASCII, 'protocol-newline': CTL, 'nullbyte-char': CTL, 'protocol-control-char': CTL,
  'scanner-callback-domain': maskOf('.'),
};

/** Signature order decides which family reports a value that several match. */
const PRIORITY = ['java-', 'rce-template', 'lfi-xxe', 'php-', 'rce-', 'sqli-', 'xss-', 'ssrf-', 'lfi-', 'protocol-', 'nullbyte-', 'scanner-'];
const rank = (s: Signature) => PRIORITY.findIndex((p) => s.id === p || (p.endsWith('-') && s.id.startsWith(p)));
const ALL_SIGNATURES: readonly Signature[] = [
  ...javaSignatures,
  ...phpSignatures,
  ...rceSignatures,
  ...sqliSignatures,
  ...xssSignatures,
  ...ssrfSignatures,
  ...traversalSignatures,
  ...valueAnomalySignatures,
  ...scannerSignatures,
]
  .sort((a, b) => rank(a) - rank(b))
  .map((s) => (NEEDS[s.id] === undefined ? s : { ...s, needs: NEEDS[s.id] }));

/** What can hide in a value of inert characters only ([A-Za-z0-9._~/-]). */
const INERT_THREATS = new Set(['lfi-traversal', 'lfi-os-file', 'lfi-dots', 'lfi-system-path', 'java-serialized', 'java-classloader', 'java-runtime', 'ssrf-metadata-host', 'ssrf-internal-url', 'ssrf-private-url', 'scanner-callback-domain']);
/** What every header value is read for at paranoia 1 (when the cheap header test flags it). */
const EVERY_HEADER = new Set(['java-log4shell', 'java-ognl', 'java-runtime', 'rce-shellshock', 'scanner-callback-domain', 'rce-template']);
/** Headers the paranoia-2 header pass leaves alone (structured values, credentials, cookies). */
const HEADER_SKIP = new Set(['cookie', 'authorization', 'proxy-authorization', 'accept', 'accept-encoding', 'accept-language', 'content-type', 'content-length', 'if-none-match', 'if-match', 'cache-control', 'connection', 'host', 'pragma', 'te', 'transfer-encoding', 'upgrade-insecure-requests', 'priority', 'range', 'if-modified-since', 'if-unmodified-since', 'if-range', 'user-agent']);
/** A User-Agent needs reading beyond the scanner list only with one of these. */
const AGENT_SUSPECT = /['"<>`$|{}\\%]|--|\/\*|#|\b(?:select|union|sleep|and|or)\b|&&|\.\.\/|\/bin\/|\/etc\/|\b(?:cat|wget|curl|nc)\s|whoami|powershell|cmd\.exe|jndi/i;
const BINARY_TYPE = /^(?:image|audio|video|font)\/|^application\/(?:octet-stream|pdf|zip|gzip|x-gzip|x-tar|x-7z-compressed|x-rar-compressed|x-protobuf|protobuf|grpc|wasm|msgpack|x-msgpack|cbor|vnd\.)/;

/** Values up to this length have their verdicts cached, up to SCAN_CACHE per signature list. */
const SCAN_CACHE_VALUE = 1024;
const SCAN_CACHE = 4096;
const MAX_ARGS = 1000;
const MAX_JSON_STRINGS = 2000;
const MAX_PART_NAME = 64;

/** Kinds of value (the scope bits a signature must share to read it). */
const K_PATH = PATH | URL;
const K_QUERY = ARG | URL;
const K_FORM = ARG;
const K_COOKIE = COOKIE | URL;

interface Lists {
  path: Signature[];
  segment: Signature[];
  query: Signature[];
  form: Signature[];
  cookie: Signature[];
  header: Signature[];
  body: Signature[];
  xml: Signature[];
  lite: Signature[];
  inert: Signature[];
  inertPath: Signature[];
  inertCookie: Signature[];
  everyHeader: Signature[];
  rceOnly: Signature[];
}

function lists(sigs: readonly Signature[], headerSigs: readonly Signature[]): Lists {
  const of = (kind: number) => sigs.filter((s) => (s.scope & kind) !== 0);
  const query = of(K_QUERY);
  const body = of(BODY);
  return {
    path: of(K_PATH),
    segment: of(SEGMENT),
    query,
    form: of(K_FORM),
    cookie: of(K_COOKIE),
    header: headerSigs.filter((s) => (s.scope & HEADER) !== 0),
    body,
    xml: body.filter((s) => s.id !== 'xss-active-tag' && s.id !== 'xss-html-tag' && s.id !== 'xss-angle'),
    lite: body.filter((s) => s.family === 'php' || s.family === 'java' || s.id === 'rce-shell-syntax' || s.id === 'rce-shellshock'),
    inert: query.filter((s) => INERT_THREATS.has(s.id)),
    inertPath: of(K_PATH).filter((s) => INERT_THREATS.has(s.id)),
    inertCookie: of(K_COOKIE).filter((s) => INERT_THREATS.has(s.id)),
    everyHeader: sigs.filter((s) => EVERY_HEADER.has(s.id)),
    rceOnly: query.filter((s) => s.id === 'rce-command'),
  };
}

function truncate(s: string, n: number): string {
  return s.length > n ? s.slice(0, n) : s;
}

/** True when s[start, end) holds only [A-Za-z0-9._~/-]. */
function inert(s: string, start: number, end: number): boolean {
  for (let i = start; i < end; i++) {
    const c = s.charCodeAt(i);
    if ((c >= 97 && c <= 122) || (c >= 65 && c <= 90) || (c >= 45 && c <= 57) /* - . / 0-9 */ || c === 95 || c === 126) continue;
    return false;
  }
  return true;
}

/** An inert value can only carry a threat with a dot, a slash or a serialized-object prefix. */
function inertMayThreaten(s: string, start: number, end: number): boolean {
  for (let i = start; i < end; i++) {
    const c = s.charCodeAt(i);
    if (c === 46 || c === 47) return true;
  }
  return end - start >= 8 && (within(s, 'rO0', start, end) || within(s, 'aced', start, end) || within(s, 'ACED', start, end));
}

function within(s: string, needle: string, start: number, end: number): boolean {
  const at = s.indexOf(needle, start);
  return at !== -1 && at < end;
}

interface Hit {
  sig: Signature;
  matched: string;
}

/**
 * Signatures read the forms from `first`, the fully decoded one, on: the raw form is skipped
 * when decoding changed it (a query's '+' is a space and '%27' a quote to the application, and
 * reading them literally only invents tokens), and read when it did not.
 */
function firstHit(forms: readonly string[], sigs: readonly Signature[], first: number): Hit | undefined {
  let mask = 0;
  for (let i = first; i < forms.length; i++) mask |= charMask(forms[i]!);
  for (const sig of sigs) {
    if (sig.needs !== undefined && (sig.needs & mask) === 0) continue;
    for (let i = first; i < forms.length; i++) {
      const m = sig.match(forms[i]!);
      if (m !== undefined) return { sig, matched: m };
    }
  }
  return undefined;
}

function toMatch(hit: Hit, part: string | (() => string)): BuiltinMatch {
  return { ruleId: hit.sig.id, family: hit.sig.family, message: hit.sig.message, part: typeof part === 'string' ? part : part(), matched: truncate(hit.matched, 120) };
}

const INERT_CACHE = 4096;

class Pass {
  private readonly l: Lists;
  private readonly forms: string[] = [];
  private readonly agentCache = new Map<string, BuiltinMatch | null>();
  private readonly pathCache = new Map<string, Hit | null>();
  private readonly argCache = new Map<string, Hit | null>();
  private readonly cookieCache = new Map<string, Hit | null>();
  /** Verdicts of `scan` by signature list, then by value (bounded: cleared when full). */
  private readonly scanCache = new Map<readonly Signature[], Map<string, Hit | null>>();
  /** The same for values where '+' means a space (query, form, cookies). */
  private readonly plusScanCache = new Map<readonly Signature[], Map<string, Hit | null>>();

  constructor(
    sigs: readonly Signature[],
    headerSigs: readonly Signature[],
    private readonly level: Paranoia,
    /** The paranoia-1 pass; false for the stricter pass that follows it. */
    private readonly first: boolean,
  ) {
    this.l = lists(sigs, headerSigs);
  }

  run(req: WafRequest): BuiltinMatch | undefined {
    if (this.first) {
      const m = checkMethod(req.method);
      if (m !== undefined) return m;
    }
    const suspects: number[] = [];
    const p = checkHeaders(req, this.level, suspects);
    if (p !== undefined) return p;
    return this.headers(req, suspects) ?? this.path(req.path ?? '') ?? this.query(req.query ?? '') ?? this.cookies(req.headers?.cookie) ?? this.body(req);
  }

  /** Runs `sigs` over the decoded forms of `value`; `part` names it in a match. */
  private scan(value: string, plus: boolean, sigs: readonly Signature[], part: string | (() => string)): BuiltinMatch | undefined {
    if (sigs.length === 0) return undefined;
    // Verdicts by value: a client's cookies, Referer and query repeat on every request it makes,
    // and decoding plus the signatures cost microseconds each time.
    const caches = plus ? this.plusScanCache : this.scanCache;
    let cache = caches.get(sigs);
    if (cache === undefined) caches.set(sigs, (cache = new Map()));
    const key = value;
    let hit = value.length <= SCAN_CACHE_VALUE ? cache.get(key) : undefined;
    if (hit === undefined) {
      const forms = this.forms;
      forms.length = 0;
      forms.push(value.length > MAX_DECODE ? value.slice(0, MAX_DECODE) : value);
      const first = needsDecoding(value, plus) ? addDecodedForms(value, plus, forms) : 0;
      hit = firstHit(forms, sigs, first) ?? null;
      forms.length = 0;
      if (value.length <= SCAN_CACHE_VALUE) {
        if (cache.size >= SCAN_CACHE) cache.clear();
        cache.set(key, hit);
      }
    }
    return hit === null ? undefined : toMatch(hit, part);
  }

  /**
   * A value of inert characters (nothing to decode) against the few signatures that can match
   * one; verdicts are cached by value, as hot paths and a client's cookies repeat.
   */
  private scanInert(value: string, sigs: readonly Signature[], cache: Map<string, Hit | null>, part: string | (() => string)): BuiltinMatch | undefined {
    let hit = cache.get(value);
    if (hit === undefined) {
      const forms = this.forms;
      forms.length = 0;
      forms.push(value);
      hit = firstHit(forms, sigs, 0) ?? null;
      forms.length = 0;
      if (value.length <= 512) {
        if (cache.size >= INERT_CACHE) cache.clear();
        cache.set(value, hit);
      }
    }
    return hit === null ? undefined : toMatch(hit, part);
  }

  private headers(req: WafRequest, suspects: readonly number[]): BuiltinMatch | undefined {
    const raw = req.rawHeaders ?? [];
    const h = req.headers ?? {};
    if (this.first) {
      const agent = h['user-agent'];
      if (typeof agent === 'string' && agent !== '') {
        const m = this.agent(agent);
        if (m !== undefined) return m;
      }
      for (let i = 0; i + 1 < raw.length; i += 2) {
        const name = raw[i]!;
        const c = name.charCodeAt(0) | 32;
        if (c !== 120 /* x */ && c !== 97 /* a */) continue;
        const lower = name.toLowerCase();
        if (SCANNER_HEADERS.has(lower) || lower.startsWith('acunetix')) return { ruleId: 'scanner-header', family: 'scanner', message: 'scanner header', part: `header:${truncate(lower, MAX_PART_NAME)}`, matched: truncate(raw[i + 1] ?? '', 120) };
      }
      for (const i of suspects) {
        const name = raw[i]!.toLowerCase();
        if (name === 'cookie') continue;
        const m = this.scan(raw[i + 1]!, false, this.l.everyHeader, () => `header:${truncate(name, MAX_PART_NAME)}`);
        if (m !== undefined) return m;
      }
      return undefined;
    }
    // Stricter pass: every header value but the structured ones, with all header signatures.
    for (let i = 0; i + 1 < raw.length; i += 2) {
      const name = raw[i]!.toLowerCase();
      if (HEADER_SKIP.has(name) || name.startsWith('sec-')) continue;
      const value = raw[i + 1]!;
      if (inert(value, 0, value.length)) continue;
      const m = this.scan(value, false, this.l.header, () => `header:${truncate(name, MAX_PART_NAME)}`);
      if (m !== undefined) return m;
    }
    const agent = h['user-agent'];
    if (typeof agent === 'string' && !inert(agent, 0, agent.length)) return this.scan(agent, false, this.l.header, 'header:user-agent');
    return undefined;
  }

  /** User-Agent: scanner names, and the header signatures when it holds anything odd. Cached per string. */
  private agent(agent: string): BuiltinMatch | undefined {
    const cached = this.agentCache.get(agent);
    if (cached !== undefined) return cached === null ? undefined : { ...cached };
    let m: BuiltinMatch | undefined;
    const s = SCANNER_AGENT.exec(agent);
    if (s !== null) m = { ruleId: 'scanner-user-agent', family: 'scanner', message: 'security scanner user agent', part: 'header:user-agent', matched: truncate(s[0], 120) };
    else if (AGENT_SUSPECT.test(agent)) m = this.scan(agent, false, this.l.header, 'header:user-agent');
    if (agent.length <= 512) {
      if (this.agentCache.size >= 512) this.agentCache.clear();
      this.agentCache.set(agent, m ?? null);
    }
    return m;
  }

  private path(path: string): BuiltinMatch | undefined {
    if (path === '') return undefined;
    if (inert(path, 0, path.length)) return inertMayThreaten(path, 0, path.length) ? this.scanInert(path, this.l.inertPath, this.pathCache, 'path') : undefined;
    const m = this.scan(path, false, this.l.path, 'path');
    if (m !== undefined || this.l.segment.length === 0) return m;
    // Segment by segment for the signatures that read where a value starts (`/item/1 or 1=1`).
    let start = path.charCodeAt(0) === 47 ? 1 : 0;
    while (start < path.length) {
      let end = path.indexOf('/', start);
      if (end === -1) end = path.length;
      if (!inert(path, start, end)) {
        const s = this.scan(path.slice(start, end), false, this.l.segment, 'path');
        if (s !== undefined) return s;
      }
      start = end + 1;
    }
    return undefined;
  }

  private query(query: string): BuiltinMatch | undefined {
    if (query === '') return undefined;
    const m = this.params(query, this.l.query, 'query');
    if (m !== undefined) return m;
    // `a=1&&id` splits the command away from its value; read the whole query for it.
    if (query.includes('&&') || query.includes('%26%26')) return this.scan(query, true, this.l.rceOnly, 'query');
    return undefined;
  }

  /** name=value pairs separated by '&' (query string or form body). */
  private params(text: string, sigs: readonly Signature[], prefix: string): BuiltinMatch | undefined {
    const n = text.length;
    let start = 0;
    let count = 0;
    while (start <= n) {
      let end = text.indexOf('&', start);
      if (end === -1) end = n;
      if (end > start) {
        if (++count > MAX_ARGS) return { ruleId: 'protocol-arg-count', family: 'protocol', message: 'too many parameters', part: prefix, matched: String(count) };
        let eq = text.indexOf('=', start);
        if (eq === -1 || eq > end) eq = end;
        const valueStart = eq < end ? eq + 1 : end;
        const nameInert = inert(text, start, eq);
        const valueInert = inert(text, valueStart, end);
        const partOf = () => `${prefix}:${truncate(text.slice(start, eq), MAX_PART_NAME)}`;
        if (!valueInert) {
          const m = this.scan(text.slice(valueStart, end), true, sigs, partOf);
          if (m !== undefined) return m;
        } else if (valueStart < end && inertMayThreaten(text, valueStart, end)) {
          const m = this.scanInert(text.slice(valueStart, end), this.l.inert, this.argCache, partOf);
          if (m !== undefined) return m;
        }
        if (eq > start && (!nameInert || inertMayThreaten(text, start, eq))) {
          const m = nameInert
            ? this.scanInert(text.slice(start, eq), this.l.inert, this.argCache, () => `${prefix}-name:${truncate(text.slice(start, eq), MAX_PART_NAME)}`)
            : this.scan(text.slice(start, eq), true, sigs, () => `${prefix}-name:${truncate(text.slice(start, eq), MAX_PART_NAME)}`);
          if (m !== undefined) return m;
        }
      }
      start = end + 1;
    }
    return undefined;
  }

  private cookies(header: string | string[] | undefined): BuiltinMatch | undefined {
    if (header === undefined) return undefined;
    const text = Array.isArray(header) ? header.join('; ') : header;
    const n = text.length;
    let start = 0;
    while (start < n) {
      let end = text.indexOf(';', start);
      if (end === -1) end = n;
      while (start < end && text.charCodeAt(start) === 32) start++;
      let eq = text.indexOf('=', start);
      if (eq === -1 || eq > end) eq = start;
      const valueStart = eq === start ? start : eq + 1;
      const s0 = start;
      const partOf = () => `cookie:${truncate(text.slice(s0, eq).trim(), MAX_PART_NAME)}`;
      if (!inert(text, valueStart, end)) {
        const m = this.scan(text.slice(valueStart, end), true, this.l.cookie, partOf);
        if (m !== undefined) return m;
      } else if (inertMayThreaten(text, valueStart, end)) {
        const m = this.scanInert(text.slice(valueStart, end), this.l.inertCookie, this.cookieCache, partOf);
        if (m !== undefined) return m;
      }
      if (eq > s0 && !inert(text, s0, eq)) {
        const name = text.slice(s0, eq).trim();
        if (!inert(name, 0, name.length)) {
          const m = this.scan(name, true, this.l.cookie, () => `cookie-name:${truncate(name, MAX_PART_NAME)}`);
          if (m !== undefined) return m;
        }
      }
      start = end + 1;
    }
    return undefined;
  }

  private body(req: WafRequest): BuiltinMatch | undefined {
    const body = req.body;
    if (body === undefined || body.length === 0) return undefined;
    if (this.first && body.length >= 4 && body[0] === 0xac && body[1] === 0xed && body[2] === 0x00 && body[3] === 0x05) {
      return { ruleId: 'java-serialized', family: 'java', message: 'serialized Java object', part: 'body', matched: 'aced0005' };
    }
    const rawType = req.headers?.['content-type'];
    const type = (typeof rawType === 'string' ? rawType : '').split(';', 1)[0]!.trim().toLowerCase();
    if (type === 'application/x-java-serialized-object') return this.first ? { ruleId: 'java-serialized', family: 'java', message: 'serialized Java object', part: 'body', matched: type } : undefined;
    if (type === 'application/x-www-form-urlencoded') return this.params(body.toString('latin1'), this.l.form, 'body');
    if (type === 'application/json' || type.endsWith('+json') || type === 'text/json' || type === 'application/x-ndjson') {
      const text = body.toString('utf8');
      const m = this.json(text);
      if (m !== false) return m;
      return this.scan(text, false, this.l.body, 'body');
    }
    if (BINARY_TYPE.test(type)) return undefined;
    if (type.startsWith('multipart/')) return this.scan(body.toString('latin1'), false, this.l.lite, 'body');
    const sigs = type.includes('xml') ? this.l.xml : this.l.body;
    return this.scan(body.toString('utf8'), false, sigs, 'body');
  }

  /** Walks a JSON document's keys and strings; false when it does not parse. */
  private json(text: string): BuiltinMatch | undefined | false {
    let doc: unknown;
    try {
      doc = JSON.parse(text.charCodeAt(0) === 0xfeff ? text.slice(1) : text);
    } catch {
      return false;
    }
    const stack: Array<{ value: unknown; key: string }> = [{ value: doc, key: '' }];
    let strings = 0;
    while (stack.length > 0 && strings < MAX_JSON_STRINGS) {
      const { value, key } = stack.pop()!;
      if (typeof value === 'string') {
        strings++;
        if (!inert(value, 0, value.length)) {
          const m = this.scan(value, false, this.l.form, () => `body:${truncate(key, MAX_PART_NAME)}`);
          if (m !== undefined) return m;
        } else if (inertMayThreaten(value, 0, value.length)) {
          const m = this.scanInert(value, this.l.inert, this.argCache, () => `body:${truncate(key, MAX_PART_NAME)}`);
          if (m !== undefined) return m;
        }
      } else if (Array.isArray(value)) {
        for (let i = value.length - 1; i >= 0; i--) stack.push({ value: value[i], key });
      } else if (value !== null && typeof value === 'object') {
        const entries = Object.keys(value);
        for (let i = entries.length - 1; i >= 0; i--) {
          const k = entries[i]!;
          strings++;
          if (!inert(k, 0, k.length)) {
            const m = this.scan(k, false, this.l.form, () => `body-name:${truncate(k, MAX_PART_NAME)}`);
            if (m !== undefined) return m;
          }
          stack.push({ value: (value as Record<string, unknown>)[k], key: key === '' ? k : `${key}.${k}` });
        }
      }
    }
    return undefined;
  }
}

class RuleSet implements BuiltinRuleSet {
  readonly ruleIds: readonly string[];
  private readonly passes: Pass[];

  constructor(readonly paranoia: Paranoia) {
    const base = ALL_SIGNATURES.filter((s) => s.paranoia === 1);
    this.passes = [new Pass(base, base, 1, true)];
    if (paranoia > 1) {
      const stricter = ALL_SIGNATURES.filter((s) => s.paranoia > 1 && s.paranoia <= paranoia);
      const headers = ALL_SIGNATURES.filter((s) => s.paranoia <= paranoia);
      this.passes.push(new Pass(stricter, headers, paranoia, false));
    }
    const ids = new Set<string>([...methodRuleIds, ...protocolRuleIds, ...scannerRuleIds, 'java-serialized']);
    if (paranoia >= 2) for (const id of protocolRuleIdsP2) ids.add(id);
    if (paranoia >= 3) for (const id of protocolRuleIdsP3) ids.add(id);
    for (const s of ALL_SIGNATURES) if (s.paranoia <= paranoia) ids.add(s.id);
    this.ruleIds = [...ids];
  }

  inspect(request: WafRequest): BuiltinMatch | undefined {
    try {
      for (const pass of this.passes) {
        const m = pass.run(request);
        if (m !== undefined) return m;
      }
      return undefined;
    } catch {
      // A bug here must not take the edge down; the request is let through.
      return undefined;
    }
  }
}

export function compileBuiltinRules(paranoia: Paranoia): BuiltinRuleSet {
  if (paranoia !== 1 && paranoia !== 2 && paranoia !== 3) throw new RangeError(`paranoia must be 1, 2 or 3, not ${String(paranoia)}`);
  return new RuleSet(paranoia);
}
