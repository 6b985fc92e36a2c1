/**
 * Input decoding for WAF signatures: the distinct decoded forms of one value. Percent-decoding
 * (repeated, lenient about overlong/invalid UTF-8, `%uXXXX`), HTML entities, JS escapes, NFKC,
 * then one "normalised" form with SQL comments removed and backslashes as slashes.
 * Work is bounded: at most MAX_DECODE characters are decoded and at most a few forms returned.
 */

/** Characters of a value that are decoded; the rest is ignored (the raw form stays whole). */
export const MAX_DECODE = 64 * 1024;
const MAX_ROUNDS = 3;

/** The distinct decoded forms of one input value (the raw one first), bounded in count and length. */
export function decodedForms(value: string, plusAsSpace = false): string[] {
  const out = [value];
  if (needsDecoding(value, plusAsSpace)) addDecodedForms(value, plusAsSpace, out);
  return out;
}

/** True when decoding could change the value: it has `%`, `+` (when a space), `&`, `\`, `/*` or non-ASCII. */
export function needsDecoding(value: string, plusAsSpace: boolean): boolean {
  const n = value.length < MAX_DECODE ? value.length : MAX_DECODE;
  for (let i = 0; i < n; i++) {
    const c = value.charCodeAt(i);
    if (c === 37 /* % */ || c === 38 /* & */ || c === 92 /* \ */ || c > 126) return true;
    if (c === 43 /* + */ && plusAsSpace) return true;
    if (c === 47 /* / */ && value.charCodeAt(i + 1) === 42 /* * */) return true;
  }
  return false;
}

/**
 * Appends to `out` the decoded forms of `value` that differ from those already in it, and
 * returns the index of the fully decoded one (the raw value's own when decoding changes
 * nothing, as for a literal backslash that only normalising rewrites).
 */
export function addDecodedForms(value: string, plusAsSpace: boolean, out: string[]): number {
  let cur = value.length > MAX_DECODE ? value.slice(0, MAX_DECODE) : value;
  if (plusAsSpace && cur.includes('+')) cur = cur.replaceAll('+', ' ');
  let normalised = false;
  for (let round = 0; round < MAX_ROUNDS; round++) {
    const before = cur;
    if (cur.includes('%')) cur = percentDecode(cur);
    if (cur.includes('&')) cur = decodeEntities(cur);
    if (cur.includes('\\')) cur = decodeJsEscapes(cur);
    if (!normalised && hasNonAscii(cur)) {
      normalised = true;
      cur = safeNfkc(cur);
    }
    if (cur === before) break;
  }
  push(out, cur);
  const decoded = out.indexOf(cur);
  const norm = normalise(cur);
  if (norm !== cur) push(out, norm);
  return decoded;
}

function push(out: string[], form: string): void {
  if (!out.includes(form)) out.push(form);
}

function hasNonAscii(s: string): boolean {
  for (let i = 0; i < s.length; i++) if (s.charCodeAt(i) > 127) return true;
  return false;
}

function safeNfkc(s: string): string {
  try {
    return s.normalize('NFKC');
  } catch {
    return s;
  }
}

function hexValue(c: number): number {
  if (c >= 48 && c <= 57) return c - 48;
  if (c >= 97 && c <= 102) return c - 87;
  if (c >= 65 && c <= 70) return c - 55;
  return -1;
}

/** One round of percent-decoding; `%uXXXX` too; invalid escapes stay literal. */
export function percentDecode(s: string): string {
  const n = s.length;
  let out = '';
  let last = 0;
  let i = s.indexOf('%');
  const bytes: number[] = [];
  while (i !== -1 && i < n) {
    // A run of %XX escapes is decoded together, as (lenient) UTF-8.
    let j = i;
    bytes.length = 0;
    for (;;) {
      if (j + 2 >= n || s.charCodeAt(j) !== 37) break;
      const h = hexValue(s.charCodeAt(j + 1));
      const l = hexValue(s.charCodeAt(j + 2));
      if (h < 0 || l < 0) break;
      bytes.push((h << 4) | l);
      j += 3;
    }
    if (bytes.length > 0) {
      out += s.slice(last, i) + utf8Lenient(bytes);
      last = j;
      i = s.indexOf('%', j);
      continue;
    }
    // %uXXXX (IIS style)
    const u = s.charCodeAt(i + 1);
    if ((u === 117 || u === 85) && i + 5 < n) {
      const a = hexValue(s.charCodeAt(i + 2));
      const b = hexValue(s.charCodeAt(i + 3));
      const c = hexValue(s.charCodeAt(i + 4));
      const d = hexValue(s.charCodeAt(i + 5));
      if (a >= 0 && b >= 0 && c >= 0 && d >= 0) {
        out += s.slice(last, i) + String.fromCharCode((a << 12) | (b << 8) | (c << 4) | d);
        last = i + 6;
        i = s.indexOf('%', last);
        continue;
      }
    }
    i = s.indexOf('%', i + 1);
  }
  return last === 0 ? s : out + s.slice(last);
}

/**
 * Bytes to text, accepting what strict decoders reject: overlong forms (`c0 af` is '/'), the
 * IIS reading of `c0`/`c1` with any second byte, 5- and 6-byte forms. A byte that starts no
 * sequence is read as Latin-1.
 */
