/**
 * Conditional requests and ranges answered from a stored response:
 * If-None-Match / If-Modified-Since (RFC 9110 §13.1.2, §13.1.3, evaluated per §13.2.2),
 * Range / If-Range (RFC 9110 §14.2, §13.1.5).
 */
import { parseHttpDate } from './http-date.js';

/** Weak comparison (RFC 9110 §8.8.3.2): opaque tags equal, W/ prefix ignored. */
export function weakTag(tag: string): string {
  const t = tag.trim();
  return t.startsWith('W/') ? t.slice(2) : t;
}

/** True when the client's copy is current and a 304 may be sent for a GET/HEAD. */
export function notModified(
  ifNoneMatch: string | undefined,
  ifModifiedSince: string | undefined,
  etag: string | undefined,
  lastModified: string | undefined,
): boolean {
  if (ifNoneMatch !== undefined) {
    // If-None-Match takes precedence; If-Modified-Since is then ignored (§13.1.3).
    if (ifNoneMatch.trim() === '*') return true;
    if (etag === undefined) return false;
    const stored = weakTag(etag);
    return ifNoneMatch.split(',').some((candidate) => weakTag(candidate) === stored);
  }
  if (ifModifiedSince !== undefined) {
    const since = parseHttpDate(ifModifiedSince);
    const modified = parseHttpDate(lastModified);
    if (since === undefined || modified === undefined) return false;
    return modified <= since;
  }
  return false;
}

export type RangeResult =
  | { kind: 'full' }
  | { kind: 'partial'; start: number; end: number }
  | { kind: 'unsatisfiable' };

/**
 * One byte range of a representation of `size` bytes. Anything this cache does not serve as a
 * single range (several ranges, other units, syntax errors) gets the full response, which
 * RFC 9110 §14.2 permits (a server MAY ignore Range).
 */
export function selectRange(
  range: string | undefined,
  ifRange: string | undefined,
  size: number,
  etag: string | undefined,
  lastModified: string | undefined,
): RangeResult {
  if (range === undefined) return { kind: 'full' };
  if (ifRange !== undefined && !ifRangeMatches(ifRange, etag, lastModified)) return { kind: 'full' };
  const match = /^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$/i.exec(range);
  if (!match) return { kind: 'full' };
  const [, first, last] = match as unknown as [string, string, string];
  if (first === '' && last === '') return { kind: 'full' };
  if (first === '') {
    // Suffix range: the last N bytes.
    const length = Number(last);
    if (length === 0 || size === 0) return { kind: 'unsatisfiable' };
    return { kind: 'partial', start: Math.max(0, size - length), end: size - 1 };
  }
  const start = Number(first);
  const end = last === '' ? size - 1 : Math.min(Number(last), size - 1);
  if (last !== '' && Number(last) < start) return { kind: 'full' };
  if (start >= size) return { kind: 'unsatisfiable' };
  return { kind: 'partial', start, end };
}

/** If-Range (§13.1.5): a strong ETag match, or an exact Last-Modified date. */
function ifRangeMatches(ifRange: string, etag: string | undefined, lastModified: string | undefined): boolean {
  const value = ifRange.trim();
  if (value.startsWith('"') || value.startsWith('W/')) {
    return etag !== undefined && !value.startsWith('W/') && !etag.startsWith('W/') && value === etag.trim();
  }
  return lastModified !== undefined && parseHttpDate(value) === parseHttpDate(lastModified) && parseHttpDate(value) !== undefined;
}
