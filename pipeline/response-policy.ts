/**
 * Whether an upstream response may be stored, and its time model, decided once when it arrives
 * (RFC 9111 §3, §4.2) so a hit only compares numbers.
 *
 * Storability starts from http-cache-semantics' `storable()` (method, status, no-store, private,
 * Authorization, explicit freshness or cacheable-by-default status; shared-cache mode) and adds
 * what a CDN needs: targeted fields (RFC 9213), Set-Cookie, Vary: *, 1xx. Freshness is computed
 * here rather than by the library because it must honour targeted fields, conflicting
 * directives, operator defaults and precise §4.2.3 age arithmetic.
 */
import CachePolicy from 'http-cache-semantics';
import { parseHttpDate } from './http-date.js';
import { NO_DIRECTIVES, deltaSeconds, governingDirectives, has, parseCacheControl, type Directives } from './cache-control.js';
import type { HeaderMap } from './upstream.js';

/** Why a response was not stored; the string appears in Cache-Status `detail`, logs and metrics. */
export type NotStoredReason =
  | 'method'
  | 'status'
  | 'request-no-store'
  | 'no-store'
  | 'private'
  | 'authorization'
  | 'set-cookie'
  | 'vary-star'
  | 'no-freshness'
  | 'too-large'
  | 'vary-cap'
  | 'incomplete'
  | 'stale-on-arrival'
  /** The URL was purged or invalidated while the response was on its way. */
  | 'purged';

export interface FreshnessConfig {
  /** Share of (Date − Last-Modified) used as heuristic freshness (§4.2.2). */
  heuristicFraction: number;
  /** Cap on heuristic freshness. */
  heuristicMaxSec: number;
  /** Freshness for responses with no explicit freshness and no heuristic basis (like proxy_cache_valid); 0 = none. */
  defaultTtlSec: number;
  /** stale-while-revalidate window for responses that send none. */
  defaultGraceSec: number;
  /** stale-if-error window for responses that send none. */
  defaultStaleIfErrorSec: number;
  /** How long a stale entry is kept past its windows (conditional revalidation, max-stale). */
  keepSec: number;
}

export interface ResponseTimes {
  /** When the upstream request was sent (ms). */
  requestTime: number;
  /** When the response headers arrived (ms). */
  responseTime: number;
}

/** The time model and flags of a stored response (all instants are ms since the epoch). */
export interface Freshness {
  /** Freshness lifetime in seconds (§4.2.1). */
  lifetimeSec: number;
  /** corrected_initial_age (§4.2.3), seconds. */
  initialAgeSec: number;
  staleAt: number;
  /** stale-while-revalidate window end. */
  swrUntil: number;
  /** stale-if-error window end. */
  sieUntil: number;
  graceUntil: number;
  deleteAt: number;
  /** must-revalidate, proxy-revalidate or s-maxage: never served stale (§4.2.4, §5.2.2.2, §5.2.2.8, §5.2.2.10). */
  noStale: boolean;
}

/** Statuses cacheable by default: heuristic freshness applies to them (§4.2.2, RFC 9110 §15.1). */
const HEURISTIC_STATUSES = new Set([200, 203, 204, 206, 300, 301, 308, 404, 405, 410, 414, 501]);
/** The statuses http-cache-semantics implements; for these its `storable()` decides (with our directives). */
const LIBRARY_STATUSES = new Set([200, 203, 204, 300, 301, 302, 303, 307, 308, 404, 405, 410, 414, 501]);

/**
 * Which final statuses may be stored: undefined for every one RFC 9111 §3 allows (any final
 * status with explicit freshness, or cacheable by default); a set to restrict it, as nginx's
 * proxy_cache_valid does.
 */
export type StatusPolicy = ReadonlySet<number> | undefined;

export interface StorabilityInput {
  method: string;
  requestHeaders: Record<string, string | string[] | undefined>;
  status: number;
  responseHeaders: HeaderMap;
  /** Operator opted in to storing responses with Set-Cookie for this path. */
  allowSetCookie: boolean;
  statuses: StatusPolicy;
}

