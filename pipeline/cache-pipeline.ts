/**
 * The one cache pipeline both tiers run (DESIGN.md): an edge and a shield differ only in the
 * Upstream behind it and the request filters in front of it. Phases, named as in DESIGN.md,
 * logs and docs: identify → requestFilter → cacheKey → lookup → fetch → store → deliver → log.
 *
 * The hit path is synchronous when the entry is in memory: no promise, no JSON, no disk.
 */
import type { IncomingMessage, ServerResponse } from 'node:http';
import { isIP, type BlockList } from 'node:net';
import { Readable } from 'node:stream';
import type { Logger } from 'pino';
import { UNKNOWN_SIZE, type CacheStore, type CachedEntry, type EntryMeta } from '../storage/cache-store.js';
import { entryKey, sliceOfKey, sliceVariant } from '../storage/keys.js';
import { AccessLog } from './access-log.js';
import { buildBlockList, inAddressList, withoutPort } from './address-list.js';
import { BodyBroadcast } from './body-broadcast.js';
import { cacheKey, type CacheKeyOptions } from './cache-key.js';
import { NO_DIRECTIVES, has } from './cache-control.js';
import { notModified } from './conditional.js';
import {
  CLIENT_CONDITIONALS,
  NOTHING_FOUND,
  abortOnClientClose,
  asUpstreamError,
  discard,
  forwardInterim,
  hasRequestBody,
  upstreamHeaders,
  writeTextAnswer,
  type Exchange,
  type Lookup,
  type RequestFilter,
  type SliceId,
} from './exchange.js';
import { Fills, type Forward } from './fill.js';
import { appendVia, withoutHopByHop } from './forward-headers.js';
import type { Metrics } from './metrics.js';
import {
  ENTRY_FIELD,
  HOP_RESPONSE_FIELDS,
  MEMBER_FIELD,
  OUTCOME_FIELD,
  decodeEntry,
  decodeOutcome,
  encodeEntry,
  encodeOutcome,
  ownerRequestHeaders,
  readInternalHop,
  type InternalHop,
} from './owner-hop.js';
import { purgeStore, type PurgeRequest } from './purge.js';
import { firstRequestedByte, multipartPlan, selectRanges, type ByteRange, type MultipartPlan } from './ranges.js';
import { governingRequestDirectives, headerText, type FreshnessConfig, type StatusPolicy } from './response-policy.js';
import { SliceMismatch, SlicedObject, sliceOf, storedPiece, upstreamPiece, type SlicePiece } from './slices.js';
import { PIECE_BYTES, entryBytes, writeInPieces } from './memory-body.js';
import { staleIfErrorAllowed, verdict } from './serve-policy.js';
import { FillEntry, StoreWriter } from './store-writer.js';
import { SURROGATE_FIELDS, fieldOf, makeResponseRecord, withoutFields, type HttpRecord, type ResponseRecord, type VaryRecord } from './stored-response.js';
import { UpstreamError, isIdempotent, type HeaderMap, type Upstream, type UpstreamResponse } from './upstream.js';
import { parseVary, variantKey } from './vary.js';

export type { CacheOutcome, Exchange, RequestFilter } from './exchange.js';

export interface PipelineSettings {
  role: 'edge' | 'shield';
  /** Name in Via and Cache-Status. */
  nodeName: string;
  key: CacheKeyOptions;
  freshness: FreshnessConfig;
  /** Statuses that may be stored; undefined: every final status RFC 9111 §3 allows. */
  storeStatuses: StatusPolicy;
  lockWaitMs: number;
  hitForMissSec: number;
  maxVariantsPerUrl: number;
  /** Responses larger than this are not stored. */
  maxObjectSize: number;
  /** Bodies up to this size (and fillBufferSize) are held whole while they fill; larger ones keep `fillBufferSize` bytes. */
  memoryMaxObjectSize: number;
  fillBufferSize: number;
  /** Objects larger than this are fetched and stored in slices of this size (slices.ts); 0: off. */
  sliceSize: number;
  /** Path prefixes whose Set-Cookie responses may be stored (without the cookie). */
  cacheSetCookiePaths: readonly string[];
  /** Peers whose X-Forwarded-* are kept. */
  trustForwardedFrom: readonly string[];
  /** Debug: add key= to Cache-Status. */
  cacheStatusKey: boolean;
  accessLog: boolean;
}

/** Upstream response fields the edge never delivers: surrogate control, and the hop's own between workers. */
const EDGE_DROPPED_FIELDS: ReadonlySet<string> = new Set([...SURROGATE_FIELDS, ...HOP_RESPONSE_FIELDS]);

/** Fields left out of a 304 from the cache (RFC 9110 §15.4.5: representation metadata). */
const NOT_IN_304 = new Set(['content-type', 'content-encoding', 'content-language', 'content-range', 'content-length']);

/** A worker of a multi-worker node (issue 9): which keys it owns, and the hop to their owners. */
export interface WorkerRouting {
  ownership: { readonly self: number; ownsUrl(url: string): boolean; ownerOfUrl(url: string): number };
  /** The hop to each worker's Unix socket, by worker index. */
  owners: readonly Upstream[];
  /** Larger bodies stream from the owner without a memory copy. */
  memoryMaxEntryBytes: number;
  /** Applies a purge on every worker of the node (memory tiers and disk shards) before resolving. */
  purge(request: PurgeRequest): Promise<number>;
}

export interface PipelineDeps {
  settings: PipelineSettings;
  store: CacheStore;
  upstream: Upstream;
  logger: Logger;
  metrics: Metrics;
  filters?: RequestFilter[];
  now?: () => number;
  /** Set in a worker of a multi-worker node; a single process owns every key. */
  routing?: WorkerRouting;
}

