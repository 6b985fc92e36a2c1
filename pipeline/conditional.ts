/**
 * Conditional requests answered from a stored response:
 * If-None-Match / If-Modified-Since (RFC 9110 §13.1.2, §13.1.3, evaluated per §13.2.2).
 * Ranges and If-Range are in ranges.ts.
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
