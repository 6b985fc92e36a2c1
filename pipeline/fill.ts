/**
 * The fetch phase (DESIGN.md): fills, and the one rule of who gets which response.
 *
 * A fill is one upstream fetch on behalf of the cache. Its life, per key (`entryKey(url, variant)`):
 *
 *   lead ──fetch──▶ settle ──(commit window: body streaming into the store)──▶ close
 *   waiters queue      │        late arrivals join at once                       the store answers
 *   (≤ lockWaitMs)     └─ waiters get the result, each through `join`              from here on
 *
 * - Single-flight: the first request for a key leads; requests that arrive while it fetches wait
 *   for its outcome instead of fetching again (Pingora's cache lock, Varnish's waiting list).
 * - The commit window: a response is delivered before the store has committed it. Until the
 *   commit ends the fill stays registered, so a request that arrives meanwhile (the store cannot
 *   answer it yet) still finds it and is served as a hit, not refetched.
 * - Who gets which response (`join`): a request that did not cause the fetch, whether it waited
 *   or arrived late, gets its response only if the store could serve it that same response now:
 *   the same Vary variant, fresh for this request by its own directives (no-cache, max-age,
 *   min-fresh), not stale on arrival, body still whole. Otherwise it makes its own request,
 *   conditional where a stored response has validators.
 * - Hit-for-miss: a key whose last response was unstorable, or stale on arrival, is not
 *   collapsed for hitForMissSec, so a stampede on it is not serialised behind one fetch.
 */
import type { Logger } from 'pino';
import type { CachedEntry, EntryMeta } from '../storage/cache-store.js';
import { entryKey, primaryKeyPrefix, urlKeyPrefix } from '../storage/keys.js';
import { RemovalLog } from '../storage/removal-log.js';
import { has } from './cache-control.js';
import { weakTag } from './conditional.js';
import {
  CLIENT_CONDITIONALS,
  abortOnClientClose,
  asUpstreamError,
  discard,
  forwardInterim,
  hasConditional,
  upstreamHeaders,
  type Exchange,
  type Lookup,
} from './exchange.js';
import { headerText, type NotStoredReason, type ResponseTimes } from './response-policy.js';
import { ExpiringKeys } from './expiring-keys.js';
import { sliceAnswer, sliceRangeHeader } from './slices.js';
import { freshOnArrival, refusesShared, staleIfErrorAllowed, verdict } from './serve-policy.js';
import type { PurgeRequest } from './purge.js';
import { FillEntry, type StoreWriter, type StreamingResponse } from './store-writer.js';
import type { ResponseRecord } from './stored-response.js';
import { UpstreamError, type Upstream, type UpstreamResponse } from './upstream.js';
import { variantKey } from './vary.js';

/** Why a request went upstream; its Cache-Status `fwd` value (RFC 9211 §2.2). */
export type Forward = 'uri-miss' | 'vary-miss' | 'stale' | 'request' | 'bypass';

/**
 * How a request came by a response: it led the fill, fetched its own, waited on another's fetch
 * (collapsed), or arrived in another's commit window (a hit: the response was there already).
 */
export type Source = 'led' | 'own' | 'waited' | 'late';

/** What one fetch produced. */
type FillResult =
  | { kind: 'stream'; stream: StreamingResponse }
  /** A 304 refreshed the stored response. */
  | { kind: 'entry'; entry: CachedEntry }
  | { kind: 'error'; error: UpstreamError; status: number | undefined }
  /**
   * Not stored (`reason`, or undefined when storing was not attempted): for its requester only.
   * `sliced`: a 206 holding one slice of a larger object (cut in slices of this size), which the
   * requester reads in slices.
   */
  | { kind: 'response'; response: UpstreamResponse; reason: NotStoredReason | undefined; sliced?: number };

/** What a fill leaves for the requests that join it: everything but an unstored response itself. */
type SharedResult = Exclude<FillResult, { kind: 'response' }> | { kind: 'unshared'; reason: NotStoredReason | undefined };