export class CachePipeline {
  /** The fetch phase: single-flight fills, the commit window, hit-for-miss. */
  readonly fills: Fills;
  private readonly settings: PipelineSettings;
  private readonly store: CacheStore;
  private readonly upstream: Upstream;
  private readonly logger: Logger;
  private readonly accessLog: AccessLog;
  private readonly metrics: Metrics;
  private readonly filters: RequestFilter[];
  private readonly now: () => number;
  private readonly routing: WorkerRouting | undefined;
  private readonly writer: StoreWriter;
  /** Keys this worker is refreshing from their owner in the background (stale-while-revalidate). */
  private readonly ownerRefreshes = new Set<string>();
  private trusted: BlockList | undefined;
  private readonly idPrefix = `${process.pid.toString(36)}${Date.now().toString(36)}-`;
  private sequence = 0;
  /** Disk lookups in progress, by entry key. */
  private readonly pendingLookups = new Map<string, Promise<CachedEntry | undefined>>();
  /** Background revalidations and fills not tied to a client, awaited on shutdown. */
  private readonly background = new Set<Promise<unknown>>();
  /** Bodies streaming into the store and their commits, awaited on shutdown. */
  private readonly commits = new Set<Promise<unknown>>();

  constructor(deps: PipelineDeps) {
    this.settings = deps.settings;
    this.store = deps.store;
    this.upstream = deps.upstream;
    this.logger = deps.logger;
    this.accessLog = new AccessLog(deps.logger, deps.settings.nodeName);
    this.metrics = deps.metrics;
    this.filters = deps.filters ?? [];
    this.now = deps.now ?? Date.now;
    this.routing = deps.routing;
    this.trusted = deps.settings.trustForwardedFrom.length > 0 ? buildBlockList(deps.settings.trustForwardedFrom) : undefined;
    const track = (task: Promise<unknown>): void => this.track(this.background, task);
    const writer = (this.writer = new StoreWriter({
      settings: deps.settings,
      store: this.store,
      logger: this.logger,
      metrics: this.metrics,
      now: this.now,
      track: (task) => this.track(this.commits, task),
      readFailed: (error) => this.storeReadFailed(error),
    }));
    this.fills = new Fills({ settings: deps.settings, upstream: this.upstream, writer, logger: this.logger, now: this.now, track });
  }

  /**
   * SIGHUP: new freshness defaults, key options, trust list and limits for requests that start
   * from now on. Every phase reads this one settings object, so changing it in place reaches them all.
   */
  reconfigure(settings: PipelineSettings): void {
    Object.assign(this.settings, settings);
    this.trusted = settings.trustForwardedFrom.length > 0 ? buildBlockList(settings.trustForwardedFrom) : undefined;
  }

  /** node:http request handler. */
  readonly handle = (req: IncomingMessage, res: ServerResponse): void => {
    this.run(this.identify(req, res, undefined));
  };

  /** Handler for the worker's own Unix socket: requests another worker sent to this one, the key's owner. */
  readonly handleInternal = (req: IncomingMessage, res: ServerResponse): void => {
    this.run(this.identify(req, res, readInternalHop(req)));
  };

  private run(x: Exchange): void {
    const { res } = x;
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
  }

  /**
   * Waits for fills, revalidations and store commits (graceful shutdown). With `commits: false`
   * it waits for upstream fetches only, and commits may still be running when it returns.
   */
  async drain(options: { commits?: boolean } = {}): Promise<void> {
    const sets = options.commits === false ? [this.background] : [this.background, this.commits];
    while (sets.some((set) => set.size > 0)) await Promise.allSettled(sets.flatMap((set) => [...set]));
    if (this.accessLog.enabled) this.accessLog.flush();
  }

  // ---- identify -------------------------------------------------------------------------

  private identify(req: IncomingMessage, res: ServerResponse, internal: InternalHop | undefined): Exchange {
    let clientAddress: string;
    let peerAddress: string;
    let peerTrusted: boolean;
    let proto: 'http' | 'https';
    if (internal !== undefined) {
      // The worker that received it from the client has identified the client already.
      ({ clientAddress, peerAddress, peerTrusted, proto } = internal);
    } else {
      peerAddress = req.socket.remoteAddress ?? '';
      peerTrusted = this.trusted !== undefined && inAddressList(this.trusted, peerAddress);
      clientAddress = peerTrusted ? forwardedClient(this.trusted!, headerText(req.headers['x-forwarded-for']), peerAddress) : peerAddress;
      const forwardedProto = peerTrusted ? headerText(req.headers['x-forwarded-proto']) : undefined;
      proto = forwardedProto === 'https' || forwardedProto === 'http' ? forwardedProto : (req.socket as { encrypted?: boolean }).encrypted ? 'https' : 'http';
    }
    const target = requestTarget(req);
    return {
      req,
      res,
      id: internal?.id ?? (peerTrusted ? forwardedRequestId(req.headers['x-request-id']) : undefined) ?? this.idPrefix + (++this.sequence).toString(36),
      startedAt: performance.now(),
      method: req.method ?? 'GET',
      httpVersion: internal?.httpVersion ?? req.httpVersion,
      clientAddress,
      peerAddress,
      peerTrusted,
      proto,
      host: target.host,
      path: target.path,
      url: '',
      directives: NO_DIRECTIVES,
      outcome: 'miss',
      detail: undefined,
      bytes: 0,
      internal,
    };
  }