/** Returns undefined when the response may be stored, else why not (§3). */
export function notStorableReason(input: StorabilityInput): NotStoredReason | undefined {
  const { method, status, responseHeaders } = input;
  if (method !== 'GET' && method !== 'HEAD') return 'method';
  // Interim responses are never stored; partial content is not (ranges are served from full bodies); a 304 updates (§4.3.4).
  if (status < 200 || status === 206 || status === 304) return 'status';
  if (input.statuses !== undefined && !input.statuses.has(status)) return 'status';
  const requestDirectives = governingRequestDirectives(input.requestHeaders);
  if (has(requestDirectives, 'no-store')) return 'request-no-store';
  const { directives, targeted } = governingDirectives(responseHeaders);
  // §5.2.2.3: must-understand limits storing to statuses whose rules this cache implements, and
  // for those it overrides no-store.
  const mustUnderstand = has(directives, 'must-understand');
  if (mustUnderstand && !UNDERSTOOD_STATUSES.has(status)) return 'status';
  if (has(directives, 'no-store') && !mustUnderstand) return 'no-store';
  if (has(directives, 'private')) return 'private';
  const vary = headerText(responseHeaders['vary']);
  if (vary !== undefined && vary.split(',').some((v) => v.trim() === '*')) return 'vary-star';
  if (responseHeaders['set-cookie'] !== undefined && !input.allowSetCookie) return 'set-cookie';
  if (input.requestHeaders['authorization'] !== undefined && !allowsAuthorized(directives)) return 'authorization';
  if (LIBRARY_STATUSES.has(status)) {
    const understood = new Map(directives.values);
    understood.delete('no-store');
    const policy = new CachePolicy(
      { method, url: '/', headers: flatten(input.requestHeaders) },
      { status, headers: { ...flatten(responseHeaders), 'cache-control': formatDirectives(understood) } },
      { shared: true },
    );
    if (policy.storable()) return undefined;
  } else if (hasExplicitFreshness(directives, responseHeaders, targeted) || has(directives, 'public')) {
    // §3: any final status may be stored with explicit freshness or `public`, 4xx and 5xx included.
    return undefined;
  }
  if (!HEURISTIC_STATUSES.has(status) && !hasExplicitFreshness(directives, responseHeaders, targeted)) return 'status';
  return 'no-freshness';
}

/**
 * Final statuses whose caching rules this cache implements (§5.2.2.3): those RFC 9110 defines.
 * Their rules are the generic ones of RFC 9111; 206 and 304 have their own and are handled apart.
 */
const UNDERSTOOD_STATUSES = new Set([
  200, 201, 202, 203, 204, 205, 300, 301, 302, 303, 307, 308, 400, 401, 402, 403, 404, 405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417,
  421, 422, 426, 500, 501, 502, 503, 504, 505,
]);

/** §3.5: a shared cache may store a response to an authorized request only with these. */
function allowsAuthorized(directives: Directives): boolean {
  return has(directives, 'public') || has(directives, 's-maxage') || has(directives, 'must-revalidate');
}

/** §4.2.1: s-maxage, max-age, or Expires (unless a targeted field replaces it, RFC 9213 §2.2). */
function hasExplicitFreshness(directives: Directives, headers: HeaderMap, targeted: boolean): boolean {
  return has(directives, 's-maxage') || has(directives, 'max-age') || (!targeted && headers['expires'] !== undefined);
}

/** Computes the time model of a storable response (§4.2). */
export function computeFreshness(
  status: number,
  headers: HeaderMap,
  times: ResponseTimes,
  config: FreshnessConfig,
): Freshness {
  const { directives, targeted } = governingDirectives(headers);
  const lifetimeSec = freshnessLifetime(status, headers, directives, targeted, times, config);
  const initialAgeSec = correctedInitialAge(headers, times);
  const noStale = has(directives, 'must-revalidate') || has(directives, 'proxy-revalidate') || has(directives, 's-maxage');
  // Not clamped: a response that arrives already stale (Age > lifetime) became stale in the past,
  // and its stale-while-revalidate / stale-if-error windows count from then (RFC 5861).
  const staleAt = times.responseTime + (lifetimeSec - initialAgeSec) * 1000;
  const swrSec = windowSec(directives, 'stale-while-revalidate', config.defaultGraceSec);
  const sieSec = windowSec(directives, 'stale-if-error', config.defaultStaleIfErrorSec);
  const swrUntil = noStale ? staleAt : staleAt + swrSec * 1000;
  const sieUntil = noStale ? staleAt : staleAt + sieSec * 1000;
  const graceUntil = Math.max(swrUntil, sieUntil);
  // Kept past its windows for conditional revalidation and for clients that accept stale (max-stale).
  const deleteAt = graceUntil + config.keepSec * 1000;
  return { lifetimeSec, initialAgeSec, staleAt, swrUntil, sieUntil, graceUntil, deleteAt, noStale };
}

