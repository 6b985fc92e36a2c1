/**
 * What the primary and its workers say to each other over the node:cluster IPC channel. Every
 * question carries an id; its answer carries the same id.
 */
import { join } from 'node:path';
import type { Config } from '../config/config.js';
import type { Grant } from '../edge/rate-limit/gcra.js';
import type { LeaseRequest } from '../edge/rate-limit/limiter.js';
import type { NodeSnapshot } from '../pipeline/node-server.js';
import type { PurgeRequest } from '../pipeline/purge.js';
import type { StoredVariant } from '../storage/cache-store.js';

/** Environment a worker is forked with. */
export const WORKER_ENV = {
  index: 'OUTPOST_WORKER_INDEX',
  count: 'OUTPOST_WORKER_COUNT',
  runDir: 'OUTPOST_RUN_DIR',
  /** The config the primary validated (JSON): a worker forked after a reload runs the reloaded one. */
  config: 'OUTPOST_WORKER_CONFIG',
} as const;

/** A worker's disk shard. */
export function shardDir(dataDir: string, index: number): string {
  return join(dataDir, `worker-${index}`);
}

export type WorkerMessage =
  /** The shard is open; the primary answers with `go` and the purges it missed while down. */
  | { type: 'store-open'; id: number }
  | { type: 'ready'; url: string; tlsUrl?: string }
  /** The worker cannot start (bad shard, port in use): the node stops with this message. */
  | { type: 'fatal'; message: string }
  /** A purge the worker needs node-wide (§4.4 invalidation); answered with `purged`. */
  | { type: 'purge'; id: number; request: PurgeRequest }
  | { type: 'purge-done'; id: number; affected: number; error?: string }
  | { type: 'stats-reply'; id: number; stats: NodeSnapshot }
  | { type: 'inspect-reply'; id: number; variants: StoredVariant[] }
  /** Rate-limit tokens for a bucket: the primary holds every bucket of the node (node-wide limits). */
  | { type: 'rate-lease'; id: number; request: LeaseRequest }
  /** A reload applied, or why it was not. */
  | { type: 'reloaded'; error?: string };

export type PrimaryMessage =
  /** `ticketKeys`: the node's TLS session ticket key (base64). */
  | { type: 'go'; id: number; purges: PurgeRequest[]; ticketKeys: string }
  /** A new TLS session ticket key for every worker (rotation). */
  | { type: 'ticket-keys'; keys: string }
  /**
   * `memoryOnly`: the second pass of a node-wide purge, after every worker applied the first: each
   * worker drops copies it took from an owner that had not purged yet, and refuses copies in flight.
   */
  | { type: 'purge'; id: number; request: PurgeRequest; memoryOnly?: boolean }
  | { type: 'purged'; id: number; affected: number; error?: string }
  | { type: 'rate-grant'; id: number; grant: Grant }
  /** `metrics`: include the worker's registry (for /metrics; /stats and /readyz need no gauges run). */
  | { type: 'stats'; id: number; metrics?: boolean }
  /** The stored variants of a URL (its cache key) in this worker's tiers. */
  | { type: 'inspect'; id: number; url: string }
  /** SIGHUP: the config the primary re-read and validated, its live options to apply. */
  | { type: 'reload'; config: Config }
  | { type: 'shutdown' };
