/**
 * The primary of a multi-worker node (issue 9), on node:cluster. It serves no requests: it
 * forks one worker per core, restarts a worker that dies (and stops the node on a crash loop),
 * runs purges on every worker before answering, sums the workers' stats and metrics, forwards
 * SIGHUP, and on SIGTERM drains every worker before it exits.
 */
import cluster, { type Worker } from 'node:cluster';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { InspectedVariant, NodeControl, WorkerState } from '../admin/node-control.js';
import { ConfigError, type Config } from '../config/config.js';
import { liveConfig, workerConfig } from '../config/reload.js';
import type { MetricsJson } from '../pipeline/metrics.js';
import type { NodeSnapshot } from '../pipeline/node-server.js';
import { describePurge, type PurgeRequest } from '../pipeline/purge.js';
import { LocalLimiter } from '../edge/rate-limit/limiter.js';
import { WORKER_ENV, shardDir, type PrimaryMessage, type WorkerMessage } from './messages.js';
import { workerExecArgv } from './worker-heap.js';

/** Deaths within this window that count towards a crash loop. */
const CRASH_WINDOW_MS = 60_000;
/** Longest a worker may take to drain after the shutdown timeout, before it is killed. */
const SHUTDOWN_GRACE_MS = 5_000;

interface Slot {
  index: number;
  worker: Worker | undefined;
  /** starting: forked, shard not open (purges wait in `queued`); open: purges go to it; ready: serving. */
  state: WorkerState['state'];
  /** Purges run while the worker was down or starting: applied before it serves. */
  queued: PurgeRequest[];
  /** Purges handed to it at start, not yet known applied (it is not serving yet): queued again if it dies. */
  applying: PurgeRequest[];
  /** The config generation it runs: one forked before a reload gets the reload once it serves. */
  generation: number;
}

interface Question {
  slot: Slot;
  resolve: (message: WorkerMessage) => void;
  /** A purge in flight: if the worker dies first, it is queued for its replacement. */
  purge?: PurgeRequest;
}

export interface PrimaryOptions {
  config: Readonly<Config>;
  count: number;
  logger: Logger;
  /** Printed once every worker listens. */
  onReady: (url: string, tlsUrl: string | undefined) => void;
  /** SIGHUP: re-reads flags, environment and config file; throws ConfigError when the new config is invalid. */
  reloadConfig?: () => Readonly<Config>;
  /** A reload the workers were given (the admin API takes its new purge peers and token). */
  onReload?: (config: Readonly<Config>) => void;
  /** After the workers drained on SIGTERM, before the primary exits (the admin API and its outbox close). */
  onStop?: () => Promise<void>;
}

export class Primary implements NodeControl {
  private readonly slots: Slot[];
  private readonly questions = new Map<number, Question>();
  private nextId = 0;
  private readonly deaths: number[] = [];
  private restarts = 0;
  private readonly runDir: string;
  private stopping = false;
  /** Bumped by every applied reload. */
  private generation = 0;
  private everReady = false;
  private config: Readonly<Config>;
  private readonly logger: Logger;
  private readonly options: PrimaryOptions;
  /** Every rate-limit bucket of the node; workers spend tokens leased from it. */
  private readonly rateBuckets: LocalLimiter;
  /** TLS session ticket key every worker encrypts with, so a ticket from one resumes on any (rotated on a schedule). */
  private ticketKeys = randomBytes(48);
  private ticketTimer: NodeJS.Timeout | undefined;

  constructor(options: PrimaryOptions) {
    this.options = options;
    this.config = options.config;
    this.rateBuckets = new LocalLimiter(options.config.rateLimitKeys);
    this.logger = options.logger;
    this.slots = Array.from({ length: options.count }, (_, index) => ({ index, worker: undefined, state: 'dead' as const, queued: [], applying: [], generation: 0 }));
    // Private to this user (mkdtemp creates 0700): the owner sockets accept requests from any worker.
    this.runDir = mkdtempSync(join(tmpdir(), 'outpost-'));
    process.once('exit', () => rmSync(this.runDir, { recursive: true, force: true }));
  }