function utf8Lenient(bytes: readonly number[]): string {
  let out = '';
  const n = bytes.length;
  for (let i = 0; i < n; ) {
    const b0 = bytes[i]!;
    if (b0 < 0x80) {
      out += String.fromCharCode(b0);
      i++;
      continue;
    }
    let need = 0;
    let cp = 0;
    if (b0 === 0xc0 || b0 === 0xc1) {
      if (i + 1 < n) {
        out += String.fromCharCode(((b0 & 1) << 6) | (bytes[i + 1]! & 0x3f));
        i += 2;
        continue;
      }
    } else if ((b0 & 0xe0) === 0xc0) {
      need = 1;
      cp = b0 & 0x1f;
    } else if ((b0 & 0xf0) === 0xe0) {
      need = 2;
      cp = b0 & 0x0f;
    } else if ((b0 & 0xf8) === 0xf0) {
      need = 3;
      cp = b0 & 0x07;
    } else if ((b0 & 0xfc) === 0xf8) {
      need = 4;
      cp = b0 & 0x03;
    } else if ((b0 & 0xfe) === 0xfc) {
      need = 5;
      cp = b0 & 0x01;
    }
    let ok = need > 0 && i + need < n;
    if (ok) {
      for (let k = 1; k <= need; k++) {
        const b = bytes[i + k]!;
        if ((b & 0xc0) !== 0x80) {
          ok = false;
          break;
        }
        cp = cp * 64 + (b & 0x3f);
      }
    }
    if (!ok) {
      out += String.fromCharCode(b0);
      i++;
      continue;
    }
    out += cp > 0x10ffff ? '\ufffd' : String.fromCodePoint(cp);
    i += need + 1;
  }
  return out;
}

const NAMED_ENTITIES: Record<string, string> = {
  lt: '<', gt: '>', amp: '&', quot: '"', apos: "'", nbsp: '\u00a0', tab: '\t', newline: '\n',
  colon: ':', sol: '/', bsol: '\\', lpar: '(', rpar: ')', lsqb: '[', rsqb: ']', lbrack: '[',
  rbrack: ']', lcub: '{', rcub: '}', lbrace: '{', rbrace: '}', semi: ';', comma: ',', period: '.',
  excl: '!', num: '#', dollar: '$', percnt: '%', plus: '+', equals: '=', grave: '`', quest: '?',
  ast: '*', midast: '*', commat: '@', verbar: '|', vert: '|', hyphen: '-', dash: '-', lowbar: '_',
  hat: '^', lsquo: '\u2018', rsquo: '\u2019', ldquo: '\u201c', rdquo: '\u201d',
};

// Bounded digits keep the match linear; `;` is optional as browsers accept it missing.
const ENTITY = /&(?:#[xX]([0-9a-fA-F]{1,8})|#([0-9]{1,10})|([a-zA-Z]{2,8}));?/g;

/** HTML entities: named (a common subset, any case), decimal and hex, with or without `;`. */
export function decodeEntities(s: string): string {
  return s.replace(ENTITY, (whole, hex: string | undefined, dec: string | undefined, name: string | undefined) => {
    if (name !== undefined) return NAMED_ENTITIES[name.toLowerCase()] ?? whole;
    const cp = hex !== undefined ? parseInt(hex, 16) : parseInt(dec!, 10);
    return cp > 0 && cp <= 0x10ffff ? String.fromCodePoint(cp) : '\ufffd';
  });
}

const JS_ESCAPE = /\\(?:u\{([0-9a-fA-F]{1,6})\}|u([0-9a-fA-F]{4})|x([0-9a-fA-F]{2}))/g;

/** JavaScript/JSON escapes `\uXXXX`, `\u{X}` and `\xXX`. */
export function decodeJsEscapes(s: string): string {
  if (!s.includes('\\u') && !s.includes('\\x') && !s.includes('\\U') && !s.includes('\\X')) return s;
  return s.replace(JS_ESCAPE, (_whole, brace: string | undefined, u: string | undefined, x: string | undefined) => {
    const cp = parseInt(brace ?? u ?? x!, 16);
    return cp <= 0x10ffff ? String.fromCodePoint(cp) : '\ufffd';
  });
}

/**
 * SQL comments become a space (MySQL `/*!50000 …*\/` keeps its content, as MySQL runs it) and
 * backslashes become slashes (Windows paths, `..\`).
 */
export function normalise(s: string): string {
  let out = s.includes('/*') ? stripComments(s) : s;
  if (out.includes('\\')) out = out.replaceAll('\\', '/');
  return out;
}

function stripComments(s: string): string {
  let out = '';
  let last = 0;
  let i = s.indexOf('/*');
  while (i !== -1) {
    out += s.slice(last, i) + ' ';
    if (s.charCodeAt(i + 2) === 33 /* ! */) {
      // Executable comment: drop the marker and version digits, keep the content.
      let j = i + 3;
      while (j < s.length && j < i + 9 && s.charCodeAt(j) >= 48 && s.charCodeAt(j) <= 57) j++;
      last = j;
      i = s.indexOf('/*', j);
      continue;
    }
    const end = s.indexOf('*/', i + 2);
    if (end === -1) {
      last = s.length;
      break;
    }
    last = end + 2;
    i = s.indexOf('/*', last);
  }
  out += s.slice(last);
  // The closing marker of an executable comment is left as '*/'; drop it too.
  return out.includes('*/') ? out.replaceAll('*/', ' ') : out;
}
