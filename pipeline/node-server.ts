/**
 * Runs a cache pipeline behind a node:http server (DESIGN.md phase "accept"): the part the edge
 * and the shield share. Malformed requests get a 4xx and the node keeps serving; SIGTERM-style
 * shutdown stops accepting, finishes requests in flight, then closes the upstream and the store.
 */
import { createServer, type Server } from 'node:http';
import type { Socket } from 'node:net';
import type { Logger } from 'pino';
import type { Config } from '../config/config.js';
import type { CacheStore, StoredVariant, TierStats } from '../storage/cache-store.js';
import type { DiskReport } from '../storage/tiered-store.js';
import { rmSync } from 'node:fs';
import { CachePipeline, type CacheOutcome, type PipelineSettings, type RequestFilter, type WorkerRouting } from './cache-pipeline.js';
import { CertificateStore, certificatePairs } from '../edge/tls/certificates.js';
import { Listeners } from './listeners.js';
import { Metrics, type MetricsJson } from './metrics.js';
import { NodeUpstream, type MemberHealth } from './node-upstream.js';
import type { Upstream } from './upstream.js';

/** What a running node reports: for /stats, /readyz and /metrics (summed over workers by the primary). */
export interface NodeSnapshot {
  /** Only when asked for (/metrics): collecting it runs every gauge. */
  metrics?: MetricsJson;
  requests: Record<CacheOutcome, number>;
  collapsed: number;
  tiers: Record<'memory' | 'disk', TierStats>;
  /** The disk tier's state (degraded mode, backpressure), when the store has one. */
  disk?: DiskReport;
  fillsInFlight: number;
  upstreams: MemberHealth[];
}

/** What a node with no pipeline yet (a worker opening its shard) reports: its store alone. */
export function storeSnapshot(store: CacheStore): NodeSnapshot {
  return { requests: {} as NodeSnapshot['requests'], collapsed: 0, tiers: tierStats(store), ...diskOf(store), fillsInFlight: 0, upstreams: [] };
}

export interface RunningNode {
  /** The accept phase: plain and TLS listeners. */
  readonly listeners: Listeners;
  readonly pipeline: CachePipeline;
  readonly store: CacheStore;
  readonly metrics: Metrics;
  readonly upstream: NodeUpstream;
  /** http://host:port the node listens on. */
  readonly url: string;
  /** https://host:port of the TLS listener, when there is one. */
  readonly tlsUrl?: string;
  snapshot(options?: { metrics?: boolean }): Promise<NodeSnapshot>;
  /** The stored variants of a URL given as its cache key. */
  inspect(url: string): Promise<StoredVariant[]>;
  /**
   * SIGHUP: applies a new config's live options (config/reload.ts decides which) to requests
   * that start from now on; new upstreams replace the old ones once their requests finish.
   */
  reconfigure(config: Readonly<Config>): void;
  /** Stops accepting, finishes requests in flight (up to shutdownTimeoutMs), closes upstream and store. */
  close(): Promise<void>;
}

/** Request filters that follow the config (the edge's WAF and rate limits): rebuilt on SIGHUP, closed on shutdown. */
export interface RequestGuard {
  readonly filter: RequestFilter;
  reconfigure(config: Readonly<Config>): void;
  close(): Promise<void>;
}

export interface NodeOptions {
  config: Readonly<Config>;
  /** Builds the upstream from a config: at start, and again when a reload changes upstream options. */
  makeUpstream: (config: Readonly<Config>) => Upstream;
  store: CacheStore;
  logger: Logger;
  filters?: RequestFilter[];
  /** Built once the node's metrics exist; its filter runs after `filters`. */
  guard?: (metrics: Metrics) => RequestGuard;
  /** A worker of a multi-worker node: key ownership and the hop to owners (issue 9). */
  routing?: WorkerRouting;
  /** A worker's Unix socket, where the other workers send requests for keys it owns. */
  internalSocket?: string;
  /** Session ticket keys shared by the node's workers. */
  ticketKeys?: Buffer;
}