/** What the fetch phase hands to delivery. */
export type Obtained = { fwd: Forward } & (
  | { kind: 'stream'; stream: StreamingResponse; source: Source }
  | { kind: 'entry'; entry: CachedEntry; source: Source }
  | { kind: 'error'; error: UpstreamError; status: number | undefined }
  | { kind: 'response'; response: UpstreamResponse; reason: NotStoredReason | undefined; sliced?: number }
);

interface Flight {
  /** Set when the fetch has an outcome; until then requests wait in `waiters`. */
  result: SharedResult | undefined;
  waiters: Array<(result: SharedResult | undefined) => void>;
  /** Started because nothing was stored for the URL: requests for it may skip their store lookup. */
  missFill: boolean;
}

/** Statuses that count as an upstream error for stale-if-error (RFC 5861 §4). */
const ERROR_STATUSES = new Set([500, 502, 503, 504]);
/** Not-stored reasons that come from one request or moment, not from the key: they do not make it hit-for-miss. */
const PASSING_REASONS = new Set<NotStoredReason>(['authorization', 'request-no-store', 'purged']);
/** How long slices of a URL whose versions were found mixed are fetched with no-cache (the tiers above may hold the old one). */
const SLICE_MISMATCH_MS = 60_000;

export interface FillSettings {
  nodeName: string;
  /** Longest a request waits on another's fill before fetching on its own. */
  lockWaitMs: number;
  hitForMissSec: number;
  /** Size of the ranges a sliced object is fetched in (slices.ts). */
  sliceSize: number;
}

export interface FillDeps {
  settings: FillSettings;
  upstream: Upstream;
  writer: StoreWriter;
  logger: Logger;
  now: () => number;
  /** Registers background work that shutdown waits for. */
  track: (task: Promise<unknown>) => void;
}

export class Fills {
  private readonly flights = new Map<string, Flight>();
  /** Keys not collapsed until the time given (ms). */
  private readonly hitForMiss: ExpiringKeys;
  /** Invalidations and purges: a fetch begun before one of them neither stores nor shares its response. */
  private readonly removals = new RemovalLog();
  /** URLs whose slices were of different versions lately: their slice fetches say no-cache. */
  private readonly sliceMismatches: ExpiringKeys;
  private readonly settings: FillSettings;
  private readonly upstream: Upstream;
  private readonly writer: StoreWriter;
  private readonly logger: Logger;
  private readonly now: () => number;
  private readonly track: (task: Promise<unknown>) => void;

  constructor(deps: FillDeps) {
    this.settings = deps.settings;
    this.upstream = deps.upstream;
    this.writer = deps.writer;
    this.logger = deps.logger;
    this.now = deps.now;
    this.track = deps.track;
    this.hitForMiss = new ExpiringKeys(deps.now);
    this.sliceMismatches = new ExpiringKeys(deps.now);
  }

  /** Keys with a fetch or a commit window open. */
  get inFlight(): number {
    return this.flights.size;
  }

  /** True while a fill that found nothing stored for the URL is fetching: join it without a store lookup. */
  awaitingMissFill(primaryKey: string): boolean {
    const flight = this.flights.get(primaryKey);
    return flight !== undefined && flight.result === undefined && flight.missFill;
  }

  /**
   * The response a fill for `key` is committing, if it is this request's variant: the lookup
   * phase treats it exactly as a stored response, so a request in the commit window gets what
   * the store will give it a moment later (hit, stale, revalidation), never more.
   */
  committing(x: Exchange, key: string): FillEntry | undefined {
    const stream = inCommitWindow(this.flights.get(key)?.result);
    if (stream === undefined) return undefined;
    const fields = stream.record.vary;
    if (fields.length > 0 && variantKey(fields, x.req.headers) !== variantKey(fields, stream.requestHeaders)) return undefined;
    const entry = new FillEntry(stream);
    return entry.usable ? entry : undefined;
  }

