/**
 * Cache-Control parsing (RFC 9111 §5.2) for requests and responses, and the targeted fields
 * CDN-Cache-Control (RFC 9213) and Surrogate-Control that override it for this cache.
 *
 * Directive names are case-insensitive; arguments may be tokens or quoted strings (§5.2:
 * recipients accept both forms). A directive that appears twice with different arguments is
 * recorded in `conflicting` so freshness can treat the response as stale (§4.2.1).
 */
import { parseDictionary, type Dictionary } from 'structured-headers';

export interface Directives {
  /** Directive name (lower case) → argument, or true when it has none. First occurrence wins. */
  readonly values: ReadonlyMap<string, string | true>;
  /** Names seen more than once with different arguments. */
  readonly conflicting: ReadonlySet<string>;
}

export const NO_DIRECTIVES: Directives = Object.freeze({ values: new Map(), conflicting: new Set<string>() });

/** Parses one or more Cache-Control field lines (multiple lines are a comma-joined list). */
export function parseCacheControl(field: string | string[] | undefined): Directives {
  if (field === undefined) return NO_DIRECTIVES;
  const text = Array.isArray(field) ? field.join(',') : field;
  if (text.length === 0) return NO_DIRECTIVES;
  const values = new Map<string, string | true>();
  const conflicting = new Set<string>();
  for (const part of splitList(text)) {
    const eq = part.indexOf('=');
    const name = (eq === -1 ? part : part.slice(0, eq)).trim().toLowerCase();
    if (name.length === 0) continue;
    let argument: string | true = true;
    if (eq !== -1) {
      argument = part.slice(eq + 1).trim();
      if (argument.length >= 2 && argument.startsWith('"') && argument.endsWith('"')) {
        argument = argument.slice(1, -1).replace(/\\(.)/g, '$1');
      }
    }
    const previous = values.get(name);
    if (previous === undefined) values.set(name, argument);
    else if (previous !== argument) conflicting.add(name);
  }
  return { values, conflicting };
}

/** Splits on commas outside quoted strings. */
function splitList(text: string): string[] {
  if (text.indexOf('"') === -1) return text.split(',');
  const parts: string[] = [];
  let start = 0;
  let quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 0x5c /* \ */ && quoted) i++;
    else if (c === 0x22 /* " */) quoted = !quoted;
    else if (c === 0x2c /* , */ && !quoted) {
      parts.push(text.slice(start, i));
      start = i + 1;
    }
  }
  parts.push(text.slice(start));
  return parts;
}

export function has(directives: Directives, name: string): boolean {
  return directives.values.has(name);
}

/**
 * A delta-seconds argument (§1.2.2): digits only. Returns undefined when absent, NaN when the
 * argument is invalid (callers treat invalid freshness as stale), and clamps very large values
 * to 2^31 as the RFC asks.
 */
export function deltaSeconds(directives: Directives, name: string): number | undefined {
  const argument = directives.values.get(name);
  if (argument === undefined) return undefined;
  if (argument === true || !/^\d+$/.test(argument)) return Number.NaN;
  const value = Number(argument);
  return value > 2147483648 ? 2147483648 : value;
}

/**
 * Which field governs caching for this cache: CDN-Cache-Control (RFC 9213 §2.1) when present and
 * valid, then Surrogate-Control, else Cache-Control. A targeted field replaces Cache-Control and
 * Expires entirely for this cache (RFC 9213 §2.2).
 */
export function governingDirectives(headers: Record<string, string | string[] | undefined>): {
  directives: Directives;
  targeted: boolean;
} {
  const cdn = headers['cdn-cache-control'];
  if (cdn !== undefined) {
    const directives = parseTargetedField(cdn);
    if (directives !== undefined) return { directives, targeted: true };
  }
  // Surrogate-Control predates Structured Fields: Cache-Control syntax.
  const surrogate = headers['surrogate-control'];
  if (surrogate !== undefined) {
    const directives = parseCacheControl(surrogate);
    if (directives.values.size > 0) return { directives, targeted: true };
  }
  return { directives: parseCacheControl(headers['cache-control']), targeted: false };
}

/** Directives whose argument is delta-seconds: an Integer in a targeted field. */
const INTEGER_DIRECTIVES = new Set(['max-age', 's-maxage', 'stale-while-revalidate', 'stale-if-error']);
/** Directives that may carry a field-name list: a String in a targeted field (qualified forms). */
const LIST_DIRECTIVES = new Set(['no-cache', 'private']);
/** Stands for an argument of the wrong type: `deltaSeconds` reads it as invalid (NaN). */
const INVALID_ARGUMENT = '<invalid>';

/**
 * A targeted field is a Structured Fields Dictionary (RFC 9213 §2.1, RFC 9651 §3.2). Undefined
 * when it does not parse, or is empty: the field is then ignored as a whole (§2.2). A directive
 * whose value has the wrong type is invalid: delta-seconds ones then read as invalid (a response
 * with an invalid max-age is stale), the others are not consumed. Unknown keys are kept, and
 * ignored like any unknown directive.
 */
export function parseTargetedField(field: string | string[]): Directives | undefined {
  const text = Array.isArray(field) ? field.join(', ') : field;
  let dictionary: Dictionary;
  try {
    dictionary = parseDictionary(text);
  } catch {
    return undefined;
  }
  if (dictionary.size === 0) return undefined;
  const values = new Map<string, string | true>();
  for (const [name, member] of dictionary) {
    const value = member[0];
    if (INTEGER_DIRECTIVES.has(name)) {
      values.set(name, typeof value === 'number' && value >= 0 && !isDecimal(text, name) ? String(value) : INVALID_ARGUMENT);
    } else if (value === true) {
      values.set(name, true);
    } else if (typeof value === 'string' && LIST_DIRECTIVES.has(name)) {
      values.set(name, value);
    } else if (!KNOWN_BOOLEAN.has(name) && value !== false) {
      // An extension directive: its argument as text, for whatever reads it.
      values.set(name, Array.isArray(value) ? INVALID_ARGUMENT : String(value));
    }
  }
  return { values, conflicting: new Set() };
}

/**
 * structured-headers hands Integers and Decimals back alike as numbers (`10.0` as 10): whether
 * the member that won (the last of its name) was written as a Decimal is read from the field.
 */
function isDecimal(text: string, name: string): boolean {
  let written: string | undefined;
  for (const match of text.matchAll(new RegExp(`(?:^|,)[ \\t]*${name}=(-?[0-9.]+)`, 'g'))) written = match[1];
  return written === undefined || written.includes('.');
}

/** Directives without an argument (RFC 9111 §5.2.2, RFC 8246, RFC 9213): only Boolean true turns them on. */
const KNOWN_BOOLEAN = new Set(['no-store', 'no-cache', 'private', 'public', 'must-revalidate', 'proxy-revalidate', 'must-understand', 'no-transform', 'immutable']);
