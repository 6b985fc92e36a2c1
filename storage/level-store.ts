/**
 * Disk tier: a LevelDB folder holding metadata, chunked bodies and the indexes that make purges
 * and eviction range scans.
 *
 * Key layout (all keys are bytes; `K` is the entry key encoded as CESU-8, see encodeText):
 *   o1/m/K                       -> meta record: crc32(rest) u32 | generation (16 B) | JSON
 *   o1/b/GEN idx(u32 BE)         -> body chunk:  crc32(key, data) u32 | data (chunkBytes, last one shorter)
 *   o1/t/len(u32 BE) TAG K       -> ''  tag index (length prefix so tag "a" never matches tag "ab")
 *   o1/a/time(u48 BE) K          -> ''  access order, oldest first (LRU eviction)
 *   o1/x/time(u48 BE) K          -> ''  expiry order by meta.deleteAt (absent when deleteAt is not finite)
 *   o1/p/GEN                     -> K   pending write: chunks under GEN are not committed yet
 * Everything lives under `o1/`; rows under any other prefix are never read or touched, so a
 * later format can live beside this one.
 *
 * Writes put chunks under a fresh generation (after a pending row), then one batch writes the
 * meta and index rows, deletes the pending row and removes the replaced generation. A body that
 * fits in one chunk is written in that batch instead, with no pending row; commits queued back to
 * back share one batch. Index rows can go stale only when a meta record is corrupt; every index
 * reader checks the meta and drops stale rows.
 *
 * All mutations of meta/index rows run one at a time on `queue`, so read-modify-write is safe;
 * reads (get, body streams) run beside it and rely on LevelDB's atomic batches and iterator
 * snapshots.
 */
import { randomBytes } from 'node:crypto';
import { readdir, rm, stat } from 'node:fs/promises';
import path from 'node:path';
import { Readable } from 'node:stream';
import { crc32 } from 'node:zlib';
import { Level } from 'level';
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
import { BloomFilter } from './bloom-filter.js';
import { primaryKeyPrefix, urlKeyPrefix } from './keys.js';
import { SpaceReserve, freeBytes } from './space-reserve.js';

/** Bytes an entry costs beyond its body (meta record, index rows) in the byte budget. */
export const ENTRY_OVERHEAD_BYTES = 1024;
const DEFAULT_CHUNK_BYTES = 64 * 1024;
const DEFAULT_SWEEP_INTERVAL_MS = 30_000;
const DEFAULT_COUNT_IN_BACKGROUND_ABOVE_BYTES = 4 * 1024 * 1024;
/** The smallest meta row a response makes (its key, times and a few headers as JSON), for sizing the filter. */
const META_ROW_BYTES_MIN = 256;
/**
 * A hit rewrites an entry's place in the access order only if its last touch is older than this,
 * as Varnish's lru_interval: the order is exact to within a minute, and a hot key costs one
 * rewrite a minute, not one per hit.
 */
export const TOUCH_INTERVAL_MS = 60_000;
/** Keys remembered as recently touched (recentTouches) at most. */
const RECENT_TOUCHES_MAX = 65_536;
/** Rows handled per batch by scans (purge, sweep, eviction). */
const PAGE = 256;
const GEN_BYTES = 16;
/** Where body bytes start in a writer's chunk buffer: after a body row's generation and a checksum. */
const DATA_AT = GEN_BYTES + 4;
const TIME_BYTES = 6;
const MAX_TIME = 2 ** 48 - 1;

const META = Buffer.from('o1/m/');
const BODY = Buffer.from('o1/b/');
/** The body of a one-chunk entry, keyed by the entry: read with its meta row in one getMany. */
const BODY_ROW = Buffer.from('o1/f/');
const TAG = Buffer.from('o1/t/');
const ACCESS = Buffer.from('o1/a/');
const EXPIRY = Buffer.from('o1/x/');
const PENDING = Buffer.from('o1/p/');
const ALL = Buffer.from('o1/');
const EMPTY = Buffer.alloc(0);
/** The reserve file's name inside the LevelDB folder (LevelDB ignores names it did not make). */
const RESERVE_FILE = 'outpost-reserve';
/** The names LevelDB gives its files. */
const LEVELDB_FILE = /^(\d+\.(log|ldb|sst)|MANIFEST-\d+|CURRENT|LOCK|LOG(\.old)?)$/;

export interface LevelStoreOptions {
  /** Data folder. */
  location: string;
  /** On-disk byte budget: body sizes plus ENTRY_OVERHEAD_BYTES per entry. */
  maxBytes: number;
  /** Body chunk size, default 64 KiB. */
  chunkBytes?: number;
  /** Clock, for tests. */
  now?: () => number;
  /** Background expiry/eviction sweep, default 30 s. */
  sweepIntervalMs?: number;
  /** Keys the presence filter is first sized for; it grows (rebuilt in the background) past that. Default 65536. */
  expectedEntries?: number;
  /**
   * Bytes of a reserve file kept in the folder and deleted when the disk is full, so LevelDB has
   * room to reopen, evict and compact (see space-reserve.ts). Default 0: none.
   */
  reserveBytes?: number;
  /**
   * At open, a store whose meta rows take more than this many bytes (LevelDB's estimate) is
   * counted in the background: it serves at once, asking LevelDB for every key until the count
   * has rebuilt the presence filter (see countInBackground). Default 4 MiB (~10,000 entries).
   */
  countInBackgroundAboveBytes?: number;
}

type Db = Level<Buffer, Buffer>;
type Op = { type: 'put'; key: Buffer; value: Buffer } | { type: 'del'; key: Buffer };

/** A commit waiting for its group's batch (see commitEntry). */
interface QueuedCommit {
  k: Buffer;
  rec: Omit<MetaRecord, 'accessAt'>;
  epoch: number;
  /** Rows written in the same batch (a one-chunk body). */
  rows: Op[];
  /** The writer wrote a pending row, deleted by the batch. */
  pendingRow: boolean;
  /** The presence filter did not rule the key out when the commit was asked for: its old meta row is read. */
  mayExist: boolean;
  resolve: () => void;
  reject: (error: unknown) => void;
}

interface CommitGroup {
  commits: QueuedCommit[];
  /** Bytes of the rows the commits bring (one-chunk bodies). */
  bytes: number;
}

/** A group takes at most this many commits, and stops taking more once its bodies reach COMMIT_GROUP_BYTES. */
const COMMIT_GROUP_MAX = 256;
const COMMIT_GROUP_BYTES = 4 * 1024 * 1024;

const rowBytes = (rows: Op[]) => rows.reduce((sum, row) => sum + row.key.length + (row.type === 'put' ? row.value.length : 0), 0);

/** What the meta row holds. */
interface MetaRecord {
  key: string;
  gen: Buffer;
  chunks: number;
  chunkBytes: number;
  size: number;
  /** crc32 of the whole body, checked when the whole body is streamed. */
  bodyCrc: number;
  /**
   * The body (one chunk) is in the entry's body row (`o1/f/<k>`: generation, then a chunk row's
   * value), not in a chunk row: a disk hit reads meta and body in one getMany. Entries written
   * before the body row existed keep their chunk row.
   */
  bodyRow: boolean;
  accessAt: number;
  meta: EntryMeta;
}

/**
 * Strings to bytes, lossless and prefix-preserving for any UTF-16 string (lone surrogates
 * included, which UTF-8 would replace with U+FFFD): each UTF-16 code unit becomes 1-3 bytes as
 * in UTF-8 (CESU-8). Equal to UTF-8 for strings without surrogates. Byte prefix <=> string prefix.
 */
function encodeText(text: string): Buffer {
  if (!/[\uD800-\uDFFF]/.test(text)) return Buffer.from(text, 'utf8');
  const out = Buffer.allocUnsafe(text.length * 3);
  let o = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x80) out[o++] = c;
    else if (c < 0x800) {
      out[o++] = 0xc0 | (c >> 6);
      out[o++] = 0x80 | (c & 0x3f);
    } else {
      out[o++] = 0xe0 | (c >> 12);
      out[o++] = 0x80 | ((c >> 6) & 0x3f);
      out[o++] = 0x80 | (c & 0x3f);
    }
  }
  return out.subarray(0, o);
}