  /**
   * A purge or an invalidation (§4.4): the fills it covers are no longer joined or found by
   * lookups, and a fetch that began before now neither stores nor shares its response (a store
   * commit already under way is refused by the store). Requests already waiting on a fill still
   * get its result: they arrived before the purge. A tag purge drops every fill still fetching,
   * since their tags are not known yet.
   */
  forget(purge: PurgeRequest): void {
    if (purge.url !== undefined) {
      const prefix = urlKeyPrefix(purge.url);
      this.removals.purgedUrl(purge.url);
      this.dropFlights((key) => key.startsWith(prefix));
    } else if (purge.tags !== undefined) {
      for (const tag of purge.tags) this.removals.purgedTag(tag);
      const tags = purge.tags;
      this.dropFlights((_key, flight) => flight.result === undefined || tags.some((tag) => inCommitWindow(flight.result)?.meta.tags.includes(tag)));
    } else {
      // A prefix, or everything (the empty prefix).
      const prefix = purge.prefix ?? '';
      this.removals.purgedPrefix(prefix);
      this.dropFlights((key) => key.startsWith(primaryKeyPrefix(prefix)));
    }
  }

  /**
   * Slices of `url` carried different validators: for a while its slices are fetched with
   * no-cache, so a shield above that still holds the old version's slices validates them with
   * the origin instead of handing them out again (§5.2.1.4).
   */
  noteSliceMismatch(url: string): void {
    this.sliceMismatches.add(url, SLICE_MISMATCH_MS);
  }

  /** A position in the purge log: `purgedSince` tells whether a purge covering an entry ran after it. */
  mark(): number {
    return this.removals.mark();
  }

  purgedSince(mark: number, key: string, tags: readonly string[]): boolean {
    return this.removals.removedSince(mark, key, tags);
  }

  private dropFlights(matches: (key: string, flight: Flight) => boolean): void {
    for (const [key, flight] of this.flights) if (matches(key, flight)) this.flights.delete(key);
  }

  /** The fetch phase for a request the store could not satisfy: lead, join or fetch alone. */
  async obtain(x: Exchange, l: Lookup, fwd: Forward): Promise<Obtained> {
    const key = entryKey(x.url, l.variant);
    // Requests that may never share a response do not wait, and do not make others wait (§3.5, §5.2.1.5).
    if (has(x.directives, 'no-store') || x.req.headers.authorization !== undefined) return this.fetchOwn(x, l, key, fwd, 'uncollapsible');
    // A stored response is still revalidated (fwd=stale); with nothing stored the cache steps aside (fwd=bypass).
    if (this.hitForMiss.has(key)) return this.fetchOwn(x, l, key, l.entry ? fwd : 'bypass', 'hit-for-miss');
    const flight = this.flights.get(key);
    if (flight === undefined) return this.lead(x, l, key, fwd);
    if (flight.result === undefined && refusesShared(x.directives)) return this.fetchOwn(x, l, key, fwd, 'refuses-shared');
    if (flight.result !== undefined) return this.join(x, l, key, flight.result, fwd, 'late');
    const result = await this.wait(flight);
    if (result === undefined) return this.fetchOwn(x, l, key, fwd, 'lock-timeout');
    return this.join(x, l, key, result, fwd, 'waited');
  }

  /**
   * stale-while-revalidate: exactly one background fetch per key; the client is already answered.
   * A response in its commit window is no fetch: a stale one is revalidated like a stored one.
   */
  revalidateInBackground(x: Exchange, l: Lookup): void {
    const key = entryKey(x.url, l.variant);
    const current = this.flights.get(key);
    if (current !== undefined && current.result === undefined) return;
    const flight = this.open(key, l, undefined);
    const task = this.fetchForCache(x, l, key, { storing: true, signal: undefined, interim: false, mark: this.removals.mark() }).then((result) => {
      if (result.kind === 'response') result.response.body.resume();
      this.settle(key, flight, result);
    });
    this.track(task);
  }