function windowSec(directives: Directives, name: string, fallback: number): number {
  const value = deltaSeconds(directives, name);
  if (value === undefined) return fallback;
  return Number.isNaN(value) ? 0 : value;
}

/** §4.2.1, shared cache: s-maxage, then max-age, then Expires − Date, then heuristics (§4.2.2). */
function freshnessLifetime(
  status: number,
  headers: HeaderMap,
  directives: Directives,
  targeted: boolean,
  times: ResponseTimes,
  config: FreshnessConfig,
): number {
  // Response no-cache (qualified forms treated as unqualified, §5.2.2.4): store, but revalidate on every use.
  if (has(directives, 'no-cache')) return 0;
  for (const name of ['s-maxage', 'max-age']) {
    const value = deltaSeconds(directives, name);
    if (value === undefined) continue;
    // Invalid or conflicting duplicates make the response stale (§4.2.1, §1.2.2).
    if (Number.isNaN(value) || directives.conflicting.has(name)) return 0;
    return value;
  }
  // A targeted field replaces Cache-Control and Expires for this cache (RFC 9213 §2.2).
  const expiresField = targeted ? undefined : headers['expires'];
  if (expiresField !== undefined) {
    if (Array.isArray(expiresField) && new Set(expiresField).size > 1) return 0;
    const expires = parseHttpDate(headerText(expiresField));
    // An invalid Expires (e.g. "0") means already expired (§5.3).
    if (expires === undefined) return 0;
    const date = parseHttpDate(headerText(headers['date'])) ?? times.responseTime;
    return Math.max(0, (expires - date) / 1000);
  }
  if (HEURISTIC_STATUSES.has(status) || has(directives, 'public')) {
    const lastModified = parseHttpDate(headerText(headers['last-modified']));
    const date = parseHttpDate(headerText(headers['date'])) ?? times.responseTime;
    if (lastModified !== undefined && date > lastModified) {
      return Math.min(((date - lastModified) / 1000) * config.heuristicFraction, config.heuristicMaxSec);
    }
    return config.defaultTtlSec;
  }
  return 0;
}

/** §4.2.3: corrected_initial_age = max(apparent_age, age_value + response_delay). */
export function correctedInitialAge(headers: HeaderMap, times: ResponseTimes): number {
  const date = parseHttpDate(headerText(headers['date']));
  const apparentAge = date === undefined ? 0 : Math.max(0, (times.responseTime - date) / 1000);
  const responseDelay = Math.max(0, (times.responseTime - times.requestTime) / 1000);
  const correctedAgeValue = ageValue(headers) + responseDelay;
  return Math.max(apparentAge, correctedAgeValue);
}

/**
 * Age (§5.1): a non-negative integer; an invalid value is ignored (treated as 0). A list (a
 * second line joined on, or `7200, 0`) counts by its first member, parameters dropped.
 */
function ageValue(headers: HeaderMap): number {
  const field = headers['age'];
  const text = Array.isArray(field) ? field[0] : field;
  if (text === undefined) return 0;
  const first = text.split(',', 1)[0]!.split(';', 1)[0]!.trim();
  if (!/^\d+$/.test(first)) return 0;
  return Math.min(Number(first), 2147483648);
}

/** Request Cache-Control, with `Pragma: no-cache` honoured when Cache-Control is absent (§5.4). */
export function governingRequestDirectives(headers: Record<string, string | string[] | undefined>): Directives {
  const cacheControl = headers['cache-control'];
  if (cacheControl !== undefined) return parseCacheControl(cacheControl);
  if (headers['pragma'] !== undefined) {
    const pragma = headerText(headers['pragma'])?.toLowerCase() ?? '';
    if (pragma.split(',').some((p) => p.trim() === 'no-cache')) {
      return { values: new Map([['no-cache', true]]), conflicting: new Set() };
    }
  }
  return NO_DIRECTIVES;
}

export function headerText(field: string | string[] | undefined): string | undefined {
  if (field === undefined) return undefined;
  return Array.isArray(field) ? field.join(', ') : field;
}

function flatten(headers: Record<string, string | string[] | undefined>): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [name, value] of Object.entries(headers)) if (value !== undefined) out[name] = headerText(value)!;
  return out;
}

function formatDirectives(values: ReadonlyMap<string, string | true>): string {
  return [...values].map(([name, value]) => (value === true ? name : `${name}=${value}`)).join(', ');
}
