/** The shape shared by the built-in signature families: one test over one decoded value. */

export type Paranoia = 1 | 2 | 3;
export type Family = 'sqli' | 'xss' | 'lfi' | 'rce' | 'php' | 'java' | 'ssrf' | 'nullbyte' | 'protocol' | 'method' | 'scanner';

/** Kinds of request parts a signature reads (bit flags). */
export const PATH = 1;
/** Query and form parameter values and names, JSON strings and keys, path segments. */
export const ARG = 2;
export const COOKIE = 4;
/** Header values (User-Agent at paranoia 1, the others from paranoia 2). */
export const HEADER = 8;
/** A whole text body that is neither form nor JSON. */
export const BODY = 16;
/** Set besides the others for what came in the URL or a cookie (path, query), not a body. */
export const URL = 32;
/** One decoded path segment (for the tests that look at where a value starts). */
export const SEGMENT = 64;
export const VALUES = ARG | COOKIE | HEADER | BODY;
export const ALL = PATH | VALUES;

export interface Signature {
  readonly id: string;
  readonly family: Family;
  readonly message: string;
  readonly paranoia: Paranoia;
  /** The parts it reads (bit flags above). */
  readonly scope: number;
  /** The matched text in one decoded form of a value, or undefined. */
  match(form: string): string | undefined;
  /** Character classes (charMask bits) one of which a value needs for this to match; 0 for any value. */
  readonly needs?: number;
}

/** charMask bits for characters outside the table. */
export const CTL = 1 << 30;
export const NON_ASCII = 1 << 29;
const MASK_CHARS = `'"\`<(;|&$\{/\\.:=#-*@[_?%+ `;
const MASK = new Int32Array(128);
for (let i = 0; i < MASK_CHARS.length; i++) MASK[MASK_CHARS.charCodeAt(i)] = 1 << i;
for (let c = 0; c < 32; c++) if (c !== 9) MASK[c] = CTL;
MASK[9] = MASK[32]!;
MASK[127] = CTL;

/** Which of the interesting character classes occur in `s` (one pass, for skipping signatures). */
export function charMask(s: string): number {
  let m = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    m |= c < 128 ? MASK[c]! : NON_ASCII;
  }
  return m;
}

/** A signature that is one (linear-time) regular expression. */
export function regex(id: string, family: Family, paranoia: Paranoia, scope: number, message: string, re: RegExp): Signature {
  if (re.global || re.sticky) throw new Error(`signature ${id}: stateful regex`);
  return {
    id,
    family,
    message,
    paranoia,
    scope,
    match(form) {
      const m = re.exec(form);
      return m === null ? undefined : m[0];
    },
  };
}

/** A signature with its own test function. */
export function custom(id: string, family: Family, paranoia: Paranoia, scope: number, message: string, match: (form: string) => string | undefined): Signature {
  return { id, family, message, paranoia, scope, match };
}

/** A match, as the rule set reports it. */
export interface BuiltinMatch {
  ruleId: string;
  family: Family;
  message: string;
  part: string;
  matched: string;
}

/** The charMask bits of the characters a signature needs (the same classes, read from its description). */
export const maskOf = charMask;
