/**
 * Memory tier: lru-cache bounded in bytes. A hit returns the stored entry object itself:
 * no promise, no copy, no JSON, no disk.
 */
import type { Readable } from 'node:stream';
import { LRUCache } from 'lru-cache';
import {
  StoreError,
  UNKNOWN_SIZE,
  bufferBody,
  type CacheStore,
  type CachedEntry,
  type EntryMeta,
  type EntryWriter,
  type PurgeOptions,
  type StoreStats,
  type StoredVariant,
} from './cache-store.js';
import { FrequencySketch } from './frequency-sketch.js';
import { KeyIndex } from './key-index.js';
import { primaryKeyPrefix, urlKeyPrefix } from './keys.js';
import { RemovalLog } from './removal-log.js';

/**
 * Bytes the objects around an entry cost beyond its key, body and header text: the entry, its
 * meta and record, their arrays and numbers, the Buffer, the LRU's and the indexes' slots.
 * Measured with typical response headers (test/storage/memory-entry-cost.test.ts).
 */
export const ENTRY_OBJECT_BYTES = 700;

/** What an entry costs the memory tier: its body, its key, its header text and the objects around them. */
export function entryCost(key: string, meta: EntryMeta, bodyLength: number): number {
  let text = key.length;
  const headers = (meta.http as { headers?: unknown } | undefined)?.headers;
  if (Array.isArray(headers)) for (const field of headers) if (typeof field === 'string') text += field.length;
  for (const tag of meta.tags) text += tag.length;
  return bodyLength + text + ENTRY_OBJECT_BYTES;
}

/** Memory a byte bound of `maxBytes` is expected to hold entries for: the sketch's size (entries of 1 KiB and more). */
const KEYS_PER_BYTE = 1 / 2048;
const SWEEP_INTERVAL_MS = 30_000;

export interface MemoryStoreOptions {
  /** Byte budget for bodies plus per-entry overhead. */
  maxBytes: number;
  /** Largest body kept; larger writes are skipped (counted). Defaults to maxBytes / 8. */
  maxEntryBytes?: number;
  /**
   * TinyLFU admission (Caffeine, Ristretto): a new entry goes in only if it was asked for more
   * often lately than each entry it would evict (`admits`). For a tier over a disk that keeps
   * everything: a one-hit wonder then stays on disk instead of pushing hot entries out of memory.
   */
  admission?: boolean;
  /** Clock, for tests. */
  now?: () => number;
}

const NO_TAGS: string[] = Object.freeze([]) as unknown as string[];

/**
 * The body in a buffer of its own, exactly its size. A chunk read from a socket is often a view
 * into the whole read (headers, other responses): kept as it is, a 1 KiB body would hold that
 * read alive for as long as it is cached.
 */
function ownedBytes(chunks: Buffer[], length: number): Buffer {
  const only = chunks.length === 1 ? chunks[0]! : undefined;
  if (only !== undefined && only.byteOffset === 0 && only.buffer.byteLength === length) return only;
  const bytes = Buffer.allocUnsafeSlow(length);
  let offset = 0;
  for (const chunk of chunks) offset += chunk.copy(bytes, offset);
  return bytes;
}

/**
 * The key as one flat string: keys are built by concatenation, and V8 keeps a concatenation as a
 * tree of its parts (about 100 bytes more per entry) for as long as it lives. UTF-16 round-trips
 * every code unit, lone surrogates included.
 */
function flatString(text: string): string {
  return Buffer.from(text, 'utf16le').toString('utf16le');
}

export class MemoryEntry implements CachedEntry {
  constructor(
    readonly key: string,
    readonly meta: EntryMeta,
    readonly body: Buffer,
    /**
     * When a hit on this entry was last passed on to the disk tier's LRU order (TieredStore): at
     * first, when it came into memory. A fill sets the disk copy's access time then; a disk read
     * does when the last was a touch interval old, so a promoted entry's disk access time may lag
     * by up to two intervals.
     */
    public diskNotedAt: number,
  ) {}

  openBody(range?: { start: number; end: number }): Readable {
    return bufferBody(this.body, range);
  }
}

export class MemoryStore implements CacheStore {
  readonly maxEntryBytes: number;
  /** Writes skipped because the body was larger than maxEntryBytes. */
  skippedTooLarge = 0;
  /** Entries dropped to stay within maxBytes. */
  evictions = 0;
  /** New entries `admits` turned away: less asked for than what they would have evicted. */
  admissionsRefused = 0;
  /** Lookups per key lately, when admission is on. */
  private readonly sketch: FrequencySketch | undefined;
  private readonly lru: LRUCache<string, MemoryEntry>;
  /** urlKeyPrefix(url) -> entry keys, for purge by URL and by prefix. */
  private readonly byUrl = new KeyIndex();
  private readonly byTag = new KeyIndex();
  /** Hard purges and deletes: a write begun before one of them is not committed after it. */
  private readonly removals = new RemovalLog();
  readonly now: () => number;
  private readonly sweepTimer: NodeJS.Timeout;

