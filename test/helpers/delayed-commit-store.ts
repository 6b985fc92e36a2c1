/**
 * A real store whose commits take a while, as LevelDB's do under load: `commit()` and
 * `updateMeta()` wait `delayMs` before reaching the store underneath. Everything else passes
 * straight through. It widens the window between a response's delivery and its entry becoming
 * visible, where requests that arrive must be served from the fill, and only when they may.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { CacheStore, CachedEntry, EntryMeta, EntryWriter, PurgeOptions, StoreStats, StoredVariant } from '../../storage/cache-store.js';

export class DelayedCommitStore implements CacheStore {
  constructor(
    readonly inner: CacheStore,
    readonly delayMs: number,
  ) {}

  get(key: string): CachedEntry | undefined | Promise<CachedEntry | undefined> {
    return this.inner.get(key);
  }

  openWriter(key: string, meta: EntryMeta): EntryWriter {
    const writer = this.inner.openWriter(key, meta);
    return {
      write: (chunk) => writer.write(chunk),
      commit: async () => {
        await sleep(this.delayMs);
        await writer.commit();
      },
      abort: () => writer.abort(),
    };
  }

  async updateMeta(key: string, meta: EntryMeta, ifStoredAt?: number): Promise<boolean> {
    await sleep(this.delayMs);
    return this.inner.updateMeta(key, meta, ifStoredAt);
  }

  delete(key: string): Promise<boolean> {
    return this.inner.delete(key);
  }

  purgeUrl(url: string, options?: PurgeOptions): Promise<number> {
    return this.inner.purgeUrl(url, options);
  }

  purgePrefix(prefix: string, options?: PurgeOptions): Promise<number> {
    return this.inner.purgePrefix(prefix, options);
  }

  purgeTag(tag: string, options?: PurgeOptions): Promise<number> {
    return this.inner.purgeTag(tag, options);
  }

  variants(url: string): Promise<StoredVariant[]> {
    return this.inner.variants(url);
  }

  stats(): StoreStats {
    return this.inner.stats();
  }

  noteAccess(key: string): void {
    this.inner.noteAccess?.(key);
  }

  close(): Promise<void> {
    return this.inner.close();
  }
}
