/**
 * One worker of a multi-worker node (issue 9). It opens its own disk shard (`dataDir/worker-K`),
 * accepts on the public listener it shares with the other workers, listens on its own Unix socket
 * for requests the others send for keys it owns, and answers the primary: purges, stats, reload
 * and shutdown. Signals are the primary's business; a worker acts on its messages only.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { Config } from '../config/config.js';
import type { StartOptions } from '../edge/edge.js';
import type { WorkerRouting } from '../pipeline/cache-pipeline.js';
import { HttpUpstream } from '../pipeline/http-upstream.js';
import { createLogger } from '../pipeline/logger.js';
import { storeSnapshot, type RunningNode } from '../pipeline/node-server.js';
import { purgeStore, type PurgeRequest } from '../pipeline/purge.js';
import { LeasedLimiter } from '../edge/rate-limit/limiter.js';
import { LevelStore } from '../storage/level-store.js';
import { openTieredStore, type TieredStore } from '../storage/tiered-store.js';
import { WORKER_ENV, shardDir, type PrimaryMessage, type WorkerMessage } from './messages.js';
import { Ownership } from './ownership.js';

export type Starter = (config: Readonly<Config>, options: StartOptions) => Promise<RunningNode>;

/** The worker's own Unix socket, where the others reach it as a key's owner. */
export function ownerSocket(runDir: string, index: number): string {
  return join(runDir, `worker-${index}.sock`);
}

/** Longest a request waits for the primary to lease rate-limit tokens. */
const LEASE_TIMEOUT_MS = 250;

/** Hop connections from one worker to another. */
const OWNER_CONNECTIONS = 128;

export async function runWorker(config: Readonly<Config>, start: Starter): Promise<void> {
  const index = Number(process.env[WORKER_ENV.index]);
  const count = Number(process.env[WORKER_ENV.count]);
  const runDir = process.env[WORKER_ENV.runDir]!;
  const logger = createLogger(config.logLevel, config.nodeName).child({ worker: index });
  // Ctrl-C and kill -TERM of the process group reach workers too: the primary decides what happens.
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(signal, () => undefined);
  const send = (message: WorkerMessage): void => {
    if (process.connected) process.send!(message);
  };
  const ownership = new Ownership(index, count);
  // Questions this worker asks the primary, by id.
  const pending = new Map<number, (message: PrimaryMessage) => void>();
  let nextId = 0;
  /** Sends a question; with `timeoutMs`, gives up (rejects) when no answer comes in time. */
  const ask = (message: Extract<WorkerMessage, { id: number }>, timeoutMs?: number): Promise<PrimaryMessage> =>
    new Promise((resolve, reject) => {
      const timer = timeoutMs === undefined ? undefined : setTimeout(() => {
        pending.delete(message.id);
        reject(new Error(`no answer from the primary within ${timeoutMs} ms`));
      }, timeoutMs);
      pending.set(message.id, (answer) => {
        clearTimeout(timer);
        resolve(answer);
      });
      send(message);
    });
  let node: RunningNode | undefined;
  let store: TieredStore | undefined;
  const owners = Array.from(
    { length: count },
    (_, k) =>
      new HttpUpstream({
        url: `http://worker-${k}.outpost`,
        socketPath: ownerSocket(runDir, k),
        connections: OWNER_CONNECTIONS,
        connectTimeoutMs: config.connectTimeoutMs,
        // The owner may wait on its own fill (lockWaitMs) before its upstream answers.
        headersTimeoutMs: config.firstByteTimeoutMs + config.lockWaitMs + 5_000,
        bodyTimeoutMs: config.idleBodyTimeoutMs + 5_000,
        maxHeaderSize: 256 * 1024,
      }),
  );
  const routing: WorkerRouting = {
    ownership,
    owners,
    memoryMaxEntryBytes: Math.min(config.memoryMaxObjectSize, Math.floor(config.memorySize / count)),
    purge: async (request) => {
      const answer = await ask({ type: 'purge', id: ++nextId, request });
      if (answer.type !== 'purged') throw new Error(`unexpected answer ${answer.type}`);
      if (answer.error !== undefined) throw new Error(answer.error);
      return answer.affected;
    },
  };

  // Rate limits are node-wide: the primary holds the buckets and leases this worker tokens.
  const nodeLimiter = new LeasedLimiter({
    maxKeys: config.rateLimitKeys,
    workers: count,
    ask: async (request) => {
      if (!process.connected) throw new Error('the primary is gone');
      // A primary that does not answer in time (stopping, overloaded) must not hold requests: the limiter admits them.
      const answer = await ask({ type: 'rate-lease', id: ++nextId, request }, LEASE_TIMEOUT_MS);
      if (answer.type !== 'rate-grant') throw new Error('no lease from the primary');
      return answer.grant;
    },
  });

  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      if (node) await node.close();
      else await store?.close();
      await Promise.all(owners.map((owner) => owner.close()));
      process.exit(0);
    })());

  process.on('message', (message: PrimaryMessage) => {
    switch (message.type) {
      case 'go':
      case 'purged':
      case 'rate-grant': {
        const resolve = pending.get(message.id);
        pending.delete(message.id);
        resolve?.(message);
        return;
      }
      case 'purge':
        // Purges come once the shard is open (after `store-open`).
        void (message.memoryOnly ? purgeMemory(node, store!, message.request) : node ? node.pipeline.purgeHere(message.request) : purgeStore(store!, message.request)).then(
          (affected) => send({ type: 'purge-done', id: message.id, affected }),
          (error: Error) => send({ type: 'purge-done', id: message.id, affected: 0, error: error.message }),
        );
        return;
      case 'stats':
        (node ? node.snapshot({ metrics: message.metrics }) : Promise.resolve(storeSnapshot(store!))).then(
          (stats) => send({ type: 'stats-reply', id: message.id, stats }),
          (error: Error) => {
            // An answer all the same: the primary's /stats and /readyz must not wait forever.
            logger.warn({ err: error.message }, 'could not take a stats snapshot');
            send({ type: 'stats-reply', id: message.id, stats: storeSnapshot(store!) });
          },
        );
        return;
      case 'inspect':
        store!.variants(message.url).then(
          (variants) => send({ type: 'inspect-reply', id: message.id, variants }),
          (error: Error) => {
            logger.warn({ err: error.message }, 'could not list stored variants');
            send({ type: 'inspect-reply', id: message.id, variants: [] });
          },
        );
        return;
      case 'reload':
        try {
          node?.reconfigure(message.config);
          logger.info('SIGHUP: reloaded');
          send({ type: 'reloaded' });
        } catch (error) {
          send({ type: 'reloaded', error: (error as Error).message });
        }
        return;
      case 'ticket-keys':
        node?.listeners.setTicketKeys(Buffer.from(message.keys, 'base64'));
        return;
      case 'shutdown':
        void stop();
        return;
    }
  });
  // The primary is gone (killed): questions to it go unanswered; finish what is in flight and leave.
  process.on('disconnect', () => {
    for (const [id, resolve] of pending) resolve({ type: 'purged', id, affected: 0, error: 'the primary is gone' });
    pending.clear();
    void stop();
  });

  try {
    // The disk shard holds the keys this worker owns; copies of the others' stay in memory.
    store = await openTieredStore({
      dataDir: shardDir(config.dataDir, index),
      memoryBytes: Math.floor(config.memorySize / count),
      diskBytes: Math.floor(config.diskSize / count),
      memoryMaxEntryBytes: config.memoryMaxObjectSize,
      memoryAdmission: config.memoryAdmission === 'tinylfu',
      diskKeys: (key) => ownership.ownsKey(key),
    });
  } catch (error) {
    fatal(`worker ${index} cannot open its disk shard ${shardDir(config.dataDir, index)}: ${(error as Error).message}`);
    return;
  }
  dropForeignKeys(store, ownership, shardDir(config.dataDir, index), logger);

  // Purges the node ran while this worker was down reach its shard before it serves anything.
  const go = await ask({ type: 'store-open', id: ++nextId });
  if (go.type === 'go') for (const request of go.purges) await purgeStore(store, request as PurgeRequest);
  const ticketKeys = go.type === 'go' ? Buffer.from(go.ticketKeys, 'base64') : undefined;
  try {
    node = await start(config, { logger, store, routing, internalSocket: ownerSocket(runDir, index), nodeLimiter, ...(ticketKeys ? { ticketKeys } : {}) });
  } catch (error) {
    const code = (error as { code?: string }).code;
    fatal(`worker ${index} cannot listen: ${code ? `${code}: ` : ''}${(error as Error).message}`);
    return;
  }
  send({ type: 'ready', url: node.url, ...(node.tlsUrl ? { tlsUrl: node.tlsUrl } : {}) });
}