export function pipelineSettings(config: Readonly<Config>): PipelineSettings {
  return {
    role: config.role,
    nodeName: config.nodeName,
    key: { sortQuery: config.sortQuery, dropQueryParams: config.dropQueryParams },
    freshness: {
      heuristicFraction: config.heuristicFraction,
      heuristicMaxSec: config.heuristicMaxSec,
      defaultTtlSec: config.defaultTtlSec,
      defaultGraceSec: config.defaultGraceSec,
      defaultStaleIfErrorSec: config.defaultStaleIfErrorSec,
      keepSec: config.keepSec,
    },
    storeStatuses: config.storeStatuses.length > 0 ? new Set(config.storeStatuses) : undefined,
    lockWaitMs: config.lockWaitMs,
    hitForMissSec: config.hitForMissSec,
    maxVariantsPerUrl: config.maxVariantsPerUrl,
    maxObjectSize: config.maxObjectSize,
    memoryMaxObjectSize: config.memoryMaxObjectSize,
    fillBufferSize: config.fillBufferSize,
    sliceSize: config.sliceSize,
    cacheSetCookiePaths: config.cacheSetCookiePaths,
    trustForwardedFrom: config.trustForwardedFrom,
    cacheStatusKey: config.cacheStatusKey,
    accessLog: config.accessLog,
  };
}

export async function startNode(options: NodeOptions): Promise<RunningNode> {
  const { store, logger } = options;
  let config = options.config;
  if (config.upstreamInsecure) logger.warn('--upstream-insecure: the certificates of https:// upstreams are NOT verified');
  const metrics = new Metrics({ detailed: config.metrics, labels: { role: config.role } });
  const upstream = new NodeUpstream(options.makeUpstream(config), metrics);
  registerGauges(metrics, store, upstream, () => pipeline.fills.inFlight);
  const guard = options.guard?.(metrics);
  const pipeline = new CachePipeline({
    settings: pipelineSettings(config),
    store,
    upstream,
    logger,
    metrics,
    filters: [...(options.filters ?? []), ...(guard ? [guard.filter] : [])],
    ...(options.routing ? { routing: options.routing } : {}),
  });
  const servedBy = config.servedBy ? (options.routing === undefined ? config.nodeName : `${config.nodeName}/worker-${options.routing.ownership.self}`) : undefined;
  let shuttingDown = false;
  // Re-read when their files change (and on SIGHUP); the listener's default context follows.
  const certificates = config.listenTls === undefined ? undefined : new CertificateStore(certificatePairs(config), { logger, onReload: () => listeners.refreshCertificates() });
  // accept: the listeners hand every request, HTTP/1.1 or HTTP/2, plain or TLS, to the pipeline.
  const listeners = new Listeners({
    config,
    logger,
    metrics,
    ...(certificates ? { certificates } : {}),
    ...(options.ticketKeys ? { ticketKeys: options.ticketKeys } : {}),
    handle: (req, res) => {
      if (shuttingDown) res.shouldKeepAlive = false;
      if (servedBy !== undefined) res.setHeader('x-served-by', servedBy);
      pipeline.handle(req, res);
    },
  });
  for (const server of [listeners.http, listeners.secure]) server?.on('clientError', (error: NodeJS.ErrnoException, socket: Socket) => answerClientError(error, socket, metrics, config.clientHeaderMaxBytes));
  await listeners.listen();
  const internal = options.internalSocket === undefined ? undefined : await listenInternal(options.internalSocket, pipeline);
  let closing: Promise<void> | undefined;
  return {
    listeners,
    pipeline,
    store,
    metrics,
    upstream,
    url: listeners.plain.url,
    ...(listeners.tls ? { tlsUrl: listeners.tls.url } : {}),
    snapshot: async (options) => ({
      ...(options?.metrics ? { metrics: await metrics.json() } : {}),
      requests: metrics.requestsByOutcome(),
      collapsed: metrics.collapsedRequests(),
      tiers: tierStats(store),
      ...diskOf(store),
      fillsInFlight: pipeline.fills.inFlight,
      upstreams: upstream.memberHealth(),
    }),
    inspect: (url) => store.variants(url),
    reconfigure: (next) => {
      // First what can fail (compiling rules): a reload that throws leaves the node as it was.
      guard?.reconfigure(next);
      certificates?.reload();
      listeners.reconfigure(next);
      if (upstreamChanged(config, next)) upstream.replace(options.makeUpstream(next));
      pipeline.reconfigure(pipelineSettings(next));
      logger.level = next.logLevel;
      config = next;
    },
    close: () => {
      shuttingDown = true;
      return (closing ??= shutdown(listeners, internal, pipeline, upstream, store, config.shutdownTimeoutMs).then(() => {
          certificates?.close();
          return guard?.close();
        }));
    },
  };
}

