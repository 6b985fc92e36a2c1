/**
 * Runs a cache pipeline behind a node:http server (DESIGN.md phase "accept"): the part the edge
 * and the shield share. Malformed requests get a 4xx and the node keeps serving; SIGTERM-style
 * shutdown stops accepting, finishes requests in flight, then closes the upstream and the store.
 */
import { createServer, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Logger } from 'pino';
import type { Config } from '../config/config.js';
import type { CacheStore } from '../storage/cache-store.js';
import { rmSync } from 'node:fs';
import { CachePipeline, type PipelineSettings, type RequestFilter, type WorkerRouting } from './cache-pipeline.js';
import { Metrics } from './metrics.js';
import type { Upstream } from './upstream.js';

export interface RunningNode {
  readonly server: Server;
  readonly pipeline: CachePipeline;
  readonly store: CacheStore;
  readonly metrics: Metrics;
  /** http://host:port the node listens on. */
  readonly url: string;
  /** Stops accepting, finishes requests in flight (up to shutdownTimeoutMs), closes upstream and store. */
  close(): Promise<void>;
}

export interface NodeOptions {
  config: Readonly<Config>;
  upstream: Upstream;
  store: CacheStore;
  logger: Logger;
  filters?: RequestFilter[];
  /** A worker of a multi-worker node: key ownership and the hop to owners (issue 9). */
  routing?: WorkerRouting;
  /** A worker's Unix socket, where the other workers send requests for keys it owns. */
  internalSocket?: string;
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
    cacheSetCookiePaths: config.cacheSetCookiePaths,
    trustForwardedFrom: config.trustForwardedFrom,
    cacheStatusKey: config.cacheStatusKey,
    accessLog: config.accessLog,
  };
}

export async function startNode(options: NodeOptions): Promise<RunningNode> {
  const { config, upstream, store, logger } = options;
  const metrics = new Metrics();
  const pipeline = new CachePipeline({
    settings: pipelineSettings(config),
    store,
    upstream,
    logger,
    metrics,
    filters: options.filters ?? [],
    ...(options.routing ? { routing: options.routing } : {}),
  });
  // Open connections (tracked per connection, not per request), so shutdown can reach the
  // response each one is writing and mark it Connection: close.
  const connections = new Set<Socket>();
  const servedBy = config.servedBy ? (options.routing === undefined ? config.nodeName : `${config.nodeName}/worker-${options.routing.ownership.self}`) : undefined;
  let shuttingDown = false;
  const server = createServer(
    {
      keepAliveTimeout: 5_000,
      headersTimeout: 20_000,
      requestTimeout: 120_000,
      maxHeaderSize: 16 * 1024,
    },
    (req, res) => {
      if (shuttingDown) res.shouldKeepAlive = false;
      if (servedBy !== undefined) res.setHeader('x-served-by', servedBy);
      pipeline.handle(req, res);
    },
  );
  server.on('connection', (socket: Socket) => {
    connections.add(socket);
    socket.once('close', () => connections.delete(socket));
  });
  server.on('clientError', (error: NodeJS.ErrnoException, socket: Socket) => {
    metrics.inc('client_errors_total', 'malformed requests answered with a 4xx', { code: error.code ?? 'unknown' });
    if (!socket.writable || (error as { bytesParsed?: number }).bytesParsed === undefined) {
      socket.destroy();
      return;
    }
    const tooLarge = error.code === 'HPE_HEADER_OVERFLOW';
    const status = tooLarge ? '431 Request Header Fields Too Large' : '400 Bad Request';
    const body = `${status}: ${tooLarge ? 'request headers exceed 16 KiB' : 'malformed request'}\n`;
    socket.end(`HTTP/1.1 ${status}\r\nContent-Type: text/plain\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(config.listen.port, config.listen.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const internal = options.internalSocket === undefined ? undefined : await listenInternal(options.internalSocket, pipeline);
  const address = server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  let closing: Promise<void> | undefined;
  return {
    server,
    pipeline,
    store,
    metrics,
    url: `http://${host}:${address.port}`,
    close: () => {
      if (!shuttingDown) {
        shuttingDown = true;
        // Requests in flight finish, but their connections are not kept alive for more.
        for (const socket of connections) {
          const res = (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage;
          if (res && !res.headersSent) res.shouldKeepAlive = false;
        }
        // Connections whose response already went out close as soon as they turn idle.
        server.keepAliveTimeout = 1;
        if (internal) internal.keepAliveTimeout = 1;
      }
      return (closing ??= shutdown(server, internal, pipeline, upstream, store, config.shutdownTimeoutMs));
    },
  };
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

async function shutdown(server: Server, internal: Server | undefined, pipeline: CachePipeline, upstream: Upstream, store: CacheStore, timeoutMs: number): Promise<void> {
  const servers = internal ? [server, internal] : [server];
  const closed = Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
  for (const s of servers) s.closeIdleConnections();
  const timer = setTimeout(() => {
    for (const s of servers) s.closeAllConnections();
  }, timeoutMs);
  timer.unref();
  await closed;
  clearTimeout(timer);
  await pipeline.drain();
  await upstream.close();
  await store.close();
}
