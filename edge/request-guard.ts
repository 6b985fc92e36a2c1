/**
 * The edge's requestFilter phase (DESIGN.md): the WAF, then the rate limits, before the cache
 * key is computed. A blocked or limited request never reaches the cache or the upstream. Both
 * are compiled per config and swapped whole on SIGHUP; the limiter (its buckets, its Redis
 * connection) lives as long as the node.
 */
import type { Logger } from 'pino';
import type { Config } from '../config/config.js';
import type { RequestFilter } from '../pipeline/exchange.js';
import type { Metrics } from '../pipeline/metrics.js';
import type { RequestGuard } from '../pipeline/node-server.js';
import { LocalLimiter, SharedLimiter, type Limiter } from './rate-limit/limiter.js';
import { RateLimits } from './rate-limit/rate-limits.js';
import { RedisLimiter } from './rate-limit/redis-limiter.js';
import { Waf } from './waf/waf.js';
import { WafView } from './waf/waf-view.js';

export interface GuardOptions {
  logger: Logger;
  metrics: Metrics;
  /** Node-wide decisions: a worker's leased limiter; default: this process's own tables. */
  nodeLimiter?: Limiter & { readonly size: number };
}

export class EdgeGuard implements RequestGuard {
  private waf: Waf | undefined;
  private limits: RateLimits | undefined;
  private readonly limiter: Limiter;
  private readonly redis: RedisLimiter | undefined;

  constructor(
    config: Readonly<Config>,
    private readonly options: GuardOptions,
  ) {
    const { logger, metrics } = options;
    const local = options.nodeLimiter ?? new LocalLimiter(config.rateLimitKeys);
    if (config.rateLimitStore !== '') {
      const redis = (this.redis = new RedisLimiter({ url: config.rateLimitStore, logger, failMode: config.rateLimitRedisFail, timeoutMs: config.rateLimitRedisTimeoutMs }));
      this.limiter = new SharedLimiter(redis, local);
      metrics.counterFrom('rate_limit_decisions_total', 'rate-limit decisions by where they were made: redis, or the fallback while Redis was slow or down', ['by'], () => [
        [{ by: 'redis' }, redis.counts.redis],
        [{ by: 'fallback' }, redis.counts.fallback],
      ]);
      metrics.counterFrom('rate_limit_redis_outages_total', 'times Redis was lost (slow or down) and decisions fell back', [], () => [[{}, redis.counts.outages]]);
    } else this.limiter = local;
    metrics.gauge('rate_limit_buckets', 'rate-limit buckets held in this process', [], () => [[{}, local.size]]);
    this.reconfigure(config);
  }

  /**
   * The WAF's rules on the request head, then the limits, then (for a request with a body) the
   * WAF's body phase: a flood of slow bodies is counted before any body is read.
   */
  readonly filter: RequestFilter = (x) => {
    const waf = this.waf;
    const limits = this.limits;
    const view = waf === undefined ? undefined : new WafView(x);
    const head = waf === undefined ? false : waf.head(x, view!);
    if (head === true) return true;
    const limited = limits === undefined ? false : limits.filter(x);
    if (head === false || limited === true) return limited;
    if (limited === false) return waf!.body(x, view!);
    return limited.then((done) => done || waf!.body(x, view!));
  };

  reconfigure(config: Readonly<Config>): void {
    const waf = new Waf(config, this.options.logger, this.options.metrics);
    const limits = new RateLimits(config, this.limiter, this.options.metrics);
    this.waf = waf.active ? waf : undefined;
    this.limits = limits.limits.length > 0 ? limits : undefined;
  }

  async close(): Promise<void> {
    await this.redis?.close();
  }
}