/** Options the upstream is built from: a reload that changes none of them keeps its pools and health state. */
const UPSTREAM_OPTIONS = [
  'upstreams',
  'origins',
  'routes',
  'balance',
  'upstreamConnections',
  'upstreamCa',
  'upstreamCert',
  'upstreamKey',
  'upstreamInsecure',
  'connectTimeoutMs',
  'firstByteTimeoutMs',
  'idleBodyTimeoutMs',
  'maxRequestsPerOrigin',
  'maxAttempts',
  'retryBudgetPercent',
  'healthCheckPath',
  'healthCheckIntervalMs',
  'healthCheckTimeoutMs',
  'healthyThreshold',
  'unhealthyThreshold',
  'outlierConsecutive5xx',
  'outlierConsecutiveConnectFailures',
  'outlierBaseEjectionMs',
  'outlierMaxEjectionPercent',
] as const satisfies ReadonlyArray<keyof Config>;

function upstreamChanged(a: Readonly<Config>, b: Readonly<Config>): boolean {
  return UPSTREAM_OPTIONS.some((name) => JSON.stringify(a[name]) !== JSON.stringify(b[name]));
}

/** A tiered store reports both tiers; any other store (tests wrap one) is reported as the disk tier. */
function tierStats(store: CacheStore): Record<'memory' | 'disk', TierStats> {
  const tiered = store as Partial<{ tierStats(): Record<'memory' | 'disk', TierStats> }>;
  if (typeof tiered.tierStats === 'function') return tiered.tierStats();
  return { memory: { entries: 0, bytes: 0, evictions: 0 }, disk: { ...store.stats(), evictions: 0 } };
}

/** The disk tier's report of a tiered store (any other store has none). */
function diskOf(store: CacheStore): { disk?: DiskReport } {
  const tiered = store as Partial<{ diskReport(): DiskReport }>;
  return typeof tiered.diskReport === 'function' ? { disk: tiered.diskReport() } : {};
}

