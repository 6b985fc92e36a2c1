/**
 * A worker's view of the node's cache (issue 9): its own disk shard for the keys it owns, and one
 * memory tier for everything it serves. Keys owned by another worker live here in memory only,
 * copied from the owner's answers; the owner alone writes them to disk (see cluster/ownership.ts).
 */
import type { CacheStore, CachedEntry, EntryMeta, EntryWriter, PurgeOptions, StoreStats } from './cache-store.js';
import type { TieredStore } from './tiered-store.js';

export class ShardStore implements CacheStore {
  constructor(
    /** Memory over this worker's disk shard. */
    readonly tiered: TieredStore,
    /** True for keys this worker owns (stored on its disk shard). */
    private readonly owns: (key: string) => boolean,
  ) {}

  private tierFor(key: string): CacheStore {
    return this.owns(key) ? this.tiered : this.tiered.memory;
  }

  get(key: string): CachedEntry | undefined | Promise<CachedEntry | undefined> {
    return this.tierFor(key).get(key);
  }

  openWriter(key: string, meta: EntryMeta): EntryWriter {
    return this.tierFor(key).openWriter(key, meta);
  }

  updateMeta(key: string, meta: EntryMeta, ifStoredAt?: number): Promise<boolean> {
    return this.tierFor(key).updateMeta(key, meta, ifStoredAt);
  }

  delete(key: string): Promise<boolean> {
    return this.tierFor(key).delete(key);
  }

  // Purges reach both tiers: the tiered store purges its memory tier as well as the disk shard.
  purgeUrl(url: string, options?: PurgeOptions): Promise<number> {
    return this.tiered.purgeUrl(url, options);
  }

  purgePrefix(prefix: string, options?: PurgeOptions): Promise<number> {
    return this.tiered.purgePrefix(prefix, options);
  }

  purgeTag(tag: string, options?: PurgeOptions): Promise<number> {
    return this.tiered.purgeTag(tag, options);
  }

  /** The disk shard's entries and bytes. */
  stats(): StoreStats {
    return this.tiered.stats();
  }

  memoryStats(): StoreStats {
    return this.tiered.memoryStats();
  }

  noteAccess(key: string): void {
    if (this.owns(key)) this.tiered.disk.noteAccess?.(key);
  }

  close(): Promise<void> {
    return this.tiered.close();
  }
}
