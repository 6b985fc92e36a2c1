/**
 * Which worker owns a cache key (issue 9): a consistent hash of the primary cache key (the URL
 * part of an entry key) over the workers, on the same ring the edge uses for shields. Every
 * variant of a URL has one owner, so its Vary record and variants live in one disk shard.
 * Changing the worker count moves about 1/N of the keys, not all of them.
 */
import { HashRing } from '../origin-shield/hash-ring.js';
import { urlKeyPrefix } from '../storage/keys.js';

export class Ownership {
  private readonly ring: HashRing<{ id: string; index: number }>;

  constructor(
    /** This worker's index. */
    readonly self: number,
    readonly workers: number,
  ) {
    if (!Number.isInteger(workers) || workers < 1) throw new RangeError(`workers must be a positive integer, got ${workers}`);
    if (!Number.isInteger(self) || self < 0 || self >= workers) throw new RangeError(`worker index ${self} is outside 0..${workers - 1}`);
    this.ring = new HashRing(Array.from({ length: workers }, (_, index) => ({ id: `worker-${index}`, index })));
  }

  /** The owner of an entry key (`entryKey(url, variant)`): hashed on its URL part only. */
  ownerOfKey(key: string): number {
    if (this.workers === 1) return 0;
    const end = key.indexOf('\u0000');
    return this.ring.lookup(end === -1 ? key : key.slice(0, end + 1))!.index;
  }

  ownerOfUrl(url: string): number {
    return this.ownerOfKey(urlKeyPrefix(url));
  }

  ownsKey(key: string): boolean {
    return this.ownerOfKey(key) === this.self;
  }

  ownsUrl(url: string): boolean {
    return this.ownerOfUrl(url) === this.self;
  }
}
