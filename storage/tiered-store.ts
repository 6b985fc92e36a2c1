/**
 * Tiered store: a MemoryStore in front of a disk store (LevelStore in production).
 *
 * - Reads: memory first (a hit returns synchronously and touches no disk), then disk. A disk hit
 *   small enough for memory is promoted in the background; the caller gets the disk entry at once.
 * - Writes: go to disk and, when the body may fit, to memory; visible only after commit.
 * - Disk is the superset: stats() reports disk; memory holds a hot subset (see memoryStats()).
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
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
  type TierStats,
} from './cache-store.js';
import { LevelStore } from './level-store.js';
import { MemoryStore } from './memory-store.js';
import { RemovalLog } from './removal-log.js';

export interface TieredStoreOptions {
  memory: MemoryStore;
  disk: CacheStore;
  /** Bodies larger than this live on disk only. Defaults to (and is capped at) memory.maxEntryBytes. */
  memoryMaxEntryBytes?: number;
  /**
   * Keys the disk tier holds (default: all). Any other key lives in memory only and is never read
   * from disk: a worker's shard holds the keys it owns, and copies of other workers' keys stay in
   * its memory (issue 9). Asked only past a memory hit, so hits pay nothing for it.
   */
  diskKeys?: (key: string) => boolean;
}

export interface TieredCounters {
  memoryHits: number;
  diskHits: number;
  misses: number;
  /** Disk hits copied into memory. */
  promotions: number;
  /** Promotions dropped: body read failed, or the key changed while it was being read. */
  promotionsDropped: number;
  /** Disk writes/commits that failed while memory still took the entry (see openWriter). */
  diskWriteErrors: number;
}

/** A background promotion; `valid` turns false when the key is mutated while its body is read. */
interface Promotion {
  valid: boolean;
  stream: Readable | undefined;
  done: Promise<void>;
}

export class TieredStore implements CacheStore {
  readonly memory: MemoryStore;
  readonly disk: CacheStore;
  readonly memoryMaxEntryBytes: number;
  private readonly diskKeys: ((key: string) => boolean) | undefined;
  readonly counters: TieredCounters = {
    memoryHits: 0,
    diskHits: 0,
    misses: 0,
    promotions: 0,
    promotionsDropped: 0,
    diskWriteErrors: 0,
  };
  /** The most recent disk write error swallowed in favour of memory (for health reporting). */
  lastDiskError: unknown = undefined;

  private readonly promotions = new Map<string, Promotion>();
  /** Keys with a mutation in flight: a promotion must not start (it could resurrect old data). */
  private readonly busyKeys = new Map<string, number>();
  /** Hard purges and deletes: a write that began before one of them is not committed after it. */
  private readonly removals = new RemovalLog();
  /** Disk reads in flight per key; a mutation or purge meanwhile marks them stale (not to be promoted). */
  private readonly diskLookups = new Map<string, Set<{ stale: boolean }>>();
  private purgesRunning = 0;
  /** Commits past their removal check: a purge or delete waits for them, then removes what they wrote. */
  private readonly commitsLanding = new Set<Promise<unknown>>();
  private closed = false;

  constructor(options: TieredStoreOptions) {
    this.memory = options.memory;
    this.disk = options.disk;
    const limit = options.memoryMaxEntryBytes ?? this.memory.maxEntryBytes;
    if (!(limit >= 0)) throw new StoreError('STORE_CONFIG', 'memoryMaxEntryBytes must be >= 0');
    this.memoryMaxEntryBytes = Math.min(limit, this.memory.maxEntryBytes);
    this.diskKeys = options.diskKeys;
  }

  private onDisk(key: string): boolean {
    return this.diskKeys === undefined || this.diskKeys(key);
  }

  get(key: string): CachedEntry | undefined | Promise<CachedEntry | undefined> {
    const hit = this.memory.get(key);
    if (hit !== undefined) {
      this.counters.memoryHits++;
      this.disk.noteAccess?.(key);
      return hit;
    }
    if (!this.onDisk(key)) {
      this.counters.misses++;
      return undefined;
    }
    const fromDisk = this.disk.get(key);
    if (fromDisk instanceof Promise) {
      // A mutation or purge that lands while the read is in flight makes what it read unfit to promote.
      const lookup = { stale: false };
      let lookups = this.diskLookups.get(key);
      if (!lookups) this.diskLookups.set(key, (lookups = new Set()));
      lookups.add(lookup);
      const done = () => {
        lookups!.delete(lookup);
        if (lookups!.size === 0 && this.diskLookups.get(key) === lookups) this.diskLookups.delete(key);
      };
      return fromDisk.then(
        (entry) => {
          done();
          return this.afterDiskLookup(key, entry, lookup.stale);
        },
        (error) => {
          done();
          throw error;
        },
      );
    }
    return this.afterDiskLookup(key, fromDisk, false);
  }