function time6(ms: number): Buffer {
  const b = Buffer.allocUnsafe(TIME_BYTES);
  b.writeUIntBE(Math.min(Math.max(Math.floor(ms), 0), MAX_TIME), 0, TIME_BYTES);
  return b;
}

function u32(n: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(n, 0);
  return b;
}

/** Smallest key greater than every key starting with `prefix`. */
function prefixEnd(prefix: Buffer): Buffer {
  const end = Buffer.from(prefix);
  for (let i = end.length - 1; i >= 0; i--) {
    if (end[i]! < 0xff) {
      end[i]!++;
      return end.subarray(0, i + 1);
    }
  }
  throw new RangeError('prefix has no upper bound');
}

/** Range options for the next PAGE rows under `prefix` after row `after`. */
function page(prefix: Buffer, after: Buffer | undefined) {
  return { ...(after ? { gt: after } : { gte: prefix }), lt: prefixEnd(prefix), limit: PAGE };
}

const metaKey = (k: Buffer) => Buffer.concat([META, k]);
const chunkKey = (gen: Buffer, index: number) => Buffer.concat([BODY, gen, u32(index)]);
const chunkPrefix = (gen: Buffer) => Buffer.concat([BODY, gen]);
/** Covers the chunk's key too, so a chunk found at another position or generation fails. */
const chunkCrc = (key: Buffer, data: Buffer) => crc32(data, crc32(key));
const bodyRowKey = (k: Buffer) => Buffer.concat([BODY_ROW, k]);
const pendingKey = (gen: Buffer) => Buffer.concat([PENDING, gen]);
const accessKey = (at: number, k: Buffer) => Buffer.concat([ACCESS, time6(at), k]);
// Rounded up so a row is never due before its entry is.
const expiryKey = (at: number, k: Buffer) => Buffer.concat([EXPIRY, time6(Math.ceil(at)), k]);
function tagPrefix(tag: string): Buffer {
  const t = encodeText(tag);
  return Buffer.concat([TAG, u32(t.length), t]);
}

// JSON turns Infinity into null; times are stored as strings when not finite.
const encodeTime = (t: number): number | string => (Number.isFinite(t) ? t : String(t));
const decodeTime = (v: unknown): number => (typeof v === 'string' ? Number(v) : (v as number));
const TIME_FIELDS = ['storedAt', 'staleAt', 'graceUntil', 'deleteAt'] as const;

function encodeRecord(rec: MetaRecord): Buffer {
  const meta: Record<string, unknown> = { ...rec.meta };
  for (const f of TIME_FIELDS) meta[f] = encodeTime(rec.meta[f]);
  const json = Buffer.from(
    JSON.stringify({
      key: rec.key,
      chunks: rec.chunks,
      chunkBytes: rec.chunkBytes,
      size: rec.size,
      bodyCrc: rec.bodyCrc,
      ...(rec.bodyRow ? { bodyRow: 1 } : {}),
      accessAt: rec.accessAt,
      meta,
    }),
  );
  const value = Buffer.allocUnsafe(4 + GEN_BYTES + json.length);
  rec.gen.copy(value, 4);
  json.copy(value, 4 + GEN_BYTES);
  value.writeUInt32BE(crc32(value.subarray(4)), 0);
  return value;
}

const isCount = (n: unknown): n is number => Number.isSafeInteger(n) && (n as number) >= 0;

/** Undefined when the record fails its checksum, does not parse, or belongs to another key than `k` (`key`). */
function decodeRecord(value: Buffer, k: Buffer, key?: string): MetaRecord | undefined {
  if (value.length < 4 + GEN_BYTES || crc32(value.subarray(4)) !== value.readUInt32BE(0)) return undefined;
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(value.toString('utf8', 4 + GEN_BYTES));
  } catch {
    return undefined;
  }
  const meta = raw.meta as Record<string, unknown> | null;
  if (
    typeof raw.key !== 'string' ||
    (key !== undefined ? raw.key !== key : !encodeText(raw.key).equals(k)) ||
    !isCount(raw.size) ||
    !isCount(raw.chunks) ||
    !isCount(raw.chunkBytes) ||
    raw.chunkBytes === 0 ||
    raw.chunks !== Math.ceil(raw.size / raw.chunkBytes) ||
    !isCount(raw.bodyCrc) ||
    (raw.bodyRow !== undefined && (raw.bodyRow !== 1 || raw.chunks !== 1)) ||
    typeof raw.accessAt !== 'number' ||
    typeof meta !== 'object' ||
    meta === null ||
    !Array.isArray(meta.tags)
  ) {
    return undefined;
  }
  for (const f of TIME_FIELDS) meta[f] = decodeTime(meta[f]);
  return {
    key: raw.key,
    gen: Buffer.from(value.subarray(4, 4 + GEN_BYTES)),
    chunks: raw.chunks,
    chunkBytes: raw.chunkBytes,
    size: raw.size,
    bodyCrc: raw.bodyCrc,
    bodyRow: raw.bodyRow === 1,
    accessAt: raw.accessAt,
    meta: { ...(meta as unknown as EntryMeta), size: raw.size },
  };
}

/** Rows that make `rec` visible (meta, access, expiry, tags). */
function indexOps(k: Buffer, rec: MetaRecord): Op[] {
  const ops: Op[] = [
    { type: 'put', key: metaKey(k), value: encodeRecord(rec) },
    { type: 'put', key: accessKey(rec.accessAt, k), value: EMPTY },
  ];
  if (Number.isFinite(rec.meta.deleteAt)) ops.push({ type: 'put', key: expiryKey(rec.meta.deleteAt, k), value: EMPTY });
  for (const tag of new Set(rec.meta.tags)) {
    ops.push({ type: 'put', key: Buffer.concat([tagPrefix(tag), k]), value: EMPTY });
  }
  return ops;
}

/** Deletes of every row of `rec`; with `withBody` also its chunks. */
function removalOps(k: Buffer, rec: MetaRecord, withBody: boolean): Op[] {
  const ops: Op[] = indexOps(k, rec).map((op) => ({ type: 'del', key: op.key }));
  if (withBody && rec.bodyRow) ops.push({ type: 'del', key: bodyRowKey(k) });
  else if (withBody) for (let i = 0; i < rec.chunks; i++) ops.push({ type: 'del', key: chunkKey(rec.gen, i) });
  return ops;
}

/**
 * The body held in `value`, the body row read with `rec`'s meta row (one snapshot), when it is
 * this generation's, whole and passes both checksums; else undefined.
 */
function bodyFromRow(rec: MetaRecord, value: Buffer | undefined): Buffer | undefined {
  if (value === undefined || value.length !== GEN_BYTES + 4 + rec.size || !value.subarray(0, GEN_BYTES).equals(rec.gen)) return undefined;
  const data = value.subarray(GEN_BYTES + 4);
  if (chunkCrc(chunkKey(rec.gen, 0), data) !== value.readUInt32BE(GEN_BYTES) || crc32(data) !== rec.bodyCrc) return undefined;
  return data;
}

function writeFailed(what: string, cause: unknown): StoreError {
  const detail = cause instanceof Error ? `: ${cause.message}` : '';
  return new StoreError('STORE_WRITE_FAILED', `disk cache ${what} failed${detail}`, { cause });
}

class LevelEntry implements CachedEntry {
  constructor(
    private readonly store: LevelStore,
    private readonly k: Buffer,
    private readonly rec: MetaRecord,
    /** The whole body, verified, when it came from the body row with the meta. */
    readonly body: Buffer | undefined,
  ) {}

  get key(): string {
    return this.rec.key;
  }

  get meta(): EntryMeta {
    return this.rec.meta;
  }

  openBody(range?: { start: number; end: number }): Readable {
    return this.body !== undefined ? bufferBody(this.body, range) : this.store.streamBody(this.k, this.rec, range);
  }
}

/** Free space a reopen needs beyond the log it replays (a new manifest, log and table metadata). */
const REOPEN_MARGIN_BYTES = 1024 * 1024;

