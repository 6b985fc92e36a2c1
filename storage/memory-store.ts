/**
 * Memory tier: lru-cache bounded in bytes. A hit returns the stored entry object itself:
 * no promise, no copy, no JSON, no disk.
 */
import { Readable } from 'node:stream';
import { LRUCache } from 'lru-cache';
import {
  StoreError,
  UNKNOWN_SIZE,
  type CacheStore,
  type CachedEntry,
  type EntryMeta,
  type EntryWriter,
  type PurgeOptions,
  type StoreStats,
  type StoredVariant,
} from './cache-store.js';
import { primaryKeyPrefix, urlKeyPrefix } from './keys.js';
import { RemovalLog } from './removal-log.js';

/** Rough bytes an entry costs beyond its body (objects, header strings). */
const ENTRY_OVERHEAD_BYTES = 1024;
const SWEEP_INTERVAL_MS = 30_000;

export interface MemoryStoreOptions {
  /** Byte budget for bodies plus per-entry overhead. */
  maxBytes: number;
  /** Largest body kept; larger writes are skipped (counted). Defaults to maxBytes / 8. */
  maxEntryBytes?: number;
  /** Clock, for tests. */
  now?: () => number;
}

class MemoryEntry implements CachedEntry {
  constructor(
    readonly key: string,
    readonly meta: EntryMeta,
    readonly body: Buffer,
  ) {}

  openBody(range?: { start: number; end: number }): Readable {
    const bytes = range ? this.body.subarray(range.start, range.end + 1) : this.body;
    return Readable.from(bytes.length > 0 ? [bytes] : [], { objectMode: false });
  }
}

export class MemoryStore implements CacheStore {
  readonly maxEntryBytes: number;
  /** Writes skipped because the body was larger than maxEntryBytes. */
  skippedTooLarge = 0;
  /** Entries dropped to stay within maxBytes. */
  evictions = 0;
  private readonly lru: LRUCache<string, MemoryEntry>;
  /** urlKeyPrefix(url) -> entry keys, for purge by URL and by prefix. */
  private readonly byUrl = new Map<string, Set<string>>();
  private readonly byTag = new Map<string, Set<string>>();
  /** Hard purges and deletes: a write begun before one of them is not committed after it. */
  private readonly removals = new RemovalLog();
  private readonly now: () => number;
  private readonly sweepTimer: NodeJS.Timeout;

  constructor(options: MemoryStoreOptions) {
    if (!(options.maxBytes > 0)) throw new StoreError('STORE_CONFIG', 'memory store maxBytes must be > 0');
    this.now = options.now ?? Date.now;
    this.maxEntryBytes = Math.min(options.maxEntryBytes ?? Math.floor(options.maxBytes / 8), options.maxBytes);
    this.lru = new LRUCache<string, MemoryEntry>({
      maxSize: options.maxBytes,
      sizeCalculation: (entry) => entry.body.length + ENTRY_OVERHEAD_BYTES,
      dispose: (entry, key, reason) => {
        // 'set' with the same key re-indexes in insert(); only unlink on real removal.
        if (reason !== 'set') this.unindex(key, entry.meta);
        if (reason === 'evict') this.evictions++;
      },
    });
    this.sweepTimer = setInterval(() => this.sweepExpired(), SWEEP_INTERVAL_MS);
    this.sweepTimer.unref();
  }

  get(key: string): CachedEntry | undefined {
    const entry = this.lru.get(key);
    if (entry === undefined) return undefined;
    if (entry.meta.deleteAt <= this.now()) {
      this.lru.delete(key);
      return undefined;
    }
    return entry;
  }

  /** Stores a complete body at once (used by the tiered store to promote disk hits). */
  insert(key: string, meta: EntryMeta, body: Buffer): boolean {
    if (body.length > this.maxEntryBytes) {
      this.skippedTooLarge++;
      return false;
    }
    const previous = this.lru.peek(key);
    if (previous) this.unindex(key, previous.meta);
    this.lru.set(key, new MemoryEntry(key, { ...meta, size: body.length }, body));
    if (!this.lru.has(key)) return false;
    this.index(key, meta);
    return true;
  }

