/**
 * Retry budget (Envoy's retry_budget): retries in flight may not exceed budgetPercent of the
 * requests in flight, with a floor of minRetryConcurrency so a quiet pool can still retry.
 * Unlike a fixed "max retries", it scales with load and stops a failing pool from being hit
 * with (attempts × traffic) when every request starts to fail.
 *
 *   allowed while  retriesInFlight < max(minRetryConcurrency, floor(budgetPercent/100 × activeRequests))
 *
 * `activeRequests` counts original requests (each request() call once, until it finishes), not
 * retries, so retries cannot raise their own budget.
 *
 * It rations retries that may repeat work on an origin (a reset after the request was sent).
 * Retries of requests that never left (connection refused, connect timeout) are not asked for
 * here: the origin pool makes them outside the budget, bounded only by maxAttempts and the
 * members not yet tried, so an origin's death does not become client errors under load.
 */

export interface RetryBudgetOptions {
  /** Retries in flight as a percentage of active requests. Default 20. */
  budgetPercent?: number;
  /** Retries in flight always allowed, whatever the load. Default 3. */
  minRetryConcurrency?: number;
}

export const RETRY_BUDGET_DEFAULTS = { budgetPercent: 20, minRetryConcurrency: 3 } as const;

export class RetryBudget {
  readonly budgetPercent: number;
  readonly minRetryConcurrency: number;
  private active = 0;
  private retries = 0;
  /** Retries refused by the budget, for metrics. */
  denied = 0;

  constructor(options: RetryBudgetOptions = {}) {
    this.budgetPercent = options.budgetPercent ?? RETRY_BUDGET_DEFAULTS.budgetPercent;
    this.minRetryConcurrency = options.minRetryConcurrency ?? RETRY_BUDGET_DEFAULTS.minRetryConcurrency;
    if (!(this.budgetPercent >= 0)) throw new RangeError(`budgetPercent must be ≥ 0, got ${this.budgetPercent}`);
    if (!(this.minRetryConcurrency >= 0)) throw new RangeError(`minRetryConcurrency must be ≥ 0, got ${this.minRetryConcurrency}`);
  }

  get activeRequests(): number {
    return this.active;
  }

  get retriesInFlight(): number {
    return this.retries;
  }

  /** Retries that may be in flight at the current load. */
  get maxRetries(): number {
    return Math.max(this.minRetryConcurrency, Math.floor((this.budgetPercent / 100) * this.active));
  }

  /** Marks an original request as started; call the returned function exactly once when it ends. */
  startRequest(): () => void {
    this.active++;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.active--;
    };
  }

  /** Takes a retry slot if the budget has one: returns its release function, or undefined (denied). */
  tryAcquireRetry(): (() => void) | undefined {
    if (this.retries >= this.maxRetries) {
      this.denied++;
      return undefined;
    }
    this.retries++;
    let done = false;
    return () => {
      if (done) return;
      done = true;
      this.retries--;
    };
  }
}
