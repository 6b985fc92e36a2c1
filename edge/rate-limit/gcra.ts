/**
 * Generic cell rate algorithm (GCRA) per key, in a fixed-size LRU: one number (the theoretical arrival
 * time, TAT) per key, so memory is bounded by `maxKeys` however many keys arrive.
 */

/**
 * A limit's shape: `intervalMs` = period / requests (e.g. 100/s → 10 ms); `burst` = requests admitted at once from rest (≥ 1).
 * Used to 1 µs resolution (intervalMs ≥ 0.001) and a whole burst (fractions dropped).
 */
export interface Rate {
  intervalMs: number;
  burst: number;
}

export interface Decision {
  allowed: boolean;
  /** Requests still admitted at once after this decision (≥ 0). */
  remaining: number;
  /** ms until the bucket is back to its full burst. */
  resetMs: number;
  /** When denied: ms until one request will be admitted (> 0); 0 when allowed. */
  retryAfterMs: number;
}

export interface Grant extends Decision {
  /** Tokens granted (0…want); allowed === granted > 0. */
  granted: number;
}

/**
 * Arithmetic is in whole microseconds: at Date.now() scale (1.7e12 ms) float ms lose ~1e-4 ms per
 * subtraction, enough to turn a burst of 3 into 2; integers below 2^53 µs (year 2255) are exact,
 * in JS and in Redis' Lua alike. So the resolution is 1 µs (≤ 1,000,000 requests/s per key).
 */
export function intervalMicros(rate: Rate): number {
  return Math.round(rate.intervalMs * 1000);
}

/** Throws on a rate that cannot be a limit (a programming or configuration error). */
export function checkRate(rate: Rate): void {
  const interval = intervalMicros(rate);
  if (!(interval >= 1 && Number.isFinite(interval)) || !(rate.burst >= 1 && Number.isFinite(rate.burst))) {
    throw new RangeError(`invalid rate: intervalMs ${rate.intervalMs} (≥ 0.001), burst ${rate.burst} (≥ 1)`);
  }
}

/**
 * GCRA per key, in an LRU bounded by `maxKeys` (memory stays bounded however many keys arrive).
 *
 * Eviction: plain least-recently-used. Entries at rest (TAT ≤ now) carry no information, but they
 * already gather at the LRU end (a key untouched for longer than burst × interval is at rest), so
 * finding them elsewhere would need a scan or a second index by TAT on every take. Evicting a key
 * that is still in debt hands it a fresh burst: that errs towards admitting, and only once the
 * table holds `maxKeys` keys more recent than it — size `maxKeys` to the keys active within one burst.
 *
 * The LRU is an intrusive doubly linked list over typed arrays (slot = index), so a take on an
 * existing key is one Map lookup and a few array writes; the only allocation is the returned object.
 */
export class GcraTable {
  readonly #max: number;
  readonly #slots = new Map<string, number>();
  readonly #keys: string[];
  /** TAT per slot, in whole µs of the caller's clock. */
  #tat: Float64Array;
  #prev: Int32Array;
  #next: Int32Array;
  /** Least recently used slot (evicted first), or -1. */
  #head = -1;
  /** Most recently used slot, or -1. */
  #tail = -1;
  /** Slots handed out so far (they are reused, never freed, until clear()). */
  #used = 0;

  constructor(options: { maxKeys: number }) {
    const max = Math.floor(options.maxKeys);
    if (!(max >= 1) || max > 0x7fffffff) throw new RangeError(`maxKeys must be ≥ 1, got ${options.maxKeys}`);
    this.#max = max;
    // Grown on demand up to max, so a generous maxKeys costs nothing until keys arrive.
    const initial = Math.min(max, 1024);
    this.#keys = [];
    this.#tat = new Float64Array(initial);
    this.#prev = new Int32Array(initial);
    this.#next = new Int32Array(initial);
  }

  /**
   * Credits `returned` unused tokens back (never below a rested bucket), then grants up to `want` (≥ 1)
   * tokens that conform at `now` (ms, any monotonic-ish clock the caller uses consistently).
   * Returns a new object each call. Throws RangeError on an invalid rate or `want`.
   */
  take(key: string, rate: Rate, now: number, want = 1, returned = 0): Grant {
    const interval = Math.round(rate.intervalMs * 1000);
    const burst = Math.floor(rate.burst);
    if (!(interval >= 1) || !(burst >= 1) || !(want >= 1) || interval === Infinity) {
      checkRate(rate);
      throw new RangeError(`want must be ≥ 1, got ${want}`);
    }
    const limit = burst * interval;
    const t = Math.round(now * 1000);
    let slot = this.#slots.get(key);
    let tat = t;
    if (slot !== undefined) {
      tat = this.#tat[slot]!;
      if (slot !== this.#tail) this.#moveToTail(slot);
    }
    if (returned >= 1 && tat > t) {
      tat = Math.max(t, tat - Math.floor(returned) * interval);
      if (slot !== undefined) this.#tat[slot] = tat;
    }
    const base = tat > t ? tat : t;
    // Tokens that conform now: largest n with base + n × interval − now ≤ burst × interval.
    const free = Math.floor((limit - (base - t)) / interval);
    if (free >= 1) {
      const granted = want < free ? Math.floor(want) : free;
      tat = base + granted * interval;
      if (slot === undefined) slot = this.#insert(key);
      this.#tat[slot] = tat;
      return { allowed: true, granted, remaining: free - granted, resetMs: (tat - t) / 1000, retryAfterMs: 0 };
    }
    // One more conforms once base + interval − (now + wait) ≤ limit; free < 1 makes this > 0.
    return { allowed: false, granted: 0, remaining: 0, resetMs: (base - t) / 1000, retryAfterMs: (base - t + interval - limit) / 1000 };
  }

  get size(): number {
    return this.#slots.size;
  }

  clear(): void {
    this.#slots.clear();
    this.#keys.length = 0;
    this.#head = -1;
    this.#tail = -1;
    this.#used = 0;
  }

  #insert(key: string): number {
    let slot: number;
    if (this.#used < this.#max) {
      slot = this.#used++;
      if (slot >= this.#tat.length) this.#grow();
    } else {
      slot = this.#head;
      this.#slots.delete(this.#keys[slot]!);
      this.#unlink(slot);
    }
    this.#keys[slot] = key;
    this.#slots.set(key, slot);
    this.#linkTail(slot);
    return slot;
  }

  #grow(): void {
    const length = Math.min(this.#max, this.#tat.length * 2);
    const tat = new Float64Array(length);
    const prev = new Int32Array(length);
    const next = new Int32Array(length);
    tat.set(this.#tat);
    prev.set(this.#prev);
    next.set(this.#next);
    this.#tat = tat;
    this.#prev = prev;
    this.#next = next;
  }

  #unlink(slot: number): void {
    const prev = this.#prev[slot]!;
    const next = this.#next[slot]!;
    if (prev === -1) this.#head = next;
    else this.#next[prev] = next;
    if (next === -1) this.#tail = prev;
    else this.#prev[next] = prev;
  }

  #linkTail(slot: number): void {
    this.#prev[slot] = this.#tail;
    this.#next[slot] = -1;
    if (this.#tail === -1) this.#head = slot;
    else this.#next[this.#tail] = slot;
    this.#tail = slot;
  }

  #moveToTail(slot: number): void {
    this.#unlink(slot);
    this.#linkTail(slot);
  }
}
