/**
 * The one cache pipeline both tiers run (DESIGN.md): an edge and a shield differ only in the
 * Upstream behind it and the request filters in front of it. Phases, named as in DESIGN.md,
 * logs and docs: identify → requestFilter → cacheKey → lookup → fetch → store → deliver → log.
 *
 * The hit path is synchronous when the entry is in memory: no promise, no JSON, no disk.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { BlockList, isIPv6 } from 'node:net';
import type { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { UNKNOWN_SIZE, putEntry, type CacheStore, type CachedEntry, type EntryMeta, type EntryWriter } from '../storage/cache-store.js';
import { entryKey } from '../storage/keys.js';
import { AccessLog } from './access-log.js';
import { BodyBroadcast } from './body-broadcast.js';
import { cacheKey, type CacheKeyOptions } from './cache-key.js';
import { NO_DIRECTIVES, deltaSeconds, has, type Directives } from './cache-control.js';
import { notModified, selectRange, weakTag } from './conditional.js';
import { appendVia, setForwarded, withoutHopByHop } from './forward-headers.js';
import type { Metrics } from './metrics.js';
import {
  computeFreshness,
  governingRequestDirectives,
  headerText,
  notStorableReason,
  type FreshnessConfig,
  type NotStoredReason,
} from './response-policy.js';
import { SingleFlight } from './single-flight.js';
import {
  SURROGATE_FIELDS,
  makeResponseRecord,
  mergeNotModified,
  type HttpRecord,
  type ResponseRecord,
  type VaryRecord,
} from './stored-response.js';
import { UpstreamError, isIdempotent, type HeaderMap, type Upstream, type UpstreamResponse } from './upstream.js';
import { parseVary, variantKey } from './vary.js';

export interface PipelineSettings {
  role: 'edge' | 'shield';
  /** Name in Via and Cache-Status. */
  nodeName: string;
  key: CacheKeyOptions;
  freshness: FreshnessConfig;
  lockWaitMs: number;
  hitForMissSec: number;
  maxVariantsPerUrl: number;
  /** Responses larger than this are not stored. */
  maxObjectSize: number;
  /** Path prefixes whose Set-Cookie responses may be stored (without the cookie). */
  cacheSetCookiePaths: readonly string[];
  /** Peers whose X-Forwarded-* are kept. */
  trustForwardedFrom: readonly string[];
  /** Debug: add key= to Cache-Status. */
  cacheStatusKey: boolean;
  accessLog: boolean;
}

/**
 * A request filter (WAF, rate limit, IP policy) runs before the cache key is computed. Returning
 * true means it answered the request itself and the pipeline stops.
 */
export type RequestFilter = (exchange: Exchange) => boolean;

/** How the cache handled a request; the same words appear in logs and metrics. */
export type CacheOutcome = 'hit' | 'stale' | 'miss' | 'revalidated' | 'bypass' | 'pass' | 'error' | 'synthetic';

/** Per-request state carried through the phases. */
export interface Exchange {
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly id: string;
  readonly startedAt: number;
  readonly method: string;
  readonly clientAddress: string;
  readonly peerTrusted: boolean;
  readonly proto: 'http' | 'https';
  readonly host: string;
  /** Request target in origin form (path and query), as sent upstream. */
  readonly path: string;
  url: string;
  directives: Directives;
  outcome: CacheOutcome;
  detail: string | undefined;
  bytes: number;
}

interface Lookup {
  entry: CachedEntry | undefined;
  /** Variant key of this request ('' when the URL has no Vary record). */
  variant: string;
  /** The Vary record found for the URL, if any. */
  vary: VaryRecord | undefined;
  /** Set when a usable stored response was refused by the request's directives. */
  forwardReason?: 'request';
}

/** What a fill (the leader's upstream fetch) shares with the requests waiting on it. */
type FillResult =
  | {
      kind: 'stream';
      record: ResponseRecord;
      meta: EntryMeta;
      broadcast: BodyBroadcast;
      requestHeaders: IncomingMessage['headers'];
      /** Settles when late requests may no longer join this stream (stored, failed, or not being stored). */
      joinable: Promise<void>;
      /** The upstream's Set-Cookie: delivered to the requester that caused the fetch only, never stored or shared. */
      setCookie: string[] | undefined;
    }
  | { kind: 'entry'; entry: CachedEntry }
  | { kind: 'error'; error: UpstreamError; status: number | undefined }
  | { kind: 'own'; reason: NotStoredReason | 'status' };

/** The leader also receives the response itself when it is not shareable. */
type LeaderResult = FillResult | { kind: 'response'; response: UpstreamResponse; reason: NotStoredReason | 'status' };

/** Fields stripped from a shared fetch: it is for the full representation, validated with our own validators. */
const CLIENT_CONDITIONALS = new Set(['if-none-match', 'if-modified-since', 'if-match', 'if-unmodified-since', 'if-range', 'range']);
/** Statuses that count as an upstream error for stale-if-error (RFC 5861 §4). */
const ERROR_STATUSES = new Set([500, 502, 503, 504]);
/** Fields left out of a 304 from the cache (RFC 9110 §15.4.5: representation metadata). */
const NOT_IN_304 = new Set(['content-type', 'content-encoding', 'content-language', 'content-range', 'content-length']);

export interface PipelineDeps {
  settings: PipelineSettings;
  store: CacheStore;
  upstream: Upstream;
  logger: Logger;
  metrics: Metrics;
  filters?: RequestFilter[];
  now?: () => number;
}

export class CachePipeline {
  readonly flights = new SingleFlight<FillResult>();
  private readonly settings: PipelineSettings;
  private readonly store: CacheStore;
  private readonly upstream: Upstream;
  private readonly logger: Logger;
  private readonly accessLog: AccessLog;
  private readonly metrics: Metrics;
  private readonly filters: RequestFilter[];
  private readonly now: () => number;
  private readonly trusted: BlockList | undefined;
  private readonly requestCounters: Record<CacheOutcome, { inc(): void }>;
  private readonly idPrefix = `${process.pid.toString(36)}${Date.now().toString(36)}-`;
  private sequence = 0;
  /** Disk lookups in progress, by entry key. */
  private readonly pendingLookups = new Map<string, Promise<CachedEntry | undefined>>();
  /** Background revalidations and fills not tied to a client, awaited on shutdown. */
  private readonly background = new Set<Promise<unknown>>();