  start(): void {
    removeOrphanShards(this.config.dataDir, this.slots.length, this.logger);
    // Set before the first fork; see README ("Workers") for the measured choice.
    cluster.schedulingPolicy = this.config.workerScheduling === 'kernel' ? cluster.SCHED_NONE : cluster.SCHED_RR;
    // memorySize is restart-only: the share, and so the heap limit, holds for every fork.
    cluster.setupPrimary({ execArgv: workerExecArgv(process.execArgv, process.env['NODE_OPTIONS'], Math.floor(this.config.memorySize / this.slots.length)) });
    cluster.on('message', (worker, message: WorkerMessage) => this.onMessage(worker, message));
    cluster.on('exit', (worker, code, signal) => this.onExit(worker, code, signal));
    for (const slot of this.slots) this.fork(slot);
    if (this.config.listenTls !== undefined) {
      this.ticketTimer = setInterval(() => {
        this.ticketKeys = randomBytes(48);
        for (const slot of this.slots) this.send(slot.worker, { type: 'ticket-keys', keys: this.ticketKeys.toString('base64') });
      }, this.config.tlsTicketRotateSec * 1000);
      this.ticketTimer.unref();
    }
    process.on('SIGTERM', () => void this.stop('SIGTERM'));
    process.on('SIGINT', () => void this.stop('SIGINT'));
    process.on('SIGHUP', () => this.reload());
  }

  /**
   * Two passes. First every worker purges its disk shard, memory tier and fills. A worker that
   * finished first may meanwhile have copied the object from an owner that had not purged yet;
   * so once all are done, a second pass drops such copies from every memory tier (and refuses
   * those still streaming) before the purge is answered.
   */
  async purge(request: PurgeRequest): Promise<number> {
    const affected = await this.purgePass(request, false);
    await this.purgePass(request, true);
    this.logger.info({ purge: describePurge(request), affected }, 'purged on every worker');
    return affected;
  }

  private async purgePass(request: PurgeRequest, memoryOnly: boolean): Promise<number> {
    const counts = await Promise.all(
      this.slots.map(async (slot) => {
        if (slot.state === 'open' || slot.state === 'ready') {
          const answer = await this.ask(slot, { type: 'purge', id: ++this.nextId, request, memoryOnly }, memoryOnly ? undefined : request);
          if (answer.type === 'purge-done') {
            if (answer.error !== undefined) throw new Error(`worker ${slot.index}: ${answer.error}`);
            return answer.affected;
          }
          return 0;
        }
        // Down or starting: its replacement applies the purge before it serves.
        if (!memoryOnly) slot.queued.push(request);
        return 0;
      }),
    );
    return counts.reduce((sum, n) => sum + n, 0);
  }

  snapshots(options: { metrics?: boolean } = {}): Promise<NodeSnapshot[]> {
    return this.askReady((id) => ({ type: 'stats', id, ...options })).then((answers) => answers.flatMap((answer) => (answer.type === 'stats-reply' ? [answer.stats] : [])));
  }

  async metrics(): Promise<MetricsJson[]> {
    return (await this.snapshots({ metrics: true })).map((snapshot) => snapshot.metrics ?? []);
  }

  async inspect(url: string): Promise<InspectedVariant[]> {
    const ready = this.slots.filter((slot) => slot.state === 'ready');
    const answers = await this.askReady((id) => ({ type: 'inspect', id, url }));
    return answers.flatMap((answer, i) => (answer.type === 'inspect-reply' ? answer.variants.map((v) => ({ ...v, worker: ready[i]!.index })) : []));
  }

  started(): boolean {
    return this.everReady && this.slots.some((slot) => slot.state === 'ready');
  }

  draining(): boolean {
    return this.stopping;
  }

  workers(): { list: WorkerState[]; restarts: number } {
    return { list: this.slots.map((s) => ({ index: s.index, pid: s.worker?.process.pid, state: s.state })), restarts: this.restarts };
  }

  /** Asks every serving worker the same question (a worker that dies meanwhile answers nothing useful). */
  private askReady(question: (id: number) => Extract<PrimaryMessage, { id: number }>): Promise<WorkerMessage[]> {
    const ready = this.slots.filter((slot) => slot.state === 'ready');
    return Promise.all(ready.map((slot) => this.ask(slot, question(++this.nextId), undefined)));
  }