  /**
   * Who gets which response: a request that did not cause the fetch gets its result only where
   * the store could serve it the same response to this very request now.
   */
  private join(x: Exchange, l: Lookup, key: string, result: SharedResult, fwd: Forward, source: 'waited' | 'late'): Obtained | Promise<Obtained> {
    switch (result.kind) {
      case 'error':
        return { ...result, fwd };
      case 'unshared':
        return this.fetchOwn(x, l, key, fwd, result.reason === undefined ? 'not-stored' : `not-stored:${result.reason}`);
      case 'entry': {
        const refused = this.refusal(x, result.entry.meta);
        if (refused !== undefined) return this.fetchOwn(x, l, key, refused === 'request' ? 'request' : fwd, `shared-${refused}`);
        x.detail = source === 'waited' ? 'collapsed' : undefined;
        return { kind: 'entry', entry: result.entry, source, fwd };
      }
      case 'stream': {
        const stream = result.stream;
        if (stream.broadcast.failed || !stream.broadcast.acceptsReaders) return this.fetchOwn(x, l, key, fwd, 'fill-failed');
        const fields = stream.record.vary;
        if (fields.length > 0) {
          const variant = variantKey(fields, x.req.headers);
          if (variant !== variantKey(fields, stream.requestHeaders)) {
            // Another variant (§4.1): collapse with the requests for that one instead, once.
            if (l.variant === '') return this.obtain(x, { entry: undefined, variant, vary: undefined }, 'vary-miss');
            return this.fetchOwn(x, l, key, 'vary-miss', 'vary-mismatch');
          }
        }
        const refused = this.refusal(x, stream.meta);
        if (refused !== undefined) {
          // Its validators serve as a stored response's would: the request's own fetch is conditional.
          const own = l.entry === undefined ? { ...l, entry: new FillEntry(stream) } : l;
          return this.fetchOwn(x, own, key, refused === 'request' ? 'request' : fwd, `shared-${refused}`);
        }
        x.detail = source === 'waited' ? 'collapsed' : undefined;
        return { kind: 'stream', stream, source, fwd };
      }
    }
  }

  /**
   * Undefined when a shared response is fresh for this request; else why not: `request` (its own
   * directives refuse it, fwd=request) or `stale` (stale on arrival or by now).
   */
  private refusal(x: Exchange, meta: EntryMeta): 'request' | 'stale' | undefined {
    const v = verdict(x.directives, meta.http as unknown as ResponseRecord, meta, this.now());
    if (v === 'fresh') return undefined;
    return v === 'request' ? 'request' : 'stale';
  }

  private async lead(x: Exchange, l: Lookup, key: string, fwd: Forward): Promise<Obtained> {
    const flight = this.open(key, l, undefined);
    // Not tied to the leader's client: if it goes away, the fill still completes for every waiter.
    const fill = this.fetchForCache(x, l, key, { storing: true, signal: undefined, interim: true, mark: this.removals.mark() });
    this.track(fill);
    let result: FillResult | undefined;
    try {
      result = await fill;
    } finally {
      // Whatever happens, no request is left waiting on this flight. (The error is made only when
      // needed: an Error captures a stack, a few percent of a miss's CPU.)
      this.settle(key, flight, result ?? { kind: 'error', error: new UpstreamError('UPSTREAM_PROTOCOL', 'the fill failed'), status: undefined });
    }
    return toObtained(result, 'led', fwd);
  }

  /** A fetch for this request alone (not collapsible, hit-for-miss, refused a shared response). */
  private async fetchOwn(x: Exchange, l: Lookup, key: string, fwd: Forward, detail: string): Promise<Obtained> {
    x.detail = detail;
    // The client's own conditionals go upstream only when the answer will not be stored.
    const storing = !has(x.directives, 'no-store') && !hasConditional(x.req.headers);
    const mark = this.removals.mark();
    const result = await this.fetchForCache(x, l, key, { storing, signal: abortOnClientClose(x), interim: true, mark });
    // Its commit window is open to later requests, unless another fill for the key is still
    // fetching, or the URL was invalidated while it ran.
    const current = this.flights.get(key);
    const committing = inCommitWindow(result);
    if (committing !== undefined && (current === undefined || current.result !== undefined) && !this.removals.removedSince(mark, committing.key, committing.meta.tags)) {
      this.settle(key, this.open(key, l, undefined), result);
    }
    return toObtained(result, 'own', fwd);
  }

  private open(key: string, l: Lookup, result: SharedResult | undefined): Flight {
    const flight: Flight = { result, waiters: [], missFill: l.variant === '' && l.entry === undefined && l.vary === undefined };
    this.flights.set(key, flight);
    return flight;
  }

