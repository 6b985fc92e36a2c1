/**
 * The disk tier's health: 'ok', or 'degraded' from a failed write (disk full, I/O error) until a
 * recovery attempt succeeds. The tiered store keeps writes off a degraded disk; this runs the
 * attempts (`recover`: reopen, probe, catch up) with backoff, 1 s doubling to 30 s by default.
 *
 * A disk that recovers and fails again soon after (a flapping disk) does not start over at the
 * shortest delay: the backoff resets only once the disk has stayed ok for the longest delay.
 */

export interface DiskHealthReport {
  state: 'ok' | 'degraded';
  /** When the current degraded period began (ms since the epoch). */
  since?: number;
  /** The error that made the disk degraded, or that failed the latest recovery attempt. */
  lastError?: string;
  /** Times the disk became degraded. */
  degradedEntered: number;
  /** Times it left degraded mode by itself. */
  recoveries: number;
  /** Recovery attempts that failed. */
  failedAttempts: number;
  /** Time spent degraded, the current period included. */
  degradedMs: number;
}

export interface DiskHealthOptions {
  /** Makes the disk writable again, or rejects. */
  recover: () => Promise<void>;
  /** Called after each successful recovery. */
  onRecovered?: () => void;
  firstRetryMs?: number;
  maxRetryMs?: number;
  now?: () => number;
}

export class DiskHealth {
  /** Bumped on every change of state: a failure of an operation begun before it is not news. */
  epoch = 0;
  private state: 'ok' | 'degraded' = 'ok';
  private since = 0;
  private lastError: string | undefined;
  private degradedEntered = 0;
  private recoveries = 0;
  private failedAttempts = 0;
  private degradedMsBefore = 0;
  private recoveredAt = -Infinity;
  private delay: number;
  private timer: NodeJS.Timeout | undefined;
  private attempt: Promise<void> | undefined;
  private closed = false;
  private readonly firstRetryMs: number;
  private readonly maxRetryMs: number;
  private readonly now: () => number;

  constructor(private readonly options: DiskHealthOptions) {
    this.firstRetryMs = options.firstRetryMs ?? 1_000;
    this.maxRetryMs = Math.max(options.maxRetryMs ?? 30_000, this.firstRetryMs);
    this.now = options.now ?? Date.now;
    this.delay = this.firstRetryMs;
  }

  get degraded(): boolean {
    return this.state === 'degraded';
  }

  /** A disk write failed. `epoch`: the health epoch when the operation began (default: now). */
  fail(error: unknown, epoch = this.epoch): void {
    if (this.closed || epoch !== this.epoch) return;
    this.lastError = describe(error);
    if (this.state === 'degraded') return;
    this.state = 'degraded';
    this.epoch++;
    this.since = this.now();
    this.degradedEntered++;
    if (this.since - this.recoveredAt >= this.maxRetryMs) this.delay = this.firstRetryMs;
    this.schedule();
  }

  report(): DiskHealthReport {
    const current = this.state === 'degraded' ? this.now() - this.since : 0;
    return {
      state: this.state,
      ...(this.state === 'degraded' ? { since: this.since } : {}),
      ...(this.lastError !== undefined && this.state === 'degraded' ? { lastError: this.lastError } : {}),
      degradedEntered: this.degradedEntered,
      recoveries: this.recoveries,
      failedAttempts: this.failedAttempts,
      degradedMs: this.degradedMsBefore + current,
    };
  }

  /** Stops retrying; resolves once an attempt under way has ended. */
  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    await this.attempt;
  }

  private schedule(): void {
    const delay = this.delay;
    this.delay = Math.min(this.delay * 2, this.maxRetryMs);
    this.timer = setTimeout(() => {
      this.attempt = this.tryRecover().finally(() => (this.attempt = undefined));
    }, delay);
    this.timer.unref();
  }

  private async tryRecover(): Promise<void> {
    try {
      await this.options.recover();
    } catch (error) {
      if (this.closed) return;
      this.failedAttempts++;
      this.lastError = describe(error);
      this.schedule();
      return;
    }
    if (this.closed) return;
    const now = this.now();
    this.degradedMsBefore += now - this.since;
    this.recoveredAt = now;
    this.state = 'ok';
    this.epoch++;
    this.recoveries++;
    this.options.onRecovered?.();
  }
}

/** An error as one line: its code and message, and its cause's (LevelDB's errors wrap the I/O error). */
function describe(error: unknown): string {
  const parts: string[] = [];
  for (let e = error, depth = 0; e !== undefined && e !== null && depth < 3; e = (e as { cause?: unknown }).cause, depth++) {
    const code = (e as { code?: unknown }).code;
    const message = e instanceof Error ? e.message : String(e);
    const line = typeof code === 'string' && !message.includes(code) ? `${code}: ${message}` : message;
    if (!parts.some((p) => p.includes(message))) parts.push(line);
  }
  return parts.join(' ← ');
}
