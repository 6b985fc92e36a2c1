/**
 * Keys remembered until a deadline (ms): hit-for-miss keys, URLs whose slices were found mixed.
 * Expired keys are dropped when asked about, and all at once when the set passes its bound.
 */
export class ExpiringKeys {
  private readonly until = new Map<string, number>();

  constructor(
    private readonly now: () => number,
    private readonly pruneAt = 100_000,
  ) {}

  add(key: string, forMs: number): void {
    const now = this.now();
    this.until.set(key, now + forMs);
    if (this.until.size > this.pruneAt) for (const [k, deadline] of this.until) if (deadline <= now) this.until.delete(k);
  }

  has(key: string): boolean {
    const deadline = this.until.get(key);
    if (deadline === undefined) return false;
    if (deadline > this.now()) return true;
    this.until.delete(key);
    return false;
  }

  delete(key: string): void {
    this.until.delete(key);
  }
}