  /** Hands the result to every waiter; keeps the flight open to late arrivals through its commit window. */
  private settle(key: string, flight: Flight, result: FillResult): void {
    const shared: SharedResult = result.kind === 'response' ? { kind: 'unshared', reason: result.reason } : result;
    flight.result = shared;
    for (const waiter of flight.waiters) waiter(shared);
    flight.waiters.length = 0;
    const close = (): void => {
      if (this.flights.get(key) === flight) this.flights.delete(key);
    };
    // The commit window: until the store has the entry, lookups find it here.
    const committing = inCommitWindow(shared);
    if (committing !== undefined) committing.committed.then(close, close);
    else close();
  }

  private wait(flight: Flight): Promise<SharedResult | undefined> {
    return new Promise((resolve) => {
      const waiter = (result: SharedResult | undefined): void => {
        clearTimeout(timer);
        resolve(result);
      };
      flight.waiters.push(waiter);
      const timer = setTimeout(() => {
        const at = flight.waiters.indexOf(waiter);
        if (at !== -1) flight.waiters.splice(at, 1);
        resolve(undefined);
      }, this.settings.lockWaitMs);
      timer.unref();
    });
  }

  /**
   * One upstream fetch for the cache. With `storing`, it asks for the full response, conditional
   * on a stored response's validators (§4.3.1), and stores what it may. Without, it forwards the
   * client's own method and conditionals and stores nothing. Never throws: whatever fails
   * becomes an error outcome, so no flight is left unsettled.
   */
  private async fetchForCache(
    x: Exchange,
    l: Lookup,
    key: string,
    how: { storing: boolean; signal: AbortSignal | undefined; interim: boolean; mark: number; whole?: boolean },
  ): Promise<FillResult> {
    // An authorized request revalidates nothing shared on everyone's behalf (§3.5): its answer is its own.
    const stored = how.storing && x.req.headers.authorization === undefined ? l.entry : undefined;
    const record = stored?.meta.http as ResponseRecord | undefined;
    // A fill with nothing stored asks for the first slice: a large object is then stored in slices
    // (slices.ts), anything up to sliceSize comes back whole.
    const probe = how.storing && stored === undefined && how.whole !== true && this.settings.sliceSize > 0;
    const slice = l.slice ?? (probe ? { index: 0, size: this.settings.sliceSize } : undefined);
    // A slice is always asked for in full, with our own validators: its answer joins a larger body.
    const headers = upstreamHeaders(x, this.settings.nodeName, how.storing || slice !== undefined ? CLIENT_CONDITIONALS : undefined);
    if (slice !== undefined) {
      headers['range'] = sliceRangeHeader(slice.index, slice.size);
      if (this.sliceMismatches.has(x.url)) headers['cache-control'] = 'no-cache';
    }
    if (record?.etag !== undefined) headers['if-none-match'] = record.etag;
    if (record?.lastModified !== undefined) headers['if-modified-since'] = record.lastModified;
    // A soft purge reaches the tiers above too: their copies must be validated with the origin, not served (§5.2.1.4).
    if (record !== undefined && softPurged(stored!.meta, record)) headers['cache-control'] = 'no-cache';
    const requestTime = this.now();
    let response: UpstreamResponse;
    try {
      response = await this.upstream.request({
        method: how.storing || slice !== undefined ? 'GET' : x.method,
        path: x.path,
        headers,
        body: null,
        cacheKey: x.url,
        idempotent: true,
        signal: how.signal,
        onInterim: how.interim ? (status, interim) => forwardInterim(x, status, interim) : undefined,
      });
    } catch (error) {
      return { kind: 'error', error: asUpstreamError(error), status: undefined };
    }
    const times = { requestTime, responseTime: this.now() };
    try {
      if (response.statusCode === 304 && stored !== undefined) {
        response.body.resume();
        const refreshed = await this.applyNotModified(x, key, stored, response, times);
        if (refreshed !== undefined) return refreshed;
        // The 304 updated nothing (another validator, a newer version, or now unstorable): fetch in full.
        return this.fetchForCache(x, { ...l, entry: undefined }, key, how);
      }
      if (ERROR_STATUSES.has(response.statusCode) && staleIfErrorAllowed(l.entry?.meta.http as ResponseRecord | undefined, this.now())) {
        response.body.resume();
        return { kind: 'error', error: new UpstreamError('UPSTREAM_PROTOCOL', `upstream answered ${response.statusCode}`), status: response.statusCode };
      }
      let part: { index: number; size: number; total: number } | undefined;
      if (slice !== undefined) {
        const answer = sliceAnswer(response, slice.index, slice.size);
        switch (answer.kind) {
          case 'slice':
            part = { ...slice, total: answer.total };
            break;
          case 'whole':
            response = answer.response;
            break;
          case 'unsliceable':
            discard(response.body);
            return this.fetchForCache(x, { ...l, entry: undefined, slice: undefined }, key, { ...how, whole: true });
          case 'mismatch':
            discard(response.body);
            return { kind: 'error', error: new UpstreamError('UPSTREAM_PROTOCOL', answer.message), status: undefined };
          case 'not-for-the-url':
            // A 416 answers this range, not the URL: it is never stored as the URL's response.
            return { kind: 'response', response, reason: undefined };
          case 'other':
            break;
        }
      }
      const sliced = part?.size;
      if (!how.storing) return { kind: 'response', response, reason: undefined, sliced };
      const stream = await this.writer.begin(x, l, response, times, (k, tags) => this.removals.removedSince(how.mark, k, tags), part);
      if (typeof stream === 'string') {
        if (!PASSING_REASONS.has(stream)) this.markHitForMiss(key);
        return { kind: 'response', response, reason: stream, sliced };
      }
      this.noteArrival(key, stream.meta);
      return { kind: 'stream', stream };
    } catch (error) {
      discard(response.body);
      this.logger.warn({ key: x.url, err: (error as Error)?.message }, 'fill failed after the upstream answered');
      return { kind: 'error', error: asUpstreamError(error), status: undefined };
    }
  }