  private process(x: Exchange): void | Promise<void> {
    // RFC 9112 §3.2: more than one Host field line (or none, for HTTP/1.1) is a 400, never a cache-key guess.
    if ((x.host === '' && x.httpVersion !== '1.0') || hostLines(x.req.rawHeaders) > 1) {
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
    // requestFilter: the worker that received the request from the client has run them already.
    if (x.internal === undefined && this.filters.length > 0) return this.requestFilter(x, 0);
    return this.cacheKeyAndLookup(x);
  }

  /** Runs the filters from `from` on; one that answers ends the request. Synchronous until a filter needs to wait. */
  private requestFilter(x: Exchange, from: number): void | Promise<void> {
    const filters = this.filters;
    for (let i = from; i < filters.length; i++) {
      const answered = filters[i]!(x);
      if (answered === true) return;
      if (answered !== false) return answered.then((done) => (done ? undefined : this.requestFilter(x, i + 1)));
    }
    return this.cacheKeyAndLookup(x);
  }

  private cacheKeyAndLookup(x: Exchange): void | Promise<void> {
    // cacheKey
    x.url = cacheKey(x.proto, x.host, x.path, this.settings.key);
    if (x.method !== 'GET' && x.method !== 'HEAD') return this.pass(x);
    x.directives = governingRequestDirectives(x.req.headers);
    const primaryKey = entryKey(x.url, '');
    // A fill for a URL that had nothing stored is fetching: join it without a store lookup (in a
    // stampede, a thousand disk misses would otherwise queue before the fill).
    if (this.fills.awaitingMissFill(primaryKey)) return this.afterLookup(x, NOTHING_FOUND);
    // lookup
    const found = this.lookup(x, primaryKey);
    if (found instanceof Promise) return found.then((l) => this.afterLookup(x, l));
    return this.afterLookup(x, found);
  }

  // ---- lookup ---------------------------------------------------------------------------

  private lookup(x: Exchange, key: string): Lookup | Promise<Lookup> {
    // Concurrent lookups of one key share one disk read: in a stampede the fill starts after one
    // read, not after a thousand queued ones.
    // A response committing when the disk read starts may land before the read answers, and the
    // read may not see it: then it is the stored response this request gets.
    const found = this.read(key);
    if (found instanceof Promise) {
      const committing = this.fills.committing(x, key);
      return found.then((entry) => this.selectVariant(x, key, entry, committing));
    }
    return this.selectVariant(x, key, found, undefined);
  }

  /** The stored entry of `key`; concurrent disk reads of one key (an object's or a slice's) share one. */
  private read(key: string): CachedEntry | undefined | Promise<CachedEntry | undefined> {
    const pending = this.pendingLookups.get(key);
    if (pending !== undefined) return pending;
    const first = this.store.get(key);
    if (!(first instanceof Promise)) return first;
    const read = first.catch((error) => this.storeReadFailed(error));
    this.pendingLookups.set(key, read);
    read.then(() => this.pendingLookups.delete(key));
    return read;
  }

  /** A failing disk read is a miss (counted and logged), never a failed request. */
  private storeReadFailed(error: unknown): undefined {
    this.metrics.inc('store_read_errors_total', 'store lookups that failed and were treated as misses');
    this.logger.warn({ err: (error as Error)?.message }, 'store lookup failed; treated as a miss');
    return undefined;
  }

  /**
   * The entry for this request's variant. A response in its commit window counts as stored
   * (fill.ts): the store will have it in a moment. It is newer than the stored one it replaces, so
   * it wins (§4: the most recent response is used): a revalidation's fresh response is served, not
   * the stale copy it refreshes, which would start another revalidation while the first commits.
   */
  private selectVariant(x: Exchange, urlKey: string, entry: CachedEntry | undefined, committedMeanwhile: FillEntry | undefined): Lookup | Promise<Lookup> {
    if (entry === undefined) return { entry: this.fills.committing(x, urlKey) ?? usable(committedMeanwhile), variant: '', vary: undefined };
    const record = entry.meta.http as unknown as HttpRecord;
    if (record.kind === 'response') return { entry: newest(entry, this.fills.committing(x, urlKey) ?? usable(committedMeanwhile)), variant: '', vary: undefined };
    const variant = variantKey(record.fields, x.req.headers);
    const key = entryKey(x.url, variant);
    const second = this.store.get(key);
    if (second instanceof Promise) {
      const committing = this.committingVariant(x, key);
      return second.catch((error) => this.storeReadFailed(error)).then((e) => ({ entry: newest(e, this.committingVariant(x, key) ?? usable(committing)), variant, vary: record }));
    }
    return { entry: newest(second, this.committingVariant(x, key)), variant, vary: record };
  }

  /**
   * A variant's fill is registered under the variant key, or under the URL's own key when it
   * began before the URL had a Vary record.
   */
  private committingVariant(x: Exchange, key: string): FillEntry | undefined {
    return this.fills.committing(x, key) ?? this.fills.committing(x, entryKey(x.url, ''));
  }

  private afterLookup(x: Exchange, l: Lookup): void | Promise<void> {
    // Nothing stored under the URL itself: a large object lives in slices (slices.ts). The slice
    // holding the first byte wanted is looked up; with none stored, the first slice is fetched
    // through the URL's own fill, and a range further in through that slice's.
    if (l.entry === undefined && this.mayServeSlices(x)) {
      const size = this.settings.sliceSize;
      const index = sliceOf(firstRequestedByte(headerText(x.req.headers.range), headerText(x.req.headers['if-range'])), size);
      const next = (s: Lookup): void | Promise<void> => this.serveLookup(x, s.entry !== undefined || index > 0 ? s : l);
      const first = this.lookupSlice(x, l.variant, l.vary, { index, size });
      return first instanceof Promise ? first.then(next) : next(first);
    }
    return this.serveLookup(x, l);
  }

  /** What the lookup found decides: deliver it, deliver it and revalidate, or fetch. */
  private serveLookup(x: Exchange, l: Lookup): void | Promise<void> {
    const entry = l.entry;
    let fwd: Forward = entry ? 'stale' : l.vary ? 'vary-miss' : 'uri-miss';
    if (entry !== undefined) {
      const now = this.now();
      switch (verdict(x.directives, entry.meta.http as unknown as ResponseRecord, entry.meta, now)) {
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
          if (this.ownsKey(x)) this.fills.revalidateInBackground(x, l);
          else this.refreshFromOwner(x);
          return this.deliverEntry(x, entry, 'fwd=stale; detail=background-revalidate');
        case 'request':
          // A fresh response the request's own directives refuse (RFC 9211 §2.2).
          fwd = 'request';
          break;
        case 'revalidate':
          break;
      }
    }
    // A key owned elsewhere: its owner decides (it may hold the key on disk).
    if (has(x.directives, 'only-if-cached') && this.ownsKey(x)) return this.onlyIfCachedMiss(x);
    return this.fetch(x, l, fwd);
  }

  // ---- slices of large objects (slices.ts) ------------------------------------------------

  /** Requests that may be answered from slices: a cacheable GET or HEAD of a key this worker owns. */
  private mayServeSlices(x: Exchange): boolean {
    return this.settings.sliceSize > 0 && this.ownsKey(x) && !has(x.directives, 'no-store') && x.req.headers.authorization === undefined;
  }

  /** A slice of the object (of variant `objectVariant`) looked up: stored, or in its commit window. */
  private lookupSlice(x: Exchange, objectVariant: string, vary: VaryRecord | undefined, slice: SliceId): Lookup | Promise<Lookup> {
    const variant = sliceVariant(objectVariant, slice.size, slice.index);
    const key = entryKey(x.url, variant);
    const found = this.read(key);
    if (found instanceof Promise) {
      const committing = this.fills.committing(x, key);
      return found.then((entry) => ({ entry: newest(entry, this.fills.committing(x, key) ?? usable(committing)), variant, vary, slice }));
    }
    return { entry: newest(found, this.fills.committing(x, key)), variant, vary, slice };
  }

  /**
   * A slice after the first: stored and usable for this request, else fetched (single-flight per
   * slice, revalidated when a stored one is stale). Throws when there is none to be had.
   */
  private async nextSlice(x: Exchange, objectVariant: string, size: number, index: number, validator: string | undefined): Promise<SlicePiece> {
    const found = await this.lookupSlice(x, objectVariant, undefined, { index, size });
    const stored = found.entry !== undefined ? storedPiece(found.entry) : undefined;
    // A stored slice of another version than the first (the first was refreshed since) is not
    // joined to it: this slice is fetched again, and the response is cut only if upstream changed too.
    const l = stored !== undefined && stored.validator === validator ? found : { ...found, entry: undefined };
    const entry = l.entry;
    if (entry !== undefined) {
      switch (verdict(x.directives, entry.meta.http as unknown as ResponseRecord, entry.meta, this.now())) {
        case 'fresh':
        case 'stale-allowed':
          return stored!;
        case 'stale-while-revalidate':
          this.fills.revalidateInBackground(x, l);
          return stored!;
        default:
          break;
      }
    }
    // §5.2.1.7: headers are sent by now (the first slice was stored); the rest may not be fetched.
    if (has(x.directives, 'only-if-cached')) throw new Error(`only-if-cached: slice ${index} is not stored`);
    // The response's Cache-Status and log line describe the first slice.
    const detail = x.detail;
    const obtained = await this.fills.obtain(x, l, entry === undefined ? 'uri-miss' : 'stale');
    x.detail = detail;
    switch (obtained.kind) {
      case 'stream':
        return slicePiece(new FillEntry(obtained.stream), index);
      case 'entry':
        return slicePiece(obtained.entry, index);
      case 'response': {
        const piece = obtained.sliced === size ? upstreamPiece(obtained.response) : undefined;
        if (piece !== undefined) return piece;
        discard(obtained.response.body);
        throw new SliceMismatch(`slice ${index}: the upstream answered ${obtained.response.statusCode}`);
      }
      case 'error':
        if (this.staleOnError(x, entry)) return stored!;
        throw obtained.error;
    }
  }

  /** The whole object, read slice after slice from the first one this request found. */
  private slicedObject(x: Exchange, key: string, meta: EntryMeta, objectVariant: string, size: number, first: SlicePiece): SlicedObject {
    const object = new SlicedObject({
      key,
      meta,
      first: { index: sliceOf(first.range.start, size), piece: first },
      sliceSize: size,
      slice: (index, validator) => this.nextSlice(x, objectVariant, size, index, validator),
      mismatch: () => this.sliceMismatch(x),
    });
    // A response that reads no body (HEAD, 304, 416) lets go of an upstream slice at once.
    x.res.once('close', () => object.release());
    return object;
  }

  /** The object changed upstream between two slices: its stored slices are of no use together any more. */
  private sliceMismatch(x: Exchange): void {
    this.metrics.inc('slice_mismatches_total', 'sliced responses cut because a slice carried another validator or length than the first');
    this.logger.warn({ id: x.id, key: x.url }, 'the object changed between slices; response cut, stored slices dropped');
    this.fills.noteSliceMismatch(x.url);
    this.purgeHere({ url: x.url }).catch((error) => this.logger.warn({ key: x.url, err: (error as Error).message }, 'dropping stale slices failed'));
  }

  /** §5.2.1.7: nothing stored fits and the client forbids forwarding. */
  private onlyIfCachedMiss(x: Exchange): void {
    x.outcome = 'synthetic';
    this.deliverError(x, 504, 'only-if-cached: no stored response fits', undefined);
  }

  // ---- fetch ----------------------------------------------------------------------------

  /** A miss, or a stored response that needs validation: the fill module decides who fetches and who shares. */
  private async fetch(x: Exchange, l: Lookup, fwd: Forward): Promise<void> {
    if (!this.ownsKey(x)) {
      if (await this.viaOwner(x, l)) return;
      // The owner is down: only-if-cached must not turn into an upstream fetch here.
      if (has(x.directives, 'only-if-cached')) return this.onlyIfCachedMiss(x);
    }
    const obtained = await this.fills.obtain(x, l, fwd);
    switch (obtained.kind) {
      case 'stream': {
        const { stream, source } = obtained;
        const now = this.now();
        if (source === 'late') {
          // It arrived while the response was committing: a hit in all but name.
          x.outcome = 'hit';
          return this.respond(x, stream.key, stream.record, stream.meta, stream.meta.size, new FillEntry(stream), `hit; ttl=${ttl(stream.meta, now)}`);
        }
        x.outcome = obtained.fwd === 'bypass' ? 'bypass' : 'miss';
        const detail = source === 'waited' ? '; detail=collapsed' : '';
        const member = `fwd=${obtained.fwd}; fwd-status=${stream.record.status}; stored; ttl=${ttl(stream.meta, now)}${detail}`;
        // The upstream's Set-Cookie goes to the request that caused the fetch, never to one that joined it.
        return this.respond(x, stream.key, stream.record, stream.meta, stream.meta.size, new FillEntry(stream), member, source === 'waited' ? undefined : setCookieHeaders(stream.setCookie));
      }
      case 'entry': {
        if (obtained.source === 'late') {
          x.outcome = 'hit';
          return this.deliverEntry(x, obtained.entry, `hit; ttl=${ttl(obtained.entry.meta, this.now())}`);
        }
        x.outcome = 'revalidated';
        const detail = obtained.source === 'waited' ? '; detail=collapsed' : '';
        return this.deliverEntry(x, obtained.entry, `fwd=stale; fwd-status=304; ttl=${ttl(obtained.entry.meta, this.now())}${detail}`);
      }
      case 'error':
        return this.upstreamFailed(x, l, obtained.error, obtained.status);
      case 'response': {
        x.outcome = obtained.fwd === 'bypass' ? 'bypass' : 'miss';
        const status = obtained.response.statusCode;
        if (obtained.sliced !== undefined) return this.deliverUnstoredSlice(x, obtained.response, obtained.sliced, `fwd=${obtained.fwd}; fwd-status=${status}`);
        if (obtained.reason === undefined) return this.deliverUpstream(x, obtained.response, `fwd=${obtained.fwd}; fwd-status=${status}`);
        const notStored = `not-stored:${obtained.reason}`;
        x.detail = x.detail === undefined ? notStored : `${x.detail},${notStored}`;
        return this.deliverUpstream(x, obtained.response, `fwd=${obtained.fwd}; fwd-status=${status}; detail=${obtained.reason}`);
      }
    }
  }

  // ---- the hop to the key's owner worker (issue 9) ---------------------------------------

  /** True in a single process, and in the worker that owns the request's key. */
  private ownsKey(x: Exchange): boolean {
    // A request sent here over the hop is this worker's by definition: it never travels on.
    return this.routing === undefined || x.internal !== undefined || this.routing.ownership.ownsUrl(x.url);
  }

  /**
   * A key another worker owns, not answered from this worker's memory: the owner answers it
   * (disk, its fill, upstream) and this worker keeps a memory copy of what the owner stores.
   * False when the owner cannot be reached (it is restarting): the request is then fetched here,
   * as a single process would, and kept in memory only.
   */
  private async viaOwner(x: Exchange, l: Lookup): Promise<boolean> {
    const routing = this.routing!;
    const owner = routing.ownership.ownerOfUrl(x.url);
    // A purge that lands while the owner answers keeps its answer out of this worker's memory.
    const mark = this.fills.mark();
    let response: UpstreamResponse;
    try {
      response = await routing.owners[owner]!.request({
        method: x.method,
        path: x.path,
        headers: ownerRequestHeaders(x, undefined),
        body: null,
        cacheKey: x.url,
        idempotent: true,
        signal: abortOnClientClose(x),
        onInterim: (status, headers) => forwardInterim(x, status, headers),
      });
    } catch (error) {
      const failure = asUpstreamError(error);
      if (x.res.destroyed) return true;
      if (failure.code !== 'UPSTREAM_CONNECT') {
        this.upstreamFailed(x, l, failure, undefined);
        return true;
      }
      this.metrics.inc('owner_unreachable_total', 'requests whose owner worker could not be reached, fetched by the receiving worker');
      this.logger.warn({ id: x.id, owner, err: failure.message }, 'owner worker unreachable; fetching in this worker');
      return false;
    }
    const owned = decodeOutcome(response.headers[OUTCOME_FIELD]);
    x.outcome = owned?.outcome ?? 'miss';
    x.detail = owned?.detail === undefined ? `owner-${owner}` : `owner-${owner},${owned.detail}`;
    const entry = x.method === 'GET' ? decodeEntry(response.headers[ENTRY_FIELD], x.url) : undefined;
    const member = headerText(response.headers[MEMBER_FIELD]);
    if (entry === undefined || member === undefined) {
      this.deliverVerbatim(x, response);
      return true;
    }
    const keep = this.mayKeepCopy(entry, mark);
    const cookies = response.headers['set-cookie'];
    const stream = this.writer.copy(x, entry.key, entry.meta, response.body, keep, cookies === undefined ? undefined : ([] as string[]).concat(cookies), (k, tags) => this.fills.purgedSince(mark, k, tags));
    this.respond(x, stream.key, stream.record, stream.meta, stream.meta.size, stream.broadcast, member, setCookieHeaders(stream.setCookie));
    return true;
  }

  /** stale-while-revalidate on a key owned elsewhere: one background request to the owner refreshes the memory copy. */
  private refreshFromOwner(x: Exchange): void {
    const routing = this.routing!;
    if (this.ownerRefreshes.has(x.url)) return;
    this.ownerRefreshes.add(x.url);
    const mark = this.fills.mark();
    const task = routing.owners[routing.ownership.ownerOfUrl(x.url)]!.request({
      method: 'GET',
      path: x.path,
      headers: ownerRequestHeaders(x, CLIENT_CONDITIONALS),
      body: null,
      cacheKey: x.url,
      idempotent: true,
    }).then((response) => {
      const entry = decodeEntry(response.headers[ENTRY_FIELD], x.url);
      if (entry === undefined || !this.mayKeepCopy(entry, mark)) {
        discard(response.body);
        return undefined;
      }
      return this.writer.copy(x, entry.key, entry.meta, response.body, true, undefined, (k, tags) => this.fills.purgedSince(mark, k, tags)).committed;
    });
    const done = task.finally(() => this.ownerRefreshes.delete(x.url));
    this.track(this.background, done);
  }

  /** A copy of an owner's entry fits this worker's memory (known size) and no purge covered it since `mark`. */
  private mayKeepCopy(entry: { key: string; meta: EntryMeta }, mark: number): boolean {
    const { size, tags } = entry.meta;
    return size !== UNKNOWN_SIZE && size <= this.routing!.memoryMaxEntryBytes && !this.fills.purgedSince(mark, entry.key, tags);
  }

  /** The owner's answer when it did not come from its cache (a pass, an error): already complete for the client. */
  private deliverVerbatim(x: Exchange, response: UpstreamResponse): void {
    x.res.writeHead(response.statusCode, withoutHopByHop(response.headers, HOP_RESPONSE_FIELDS));
    if (x.method === 'HEAD' || response.statusCode === 204 || response.statusCode === 304) {
      discard(response.body);
      x.res.end();
      return;
    }
    this.pipeBody(x, response.body);
  }

  /**
   * Applies a purge to this process: its fills, its memory tier and its disk (shard). A node of
   * several workers runs it on every worker (`WorkerRouting.purge`). Returns the entries affected.
   */
  async purgeHere(p: PurgeRequest): Promise<number> {
    this.fills.forget(p);
    return purgeStore(this.store, p);
  }

  // ---- pass (unsafe and other methods) ----------------------------------------------------

  private async pass(x: Exchange): Promise<void> {
    x.outcome = 'pass';
    const headers = upstreamHeaders(x, this.settings.nodeName, undefined);
    const signal = abortOnClientClose(x);
    let response: UpstreamResponse;
    try {
      response = await this.upstream.request({
        method: x.method,
        path: x.path,
        headers,
        body: hasRequestBody(x.req) ? (x.body ?? x.req) : null,
        cacheKey: x.url,
        idempotent: isIdempotent(x.method),
        signal,
      });
    } catch (error) {
      return this.upstreamFailed(x, NOTHING_FOUND, asUpstreamError(error), undefined);
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
        // Every worker of the node forgets the URL before the response goes out.
        await (this.routing ? this.routing.purge({ url }) : this.purgeHere({ url }));
      } catch (error) {
        this.logger.warn({ key: url, err: (error as Error).message }, 'invalidation failed');
      }
    }
  }

