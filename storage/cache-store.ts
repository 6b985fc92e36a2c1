/**
 * The one contract every cache tier implements (memory, LevelDB, tiered).
 *
 * Keys: an entry key is `entryKey(url, variant)` (see keys.ts): the primary key (scheme, host,
 * path and query) plus the Vary variant. Purging a URL removes every variant; purging a prefix
 * removes every key whose primary key starts with it; purging a tag removes every entry that
 * carries it (surrogate keys).
 *
 * Writes are streamed and atomic: an entry becomes visible only when `commit()` succeeds, which
 * checks that the body length matches `meta.size`. An aborted or short write leaves nothing.
 *
 * `get` is sync-or-promise (as undici's stores): a memory hit returns the entry directly so the
 * hit path allocates no promise and touches no disk.
 */
import { Readable } from 'node:stream';

/** What the HTTP layer keeps with a response; opaque to the store, JSON-serialisable. */
export type StoredHttp = Record<string, unknown>;

export interface EntryMeta {
  /**
   * Body length in bytes. At `openWriter` it is the declared length (Content-Length), and a
   * commit with any other byte count fails; or UNKNOWN_SIZE, and commit records the count.
   */
  size: number;
  /** Surrogate keys (tags) for purge-by-tag. */
  tags: readonly string[];
  /** Wall-clock ms when the response was received. */
  storedAt: number;
  /** Wall-clock ms when freshness ends. */
  staleAt: number;
  /** Wall-clock ms until which a stale copy may still be served (stale-while-revalidate / stale-if-error / grace). */
  graceUntil: number;
  /** Wall-clock ms after which the store may drop the entry (kept past graceUntil for conditional revalidation). */
  deleteAt: number;
  /** The HTTP layer's data: status, headers, policy. The store never reads it. */
  http: StoredHttp;
}

export interface CachedEntry {
  readonly key: string;
  readonly meta: EntryMeta;
  /**
   * The whole body when the entry holds it (memory entries; disk entries read with their meta
   * in one read), so a hit is one write. Otherwise undefined: use `openBody`.
   */
  readonly body: Buffer | undefined;
  /**
   * Streams the body, byte range `start..end` inclusive when given. A disk stream verifies
   * each chunk's checksum before emitting it and errors (and drops the entry) on a mismatch,
   * so a corrupted body is never delivered whole.
   */
  openBody(range?: { start: number; end: number }): Readable;
}

/** `openBody` of an entry that holds its whole body. */
export function bufferBody(body: Buffer, range?: { start: number; end: number }): Readable {
  const bytes = range ? body.subarray(range.start, range.end + 1) : body;
  return Readable.from(bytes.length > 0 ? [bytes] : [], { objectMode: false });
}

export interface EntryWriter {
  /** Appends body bytes. May return a promise: await it for backpressure. */
  write(chunk: Buffer): void | Promise<void>;
  /** Makes the entry visible. Rejects (and stores nothing) if the byte count differs from a declared meta.size. */
  commit(): Promise<void>;
  /** Drops everything written so far. Safe to call at any point, also after commit failed. */
  abort(): void;
}

export interface PurgeOptions {
  /** Soft purge: mark matching entries stale (staleAt = now) instead of deleting them. */
  soft?: boolean;
}

export interface StoreStats {
  entries: number;
  bytes: number;
}

/** A tier's size and the entries it dropped to stay within its budget (since it opened). */
export interface TierStats extends StoreStats {
  evictions: number;
}

/** One stored variant of a URL, for inspection (the admin API's GET /cache). */
export interface StoredVariant {
  key: string;
  meta: EntryMeta;
  /** Which tiers hold it (a tiered store answers for both). */
  tiers: Array<'memory' | 'disk'>;
}

export interface CacheStore {
  /** Looks up an entry. Returns synchronously from memory, a promise from disk. */
  get(key: string): CachedEntry | undefined | Promise<CachedEntry | undefined>;
  /**
   * Opens a streamed write. `meta.size` is the declared body length, or UNKNOWN_SIZE when the
   * upstream sent none (chunked); the entry replaces any earlier one only on commit.
   */
  openWriter(key: string, meta: EntryMeta): EntryWriter;
  /**
   * Replaces an entry's metadata in place (304 revalidation, soft purge). False when absent, or
   * when `ifStoredAt` is given and the entry is another version (storedAt differs): a 304 for
   * the version a revalidation started from must not relabel a newer body.
   */
  updateMeta(key: string, meta: EntryMeta, ifStoredAt?: number): Promise<boolean>;
  delete(key: string): Promise<boolean>;
  /** Every variant of one primary key. Returns the number of entries affected. */
  purgeUrl(url: string, options?: PurgeOptions): Promise<number>;
  /** Every entry whose primary key starts with `prefix`. */
  purgePrefix(prefix: string, options?: PurgeOptions): Promise<number>;
  /** Every entry carrying `tag`. */
  purgeTag(tag: string, options?: PurgeOptions): Promise<number>;
  stats(): StoreStats;
  /** Every stored variant of one primary key, with its metadata (no body). */
  variants(url: string): Promise<StoredVariant[]>;
  /** Optional: a hit for `key` was served by a tier above this one (keeps LRU order true below it). */
  noteAccess?(key: string): void;
  /** Optional: false when the store certainly does not hold `key` (no I/O); true when it may. */
  mightContain?(key: string): boolean;
  /**
   * Optional: closes and reopens the store's files, so that writes work again after a failure
   * that sticks to the open handle (LevelDB's). Used by the tiered store's degraded mode.
   */
  reopen?(): Promise<void>;
  close(): Promise<void>;
}

/** `meta.size` at openWriter when the body length is not declared up front. */
export const UNKNOWN_SIZE = -1;

/** Thrown (or rejected with) by stores; `code` is stable and documented in README.md. */
export class StoreError extends Error {
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'StoreError';
    this.code = code;
  }
}

/** Convenience: write a whole body (Buffer, stream or iterable) through `openWriter`. */
export async function putEntry(
  store: CacheStore,
  key: string,
  meta: EntryMeta,
  body: Buffer | AsyncIterable<Buffer> | Iterable<Buffer>,
): Promise<void> {
  const writer = store.openWriter(key, meta);
  try {
    if (Buffer.isBuffer(body)) {
      if (body.length > 0) await writer.write(body);
    } else {
      for await (const chunk of body) await writer.write(chunk);
    }
    await writer.commit();
  } catch (error) {
    writer.abort();
    throw error;
  }
}