  private fork(slot: Slot): void {
    slot.state = 'starting';
    // Workers need no tokens: none in their config nor in the environment they inherit.
    const worker = cluster.fork({
      [WORKER_ENV.index]: String(slot.index),
      [WORKER_ENV.count]: String(this.slots.length),
      [WORKER_ENV.runDir]: this.runDir,
      [WORKER_ENV.config]: JSON.stringify(workerConfig(this.config)),
      OUTPOST_ADMIN_TOKEN: '',
      OUTPOST_ADMIN_TOKEN_FILE: '',
    });
    slot.generation = this.generation;
    // A send to a worker that is dying fails on its channel; its exit is handled in onExit.
    worker.on('error', (error) => this.logger.warn({ worker: slot.index, err: error.message }, 'worker channel error'));
    slot.worker = worker;
  }

  /** False when the worker's channel is already closed (it is dying; onExit follows). */
  private send(worker: Worker | undefined, message: PrimaryMessage): boolean {
    if (worker === undefined || !worker.isConnected()) return false;
    worker.send(message);
    return true;
  }

  private slotOf(worker: Worker): Slot | undefined {
    return this.slots.find((slot) => slot.worker === worker);
  }

  /** Sends a question; a worker that dies before answering answers with nothing (purges are queued). */
  private ask(slot: Slot, message: Extract<PrimaryMessage, { id: number }>, purge: PurgeRequest | undefined): Promise<WorkerMessage> {
    return new Promise((resolve) => {
      if (!this.send(slot.worker, message)) {
        if (purge) slot.queued.push(purge);
        resolve({ type: 'purge-done', id: message.id, affected: 0 });
        return;
      }
      this.questions.set(message.id, { slot, resolve, ...(purge ? { purge } : {}) });
    });
  }

  private onMessage(worker: Worker, message: WorkerMessage): void {
    const slot = this.slotOf(worker);
    if (slot === undefined) return;
    switch (message.type) {
      case 'store-open': {
        const purges = slot.queued.splice(0);
        slot.applying = purges;
        slot.state = 'open';
        this.send(worker, { type: 'go', id: message.id, purges, ticketKeys: this.ticketKeys.toString('base64') });
        return;
      }
      case 'ready':
        slot.state = 'ready';
        slot.applying = [];
        // Forked before the last reload (it was starting when SIGHUP came): it gets that reload now.
        if (slot.generation !== this.generation) {
          slot.generation = this.generation;
          this.send(worker, { type: 'reload', config: workerConfig(this.config) });
        }
        if (!this.everReady && this.slots.every((s) => s.state === 'ready')) {
          this.everReady = true;
          this.options.onReady(message.url, message.tlsUrl);
        } else if (this.everReady) {
          this.logger.info({ worker: slot.index, pid: worker.process.pid }, 'worker restarted and serving');
        }
        return;
      case 'fatal':
        if (!this.everReady) {
          // A worker that cannot start at all will not start on a retry either.
          process.stderr.write(`outpost: ${message.message}\n`);
          void this.abort();
        } else this.logger.error({ worker: slot.index }, message.message);
        return;
      case 'purge':
        void this.purge(message.request).then(
          (affected) => this.send(worker, { type: 'purged', id: message.id, affected }),
          (error: Error) => this.send(worker, { type: 'purged', id: message.id, affected: 0, error: error.message }),
        );
        return;
      case 'rate-lease':
        try {
          this.send(worker, { type: 'rate-grant', id: message.id, grant: this.rateBuckets.lease(message.request) });
        } catch (error) {
          // A malformed ask (a worker of another version) must not take the primary down; the worker admits after its timeout.
          this.logger.error({ worker: slot.index, err: (error as Error).message }, 'could not lease rate-limit tokens');
        }
        return;
      case 'purge-done':
      case 'stats-reply':
      case 'inspect-reply': {
        const question = this.questions.get(message.id);
        this.questions.delete(message.id);
        question?.resolve(message);
        return;
      }
      case 'reloaded':
        if (message.error !== undefined) this.logger.error({ worker: slot.index, err: message.error }, 'worker could not apply the reload');
        else this.logger.info({ worker: slot.index }, 'worker reloaded');
        return;
    }
  }