/** Tells the primary why this worker cannot start, then exits once the message is out. */
function fatal(message: string): void {
  if (!process.connected) process.exit(1);
  process.send!({ type: 'fatal', message } satisfies WorkerMessage, () => process.exit(1));
}

/** The second pass of a node-wide purge: this worker's fills and memory tier (its disk shard was purged in the first). */
async function purgeMemory(node: RunningNode | undefined, store: TieredStore, request: PurgeRequest): Promise<number> {
  node?.pipeline.fills.forget(request);
  return purgeStore(store.memory, request);
}

/**
 * After the worker count changed, keys this shard held may belong to another worker now. They
 * are never looked up here again; they are removed in the background so that they cannot come
 * back, out of date, if the count changes back. `layout.json` records the count swept for.
 */
function dropForeignKeys(tiered: TieredStore, ownership: Ownership, dir: string, logger: Logger): void {
  const marker = join(dir, 'layout.json');
  let sweptFor: number | undefined;
  try {
    sweptFor = (JSON.parse(readFileSync(marker, 'utf8')) as { workers?: number }).workers;
  } catch {
    // no marker: a new shard, or one written before workers existed
  }
  if (sweptFor === ownership.workers) return;
  const disk = tiered.disk;
  const sweep = disk instanceof LevelStore ? disk.retain((key) => ownership.ownsKey(key)) : Promise.resolve(0);
  void sweep.then(
    (dropped) => {
      writeFileSync(marker, JSON.stringify({ workers: ownership.workers }));
      if (dropped > 0) logger.info({ dropped, workers: ownership.workers }, 'worker count changed: dropped keys another worker now owns');
    },
    (error: Error) => logger.warn({ err: error.message }, 'could not drop keys another worker now owns; they stay unreachable'),
  );
}
