/**
 * A Bloom filter over byte keys: "definitely absent" or "maybe present". The disk tier keeps one
 * of every key it holds so a cold miss answers synchronously, without a LevelDB read on the
 * thread pool (a thousand concurrent cold misses would otherwise queue behind each other).
 * Keys are never removed; deleted keys only cost a disk read until the next rebuild.
 */

/** Bits per expected key, and hash functions: about 1% false positives. */
const BITS_PER_KEY = 10;
const HASHES = 7;

export class BloomFilter {
  readonly capacity: number;
  private readonly bits: Uint32Array;
  private readonly size: number;
  /** Keys added so far. */
  count = 0;

  constructor(capacity: number) {
    this.capacity = Math.max(1024, Math.ceil(capacity));
    this.size = this.capacity * BITS_PER_KEY;
    this.bits = new Uint32Array(Math.ceil(this.size / 32));
  }

  add(key: Uint8Array): void {
    const [h1, h2] = hashes(key);
    for (let i = 0; i < HASHES; i++) {
      const bit = (h1 + i * h2) % this.size;
      this.bits[bit >>> 5]! |= 1 << (bit & 31);
    }
    this.count++;
  }

  mightContain(key: Uint8Array): boolean {
    const [h1, h2] = hashes(key);
    for (let i = 0; i < HASHES; i++) {
      const bit = (h1 + i * h2) % this.size;
      if ((this.bits[bit >>> 5]! & (1 << (bit & 31))) === 0) return false;
    }
    return true;
  }

  /** True once more keys were added than it was sized for (false positives climb). */
  get full(): boolean {
    return this.count > this.capacity;
  }
}

/** Two independent 32-bit hashes (FNV-1a with different offsets, murmur3-finalised) for double hashing. */
function hashes(key: Uint8Array): [number, number] {
  let a = 0x811c9dc5;
  let b = 0x01000193 ^ 0x5bd1e995;
  for (let i = 0; i < key.length; i++) {
    const byte = key[i]!;
    a = Math.imul(a ^ byte, 0x01000193);
    b = Math.imul(b ^ byte, 0x5bd1e995);
  }
  return [fmix(a) >>> 0, (fmix(b) | 1) >>> 0];
}

function fmix(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  return h ^ (h >>> 16);
}
