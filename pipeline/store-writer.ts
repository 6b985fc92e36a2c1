/**
 * The store phase (DESIGN.md): decides whether an upstream response may be stored, works out
 * its time model once, and streams its body into the store and into a broadcast that every
 * reader follows as it arrives. Only a complete body whose length matches is committed. It also
 * applies a 304 to a stored response (§4.3.4) and keeps each URL's Vary record.
 */
import type { IncomingMessage } from 'node:http';
import { PassThrough, Readable } from 'node:stream';
import type { Logger } from 'pino';
import { UNKNOWN_SIZE, putEntry, type CacheStore, type CachedEntry, type EntryMeta, type EntryWriter } from '../storage/cache-store.js';
import { entryKey, sliceVariant } from '../storage/keys.js';
import { BodyBroadcast } from './body-broadcast.js';
import type { Exchange, Lookup } from './exchange.js';
import { appendVia } from './forward-headers.js';
import type { Metrics } from './metrics.js';
import {
  computeFreshness,
  headerText,
  notStorableReason,
  type FreshnessConfig,
  type NotStoredReason,
  type ResponseTimes,
  type StatusPolicy,
} from './response-policy.js';
import { makeResponseRecord, mergeNotModified, type HttpRecord, type ResponseRecord, type VaryRecord } from './stored-response.js';
import type { HeaderMap, UpstreamResponse } from './upstream.js';
import { parseVary, variantKey } from './vary.js';

/**
 * A response in its commit window, which the lookup phase sees as stored: its body is read from
 * the fill's broadcast while the store commits it.
 */
export class FillEntry implements CachedEntry {
  readonly body = undefined;
  constructor(readonly stream: StreamingResponse) {}

  get key(): string {
    return this.stream.key;
  }

  get meta(): EntryMeta {
    return this.stream.meta;
  }

  /** False once the body failed or is no longer held whole: it can then serve nobody new. */
  get usable(): boolean {
    return !this.stream.broadcast.failed && this.stream.broadcast.acceptsReaders;
  }

  openBody(range?: { start: number; end: number }): Readable {
    const out = new PassThrough();
    this.stream.broadcast.pipeTo(out, range, () => undefined);
    return out;
  }
}

/** A response being streamed into the store; what a fill shares with the requests that join it. */
export interface StreamingResponse {
  /** The entry key it is being stored under. */
  key: string;
  record: ResponseRecord;
  meta: EntryMeta;
  broadcast: BodyBroadcast;
  /** Headers of the request that caused the fetch (its Vary values select the variant). */
  requestHeaders: IncomingMessage['headers'];
  /** Settles when the commit window ends: the entry is stored, or will not be. */
  committed: Promise<void>;
  /** The upstream's Set-Cookie: for the request that caused the fetch only, never stored or shared. */
  setCookie: string[] | undefined;
}

/** Settles the promise a large body's lagging readers wait on: the entry is stored, or will not be. */
interface Settle {
  resolve: () => void;
  reject: (error: Error) => void;
}

export interface StoreWriterSettings {
  role: 'edge' | 'shield';
  nodeName: string;
  freshness: FreshnessConfig;
  storeStatuses: StatusPolicy;
  maxVariantsPerUrl: number;
  maxObjectSize: number;
  /** Bodies up to this size (and fillBufferSize) are held whole while they fill (the memory tier holds them anyway). */
  memoryMaxObjectSize: number;
  /** Bytes of a larger body held per fill (body-broadcast.ts). */
  fillBufferSize: number;
  /** Slice size of large objects (slices.ts): a sliced variant is stored as slices. */
  sliceSize: number;
  cacheSetCookiePaths: readonly string[];
}

export interface StoreWriterDeps {
  settings: StoreWriterSettings;
  store: CacheStore;
  logger: Logger;
  metrics: Metrics;
  now: () => number;
  /** Registers background work that shutdown waits for. */
  track: (task: Promise<unknown>) => void;
  /** A failing store read is a miss (counted and logged), never a failed request. */
  readFailed: (error: unknown) => undefined;
}