  /**
   * Writes to disk and, unless the declared size is too big for memory, to memory as well.
   *
   * Failure policy: if the disk write or commit fails (disk full, read-only, I/O error) while the
   * memory writer still holds the whole body, the commit SUCCEEDS with the entry in memory only,
   * and `counters.diskWriteErrors` / `lastDiskError` record it. A node with a broken disk keeps
   * serving hot objects from memory instead of failing every miss; memory is volatile anyway, so
   * nothing claims durability. The caller sees the disk error only when no tier got the entry.
   * A size mismatch is the caller's error and always rejects, leaving both tiers untouched.
   */
  openWriter(key: string, meta: EntryMeta): EntryWriter {
    if (!this.onDisk(key)) return this.memory.openWriter(key, meta);
    const limit = this.memoryMaxEntryBytes;
    const diskWriter = this.disk.openWriter(key, meta);
    // A hard purge or delete after this write began wins: its content is not brought back by the commit.
    const mark = this.removals.mark();
    let memWriter: EntryWriter | undefined =
      meta.size === UNKNOWN_SIZE || meta.size <= limit ? this.memory.openWriter(key, meta) : undefined;
    let diskError: unknown = undefined;
    let length = 0;
    let state: 'open' | 'committing' | 'done' = 'open';

    const dropMemory = (): void => {
      memWriter?.abort();
      memWriter = undefined;
    };
    const onDiskError = (error: unknown): void => {
      if (diskError === undefined) diskError = error;
      // Nothing left to fall back on: surface the disk error to the caller right away.
      if (memWriter === undefined) throw error;
    };

    return {
      write: (chunk: Buffer): void | Promise<void> => {
        // Like both tiers: bytes after abort/commit are ignored (a late chunk after a client abort is normal).
        if (state !== 'open') return;
        length += chunk.length;
        if (memWriter !== undefined) {
          if (length > limit) dropMemory();
          else memWriter.write(chunk);
        }
        if (diskError !== undefined) {
          if (memWriter === undefined) throw diskError;
          return;
        }
        // Past the declared size the commit will reject anyway; the disk need not see the excess.
        if (meta.size !== UNKNOWN_SIZE && length > meta.size) return;
        let pending: void | Promise<void>;
        try {
          pending = diskWriter.write(chunk);
        } catch (error) {
          onDiskError(error);
          return;
        }
        if (pending instanceof Promise) return pending.catch(onDiskError);
        return pending;
      },

      commit: async (): Promise<void> => {
        if (state !== 'open') throw new StoreError('WRITER_CLOSED', 'writer already committed or aborted');
        state = 'committing';
        if (meta.size !== UNKNOWN_SIZE && meta.size !== length) {
          diskWriter.abort();
          dropMemory();
          state = 'done';
          throw new StoreError('SIZE_MISMATCH', `body has ${length} bytes, ${meta.size} declared`);
        }
        if (this.removals.removedSince(mark, key, meta.tags)) {
          diskWriter.abort();
          dropMemory();
          state = 'done';
          throw new StoreError('REMOVED_DURING_WRITE', 'a purge or delete ran while this entry was being written; not stored');
        }
        const landing = this.mutating(key, async () => {
          // Disk first, memory second: an entry appears in memory only once it is complete.
          if (diskError === undefined) {
            try {
              await diskWriter.commit();
            } catch (error) {
              diskError = error;
            }
          } else {
            diskWriter.abort();
          }
          if (diskError !== undefined) {
            if (memWriter === undefined) throw diskError;
            this.counters.diskWriteErrors++;
            this.lastDiskError = diskError;
            // An older disk version must not come back once memory evicts the new one.
            await this.disk.delete(key).catch(() => false);
          }
          let inMemory = false;
          if (memWriter !== undefined) {
            try {
              await memWriter.commit();
              inMemory = true;
            } catch (error) {
              // ENTRY_TOO_LARGE: the body does not fit memory; disk has it. Not the caller's problem.
              if (!(error instanceof StoreError && error.code === 'ENTRY_TOO_LARGE')) {
                await this.memory.delete(key);
                throw error;
              }
              if (diskError !== undefined) throw diskError;
            }
          }
          // A new version that skipped memory must not leave the old one shadowing it there.
          if (!inMemory) await this.memory.delete(key);
        }).finally(() => {
          state = 'done';
        });
        this.commitsLanding.add(landing);
        landing.then(
          () => this.commitsLanding.delete(landing),
          () => this.commitsLanding.delete(landing),
        );
        await landing;
      },

      abort: (): void => {
        if (state === 'open') state = 'done';
        diskWriter.abort();
        dropMemory();
      },
    };
  }