/** True when `error` (or what caused it) says the disk is out of space. */
function noSpace(error: unknown): boolean {
  for (let e = error, depth = 0; e !== undefined && e !== null && depth < 4; e = (e as { cause?: unknown }).cause, depth++) {
    if ((e as { code?: unknown }).code === 'STORE_FULL' || (e as { code?: unknown }).code === 'ENOSPC') return true;
    if (e instanceof Error && /No space left on device/i.test(e.message)) return true;
  }
  return false;
}

/** Bytes of LevelDB's write-ahead logs in `location` (what an open replays into a table). */
async function logBytes(location: string): Promise<number> {
  let total = 0;
  try {
    for (const name of await readdir(location)) if (name.endsWith('.log')) total += (await stat(path.join(location, name))).size;
  } catch {
    // unreadable folder: the open will tell
  }
  return total;
}

/** Opens the LevelDB in `location` (created if missing). */
async function openLevel(location: string): Promise<Db> {
  const db: Db = new Level<Buffer, Buffer>(location, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
  await db.open();
  return db;
}

export class LevelStore implements CacheStore {
  /**
   * Counters for metrics and tests. `reopened`: reopens after failed writes; `shrunk`: times the
   * disk was full and entries were evicted (and the budget lowered) to make room; `wiped`: times
   * that was not enough and the whole disk cache was dropped (see reopen).
   */
  readonly counters = { corruptDropped: 0, evicted: 0, expired: 0, writeErrors: 0, reopened: 0, shrunk: 0, wiped: 0 };
  readonly chunkBytes: number;
  /**
   * The byte budget eviction keeps to: maxBytes, lowered when the disk filled up before the
   * store reached maxBytes (see makeRoom), raised again as the file system has room.
   */
  budget: number;
  /** Bumped by reopen: a writer begun on the previous handle cannot commit. */
  private epoch = 0;
  private entries = 0;
  private bytes = 0;
  /** Every key ever written here (until the next rebuild): lets a cold miss skip LevelDB. */
  private presence: BloomFilter;
  /** Keys added while the filter is being rebuilt, replayed into the new one. */
  private rebuildAdds: Buffer[] | undefined;
  /** False while a background count is still adding the stored keys: the filter may not answer a miss then. */
  private presenceReady = true;
  /** Resolves once entries and bytes are counted and the presence filter holds every stored key. */
  counted: Promise<void> = Promise.resolve();
  private readonly countInBackgroundAboveBytes: number;
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;
  private closing: Promise<void> | undefined;
  private readonly writers = new Set<LevelWriter>();
  /** The first bytes of every generation this store makes (nextGeneration). */
  private readonly generationPrefix = randomBytes(GEN_BYTES - 6);
  private generations = 0;
  /** Commits queued on `queue` and not started yet, which a new commit may join. */
  private commitGroup: CommitGroup | undefined;
  /** Touches waiting for the next flush: entry key -> [encoded key, time]. */
  private touches = new Map<string, [Buffer, number]>();
  /**
   * Keys touched within TOUCH_INTERVAL_MS, oldest first: the meta read by a hit may predate a
   * touch still queued, and this keeps that hit from touching again.
   */
  private readonly recentTouches = new Map<string, number>();
  private readonly sweepTimer: NodeJS.Timeout;
  readonly now: () => number;

  private readonly reserve: SpaceReserve | undefined;

  private constructor(
    /** @internal The current handle; reopen() replaces it. */
    public db: Db,
    readonly maxBytes: number,
    readonly location: string,
    options: LevelStoreOptions,
  ) {
    this.budget = maxBytes;
    const reserveBytes = options.reserveBytes ?? 0;
    this.reserve = reserveBytes > 0 ? new SpaceReserve(path.join(location, RESERVE_FILE), reserveBytes) : undefined;
    this.presence = new BloomFilter(options.expectedEntries ?? 64 * 1024);
    this.chunkBytes = options.chunkBytes ?? DEFAULT_CHUNK_BYTES;
    this.countInBackgroundAboveBytes = options.countInBackgroundAboveBytes ?? DEFAULT_COUNT_IN_BACKGROUND_ABOVE_BYTES;
    this.now = options.now ?? Date.now;
    let sweeping = false;
    this.sweepTimer = setInterval(() => {
      // A sweep slower than the interval must not pile up more behind it.
      if (this.closed || sweeping) return;
      sweeping = true;
      this.sweepExpired()
        .catch(() => undefined)
        .finally(() => (sweeping = false));
    }, options.sweepIntervalMs ?? DEFAULT_SWEEP_INTERVAL_MS);
    this.sweepTimer.unref();
  }

  static async open(options: LevelStoreOptions): Promise<LevelStore> {
    if (!(options.maxBytes > 0)) throw new StoreError('STORE_CONFIG', 'disk store maxBytes must be > 0');
    const chunkBytes = options.chunkBytes ?? DEFAULT_CHUNK_BYTES;
    if (!Number.isSafeInteger(chunkBytes) || chunkBytes <= 0) {
      throw new StoreError('STORE_CONFIG', 'disk store chunkBytes must be a positive integer');
    }
    let db: Db;
    // A full disk: LevelDB needs room to replay its log, which the reserve file gives back.
    const reserve = new SpaceReserve(path.join(options.location, RESERVE_FILE), options.reserveBytes ?? 0);
    let released = false;
    try {
      db = await openLevel(options.location);
    } catch (error) {
      const cause = (error as { cause?: { code?: string } }).cause;
      if (cause?.code === 'LEVEL_LOCKED') {
        throw new StoreError('STORE_LOCKED', `disk cache folder ${options.location} is in use by another process`, {
          cause: error,
        });
      }
      released = reserve.bytes > 0 && (await reserve.release());
      try {
        if (!released) throw error;
        db = await openLevel(options.location);
      } catch {
        throw new StoreError('STORE_OPEN_FAILED', `cannot open disk cache folder ${options.location}`, { cause: error });
      }
    }
    const store = new LevelStore(db, options.maxBytes, options.location, options);
    try {
      await store.mutate('open', async () => {
        try {
          await store.settle(released, true);
        } catch (error) {
          // Full even with the reserve given back: start empty rather than not at all (see reopen).
          if (store.reserve === undefined || !noSpace(error)) throw error;
          await store.wipe();
        }
      });
    } catch (error) {
      await store.close().catch(() => undefined);
      const message = `cannot recover disk cache folder ${options.location}`;
      throw new StoreError('STORE_OPEN_FAILED', message, { cause: error });
    }
    return store;
  }

  get(key: string): Promise<CachedEntry | undefined> | undefined {
    if (this.closed) return undefined;
    const k = encodeText(key);
    // A key never written is answered at once, without a read on LevelDB's thread pool.
    if (this.presenceReady && !this.presence.mightContain(k)) return undefined;
    return this.lookup(key, k);
  }

  /** False when the store certainly does not hold `key` (no I/O). */
  mightContain(key: string): boolean {
    return !this.presenceReady || this.presence.mightContain(encodeText(key));
  }

  /** Meta and body row in one read (a snapshot): a hit on a one-chunk entry needs no other. */
  private async lookup(key: string, k: Buffer): Promise<CachedEntry | undefined> {
    let value: Buffer | undefined;
    let bodyValue: Buffer | undefined;
    const db = this.db;
    try {
      [value, bodyValue] = await db.getMany([metaKey(k), bodyRowKey(k)]);
    } catch (error) {
      // Closed, or being reopened (reopen): a miss, not an error.
      if (this.closed || db !== this.db || db.status !== 'open') return undefined;
      throw new StoreError('STORE_READ_FAILED', `disk cache read failed`, { cause: error });
    }
    if (value === undefined) return undefined;
    const rec = decodeRecord(value, k, key);
    if (!rec) {
      await this.dropCorrupt(k, value);
      return undefined;
    }
    const now = this.now();
    if (rec.meta.deleteAt <= now) return undefined;
    let body: Buffer | undefined;
    if (rec.bodyRow) {
      body = bodyFromRow(rec, bodyValue);
      if (body === undefined) {
        // Never served: dropped, and the request goes upstream as a miss.
        await this.corruptChunk(k, rec, bodyValue === undefined ? 'its body row is missing' : 'its body row fails its checksum');
        return undefined;
      }
    }
    if (now - Math.max(rec.accessAt, this.recentTouches.get(key) ?? -Infinity) >= TOUCH_INTERVAL_MS) {
      this.touch(key, k, now);
    }
    return new LevelEntry(this, k, rec, body);
  }

  openWriter(key: string, meta: EntryMeta): EntryWriter {
    const writer = new LevelWriter(this, key, encodeText(key), meta);
    this.writers.add(writer);
    return writer;
  }

  async updateMeta(key: string, meta: EntryMeta, ifStoredAt?: number): Promise<boolean> {
    const k = encodeText(key);
    return this.mutate('update', async () => {
      const rec = await this.read(k, key);
      if (!rec || (ifStoredAt !== undefined && rec.meta.storedAt !== ifStoredAt)) return false;
      const next: MetaRecord = { ...rec, meta: { ...meta, tags: [...meta.tags], size: rec.size } };
      await this.db.batch([...removalOps(k, rec, false), ...indexOps(k, next)]);
      return true;
    });
  }

  async delete(key: string): Promise<boolean> {
    const k = encodeText(key);
    return this.mutate('delete', async () => {
      const rec = await this.read(k, key);
      if (!rec) return false;
      await this.remove(k, rec);
      return true;
    });
  }

  async purgeUrl(url: string, options?: PurgeOptions): Promise<number> {
    return this.purgeRange(metaKey(encodeText(urlKeyPrefix(url))), options);
  }

  async purgePrefix(prefix: string, options?: PurgeOptions): Promise<number> {
    return this.purgeRange(metaKey(encodeText(primaryKeyPrefix(prefix))), options);
  }

  async purgeTag(tag: string, options?: PurgeOptions): Promise<number> {
    const prefix = tagPrefix(tag);
    return this.mutate('purge', async () => {
      let count = 0;
      let after: Buffer | undefined;
      for (;;) {
        const rows = await this.db.keys(page(prefix, after)).all();
        if (rows.length === 0) return count;
        after = rows[rows.length - 1];
        const ks = rows.map((row) => row.subarray(prefix.length));
        const values = await this.db.getMany(ks.map(metaKey));
        const hits: Array<[Buffer, MetaRecord]> = [];
        const stale: Op[] = [];
        for (let i = 0; i < ks.length; i++) {
          const value = values[i];
          const rec = value && decodeRecord(value, ks[i]!);
          if (value && !rec) await this.dropCorruptNow(ks[i]!, value);
          if (rec && rec.meta.tags.includes(tag)) hits.push([ks[i]!, rec]);
          else stale.push({ type: 'del', key: rows[i]! });
        }
        if (stale.length > 0) await this.db.batch(stale);
        count += await this.purgeRecords(hits, options);
      }
    });
  }

  stats(): StoreStats {
    return { entries: this.entries, bytes: this.bytes };
  }

  async variants(url: string): Promise<StoredVariant[]> {
    const prefix = metaKey(encodeText(urlKeyPrefix(url)));
    const out: StoredVariant[] = [];
    for await (const [key, value] of this.db.iterator({ gte: prefix, lt: prefixEnd(prefix) })) {
      const rec = decodeRecord(value, key.subarray(META.length));
      if (rec) out.push({ key: rec.key, meta: rec.meta, tiers: ['disk'] });
    }
    return out;
  }

  /** Drops entries past meta.deleteAt (the timer calls this); returns how many. */
  async sweepExpired(): Promise<number> {
    const now = this.now();
    let count = 0;
    // One page per queued mutation, so commits and purges interleave with a long backlog.
    for (;;) {
      const removed = await this.mutate('sweep', async () => {
        const due = { gte: EXPIRY, lt: Buffer.concat([EXPIRY, time6(now + 1)]), limit: PAGE };
        const rows = await this.db.keys(due).all();
        if (rows.length === 0) return -1;
        let page = 0;
        for (const row of rows) {
          const k = row.subarray(EXPIRY.length + TIME_BYTES);
          const rec = await this.read(k, undefined);
          if (rec && rec.meta.deleteAt <= now) {
            await this.remove(k, rec);
            this.counters.expired++;
            page++;
          }
          // Also when stale (entry gone, corrupt or given another deleteAt), so the scan moves on.
          await this.db.del(row);
        }
        return page;
      });
      if (removed < 0) break;
      count += removed;
    }
    await this.mutate('evict', () => this.evict());
    if (this.budget < this.maxBytes) await this.regrow();
    return count;
  }

  /**
   * Closes and reopens the database. After a failed write LevelDB refuses every later write (a
   * sticky background error) until it is reopened. Runs on the queue, so no mutation sees the
   * swap. Reads racing it miss; body streams on the old handle are cut (an error, never a short
   * body); writers begun before it cannot commit (their chunks are dropped as unfinished).
   *
   * A full disk (measured on tmpfs, see space-reserve.ts): opening replays LevelDB's log into a
   * new table, which needs about the log's size free, and LevelDB starts compacting at once.
   * - Without a reserve file it rejects (STORE_FULL) without closing anything, so reads go on
   *   being served from the open handle until space is freed from outside.
   * - With one, it gives the reserve back, reopens, evicts and compacts (settle, makeRoom).
   * - When that runs out of space too (the compaction LevelDB starts on open can use up the
   *   reserve), or the reserve is gone already, it drops the disk cache's files (wipe): a cache
   *   can start empty, a disk that stays full helps nobody.
   */
  reopen(): Promise<void> {
    return this.mutate('reopen', async () => {
      const free = await freeBytes(this.location);
      const needed = (await logBytes(this.location)) + REOPEN_MARGIN_BYTES;
      const full = free !== undefined && free < needed;
      if (full && this.reserve === undefined) {
        throw new StoreError('STORE_FULL', `the disk is full: ${free} bytes free, reopening the disk cache needs about ${needed}`);
      }
      const released = full && (await this.reserve!.release());
      this.epoch++;
      if (this.db.status === 'open') await this.db.close();
      this.forgetContents();
      try {
        if (full && !released) throw new StoreError('STORE_FULL', 'the disk is full and the reserve file is used up');
        this.db = await openLevel(this.location);
        await this.settle(released);
      } catch (error) {
        if (this.reserve === undefined || !noSpace(error)) throw error;
        await this.wipe();
      }
      this.counters.reopened++;
    });
  }

  /**
   * The last resort on a full disk (see reopen): deletes the database's files and opens it
   * empty. The budget then follows what the file system has free, as after makeRoom.
   */
  private async wipe(): Promise<void> {
    if (this.db.status === 'open') await this.db.close().catch(() => undefined);
    // LevelDB's files and the reserve only: anything else someone keeps in the folder stays.
    for (const name of await readdir(this.location)) {
      if (LEVELDB_FILE.test(name) || name === RESERVE_FILE) await rm(path.join(this.location, name), { force: true });
    }
    this.db = await openLevel(this.location);
    this.forgetContents();
    // Nothing is stored: the empty filter is exact.
    this.presenceReady = true;
    this.counters.wiped++;
    const free = (await freeBytes(this.location)) ?? 0;
    this.budget = Math.max(0, Math.min(this.budget, Math.floor((free - 2 * (this.reserve?.bytes ?? 0)) / 2)));
    await this.reserve?.ensure();
  }

  async close(): Promise<void> {
    if (this.closing) return this.closing;
    this.closed = true;
    clearInterval(this.sweepTimer);
    this.closing = (async () => {
      for (const writer of this.writers) writer.abort();
      await Promise.allSettled([...this.writers].map((writer) => writer.settled));
      await this.queue.catch(() => undefined);
      await this.db.close();
    })();
    return this.closing;
  }

  // ---- internals used by writers and entries (and tests); not part of the store contract ----

  get isClosed(): boolean {
    return this.closed;
  }

  writerDone(writer: LevelWriter): void {
    this.writers.delete(writer);
  }

  /** The handle generation a writer starts on (see reopen). */
  get currentEpoch(): number {
    return this.epoch;
  }

  /**
   * Makes an entry visible: one batch writes its meta and index rows, removes the entry it
   * replaces and, for a writer that wrote chunks before committing, deletes its pending row.
   * `rows` are written in the same batch: the body of an entry that fits one chunk, which then
   * needs no pending row (the batch is atomic).
   *
   * Commits queued back to back run as one group (issue 14): one getMany for the old meta rows and
   * one batch for all of them, instead of a read and a batch each, one after the other on the
   * queue. A mutation queued between two commits closes the group, so every mutation still runs
   * in the order it was asked for.
   */
  commitEntry(k: Buffer, rec: Omit<MetaRecord, 'accessAt'>, epoch = this.epoch, rows: Op[] = [], pendingRow = true): Promise<void> {
    // Asked before remember() adds the key. A key the filter rules out has no meta row to replace:
    // a cold fill's commit then reads nothing (the read was a third of its disk cost).
    const mayExist = !this.presenceReady || this.presence.mightContain(k);
    this.remember(k);
    return new Promise<void>((resolve, reject) => {
      const commit: QueuedCommit = { k, rec, epoch, rows, pendingRow, mayExist, resolve, reject };
      const open = this.commitGroup;
      if (open !== undefined && open.commits.length < COMMIT_GROUP_MAX && open.bytes < COMMIT_GROUP_BYTES) {
        open.commits.push(commit);
        open.bytes += rowBytes(rows);
        return;
      }
      const group: CommitGroup = { commits: [commit], bytes: rowBytes(rows) };
      this.mutate('commit', async () => {
        if (this.commitGroup === group) this.commitGroup = undefined;
        await this.commitGroupNow(group.commits);
      }).catch((error: unknown) => {
        // mutate counted the failed batch once; writeErrors counts failed commits.
        if ((error as StoreError).code === 'STORE_WRITE_FAILED') this.counters.writeErrors += group.commits.length - 1;
        for (const queued of group.commits) queued.reject(error);
      });
      // After mutate: queuing it closed any group before it, and this one is now the open one.
      this.commitGroup = group;
    });
  }

  /**
   * A generation no other write of this store uses: random bytes drawn once per store, then a
   * count (a crypto draw per write was 1.5 % of a cold fill's CPU).
   */
  nextGeneration(): Buffer {
    const gen = Buffer.allocUnsafe(GEN_BYTES);
    this.generationPrefix.copy(gen, 0);
    gen.writeUIntBE(++this.generations, GEN_BYTES - 6, 6);
    return gen;
  }

  /** Commits a group in at most one read (of the keys that may exist) and one batch. Only on the queue. */
  private async commitGroupNow(queued: QueuedCommit[]): Promise<void> {
    const commits: QueuedCommit[] = [];
    for (const commit of queued) {
      // Its chunks went to a handle since closed; the reopen dropped them as an unfinished write.
      if (commit.epoch !== this.epoch) commit.reject(new StoreError('STORE_REOPENED', 'the disk cache was reopened while this entry was written; not stored'));
      else commits.push(commit);
    }
    if (commits.length === 0) return;
    const now = this.now();
    const reads = commits.filter((commit) => commit.mayExist);
    const found = reads.length > 0 ? await this.db.getMany(reads.map((commit) => metaKey(commit.k))) : [];
    let read = 0;
    const stored = commits.map((commit) => (commit.mayExist ? found[read++] : undefined));
    // A key committed twice in one group: the second replaces what the first wrote.
    const written = new Map<string, Buffer>();
    const ops: Op[] = [];
    const replaced: Array<{ old: MetaRecord | undefined; corrupt: Buffer | undefined }> = [];
    commits.forEach((commit, i) => {
      const id = commit.k.toString('latin1');
      const oldValue = written.get(id) ?? stored[i];
      const old = oldValue && decodeRecord(oldValue, commit.k, commit.rec.key);
      if (old) ops.push(...removalOps(commit.k, old, true));
      const rows = indexOps(commit.k, { ...commit.rec, accessAt: now });
      ops.push(...commit.rows, ...rows);
      if (commit.pendingRow) ops.push({ type: 'del', key: pendingKey(commit.rec.gen) });
      written.set(id, (rows[0] as { value: Buffer }).value);
      replaced.push({ old, corrupt: oldValue && !old ? oldValue : undefined });
    });
    await this.db.batch(ops);
    commits.forEach((commit, i) => {
      const { old } = replaced[i]!;
      if (old) this.account(-1, old.size);
      this.account(1, commit.rec.size);
    });
    // The entries are committed now; cleanup failures must not fail the commits (their writers would delete their chunks).
    try {
      for (const [i, { corrupt }] of replaced.entries()) if (corrupt) await this.forgetCorrupt(commits[i]!.k, corrupt, true);
      await this.evict();
    } catch {
      this.counters.writeErrors++;
    }
    for (const commit of commits) commit.resolve();
  }

  /** Body stream reading one chunk at a time, verified before it is pushed. */
  streamBody(k: Buffer, rec: MetaRecord, range?: { start: number; end: number }): Readable {
    const start = Math.max(0, range?.start ?? 0);
    const end = Math.min(rec.size - 1, range?.end ?? rec.size - 1);
    if (start > end) return Readable.from([], { objectMode: false });
    const first = Math.floor(start / rec.chunkBytes);
    const last = Math.floor(end / rec.chunkBytes);
    const whole = start === 0 && end === rec.size - 1;
    let iterator: { next(): Promise<[Buffer, Buffer] | undefined>; close(): Promise<void> } | undefined;
    let index = first;
    let bodyCrc = 0;

    /** One chunk is one get (a disk hit on a small body: no iterator to open and close). */
    const read = async (): Promise<[Buffer, Buffer] | undefined> => {
      if (first === last) {
        const key = chunkKey(rec.gen, first);
        const value = await this.db.get(key);
        return value === undefined ? undefined : [key, value];
      }
      // Created on first read: its implicit snapshot keeps the generation whole while streaming.
      iterator ??= this.db.iterator({ gte: chunkKey(rec.gen, first), lte: chunkKey(rec.gen, last) });
      return iterator.next();
    };

    const next = async (): Promise<Buffer | null> => {
      if (index > last) return null;
      const item = await read();
      const expectedLength = index < rec.chunks - 1 ? rec.chunkBytes : rec.size - index * rec.chunkBytes;
      const value = item && item[0].readUInt32BE(BODY.length + GEN_BYTES) === index ? item[1] : undefined;
      if (value === undefined) throw await this.missingChunk(k, rec, index);
      const data = value.subarray(4);
      if (data.length !== expectedLength || chunkCrc(item![0], data) !== value.readUInt32BE(0)) {
        throw await this.corruptChunk(k, rec, `chunk ${index} fails its checksum`);
      }
      if (whole) {
        bodyCrc = crc32(data, bodyCrc);
        if (index === last && bodyCrc !== rec.bodyCrc) throw await this.corruptChunk(k, rec, 'body fails its checksum');
      }
      const from = index === first ? start - index * rec.chunkBytes : 0;
      const to = index === last ? end - index * rec.chunkBytes + 1 : data.length;
      index++;
      return data.subarray(from, to);
    };

    return new Readable({
      read() {
        next().then(
          (chunk) => this.push(chunk),
          (error: unknown) => this.destroy(error as Error),
        );
      },
      destroy(error, callback) {
        if (!iterator) return callback(error);
        iterator.close().then(
          () => callback(error),
          () => callback(error),
        );
      },
    });
  }

  // ---- private ----

  /** Runs a mutation on the queue; LevelDB failures become STORE_WRITE_FAILED. */
  private mutate<T>(what: string, task: () => Promise<T>): Promise<T> {
    if (this.closed && what !== 'commit') return Promise.reject(new StoreError('STORE_CLOSED', 'disk cache is closed'));
    // A commit asked for after this mutation must not join a group queued before it.
    this.commitGroup = undefined;
    const run = this.queue.then(async () => {
      try {
        return await task();
      } catch (error) {
        if (error instanceof StoreError) throw error;
        this.counters.writeErrors++;
        throw writeFailed(what, error);
      }
    });
    this.queue = run.catch(() => undefined);
    return run;
  }

  private account(entries: number, size: number): void {
    this.entries += entries;
    this.bytes += entries * (size + ENTRY_OVERHEAD_BYTES);
  }

  /** Meta of `k`, dropping it when corrupt. Only on the queue. */
  private async read(k: Buffer, key: string | undefined): Promise<MetaRecord | undefined> {
    const value = await this.db.get(metaKey(k));
    if (value === undefined) return undefined;
    const rec = decodeRecord(value, k, key);
    if (!rec) await this.dropCorruptNow(k, value);
    return rec;
  }

  /** Removes an entry with its chunks. Only on the queue. */
  private async remove(k: Buffer, rec: MetaRecord): Promise<void> {
    await this.db.batch(removalOps(k, rec, true));
    this.account(-1, rec.size);
  }

  private dropCorrupt(k: Buffer, value: Buffer): Promise<void> {
    return this.mutate('drop', () => this.dropCorruptNow(k, value)).catch(() => undefined);
  }

  /** Deletes a meta row that failed to decode, if it is still the same bytes. */
  private async dropCorruptNow(k: Buffer, value: Buffer, counted = true): Promise<void> {
    const current = await this.db.get(metaKey(k));
    if (!current || !current.equals(value)) return;
    await this.db.del(metaKey(k));
    await this.forgetCorrupt(k, value, counted);
  }

  /**
   * Cleans up after a corrupt meta row that is gone. Its index rows are dropped lazily by their
   * readers. Its body is found through the generation at the row's fixed offset (in chunk rows,
   * or in the body row if that holds the same generation: a newer entry's stays) and measured while
   * deleted, to un-count its bytes (best effort: if the generation bytes are the corrupt ones, the
   * body stays and `bytes` runs high until the next open recounts).
   */
  private async forgetCorrupt(k: Buffer, value: Buffer, counted: boolean): Promise<void> {
    this.counters.corruptDropped++;
    let size = 0;
    if (value.length >= 4 + GEN_BYTES) {
      const gen = value.subarray(4, 4 + GEN_BYTES);
      const prefix = chunkPrefix(gen);
      for await (const chunk of this.db.values({ gte: prefix, lt: prefixEnd(prefix) })) size += chunk.length - 4;
      await this.db.clear({ gte: prefix, lt: prefixEnd(prefix) });
      const bodyRow = await this.db.get(bodyRowKey(k));
      if (bodyRow !== undefined && bodyRow.subarray(0, GEN_BYTES).equals(gen)) {
        size += bodyRow.length - DATA_AT;
        await this.db.del(bodyRowKey(k));
      }
    }
    // While a background count runs, a corrupt row can only come from its snapshot, which the
    // count does not add up: un-counting it here would count it out twice.
    if (counted && this.presenceReady) this.account(-1, size);
  }

  /** A chunk is missing: corruption if the meta still names this generation, else the entry changed under us. */
  private async missingChunk(k: Buffer, rec: MetaRecord, index: number): Promise<StoreError> {
    const current = await this.db.get(metaKey(k)).catch(() => undefined);
    if (current && current.subarray(4, 4 + GEN_BYTES).equals(rec.gen)) {
      return this.corruptChunk(k, rec, `chunk ${index} is missing`);
    }
    return new StoreError('ENTRY_GONE', 'disk cache entry was replaced or removed while its body was read');
  }

  /** Drops the entry (if still this generation) and returns the error for the stream. */
  private async corruptChunk(k: Buffer, rec: MetaRecord, why: string): Promise<StoreError> {
    await this.mutate('drop', async () => {
      const value = await this.db.get(metaKey(k));
      const current = value && decodeRecord(value, k, rec.key);
      if (!current || !current.gen.equals(rec.gen)) return;
      await this.remove(k, current);
      this.counters.corruptDropped++;
    }).catch(() => undefined);
    return new StoreError('CORRUPT_ENTRY', `disk cache entry dropped: ${why}`);
  }

  /** Queues an access-order update; touches coalesce into one batch. */
  /** A hit served by a faster tier: LRU eviction here must see the object as used (throttled per key). */
  noteAccess(key: string): void {
    const now = this.now();
    const last = this.recentTouches.get(key);
    if (this.closed || (last !== undefined && now - last < TOUCH_INTERVAL_MS)) return;
    const k = encodeText(key);
    if (!this.presenceReady || this.presence.mightContain(k)) this.touch(key, k, now);
  }

  private touch(key: string, k: Buffer, at: number): void {
    for (const [old, time] of this.recentTouches) {
      // Past the bound, the oldest go early: a key forgotten early may be touched again, no worse.
      if (at - time < TOUCH_INTERVAL_MS && this.recentTouches.size < RECENT_TOUCHES_MAX) break;
      this.recentTouches.delete(old);
    }
    this.recentTouches.delete(key);
    this.recentTouches.set(key, at);
    const first = this.touches.size === 0;
    this.touches.set(key, [k, at]);
    if (!first) return;
    this.mutate('touch', async () => {
      const touches = [...this.touches.values()];
      this.touches = new Map();
      const values = await this.db.getMany(touches.map(([k]) => metaKey(k)));
      const ops: Op[] = [];
      touches.forEach(([k, at], i) => {
        const rec = values[i] && decodeRecord(values[i]!, k);
        if (!rec || rec.accessAt >= at) return;
        ops.push(
          { type: 'del', key: accessKey(rec.accessAt, k) },
          { type: 'put', key: accessKey(at, k), value: EMPTY },
          { type: 'put', key: metaKey(k), value: encodeRecord({ ...rec, accessAt: at }) },
        );
      });
      if (ops.length > 0) await this.db.batch(ops);
    }).catch(() => undefined);
  }

  /** Evicts least recently used entries until within budget. Only on the queue. */
  private async evict(): Promise<void> {
    while (this.bytes > this.budget) {
      const rows = await this.db.keys({ gte: ACCESS, lt: prefixEnd(ACCESS), limit: 64 }).all();
      if (rows.length === 0) return;
      for (const row of rows) {
        if (this.bytes <= this.budget) return;
        const k = row.subarray(ACCESS.length + TIME_BYTES);
        const rec = await this.read(k, undefined);
        if (rec && accessKey(rec.accessAt, k).equals(row)) {
          await this.remove(k, rec);
          this.counters.evicted++;
        } else {
          await this.db.del(row);
        }
      }
    }
  }

  /**
   * Removes every entry whose key `keep` rejects (a worker's disk shard after the worker count
   * changed drops the keys another worker now owns). Returns the number removed.
   */
  retain(keep: (key: string) => boolean): Promise<number> {
    return this.purgeRange(META, undefined, (rec) => !keep(rec.key));
  }

  private purgeRange(prefix: Buffer, options?: PurgeOptions, matches?: (rec: MetaRecord) => boolean): Promise<number> {
    return this.mutate('purge', async () => {
      let count = 0;
      let after: Buffer | undefined;
      for (;;) {
        const rows = await this.db.iterator(page(prefix, after)).all();
        if (rows.length === 0) return count;
        after = rows[rows.length - 1]![0];
        const hits: Array<[Buffer, MetaRecord]> = [];
        for (const [key, value] of rows) {
          const k = key.subarray(META.length);
          const rec = decodeRecord(value, k);
          if (!rec) await this.dropCorruptNow(k, value);
          else if (matches === undefined || matches(rec)) hits.push([k, rec]);
        }
        count += await this.purgeRecords(hits, options);
      }
    });
  }

  private async purgeRecords(hits: Array<[Buffer, MetaRecord]>, options?: PurgeOptions): Promise<number> {
    if (hits.length === 0) return 0;
    const now = this.now();
    const ops: Op[] = [];
    for (const [k, rec] of hits) {
      if (!options?.soft) ops.push(...removalOps(k, rec, true));
      else if (rec.meta.staleAt > now) {
        const stale = { ...rec, meta: { ...rec.meta, staleAt: now } };
        ops.push({ type: 'put', key: metaKey(k), value: encodeRecord(stale) });
      }
    }
    if (ops.length > 0) await this.db.batch(ops);
    if (!options?.soft) for (const [, rec] of hits) this.account(-1, rec.size);
    return hits.length;
  }

  /**
   * Before the database is counted again (reopen) or emptied (wipe): no entries, no bytes, a
   * presence filter of the same capacity with no key in it (settle adds back the keys it finds, so
   * a reopen neither counts a key twice nor keeps one that a wipe removed).
   */
  private forgetContents(): void {
    this.entries = 0;
    this.bytes = 0;
    this.presence = new BloomFilter(this.presence.capacity);
    // Empty until the count that follows (settle) refills it: until then it may answer no miss,
    // and a commit must read the row it may replace. A count still running on the previous handle
    // stops at its next row (its epoch is gone).
    this.presenceReady = false;
  }

  /** Adds a key to the presence filter; a filter past its capacity is rebuilt larger in the background. */
  private remember(k: Buffer): void {
    this.presence.add(k);
    if (this.rebuildAdds !== undefined) this.rebuildAdds.push(Buffer.from(k));
    // Its commit is queued after the rebuild's scan: the key is replayed into the new filter.
    else this.growPresenceIfFull([Buffer.from(k)]);
  }

  /**
   * Rebuilds a filter past its capacity, larger, in the background; `replay` are keys the rebuild's
   * scan will not see yet. Not while a background count runs: the filter answers nothing then,
   * and the count calls this when done.
   */
  private growPresenceIfFull(replay: Buffer[] = []): void {
    if (this.rebuildAdds !== undefined || !this.presence.full || this.closed || !this.presenceReady) return;
    this.rebuildAdds = replay;
    void this.rebuildPresence();
  }

  /**
   * Builds a larger filter from the keys on disk. Its snapshot is taken on the mutation queue, so
   * every commit queued before it is in it; keys remembered after it began are replayed. The scan
   * itself runs off the queue: on it, every commit waited for the whole scan (fills stalled for a
   * quarter of a second at 64,000 keys). A reopen meanwhile makes the scan's filter stale: dropped.
   */
  private async rebuildPresence(): Promise<void> {
    const epoch = this.epoch;
    try {
      const next = new BloomFilter(Math.max(this.presence.capacity * 4, this.entries * 2));
      const rows = await this.mutate('rebuild-presence', async () => this.db.iterator({ gte: META, lt: prefixEnd(META), values: false }));
      for await (const [key] of rows) next.add(key.subarray(META.length));
      if (epoch !== this.epoch || this.closed) return;
      for (const k of this.rebuildAdds ?? []) next.add(k);
      this.presence = next;
    } catch {
      // Closed or unreadable: keep the old filter (more false positives, never a false miss).
    } finally {
      this.rebuildAdds = undefined;
      // Dropped for a reopen, whose count may have filled the new handle's filter meanwhile.
      if (epoch !== this.epoch) this.growPresenceIfFull();
    }
  }

  /**
   * After an open: drops unfinished writes, counts, evicts to the budget. When the disk is full
   * (the reserve had to be given back, or less than a reserve's worth is free) it makes room
   * first. Then it writes the reserve again if there is room. Only on the queue.
   */
  private async settle(released: boolean, background = false): Promise<void> {
    await this.dropUnfinished();
    const free = this.reserve ? await freeBytes(this.location) : undefined;
    const full = released || (free !== undefined && free < this.reserve!.bytes);
    // Making room needs the counts; a full disk is counted before serving, as a small store is.
    const metaBytes = background && !full ? await this.metaBytes() : 0;
    if (metaBytes > this.countInBackgroundAboveBytes) {
      this.countInBackground(metaBytes);
    } else {
      await this.countContents();
      this.presenceReady = true;
      this.growPresenceIfFull();
      if (full) {
        await this.reserve?.release();
        await this.makeRoom();
      } else {
        await this.evict();
      }
    }
    await this.reserve?.ensure();
  }

  /** LevelDB's estimate of the bytes its meta rows take. */
  private async metaBytes(): Promise<number> {
    try {
      return await (this.db as Db & { approximateSize(start: Buffer, end: Buffer): Promise<number> }).approximateSize(META, prefixEnd(META));
    } catch {
      return Infinity;
    }
  }

  /**
   * Counts entries and bytes and fills the presence filter while the store serves (issue 14: a
   * scan of 1,000,000 entries at open kept the node from listening for seconds). Called on the
   * queue: the iterator's snapshot is taken before any later mutation, and every mutation
   * accounts against what it finds in the database, so the sums come out exact: an entry in the
   * snapshot replaced or removed meanwhile is counted here and subtracted there, one written
   * meanwhile is counted there only. Until it is done, lookups ask LevelDB (the filter cannot
   * answer a miss) and eviction goes by the partial count (so it removes only what is over
   * budget even then); once it is done the store evicts to its budget.
   */
  private countInBackground(metaBytes: number): void {
    const epoch = this.epoch;
    const rows = this.db.iterator({ gte: META, lt: prefixEnd(META) });
    this.presenceReady = false;
    // Sized from LevelDB's estimate (meta rows are rarely under META_ROW_BYTES_MIN), so the count
    // seldom outgrows it.
    const expected = Number.isFinite(metaBytes) ? metaBytes / META_ROW_BYTES_MIN : 0;
    if (expected > this.presence.capacity) this.presence = new BloomFilter(expected);
    this.counted = (async () => {
      let corrupt: Array<[Buffer, Buffer]> | undefined;
      try {
        corrupt = await this.countRows(rows, () => epoch === this.epoch);
      } catch {
        // Closed meanwhile, or unreadable: the filter stays unused, so no miss is ever answered from it.
      }
      // Stopped by a reopen, which counted again before serving.
      if (corrupt === undefined) return;
      await this.mutate('counted', async () => {
        if (epoch !== this.epoch) return;
        for (const [k, value] of corrupt) await this.dropCorruptNow(k, value, false);
        this.presenceReady = true;
        await this.evict();
      }).catch(() => undefined);
      // The count may have outgrown the filter's first capacity.
      this.growPresenceIfFull();
    })();
  }

  /** Deletes chunks of writes that never committed (the pending rows a crash left). */
  private async dropUnfinished(): Promise<void> {
    for await (const [key] of this.db.iterator({ gte: PENDING, lt: prefixEnd(PENDING), values: false })) {
      const prefix = chunkPrefix(key.subarray(PENDING.length));
      await this.db.clear({ gte: prefix, lt: prefixEnd(prefix) });
      await this.db.del(key);
    }
  }

  /**
   * The disk is full: evicts the least recently used tenth of the bytes (at least two reserves'
   * worth) and lowers the budget to what is left, so the cache does not fill the disk again at
   * once. Deletes free space in LevelDB only once compacted, so the whole range is compacted
   * (LevelDB does that a file or so at a time, so it needs little room itself).
   */
  private async makeRoom(): Promise<void> {
    const drop = Math.max(this.bytes / 10, 2 * (this.reserve?.bytes ?? 0));
    this.budget = Math.max(0, Math.min(this.budget, Math.floor(this.bytes - drop)));
    this.counters.shrunk++;
    await this.evict();
    // `level` is classic-level (LevelDB) on Node.js; its type leaves compactRange out.
    const db = this.db as Db & { compactRange?(start: Buffer, end: Buffer): Promise<void> };
    await db.compactRange?.(ALL, prefixEnd(ALL));
  }

  /** Raises a lowered budget as far as the file system's free space allows (keeping two reserves free). */
  private async regrow(): Promise<void> {
    const free = await freeBytes(this.location);
    if (free === undefined) return;
    const room = free - 2 * (this.reserve?.bytes ?? 0);
    if (room > 0) this.budget = Math.min(this.maxBytes, Math.max(this.budget, this.bytes + room));
  }

  /** Counts entries and bytes and fills the presence filter, dropping corrupt meta rows. Only on the queue. */
  private async countContents(): Promise<void> {
    const corrupt = await this.countRows(this.db.iterator({ gte: META, lt: prefixEnd(META) }), () => true);
    for (const [k, value] of corrupt!) await this.dropCorruptNow(k, value, false);
  }

  /**
   * Adds meta rows' keys to the presence filter and their entries and bytes to the counts; returns
   * the rows that fail their checksum (not counted), or undefined once `current` turns false.
   */
  private async countRows(rows: AsyncIterable<[Buffer, Buffer]>, current: () => boolean): Promise<Array<[Buffer, Buffer]> | undefined> {
    const corrupt: Array<[Buffer, Buffer]> = [];
    for await (const [key, value] of rows) {
      if (!current()) return undefined;
      const k = key.subarray(META.length);
      this.remember(k);
      const rec = decodeRecord(value, k);
      if (rec) this.account(1, rec.size);
      else corrupt.push([Buffer.from(k), value]);
    }
    return corrupt;
  }
}

class LevelWriter implements EntryWriter {
  /** Settles when the writer has nothing more to do on the database. */
  settled: Promise<void>;
  private state: 'open' | 'committing' | 'committed' | 'aborted' = 'open';
  /** Why commit must fail; set as soon as it is known so later writes are skipped. */
  private error: StoreError | undefined;
  private readonly gen: Buffer;
  private chain: Promise<void>;
  private buffer: Buffer | undefined;
  private filled = 0;
  private chunks = 0;
  private written = 0;
  private bodyCrc = 0;
  /** Written before the first chunk put on its own (a body longer than one chunk). */
  private pendingRow = false;
  private readonly limit: number;
  /** The handle this writer's rows go to, all of them: a reopen meanwhile makes its commit fail. */
  private readonly db: Db;
  private readonly epoch: number;

  constructor(
    private readonly store: LevelStore,
    private readonly key: string,
    private readonly k: Buffer,
    private readonly meta: EntryMeta,
  ) {
    this.db = store.db;
    this.gen = store.nextGeneration();
    this.epoch = store.currentEpoch;
    this.limit = store.maxBytes - ENTRY_OVERHEAD_BYTES;
    if (store.isClosed) {
      this.error = new StoreError('STORE_CLOSED', 'disk cache is closed');
      this.chain = Promise.resolve();
    } else if (meta.size > this.limit) {
      this.error = this.tooLarge();
      this.chain = Promise.resolve();
    } else {
      // Nothing is written until a first chunk fills (see flush): a body that fits one chunk goes
      // to disk in its commit's batch, with no pending row.
      this.chain = Promise.resolve();
    }
    this.settled = this.chain;
  }

  write(chunk: Buffer): void | Promise<void> {
    if (this.state !== 'open' || this.error || chunk.length === 0) return;
    this.written += chunk.length;
    if (this.meta.size !== UNKNOWN_SIZE && this.written > this.meta.size) {
      this.error = this.sizeMismatch();
      return;
    }
    if (this.written > this.limit) {
      this.error = this.tooLarge();
      return;
    }
    this.bodyCrc = crc32(chunk, this.bodyCrc);
    this.chain = this.chain.then(() => this.append(chunk));
    this.settled = this.chain;
    return this.chain;
  }

  async commit(): Promise<void> {
    if (this.state !== 'open') throw new StoreError('WRITER_CLOSED', 'writer already committed or aborted');
    this.state = 'committing';
    const done = this.finish();
    this.settled = done.then(
      () => undefined,
      () => undefined,
    );
    return done;
  }

  abort(): void {
    if (this.state !== 'open') return;
    this.state = 'aborted';
    this.settled = this.chain.then(() => this.cleanup());
  }

  private async finish(): Promise<void> {
    try {
      await this.chain;
      if (!this.error && this.meta.size !== UNKNOWN_SIZE && this.written !== this.meta.size) {
        this.error = this.sizeMismatch();
      }
      if (this.error) throw this.error;
      // A body that never filled a chunk is written with its commit; a longer one's last chunk now.
      const rows: Op[] = [];
      if (this.pendingRow) await this.flush();
      else if (this.filled > 0) rows.push(this.takeBodyRow());
      if (this.error) throw this.error;
      await this.store.commitEntry(this.k, {
        key: this.key,
        gen: this.gen,
        chunks: this.chunks + rows.length,
        chunkBytes: this.store.chunkBytes,
        size: this.written,
        bodyCrc: this.bodyCrc,
        bodyRow: rows.length > 0,
        meta: { ...this.meta, tags: [...this.meta.tags], size: this.written },
      }, this.epoch, rows, this.pendingRow);
      this.state = 'committed';
      this.store.writerDone(this);
    } catch (error) {
      this.state = 'aborted';
      await this.cleanup();
      throw error;
    }
  }

  /** Copies bytes into the chunk buffer, writing each chunk as it fills. */
  private async append(chunk: Buffer): Promise<void> {
    const size = this.store.chunkBytes;
    for (let offset = 0; offset < chunk.length; ) {
      if (this.error || this.state === 'aborted') return;
      if (!this.buffer) {
        // A declared size caps the buffer, so a small body does not cost a whole chunk. Room in
        // front for a chunk row's checksum, and a body row's generation before that.
        const left = this.meta.size === UNKNOWN_SIZE ? size : this.meta.size - this.chunks * size;
        this.buffer = Buffer.allocUnsafe(DATA_AT + Math.min(size, left));
      }
      const n = Math.min(size - this.filled, chunk.length - offset);
      chunk.copy(this.buffer, DATA_AT + this.filled, offset, offset + n);
      this.filled += n;
      offset += n;
      // A full chunk is written now, unless it is the whole declared body (then it goes in the commit's batch).
      if (this.filled === size && !(this.chunks === 0 && this.meta.size === size)) await this.flush();
    }
  }

  /** The filled buffer as the row of the next chunk; the buffer is handed over. */
  private takeChunk(): { type: 'put'; key: Buffer; value: Buffer } {
    const key = chunkKey(this.gen, this.chunks);
    const value = this.buffer!.subarray(GEN_BYTES, DATA_AT + this.filled);
    value.writeUInt32BE(chunkCrc(key, value.subarray(4)), 0);
    this.buffer = undefined;
    this.filled = 0;
    return { type: 'put', key, value };
  }

  /** The whole body, one chunk, as the entry's body row: its generation, then chunk 0's row value. */
  private takeBodyRow(): { type: 'put'; key: Buffer; value: Buffer } {
    const value = this.buffer!.subarray(0, DATA_AT + this.filled);
    this.gen.copy(value, 0);
    value.writeUInt32BE(chunkCrc(chunkKey(this.gen, 0), value.subarray(DATA_AT)), GEN_BYTES);
    this.buffer = undefined;
    this.filled = 0;
    return { type: 'put', key: bodyRowKey(this.k), value };
  }

  /** Writes the filled chunk; the first one in one batch with the pending row, so a crash after any chunk leaves a record of it. */
  private async flush(): Promise<void> {
    if (this.filled === 0 || !this.buffer) return;
    const row = this.takeChunk();
    try {
      if (this.pendingRow) await this.db.put(row.key, row.value);
      else {
        await this.db.batch([{ type: 'put', key: pendingKey(this.gen), value: this.k }, row]);
        this.pendingRow = true;
      }
      this.chunks++;
    } catch (error) {
      this.fail(error);
    }
  }

  private fail(error: unknown): void {
    if (this.error) return;
    this.store.counters.writeErrors++;
    this.error = writeFailed('write', error);
  }

  /** Deletes this generation's chunks, then its pending row; on failure open() cleans up later. */
  private async cleanup(): Promise<void> {
    this.buffer = undefined;
    const prefix = chunkPrefix(this.gen);
    try {
      // Nothing was written before a pending row.
      if (this.pendingRow && this.error?.code !== 'STORE_CLOSED') {
        await this.db.clear({ gte: prefix, lt: prefixEnd(prefix) });
        await this.db.del(pendingKey(this.gen));
      }
    } catch {
      // The pending row stays; the next open deletes the chunks.
    } finally {
      this.store.writerDone(this);
    }
  }

  private sizeMismatch(): StoreError {
    return new StoreError('SIZE_MISMATCH', `body has ${this.written} bytes, ${this.meta.size} declared`);
  }

  private tooLarge(): StoreError {
    return new StoreError('ENTRY_TOO_LARGE', `entry larger than the disk tier's ${this.limit} byte limit`);
  }
}