  private onExit(worker: Worker, code: number | null, signal: string | null): void {
    const slot = this.slotOf(worker);
    if (slot === undefined) return;
    slot.state = 'dead';
    slot.worker = undefined;
    // Purges it was given at start but may not have applied: its replacement applies them.
    slot.queued.unshift(...slot.applying);
    slot.applying = [];
    // Questions it will never answer: purges go to its replacement, the rest answer empty.
    for (const [id, question] of this.questions) {
      if (question.slot !== slot) continue;
      this.questions.delete(id);
      if (question.purge) slot.queued.push(question.purge);
      question.resolve({ type: 'purge-done', id, affected: 0 });
    }
    if (this.stopping) return;
    const now = Date.now();
    this.deaths.push(now);
    while (this.deaths.length > 0 && this.deaths[0]! < now - CRASH_WINDOW_MS) this.deaths.shift();
    const limit = Math.max(2, this.slots.length);
    this.logger.error({ worker: slot.index, pid: worker.process.pid, code, signal }, 'worker died; restarting it');
    if (this.deaths.length >= limit) {
      process.stderr.write(
        `outpost: ${this.deaths.length} worker deaths within ${CRASH_WINDOW_MS / 1000} s (last: worker ${slot.index}, ${signal ?? `exit code ${code}`}); stopping instead of restarting in a loop. See the log above for the cause.\n`,
      );
      void this.abort();
      return;
    }
    this.restarts++;
    this.fork(slot);
  }

  /**
   * SIGHUP: the config is re-read and validated here, once; an invalid one is logged with its
   * field and the node keeps running on the old one. Workers started later fork with the new one.
   */
  private reload(): void {
    if (this.options.reloadConfig === undefined) return;
    let live: ReturnType<typeof liveConfig>;
    try {
      live = liveConfig(this.config, this.options.reloadConfig());
    } catch (error) {
      const field = error instanceof ConfigError ? error.field : undefined;
      this.logger.error({ field, err: (error as Error).message }, 'SIGHUP: the new config is invalid; still running on the old one');
      return;
    }
    const { config, needRestart } = live;
    if (needRestart.length > 0) this.logger.warn({ options: needRestart }, 'SIGHUP: these options take effect only at the next start');
    this.config = config;
    this.generation++;
    this.options.onReload?.(config);
    const ready = this.slots.filter((s) => s.state === 'ready');
    this.logger.info({ workers: ready.length }, 'SIGHUP: reloading every worker');
    for (const slot of ready) {
      slot.generation = this.generation;
      this.send(slot.worker, { type: 'reload', config: workerConfig(config) });
    }
  }

  /** SIGTERM: every worker stops accepting, finishes what is in flight, and exits; then the primary. */
  private async stop(signal: string): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    process.stderr.write(`outpost: ${signal}, finishing requests in flight on ${this.slots.length} workers\n`);
    await this.stopWorkers(this.config.shutdownTimeoutMs + SHUTDOWN_GRACE_MS);
    await this.options.onStop?.().catch((error: Error) => this.logger.error({ err: error.message }, 'could not close the admin API cleanly'));
    process.exit(0);
  }

  /** A node that cannot run: stop the workers and exit non-zero. */
  private async abort(): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    await this.stopWorkers(SHUTDOWN_GRACE_MS);
    process.exit(1);
  }

  private async stopWorkers(timeoutMs: number): Promise<void> {
    const live = Object.values(cluster.workers ?? {}).filter((w): w is Worker => w !== undefined && !w.isDead());
    const exited = Promise.all(live.map((w) => new Promise<void>((resolve) => (w.isDead() ? resolve() : w.once('exit', () => resolve())))));
    for (const worker of live) this.send(worker, { type: 'shutdown' });
    const timer = setTimeout(() => {
      for (const worker of live) if (!worker.isDead()) worker.process.kill('SIGKILL');
    }, timeoutMs);
    await exited;
    clearTimeout(timer);
  }
}

/** Shards of workers beyond the current count hold keys no worker owns now: removed at start. */
function removeOrphanShards(dataDir: string, count: number, logger: Logger): void {
  let names: string[];
  try {
    names = readdirSync(dataDir);
  } catch {
    return;
  }
  for (const name of names) {
    const match = /^worker-(\d+)$/.exec(name);
    if (match === null || Number(match[1]) < count) continue;
    rmSync(join(dataDir, name), { recursive: true, force: true });
    logger.info({ shard: shardDir(dataDir, Number(match[1])) }, 'removed the disk shard of a worker the node no longer runs');
  }
}