export class StoreWriter {
  private readonly settings: StoreWriterSettings;
  private readonly store: CacheStore;
  private readonly logger: Logger;
  private readonly metrics: Metrics;
  private readonly now: () => number;
  private readonly track: (task: Promise<unknown>) => void;
  private readonly readFailed: (error: unknown) => undefined;
  /** Vary record updates in progress, per URL (updatePointer). */
  private readonly pointerUpdates = new Map<string, Promise<void>>();

  constructor(deps: StoreWriterDeps) {
    this.settings = deps.settings;
    this.store = deps.store;
    this.logger = deps.logger;
    this.metrics = deps.metrics;
    this.now = deps.now;
    this.track = deps.track;
    this.readFailed = deps.readFailed;
  }

  /**
   * Starts storing `response` for the request `x`, or says why it may not be stored. The body
   * starts flowing into the store and the broadcast at once.
   */
  async begin(
    x: Exchange,
    l: Lookup,
    response: UpstreamResponse,
    times: ResponseTimes,
    /** True when an invalidation since the fetch began covers the entry: then it is not stored. */
    invalidated: (key: string, tags: readonly string[]) => boolean,
    /** A 206 holding one slice of a larger object (slices.ts): stored under its slice key. */
    slice?: { index: number; size: number; total: number },
  ): Promise<StreamingResponse | NotStoredReason> {
    const status = response.statusCode;
    const headers = response.headers;
    // A slice is judged as the representation it is part of. Any other 206 is not stored.
    const policyStatus = slice !== undefined ? 200 : status;
    const reason = notStorableReason({
      method: 'GET',
      requestHeaders: x.req.headers,
      status: policyStatus,
      responseHeaders: headers,
      allowSetCookie: this.allowsSetCookie(x),
      statuses: this.settings.storeStatuses,
    });
    if (reason) return reason;
    const declared = Number(headerText(headers['content-length']));
    if ((slice?.total ?? declared) > this.settings.maxObjectSize) return 'too-large';
    const freshness = computeFreshness(policyStatus, headers, times, this.settings.freshness);
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
    const key = entryKey(x.url, slice === undefined ? variant : sliceVariant(variant, slice.size, slice.index));
    if (invalidated(key, meta.tags)) return 'purged';
    const setCookie = headers['set-cookie'];
    return this.stream(x, key, meta, response.body, varyRecord, true, setCookie === undefined ? undefined : ([] as string[]).concat(setCookie), invalidated);
  }

  /**
   * Keeps a copy of the owner worker's entry (issue 9): the same meta, streamed into this
   * worker's store (its memory tier, for a key it does not own) as the body arrives. `keep`
   * false streams without storing (a body too large for memory).
   */
  copy(
    x: Exchange,
    key: string,
    meta: EntryMeta,
    body: Readable,
    keep: boolean,
    setCookie: string[] | undefined,
    invalidated: (key: string, tags: readonly string[]) => boolean,
  ): StreamingResponse {
    const record = meta.http as unknown as ResponseRecord;
    const variant = key.slice(key.indexOf('\u0000') + 1);
    const vary: VaryRecord | undefined = record.vary.length > 0 ? { kind: 'vary', fields: record.vary, variants: [variant] } : undefined;
    return this.stream(x, key, meta, body, vary, keep, setCookie, invalidated);
  }

