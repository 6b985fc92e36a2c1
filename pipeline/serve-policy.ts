/**
 * Whether a cached response may satisfy a request now (RFC 9111 §4.2, §5.2.1; RFC 5861). One
 * function answers it for a response read from the store and for one a fill is still streaming
 * in: a request gets a shared fill only when the store could have served it the same response.
 */
import type { EntryMeta } from '../storage/cache-store.js';
import { deltaSeconds, has, type Directives } from './cache-control.js';
import type { ResponseRecord } from './stored-response.js';

export type Verdict =
  /** Fresh, and the request's own directives accept it: a hit. */
  | 'fresh'
  /** Stale, but the request accepts it (max-stale, §5.2.1.2). */
  | 'stale-allowed'
  /** Stale within stale-while-revalidate: serve it and refresh in the background. */
  | 'stale-while-revalidate'
  /** Stale: validate (or fetch) before use. */
  | 'revalidate'
  /** Fresh, but refused by the request's own directives (no-cache, max-age, min-fresh): fwd=request (RFC 9211 §2.2). */
  | 'request';

export function verdict(d: Directives, record: ResponseRecord, meta: EntryMeta, now: number): Verdict {
  const fresh = now < meta.staleAt;
  if (d.values.size > 0) {
    const refused = fresh ? 'request' : 'revalidate';
    if (has(d, 'no-cache')) return refused;
    const currentAge = record.initialAgeSec + (now - meta.storedAt) / 1000;
    const maxAge = deltaSeconds(d, 'max-age');
    if (maxAge !== undefined && !(currentAge <= maxAge)) return refused;
    const minFresh = deltaSeconds(d, 'min-fresh');
    if (minFresh !== undefined && !((meta.staleAt - now) / 1000 >= minFresh)) return refused;
    if (!fresh && !record.noStale && has(d, 'max-stale')) {
      const maxStale = deltaSeconds(d, 'max-stale');
      // max-stale with no value accepts any staleness (§5.2.1.2).
      if (d.values.get('max-stale') === true || (maxStale !== undefined && (now - meta.staleAt) / 1000 <= maxStale)) return 'stale-allowed';
    }
  }
  if (fresh) return 'fresh';
  if (!record.noStale && now < record.swrUntil) return 'stale-while-revalidate';
  return 'revalidate';
}

/**
 * Fresh when it arrived (§4.2): false for a zero lifetime, `no-cache`, an Expires at or before
 * Date, an invalid Expires, or an Age beyond the lifetime. Such a response may be stored for
 * conditional revalidation (and, stored or committing, served stale where the request or
 * stale-while-revalidate allows), but is never shared with requests waiting on its fetch, and
 * makes its key hit-for-miss.
 */
export function freshOnArrival(meta: EntryMeta): boolean {
  return meta.staleAt > meta.storedAt;
}

/**
 * Requests whose own directives refuse any response that was not fetched for them: waiting on
 * another request's fill would only delay their own forward request.
 */
export function refusesShared(d: Directives): boolean {
  return d.values.size > 0 && (has(d, 'no-cache') || deltaSeconds(d, 'max-age') === 0);
}

/** RFC 5861 §4: a stale copy may stand in for an error within its window, unless must-revalidate & co forbid it. */
export function staleIfErrorAllowed(record: ResponseRecord | undefined, now: number): boolean {
  return record !== undefined && !record.noStale && now < record.sieUntil;
}