  constructor(options: MemoryStoreOptions) {
    if (!(options.maxBytes > 0)) throw new StoreError('STORE_CONFIG', 'memory store maxBytes must be > 0');
    this.now = options.now ?? Date.now;
    this.maxEntryBytes = Math.min(options.maxEntryBytes ?? Math.floor(options.maxBytes / 8), options.maxBytes);
    this.lru = new LRUCache<string, MemoryEntry>({
      maxSize: options.maxBytes,
      sizeCalculation: (entry) => entryCost(entry.key, entry.meta, entry.body.length),
      dispose: (entry, key, reason) => {
        // 'set' with the same key re-indexes in insert(); only unlink on real removal.
        if (reason !== 'set') this.unindex(key, entry.meta);
        if (reason === 'evict') this.evictions++;
      },
    });
    this.sweepTimer = setInterval(() => this.sweepExpired(), SWEEP_INTERVAL_MS);
    this.sweepTimer.unref();
    if (options.admission) this.sketch = new FrequencySketch(Math.ceil(options.maxBytes * KEYS_PER_BYTE));
  }

  /** The entry for `key`, if held and not past deleteAt; with admission on, the lookup is counted. */
  get(key: string): MemoryEntry | undefined {
    this.sketch?.increment(key);
    const entry = this.lru.get(key);
    if (entry === undefined) return undefined;
    if (entry.meta.deleteAt <= this.now()) {
      this.lru.delete(key);
      return undefined;
    }
    return entry;
  }

  /**
   * Whether a new entry for `key` of `size` body bytes is worth its place (TinyLFU): always while
   * it fits, or when it replaces the key's entry (an old version is never kept); else only if
   * asked for more often lately than every entry it would evict, least recently used first. Ties
   * go to what is held. The caller (a tier over disk) skips memory when refused.
   */
  admits(key: string, meta: EntryMeta, size: number): boolean {
    const sketch = this.sketch;
    if (sketch === undefined || this.lru.has(key)) return true;
    let excess = this.lru.calculatedSize + entryCost(key, meta, size) - this.lru.maxSize;
    if (excess <= 0) return true;
    const frequency = sketch.frequency(key);
    for (const victim of this.lru.rkeys()) {
      if (sketch.frequency(victim) >= frequency) {
        this.admissionsRefused++;
        return false;
      }
      const entry = this.lru.peek(victim)!;
      excess -= entryCost(victim, entry.meta, entry.body.length);
      if (excess <= 0) break;
    }
    return true;
  }

  /** Stores a complete body at once (used by the tiered store to promote disk hits). */
  insert(given: string, meta: EntryMeta, body: Buffer): boolean {
    if (body.length > this.maxEntryBytes) {
      this.skippedTooLarge++;
      return false;
    }
    const key = flatString(given);
    const previous = this.lru.peek(key);
    if (previous) this.unindex(key, previous.meta);
    this.lru.set(key, new MemoryEntry(key, { ...meta, tags: meta.tags.length > 0 ? meta.tags : NO_TAGS, size: body.length }, ownedBytes([body], body.length), this.now()));
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
        this.insert(key, meta, ownedBytes(chunks, length));
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
    this.lru.set(key, new MemoryEntry(key, { ...meta, size: entry.body.length }, entry.body, entry.diskNotedAt), { noUpdateTTL: true });
    this.index(key, meta);
    return true;
  }

  async delete(key: string): Promise<boolean> {
    this.removals.deleted(key);
    return this.lru.delete(key);
  }

  async purgeUrl(url: string, options?: PurgeOptions): Promise<number> {
    if (!options?.soft) this.removals.purgedUrl(url);
    return this.purgeKeys(this.byUrl.keys(urlKeyPrefix(url)), options);
  }

  async purgePrefix(prefix: string, options?: PurgeOptions): Promise<number> {
    if (!options?.soft) this.removals.purgedPrefix(prefix);
    return this.purgeKeys(this.byUrl.keysUnder(primaryKeyPrefix(prefix)), options);
  }

  async purgeTag(tag: string, options?: PurgeOptions): Promise<number> {
    if (!options?.soft) this.removals.purgedTag(tag);
    return this.purgeKeys(this.byTag.keys(tag), options);
  }

  stats(): StoreStats {
    return { entries: this.lru.size, bytes: this.lru.calculatedSize };
  }

  async variants(url: string): Promise<StoredVariant[]> {
    const out: StoredVariant[] = [];
    for (const key of this.byUrl.keys(urlKeyPrefix(url))) {
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
          this.lru.set(key, new MemoryEntry(key, { ...entry.meta, staleAt: now }, entry.body, entry.diskNotedAt), { noUpdateTTL: true });
        }
      } else {
        this.lru.delete(key);
      }
    }
    return count;
  }

  private index(key: string, meta: EntryMeta): void {
    const urlPrefix = key.slice(0, key.indexOf('\u0000') + 1);
    this.byUrl.add(urlPrefix, key);
    for (const tag of meta.tags) this.byTag.add(tag, key);
  }

  private unindex(key: string, meta: EntryMeta): void {
    this.byUrl.remove(key.slice(0, key.indexOf('\u0000') + 1), key);
    for (const tag of meta.tags) this.byTag.remove(tag, key);
  }
}
