/**
 * Consistent-hash ring with virtual nodes (ketama-style). Shared by the consistent-hash balancer
 * (shield → origins) and the shield ring (edge → shields), so every tier agrees on key ownership.
 *
 * Deterministic across processes: points depend only on member ids (and weights), members are
 * indexed in id order, and points that collide are ordered by id, so the same member list in
 * any order maps every key to the same member. Lookup is a binary search over a sorted
 * Uint32Array; building costs vnodes × members hashes and one sort.
 */

export interface RingMember {
  readonly id: string;
  /** Multiplies the virtual-node count (default 1; ≤ 0 puts the member on the ring nowhere). */
  readonly weight?: number;
}

export interface HashRingOptions {
  /** Virtual nodes per member of weight 1. Default 160 (spreads keys within a few % per member). */
  vnodesPerMember?: number;
}

export const HASH_RING_DEFAULTS = { vnodesPerMember: 160 } as const;

export class HashRing<T extends RingMember = RingMember> {
  /** Members in id order (the index used by `owners`). */
  readonly members: readonly T[];
  private readonly points: Uint32Array;
  private readonly owners: Uint32Array;

  constructor(members: readonly T[], options: HashRingOptions = {}) {
    const vnodes = options.vnodesPerMember ?? HASH_RING_DEFAULTS.vnodesPerMember;
    if (!Number.isInteger(vnodes) || vnodes < 1) throw new RangeError(`vnodesPerMember must be a positive integer, got ${vnodes}`);
    const sorted = [...members].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    for (let i = 1; i < sorted.length; i++) {
      if (sorted[i]!.id === sorted[i - 1]!.id) throw new Error(`duplicate ring member "${sorted[i]!.id}"`);
    }
    this.members = sorted;

    const counts = sorted.map((m) => {
      const weight = m.weight ?? 1;
      return weight > 0 ? Math.max(1, Math.round(vnodes * weight)) : 0;
    });
    const total = counts.reduce((sum, c) => sum + c, 0);
    // Pack (hash, owner) into one float64 so a single numeric sort orders by hash, then owner index
    // (= id order) for the rare collisions: exact while hash < 2^32 and owner < 2^20.
    const packed = new Float64Array(total);
    let k = 0;
    for (let owner = 0; owner < sorted.length; owner++) {
      const id = sorted[owner]!.id;
      for (let v = 0; v < counts[owner]!; v++) packed[k++] = hash32(`${id}-${v}`) * 1_048_576 + owner;
    }
    packed.sort();
    this.points = new Uint32Array(total);
    this.owners = new Uint32Array(total);
    for (let i = 0; i < total; i++) {
      const value = packed[i]!;
      const owner = value % 1_048_576;
      this.owners[i] = owner;
      this.points[i] = (value - owner) / 1_048_576;
    }
  }

  get size(): number {
    return this.members.length;
  }

  /** The member that owns `key`, or undefined for an empty ring. */
  lookup(key: string): T | undefined {
    if (this.points.length === 0) return undefined;
    return this.members[this.owners[this.indexOf(hash32(key))]!];
  }

  /**
   * The owner of `key`, then its successors clockwise, each member once (members with no points
   * are never yielded). Lets callers skip unhealthy members and still agree on the fallback.
   */
  *walk(key: string): Generator<T, void, undefined> {
    const count = this.points.length;
    if (count === 0) return;
    const seen = new Uint8Array(this.members.length);
    let remaining = this.members.length;
    const start = this.indexOf(hash32(key));
    for (let step = 0; step < count && remaining > 0; step++) {
      const owner = this.owners[(start + step) % count]!;
      if (seen[owner] === 1) continue;
      seen[owner] = 1;
      remaining--;
      yield this.members[owner]!;
    }
  }

  /** First point at or after `hash` (wrapping to 0): lower-bound binary search. */
  private indexOf(hash: number): number {
    const points = this.points;
    let lo = 0;
    let hi = points.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (points[mid]! < hash) lo = mid + 1;
      else hi = mid;
    }
    return lo === points.length ? 0 : lo;
  }
}

/**
 * 32-bit FNV-1a over the string's UTF-8 bytes (encoded inline, no allocation), then the murmur3
 * fmix32 finaliser: FNV-1a alone spreads near-identical strings ("a-1", "a-2") poorly.
 * Portable: any language hashing the same UTF-8 bytes gets the same value.
 */
export function hash32(input: string): number {
  let h = 0x811c9dc5;
  const length = input.length;
  for (let i = 0; i < length; i++) {
    let c = input.charCodeAt(i);
    if (c < 0x80) {
      h = Math.imul(h ^ c, 0x01000193);
      continue;
    }
    if (c < 0x800) {
      h = Math.imul(h ^ (0xc0 | (c >> 6)), 0x01000193);
    } else {
      if (c >= 0xd800 && c <= 0xdfff) {
        const next = i + 1 < length ? input.charCodeAt(i + 1) : 0;
        if (c <= 0xdbff && next >= 0xdc00 && next <= 0xdfff) {
          const cp = 0x10000 + ((c - 0xd800) << 10) + (next - 0xdc00);
          i++;
          h = Math.imul(h ^ (0xf0 | (cp >> 18)), 0x01000193);
          h = Math.imul(h ^ (0x80 | ((cp >> 12) & 0x3f)), 0x01000193);
          h = Math.imul(h ^ (0x80 | ((cp >> 6) & 0x3f)), 0x01000193);
          h = Math.imul(h ^ (0x80 | (cp & 0x3f)), 0x01000193);
          continue;
        }
        c = 0xfffd; // lone surrogate: hash U+FFFD, as TextEncoder would encode it
      }
      h = Math.imul(h ^ (0xe0 | (c >> 12)), 0x01000193);
      h = Math.imul(h ^ (0x80 | ((c >> 6) & 0x3f)), 0x01000193);
    }
    h = Math.imul(h ^ (0x80 | (c & 0x3f)), 0x01000193);
  }
  return fmix32(h);
}

/** The murmur3 32-bit finaliser: every input bit moves every output bit. */
export function fmix32(h: number): number {
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}