  async updateMeta(key: string, meta: EntryMeta, ifStoredAt?: number): Promise<boolean> {
    if (!this.onDisk(key)) return this.memory.updateMeta(key, meta, ifStoredAt);
    return this.mutating(key, async () => {
      const [onDisk, inMemory] = await Promise.all([this.disk.updateMeta(key, meta, ifStoredAt), this.memory.updateMeta(key, meta, ifStoredAt)]);
      return onDisk || inMemory;
    });
  }

  async delete(key: string): Promise<boolean> {
    if (!this.onDisk(key)) return this.memory.delete(key);
    this.removals.deleted(key);
    await this.commitsLanded();
    return this.mutating(key, async () => {
      const [onDisk, inMemory] = await Promise.all([this.disk.delete(key), this.memory.delete(key)]);
      return onDisk || inMemory;
    });
  }

  /**
   * Purges return the larger of the two tiers' counts, not their sum: memory holds a subset of
   * disk, so the same entry must not count twice. (Only after a swallowed disk failure can memory
   * hold a key disk lacks; then the count is a lower bound. Counting distinct keys would need a
   * key listing the disk contract does not offer.)
   */
  purgeUrl(url: string, options?: PurgeOptions): Promise<number> {
    if (!options?.soft) this.removals.purgedUrl(url);
    return this.purging((store) => store.purgeUrl(url, options));
  }

  purgePrefix(prefix: string, options?: PurgeOptions): Promise<number> {
    if (!options?.soft) this.removals.purgedPrefix(prefix);
    return this.purging((store) => store.purgePrefix(prefix, options));
  }

  purgeTag(tag: string, options?: PurgeOptions): Promise<number> {
    if (!options?.soft) this.removals.purgedTag(tag);
    return this.purging((store) => store.purgeTag(tag, options));
  }

  /** Disk stats: disk holds every entry, memory a hot subset. */
  stats(): StoreStats {
    return this.disk.stats();
  }

  memoryStats(): StoreStats {
    return this.memory.stats();
  }

  /** Each tier's size and evictions (for /stats and /metrics). */
  tierStats(): Record<'memory' | 'disk', TierStats> {
    return {
      memory: { ...this.memory.stats(), evictions: this.memory.evictions },
      disk: { ...this.disk.stats(), evictions: this.disk instanceof LevelStore ? this.disk.counters.evicted : 0 },
    };
  }

  /** A URL's variants in either tier; one held in both is listed once, with the memory copy's meta. */
  async variants(url: string): Promise<StoredVariant[]> {
    const [inMemory, onDisk] = await Promise.all([this.memory.variants(url), this.disk.variants(url)]);
    const byKey = new Map(inMemory.map((v) => [v.key, v]));
    for (const v of onDisk) {
      const held = byKey.get(v.key);
      if (held) held.tiers = ['memory', 'disk'];
      else byKey.set(v.key, v);
    }
    return [...byKey.values()];
  }

