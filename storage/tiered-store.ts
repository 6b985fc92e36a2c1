/**
 * Tiered store: a MemoryStore in front of a disk store (LevelStore in production).
 *
 * - Reads: memory first (a hit returns synchronously and touches no disk), then disk. A disk hit
 *   small enough for memory is promoted in the background; the caller gets the disk entry at once.
 * - Writes: go to disk and, when the body may fit, to memory; visible only after commit.
 * - Disk is the superset: stats() reports disk; memory holds a hot subset (see memoryStats()).
 *   Except when the disk is skipped:
 * - Backpressure: while the disk is behind (maxPendingDiskWrites writes or maxPendingDiskBytes
 *   body bytes waiting for it), a new write goes to memory only, so a slow disk cannot make fills
 *   pile up in the heap. Counted in counters.diskSkippedBehind.
 * - Degraded mode: a failed disk write (disk full, I/O error) makes the disk 'degraded'
 *   (disk-health.ts): writes go to memory only, reads still try the disk, and the disk is reopened
 *   and probed with backoff until it takes writes again.
 * - A write that skipped the disk leaves an older disk copy behind: it is owed a delete
 *   (owed-removals.ts), hidden from reads at once and deleted as soon as the disk takes writes.
 *   Deletes and purges a degraded disk cannot take are owed the same way.
 */
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import type { Readable } from 'node:stream';
import {
  StoreError,
  UNKNOWN_SIZE,
  putEntry,
  type CacheStore,
  type CachedEntry,
  type EntryMeta,
  type EntryWriter,
  type PurgeOptions,
  type StoreStats,
  type StoredVariant,
  type TierStats,
} from './cache-store.js';
import { DiskHealth, type DiskHealthReport } from './disk-health.js';
import { LevelStore, TOUCH_INTERVAL_MS } from './level-store.js';
import { MemoryStore, type MemoryEntry } from './memory-store.js';
import { OwedRemovals } from './owed-removals.js';
import { RemovalLog } from './removal-log.js';

/**
 * Backpressure defaults. A fill waiting for the disk held about 21 KB of heap in an edge under
 * load (issue 13), so 256 of them cost about 5 MB; fewer would send a burst of cold misses (a few
 * hundred at once, which LevelDB lands in tens of ms) past the disk.
 */
const DEFAULT_MAX_PENDING_DISK_WRITES = 256;
const DEFAULT_MAX_PENDING_DISK_BYTES = 16 * 1024 * 1024;
/**
 * Bodies a memory write holds until it commits (the memory tier keeps a body whole): past this, in
 * all writes in flight, a new write skips memory (it goes to disk, and to memory on its first hit).
 */
const DEFAULT_MAX_PENDING_MEMORY_BYTES = 32 * 1024 * 1024;
/** Memory writes this small always go ahead: large fills never keep small objects out of memory. */
const SMALL_MEMORY_WRITE = 64 * 1024;
/** Written and deleted to tell whether a degraded disk takes writes again; no cache key starts with NUL. */
const PROBE_KEY = '\u0000outpost-disk-probe';
const PROBE_BODY = Buffer.from('outpost disk probe');

/** Store errors that are about the write itself, not about the disk: they never make it degraded. */
const NOT_DISK_FAULTS = new Set(['SIZE_MISMATCH', 'ENTRY_TOO_LARGE', 'REMOVED_DURING_WRITE', 'WRITER_CLOSED', 'ENTRY_GONE', 'STORE_CLOSED', 'STORE_REOPENED']);
const isDiskFault = (error: unknown): boolean => !(error instanceof StoreError && NOT_DISK_FAULTS.has(error.code));

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
  /** Disk writes in flight (open or committing) at which new writes skip the disk. Default 256. */
  maxPendingDiskWrites?: number;
  /** Body bytes held for disk writes in flight at which new writes skip the disk. Default 16 MiB. */
  maxPendingDiskBytes?: number;
  /** Body bytes held by memory writes in flight at which new writes (above 64 KiB) skip memory. Default 32 MiB. */
  maxPendingMemoryBytes?: number;
  /** Degraded mode: first delay before reopening the disk, doubled per failed attempt up to the max. Defaults 1 s, 30 s. */
  diskRetryMs?: { first?: number; max?: number };
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
  /** Writes that skipped the disk because it was behind (memory only, when they fit). */
  diskSkippedBehind: number;
  /** Writes that skipped the disk because it was degraded (memory only, when they fit). */
  diskSkippedDegraded: number;
  /** Writes that skipped memory because memory writes in flight held maxPendingMemoryBytes. */
  memorySkippedBusy: number;
}

