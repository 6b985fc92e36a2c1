/**
 * The shield's upstream: a pool of origins. Composes the separate pieces —
 * selection (balancer), active health (health-check), passive ejection (outlier-detector),
 * retry budget and per-member circuit breaking — behind the one `Upstream` contract.
 *
 * Per request:
 *  1. candidates = members that pass active health checks and are not ejected; when there are
 *     none, every member (panic mode: a pool that looks all-down still tries rather than refusing);
 *  2. minus members already tried for this request, minus members at maxRequestsPerMember
 *     (circuit breaking); if only the cap removed them → UPSTREAM_OVERLOADED (503);
 *  3. the balancer picks one; its result (5xx / connect failure / success) feeds the detector;
 *  4. on a retryable failure (`UpstreamError.retryable`: connect failures before sending, resets of
 *     idempotent requests) with no request body (a stream cannot be replayed), within maxAttempts,
 *     go to 1 with the failed member excluded. A retry takes a slot of the retry budget, except
 *     when the request never left (`UpstreamError.neverSent`: refused, connect timeout, DNS):
 *     such a retry cannot repeat work on an origin, and refusing it would turn one dead origin
 *     into client errors exactly when load is high. It is still bounded by maxAttempts and by
 *     the members not yet tried.
 * 5xx responses are returned, not retried: the origin answered, and the cache policy decides.
 */
import type { MemberHealth } from '../pipeline/node-upstream.js';
import { EventEmitter } from 'node:events';
import type { Readable } from 'node:stream';
import { HttpUpstream, toUpstreamError, type HttpUpstreamOptions } from '../pipeline/http-upstream.js';
import { UpstreamError, type Upstream, type UpstreamRequest, type UpstreamResponse } from '../pipeline/upstream.js';
import { createBalancer, type Balancer, type BalancerName, type BalancerOptions, type Member } from './balancer.js';
import { HealthChecker, type HealthChange, type HealthCheckOptions } from './health-check.js';
import { OutlierDetector, type EjectionEvent, type OutlierDetectorOptions, type ReturnEvent } from './outlier-detector.js';
import { RetryBudget, type RetryBudgetOptions } from './retry-budget.js';

export interface OriginPoolMemberConfig {
  /** Base URL of the origin, e.g. http://127.0.0.1:8081. */
  url: string;
  /** Relative share of traffic. Default 1. */
  weight?: number;
  /** A ready upstream for this member (tests, sharing); not closed by the pool. Default: a new HttpUpstream. */
  upstream?: Upstream;
}

export interface OriginPoolOptions {
  members: readonly (string | OriginPoolMemberConfig)[];
  /** A balancer name or instance. Default 'round-robin'. */
  balancer?: BalancerName | Balancer;
  balancerOptions?: BalancerOptions;
  /** Options for the HttpUpstream built per member. */
  upstream?: Omit<HttpUpstreamOptions, 'url'>;
  /** Active health checks; off unless given. */
  healthCheck?: HealthCheckOptions | false;
  /** Passive outlier detection; on with its defaults unless false. */
  outlierDetection?: OutlierDetectorOptions | false;
  retryBudget?: RetryBudgetOptions;
  /** Tries per request, the first included. Default 2. */
  maxAttempts?: number;
  /** Circuit breaker: requests in flight per member beyond which it takes no more. Default 1024. */
  maxRequestsPerMember?: number;
  /** Clock for the outlier detector, in ms. Default Date.now. */
  now?: () => number;
}

export const ORIGIN_POOL_DEFAULTS = {
  balancer: 'round-robin' as BalancerName,
  maxAttempts: 2,
  maxRequestsPerMember: 1024,
} as const;

export interface OriginPoolMemberState {
  url: string;
  weight: number;
  /** Active health check verdict (true when health checks are off). */
  healthy: boolean;
  ejected: boolean;
  /** End of the current ejection (ms since epoch), or null. */
  ejectedUntil: number | null;
  /** Requests in flight through the pool (until their response body closes). */
  pending: number;
  /** Times ejected over the pool's life. */
  ejections: number;
  consecutive5xx: number;
  consecutiveConnectFailures: number;
}

export interface OriginPoolStats {
  requests: number;
  attempts: number;
  retries: number;
  /** Of `retries`, those of requests that never left (connect failures): made outside the retry budget. */
  retriesNeverSent: number;
  /** Retries the retry budget refused. */
  retriesDenied: number;
  /** Requests refused with UPSTREAM_OVERLOADED by circuit breaking. */
  overloaded: number;
  /** Selections made in panic mode (no healthy member). */
  panics: number;
  ejections: number;
}