  // ---- deliver --------------------------------------------------------------------------

  private deliverEntry(x: Exchange, entry: CachedEntry, member: string): void {
    const record = entry.meta.http as unknown as ResponseRecord;
    this.respond(x, entry.key, record, entry.meta, entry.meta.size, entry, member);
  }

  /**
   * Sends a stored (or being-stored) response: Age, Cache-Status, then 304 for a matching
   * conditional request, 206/416 for a range, headers only for HEAD.
   */
  private respond(
    x: Exchange,
    key: string,
    record: ResponseRecord,
    meta: EntryMeta,
    size: number,
    /** A stored entry (whole body in memory, or streamed from disk) or a fill still streaming in. */
    source: CachedEntry | BodyBroadcast,
    member: string,
    extraHeaders?: string[],
  ): void {
    const { req, res } = x;
    const slice = record.status === 206 && !(source instanceof SlicedObject) ? sliceOfKey(key) : undefined;
    if (slice !== undefined) {
      // One slice of a large object (only slices are stored as 206): the client gets the object, stitched from its slices.
      const first = source instanceof BodyBroadcast ? undefined : storedPiece(source);
      if (first === undefined) throw new Error(`stored slice ${key} has no usable Content-Range`);
      const object = this.slicedObject(x, key, meta, slice.variant, slice.size, first);
      return this.respond(x, key, wholeRecord(record), meta, object.total, object, member, extraHeaders);
    }
    const now = this.now();
    const headers = record.headers.slice();
    if (extraHeaders) headers.push(...extraHeaders);
    headers.push('age', String(Math.floor(record.initialAgeSec + Math.max(0, now - meta.storedAt) / 1000)));
    headers.push('cache-status', this.cacheStatus(x, record.upstreamCacheStatus, member));
    // Over the hop, the asking worker gets the whole stored response and its meta (owner-hop.ts):
    // it keeps a copy, and answers its client's conditionals and ranges itself.
    // A sliced object is never copied whole: the owner answers the client's range itself.
    const wholeEntry = x.internal?.wantEntry === true && x.method === 'GET' && !(source instanceof SlicedObject);
    if (x.internal !== undefined) headers.push(OUTCOME_FIELD, encodeOutcome(x));
    if (wholeEntry) headers.push(ENTRY_FIELD, encodeEntry(key, meta), MEMBER_FIELD, member);
    const ifNoneMatch = wholeEntry ? undefined : req.headers['if-none-match'];
    const ifModifiedSince = wholeEntry ? undefined : req.headers['if-modified-since'];
    if ((ifNoneMatch !== undefined || ifModifiedSince !== undefined) && record.status === 200 && notModified(ifNoneMatch, ifModifiedSince, record.etag, lastModifiedOf(record, meta))) {
      res.writeHead(304, withoutFields(headers, NOT_IN_304));
      res.end();
      return;
    }
    let status = record.status;
    let range: ByteRange | undefined;
    if (req.headers.range !== undefined && !wholeEntry && status === 200 && size !== UNKNOWN_SIZE) {
      const selected = selectRanges(headerText(req.headers.range), headerText(req.headers['if-range']), size, record.etag, record.lastModified);
      if (selected.kind === 'unsatisfiable') {
        res.writeHead(416, ['content-range', `bytes */${size}`, 'content-length', '0', 'cache-status', headers[headers.length - 1]!]);
        res.end();
        return;
      }
      if (selected.kind === 'partial' && selected.ranges.length > 1) {
        const plan = multipartPlan(selected.ranges, size, fieldOf(record.headers, 'content-type'));
        // §14.6: several parts, unless the whole representation is the smaller answer. A body
        // still filling may not keep what one part has read for the next: it is sent whole (§14.2).
        const rereadable = !(source instanceof BodyBroadcast || source instanceof FillEntry);
        if (plan.length < size && rereadable) return this.respondMultipart(x, headers, plan, source);
      } else if (selected.kind === 'partial') {
        range = selected.ranges[0]!;
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
    const broadcast = source instanceof FillEntry ? source.stream.broadcast : source;
    if (broadcast instanceof BodyBroadcast) {
      broadcast.pipeTo(res, range, (n) => (x.bytes += n));
      return;
    }
    const body = broadcast.body;
    if (body !== undefined) {
      const bytes = range ? body.subarray(range.start, range.end + 1) : body;
      x.bytes = bytes.length;
      // Plain TCP queues a reference to the stored bytes; TLS encrypts a copy of whatever it is handed.
      if (bytes.length <= PIECE_BYTES || (req.socket as { encrypted?: boolean }).encrypted !== true) res.end(bytes);
      else writeInPieces(res, bytes);
      return;
    }
    this.pipeBody(x, broadcast.openBody(range));
  }

  /** A 206 with several parts (§14.6), each read from the stored copy, the fill or the slices in turn. */
  private respondMultipart(x: Exchange, headers: string[], plan: MultipartPlan, source: CachedEntry): void {
    const fields = withoutFields(headers, ONLY_CONTENT_TYPE);
    fields.push('content-type', plan.contentType, 'content-length', String(plan.length));
    x.res.writeHead(206, fields);
    if (x.method === 'HEAD') {
      x.res.end();
      return;
    }
    this.pipeBody(
      x,
      Readable.from(
        (async function* () {
          for (const part of plan.parts) {
            yield part.head;
            yield* entryBytes(source, part.range);
          }
          yield plan.tail;
        })(),
        { objectMode: false },
      ),
    );
  }

  /** Sends an upstream response that is not (or not yet) stored. */
  private deliverUpstream(x: Exchange, response: UpstreamResponse, member: string): void {
    const { res } = x;
    const headers = withoutHopByHop(response.headers, this.settings.role === 'edge' ? EDGE_DROPPED_FIELDS : HOP_RESPONSE_FIELDS);
    headers['via'] = appendVia(headers['via'], '1.1', this.settings.nodeName);
    headers['cache-status'] = this.cacheStatus(x, headerText(response.headers['cache-status']), member);
    if (x.internal !== undefined) headers[OUTCOME_FIELD] = encodeOutcome(x);
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

  /** A slice that may not be stored (private, larger than maxObjectSize): the object is stitched from upstream slices. */
  private deliverUnstoredSlice(x: Exchange, response: UpstreamResponse, size: number, member: string): void {
    const first = upstreamPiece(response);
    if (first === undefined) {
      discard(response.body);
      return this.deliverError(x, 502, 'the upstream sent a 206 without a usable Content-Range', undefined);
    }
    const now = this.now();
    // The upstream's Age carries on (§4.2.3); its Set-Cookie goes to this client, as for any response not stored.
    const age = Number(headerText(response.headers['age']));
    const record = makeResponseRecord({
      status: 206,
      headers: response.headers,
      freshness: { lifetimeSec: 0, initialAgeSec: Number.isFinite(age) && age > 0 ? age : 0, staleAt: now, swrUntil: now, sieUntil: now, graceUntil: now, deleteAt: now, noStale: true },
      vary: [],
      stripSurrogate: this.settings.role === 'edge',
      via: appendVia(response.headers['via'], '1.1', this.settings.nodeName),
    });
    const meta: EntryMeta = { size: first.total, tags: [], storedAt: now, staleAt: now, graceUntil: now, deleteAt: now, http: record as unknown as Record<string, unknown> };
    const fields = parseVary(response.headers['vary']);
    const object = this.slicedObject(x, x.url, meta, fields.length > 0 ? variantKey(fields, x.req.headers) : '', size, first);
    this.respond(x, x.url, wholeRecord(record), meta, object.total, object, member, setCookieHeaders(([] as string[]).concat(response.headers['set-cookie'] ?? [])));
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
    if (this.staleOnError(x, entry)) {
      x.outcome = 'stale';
      x.detail = 'stale-if-error';
      const fwdStatus = status === undefined ? '' : `; fwd-status=${status}`;
      return this.deliverEntry(x, entry, `fwd=stale${fwdStatus}; detail=stale-if-error`);
    }
    x.outcome = 'error';
    x.detail = error.code;
    this.deliverError(x, status ?? error.status, error.message, undefined);
  }

  /** stale-if-error (RFC 5861 §4): a stored response that may stand in for a failed fetch, unless the client said no-cache. */
  private staleOnError(x: Exchange, entry: CachedEntry | undefined): entry is CachedEntry {
    const servable = entry !== undefined && (!(entry instanceof FillEntry) || entry.usable);
    return servable && staleIfErrorAllowed(entry.meta.http as unknown as ResponseRecord, this.now()) && !has(x.directives, 'no-cache');
  }

  private deliverError(x: Exchange, status: number, message: string, member: string | undefined): void {
    const { res } = x;
    if (res.headersSent) {
      res.destroy();
      return;
    }
    writeTextAnswer(x, status, message, {
      'cache-status': this.cacheStatus(x, undefined, member ?? (x.outcome === 'synthetic' ? 'fwd=miss; detail=only-if-cached' : `fwd=miss; detail=${x.detail ?? 'error'}`)),
      ...(x.internal !== undefined ? { [OUTCOME_FIELD]: encodeOutcome(x) } : {}),
    });
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

  private track(set: Set<Promise<unknown>>, task: Promise<unknown>): void {
    const tracked = task.catch((error) => this.logger.error({ err: error }, 'background task failed'));
    set.add(tracked);
    tracked.finally(() => set.delete(tracked));
  }

  // ---- log ------------------------------------------------------------------------------

  private log(x: Exchange, complete: boolean): void {
    if (x.internal !== undefined) {
      // The worker that received the request from the client counts and logs it, with this outcome.
      this.metrics.ownerRequest(x.outcome);
      return;
    }
    const logging = this.accessLog.enabled && this.settings.accessLog;
    // The clock is read only when a histogram or the access log wants it.
    const ms = this.metrics.detailed || logging ? performance.now() - x.startedAt : 0;
    this.metrics.request(x.outcome, x.res.statusCode, x.bytes, ms / 1000, collapsed(x.detail));
    if (!logging) return;
    this.accessLog.write({
      id: x.id,
      client: x.clientAddress,
      method: x.method,
      host: x.host,
      path: x.path,
      status: x.res.statusCode,
      bytes: x.bytes,
      ms: Math.round(ms * 100) / 100,
      cache: x.outcome,
      detail: x.detail,
      complete,
    });
  }
}

/** Waited for another request's fill: here (`collapsed`), or at the key's owner (`owner-K,collapsed`). */
function collapsed(detail: string | undefined): boolean {
  return detail !== undefined && (detail === 'collapsed' || detail.endsWith(',collapsed'));
}

/** A fill entry that can still serve a new reader (its first byte in its window, or in the store once committed). */
function usable(entry: FillEntry | undefined): FillEntry | undefined {
  return entry?.usable ? entry : undefined;
}

/** The stored entry, or the response committing over it when that one is newer. */
function newest(stored: CachedEntry | undefined, committing: FillEntry | undefined): CachedEntry | undefined {
  if (committing === undefined) return stored;
  return stored === undefined || committing.meta.storedAt > stored.meta.storedAt ? committing : stored;
}

const ONLY_CONTENT_TYPE: ReadonlySet<string> = new Set(['content-type']);
const ONLY_CONTENT_RANGE: ReadonlySet<string> = new Set(['content-range']);

/** A slice as the object it belongs to: a 200 without the slice's Content-Range. */
function wholeRecord(slice: ResponseRecord): ResponseRecord {
  return { ...slice, status: 200, headers: withoutFields(slice.headers, ONLY_CONTENT_RANGE) };
}

/** A slice as the stitcher reads it; anything else found under a slice's key is not part of the object. */
function slicePiece(entry: CachedEntry, index: number): SlicePiece {
  const piece = storedPiece(entry);
  if (piece === undefined) throw new SliceMismatch(`slice ${index} is no longer a part of the object`);
  return piece;
}

function setCookieHeaders(values: string[] | undefined): string[] | undefined {
  return values?.flatMap((value) => ['set-cookie', value]);
}

function ttl(meta: EntryMeta, now: number): number {
  return Math.floor((meta.staleAt - now) / 1000);
}

/**
 * What If-Modified-Since is compared with (RFC 9111 §4.3.2): Last-Modified, else the stored
 * response's Date, else the time it was received.
 */
function lastModifiedOf(record: ResponseRecord, meta: EntryMeta): string {
  return record.lastModified ?? fieldOf(record.headers, 'date') ?? new Date(meta.storedAt).toUTCString();
}

function isSafe(method: string): boolean {
  return method === 'GET' || method === 'HEAD' || method === 'OPTIONS' || method === 'TRACE';
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

/** A trusted hop's request id, kept when it is one visible-ASCII token (no quote or backslash) of at most 128 characters. */
function forwardedRequestId(value: string | string[] | undefined): string | undefined {
  return typeof value === 'string' && value.length <= 128 && /^[\x21\x23-\x5b\x5d-\x7e]+$/.test(value) ? value : undefined;
}

/**
 * The client behind trusted proxies: the right-most X-Forwarded-For hop that is not itself
 * trusted (hops to its left were written by whoever the client is, and prove nothing). A hop
 * that is not an address ends the walk at the trusted proxy that reported it.
 */
export function forwardedClient(trusted: BlockList, forwardedFor: string | undefined, peer: string): string {
  if (forwardedFor === undefined) return peer;
  let client = peer;
  const hops = forwardedFor.split(',');
  for (let i = hops.length - 1; i >= 0; i--) {
    const hop = withoutPort(hops[i]!.trim());
    if (isIP(hop) === 0) return client;
    client = hop;
    if (!inAddressList(trusted, hop)) return hop;
  }
  return client;
}