  /** §4.3.4: a 304 updates the stored response its validator selects; if that is not ours, nothing is updated. */
  private async applyNotModified(x: Exchange, key: string, stored: CachedEntry, response: UpstreamResponse, times: ResponseTimes): Promise<FillResult | undefined> {
    const record = stored.meta.http as unknown as ResponseRecord;
    const tag = headerText(response.headers['etag']);
    if (tag !== undefined && (record.etag === undefined || weakTag(tag) !== weakTag(record.etag))) return undefined;
    const refreshed = await this.writer.refresh(x, stored, response.headers, times);
    if (refreshed === undefined) return undefined;
    this.noteArrival(key, refreshed.meta);
    return { kind: 'entry', entry: refreshed };
  }

  /** Hit-for-miss follows the key's latest response: stale on arrival marks it, fresh clears it. */
  private noteArrival(key: string, meta: EntryMeta): void {
    if (freshOnArrival(meta)) this.hitForMiss.delete(key);
    else this.markHitForMiss(key);
  }

  private markHitForMiss(key: string): void {
    this.hitForMiss.add(key, this.settings.hitForMissSec * 1000);
  }
}

/**
 * The response a settled fill holds until the store has it, if any: a body being stored, or a
 * 304's update of a response that was itself still committing.
 */
function inCommitWindow(result: FillResult | SharedResult | undefined): StreamingResponse | undefined {
  if (result?.kind === 'stream') return result.stream;
  if (result?.kind === 'entry' && result.entry instanceof FillEntry) return result.entry.stream;
  return undefined;
}

function toObtained(result: FillResult, source: Source, fwd: Forward): Obtained {
  if (result.kind === 'stream' || result.kind === 'entry') return { ...result, source, fwd };
  return { ...result, fwd };
}

/** Stale before its freshness lifetime ran out: a soft purge marked it (stores set staleAt to the purge time). */
function softPurged(meta: EntryMeta, record: ResponseRecord): boolean {
  return meta.staleAt < meta.storedAt + (record.lifetimeSec - record.initialAgeSec) * 1000 - 1000;
}
