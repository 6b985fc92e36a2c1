/**
 * `npm run bench:memory` — peak RSS of an edge (one worker, its primary included) in the
 * scenarios of issue 13, sampled from /proc every 200 ms, against the budget its options give:
 *
 *   budget = memorySize + fillBufferSize (or the body, when smaller) × fills in flight + a fixed base
 *            (BENCH_MEMORY_BASE_MB, 150)
 *
 *   fill      distinct 1 KiB objects as fast as wrk can fill them (256 connections), until
 *             BENCH_MEMORY_OBJECTS (1,000,000) are stored, --memory-size 256MB; and 20 s of the same
 *             load at --memory-size 32MB (the disk tier falls behind: its queue must stay bounded)
 *   slow      1,000 clients of one 1 GiB object, each reading 10 KiB/s, for BENCH_MEMORY_SLOW_SEC (45 s):
 *             the fill runs at the origin's pace and the edge holds a window, not the body
 *   misses    50 concurrent misses of different 200 MiB objects (BENCH_MEMORY_MISSES, BENCH_MEMORY_MISS_MB),
 *             read at full speed
 *   slow-sliced, misses-sliced
 *             the same against an origin that serves byte ranges with an ETag (/ranged/): the edge
 *             fetches, stores and serves those objects in 8 MiB slices
 *
 * node dist/bench/memory.js [fill|slow|misses…] (default: all). Children run in their own process
 * groups on 127.0.0.1 and are killed at the end; temp folders are removed.
 */
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { ROOT, WRK, cleanup, fmtInt, freePort, get, launch, launchNodeScript, originStats, sleep, table, tempDir, waitHttp, wrk, type Spawned } from './lib.js';

const MB = 1024 * 1024;
const OBJECTS = Number(process.env.BENCH_MEMORY_OBJECTS ?? 1_000_000);
const SLOW_SEC = Number(process.env.BENCH_MEMORY_SLOW_SEC ?? 45);
const SLOW_CLIENTS = Number(process.env.BENCH_MEMORY_SLOW_CLIENTS ?? 1000);
const MISSES = Number(process.env.BENCH_MEMORY_MISSES ?? 50);
const MISS_MB = Number(process.env.BENCH_MEMORY_MISS_MB ?? 200);
const BASE_MB = Number(process.env.BENCH_MEMORY_BASE_MB ?? 150);
const FILL_BUFFER_MB = 2;
const HEALTH = '/__outpost/health';

const out = (text = '') => process.stdout.write(`${text}\n`);

/** Resident bytes of a process and every live descendant. */
function treeRss(pid: number): number {
  let bytes = 0;
  const visit = (id: number): void => {
    try {
      const status = readFileSync(`/proc/${id}/status`, 'utf8');
      bytes += Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1] ?? 0) * 1024;
      for (const task of readdirSync(`/proc/${id}/task`)) {
        const children = readFileSync(`/proc/${id}/task/${task}/children`, 'utf8').trim();
        for (const child of children ? children.split(' ') : []) visit(Number(child));
      }
    } catch {
      // exited meanwhile
    }
  };
  visit(pid);
  return bytes;
}

/** Samples a process tree's RSS until stopped: the peak and the last reading. */
function sampleRss(pid: number): { stop: () => { peak: number; last: number } } {
  let peak = 0;
  let last = 0;
  const timer = setInterval(() => {
    last = treeRss(pid);
    peak = Math.max(peak, last);
  }, 200);
  return {
    stop: () => {
      clearInterval(timer);
      last = treeRss(pid);
      peak = Math.max(peak, last);
      return { peak, last };
    },
  };
}

async function startEdge(originPort: number, memorySize: string): Promise<Spawned & { port: number }> {
  const port = await freePort();
  const dir = tempDir('memory');
  const spawned = launch(process.execPath, [
    join(ROOT, 'bin', 'outpost'), 'edge',
    '--upstream', `http://127.0.0.1:${originPort}`,
    '--listen', `127.0.0.1:${port}`,
    '--admin-listen', '127.0.0.1:0',
    '--data-dir', dir,
    '--workers', '1',
    '--memory-size', memorySize,
    '--fill-buffer-size', `${FILL_BUFFER_MB}MB`,
    '--access-log', 'false',
  ]);
  await waitHttp(port, HEALTH, spawned);
  return { ...spawned, port };
}