  constructor(deps: PipelineDeps) {
    this.settings = deps.settings;
    this.store = deps.store;
    this.upstream = deps.upstream;
    this.logger = deps.logger;
    this.accessLog = new AccessLog(deps.logger, deps.settings.nodeName);
    this.metrics = deps.metrics;
    this.filters = deps.filters ?? [];
    this.now = deps.now ?? Date.now;
    this.trusted = deps.settings.trustForwardedFrom.length > 0 ? buildBlockList(deps.settings.trustForwardedFrom) : undefined;
    const outcomes: CacheOutcome[] = ['hit', 'stale', 'miss', 'revalidated', 'bypass', 'pass', 'error', 'synthetic'];
    this.requestCounters = Object.fromEntries(
      outcomes.map((outcome) => [outcome, this.metrics.bound('requests_total', 'requests by cache outcome', { outcome })]),
    ) as Record<CacheOutcome, { inc(): void }>;
  }

  /** node:http request handler. */
  readonly handle = (req: IncomingMessage, res: ServerResponse): void => {
    const x = this.identify(req, res);
    let pending: void | Promise<void> = undefined;
    try {
      pending = this.process(x);
    } catch (error) {
      this.internalError(x, error);
    }
    if (pending) pending.catch((error) => this.internalError(x, error));
    // A memory hit has ended its response by now: log it at once, with no listener per request.
    if (!pending && res.writableEnded) this.log(x, true);
    else res.once('close', () => this.log(x, res.writableFinished));
  };

  /** Waits for background fills and revalidations (graceful shutdown). */
  async drain(): Promise<void> {
    while (this.background.size > 0) await Promise.allSettled([...this.background]);
    if (this.accessLog.enabled) this.accessLog.flush();
  }

  // ---- identify -------------------------------------------------------------------------

  private identify(req: IncomingMessage, res: ServerResponse): Exchange {
    const peer = req.socket.remoteAddress ?? '';
    const peerTrusted = this.trusted !== undefined && this.trusted.check(peer, isIPv6(peer) ? 'ipv6' : 'ipv4');
    const forwardedProto = peerTrusted ? headerText(req.headers['x-forwarded-proto']) : undefined;
    const proto = forwardedProto === 'https' || forwardedProto === 'http' ? forwardedProto : (req.socket as { encrypted?: boolean }).encrypted ? 'https' : 'http';
    const target = requestTarget(req);
    return {
      req,
      res,
      id: this.idPrefix + (++this.sequence).toString(36),
      startedAt: performance.now(),
      method: req.method ?? 'GET',
      clientAddress: peer,
      peerTrusted,
      proto,
      host: target.host,
      path: target.path,
      url: '',
      directives: NO_DIRECTIVES,
      outcome: 'miss',
      detail: undefined,
      bytes: 0,
    };
  }

  private process(x: Exchange): void | Promise<void> {
    // RFC 9112 §3.2: more than one Host field line (or none, for HTTP/1.1) is a 400, never a cache-key guess.
    if ((x.host === '' && x.req.httpVersion !== '1.0') || hostLines(x.req.rawHeaders) > 1) {
      x.outcome = 'synthetic';
      x.detail = 'bad-host';
      return this.deliverError(x, 400, 'exactly one valid Host header is required', 'detail=bad-request');
    }
    // The asterisk form (RFC 9112 §3.2.4) asks about this server, not a resource: answered here.
    if (x.path === '*') {
      x.outcome = 'synthetic';
      if (x.method !== 'OPTIONS') return this.deliverError(x, 400, 'the * request target is only for OPTIONS', 'detail=bad-request');
      x.res.writeHead(200, { allow: 'GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS', 'content-length': 0 });
      x.res.end();
      return;
    }
    // requestFilter
    for (const filter of this.filters) if (filter(x)) return;
    // cacheKey
    x.url = cacheKey(x.proto, x.host, x.path, this.settings.key);
    if (x.method !== 'GET' && x.method !== 'HEAD') return this.pass(x);
    x.directives = governingRequestDirectives(x.req.headers);
    // A fill for a key that had nothing stored is already running: join it without a store
    // lookup (in a stampede, a thousand disk misses would otherwise queue before the fill).
    const primaryKey = entryKey(x.url, '');
    if (this.flights.isMissFill(primaryKey)) return this.afterLookup(x, { entry: undefined, variant: '', vary: undefined });
    // lookup
    const found = this.lookup(x, primaryKey);
    if (found instanceof Promise) return found.then((l) => this.afterLookup(x, l));
    return this.afterLookup(x, found);
  }

  // ---- lookup ---------------------------------------------------------------------------

  private lookup(x: Exchange, key: string): Lookup | Promise<Lookup> {
    // Concurrent lookups of one key share one disk read: in a stampede the fill starts after one
    // read, not after a thousand queued ones.
    const pending = this.pendingLookups.get(key);
    if (pending !== undefined) return pending.then((entry) => this.selectVariant(x, entry));
    const first = this.store.get(key);
    if (first instanceof Promise) {
      const read = first.catch((error) => this.storeReadFailed(error));
      this.pendingLookups.set(key, read);
      read.then(() => this.pendingLookups.delete(key));
      return read.then((entry) => this.selectVariant(x, entry));
    }
    return this.selectVariant(x, first);
  }

  private allowsSetCookie(x: Exchange): boolean {
    const path = pathOf(x.path);
    return this.settings.cacheSetCookiePaths.some((prefix) => path.startsWith(prefix));
  }

