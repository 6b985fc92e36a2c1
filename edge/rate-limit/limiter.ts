/**
 * Where a node's rate-limit decisions are made (DESIGN.md: limits are node-wide):
 * - `LocalLimiter`: this process's GCRA tables (one process, or the primary of a node);
 * - `LeasedLimiter`: a worker of a multi-worker node, spending tokens the primary leases it;
 * - `SharedLimiter`: every edge of a PoP through Redis, falling back to one of the above.
 */
import { LRUCache } from 'lru-cache';
import { GcraTable, type Decision, type Grant, type Rate } from './gcra.js';
import type { RedisLimiter } from './redis-limiter.js';

export interface Limiter {
  /** One request under limit `limit` for bucket `key`. Synchronous when it can decide at once. */
  take(limit: string, key: string, rate: Rate): Decision | Promise<Decision>;
}

/** A worker's question to the primary: tokens for a bucket, with the unused ones of its last lease. */
export interface LeaseRequest {
  limit: string;
  key: string;
  intervalMs: number;
  burst: number;
  want: number;
  returned: number;
}

/** GCRA tables in this process, one per limit, each an LRU of at most `maxKeys` buckets. */
export class LocalLimiter implements Limiter {
  private readonly tables = new Map<string, GcraTable>();

  constructor(private readonly maxKeys: number) {}

  take(limit: string, key: string, rate: Rate): Decision {
    return this.table(limit).take(key, rate, performance.now());
  }

  /** The primary's side of a lease. */
  lease(request: LeaseRequest): Grant {
    return this.table(request.limit).take(request.key, { intervalMs: request.intervalMs, burst: request.burst }, performance.now(), request.want, request.returned);
  }

  /** Buckets held, over every limit. */
  get size(): number {
    let size = 0;
    for (const table of this.tables.values()) size += table.size;
    return size;
  }

  private table(limit: string): GcraTable {
    let table = this.tables.get(limit);
    if (table === undefined) this.tables.set(limit, (table = new GcraTable({ maxKeys: this.maxKeys })));
    return table;
  }
}

/** How long a worker may spend leased tokens before the unused ones go back with its next request. */
const LEASE_MS = 1_000;

interface Lease {
  /** Tokens left to spend without asking. */
  tokens: number;
  expiresAt: number;
  /** Tokens spent from the current lease: the next lease asks for twice as many. */
  used: number;
  /** Denied by the primary: requests are denied here until then without asking again. */
  deniedUntil: number;
  /** The primary's count after the last grant, for the RateLimit header. */
  remaining: number;
  resetAt: number;
  pending: Promise<void> | undefined;
}

/**
 * A worker's limiter: the primary holds every bucket of the node (node-wide limits), and leases a
 * worker a few tokens at a time, so most requests decide without a message. A lease grows while
 * its tokens are used (doubling, up to 1/8 of the burst split over the workers) and unused tokens
 * go back, so the node admits the configured rate whichever workers the requests land on; at
 * most `workers × lease` tokens sit unused in workers at any time.
 */
export class LeasedLimiter implements Limiter {
  private readonly leases: LRUCache<string, Lease>;
  private readonly workers: number;
  private readonly ask: (request: LeaseRequest) => Promise<Grant>;

  constructor(options: { maxKeys: number; workers: number; ask: (request: LeaseRequest) => Promise<Grant> }) {
    this.leases = new LRUCache({ max: options.maxKeys });
    this.workers = options.workers;
    this.ask = options.ask;
  }

  take(limit: string, key: string, rate: Rate): Decision | Promise<Decision> {
    const id = `${limit}\u0000${key}`;
    const now = performance.now();
    let lease = this.leases.get(id);
    if (lease !== undefined) {
      if (lease.tokens > 0 && now < lease.expiresAt) {
        lease.tokens--;
        lease.used++;
        return { allowed: true, remaining: lease.remaining + lease.tokens, resetMs: Math.max(0, lease.resetAt - now), retryAfterMs: 0 };
      }
      if (now < lease.deniedUntil) return { allowed: false, remaining: 0, resetMs: Math.max(0, lease.resetAt - now), retryAfterMs: lease.deniedUntil - now };
      if (lease.pending !== undefined) return lease.pending.then(() => this.take(limit, key, rate));
    } else {
      lease = { tokens: 0, expiresAt: 0, used: 0, deniedUntil: 0, remaining: 0, resetAt: 0, pending: undefined };
      this.leases.set(id, lease);
    }
    const cap = Math.max(1, Math.floor(rate.burst / (8 * this.workers)));
    const want = Math.min(cap, Math.max(1, lease.used * 2));
    const returned = lease.tokens;
    const current = lease;
    current.tokens = 0;
    current.pending = this.ask({ limit, key, intervalMs: rate.intervalMs, burst: rate.burst, want, returned }).then(
      (grant) => {
        const at = performance.now();
        current.pending = undefined;
        current.tokens = grant.granted;
        current.used = 0;
        current.expiresAt = at + LEASE_MS;
        current.remaining = grant.remaining;
        current.resetAt = at + grant.resetMs;
        current.deniedUntil = grant.granted > 0 ? 0 : at + Math.max(1, grant.retryAfterMs);
      },
      () => {
        // The primary did not answer (it is going away): admit rather than hang the request.
        current.pending = undefined;
        current.tokens = 1;
        current.expiresAt = performance.now() + LEASE_MS;
      },
    );
    return current.pending.then(() => this.take(limit, key, rate));
  }

  get size(): number {
    return this.leases.size;
  }
}

/** Every edge of a PoP shares buckets in Redis; while Redis is slow or down, `fallback` decides (or all are admitted). */
export class SharedLimiter implements Limiter {
  constructor(
    private readonly redis: RedisLimiter,
    private readonly fallback: Limiter,
  ) {}

  take(limit: string, key: string, rate: Rate): Promise<Decision> {
    return this.redis.take(`${limit}:${key}`, rate, () => this.fallback.take(limit, key, rate));
  }
}