/** What the options allow: the memory tier, what each fill in flight may hold, and the base. */
const budget = (memoryMb: number, fills: number, perFillMb = FILL_BUFFER_MB) => memoryMb + perFillMb * fills + BASE_MB;
const mb = (bytes: number) => `${fmtInt(bytes / MB)} MB`;

interface Row {
  scenario: string;
  peak: number;
  last: number;
  budgetMb: number;
  note: string;
}

/** wrk filling distinct 1 KiB objects, each thread its own numbered paths. */
function distinctPathsScript(dir: string, prefix: string): string {
  const file = join(dir, 'distinct.lua');
  writeFileSync(
    file,
    `local threads = 0
setup = function(thread) thread:set("id", threads); threads = threads + 1 end
local n = 0
request = function() n = n + 1; return wrk.format("GET", "/obj/${prefix}" .. id .. "-" .. n) end
`,
  );
  return file;
}

async function fillScenario(origin: number, memoryMb: number, until: { objects?: number; seconds?: number }): Promise<Row> {
  const edge = await startEdge(origin, `${memoryMb}MB`);
  const rss = sampleRss(edge.child.pid!);
  const script = distinctPathsScript(tempDir('lua'), `m${memoryMb}-`);
  const before = (await originStats(origin)).total;
  const started = Date.now();
  let filled = 0;
  for (;;) {
    const left = until.seconds !== undefined ? until.seconds - (Date.now() - started) / 1000 : 30;
    if (left <= 0) break;
    await wrk(`http://127.0.0.1:${edge.port}/`, { seconds: Math.max(1, Math.min(30, Math.round(left))), connections: 256, threads: 2, script });
    filled = (await originStats(origin)).total - before;
    if (until.objects !== undefined && filled >= until.objects) break;
  }
  const seconds = (Date.now() - started) / 1000;
  const { peak, last } = rss.stop();
  // 256 fills in flight, each holding its 1 KiB body whole (below memoryMaxObjectSize).
  return { scenario: `fill ${fmtInt(filled)} distinct 1 KiB objects, --memory-size ${memoryMb}MB`, peak, last, budgetMb: budget(memoryMb, 256, 1 / 1024), note: `${fmtInt(filled / seconds)} fills/s over ${seconds.toFixed(0)} s` };
}

/** A client that reads `rate` bytes per second from its socket, whatever arrives. */
function slowReader(port: number, path: string, rate: number): { socket: Socket; received: () => number } {
  const socket = connect(port, '127.0.0.1');
  let received = 0;
  socket.pause();
  socket.write(`GET ${path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n`);
  const perTick = Math.max(1, Math.round(rate / 10));
  const timer = setInterval(() => {
    const chunk = socket.read(Math.min(perTick, socket.readableLength || perTick)) as Buffer | null;
    if (chunk) received += chunk.length;
  }, 100);
  socket.on('close', () => clearInterval(timer));
  socket.on('error', () => clearInterval(timer));
  return { socket, received: () => received };
}

async function slowScenario(origin: number, kind: 'large' | 'ranged'): Promise<Row> {
  const edge = await startEdge(origin, '256MB');
  const rss = sampleRss(edge.child.pid!);
  const size = 1024 * MB;
  const path = `/${kind}/${size}/one`;
  const readers = Array.from({ length: SLOW_CLIENTS }, () => slowReader(edge.port, path, 10 * 1024));
  const started = Date.now();
  let fillDone: number | undefined;
  while ((Date.now() - started) / 1000 < SLOW_SEC) {
    await sleep(1000);
    const parsed = JSON.parse((await get(origin, '/__stats')).body.toString()) as { largeSent?: number };
    if (fillDone === undefined && (parsed.largeSent ?? 0) >= 1) fillDone = (Date.now() - started) / 1000;
  }
  const { peak, last } = rss.stop();
  const received = readers.reduce((n, r) => n + r.received(), 0);
  for (const r of readers) r.socket.destroy();
  const origins = (await originStats(origin, path)).path;
  const fill = kind === 'ranged' ? '(sliced: one slice fetched per 8 MiB the clients reach)' : `the fill ${fillDone === undefined ? 'did not finish' : `finished after ${fillDone.toFixed(0)} s`}`;
  return {
    scenario: `${fmtInt(SLOW_CLIENTS)} clients at 10 KiB/s of one 1 GiB object${kind === 'ranged' ? ', sliced' : ''}, ${SLOW_SEC} s`,
    peak,
    last,
    budgetMb: budget(256, 1),
    note: `origin fetches ${origins}; ${fill}; clients read ${mb(received)} in all`,
  };
}