  /** A failing disk read is a miss (counted and logged), never a failed request. */
  private storeReadFailed(error: unknown): undefined {
    this.metrics.inc('store_read_errors_total', 'store lookups that failed and were treated as misses');
    this.logger.warn({ err: (error as Error)?.message }, 'store lookup failed; treated as a miss');
    return undefined;
  }

  private selectVariant(x: Exchange, entry: CachedEntry | undefined): Lookup | Promise<Lookup> {
    if (entry === undefined) return { entry: undefined, variant: '', vary: undefined };
    const record = entry.meta.http as unknown as HttpRecord;
    if (record.kind === 'response') return { entry, variant: '', vary: undefined };
    const variant = variantKey(record.fields, x.req.headers);
    const second = this.store.get(entryKey(x.url, variant));
    if (second instanceof Promise) {
      return second.catch((error) => this.storeReadFailed(error)).then((e) => ({ entry: e, variant, vary: record }));
    }
    return { entry: second, variant, vary: record };
  }

  private afterLookup(x: Exchange, l: Lookup): void | Promise<void> {
    const entry = l.entry;
    if (entry !== undefined) {
      const now = this.now();
      const record = entry.meta.http as unknown as ResponseRecord;
      const verdict = this.evaluate(x, record, entry.meta, now);
      switch (verdict) {
        case 'fresh':
          x.outcome = 'hit';
          return this.deliverEntry(x, entry, `hit; ttl=${ttl(entry.meta, now)}`);
        case 'stale-allowed':
          x.outcome = 'stale';
          x.detail = 'max-stale';
          return this.deliverEntry(x, entry, 'fwd=stale; detail=max-stale');
        case 'stale-while-revalidate':
          x.outcome = 'stale';
          x.detail = 'background-revalidate';
          this.revalidateInBackground(x, l);
          return this.deliverEntry(x, entry, 'fwd=stale; detail=background-revalidate');
        case 'revalidate':
        case 'request':
          break;
      }
      if (verdict === 'request') l.forwardReason = 'request';
    }
    if (has(x.directives, 'only-if-cached')) {
      // §5.2.1.7: nothing stored fits and the client forbids forwarding.
      x.outcome = 'synthetic';
      return this.deliverError(x, 504, 'only-if-cached: no stored response fits', undefined);
    }
    return this.fetch(x, l);
  }

