/**
 * How often keys were asked for lately, approximately, in fixed memory: the count-min sketch of
 * TinyLFU (Einziger, Friedman and Manes, "TinyLFU: A Highly Efficient Cache Admission Policy"),
 * as Caffeine and Ristretto use it to decide whether a new entry is worth what it would evict.
 *
 * Four counters per key, in one table, saturating at 15; a key's estimate is the least of its
 * four. After ten increments per expected key every counter is halved, so the counts follow what is
 * popular now, not what was popular once. No such package is kept up for Node (the few on npm are
 * unmaintained ports), and the structure is forty lines.
 */
const DEPTH = 4;
const MAX_COUNT = 15;
const SAMPLE_FACTOR = 10;

export class FrequencySketch {
  private readonly table: Uint8Array;
  private readonly mask: number;
  private readonly sampleSize: number;
  private additions = 0;

  /** `expectedKeys`: about how many keys the cache holds. The table has four counters per key (a power of two, 4 KiB to 64 MiB). */
  constructor(expectedKeys: number) {
    let width = 4096;
    while (width < DEPTH * expectedKeys && width < 1 << 26) width *= 2;
    this.table = new Uint8Array(width);
    this.mask = width - 1;
    this.sampleSize = SAMPLE_FACTOR * Math.max(1024, expectedKeys);
  }

  /** Counts one request for `key`. */
  increment(key: string): void {
    const hash = stringHash(key);
    const step = spread(hash) | 1;
    for (let i = 0, at = hash; i < DEPTH; i++, at += step) {
      const slot = at & this.mask;
      if (this.table[slot]! < MAX_COUNT) this.table[slot]!++;
    }
    if (++this.additions >= this.sampleSize) this.age();
  }

  /** About how many times `key` was counted lately (never fewer than it was). */
  frequency(key: string): number {
    const hash = stringHash(key);
    const step = spread(hash) | 1;
    let least = MAX_COUNT;
    for (let i = 0, at = hash; i < DEPTH; i++, at += step) least = Math.min(least, this.table[(at & this.mask)]!);
    return least;
  }

  /** Halves every count: old popularity fades. */
  private age(): void {
    for (let i = 0; i < this.table.length; i++) this.table[i]! >>= 1;
    this.additions = Math.floor(this.additions / 2);
  }
}

/** FNV-1a over UTF-16 code units. */
function stringHash(text: string): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) hash = Math.imul(hash ^ text.charCodeAt(i), 0x01000193);
  return hash >>> 0;
}

/** A second, independent-looking hash from the first (murmur3's finaliser), for the probe step. */
function spread(hash: number): number {
  let h = Math.imul(hash ^ (hash >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}