async function missesScenario(origin: number, kind: 'large' | 'ranged'): Promise<Row> {
  const edge = await startEdge(origin, '256MB');
  const rss = sampleRss(edge.child.pid!);
  const size = MISS_MB * MB;
  const started = Date.now();
  const results = await Promise.all(
    Array.from({ length: MISSES }, (_, i) =>
      new Promise<number>((resolve) => {
        const socket = connect(edge.port, '127.0.0.1');
        let received = 0;
        socket.on('data', (chunk: Buffer) => (received += chunk.length));
        socket.on('close', () => resolve(received));
        socket.on('error', () => resolve(received));
        socket.write(`GET /${kind}/${size}/miss-${i} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n`);
      }),
    ),
  );
  const seconds = (Date.now() - started) / 1000;
  const { peak, last } = rss.stop();
  const complete = results.filter((n) => n > size).length;
  return {
    scenario: `${MISSES} concurrent misses of different ${MISS_MB} MiB objects${kind === 'ranged' ? ', sliced' : ''}`,
    peak,
    last,
    budgetMb: budget(256, MISSES),
    note: `${complete}/${MISSES} complete in ${seconds.toFixed(0)} s (${mb((results.reduce((a, b) => a + b, 0) / seconds))}/s)`,
  };
}

const SCENARIOS = ['fill', 'slow', 'misses', 'slow-sliced', 'misses-sliced'];

async function main(): Promise<void> {
  const wanted = process.argv.slice(2);
  for (const name of wanted) if (!SCENARIOS.includes(name)) throw new Error(`unknown scenario ${JSON.stringify(name)}; one of ${SCENARIOS.join(', ')}`);
  const run = (name: string) => wanted.length === 0 || wanted.includes(name);
  if (WRK === undefined && run('fill')) throw new Error('wrk is needed (apt-get install -y wrk)');
  const origin = await launchNodeScript('origin.js');
  out(`# memory: peak RSS of the edge (primary + 1 worker), ${new Date().toISOString()}`);
  out(`budget = memorySize + ${FILL_BUFFER_MB} MB (fillBufferSize) × fills in flight + ${BASE_MB} MB base\n`);
  const rows: Row[] = [];
  // Each row as it is measured, too: a long scenario cut short still leaves the earlier ones.
  const measured = (row: Row) => {
    rows.push(row);
    out(`${row.scenario}: peak ${mb(row.peak)}, at end ${mb(row.last)}, budget ${fmtInt(row.budgetMb)} MB; ${row.note}`);
  };
  try {
    if (run('fill')) {
      measured(await fillScenario(origin.port, 256, { objects: OBJECTS }));
      measured(await fillScenario(origin.port, 32, { seconds: 20 }));
    }
    if (run('slow')) measured(await slowScenario(origin.port, 'large'));
    if (run('misses')) measured(await missesScenario(origin.port, 'large'));
    if (run('slow-sliced')) measured(await slowScenario(origin.port, 'ranged'));
    if (run('misses-sliced')) measured(await missesScenario(origin.port, 'ranged'));
  } finally {
    out(
      table(
        ['scenario', 'peak RSS', 'RSS at end', 'budget', 'within', 'notes'],
        rows.map((r) => [r.scenario, mb(r.peak), mb(r.last), `${fmtInt(r.budgetMb)} MB`, r.peak <= r.budgetMb * MB ? 'yes' : 'NO', r.note]),
        [false, true, true, true, false, false],
      ),
    );
    await cleanup();
  }
}

main().catch((error: unknown) => {
  process.stderr.write(`bench:memory failed: ${(error as Error).stack ?? String(error)}\n`);
  process.exitCode = 1;
});