  private stream(
    x: Exchange,
    key: string,
    meta: EntryMeta,
    body: Readable,
    vary: VaryRecord | undefined,
    keep: boolean,
    setCookie: string[] | undefined,
    invalidated: (key: string, tags: readonly string[]) => boolean,
  ): StreamingResponse {
    const record = meta.http as unknown as ResponseRecord;
    // A body held whole needs nothing more. A larger one keeps a window; readers that fall behind
    // it continue from the store once the commit settles `stored`. So a fill never holds more than
    // fillBufferSize, whatever memoryMaxObjectSize lets the memory tier keep (a slice of 8 MiB, say).
    const heldWhole = meta.size !== UNKNOWN_SIZE && meta.size <= Math.min(this.settings.memoryMaxObjectSize, this.settings.fillBufferSize);
    let stored: Settle | undefined;
    let broadcast: BodyBroadcast;
    if (heldWhole) broadcast = new BodyBroadcast();
    else {
      const storedEntry = new Promise<void>((resolve, reject) => (stored = { resolve, reject }));
      storedEntry.catch(() => undefined);
      broadcast = new BodyBroadcast({ window: this.settings.fillBufferSize, fallback: (start, end) => this.openStored(key, meta, storedEntry, start, end) });
    }
    let endCommitWindow!: () => void;
    const committed = new Promise<void>((resolve) => (endCommitWindow = resolve));
    this.track(this.pump(key, meta, body, broadcast, keep ? vary : undefined, x.url, keep, endCommitWindow, invalidated, stored));
    return { key, record, meta, broadcast, requestHeaders: x.req.headers, committed, setCookie };
  }

  /** The body of the entry this fill stored, from `start`, once it is committed. */
  private async openStored(key: string, meta: EntryMeta, storedEntry: Promise<void>, start: number, end: number | undefined): Promise<Readable> {
    await storedEntry;
    const entry = await this.store.get(key);
    // Evicted, purged or replaced since: those bytes are gone, and another version's must not follow.
    if (entry === undefined || entry.meta.storedAt !== meta.storedAt) throw new Error('the stored body is no longer there');
    const last = end ?? entry.meta.size - 1;
    return start > last ? Readable.from([]) : entry.openBody({ start, end: last });
  }

  /**
   * §4.3.4: a 304 refreshes the stored headers and time model; the body stays. Undefined when
   * nothing was updated: the stored copy changed meanwhile, or the 304 made the response
   * unstorable (then the stored copy is removed, §3).
   */
  async refresh(x: Exchange, stored: CachedEntry, notModifiedHeaders: HeaderMap, times: ResponseTimes): Promise<CachedEntry | undefined> {
    const record = stored.meta.http as unknown as ResponseRecord;
    const merged = mergeNotModified(record, notModifiedHeaders);
    const reason = notStorableReason({
      method: 'GET',
      requestHeaders: x.req.headers,
      status: representationStatus(record.status),
      responseHeaders: merged,
      allowSetCookie: this.allowsSetCookie(x),
      statuses: this.settings.storeStatuses,
    });
    if (reason === 'authorization' || reason === 'request-no-store') return undefined;
    if (reason !== undefined) {
      await this.store.delete(stored.key).catch((error) => this.readFailed(error));
      return undefined;
    }
    const freshness = computeFreshness(representationStatus(record.status), merged, times, this.settings.freshness);
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
    if (stored instanceof FillEntry) {
      // Still in its commit window: answer from the fill now, and update the store once it has the
      // entry. The refreshed entry's own window lasts until that update lands.
      const landed = stored.stream.committed
        .then(() => this.store.updateMeta(stored.key, meta, stored.meta.storedAt))
        .then(
          () => undefined,
          (error) => this.readFailed(error),
        );
      this.track(landed);
      return new FillEntry({ ...stored.stream, record: updated, meta, committed: landed });
    }
    try {
      // Only the version this revalidation started from; a newer body stored meanwhile keeps its own headers.
      if (await this.store.updateMeta(stored.key, meta, stored.meta.storedAt)) return (await this.store.get(stored.key)) ?? undefined;
      // A concurrent revalidation of the same representation updated it first: its update stands.
      const current = await this.store.get(stored.key);
      const currentRecord = current?.meta.http as HttpRecord | undefined;
      if (current !== undefined && currentRecord?.kind === 'response' && current.meta.size === stored.meta.size && sameValidators(currentRecord, record)) return current;
      return undefined;
    } catch (error) {
      this.readFailed(error);
      return undefined;
    }
  }