/** The disk tier's state, for /stats, /readyz and /metrics. */
export interface DiskReport extends DiskHealthReport {
  /** Disk writes in flight, and the body bytes they hold in memory. */
  pendingWrites: number;
  pendingBytes: number;
  skippedBehind: number;
  skippedDegraded: number;
  /** Writes that skipped memory (to disk only) while memory writes in flight held their bound. */
  memorySkippedBusy: number;
  /** Fills and promotions the memory tier's admission turned away (they stay on disk). */
  memoryAdmissionsRefused: number;
  /** Body bytes memory writes in flight hold. */
  memoryPendingBytes: number;
  writeErrors: number;
  /** Deletes and purges waiting for the disk to take writes. */
  owed: number;
  /** The disk tier's byte budget, when lowered below its configured size because the disk filled up. */
  budget?: number;
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
    diskSkippedBehind: 0,
    diskSkippedDegraded: 0,
    memorySkippedBusy: 0,
  };
  readonly maxPendingDiskWrites: number;
  readonly maxPendingDiskBytes: number;
  readonly maxPendingMemoryBytes: number;
  /** Body bytes memory writes in flight hold (maxPendingMemoryBytes). */
  private pendingMemoryBytes = 0;
  /** Disk writes opened and not yet landed (committed, failed or aborted), and the body bytes they hold. */
  private pendingDisk = { writes: 0, bytes: 0 };
  private readonly health: DiskHealth;
  private readonly owed = new OwedRemovals();
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
    this.maxPendingDiskWrites = options.maxPendingDiskWrites ?? DEFAULT_MAX_PENDING_DISK_WRITES;
    this.maxPendingDiskBytes = options.maxPendingDiskBytes ?? DEFAULT_MAX_PENDING_DISK_BYTES;
    this.maxPendingMemoryBytes = options.maxPendingMemoryBytes ?? DEFAULT_MAX_PENDING_MEMORY_BYTES;
    if (!(this.maxPendingDiskWrites >= 1) || !(this.maxPendingDiskBytes >= 0)) {
      throw new StoreError('STORE_CONFIG', 'maxPendingDiskWrites must be >= 1 and maxPendingDiskBytes >= 0');
    }
    this.health = new DiskHealth({
      recover: () => this.recoverDisk(),
      onRecovered: () => this.catchUp(),
      ...(options.diskRetryMs?.first !== undefined ? { firstRetryMs: options.diskRetryMs.first } : {}),
      ...(options.diskRetryMs?.max !== undefined ? { maxRetryMs: options.diskRetryMs.max } : {}),
    });
  }

  /** Disk writes in flight and the body bytes they hold (what the backpressure bound applies to). */
  get diskPending(): { writes: number; bytes: number } {
    return { ...this.pendingDisk };
  }

  get diskDegraded(): boolean {
    return this.health.degraded;
  }

  diskReport(): DiskReport {
    const level = this.disk instanceof LevelStore ? this.disk : undefined;
    return {
      ...this.health.report(),
      pendingWrites: this.pendingDisk.writes,
      pendingBytes: this.pendingDisk.bytes,
      skippedBehind: this.counters.diskSkippedBehind,
      skippedDegraded: this.counters.diskSkippedDegraded,
      memorySkippedBusy: this.counters.memorySkippedBusy,
      memoryAdmissionsRefused: this.memory.admissionsRefused,
      memoryPendingBytes: this.pendingMemoryBytes,
      writeErrors: this.counters.diskWriteErrors,
      owed: this.owed.size,
      ...(level && level.budget < level.maxBytes ? { budget: level.budget } : {}),
    };
  }

  private onDisk(key: string): boolean {
    return this.diskKeys === undefined || this.diskKeys(key);
  }

  get(key: string): CachedEntry | undefined | Promise<CachedEntry | undefined> {
    const hit = this.memory.get(key);
    if (hit !== undefined) {
      this.counters.memoryHits++;
      this.noteDiskAccess(key, hit);
      return hit;
    }
    if (!this.onDisk(key) || (this.owed.size > 0 && this.owed.hidesKey(key))) {
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
   * Keeps a memory-hot entry's disk copy from looking unused to the disk tier's eviction: at most
   * once per TOUCH_INTERVAL_MS per entry, counted from when it came into memory. Passing on every
   * hit on a new key made the disk tier read and rewrite its meta row: 12 % of a Zipf run's CPU.
   */
  private noteDiskAccess(key: string, hit: MemoryEntry): void {
    if (this.health.degraded || this.disk.noteAccess === undefined) return;
    const now = this.memory.now();
    if (now - hit.diskNotedAt < TOUCH_INTERVAL_MS) return;
    hit.diskNotedAt = now;
    this.disk.noteAccess(key);
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
   * Such a failure also makes the disk degraded (see the top of this file).
   *
   * While the disk is degraded or behind, the write goes to memory only (skipWriter). One that
   * does not fit memory is then not stored: its commit rejects (DISK_BEHIND, or the error that
   * made the disk degraded).
   */
  openWriter(key: string, meta: EntryMeta): EntryWriter {
    if (!this.onDisk(key)) {
      const writer = this.memoryWriter(key, meta);
      if (writer === 'too-large') return this.refusingWriter(new StoreError('ENTRY_TOO_LARGE', `a ${meta.size}-byte body does not fit the memory tier; not stored`));
      if (writer === 'busy') return this.refusingWriter(new StoreError('MEMORY_BUSY', 'memory writes in flight hold their bound; not stored'));
      return writer;
    }
    if (this.health.degraded) {
      this.counters.diskSkippedDegraded++;
      return this.skipWriter(key, meta, () => this.degradedError());
    }
    // Past the cap of owed deletes a skip cannot hide an old disk copy: its commit refuses (skipWriter),
    // rather than the write joining a disk queue that is already over its bound.
    if (this.diskBehind(meta)) {
      this.counters.diskSkippedBehind++;
      return this.skipWriter(key, meta, () => new StoreError('DISK_BEHIND', 'the disk tier is behind and the body does not fit the memory tier; not stored'));
    }
    return this.tieredWriter(key, meta);
  }

  /** True when a new write would take the disk work in flight over either bound (one write alone always may go). */
  private diskBehind(meta: EntryMeta): boolean {
    const { writes, bytes } = this.pendingDisk;
    if (writes >= this.maxPendingDiskWrites) return true;
    return writes > 0 && bytes + this.heldFor(meta) > this.maxPendingDiskBytes;
  }

  /** Body bytes a write is known to hold in memory from the start: its declared size, when memory takes it. */
  private heldFor(meta: EntryMeta): number {
    return meta.size !== UNKNOWN_SIZE && meta.size <= this.memoryMaxEntryBytes ? meta.size : 0;
  }

  /**
   * A memory-tier writer whose body counts, until it commits or aborts, in the bytes memory writes in
   * flight hold. Or why memory will not take the body (no Error made: a tiered write goes on to disk
   * alone, and an Error captures a stack): larger than memoryMaxEntryBytes, or more than
   * 64 KiB while those bytes are at maxPendingMemoryBytes (many large fills at once would otherwise
   * each hold a whole body: the node's memory is the tier plus a bounded amount in flight).
   */
  private memoryWriter(key: string, meta: EntryMeta): EntryWriter | MemoryRefusal {
    const declared = meta.size === UNKNOWN_SIZE ? 0 : meta.size;
    if (declared > this.memoryMaxEntryBytes) return 'too-large';
    if (declared > SMALL_MEMORY_WRITE && this.pendingMemoryBytes > 0 && this.pendingMemoryBytes + declared > this.maxPendingMemoryBytes) {
      this.counters.memorySkippedBusy++;
      return 'busy';
    }
    const inner = this.memory.openWriter(key, meta);
    let held = declared;
    let released = false;
    this.pendingMemoryBytes += held;
    const release = (): void => {
      if (released) return;
      released = true;
      this.pendingMemoryBytes -= held;
    };
    let length = 0;
    return {
      write: (chunk: Buffer) => {
        length += chunk.length;
        // A body of undeclared size counts as it grows.
        if (!released && length > held) {
          this.pendingMemoryBytes += length - held;
          held = length;
        }
        return inner.write(chunk);
      },
      commit: () => Promise.resolve(inner.commit()).finally(release),
      abort: () => {
        inner.abort();
        release();
      },
    };
  }

  /** A writer no tier takes: its first write says why, so the caller streams without storing. */
  private refusingWriter(error: StoreError): EntryWriter {
    return {
      write: () => {
        throw error;
      },
      commit: () => Promise.reject(error),
      abort: () => undefined,
    };
  }

  /** A write to both tiers (see openWriter); counted in pendingDisk until its disk part has landed. */
  private tieredWriter(key: string, meta: EntryMeta): EntryWriter {
    const limit = this.memoryMaxEntryBytes;
    const epoch = this.health.epoch;
    const diskWriter = this.disk.openWriter(key, meta);
    // A hard purge or delete after this write began wins: its content is not brought back by the commit.
    const mark = this.removals.mark();
    let memWriter = orNone(this.memoryWriter(key, meta));
    let diskError: unknown = undefined;
    let length = 0;
    let state: 'open' | 'committing' | 'done' = 'open';

    // The bytes memory holds until the disk has landed count against the backpressure bound.
    let held = 0;
    let counted = true;
    this.pendingDisk.writes++;
    const hold = (bytes: number): void => {
      if (!counted) return;
      this.pendingDisk.bytes += bytes - held;
      held = bytes;
    };
    const release = (): void => {
      if (!counted) return;
      hold(0);
      counted = false;
      this.pendingDisk.writes--;
    };
    if (memWriter !== undefined) hold(this.heldFor(meta));

    const dropMemory = (): void => {
      memWriter?.abort();
      memWriter = undefined;
      hold(0);
    };
    const onDiskError = (error: unknown): void => {
      if (diskError === undefined) {
        diskError = error;
        this.diskFailed(error, epoch);
      }
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
          else {
            memWriter.write(chunk);
            if (length > held) hold(length);
          }
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
          release();
          state = 'done';
          throw new StoreError('SIZE_MISMATCH', `body has ${length} bytes, ${meta.size} declared`);
        }
        if (this.removals.removedSince(mark, key, meta.tags)) {
          diskWriter.abort();
          dropMemory();
          release();
          state = 'done';
          throw new StoreError('REMOVED_DURING_WRITE', 'a purge or delete ran while this entry was being written; not stored');
        }
        await this.land(key, async () => {
          // Disk first, memory second: an entry appears in memory only once it is complete.
          if (diskError === undefined) {
            try {
              await diskWriter.commit();
            } catch (error) {
              diskError = error;
              this.diskFailed(error, epoch);
            }
          } else {
            diskWriter.abort();
          }
          if (diskError !== undefined) {
            if (memWriter === undefined) throw diskError;
            this.counters.diskWriteErrors++;
            this.lastDiskError = diskError;
            // An older disk version must not come back once memory evicts the new one: owed (hidden
            // from disk reads at once), deleted when the disk takes writes again.
            this.outdate(key);
          }
          // Refused by admission (memory is full of entries asked for more often): disk has it, and
          // memory has no old version (a replacement is always admitted).
          if (memWriter !== undefined && diskError === undefined && !this.memory.admits(key, meta, length)) {
            dropMemory();
            return;
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
          release();
        });
      },

      abort: (): void => {
        if (state === 'open') state = 'done';
        diskWriter.abort();
        dropMemory();
        if (state === 'done') release();
      },
    };
  }

  /**
   * A write to memory only, for a disk that is degraded or behind. It keeps what a tiered write
   * guarantees (size check, purges and deletes win, landing before a purge that follows); its
   * commit also owes the disk a delete of the key, so an older disk copy never comes back.
   * `notStored`: the error its commit rejects with when memory cannot take the body.
   */
  private skipWriter(key: string, meta: EntryMeta, notStored: () => unknown): EntryWriter {
    const limit = this.memoryMaxEntryBytes;
    const mark = this.removals.mark();
    let memWriter = orNone(this.memoryWriter(key, meta));
    let length = 0;
    let state: 'open' | 'committing' | 'done' = 'open';
    const dropMemory = (): void => {
      memWriter?.abort();
      memWriter = undefined;
    };
    return {
      write: (chunk: Buffer): void => {
        if (state !== 'open') return;
        length += chunk.length;
        // No tier will take it: say so now, so the caller streams without storing (a large body's
        // readers are then paced, rather than cut when the commit fails at the end).
        if (memWriter === undefined) throw notStored();
        if (length > limit) {
          dropMemory();
          throw notStored();
        }
        memWriter.write(chunk);
      },

      commit: async (): Promise<void> => {
        if (state !== 'open') throw new StoreError('WRITER_CLOSED', 'writer already committed or aborted');
        state = 'committing';
        try {
          if (meta.size !== UNKNOWN_SIZE && meta.size !== length) {
            throw new StoreError('SIZE_MISMATCH', `body has ${length} bytes, ${meta.size} declared`);
          }
          if (this.removals.removedSince(mark, key, meta.tags)) {
            throw new StoreError('REMOVED_DURING_WRITE', 'a purge or delete ran while this entry was being written; not stored');
          }
          const writer = memWriter;
          if (writer === undefined) throw notStored();
          await this.land(key, async () => {
            const outdated = this.mightBeOnDisk(key);
            if (outdated && this.owed.fullOfKeys) throw notStored();
            try {
              await writer.commit();
            } catch (error) {
              if (error instanceof StoreError && error.code === 'ENTRY_TOO_LARGE') throw notStored();
              await this.memory.delete(key);
              throw error;
            }
            if (outdated) this.outdate(key);
          });
        } finally {
          dropMemory();
          state = 'done';
        }
      },

      abort: (): void => {
        if (state === 'open') state = 'done';
        dropMemory();
      },
    };
  }

  /**
   * Runs a commit's landing as a mutation of `key`, registered so that a purge or delete that
   * follows waits for it (commitsLanded).
   */
  private land(key: string, run: () => Promise<void>): Promise<void> {
    const landing = this.mutating(key, run);
    this.commitsLanding.add(landing);
    landing.then(
      () => this.commitsLanding.delete(landing),
      () => this.commitsLanding.delete(landing),
    );
    return landing;
  }

  /** False when the disk certainly does not hold `key`. */
  private mightBeOnDisk(key: string): boolean {
    return this.disk.mightContain?.(key) ?? true;
  }

  /** The disk copy of `key` is older than what this store serves: hidden from reads now, deleted when the disk takes writes. */
  private outdate(key: string): void {
    const token = this.owed.oweKey(key);
    if (this.health.degraded) return;
    const epoch = this.health.epoch;
    this.disk.delete(key).then(
      () => this.owed.settleKey(key, token),
      (error: unknown) => this.diskFailed(error, epoch),
    );
  }

  /** A disk operation begun in health epoch `epoch` failed: a fault makes the disk degraded. */
  private diskFailed(error: unknown, epoch: number): void {
    if (!isDiskFault(error)) return;
    this.lastDiskError = error;
    this.health.fail(error, epoch);
  }

  /** What a write that could go nowhere rejects with while the disk is degraded. */
  private degradedError(): unknown {
    return this.lastDiskError ?? new StoreError('DISK_DEGRADED', 'the disk tier is degraded and the body does not fit the memory tier; not stored');
  }

  /** One recovery attempt of degraded mode: reopen, probe with a write and a delete, then apply what is owed. */
  private async recoverDisk(): Promise<void> {
    await this.disk.reopen?.();
    const now = Date.now();
    const meta: EntryMeta = { size: PROBE_BODY.length, tags: [], storedAt: now, staleAt: now, graceUntil: now, deleteAt: now + 60_000, http: {} };
    await putEntry(this.disk, PROBE_KEY, meta, PROBE_BODY);
    await this.disk.delete(PROBE_KEY);
    // Only what is owed now: new owings keep coming while degraded, and catchUp applies them.
    await this.owed.applyTo(this.disk, { soFar: true });
  }

  /** After a recovery: what was owed between the attempt's last step and leaving degraded mode. */
  private catchUp(): void {
    if (this.owed.size === 0) return;
    const epoch = this.health.epoch;
    this.owed.applyTo(this.disk).catch((error: unknown) => this.diskFailed(error, epoch));
  }

  /**
   * Updates both tiers. A disk that cannot take the update (degraded) would keep the metadata
   * from before, which may be fresher than the new (a 304 can shorten freshness): its copy is
   * owed a delete instead, hidden from reads at once.
   */
  async updateMeta(key: string, meta: EntryMeta, ifStoredAt?: number): Promise<boolean> {
    if (!this.onDisk(key)) return this.memory.updateMeta(key, meta, ifStoredAt);
    return this.mutating(key, async () => {
      const epoch = this.health.epoch;
      const outdate = (): false => {
        if (this.mightBeOnDisk(key) && !this.owed.fullOfKeys) this.owed.oweKey(key);
        return false;
      };
      const onDisk =
        this.owed.size > 0 && this.owed.hidesKey(key)
          ? Promise.resolve(false)
          : this.health.degraded
            ? Promise.resolve(outdate())
            : this.disk.updateMeta(key, meta, ifStoredAt).catch((error: unknown) => this.diskFailedOr(error, epoch, outdate));
      const [diskUpdated, inMemory] = await Promise.all([onDisk, this.memory.updateMeta(key, meta, ifStoredAt)]);
      return diskUpdated || inMemory;
    });
  }

  /** Deletes from both tiers; a delete a degraded disk cannot take is owed (hidden now, applied on recovery). */
  async delete(key: string): Promise<boolean> {
    if (!this.onDisk(key)) return this.memory.delete(key);
    this.removals.deleted(key);
    await this.commitsLanded();
    return this.mutating(key, async () => {
      const epoch = this.health.epoch;
      const onDisk = this.health.degraded
        ? Promise.resolve().then(() => this.oweDelete(key))
        : this.disk.delete(key).catch((error: unknown) => this.diskFailedOr(error, epoch, () => this.oweDelete(key)));
      const [diskDeleted, inMemory] = await Promise.all([onDisk, this.memory.delete(key)]);
      return diskDeleted || inMemory;
    });
  }

  /** Rethrows an error that is not a disk fault; for a fault, makes the disk degraded and returns `fallback`. */
  private diskFailedOr<T>(error: unknown, epoch: number, fallback: T | (() => T)): T {
    if (!isDiskFault(error)) throw error;
    this.diskFailed(error, epoch);
    return typeof fallback === 'function' ? (fallback as () => T)() : fallback;
  }

  /** Owes the disk a delete of `key`; true when the disk may have held it. Throws when nothing more can be owed. */
  private oweDelete(key: string): boolean {
    if (!this.mightBeOnDisk(key)) return false;
    if (this.owed.fullOfKeys) throw this.degradedError();
    this.owed.oweKey(key);
    return true;
  }

  /**
   * Purges return the larger of the two tiers' counts, not their sum: memory holds a subset of
   * disk, so the same entry must not count twice. (Only after a swallowed disk failure can memory
   * hold a key disk lacks; then the count is a lower bound. Counting distinct keys would need a
   * key listing the disk contract does not offer.)
   */
  purgeUrl(url: string, options?: PurgeOptions): Promise<number> {
    if (!options?.soft) this.removals.purgedUrl(url);
    return this.purging((store) => store.purgeUrl(url, options), () => this.owed.owePurge('url', url, options));
  }

  purgePrefix(prefix: string, options?: PurgeOptions): Promise<number> {
    if (!options?.soft) this.removals.purgedPrefix(prefix);
    return this.purging((store) => store.purgePrefix(prefix, options), () => this.owed.owePurge('prefix', prefix, options));
  }

  purgeTag(tag: string, options?: PurgeOptions): Promise<number> {
    if (!options?.soft) this.removals.purgedTag(tag);
    return this.purging((store) => store.purgeTag(tag, options), () => this.owed.owePurge('tag', tag, options));
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
    // A degraded disk may be closed for a reopen: then memory alone answers.
    const fromDisk = this.health.degraded ? this.disk.variants(url).catch(() => []) : this.disk.variants(url);
    const [inMemory, onDisk] = await Promise.all([this.memory.variants(url), fromDisk]);
    const byKey = new Map(inMemory.map((v) => [v.key, v]));
    for (const v of onDisk) {
      if (this.owed.size > 0 && this.owed.hides(v.key, v.meta.tags)) continue;
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
    await this.health.close();
    for (const promotion of this.promotions.values()) {
      promotion.valid = false;
      promotion.stream?.destroy();
    }
    await this.promotionsIdle();
    await Promise.all([this.memory.close(), this.disk.close()]);
  }

  private afterDiskLookup(key: string, entry: CachedEntry | undefined, stale: boolean): CachedEntry | undefined {
    // Owed a delete or purge meanwhile (or by its tags): what disk has is no longer served.
    if (entry !== undefined && this.owed.size > 0 && this.owed.hides(key, entry.meta.tags)) entry = undefined;
    if (entry === undefined) {
      this.counters.misses++;
      return undefined;
    }
    this.counters.diskHits++;
    if (stale) this.counters.promotionsDropped++;
    else if (entry.meta.size <= this.memoryMaxEntryBytes) this.promote(key, entry);
    return entry;
  }

  /**
   * Copies a disk entry into memory without delaying the caller, who already has the disk entry:
   * at once when the entry holds its body (read with its meta), else by reading it in the background.
   */
  private promote(key: string, entry: CachedEntry): void {
    if (this.closed || this.promotions.has(key) || this.busyKeys.has(key) || this.purgesRunning > 0) return;
    // Asked first, so a body read is not spent on an entry memory will not take.
    if (!this.memory.admits(key, entry.meta, entry.meta.size)) return;
    if (entry.body !== undefined) {
      this.insertPromoted(key, entry.meta, entry.body);
      return;
    }
    const promotion: Promotion = { valid: true, stream: undefined, done: Promise.resolve() };
    promotion.done = (async () => {
      try {
        const body = await this.readBody(entry, promotion);
        if (promotion.valid && body !== undefined) this.insertPromoted(key, entry.meta, body);
        else this.counters.promotionsDropped++;
      } catch {
        // A corrupt or vanished body: the disk store already dropped it; serving is unaffected.
        this.counters.promotionsDropped++;
      } finally {
        this.promotions.delete(key);
      }
    })();
    this.promotions.set(key, promotion);
  }

  private insertPromoted(key: string, meta: EntryMeta, body: Buffer): void {
    if (this.memory.insert(key, meta, body)) this.counters.promotions++;
    else this.counters.promotionsDropped++;
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

  /**
   * Runs a purge on both tiers; promotions are cancelled and blocked meanwhile (any key may match).
   * A purge a degraded disk cannot take is owed (`owe`): hidden at once, applied on recovery; its
   * count is then memory's alone. Past the cap of owed purges it rejects, as the disk purge failed.
   */
  private async purging(run: (store: CacheStore) => Promise<number>, owe: () => void): Promise<number> {
    await this.commitsLanded();
    for (const promotion of this.promotions.values()) promotion.valid = false;
    for (const lookups of this.diskLookups.values()) for (const lookup of lookups) lookup.stale = true;
    this.purgesRunning++;
    try {
      const owePurge = (): number => {
        if (this.owed.fullOfPurges) throw this.degradedError();
        owe();
        return 0;
      };
      const epoch = this.health.epoch;
      const fromDisk = this.health.degraded ? Promise.resolve().then(owePurge) : run(this.disk).catch((error: unknown) => this.diskFailedOr(error, epoch, owePurge));
      const [onDisk, inMemory] = await Promise.all([fromDisk, run(this.memory)]);
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
  /** TinyLFU admission to the memory tier (MemoryStore `admission`). */
  memoryAdmission?: boolean;
  diskKeys?: (key: string) => boolean;
  /** Clock shared by both tiers, for tests. */
  now?: () => number;
  /** See TieredStoreOptions. */
  maxPendingDiskWrites?: number;
  maxPendingDiskBytes?: number;
  diskRetryMs?: { first?: number; max?: number };
  /**
   * The disk tier's reserve file, given back when the disk is full (space-reserve.ts, and
   * LevelStore.reopen). Default diskBytes / 128, at most 64 MiB: on tmpfs, 64 MiB let a full
   * 256 MiB disk recover by evicting; a smaller one often ends in dropping the disk cache. 0: none.
   */
  diskReserveBytes?: number;
}

/** Builds memory + LevelDB + tiered store (for the CLI). */
export async function openTieredStore(options: OpenTieredStoreOptions): Promise<TieredStore> {
  const location = path.join(options.dataDir, 'cache');
  await mkdir(location, { recursive: true });
  const memory = new MemoryStore({
    maxBytes: options.memoryBytes,
    ...(options.memoryMaxEntryBytes !== undefined ? { maxEntryBytes: options.memoryMaxEntryBytes } : {}),
    admission: options.memoryAdmission ?? false,
    ...(options.now ? { now: options.now } : {}),
  });
  let disk: LevelStore;
  try {
    const reserveBytes = options.diskReserveBytes ?? Math.min(64 * 1024 * 1024, Math.floor(options.diskBytes / 128));
    disk = await LevelStore.open({ location, maxBytes: options.diskBytes, reserveBytes, ...(options.now ? { now: options.now } : {}) });
  } catch (error) {
    await memory.close();
    throw error;
  }
  return new TieredStore({
    memory,
    disk,
    ...(options.memoryMaxEntryBytes !== undefined ? { memoryMaxEntryBytes: options.memoryMaxEntryBytes } : {}),
    ...(options.diskKeys !== undefined ? { diskKeys: options.diskKeys } : {}),
    ...(options.maxPendingDiskWrites !== undefined ? { maxPendingDiskWrites: options.maxPendingDiskWrites } : {}),
    ...(options.maxPendingDiskBytes !== undefined ? { maxPendingDiskBytes: options.maxPendingDiskBytes } : {}),
    ...(options.diskRetryMs !== undefined ? { diskRetryMs: options.diskRetryMs } : {}),
  });
}

/** Why the memory tier will not take a body (see memoryWriter). */
type MemoryRefusal = 'too-large' | 'busy';

/** A memory writer, or none when memory refused the body (the disk part goes on alone). */
function orNone(writer: EntryWriter | MemoryRefusal): EntryWriter | undefined {
  return typeof writer === 'string' ? undefined : writer;
}
