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
  /** Requests waiting for the lease in flight, first come first served. */
  waiters: Array<(decision: Decision) => void>;
  asking: boolean;
}

/**
 * A worker's limiter: the primary holds every bucket of the node (node-wide limits), and leases a
 * worker a few tokens at a time, so most requests decide without a message. A lease grows while
 * its tokens are used (doubling, up to 1/8 of the burst split over the workers, at least a few)
 * and unused tokens go back with the next ask, so the node admits the configured rate whichever
 * workers the requests land on. Requests that arrive while an ask is in flight queue behind it
 * and are settled in order by its grant: one message per lease, however many wait.
 */
export class LeasedLimiter implements Limiter {
  /** Per limit, an LRU of at most `maxKeys` leases (as the primary's tables). */
  private readonly leases = new Map<string, LRUCache<string, Lease>>();
  private readonly maxKeys: number;
  private readonly workers: number;
  private readonly ask: (request: LeaseRequest) => Promise<Grant>;

  constructor(options: { maxKeys: number; workers: number; ask: (request: LeaseRequest) => Promise<Grant> }) {
    this.maxKeys = options.maxKeys;
    this.workers = options.workers;
    this.ask = options.ask;
  }

  take(limit: string, key: string, rate: Rate): Decision | Promise<Decision> {
    const now = performance.now();
    let leases = this.leases.get(limit);
    if (leases === undefined) this.leases.set(limit, (leases = new LRUCache({ max: this.maxKeys })));
    let lease = leases.get(key);
    if (lease === undefined) {
      lease = { tokens: 0, expiresAt: 0, used: 0, deniedUntil: 0, remaining: 0, resetAt: 0, waiters: [], asking: false };
      leases.set(key, lease);
    } else if (lease.waiters.length === 0) {
      if (lease.tokens > 0 && now < lease.expiresAt) return spend(lease, now);
      if (now < lease.deniedUntil) return denied(lease, now);
    }
    const waiting = new Promise<Decision>((resolve) => lease.waiters.push(resolve));
    if (!lease.asking) this.askFor(lease, limit, key, rate);
    return waiting;
  }

  private askFor(lease: Lease, limit: string, key: string, rate: Rate): void {
    const cap = Math.max(Math.min(4, rate.burst), Math.floor(rate.burst / (8 * this.workers)));
    const want = Math.min(cap, Math.max(1, lease.used * 2, lease.waiters.length));
    // Tokens of an expired lease go back; a live lease's are kept (its waiters came after they ran out).
    const returned = performance.now() >= lease.expiresAt ? lease.tokens : 0;
    if (returned > 0) lease.tokens = 0;
    lease.asking = true;
    this.ask({ limit, key, intervalMs: rate.intervalMs, burst: rate.burst, want, returned }).then(
      (grant) => {
        const at = performance.now();
        lease.tokens += grant.granted;
        lease.used = 0;
        lease.expiresAt = at + LEASE_MS;
        lease.remaining = grant.remaining;
        lease.resetAt = at + grant.resetMs;
        lease.deniedUntil = grant.granted > 0 ? 0 : at + Math.max(1, grant.retryAfterMs);
        this.settle(lease, limit, key, rate);
      },
      () => {
        // The primary did not answer (it is going away): admit the waiting requests rather than hang them.
        const at = performance.now();
        lease.tokens += lease.waiters.length;
        lease.expiresAt = at + LEASE_MS;
        this.settle(lease, limit, key, rate);
      },
    );
  }

  /** Hands the lease's tokens to its waiters in order; denies them while the primary denies; asks again for the rest. */
  private settle(lease: Lease, limit: string, key: string, rate: Rate): void {
    lease.asking = false;
    const now = performance.now();
    while (lease.waiters.length > 0 && lease.tokens > 0) lease.waiters.shift()!(spend(lease, now));
    if (lease.waiters.length === 0) return;
    if (now < lease.deniedUntil) {
      for (const resolve of lease.waiters.splice(0)) resolve(denied(lease, now));
      return;
    }
    this.askFor(lease, limit, key, rate);
  }

  /** Leases held, over every limit. */
  get size(): number {
    let size = 0;
    for (const leases of this.leases.values()) size += leases.size;
    return size;
  }
}

function spend(lease: Lease, now: number): Decision {
  lease.tokens--;
  lease.used++;
  return { allowed: true, remaining: lease.remaining + lease.tokens, resetMs: Math.max(0, lease.resetAt - now), retryAfterMs: 0 };
}

function denied(lease: Lease, now: number): Decision {
  return { allowed: false, remaining: 0, resetMs: Math.max(0, lease.resetAt - now), retryAfterMs: lease.deniedUntil - now };
}

/** Every edge of a PoP shares buckets in Redis; while Redis is slow or down, `fallback` decides (or all are admitted). */
export class SharedLimiter implements Limiter {
  constructor(
    private readonly redis: RedisLimiter,
    private readonly fallback: Limiter,
  ) {}

  take(limit: string, key: string, rate: Rate): Promise<Decision> {
    return this.redis.take(`${limit}\u0000${key}`, rate, () => this.fallback.take(limit, key, rate));
  }
}