  private allowsSetCookie(x: Exchange): boolean {
    const q = x.path.indexOf('?');
    const path = q === -1 ? x.path : x.path.slice(0, q);
    return this.settings.cacheSetCookiePaths.some((prefix) => path.startsWith(prefix));
  }

  /**
   * Streams the upstream body to the broadcast and the store; commits only a complete body.
   * `endCommitWindow` runs at the end, or as soon as nothing will be stored (then the broadcast
   * also stops keeping chunks every reader has passed).
   */
  private async pump(
    key: string,
    meta: EntryMeta,
    body: Readable,
    broadcast: BodyBroadcast,
    vary: VaryRecord | undefined,
    url: string,
    keep: boolean,
    endCommitWindow: () => void,
    invalidated: (key: string, tags: readonly string[]) => boolean,
    stored: Settle | undefined,
  ): Promise<void> {
    let writer: EntryWriter | undefined;
    let storing = true;
    const stopStoring = (reason: string, error?: unknown): void => {
      if (!storing) return;
      storing = false;
      writer?.abort();
      writer = undefined;
      void broadcast.stopRetaining();
      endCommitWindow();
      stored?.reject(new Error(`the body is not stored (${reason})`));
      this.metrics.inc('not_stored_total', 'responses streamed but not stored', { reason });
      if (error !== undefined) this.logger.warn({ key: url, err: (error as Error)?.message }, 'store write failed; streaming without storing');
    };
    if (!keep) stopStoring('too-large-for-memory');
    else {
      try {
        writer = this.store.openWriter(key, meta);
      } catch (error) {
        stopStoring('store-error', error);
      }
    }
    let received = 0;
    try {
      for await (const chunk of body as AsyncIterable<Buffer>) {
        received += chunk.length;
        broadcast.push(chunk);
        // A body of undeclared length that outgrows maxObjectSize keeps streaming; nothing is stored.
        if (received > this.settings.maxObjectSize) stopStoring('too-large');
        if (writer === undefined) {
          // Not stored: the upstream goes at the pace of the slowest reader (body-broadcast.ts).
          const room = broadcast.room();
          if (room !== undefined) await room;
          continue;
        }
        try {
          await writer.write(chunk);
        } catch (error) {
          // A disk tier that is behind, or memory writes at their bound, is load, not a fault: counted, not logged per fill.
          const code = (error as { code?: string }).code;
          if (code === 'DISK_BEHIND') stopStoring('disk-behind');
          else if (code === 'MEMORY_BUSY') stopStoring('memory-busy');
          else stopStoring('store-error', error);
        }
      }
      if (meta.size !== UNKNOWN_SIZE && received !== meta.size) throw new Error(`upstream body has ${received} bytes, ${meta.size} declared`);
    } catch (error) {
      writer?.abort();
      broadcast.fail(error as Error);
      endCommitWindow();
      stored?.reject(error as Error);
      this.metrics.inc('upstream_body_errors_total', 'upstream bodies cut short or malformed (never stored)');
      this.logger.warn({ key: url, err: (error as Error).message }, 'upstream body failed; not stored');
      return;
    }
    broadcast.end();
    try {
      // §4.4: a purge or invalidation that ran after this fill began makes the store refuse the commit.
      if (writer === undefined) return;
      // A soft purge too: the store lets a write through one, but this body predates it and would
      // land fresh. Checked here, as the commit starts; one that lands meanwhile finds the entry.
      if (invalidated(key, meta.tags)) {
        writer.abort();
        this.metrics.inc('not_stored_total', 'responses streamed but not stored', { reason: 'purged' });
        return;
      }
      await writer.commit();
      stored?.resolve();
      if (vary) await this.updatePointer(url, meta, vary);
    } catch (error) {
      if ((error as { code?: string }).code === 'REMOVED_DURING_WRITE') {
        this.metrics.inc('not_stored_total', 'responses streamed but not stored', { reason: 'purged' });
      } else {
        this.metrics.inc('store_errors_total', 'entries the store could not commit');
        this.logger.warn({ key: url, err: (error as Error).message }, 'store commit failed');
      }
    } finally {
      endCommitWindow();
      // No-op once resolved; otherwise the commit did not happen and readers behind the window are cut.
      stored?.reject(new Error('the body was not stored'));
    }
  }

