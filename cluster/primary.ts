/**
 * The primary of a multi-worker node (issue 9), on node:cluster. It serves no requests: it
 * forks one worker per core, restarts a worker that dies (and stops the node on a crash loop),
 * runs purges on every worker before answering, sums the workers' stats and metrics, forwards
 * SIGHUP, and on SIGTERM drains every worker before it exits.
 */
import cluster, { type Worker } from 'node:cluster';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { Config } from '../config/config.js';
import { Metrics } from '../pipeline/metrics.js';
import { describePurge, type PurgeRequest } from '../pipeline/purge.js';
import { WORKER_ENV, type PrimaryMessage, type WorkerMessage, type WorkerStats } from './messages.js';
import { shardDir } from './worker.js';

/** Deaths within this window that count towards a crash loop. */
const CRASH_WINDOW_MS = 60_000;
/** Longest a worker may take to drain after the shutdown timeout, before it is killed. */
const SHUTDOWN_GRACE_MS = 5_000;

/** Node-wide operations, as the admin API and the workers' invalidations use them. */
export interface NodeControl {
  /** Runs a purge on every worker (memory tiers, disk shards, fills in flight); resolves once all applied it. */
  purge(request: PurgeRequest): Promise<number>;
  stats(): Promise<NodeStats>;
  /** Prometheus text: every worker's counters summed. */
  metricsText(): Promise<string>;
}

export interface NodeStats {
  workers: number;
  workersReady: number;
  /** Each worker slot: its process and state. */
  workerList: Array<{ index: number; pid: number | undefined; state: Slot['state']; requests: number }>;
  restarts: number;
  disk: { entries: number; bytes: number };
  memory: { entries: number; bytes: number };
  fillsInFlight: number;
  requests: Record<string, number>;
}

interface Slot {
  index: number;
  worker: Worker | undefined;
  /** starting: forked, shard not open (purges wait in `queued`); open: purges go to it; ready: serving. */
  state: 'starting' | 'open' | 'ready' | 'dead';
  /** Purges run while the worker was down or starting: applied before it serves. */
  queued: PurgeRequest[];
  /** Purges handed to it at start, not yet known applied (it is not serving yet): queued again if it dies. */
  applying: PurgeRequest[];
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
  onReady: (url: string) => void;
}

export class Primary implements NodeControl {
  private readonly slots: Slot[];
  private readonly questions = new Map<number, Question>();
  private nextId = 0;
  private readonly deaths: number[] = [];
  private restarts = 0;
  private readonly runDir: string;
  private stopping = false;
  private everReady = false;
  private readonly config: Readonly<Config>;
  private readonly logger: Logger;
  private readonly onReady: (url: string) => void;

  constructor(options: PrimaryOptions) {
    this.config = options.config;
    this.logger = options.logger;
    this.onReady = options.onReady;
    this.slots = Array.from({ length: options.count }, (_, index) => ({ index, worker: undefined, state: 'dead' as const, queued: [], applying: [] }));
    // Private to this user (mkdtemp creates 0700): the owner sockets accept requests from any worker.
    this.runDir = mkdtempSync(join(tmpdir(), 'outpost-'));
    process.once('exit', () => rmSync(this.runDir, { recursive: true, force: true }));
  }

