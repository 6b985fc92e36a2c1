/**
 * The edge's upstream: shields on a consistent-hash ring keyed by the cache key, so each object
 * is fetched from the origins once per shield tier. A shield that fails at the connection level
 * (refused, reset, connect timeout) is marked down for `downMs`, and one that fails active health
 * checks is skipped: its keys go to the next shield clockwise (the same fallback on every edge),
 * and come back when it recovers. Errors the shield *answers* with (5xx, 504 from a slow origin)
 * are passed through untouched — they say nothing about the shield itself.
 *
 * When every shield is down the key's owner is tried anyway (panic), so a single-shield ring is
 * simply that shield.
 *
 * A failed request gets one retry on the next shield, with no retry budget: a request that never
 * left (`UpstreamError.neverSent`: refused, connect timeout) is always retried, as in the origin
 * pool; so is a reset of an idempotent request without a body, since the ring has no budget.
 */
import type { MemberHealth } from '../pipeline/node-upstream.js';
import { EventEmitter } from 'node:events';
import { HttpUpstream, toUpstreamError, type HttpUpstreamOptions } from '../pipeline/http-upstream.js';
import { UpstreamError, type Upstream, type UpstreamRequest, type UpstreamResponse } from '../pipeline/upstream.js';
import { HashRing } from './hash-ring.js';
import { HealthChecker, type HealthChange, type HealthCheckOptions } from './health-check.js';

export interface ShieldConfig {
  /** Base URL of the shield, e.g. http://10.0.0.5:8080. Also its identity on the ring. */
  url: string;
  /** A ready upstream for this shield (tests, sharing); not closed by the ring. Default: a new HttpUpstream. */
  upstream?: Upstream;
}

export interface ShieldRingOptions {
  shields: readonly (string | ShieldConfig)[];
  /** Options for the HttpUpstream built per shield. */
  upstream?: Omit<HttpUpstreamOptions, 'url'>;
  /** Active health checks against each shield; off unless given. */
  healthCheck?: HealthCheckOptions | false;
  /** How long a shield stays down after a connection-level failure. Default 5000. */
  downMs?: number;
  /** Virtual nodes per shield. Default 160. Must match on every edge. */
  vnodesPerMember?: number;
  /** Clock in ms. Default Date.now. */
  now?: () => number;
}

export const SHIELD_RING_DEFAULTS = { downMs: 5_000 } as const;

export interface ShieldState {
  url: string;
  /** Active health check verdict (true when health checks are off). */
  healthy: boolean;
  /** End of the passive down time (ms since epoch), or null. */
  downUntil: number | null;
  /** Requests in flight through the ring. */
  pending: number;
  /** Connection-level failures over the ring's life. */
  failures: number;
}

export interface ShieldDownEvent {
  url: string;
  until: number;
  reason: string;
}

export interface ShieldRing {
  on(event: 'down', listener: (event: ShieldDownEvent) => void): this;
  on(event: 'health', listener: (change: HealthChange) => void): this;
  once(event: 'down', listener: (event: ShieldDownEvent) => void): this;
  once(event: 'health', listener: (change: HealthChange) => void): this;
}

class Shield {
  readonly id: string;
  downUntil = 0;
  pending = 0;
  failures = 0;
  constructor(readonly url: string, readonly upstream: Upstream, readonly owned: boolean) {
    this.id = url;
  }
}

export class ShieldRing extends EventEmitter implements Upstream {
  private readonly ring: HashRing<Shield>;
  private readonly shields: readonly Shield[];
  private readonly health: HealthChecker | undefined;
  private readonly downMs: number;
  private readonly now: () => number;
  private closed = false;

  constructor(options: ShieldRingOptions) {
    super();
    if (options.shields.length === 0) throw new Error('shield ring needs at least one shield');
    this.shields = options.shields.map((entry) => {
      const config = typeof entry === 'string' ? { url: entry } : entry;
      const url = new URL(config.url).origin;
      const upstream = config.upstream ?? new HttpUpstream({ ...options.upstream, url });
      return new Shield(url, upstream, config.upstream === undefined);
    });
    // HashRing rejects duplicate urls.
    this.ring = new HashRing(this.shields, { vnodesPerMember: options.vnodesPerMember });
    this.downMs = options.downMs ?? SHIELD_RING_DEFAULTS.downMs;
    this.now = options.now ?? Date.now;
    if (options.healthCheck) {
      this.health = new HealthChecker(this.shields.map((s) => s.url), { ...(options.upstream?.tls ? { tls: options.upstream.tls } : {}), ...options.healthCheck });
      this.health.on('change', (change) => this.emit('health', change));
      this.health.start();
    }
  }