  /**
   * Writes the URL's Vary record after a variant's commit. The pointer lives as long as its
   * longest-lived variant, so no sibling becomes unreachable; it lists the variants committed
   * meanwhile by other fills too (read again, not overwritten). Updates of one URL run one after
   * another: two variants committing together would otherwise both read the old list, and the
   * last write would drop the other's variant.
   */
  private updatePointer(url: string, meta: EntryMeta, vary: VaryRecord): Promise<void> {
    const update = (this.pointerUpdates.get(url) ?? Promise.resolve()).then(async () => {
      const existing = await this.store.get(entryKey(url, ''));
      const current = (existing?.meta.http as HttpRecord | undefined)?.kind === 'vary' ? existing! : undefined;
      const keepUntil = Math.max(meta.deleteAt, current?.meta.deleteAt ?? 0);
      const record = current?.meta.http as VaryRecord | undefined;
      const variants = record !== undefined && record.fields.join(',') === vary.fields.join(',') ? [...new Set([...record.variants, ...vary.variants])] : vary.variants;
      const http = { ...vary, variants } as unknown as Record<string, unknown>;
      const pointer: EntryMeta = { size: 0, tags: [], storedAt: meta.storedAt, staleAt: keepUntil, graceUntil: keepUntil, deleteAt: keepUntil, http };
      await putEntry(this.store, entryKey(url, ''), pointer, Buffer.alloc(0));
    });
    const settled = update.catch(() => undefined);
    this.pointerUpdates.set(url, settled);
    void settled.then(() => {
      if (this.pointerUpdates.get(url) === settled) this.pointerUpdates.delete(url);
    });
    return update;
  }

  /**
   * The Vary record to write for a new variant: the fields plus the variant list, capped at
   * maxVariantsPerUrl. Null when the cap is reached.
   */
  private async varyRecordFor(url: string, l: Lookup, fields: string[], variant: string): Promise<VaryRecord | null> {
    const current = l.vary ?? (await this.currentVaryRecord(url).catch((error) => this.readFailed(error)));
    const sameFields = current !== undefined && current.fields.join(',') === fields.join(',');
    const variants = sameFields ? current.variants : [];
    if (variants.includes(variant)) return { kind: 'vary', fields, variants };
    let live = variants;
    if (variants.length >= this.settings.maxVariantsPerUrl) {
      // Drop variants the store has since evicted before refusing a new one.
      const stored = (key: string): Promise<CachedEntry | undefined> => Promise.resolve(this.store.get(key)).catch((error) => this.readFailed(error));
      live = [];
      for (const v of variants) {
        // A sliced variant has no entry of its own: its first slice stands for it.
        const entry = (await stored(entryKey(url, v))) ?? (this.settings.sliceSize > 0 ? await stored(entryKey(url, sliceVariant(v, this.settings.sliceSize, 0))) : undefined);
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
}

/** The status storing rules apply to: a stored 206 is a slice of a 200 (slices.ts). */
function representationStatus(status: number): number {
  return status === 206 ? 200 : status;
}

/** Whether two records carry the same validators, so describe one representation (§4.3.4). */
function sameValidators(a: ResponseRecord, b: ResponseRecord): boolean {
  if (a.etag !== undefined || b.etag !== undefined) return a.etag === b.etag;
  return a.lastModified !== undefined && a.lastModified === b.lastModified;
}

/** Surrogate keys: Surrogate-Key (space-separated, Fastly) and Cache-Tag (comma-separated). */
function surrogateKeys(headers: HeaderMap): string[] {
  const tags = new Set<string>();
  for (const t of (headerText(headers['surrogate-key']) ?? '').split(/\s+/)) if (t) tags.add(t);
  for (const t of (headerText(headers['cache-tag']) ?? '').split(',')) if (t.trim()) tags.add(t.trim());
  return [...tags];
}