export interface OriginPoolEjectedEvent extends EjectionEvent {
  url: string;
}

export interface OriginPool {
  on(event: 'ejected', listener: (event: OriginPoolEjectedEvent) => void): this;
  on(event: 'returned', listener: (event: ReturnEvent & { url: string }) => void): this;
  on(event: 'health', listener: (change: HealthChange) => void): this;
  once(event: 'ejected', listener: (event: OriginPoolEjectedEvent) => void): this;
  once(event: 'returned', listener: (event: ReturnEvent & { url: string }) => void): this;
  once(event: 'health', listener: (change: HealthChange) => void): this;
}

class PoolMember implements Member {
  readonly id: string;
  pending = 0;
  constructor(readonly url: string, readonly weight: number, readonly upstream: Upstream, readonly owned: boolean) {
    this.id = url;
  }
}

export class OriginPool extends EventEmitter implements Upstream {
  private readonly list: readonly PoolMember[];
  private readonly balancer: Balancer;
  private readonly health: HealthChecker | undefined;
  private readonly outliers: OutlierDetector | undefined;
  private readonly budget: RetryBudget;
  private readonly maxAttempts: number;
  private readonly maxRequestsPerMember: number;
  private readonly counters: OriginPoolStats = {
    requests: 0, attempts: 0, retries: 0, retriesNeverSent: 0, retriesDenied: 0, overloaded: 0, panics: 0, ejections: 0,
  };
  private closed = false;

  constructor(options: OriginPoolOptions) {
    super();
    if (options.members.length === 0) throw new Error('origin pool needs at least one member');
    const seen = new Set<string>();
    this.list = options.members.map((entry) => {
      const config = typeof entry === 'string' ? { url: entry } : entry;
      const url = new URL(config.url).origin;
      if (seen.has(url)) throw new Error(`origin pool member ${url} listed twice`);
      seen.add(url);
      const weight = config.weight ?? 1;
      if (!(weight >= 0) || !Number.isFinite(weight)) throw new RangeError(`weight of ${url} must be a finite number ≥ 0`);
      const upstream = config.upstream ?? new HttpUpstream({ ...options.upstream, url });
      return new PoolMember(url, weight, upstream, config.upstream === undefined);
    });
    this.balancer = typeof options.balancer === 'object'
      ? options.balancer
      : createBalancer(options.balancer ?? ORIGIN_POOL_DEFAULTS.balancer, options.balancerOptions);
    this.maxAttempts = options.maxAttempts ?? ORIGIN_POOL_DEFAULTS.maxAttempts;
    this.maxRequestsPerMember = options.maxRequestsPerMember ?? ORIGIN_POOL_DEFAULTS.maxRequestsPerMember;
    if (!(this.maxAttempts >= 1)) throw new RangeError(`maxAttempts must be ≥ 1, got ${this.maxAttempts}`);
    if (!(this.maxRequestsPerMember >= 1)) throw new RangeError(`maxRequestsPerMember must be ≥ 1, got ${this.maxRequestsPerMember}`);
    this.budget = new RetryBudget(options.retryBudget);

    const urls = this.list.map((m) => m.url);
    if (options.outlierDetection !== false) {
      const detectorOptions = { ...options.outlierDetection };
      if (options.now !== undefined) detectorOptions.now ??= options.now;
      this.outliers = new OutlierDetector(urls, detectorOptions);
      this.outliers.on('eject', (event) => {
        this.counters.ejections++;
        this.emit('ejected', { ...event, url: event.id } satisfies OriginPoolEjectedEvent);
      });
      this.outliers.on('return', (event) => this.emit('returned', { ...event, url: event.id }));
    }
    if (options.healthCheck) {
      this.health = new HealthChecker(urls, { ...(options.upstream?.tls ? { tls: options.upstream.tls } : {}), ...options.healthCheck });
      this.health.on('change', (change) => this.emit('health', change));
      this.health.start();
    }
  }

