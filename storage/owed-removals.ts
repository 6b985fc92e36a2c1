/**
 * Removals the disk tier owes: deletes and purges the tiered store could not apply to disk yet
 * (the disk was degraded, or behind). Until one is applied, disk reads hide what it matches, so a
 * copy the store no longer serves never comes back from disk; the tiered store applies them once
 * the disk takes writes again.
 *
 * Keys owed are those whose newer version went to memory only. A purge owed is kept as it was
 * asked (a soft one is applied soft) but hides its matches outright until then, which is the
 * conservative reading. Both lists are capped: past the cap the caller must not skip the disk.
 */
import type { CacheStore, PurgeOptions } from './cache-store.js';
import { primaryKeyPrefix, urlKeyPrefix } from './keys.js';

const MAX_KEYS = 100_000;
const MAX_PURGES = 10_000;
/** Deletes sent to the disk at a time when catching up. */
const BATCH = 256;

type Purge = { kind: 'url' | 'prefix' | 'tag'; value: string; options: PurgeOptions | undefined; matches: (key: string, tags: readonly string[]) => boolean };

export class OwedRemovals {
  /** Key -> the sequence number of its latest owing; settling an older one leaves it owed. */
  private readonly keys = new Map<string, number>();
  private purges: Purge[] = [];
  private seq = 0;

  get size(): number {
    return this.keys.size + this.purges.length;
  }

  get fullOfKeys(): boolean {
    return this.keys.size >= MAX_KEYS;
  }

  get fullOfPurges(): boolean {
    return this.purges.length >= MAX_PURGES;
  }

  /** The disk copy of `key` is outdated. Returns the token to settle it with once deleted. */
  oweKey(key: string): number {
    this.keys.set(key, ++this.seq);
    return this.seq;
  }

  /** The delete of `key` owed since `token` reached the disk. */
  settleKey(key: string, token: number): void {
    if (this.keys.get(key) === token) this.keys.delete(key);
  }

  owePurge(kind: Purge['kind'], value: string, options?: PurgeOptions): void {
    const start = kind === 'url' ? urlKeyPrefix(value) : primaryKeyPrefix(value);
    const matches: Purge['matches'] = kind === 'tag' ? (_key, tags) => tags.includes(value) : (key) => key.startsWith(start);
    this.purges.push({ kind, value, options, matches });
  }

  /** True when a disk copy of `key` must not be served, whatever its tags (checked before reading it). */
  hidesKey(key: string): boolean {
    if (this.keys.has(key)) return true;
    for (const purge of this.purges) if (purge.kind !== 'tag' && purge.matches(key, [])) return true;
    return false;
  }

  /** True when this disk entry must not be served. */
  hides(key: string, tags: readonly string[]): boolean {
    if (this.keys.has(key)) return true;
    for (const purge of this.purges) if (purge.matches(key, tags)) return true;
    return false;
  }

  /**
   * Applies what is owed to `disk`, purges first (in order), then deletes. `soFar`: only what is
   * owed now (a recovery attempt must end even while new owings keep coming); otherwise until
   * nothing is left, including what is owed meanwhile. Rejects at the first failure; what was
   * applied is gone from the lists, the rest stays owed.
   */
  async applyTo(disk: CacheStore, options: { soFar?: boolean } = {}): Promise<void> {
    if (options.soFar) {
      await this.applyPurges(disk, this.purges.length);
      const keys = [...this.keys];
      for (let i = 0; i < keys.length; i += BATCH) await this.applyDeletes(disk, keys.slice(i, i + BATCH));
      return;
    }
    while (this.size > 0) {
      await this.applyPurges(disk, Infinity);
      const batch: Array<[string, number]> = [];
      for (const entry of this.keys) {
        batch.push(entry);
        if (batch.length === BATCH) break;
      }
      await this.applyDeletes(disk, batch);
    }
  }

  private async applyPurges(disk: CacheStore, count: number): Promise<void> {
    for (let done = 0; done < count && this.purges.length > 0; done++) {
      const purge = this.purges[0]!;
      if (purge.kind === 'url') await disk.purgeUrl(purge.value, purge.options);
      else if (purge.kind === 'prefix') await disk.purgePrefix(purge.value, purge.options);
      else await disk.purgeTag(purge.value, purge.options);
      // Identity check: an owing added meanwhile went to the end, never to the front.
      if (this.purges[0] === purge) this.purges = this.purges.slice(1);
    }
  }

  private async applyDeletes(disk: CacheStore, batch: ReadonlyArray<readonly [string, number]>): Promise<void> {
    await Promise.all(
      batch.map(async ([key, token]) => {
        await disk.delete(key);
        this.settleKey(key, token);
      }),
    );
  }
}
