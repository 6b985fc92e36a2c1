/**
 * The edge (PoP) entry point: the cache pipeline in front of the shield tier. With several
 * upstreams, cache keys are hashed onto a ring of shields. TLS, PROXY protocol, WAF and rate
 * limits plug in here as listeners and request filters (DESIGN.md phases accept, identify,
 * requestFilter).
 */
import type { Logger } from 'pino';
import type { Config } from '../config/config.js';
import { healthFilter, HEALTH_PATH } from '../pipeline/health-filter.js';
import { EdgeGuard, type GuardOptions } from './request-guard.js';
import { HttpUpstream } from '../pipeline/http-upstream.js';
import { upstreamTls } from './upstream-tls.js';
import { createLogger } from '../pipeline/logger.js';
import { startNode, type RunningNode } from '../pipeline/node-server.js';
import type { Upstream } from '../pipeline/upstream.js';
import type { WorkerRouting } from '../pipeline/cache-pipeline.js';
import type { CacheStore } from '../storage/cache-store.js';
import { openStore } from '../storage/open-store.js';
import { ShieldRing } from '../origin-shield/shield-ring.js';

export interface StartOptions {
  logger?: Logger;
  /** A store to use instead of the configured tiered store (tests, embedding, a worker's shard). */
  store?: CacheStore;
  /** A worker of a multi-worker node: key ownership and the hop to owners (cluster/worker.ts). */
  routing?: WorkerRouting;
  /** A worker's own Unix socket, for requests the other workers send it as a key's owner. */
  internalSocket?: string;
  /** TLS session ticket key shared by the node's workers (from the primary). */
  ticketKeys?: Buffer;
  /** A worker's node-wide rate limiter (tokens leased from the primary). */
  nodeLimiter?: GuardOptions['nodeLimiter'];
}

/** Pool size, timeouts and TLS of every upstream connection (shields from the edge, origins from the shield). */
export function upstreamTimeouts(config: Readonly<Config>) {
  return {
    connections: config.upstreamConnections,
    connectTimeoutMs: config.connectTimeoutMs,
    headersTimeoutMs: config.firstByteTimeoutMs,
    bodyTimeoutMs: config.idleBodyTimeoutMs,
    tls: upstreamTls(config),
  };
}

/** The edge's upstream: one shield or origin, or a consistent-hash ring of shields. */
export function edgeUpstream(config: Readonly<Config>): Upstream {
  if (config.upstreams.length === 0) throw new Error('the edge needs at least one --upstream');
  if (config.upstreams.length === 1) return new HttpUpstream({ url: config.upstreams[0]!, ...upstreamTimeouts(config) });
  // Every edge given the same list maps a key to the same shield; a failing shield is skipped until healthy.
  return new ShieldRing({
    shields: config.upstreams,
    upstream: upstreamTimeouts(config),
    healthCheck: { path: HEALTH_PATH, intervalMs: 2_000, timeoutMs: 1_000, healthyThreshold: 1, unhealthyThreshold: 2 },
  });
}

export async function startEdge(config: Readonly<Config>, options: StartOptions = {}): Promise<RunningNode> {
  const logger = options.logger ?? createLogger(config.logLevel, config.nodeName);
  const store = options.store ?? (await openStore(config));
  return startNode({
    config,
    makeUpstream: edgeUpstream,
    store,
    logger,
    filters: [healthFilter],
    guard: (metrics) => new EdgeGuard(config, { logger, metrics, ...(options.nodeLimiter ? { nodeLimiter: options.nodeLimiter } : {}) }),
    routing: options.routing,
    internalSocket: options.internalSocket,
    ...(options.ticketKeys ? { ticketKeys: options.ticketKeys } : {}),
  });
}