/** Point-in-time values read when /metrics is scraped: store tiers, fills, upstream members. */
function registerGauges(metrics: Metrics, store: CacheStore, upstream: NodeUpstream, fillsInFlight: () => number): void {
  const tiers = (pick: (s: TierStats) => number) => Object.entries(tierStats(store)).map(([tier, s]): [{ tier: string }, number] => [{ tier }, pick(s)]);
  metrics.gauge('store_entries', 'entries per cache tier', ['tier'], () => tiers((s) => s.entries));
  metrics.gauge('store_bytes', 'bytes per cache tier (bodies and metadata)', ['tier'], () => tiers((s) => s.bytes));
  metrics.counterFrom('store_evictions_total', 'entries dropped to keep a tier within its size budget', ['tier'], () => tiers((s) => s.evictions));
  const tiered = store as Partial<{ diskReport(): DiskReport }>;
  if (typeof tiered.diskReport === 'function') {
    // One report per scrape, shared by the gauges read in it (dropped on the next turn of the loop).
    let report: DiskReport | undefined;
    const current = (): DiskReport => {
      if (report === undefined) {
        report = tiered.diskReport!();
        setImmediate(() => (report = undefined));
      }
      return report;
    };
    const disk = (pick: (d: DiskReport) => number) => (): Array<[Record<string, string>, number]> => [[{}, pick(current())]];
    metrics.gauge('disk_degraded', 'whether the disk tier is degraded (1): writes go to memory only while it is reopened and probed; with several workers, how many are', [], disk((d) => (d.state === 'degraded' ? 1 : 0)));
    metrics.counterFrom('disk_degraded_total', 'times the disk tier became degraded after a failed write', [], disk((d) => d.degradedEntered));
    metrics.counterFrom('disk_recoveries_total', 'times a degraded disk tier took writes again by itself', [], disk((d) => d.recoveries));
    metrics.counterFrom('disk_degraded_seconds_total', 'time the disk tier spent degraded', [], disk((d) => d.degradedMs / 1000));
    metrics.counterFrom('disk_skipped_writes_total', 'writes that went to memory only: the disk tier was behind or degraded', ['reason'], () => {
      const d = current();
      return [
        [{ reason: 'behind' }, d.skippedBehind],
        [{ reason: 'degraded' }, d.skippedDegraded],
      ];
    });
    metrics.counterFrom('memory_skipped_writes_total', 'fills above 64 KiB that went to disk only: memory writes in flight held their bound', [], disk((d) => d.memorySkippedBusy));
    metrics.counterFrom(
      'memory_admissions_refused_total',
      'fills and disk hits the memory tier turned away (TinyLFU): asked for less often lately than what they would evict; they stay on disk',
      [],
      disk((d) => d.memoryAdmissionsRefused),
    );
    metrics.gauge('memory_pending_bytes', 'body bytes held by memory-tier writes in flight (each body whole until it commits)', [], disk((d) => d.memoryPendingBytes));
    metrics.gauge('disk_pending_writes', 'disk writes in flight (the backpressure bound applies to these)', [], disk((d) => d.pendingWrites));
    metrics.gauge('disk_pending_bytes', 'body bytes held in memory for disk writes in flight', [], disk((d) => d.pendingBytes));
  }
  metrics.gauge('fills_in_flight', 'upstream fetches filling the cache, and their commits', [], () => [[{}, fillsInFlight()]]);
  metrics.gauge(
    'upstream_healthy',
    'whether an upstream member takes requests (1) or not (0); with several workers, the share of workers that see it healthy',
    ['member'],
    () => upstream.memberHealth().map((h) => [{ member: h.member }, h.healthy ? 1 : 0]),
    'average',
  );
}

/**
 * The worker's own Unix socket: requests the other workers send for keys this one owns. A
 * socket file left by a worker that died before it is replaced.
 */
async function listenInternal(path: string, pipeline: CachePipeline): Promise<Server> {
  rmSync(path, { force: true });
  const server = createServer({ keepAliveTimeout: 60_000, headersTimeout: 20_000, requestTimeout: 0, maxHeaderSize: 64 * 1024 }, pipeline.handleInternal);
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(path, () => {
      server.off('error', reject);
      resolve();
    });
  });
  return server;
}

async function shutdown(listeners: Listeners, internal: Server | undefined, pipeline: CachePipeline, upstream: Upstream, store: CacheStore, timeoutMs: number): Promise<void> {
  // Stop accepting, let requests in flight finish without keeping their connections, then close.
  const stopped = listeners.stopAccepting();
  const internalClosed = internal ? new Promise<void>((resolve) => internal.close(() => resolve())) : Promise.resolve();
  if (internal) {
    internal.keepAliveTimeout = 1;
    internal.closeIdleConnections();
  }
  listeners.closeIdle();
  const timer = setTimeout(() => {
    listeners.closeAll();
    internal?.closeAllConnections();
  }, timeoutMs);
  timer.unref();
  await Promise.all([stopped, internalClosed, listeners.drained()]);
  clearTimeout(timer);
  await pipeline.drain();
  await upstream.close();
  await store.close();
}

/** A request node:http could not parse: 431 or 400 and the connection closes; the node keeps serving. */
function answerClientError(error: NodeJS.ErrnoException, socket: Socket, metrics: Metrics, maxHeaderBytes: number): void {
  metrics.inc('client_errors_total', 'malformed requests answered with a 4xx', { code: error.code ?? 'unknown' });
  if (!socket.writable || (error as { bytesParsed?: number }).bytesParsed === undefined) {
    socket.destroy();
    return;
  }
  const tooLarge = error.code === 'HPE_HEADER_OVERFLOW';
  const status = tooLarge ? '431 Request Header Fields Too Large' : '400 Bad Request';
  const body = `${status}: ${tooLarge ? `request headers exceed ${maxHeaderBytes} bytes` : 'malformed request'}\n`;
  socket.end(`HTTP/1.1 ${status}\r\nContent-Type: text/plain\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`);
}
