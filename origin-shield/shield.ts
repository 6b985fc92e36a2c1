/**
 * The origin-shield entry point: the same cache pipeline as the edge, with an origin pool
 * (balancer, health checks, outlier ejection, retries, circuit breaking) as its upstream.
 * Routes in the config file send chosen hosts and path prefixes to pools of their own.
 */
import type { Config, Route } from '../config/config.js';
import { upstreamTimeouts, type StartOptions } from '../edge/edge.js';
import { healthFilter } from '../pipeline/health-filter.js';
import { createLogger } from '../pipeline/logger.js';
import { startNode, type RunningNode } from '../pipeline/node-server.js';
import type { HealthReporting, MemberHealth } from '../pipeline/node-upstream.js';
import type { Upstream, UpstreamRequest, UpstreamResponse } from '../pipeline/upstream.js';
import { openStore } from '../storage/open-store.js';
import { OriginPool } from './origin-pool.js';

export function originPool(config: Readonly<Config>, origins: readonly string[]): OriginPool {
  return new OriginPool({
    members: origins,
    balancer: config.balance,
    upstream: upstreamTimeouts(config),
    healthCheck: config.healthCheckPath
      ? {
          path: config.healthCheckPath,
          intervalMs: config.healthCheckIntervalMs,
          timeoutMs: config.healthCheckTimeoutMs,
          healthyThreshold: config.healthyThreshold,
          unhealthyThreshold: config.unhealthyThreshold,
        }
      : false,
    outlierDetection: {
      consecutive5xx: config.outlierConsecutive5xx,
      consecutiveConnectFailures: config.outlierConsecutiveConnectFailures,
      baseEjectionMs: config.outlierBaseEjectionMs,
      maxEjectionPercent: config.outlierMaxEjectionPercent,
    },
    retryBudget: { budgetPercent: config.retryBudgetPercent },
    maxAttempts: config.maxAttempts,
    maxRequestsPerMember: config.maxRequestsPerOrigin,
  });
}

/** Picks the pool for a request: the first route whose host and path prefix match, else the default pool. */
export class RoutedUpstream implements Upstream {
  constructor(
    private readonly routes: ReadonlyArray<{ route: Route; pool: Upstream }>,
    private readonly fallback: Upstream | undefined,
  ) {}

  request(request: UpstreamRequest): Promise<UpstreamResponse> {
    const host = String(request.headers['host'] ?? '').toLowerCase().replace(/:\d+$/, '');
    for (const { route, pool } of this.routes) {
      if (route.host !== undefined && route.host.replace(/:\d+$/, '') !== host) continue;
      if (route.pathPrefix !== undefined && !request.path.startsWith(route.pathPrefix)) continue;
      return pool.request(request);
    }
    if (this.fallback) return this.fallback.request(request);
    return Promise.reject(new Error(`no route for host ${host} and path ${request.path}`));
  }

  /** Every pool's members (a member in several pools is listed per pool). */
  memberHealth(): MemberHealth[] {
    const pools = [...this.routes.map((r) => r.pool), ...(this.fallback ? [this.fallback] : [])];
    return pools.flatMap((pool) => (pool as Partial<HealthReporting>).memberHealth?.() ?? []);
  }

  async close(): Promise<void> {
    await Promise.all([...this.routes.map((r) => r.pool.close()), this.fallback?.close()]);
  }
}

export function shieldUpstream(config: Readonly<Config>): Upstream {
  if (config.origins.length === 0 && config.routes.length === 0) throw new Error('the shield needs at least one --origin (or routes in the config file)');
  const fallback = config.origins.length > 0 ? originPool(config, config.origins) : undefined;
  if (config.routes.length === 0) return fallback!;
  return new RoutedUpstream(
    config.routes.map((route) => ({ route, pool: originPool(config, route.origins) })),
    fallback,
  );
}

export async function startShield(config: Readonly<Config>, options: StartOptions = {}): Promise<RunningNode> {
  const logger = options.logger ?? createLogger(config.logLevel, config.nodeName);
  const store = options.store ?? (await openStore(config));
  return startNode({
    config,
    makeUpstream: shieldUpstream,
    store,
    logger,
    filters: [healthFilter],
    routing: options.routing,
    internalSocket: options.internalSocket,
    ...(options.ticketKeys ? { ticketKeys: options.ticketKeys } : {}),
  });
}
