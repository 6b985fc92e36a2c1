/**
 * The chaos schedule: one event at a time, cycling through kill -9 of a whole node (then a restart
 * on the same ports and data folder), SIGSTOP/SIGCONT of an origin, filling the disk of the node
 * whose data folder is a small tmpfs (then deleting the filler), and kill -9 of one worker (its
 * primary restarts it). Each event is put on the timeline, with notes of what was seen.
 */
import { closeSync, openSync, rmSync, statfsSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import type { AdminStats } from '../../admin/admin-server.js';
import type { ChaosEvent, Timeline } from './record.js';
import type { ChaosOrigin, OutpostNode } from './topology.js';

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

export interface ChaosTargets {
  /** Killed in this order, round after round. */
  nodes: OutpostNode[];
  origins: ChaosOrigin[];
  /** The node whose data folder is a tmpfs, and that folder. */
  disk: { node: OutpostNode; dir: string } | undefined;
  timeline: Timeline;
  holdMs: number;
  log: (line: string) => void;
}

type Kind = 'kill -9' | 'SIGSTOP' | 'disk full' | 'kill -9 worker of';

async function killNode(node: OutpostNode, event: ChaosEvent, holdMs: number): Promise<void> {
  await node.kill9();
  await sleep(holdMs);
  const started = Date.now();
  await node.start();
  event.notes.push(`down ${holdMs} ms, restarted and ready in ${Date.now() - started} ms`);
}

async function pauseOrigin(origin: ChaosOrigin, event: ChaosEvent, holdMs: number): Promise<void> {
  origin.pause();
  try {
    await sleep(holdMs);
  } finally {
    origin.resume();
  }
  event.notes.push(`stopped ${holdMs} ms`);
}

/** Writes a filler file until the file system is full; the bytes written. */
function fill(path: string): number {
  const chunk = Buffer.alloc(1024 * 1024, 0x5a);
  const fd = openSync(path, 'w');
  let written = 0;
  try {
    for (;;) written += writeSync(fd, chunk);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOSPC') throw error;
  } finally {
    closeSync(fd);
  }
  // The last partial chunk: fill to the brim.
  const small = Buffer.alloc(4096, 0x5a);
  const fd2 = openSync(path, 'a');
  try {
    for (;;) written += writeSync(fd2, small);
  } catch {
    // full
  } finally {
    closeSync(fd2);
  }
  return written;
}

function usedMiB(dir: string): string {
  const s = statfsSync(dir);
  return `${(((s.blocks - s.bfree) * s.bsize) / 1048576).toFixed(1)} of ${((s.blocks * s.bsize) / 1048576).toFixed(0)} MiB`;
}

/** `recoveryMs`: how long to wait, after freeing, for /readyz to stop naming the disk. */
async function fillDisk(disk: { node: OutpostNode; dir: string }, event: ChaosEvent, holdMs: number, recoveryMs: number): Promise<void> {
  const filler = join(disk.dir, 'chaos-filler');
  event.notes.push(`used before: ${usedMiB(disk.dir)}`);
  try {
    const written = fill(filler);
    event.notes.push(`filler ${(written / 1048576).toFixed(1)} MiB`);
    await sleep(holdMs);
    event.notes.push(`readyz while full: ${await disk.node.readyz()}`);
    await sleep(holdMs / 2);
  } finally {
    rmSync(filler, { force: true });
  }
  // Recovery without a restart: /readyz stops naming the disk.
  const freed = Date.now();
  let readyz = '';
  while (Date.now() - freed < recoveryMs) {
    readyz = await disk.node.readyz();
    if (readyz.startsWith('200') && !/disk|degraded/i.test(readyz)) {
      event.notes.push(`readyz clean ${Date.now() - freed} ms after freeing`);
      return;
    }
    await sleep(250);
  }
  event.notes.push(`readyz still not clean ${recoveryMs} ms after freeing: ${readyz}`);
}

async function killWorker(node: OutpostNode, event: ChaosEvent, round: number): Promise<void> {
  const before = await node.adminJson<AdminStats>('/stats');
  const list = before.workers?.list.filter((w) => w.pid !== undefined) ?? [];
  if (list.length === 0) throw new Error('no worker pid in /stats');
  const victim = list[round % list.length]!;
  process.kill(victim.pid!, 'SIGKILL');
  const started = Date.now();
  for (;;) {
    await sleep(100);
    const stats = await node.adminJson<AdminStats>('/stats').catch(() => undefined);
    if (stats?.workers && stats.workers.restarts > before.workers!.restarts && stats.workers.ready === stats.workers.count) break;
    if (Date.now() - started > 20_000) throw new Error(`worker ${victim.index} not back after 20 s`);
  }
  event.notes.push(`worker ${victim.index} (pid ${victim.pid}) back in ${Date.now() - started} ms`);
}

/** Runs events until `untilMs` (ms of the run), never starting one that could not finish by then. */
export async function runChaos(t: ChaosTargets, untilMs: number, stopping: () => boolean): Promise<void> {
  const kinds: Kind[] = t.disk ? ['kill -9', 'disk full', 'SIGSTOP', 'kill -9 worker of'] : ['kill -9', 'SIGSTOP', 'kill -9 worker of'];
  // Time an event takes (a restart takes several seconds under load); the disk's recovery wait fits the rest.
  const need: Record<Kind, number> = { 'kill -9': t.holdMs + 8000, SIGSTOP: t.holdMs + 500, 'disk full': 1.5 * t.holdMs + 500, 'kill -9 worker of': 4000 };
  const counts = new Map<Kind, number>();
  for (let i = 0; !stopping(); i++) {
    const kind = kinds[i % kinds.length]!;
    if (t.timeline.now() + need[kind] > untilMs) {
      // Maybe a shorter kind still fits.
      if (kinds.every((k) => t.timeline.now() + need[k] > untilMs)) return;
      continue;
    }
    const round = counts.get(kind) ?? 0;
    counts.set(kind, round + 1);
    const target =
      kind === 'SIGSTOP' ? t.origins[round % t.origins.length]!.name : kind === 'disk full' ? t.disk!.node.name : kind === 'kill -9' ? t.nodes[round % t.nodes.length]!.name : t.nodes[(round + 2) % t.nodes.length]!.name;
    const event = t.timeline.begin(kind, target);
    t.log(`t=${(event.start / 1000).toFixed(1)}s ${kind} ${target}`);
    try {
      if (kind === 'kill -9') await killNode(t.nodes.find((n) => n.name === target)!, event, t.holdMs);
      else if (kind === 'SIGSTOP') await pauseOrigin(t.origins.find((o) => o.name === target)!, event, t.holdMs);
      else if (kind === 'disk full') await fillDisk(t.disk!, event, t.holdMs, Math.max(1000, Math.min(15_000, untilMs - t.timeline.now() - 1.5 * t.holdMs)));
      else await killWorker(t.nodes.find((n) => n.name === target)!, event, round);
    } catch (error) {
      event.failed = true;
      event.notes.push(`FAILED: ${(error as Error).message}`);
    } finally {
      t.timeline.finish(event);
      t.log(`t=${(event.end! / 1000).toFixed(1)}s   ${event.failed ? 'FAILED' : 'done'}: ${event.notes.join('; ')}`);
    }
    await sleep(t.holdMs);
  }
}