  /** The shield that owns `key` when all are up (for logs and debugging). */
  ownerOf(key: string): string {
    return this.ring.lookup(key)!.url;
  }

  async request(request: UpstreamRequest): Promise<UpstreamResponse> {
    if (this.closed) throw new UpstreamError('UPSTREAM_CONNECT', 'shield ring is closed', { retryable: false });
    const first = this.choose(request.cacheKey, undefined);
    try {
      return await this.send(first, request);
    } catch (error) {
      const failure = error as UpstreamError;
      // One retry, on the next shield, when nothing can have been lost: no body to replay and a
      // failure `toUpstreamError` marked retryable (never sent, or a reset of an idempotent request).
      // Never rationed: a never-sent retry repeats nothing, and there is at most one per request.
      if (!failure.retryable || request.body !== null || request.signal?.aborted || !isConnectLevel(failure)) throw failure;
      const next = this.choose(request.cacheKey, first);
      if (next === undefined) throw failure;
      return await this.send(next, request);
    }
  }

  private async send(shield: Shield, request: UpstreamRequest): Promise<UpstreamResponse> {
    shield.pending++;
    try {
      const response = await shield.upstream.request(request);
      shield.downUntil = 0; // it answered: whatever took it down has passed
      let done = false;
      const release = () => {
        if (!done) {
          done = true;
          shield.pending--;
        }
      };
      if (response.body.destroyed) release();
      else response.body.once('close', release);
      return response;
    } catch (error) {
      shield.pending--;
      const failure = toUpstreamError(error, shield.url, request.idempotent);
      if (!request.signal?.aborted && isConnectLevel(failure)) {
        shield.failures++;
        shield.downUntil = this.now() + this.downMs;
        this.emit('down', { url: shield.url, until: shield.downUntil, reason: failure.message } satisfies ShieldDownEvent);
      }
      throw failure;
    }
  }

  /**
   * The first shield clockwise from the key that is up, other than `skip`. With `skip` (a retry)
   * and every other shield down, the next one on the ring is tried anyway; without it, the owner.
   */
  private choose(key: string, skip: undefined): Shield;
  private choose(key: string, skip: Shield): Shield | undefined;
  private choose(key: string, skip: Shield | undefined): Shield | undefined {
    const now = this.now();
    let fallback: Shield | undefined;
    for (const shield of this.ring.walk(key)) {
      if (shield === skip) continue;
      fallback ??= shield;
      if (this.isUp(shield, now)) return shield;
    }
    return fallback;
  }

  private isUp(shield: Shield, now: number): boolean {
    return now >= shield.downUntil && (this.health?.isHealthy(shield.url) ?? true);
  }

  members(): ShieldState[] {
    const now = this.now();
    return this.shields.map((shield) => ({
      url: shield.url,
      healthy: this.health?.isHealthy(shield.url) ?? true,
      downUntil: shield.downUntil > now ? shield.downUntil : null,
      pending: shield.pending,
      failures: shield.failures,
    }));
  }

  /** Shields taking requests: healthy by the active checks and not passively marked down. */
  memberHealth(): MemberHealth[] {
    return this.members().map((m) => ({ member: m.url, healthy: m.healthy && m.downUntil === null }));
  }

  /** Probes every shield now (when active health checks are on). */
  async checkHealth(): Promise<void> {
    await this.health?.checkNow();
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    this.health?.stop();
    await Promise.all(this.shields.filter((s) => s.owned).map((s) => s.upstream.close()));
  }
}

/** Failures that say the shield itself is unreachable, as opposed to an answer it relayed. */
function isConnectLevel(failure: UpstreamError): boolean {
  // A connect timeout is never-sent; header/body timeouts may be a slow origin behind the shield.
  return failure.code === 'UPSTREAM_CONNECT' || failure.neverSent;
}