  async request(request: UpstreamRequest): Promise<UpstreamResponse> {
    if (this.closed) throw new UpstreamError('UPSTREAM_CONNECT', 'origin pool is closed', { retryable: false });
    this.counters.requests++;
    const endRequest = this.budget.startRequest();
    let endRetry: (() => void) | undefined;
    let tried: Set<PoolMember> | undefined;
    let lastError: UpstreamError | undefined;
    try {
      for (let attempt = 1; ; attempt++) {
        const member = this.select(request.cacheKey, tried);
        if (member === undefined) throw lastError ?? new UpstreamError('UPSTREAM_CONNECT', 'no origin available', { retryable: false });
        if (lastError !== undefined) {
          this.counters.retries++;
          if (lastError.neverSent) this.counters.retriesNeverSent++;
        }
        this.counters.attempts++;
        member.pending++;
        let response: UpstreamResponse;
        try {
          response = await member.upstream.request(request);
        } catch (error) {
          member.pending--;
          const failure = toUpstreamError(error, member.url, request.idempotent);
          // The client went away, or the request was refused before leaving this process: not the member's fault.
          if (request.signal?.aborted || failure.local) throw failure;
          this.outliers?.recordFailure(member.id, failure.code === 'UPSTREAM_PROTOCOL' ? '5xx' : 'connect');
          if (attempt >= this.maxAttempts || !failure.retryable || request.body !== null) throw failure;
          // A budget slot is held by the latest retry only; one that never reached a member needs none.
          endRetry?.();
          endRetry = undefined;
          if (!failure.neverSent) {
            endRetry = this.budget.tryAcquireRetry();
            if (endRetry === undefined) {
              this.counters.retriesDenied++;
              throw failure;
            }
          }
          (tried ??= new Set()).add(member);
          lastError = failure;
          continue;
        }
        if (response.statusCode >= 500) this.outliers?.recordFailure(member.id, '5xx');
        else this.outliers?.recordSuccess(member.id);
        // In flight until the body is done with, so circuit breaking and the budget see streaming bodies.
        const retrySlot = endRetry;
        endRetry = undefined;
        onceClosed(response.body, () => {
          member.pending--;
          retrySlot?.();
          endRequest();
        });
        return response;
      }
    } catch (error) {
      endRetry?.();
      endRequest();
      throw error;
    }
  }

  /** Picks a member for the next attempt; throws UPSTREAM_OVERLOADED when the caps alone left none. */
  private select(key: string, tried: ReadonlySet<PoolMember> | undefined): PoolMember | undefined {
    const exclude = new Set<PoolMember>(tried);
    let available = 0;
    for (const member of this.list) {
      // A weight-0 (drained) member takes no traffic, so it must not hold off panic mode either.
      if (member.weight > 0 && this.isAvailable(member)) available++;
      else exclude.add(member);
    }
    if (available === 0) {
      // Panic mode: everything looks down, so health is not trusted; only tried members stay out.
      this.counters.panics++;
      exclude.clear();
      if (tried !== undefined) for (const member of tried) exclude.add(member);
    }
    let capped = 0;
    for (const member of this.list) {
      if (!exclude.has(member) && member.pending >= this.maxRequestsPerMember) {
        exclude.add(member);
        capped++;
      }
    }
    const picked = this.balancer.pick(this.list, key, exclude) as PoolMember | undefined;
    if (picked === undefined && capped > 0 && tried === undefined) {
      this.counters.overloaded++;
      throw new UpstreamError('UPSTREAM_OVERLOADED', `every origin is at its limit of ${this.maxRequestsPerMember} requests in flight`, { retryable: false });
    }
    return picked;
  }

  private isAvailable(member: PoolMember): boolean {
    if (this.health !== undefined && !this.health.isHealthy(member.url)) return false;
    return !(this.outliers?.isEjected(member.id) ?? false);
  }

  /** Per-member state for the admin API and metrics. */
  members(): OriginPoolMemberState[] {
    const outlier = new Map((this.outliers?.state() ?? []).map((s) => [s.id, s]));
    return this.list.map((member) => {
      const o = outlier.get(member.id);
      return {
        url: member.url,
        weight: member.weight,
        healthy: this.health?.isHealthy(member.url) ?? true,
        ejected: o?.ejected ?? false,
        ejectedUntil: o?.ejectedUntil ?? null,
        pending: member.pending,
        ejections: o?.ejections ?? 0,
        consecutive5xx: o?.consecutive5xx ?? 0,
        consecutiveConnectFailures: o?.consecutiveConnectFailures ?? 0,
      };
    });
  }

  /** Members taking requests: healthy by the active checks and not ejected. */
  memberHealth(): MemberHealth[] {
    return this.members().map((m) => ({ member: m.url, healthy: m.healthy && !m.ejected }));
  }

  stats(): OriginPoolStats {
    return { ...this.counters };
  }

  /** Probes every member now (when active health checks are on); for tests and the admin API. */
  async checkHealth(): Promise<void> {
    await this.health?.checkNow();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.health?.stop();
    await Promise.all(this.list.filter((m) => m.owned).map((m) => m.upstream.close()));
  }
}

function onceClosed(body: Readable, callback: () => void): void {
  if (body.destroyed || body.closed) {
    callback();
    return;
  }
  body.once('close', callback);
}