  openWriter(key: string, meta: EntryMeta): EntryWriter {
    const mark = this.removals.mark();
    const chunks: Buffer[] = [];
    let length = 0;
    let state: 'open' | 'committed' | 'aborted' | 'too-large' = 'open';
    if (meta.size > this.maxEntryBytes) state = 'too-large';
    return {
      write: (chunk: Buffer) => {
        if (state !== 'open') return;
        length += chunk.length;
        if (length > this.maxEntryBytes) {
          state = 'too-large';
          chunks.length = 0;
          return;
        }
        chunks.push(chunk);
      },
      commit: async () => {
        if (state === 'too-large') {
          this.skippedTooLarge++;
          throw new StoreError('ENTRY_TOO_LARGE', `entry larger than the memory tier's ${this.maxEntryBytes} byte limit`);
        }
        if (state !== 'open') throw new StoreError('WRITER_CLOSED', 'writer already committed or aborted');
        if (meta.size !== UNKNOWN_SIZE && meta.size !== length) {
          state = 'aborted';
          throw new StoreError('SIZE_MISMATCH', `body has ${length} bytes, ${meta.size} declared`);
        }
        state = 'committed';
        // A hard purge or delete that ran after this write began wins over it.
        if (this.removals.removedSince(mark, key, meta.tags)) {
          throw new StoreError('REMOVED_DURING_WRITE', 'a purge or delete ran while this entry was being written; not stored');
        }
        this.insert(key, meta, chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, length));
      },
      abort: () => {
        if (state === 'open' || state === 'too-large') state = 'aborted';
        chunks.length = 0;
      },
    };
  }

  async updateMeta(key: string, meta: EntryMeta, ifStoredAt?: number): Promise<boolean> {
    const entry = this.lru.peek(key);
    if (!entry || (ifStoredAt !== undefined && entry.meta.storedAt !== ifStoredAt)) return false;
    this.unindex(key, entry.meta);
    this.lru.set(key, new MemoryEntry(key, { ...meta, size: entry.body.length }, entry.body), { noUpdateTTL: true });
    this.index(key, meta);
    return true;
  }

  async delete(key: string): Promise<boolean> {
    this.removals.deleted(key);
    return this.lru.delete(key);
  }

  async purgeUrl(url: string, options?: PurgeOptions): Promise<number> {
    if (!options?.soft) this.removals.purgedUrl(url);
    return this.purgeKeys([...(this.byUrl.get(urlKeyPrefix(url)) ?? [])], options);
  }

  async purgePrefix(prefix: string, options?: PurgeOptions): Promise<number> {
    if (!options?.soft) this.removals.purgedPrefix(prefix);
    const start = primaryKeyPrefix(prefix);
    const keys: string[] = [];
    for (const [urlPrefix, set] of this.byUrl) if (urlPrefix.startsWith(start)) keys.push(...set);
    return this.purgeKeys(keys, options);
  }

  async purgeTag(tag: string, options?: PurgeOptions): Promise<number> {
    if (!options?.soft) this.removals.purgedTag(tag);
    return this.purgeKeys([...(this.byTag.get(tag) ?? [])], options);
  }

  stats(): StoreStats {
    return { entries: this.lru.size, bytes: this.lru.calculatedSize };
  }

  async variants(url: string): Promise<StoredVariant[]> {
    const out: StoredVariant[] = [];
    for (const key of this.byUrl.get(urlKeyPrefix(url)) ?? []) {
      const entry = this.lru.peek(key);
      if (entry !== undefined) out.push({ key, meta: entry.meta, tiers: ['memory'] });
    }
    return out;
  }

  /** Keys currently held (most recently used first); for tests and inspection. */
  keys(): string[] {
    return [...this.lru.keys()];
  }

  async close(): Promise<void> {
    clearInterval(this.sweepTimer);
  }

  /** Drops entries past deleteAt; runs in the background. */
  sweepExpired(): number {
    const now = this.now();
    const expired: string[] = [];
    for (const [key, entry] of this.lru.entries()) if (entry.meta.deleteAt <= now) expired.push(key);
    for (const key of expired) this.lru.delete(key);
    return expired.length;
  }

  private purgeKeys(keys: string[], options?: PurgeOptions): number {
    let count = 0;
    const now = this.now();
    for (const key of keys) {
      const entry = this.lru.peek(key);
      if (!entry) continue;
      count++;
      if (options?.soft) {
        if (entry.meta.staleAt > now) {
          this.lru.set(key, new MemoryEntry(key, { ...entry.meta, staleAt: now }, entry.body), { noUpdateTTL: true });
        }
      } else {
        this.lru.delete(key);
      }
    }
    return count;
  }

  private index(key: string, meta: EntryMeta): void {
    const urlPrefix = key.slice(0, key.indexOf('\u0000') + 1);
    addTo(this.byUrl, urlPrefix, key);
    for (const tag of meta.tags) addTo(this.byTag, tag, key);
  }

  private unindex(key: string, meta: EntryMeta): void {
    removeFrom(this.byUrl, key.slice(0, key.indexOf('\u0000') + 1), key);
    for (const tag of meta.tags) removeFrom(this.byTag, tag, key);
  }
}

function addTo(map: Map<string, Set<string>>, name: string, key: string): void {
  let set = map.get(name);
  if (!set) map.set(name, (set = new Set()));
  set.add(key);
}

function removeFrom(map: Map<string, Set<string>>, name: string, key: string): void {
  const set = map.get(name);
  if (!set) return;
  set.delete(key);
  if (set.size === 0) map.delete(name);
}