  /** Resolves when no background promotion is running (tests, shutdown). */
  async promotionsIdle(): Promise<void> {
    while (this.promotions.size > 0) await Promise.all([...this.promotions.values()].map((p) => p.done));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const promotion of this.promotions.values()) {
      promotion.valid = false;
      promotion.stream?.destroy();
    }
    await this.promotionsIdle();
    await Promise.all([this.memory.close(), this.disk.close()]);
  }

  private afterDiskLookup(key: string, entry: CachedEntry | undefined, stale: boolean): CachedEntry | undefined {
    if (entry === undefined) {
      this.counters.misses++;
      return undefined;
    }
    this.counters.diskHits++;
    if (stale) this.counters.promotionsDropped++;
    else if (entry.meta.size <= this.memoryMaxEntryBytes) this.promote(key, entry);
    return entry;
  }

  /** Copies a disk entry into memory without delaying the caller, who already has the disk entry. */
  private promote(key: string, entry: CachedEntry): void {
    if (this.closed || this.promotions.has(key) || this.busyKeys.has(key) || this.purgesRunning > 0) return;
    const promotion: Promotion = { valid: true, stream: undefined, done: Promise.resolve() };
    promotion.done = (async () => {
      try {
        const body = entry.body ?? (await this.readBody(entry, promotion));
        if (promotion.valid && body !== undefined && this.memory.insert(key, entry.meta, body)) {
          this.counters.promotions++;
        } else {
          this.counters.promotionsDropped++;
        }
      } catch {
        // A corrupt or vanished body: the disk store already dropped it; serving is unaffected.
        this.counters.promotionsDropped++;
      } finally {
        this.promotions.delete(key);
      }
    })();
    this.promotions.set(key, promotion);
  }

  private async readBody(entry: CachedEntry, promotion: Promotion): Promise<Buffer | undefined> {
    const stream = entry.openBody();
    promotion.stream = stream;
    const chunks: Buffer[] = [];
    let length = 0;
    for await (const chunk of stream as AsyncIterable<Buffer>) {
      if (!promotion.valid) {
        stream.destroy();
        return undefined;
      }
      length += chunk.length;
      if (length > this.memoryMaxEntryBytes) {
        stream.destroy();
        return undefined;
      }
      chunks.push(chunk);
    }
    if (length !== entry.meta.size) return undefined;
    return chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks, length);
  }

  /** Runs a mutation of `key`, cancelling and blocking promotions of it meanwhile. */
  private async mutating<T>(key: string, run: () => Promise<T>): Promise<T> {
    const promotion = this.promotions.get(key);
    if (promotion) promotion.valid = false;
    for (const lookup of this.diskLookups.get(key) ?? []) lookup.stale = true;
    this.busyKeys.set(key, (this.busyKeys.get(key) ?? 0) + 1);
    try {
      return await run();
    } finally {
      const left = this.busyKeys.get(key)! - 1;
      if (left === 0) this.busyKeys.delete(key);
      else this.busyKeys.set(key, left);
    }
  }

  /**
   * Waits for commits that passed their removal check before a purge or delete was recorded: the
   * removal then runs after their disk write, and finds it. (Without this, a disk commit landing
   * after the purge's scan would survive it.)
   */
  private async commitsLanded(): Promise<void> {
    if (this.commitsLanding.size > 0) await Promise.allSettled([...this.commitsLanding]);
  }

  /** Runs a purge on both tiers; promotions are cancelled and blocked meanwhile (any key may match). */
  private async purging(run: (store: CacheStore) => Promise<number>): Promise<number> {
    await this.commitsLanded();
    for (const promotion of this.promotions.values()) promotion.valid = false;
    for (const lookups of this.diskLookups.values()) for (const lookup of lookups) lookup.stale = true;
    this.purgesRunning++;
    try {
      const [onDisk, inMemory] = await Promise.all([run(this.disk), run(this.memory)]);
      return Math.max(onDisk, inMemory);
    } finally {
      this.purgesRunning--;
    }
  }
}

export interface OpenTieredStoreOptions {
  /** The LevelDB lives in `<dataDir>/cache` (created if missing). */
  dataDir: string;
  memoryBytes: number;
  diskBytes: number;
  memoryMaxEntryBytes?: number;
  diskKeys?: (key: string) => boolean;
  /** Clock shared by both tiers, for tests. */
  now?: () => number;
}

/** Builds memory + LevelDB + tiered store (for the CLI). */
export async function openTieredStore(options: OpenTieredStoreOptions): Promise<TieredStore> {
  const location = path.join(options.dataDir, 'cache');
  await mkdir(location, { recursive: true });
  const memory = new MemoryStore({
    maxBytes: options.memoryBytes,
    ...(options.memoryMaxEntryBytes !== undefined ? { maxEntryBytes: options.memoryMaxEntryBytes } : {}),
    ...(options.now ? { now: options.now } : {}),
  });
  let disk: LevelStore;
  try {
    disk = await LevelStore.open({ location, maxBytes: options.diskBytes, ...(options.now ? { now: options.now } : {}) });
  } catch (error) {
    await memory.close();
    throw error;
  }
  return new TieredStore({
    memory,
    disk,
    ...(options.memoryMaxEntryBytes !== undefined ? { memoryMaxEntryBytes: options.memoryMaxEntryBytes } : {}),
    ...(options.diskKeys !== undefined ? { diskKeys: options.diskKeys } : {}),
  });
}