  /** Whether a stored response may satisfy this request now (RFC 9111 §4.2, §5.2.1, RFC 5861). */
  private evaluate(
    x: Exchange,
    record: ResponseRecord,
    meta: EntryMeta,
    now: number,
  ): 'fresh' | 'stale-allowed' | 'stale-while-revalidate' | 'revalidate' | 'request' {
    const d = x.directives;
    const fresh = now < meta.staleAt;
    if (d.values.size > 0) {
      // A fresh response the request's own directives refuse is forwarded as fwd=request (RFC 9211 §2.2).
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

  // ---- fetch ----------------------------------------------------------------------------

  /** A miss or a stored response that needs validation: collapse onto one upstream fetch per key. */
  private async fetch(x: Exchange, l: Lookup): Promise<void> {
    const lockKey = entryKey(x.url, l.variant);
    const missKind = l.forwardReason ?? (l.entry ? 'stale' : l.vary ? 'vary-miss' : 'uri-miss');
    // Requests that may never share a response do not wait, and do not make others wait (§3.5, §5.2.1.5).
    const shareable = !has(x.directives, 'no-store') && x.req.headers.authorization === undefined;
    if (!shareable || this.flights.isHitForMiss(lockKey)) {
      x.detail = shareable ? 'hit-for-miss' : 'uncollapsible';
      return this.fetchAlone(x, l, shareable ? 'bypass' : missKind);
    }
    const joined = this.flights.join(lockKey, this.settings.lockWaitMs, l.entry === undefined && l.vary === undefined);
    if (joined.leader) {
      const fill = this.fill(x, l, lockKey);
      this.track(fill);
      const result = await fill;
      settleFill(joined.settle, result);
      return this.deliverFill(x, l, result, missKind, true);
    }
    const result = await joined.result;
    if (result === undefined) {
      x.detail = 'lock-timeout';
      return this.fetchAlone(x, l, missKind);
    }
    x.detail = 'collapsed';
    return this.deliverFill(x, l, result, missKind, false);
  }

  private deliverFill(x: Exchange, l: Lookup, result: LeaderResult, missKind: string, leader: boolean): void | Promise<void> {
    switch (result.kind) {
      case 'stream': {
        if (!leader && (result.broadcast.failed || !result.broadcast.acceptsReaders)) return this.fetchAlone(x, l, missKind);
        // A waiter whose Vary values differ from the leader's must not get the leader's variant (§4.1).
        if (result.record.vary.length > 0 && variantKey(result.record.vary, x.req.headers) !== variantKey(result.record.vary, result.requestHeaders)) {
          x.detail = 'vary-mismatch';
          return this.fetchAlone(x, l, 'vary-miss');
        }
        const size = result.meta.size;
        const now = this.now();
        if (!leader && result.broadcast.done) {
          // The whole body was already here (its store commit still running): a hit in all but name.
          x.outcome = 'hit';
          return this.respond(x, result.record, result.meta, size, result.broadcast, `hit; ttl=${ttl(result.meta, now)}`);
        }
        x.outcome = 'miss';
        const member = `fwd=${missKind}; fwd-status=${result.record.status}; stored; ttl=${ttl(result.meta, now)}${leader ? '' : '; detail=collapsed'}`;
        return this.respond(x, result.record, result.meta, size, result.broadcast, member, leader ? setCookieHeaders(result.setCookie) : undefined);
      }
      case 'entry':
        x.outcome = 'revalidated';
        return this.deliverEntry(x, result.entry, `fwd=stale; fwd-status=304; ttl=${ttl(result.entry.meta, this.now())}`);
      case 'error':
        return this.upstreamFailed(x, l, result.error, result.status);
      case 'own':
        x.detail = `not-stored:${result.reason}`;
        return this.fetchAlone(x, l, missKind);
      case 'response':
        x.outcome = 'miss';
        x.detail = `not-stored:${result.reason}`;
        return this.deliverUpstream(x, result.response, `fwd=${missKind}; fwd-status=${result.response.statusCode}; detail=${result.reason}`);
    }
  }

  /**
   * The leader's upstream fetch. It is not tied to the leader's client: if that client goes
   * away, the fill still completes and every waiter still gets the whole body.
   */
  private async fill(x: Exchange, l: Lookup, lockKey: string): Promise<LeaderResult> {
    const stored = l.entry;
    const record = stored?.meta.http as ResponseRecord | undefined;
    const headers = this.upstreamHeaders(x, CLIENT_CONDITIONALS);
    if (record?.etag !== undefined) headers['if-none-match'] = record.etag;
    if (record?.lastModified !== undefined) headers['if-modified-since'] = record.lastModified;
    const requestTime = this.now();
    let response: UpstreamResponse;
    try {
      response = await this.upstream.request({ method: 'GET', path: x.path, headers, body: null, cacheKey: x.url, idempotent: true });
    } catch (error) {
      return { kind: 'error', error: asUpstreamError(error), status: undefined };
    }
    const times = { requestTime, responseTime: this.now() };
    try {
      return await this.afterFillResponse(x, l, lockKey, response, times);
    } catch (error) {
      // Never leave a flight unsettled: whatever failed after the upstream answered (a store
      // error, say) becomes an error outcome every waiter handles on its own.
      discard(response.body);
      this.logger.warn({ key: x.url, err: (error as Error)?.message }, 'fill failed after the upstream answered');
      return { kind: 'error', error: asUpstreamError(error), status: undefined };
    }
  }

  private async afterFillResponse(
    x: Exchange,
    l: Lookup,
    lockKey: string,
    response: UpstreamResponse,
    times: { requestTime: number; responseTime: number },
  ): Promise<LeaderResult> {
    const stored = l.entry;
    const record = stored?.meta.http as ResponseRecord | undefined;
    if (response.statusCode === 304 && stored && record) {
      response.body.resume();
      // §4.3.4: the 304's validator selects the stored response it updates; if it is not ours, nothing is updated.
      const tag = headerText(response.headers['etag']);
      if (tag !== undefined && (record.etag === undefined || weakTag(tag) !== weakTag(record.etag))) return { kind: 'own', reason: 'status' };
      const refreshed = await this.refresh(x, stored, record, response.headers, times);
      return refreshed ? { kind: 'entry', entry: refreshed } : { kind: 'own', reason: 'status' };
    }
    if (ERROR_STATUSES.has(response.statusCode) && this.staleIfErrorAllowed(record)) {
      response.body.resume();
      return { kind: 'error', error: new UpstreamError('UPSTREAM_PROTOCOL', `upstream answered ${response.statusCode}`), status: response.statusCode };
    }
    const stream = await this.storeResponse(x, l, response, times);
    if (typeof stream === 'string') {
      this.flights.markHitForMiss(lockKey, this.settings.hitForMissSec * 1000);
      return { kind: 'response', response, reason: stream };
    }
    this.flights.clearHitForMiss(lockKey);
    return stream;
  }

  /** Fetch for this client only (uncollapsible, hit-for-miss, lock timeout, not shareable); stores what it may. */
  private async fetchAlone(x: Exchange, l: Lookup, fwd: string): Promise<void> {
    const canStore = !has(x.directives, 'no-store');
    // Keep the client's own conditionals unless we could store the answer (then fetch in full).
    const storing = canStore && !hasConditional(x.req.headers);
    const headers = this.upstreamHeaders(x, storing ? CLIENT_CONDITIONALS : undefined);
    const controller = this.abortOnClientClose(x);
    const requestTime = this.now();
    let response: UpstreamResponse;
    try {
      response = await this.upstream.request({
        method: storing ? 'GET' : x.method,
        path: x.path,
        headers,
        body: null,
        cacheKey: x.url,
        idempotent: true,
        signal: controller.signal,
      });
    } catch (error) {
      return this.upstreamFailed(x, l, asUpstreamError(error), undefined);
    }
    if (ERROR_STATUSES.has(response.statusCode) && this.staleIfErrorAllowed(l.entry?.meta.http as ResponseRecord | undefined)) {
      response.body.resume();
      return this.upstreamFailed(x, l, new UpstreamError('UPSTREAM_PROTOCOL', `upstream answered ${response.statusCode}`), response.statusCode);
    }
    x.outcome = fwd === 'bypass' ? 'bypass' : 'miss';
    if (storing) {
      const stream = await this.storeResponse(x, l, response, { requestTime, responseTime: this.now() });
      if (typeof stream !== 'string') {
        return this.respond(x, stream.record, stream.meta, stream.meta.size, stream.broadcast, `fwd=${fwd}; fwd-status=${response.statusCode}; stored`, setCookieHeaders(stream.setCookie));
      }
      x.detail = x.detail ? `${x.detail},not-stored:${stream}` : `not-stored:${stream}`;
    }
    return this.deliverUpstream(x, response, `fwd=${fwd}; fwd-status=${response.statusCode}`);
  }

  /** SWR: exactly one background revalidation per key; the client is already answered. */
  private revalidateInBackground(x: Exchange, l: Lookup): void {
    const lockKey = entryKey(x.url, l.variant);
    const joined = this.flights.join(lockKey, 0);
    if (!joined.leader) {
      joined.result.catch(() => undefined);
      return;
    }
    const task = this.fill(x, l, lockKey).then((result) => {
      if (result.kind === 'response') result.response.body.resume();
      settleFill(joined.settle, result);
    });
    this.track(task);
  }

  // ---- store ----------------------------------------------------------------------------

  /**
   * Decides storability and, when storable, starts streaming the body into the store and into a
   * broadcast every reader can follow. Returns why not when the response may not be stored.
   */
  private async storeResponse(
    x: Exchange,
    l: Lookup,
    response: UpstreamResponse,
    times: { requestTime: number; responseTime: number },
  ): Promise<Extract<FillResult, { kind: 'stream' }> | NotStoredReason | 'status'> {
    const status = response.statusCode;
    if (status === 206 || status === 304) return 'status';
    const headers = response.headers;
    const reason = notStorableReason({ method: 'GET', requestHeaders: x.req.headers, status, responseHeaders: headers, allowSetCookie: this.allowsSetCookie(x) });
    if (reason) return reason;
    const declared = Number(headerText(headers['content-length']));
    if (declared > this.settings.maxObjectSize) return 'too-large';
    const freshness = computeFreshness(status, headers, times, this.settings.freshness);
    if (freshness.deleteAt <= this.now()) return 'stale-on-arrival';
    const vary = parseVary(headers['vary']);
    const variant = vary.length > 0 ? variantKey(vary, x.req.headers) : '';
    const varyRecord = vary.length > 0 ? await this.varyRecordFor(x.url, l, vary, variant) : undefined;
    if (varyRecord === null) {
      this.metrics.inc('vary_cap_hits_total', 'responses not stored because their URL reached maxVariantsPerUrl');
      return 'vary-cap';
    }
    const via = appendVia(headers['via'], '1.1', this.settings.nodeName);
    const record = makeResponseRecord({ status, headers, freshness, vary, stripSurrogate: this.settings.role === 'edge', via });
    const meta: EntryMeta = {
      size: Number.isSafeInteger(declared) && declared >= 0 ? declared : UNKNOWN_SIZE,
      tags: surrogateKeys(headers),
      storedAt: times.responseTime,
      staleAt: freshness.staleAt,
      graceUntil: freshness.graceUntil,
      deleteAt: freshness.deleteAt,
      http: record as unknown as Record<string, unknown>,
    };
    const key = entryKey(x.url, variant);
    const broadcast = new BodyBroadcast();
    let endJoin!: () => void;
    const joinable = new Promise<void>((resolve) => (endJoin = resolve));
    this.track(this.pumpIntoStore(key, meta, response.body, broadcast, varyRecord, x.url, endJoin));
    const setCookie = headers['set-cookie'];
    return { kind: 'stream', record, meta, broadcast, requestHeaders: x.req.headers, joinable, setCookie: setCookie === undefined ? undefined : ([] as string[]).concat(setCookie) };
  }

  /**
   * Streams the upstream body to the broadcast and the store; commits only a complete body.
   * `endJoin` closes the flight to new joiners: at the end, or as soon as nothing will be stored
   * (then the broadcast also stops keeping chunks every reader has passed).
   */
  private async pumpIntoStore(key: string, meta: EntryMeta, body: Readable, broadcast: BodyBroadcast, vary: VaryRecord | undefined, url: string, endJoin: () => void): Promise<void> {
    let writer: EntryWriter | undefined;
    const stopStoring = (reason: string, error?: unknown): void => {
      if (writer === undefined) return;
      writer.abort();
      writer = undefined;
      void broadcast.stopRetaining();
      endJoin();
      this.metrics.inc('not_stored_total', 'responses streamed but not stored', { reason });
      if (error !== undefined) this.logger.warn({ key: url, err: (error as Error)?.message }, 'store write failed; streaming without storing');
    };
    try {
      writer = this.store.openWriter(key, meta);
    } catch (error) {
      stopStoring('store-error', error);
    }
    let received = 0;
    try {
      for await (const chunk of body as AsyncIterable<Buffer>) {
        received += chunk.length;
        broadcast.push(chunk);
        // A body of undeclared length that outgrows maxObjectSize keeps streaming; nothing is stored.
        if (received > this.settings.maxObjectSize) stopStoring('too-large');
        if (writer === undefined) continue;
        try {
          await writer.write(chunk);
        } catch (error) {
          stopStoring('store-error', error);
        }
      }
      if (meta.size !== UNKNOWN_SIZE && received !== meta.size) throw new Error(`upstream body has ${received} bytes, ${meta.size} declared`);
    } catch (error) {
      writer?.abort();
      broadcast.fail(error as Error);
      endJoin();
      this.metrics.inc('upstream_body_errors_total', 'upstream bodies cut short or malformed (never stored)');
      this.logger.warn({ key: url, err: (error as Error).message }, 'upstream body failed; not stored');
      return;
    }
    broadcast.end();
    try {
      // §4.4: a purge or invalidation that ran after this fill began makes the store refuse the commit.
      if (writer === undefined) return;
      await writer.commit();
      if (vary) {
        // The pointer lives as long as its longest-lived variant, so no sibling becomes unreachable.
        const existing = await this.store.get(entryKey(url, ''));
        const keepUntil = Math.max(meta.deleteAt, (existing?.meta.http as HttpRecord | undefined)?.kind === 'vary' ? existing!.meta.deleteAt : 0);
        const pointer: EntryMeta = { size: 0, tags: [], storedAt: meta.storedAt, staleAt: keepUntil, graceUntil: keepUntil, deleteAt: keepUntil, http: vary as unknown as Record<string, unknown> };
        await putEntry(this.store, entryKey(url, ''), pointer, Buffer.alloc(0));
      }
    } catch (error) {
      if ((error as { code?: string }).code === 'REMOVED_DURING_WRITE') {
        this.metrics.inc('not_stored_total', 'responses streamed but not stored', { reason: 'purged' });
      } else {
        this.metrics.inc('store_errors_total', 'entries the store could not commit');
        this.logger.warn({ key: url, err: (error as Error).message }, 'store commit failed');
      }
    } finally {
      endJoin();
    }
  }

  /**
   * The Vary record to write for a new variant: the fields plus the variant list, capped at
   * maxVariantsPerUrl. Null when the cap is reached.
   */
  private async varyRecordFor(url: string, l: Lookup, fields: string[], variant: string): Promise<VaryRecord | null> {
    const current = l.vary ?? (await this.currentVaryRecord(url).catch((error) => this.storeReadFailed(error)));
    const sameFields = current !== undefined && current.fields.join(',') === fields.join(',');
    const variants = sameFields ? current.variants : [];
    if (variants.includes(variant)) return { kind: 'vary', fields, variants };
    let live = variants;
    if (variants.length >= this.settings.maxVariantsPerUrl) {
      // Drop variants the store has since evicted before refusing a new one.
      live = [];
      for (const v of variants) {
        const entry = await Promise.resolve(this.store.get(entryKey(url, v))).catch((error) => this.storeReadFailed(error));
        if (entry !== undefined) live.push(v);
      }
      if (live.length >= this.settings.maxVariantsPerUrl) return null;
    }
    return { kind: 'vary', fields, variants: [...live, variant] };
  }

  private async currentVaryRecord(url: string): Promise<VaryRecord | undefined> {
    const entry = await this.store.get(entryKey(url, ''));
    const record = entry?.meta.http as HttpRecord | undefined;
    return record?.kind === 'vary' ? record : undefined;
  }

  /** §4.3.4: a 304 refreshes the stored headers and time model; the body stays. */
  private async refresh(
    x: Exchange,
    stored: CachedEntry,
    record: ResponseRecord,
    notModifiedHeaders: HeaderMap,
    times: { requestTime: number; responseTime: number },
  ): Promise<CachedEntry | undefined> {
    const merged = mergeNotModified(record, notModifiedHeaders);
    // A 304 may make the response private, no-store or cookie-bearing: then the stored copy must go,
    // and the requester fetches its own (§3, §4.3.4).
    const reason = notStorableReason({ method: 'GET', requestHeaders: x.req.headers, status: record.status, responseHeaders: merged, allowSetCookie: this.allowsSetCookie(x) });
    if (reason !== undefined) {
      await this.store.delete(stored.key).catch((error) => this.storeReadFailed(error));
      return undefined;
    }
    const freshness = computeFreshness(record.status, merged, times, this.settings.freshness);
    // A 304's own Via replaces the stored one; this node is appended again.
    const via = notModifiedHeaders['via'] !== undefined ? appendVia(notModifiedHeaders['via'], '1.1', this.settings.nodeName) : undefined;
    const updated = makeResponseRecord({ status: record.status, headers: merged, freshness, vary: record.vary, stripSurrogate: this.settings.role === 'edge', via });
    const tags = surrogateKeys(merged);
    const meta: EntryMeta = {
      ...stored.meta,
      tags: tags.length > 0 ? tags : stored.meta.tags,
      storedAt: times.responseTime,
      staleAt: freshness.staleAt,
      graceUntil: freshness.graceUntil,
      deleteAt: freshness.deleteAt,
      http: updated as unknown as Record<string, unknown>,
    };
    try {
      // Only the version this revalidation started from; a newer body stored meanwhile keeps its own headers.
      if (!(await this.store.updateMeta(stored.key, meta, stored.meta.storedAt))) return undefined;
      return (await this.store.get(stored.key)) ?? undefined;
    } catch (error) {
      this.storeReadFailed(error);
      return undefined;
    }
  }

  // ---- pass (unsafe and other methods) ----------------------------------------------------

  private async pass(x: Exchange): Promise<void> {
    x.outcome = 'pass';
    const headers = this.upstreamHeaders(x, undefined);
    const controller = this.abortOnClientClose(x);
    const hasBody = x.req.headers['content-length'] !== undefined ? x.req.headers['content-length'] !== '0' : x.req.headers['transfer-encoding'] !== undefined;
    let response: UpstreamResponse;
    try {
      response = await this.upstream.request({
        method: x.method,
        path: x.path,
        headers,
        body: hasBody ? x.req : null,
        cacheKey: x.url,
        idempotent: isIdempotent(x.method),
        signal: controller.signal,
      });
    } catch (error) {
      return this.upstreamFailed(x, { entry: undefined, variant: '', vary: undefined }, asUpstreamError(error), undefined);
    }
    if (!isSafe(x.method) && response.statusCode >= 200 && response.statusCode < 400) await this.invalidate(x, response.headers);
    return this.deliverUpstream(x, response, `fwd=method; fwd-status=${response.statusCode}`);
  }

  /** §4.4: a non-error response to an unsafe method invalidates the target URI and same-origin Location / Content-Location. */
  private async invalidate(x: Exchange, headers: HeaderMap): Promise<void> {
    const urls = [x.url];
    const base = `${x.proto}://${x.host}`;
    for (const name of ['location', 'content-location']) {
      const value = headerText(headers[name]);
      if (value === undefined) continue;
      let target: URL;
      try {
        target = new URL(value, base + x.path);
      } catch {
        continue;
      }
      if (target.origin !== new URL(base).origin) continue;
      urls.push(cacheKey(x.proto, x.host, target.pathname + target.search, this.settings.key));
    }
    for (const url of urls) {
      try {
        await this.store.purgeUrl(url);
      } catch (error) {
        this.logger.warn({ key: url, err: (error as Error).message }, 'invalidation failed');
      }
    }
  }

  // ---- deliver --------------------------------------------------------------------------

  private deliverEntry(x: Exchange, entry: CachedEntry, member: string): void {
    const record = entry.meta.http as unknown as ResponseRecord;
    this.respond(x, record, entry.meta, entry.meta.size, entry, member);
  }

  /**
   * Sends a stored (or being-stored) response: Age, Cache-Status, then 304 for a matching
   * conditional request, 206/416 for a range, headers only for HEAD.
   */
  private respond(
    x: Exchange,
    record: ResponseRecord,
    meta: EntryMeta,
    size: number,
    /** A stored entry (whole body in memory, or streamed from disk) or a fill still streaming in. */
    source: CachedEntry | BodyBroadcast,
    member: string,
    extraHeaders?: string[],
  ): void {
    const { req, res } = x;
    const now = this.now();
    const headers = record.headers.slice();
    if (extraHeaders) headers.push(...extraHeaders);
    headers.push('age', String(Math.floor(record.initialAgeSec + Math.max(0, now - meta.storedAt) / 1000)));
    headers.push('cache-status', this.cacheStatus(x, record.upstreamCacheStatus, member));
    const ifNoneMatch = req.headers['if-none-match'];
    const ifModifiedSince = req.headers['if-modified-since'];
    if ((ifNoneMatch !== undefined || ifModifiedSince !== undefined) && record.status === 200 && notModified(ifNoneMatch, ifModifiedSince, record.etag, record.lastModified ?? dateOf(record))) {
      res.writeHead(304, headers.filter((_, i, all) => !NOT_IN_304.has(all[i - (i % 2)]!)));
      res.end();
      return;
    }
    let status = record.status;
    let range: { start: number; end: number } | undefined;
    if (req.headers.range !== undefined && status === 200 && size !== UNKNOWN_SIZE) {
      const selected = selectRange(headerText(req.headers.range), headerText(req.headers['if-range']), size, record.etag, record.lastModified);
      if (selected.kind === 'unsatisfiable') {
        res.writeHead(416, ['content-range', `bytes */${size}`, 'content-length', '0', 'cache-status', headers[headers.length - 1]!]);
        res.end();
        return;
      }
      if (selected.kind === 'partial') {
        range = { start: selected.start, end: selected.end };
        status = 206;
        headers.push('content-range', `bytes ${range.start}-${range.end}/${size}`);
      }
    }
    const length = range ? range.end - range.start + 1 : size;
    if (length !== UNKNOWN_SIZE) headers.push('content-length', String(length));
    res.writeHead(status, headers);
    if (x.method === 'HEAD' || status === 204 || status === 304) {
      res.end();
      return;
    }
    if (source instanceof BodyBroadcast) {
      source.pipeTo(res, range, (n) => (x.bytes += n));
      return;
    }
    const body = source.body;
    if (body !== undefined) {
      const bytes = range ? body.subarray(range.start, range.end + 1) : body;
      x.bytes = bytes.length;
      res.end(bytes);
      return;
    }
    this.pipeBody(x, source.openBody(range));
  }

  /** Sends an upstream response that is not (or not yet) stored. */
  private deliverUpstream(x: Exchange, response: UpstreamResponse, member: string): void {
    const { res } = x;
    const headers = withoutHopByHop(response.headers, this.settings.role === 'edge' ? SURROGATE_FIELDS : undefined);
    headers['via'] = appendVia(headers['via'], '1.1', this.settings.nodeName);
    headers['cache-status'] = this.cacheStatus(x, headerText(response.headers['cache-status']), member);
    res.writeHead(response.statusCode, headers);
    if (x.method === 'HEAD' || response.statusCode === 204 || response.statusCode === 304) {
      // A HEAD client may have been answered from a GET: drop its body rather than download it.
      if (x.method === 'HEAD') discard(response.body);
      else response.body.resume();
      res.end();
      return;
    }
    this.pipeBody(x, response.body);
  }

  /** Streams a body to the client; a body that fails mid-way destroys the response so the client sees truncation. */
  private pipeBody(x: Exchange, body: Readable): void {
    const { res } = x;
    if (res.destroyed) {
      // The client is gone: release the source (an upstream socket, a disk stream) at once.
      discard(body);
      return;
    }
    body.on('data', (chunk: Buffer) => {
      x.bytes += chunk.length;
      if (!res.write(chunk)) {
        body.pause();
        res.once('drain', () => body.resume());
      }
    });
    body.once('end', () => res.end());
    body.once('error', (error) => {
      this.logger.warn({ id: x.id, err: error.message }, 'body failed mid-response');
      res.destroy(error);
    });
    res.once('close', () => {
      if (!body.readableEnded) body.destroy();
    });
  }

  private upstreamFailed(x: Exchange, l: Lookup, error: UpstreamError, status: number | undefined): void {
    const entry = l.entry;
    this.metrics.inc('upstream_errors_total', 'upstream requests that failed', { code: error.code });
    if (entry && this.staleIfErrorAllowed(entry.meta.http as unknown as ResponseRecord) && !has(x.directives, 'no-cache')) {
      x.outcome = 'stale';
      x.detail = 'stale-if-error';
      const fwdStatus = status === undefined ? '' : `; fwd-status=${status}`;
      return this.deliverEntry(x, entry, `fwd=stale${fwdStatus}; detail=stale-if-error`);
    }
    x.outcome = 'error';
    x.detail = error.code;
    this.deliverError(x, status ?? error.status, error.message, undefined);
  }

  /** RFC 5861 §4: a stale copy may stand in for an error within its window, unless must-revalidate & co forbid it. */
  private staleIfErrorAllowed(record: ResponseRecord | undefined): boolean {
    return record !== undefined && !record.noStale && this.now() < record.sieUntil;
  }

  private deliverError(x: Exchange, status: number, message: string, member: string | undefined): void {
    const { res } = x;
    if (res.headersSent) {
      res.destroy();
      return;
    }
    const body = `${status} ${statusText(status)}: ${message}\nrequest id: ${x.id}\n`;
    res.writeHead(status, {
      'content-type': 'text/plain; charset=utf-8',
      'content-length': Buffer.byteLength(body),
      'cache-control': 'no-store',
      'x-request-id': x.id,
      'cache-status': this.cacheStatus(x, undefined, member ?? (x.outcome === 'synthetic' ? 'fwd=miss; detail=only-if-cached' : `fwd=miss; detail=${x.detail ?? 'error'}`)),
    });
    x.bytes = Buffer.byteLength(body);
    res.end(x.method === 'HEAD' ? undefined : body);
  }

  private internalError(x: Exchange, error: unknown): void {
    this.logger.error({ id: x.id, err: error }, 'request failed inside the pipeline');
    x.outcome = 'error';
    x.detail = 'internal';
    this.deliverError(x, 500, 'internal error', undefined);
  }

  private cacheStatus(x: Exchange, upstream: string | undefined, member: string): string {
    let ours = `${this.settings.nodeName}; ${member}`;
    if (this.settings.cacheStatusKey && x.url) ours += `; key=${JSON.stringify(x.url)}`;
    return upstream === undefined ? ours : `${upstream}, ${ours}`;
  }

  // ---- helpers --------------------------------------------------------------------------

  /** Request headers for upstream: hop-by-hop removed, Via and X-Forwarded-* set. */
  private upstreamHeaders(x: Exchange, drop: ReadonlySet<string> | undefined): HeaderMap {
    const headers = withoutHopByHop(x.req.headers, drop);
    delete headers['expect'];
    if (x.host !== '') headers['host'] = x.host;
    headers['via'] = appendVia(headers['via'], x.req.httpVersion, this.settings.nodeName);
    setForwarded(headers, { clientAddress: x.clientAddress, peerTrusted: x.peerTrusted, proto: x.proto, host: x.req.headers.host });
    return headers;
  }

  private abortOnClientClose(x: Exchange): AbortController {
    const controller = new AbortController();
    x.res.once('close', () => {
      if (!x.res.writableFinished) controller.abort();
    });
    return controller;
  }

  private track(task: Promise<unknown>): void {
    const tracked = task.catch((error) => this.logger.error({ err: error }, 'background task failed'));
    this.background.add(tracked);
    tracked.finally(() => this.background.delete(tracked));
  }

  // ---- log ------------------------------------------------------------------------------

  private log(x: Exchange, complete: boolean): void {
    this.requestCounters[x.outcome].inc();
    if (!this.accessLog.enabled || !this.settings.accessLog) return;
    this.accessLog.write({
      id: x.id,
      method: x.method,
      host: x.host,
      path: x.path,
      status: x.res.statusCode,
      bytes: x.bytes,
      ms: Math.round((performance.now() - x.startedAt) * 100) / 100,
      cache: x.outcome,
      detail: x.detail,
      complete,
    });
  }
}

/** Settles a flight; a streaming body keeps it open until stored, so late arrivals share the same stream. */
function settleFill(settle: (result: FillResult, openUntil?: Promise<unknown>) => void, result: LeaderResult): void {
  if (result.kind === 'response') settle({ kind: 'own', reason: result.reason });
  else settle(result, result.kind === 'stream' ? result.joinable : undefined);
}

/** Releases a body nobody will read; its abort error is expected and ignored. */
function discard(body: Readable): void {
  body.on('error', () => undefined);
  body.destroy();
}

function setCookieHeaders(values: string[] | undefined): string[] | undefined {
  return values?.flatMap((value) => ['set-cookie', value]);
}

function ttl(meta: EntryMeta, now: number): number {
  return Math.floor((meta.staleAt - now) / 1000);
}

function dateOf(record: ResponseRecord): string | undefined {
  for (let i = 0; i < record.headers.length; i += 2) if (record.headers[i] === 'date') return record.headers[i + 1];
  return undefined;
}

function hasConditional(headers: IncomingMessage['headers']): boolean {
  for (const name of CLIENT_CONDITIONALS) if (headers[name] !== undefined) return true;
  return false;
}

function isSafe(method: string): boolean {
  return method === 'GET' || method === 'HEAD' || method === 'OPTIONS' || method === 'TRACE';
}

function pathOf(path: string): string {
  const q = path.indexOf('?');
  return q === -1 ? path : path.slice(0, q);
}

/**
 * Host and origin-form path of a request. An absolute-form target (RFC 9112 §3.2.2) names the
 * resource itself, so its authority wins over the Host header.
 */
function requestTarget(req: IncomingMessage): { host: string; path: string } {
  const url = req.url ?? '/';
  if (url.charCodeAt(0) === 0x2f /* / */ || url === '*') return { host: (req.headers.host ?? '').toLowerCase(), path: url };
  try {
    const parsed = new URL(url);
    if (parsed.protocol === 'http:' || parsed.protocol === 'https:') return { host: parsed.host.toLowerCase(), path: parsed.pathname + parsed.search };
  } catch {
    // fall through: not a usable absolute URI
  }
  return { host: (req.headers.host ?? '').toLowerCase(), path: url };
}

function hostLines(rawHeaders: string[]): number {
  let count = 0;
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const name = rawHeaders[i]!;
    if (name.length === 4 && name.toLowerCase() === 'host') count++;
  }
  return count;
}

/** Surrogate keys: Surrogate-Key (space-separated, Fastly) and Cache-Tag (comma-separated). */
function surrogateKeys(headers: HeaderMap): string[] {
  const tags = new Set<string>();
  for (const t of (headerText(headers['surrogate-key']) ?? '').split(/\s+/)) if (t) tags.add(t);
  for (const t of (headerText(headers['cache-tag']) ?? '').split(',')) if (t.trim()) tags.add(t.trim());
  return [...tags];
}

function asUpstreamError(error: unknown): UpstreamError {
  if (error instanceof UpstreamError) return error;
  return new UpstreamError('UPSTREAM_PROTOCOL', (error as Error)?.message ?? String(error), { cause: error });
}

function buildBlockList(entries: readonly string[]): BlockList {
  const list = new BlockList();
  for (const entry of entries) {
    const [address, prefix] = entry.split('/');
    const type = isIPv6(address!) ? 'ipv6' : 'ipv4';
    if (prefix === undefined) list.addAddress(address!, type);
    else list.addSubnet(address!, Number(prefix), type);
  }
  return list;
}

const STATUS_TEXT: Record<number, string> = { 400: 'Bad Request', 500: 'Internal Server Error', 502: 'Bad Gateway', 503: 'Service Unavailable', 504: 'Gateway Timeout' };
function statusText(status: number): string {
  return STATUS_TEXT[status] ?? 'Error';
}