  start(): void {
    removeOrphanShards(this.config.dataDir, this.slots.length, this.logger);
    // Set before the first fork; see README ("Workers") for the measured choice.
    cluster.schedulingPolicy = this.config.workerScheduling === 'kernel' ? cluster.SCHED_NONE : cluster.SCHED_RR;
    cluster.on('message', (worker, message: WorkerMessage) => this.onMessage(worker, message));
    cluster.on('exit', (worker, code, signal) => this.onExit(worker, code, signal));
    for (const slot of this.slots) this.fork(slot);
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

  /** Every serving worker's stats, their counters summed, and a summing helper. */
  private async gather(): Promise<{ answered: Map<Slot, WorkerStats>; metrics: Metrics; sum: (pick: (s: WorkerStats) => number) => number }> {
    const answered = await this.workerStats();
    const all = [...answered.values()];
    const metrics = new Metrics();
    for (const stats of all) metrics.absorb(stats.metrics);
    return { answered, metrics, sum: (pick) => all.reduce((total, s) => total + pick(s), 0) };
  }

  async stats(): Promise<NodeStats> {
    const { answered, metrics, sum } = await this.gather();
    const byOutcome: Record<string, number> = {};
    for (const outcome of ['hit', 'stale', 'miss', 'revalidated', 'bypass', 'pass', 'error', 'synthetic']) byOutcome[outcome] = metrics.get('requests_total', { outcome });
    return {
      workers: this.slots.length,
      workersReady: this.slots.filter((s) => s.state === 'ready').length,
      workerList: this.slots.map((s) => ({ index: s.index, pid: s.worker?.process.pid, state: s.state, requests: requestCount(answered.get(s)) })),
      restarts: this.restarts,
      disk: { entries: sum((s) => s.disk.entries), bytes: sum((s) => s.disk.bytes) },
      memory: { entries: sum((s) => s.memory.entries), bytes: sum((s) => s.memory.bytes) },
      fillsInFlight: sum((s) => s.fillsInFlight),
      requests: byOutcome,
    };
  }

  async metricsText(): Promise<string> {
    const { metrics, sum } = await this.gather();
    return metrics.render({
      workers_ready: { help: 'workers serving requests', value: this.slots.filter((s) => s.state === 'ready').length },
      worker_restarts: { help: 'workers restarted after dying, since start', value: this.restarts },
      disk_entries: { help: 'entries on the disk shards', value: sum((s) => s.disk.entries) },
      disk_bytes: { help: 'bytes on the disk shards', value: sum((s) => s.disk.bytes) },
      memory_entries: { help: 'entries in worker memory tiers', value: sum((s) => s.memory.entries) },
      memory_bytes: { help: 'bytes in worker memory tiers', value: sum((s) => s.memory.bytes) },
      fills_in_flight: { help: 'fills fetching or committing', value: sum((s) => s.fillsInFlight) },
    });
  }

  /** Each serving worker's stats (a worker that dies meanwhile is left out). */
  private async workerStats(): Promise<Map<Slot, WorkerStats>> {
    const ready = this.slots.filter((slot) => slot.state === 'ready');
    const answers = await Promise.all(ready.map((slot) => this.ask(slot, { type: 'stats', id: ++this.nextId }, undefined)));
    const stats = new Map<Slot, WorkerStats>();
    answers.forEach((answer, i) => {
      if (answer.type === 'stats-reply') stats.set(ready[i]!, answer.stats);
    });
    return stats;
  }

  private fork(slot: Slot): void {
    slot.state = 'starting';
    const worker = cluster.fork({ [WORKER_ENV.index]: String(slot.index), [WORKER_ENV.count]: String(this.slots.length), [WORKER_ENV.runDir]: this.runDir });
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
        this.send(worker, { type: 'go', id: message.id, purges });
        return;
      }
      case 'ready':
        slot.state = 'ready';
        slot.applying = [];
        if (!this.everReady && this.slots.every((s) => s.state === 'ready')) {
          this.everReady = true;
          this.onReady(message.url);
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
      case 'purge-done':
      case 'stats-reply': {
        const question = this.questions.get(message.id);
        this.questions.delete(message.id);
        question?.resolve(message);
        return;
      }
      case 'reloaded':
        this.logger.info({ worker: slot.index }, 'worker reloaded');
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

  private reload(): void {
    const live = this.slots.filter((s) => s.state === 'ready');
    this.logger.info({ workers: live.length }, 'SIGHUP: reloading every worker');
    for (const slot of live) this.send(slot.worker, { type: 'reload' });
  }

  /** SIGTERM: every worker stops accepting, finishes what is in flight, and exits; then the primary. */
  private async stop(signal: string): Promise<void> {
    if (this.stopping) return;
    this.stopping = true;
    process.stderr.write(`outpost: ${signal}, finishing requests in flight on ${this.slots.length} workers\n`);
    await this.stopWorkers(this.config.shutdownTimeoutMs + SHUTDOWN_GRACE_MS);
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

/** Client requests a worker answered (all outcomes). */
function requestCount(stats: WorkerStats | undefined): number {
  const counter = stats?.metrics['requests_total'];
  return counter === undefined ? 0 : Object.values(counter.values).reduce((sum, n) => sum + n, 0);
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
