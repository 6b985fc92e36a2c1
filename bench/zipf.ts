/**
 * Issue 14: the miss and fill path against nginx and Varnish (scenarios `zipf` and `coldfill` of
 * `npm run bench`).
 *
 *   zipf      wrk replays one Zipf (s = 1.0) key sequence for BENCH_ZIPF_SECONDS (30), 64 connections,
 *             through nginx proxy_cache, the edge and Varnish in turn, each started with an empty cache
 *             after BENCH_ZIPF_WARMUP_SECONDS (5) of traffic on other keys; the origin answers in 50 ms.
 *               100k: 100,000 keys of 1 KiB
 *               1M:   1,000,000 keys of 1–64 KiB; the edge's memory tier and Varnish's malloc storage are
 *                     a quarter of the bytes of the distinct keys nginx's run requested (nginx keeps its
 *                     cache on disk and in the page cache, bounded by max_size only)
 *   coldfill  every request a distinct 1 KiB key, no origin delay, 64 connections for
 *             BENCH_COLDFILL_SECONDS (15) after the same warm-up: objects stored, per second and per
 *             proxy CPU-second, edge vs nginx
 *
 * The key sequence is generated here (seeded) and written to a file the wrk script replays, so every
 * server gets the same requests in the same order per wrk thread; how far each got decides the hit
 * ratio a cache keeping everything would reach (each distinct key's first request a miss), shown per
 * row. Per server: requests/s, proxy CPU from /proc (its process tree), requests per proxy-CPU-second,
 * p50/p99 from wrk, hit ratio from the origin's count (1 − origin fetches / requests).
 */
import { readdirSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { HOST, fmtInt, fmtMs, fmtRatio, freePort, originStats, stop, table, tempDir, treeCpuSeconds, waitHttp, wrk, type WrkResult } from './lib.js';
import { mulberry32, zipfSampler } from './random.js';
import { startEdge, startNginx, startOrigin, startVarnish, type Server } from './servers.js';

const SECONDS = Number(process.env.BENCH_ZIPF_SECONDS ?? 30);
/**
 * Traffic on other keys before each measured run, so a process is measured warm (its code
 * compiled, its upstream connections open) while its cache of the measured keys is empty. Without
 * it the edge's first seconds run interpreted code: event-loop delay p99 13 ms and max 157 ms then,
 * against 3.3 ms and 14 ms after, which set its p99 for the whole run.
 */
const WARMUP_SECONDS = Number(process.env.BENCH_ZIPF_WARMUP_SECONDS ?? 5);
/** Keys of the warm-up traffic (1 KiB each, negligible beside any cache size here). */
const WARMUP_KEYS = 2000;
/** Requests in the sequence: more than any server answers in SECONDS (it wraps if one does). */
const SEQUENCE = 1_000_000;
const COLDFILL_SECONDS = Number(process.env.BENCH_COLDFILL_SECONDS ?? 15);
const CONNECTIONS = 64;
const THREADS = 2;
const ORIGIN_DELAY_MS = 50;
const KIB = 1024;

const out = (text = '') => process.stdout.write(`${text}\n`);

interface Workload {
  name: string;
  /** One path per request, in order. */
  paths: string[];
  /** Distinct keys among the first n requests, at [n]. */
  distinct: Uint32Array;
  /** Bytes of the distinct objects among the first n requests, at [n]. */
  workingSet: Float64Array;
}

/** SEQUENCE Zipf(1) draws over `keys` keys; key k's body is `sizeOf(k)` bytes. */
function zipfWorkload(name: string, keys: number, sizeOf: (key: number) => number): Workload {
  const pick = zipfSampler(keys, 1, mulberry32(14));
  const seen = new Uint8Array(keys);
  const distinct = new Uint32Array(SEQUENCE + 1);
  const workingSet = new Float64Array(SEQUENCE + 1);
  const paths: string[] = [];
  for (let i = 0; i < SEQUENCE; i++) {
    const key = pick();
    distinct[i + 1] = distinct[i]! + (seen[key] ? 0 : 1);
    workingSet[i + 1] = workingSet[i]! + (seen[key] ? 0 : sizeOf(key));
    seen[key] = 1;
    paths.push(`/zipf/${ORIGIN_DELAY_MS}/${sizeOf(key)}/${key}`);
  }
  return { name, paths, distinct, workingSet };
}

/** What a run of `requests` requests asked for: the first `requests` of the sequence (the threads advance alike). */
const reached = (workload: Workload, requests: number) => Math.min(requests, SEQUENCE);

/** 1 to 64 KiB, fixed per key (a multiplicative hash spreads neighbouring ranks over the sizes). */
const mixedSize = (key: number) => KIB * (1 + (Math.imul(key + 1, 0x9e3779b1) >>> 26));

/** A wrk script replaying `file`: thread i sends lines i, i + THREADS, …, and starts over at the end. */
function replayScript(dir: string, file: string, name = 'replay.lua'): string {
  const script = join(dir, name);
  writeFileSync(
    script,
    `local threads = 0
function setup(thread) thread:set("index", threads); threads = threads + 1 end
local paths, mine, sent = {}, 0, 0
function init(args)
  local i = 0
  for line in io.lines("${file}") do
    if i % ${THREADS} == index then mine = mine + 1; paths[mine] = line end
    i = i + 1
  end
end
function request()
  sent = sent + 1
  return wrk.format("GET", paths[(sent - 1) % mine + 1])
end
`,
  );
  return script;
}

/** A wrk script sending a distinct path per request. */
function distinctScript(dir: string, prefix: string): string {
  const script = join(dir, `distinct-${prefix}.lua`);
  writeFileSync(
    script,
    `local threads = 0
function setup(thread) thread:set("index", threads); threads = threads + 1 end
local n = 0
function request() n = n + 1; return wrk.format("GET", "/zipf/0/${KIB}/${prefix}-" .. index .. "-" .. n) end
`,
  );
  return script;
}

/** The warm-up traffic: a Zipf sequence over WARMUP_KEYS keys no measured request asks for. */
function warmupScript(dir: string): string {
  const pick = zipfSampler(WARMUP_KEYS, 1, mulberry32(41));
  const file = join(dir, 'warmup-paths.txt');
  writeFileSync(file, `${Array.from({ length: 50_000 }, () => `/zipf/${ORIGIN_DELAY_MS}/${KIB}/warmup-${pick()}`).join('\n')}\n`);
  return replayScript(dir, file, 'warmup.lua');
}

/** Warm-up traffic (warmupScript) against a server, unless BENCH_ZIPF_WARMUP_SECONDS is 0. */
async function warmUp(proxy: Server, script: string): Promise<void> {
  if (WARMUP_SECONDS > 0) await wrk(`http://${HOST}:${proxy.port}/`, { seconds: WARMUP_SECONDS, connections: CONNECTIONS, threads: THREADS, script });
}

interface Row {
  server: string;
  r: WrkResult;
  cpu: number;
  wall: number;
  originFetches: number;
}

/** wrk against a server while its process tree's CPU and the origin's count are read. */
async function measured(server: string, proxy: Server, origin: Server, run: () => Promise<WrkResult>): Promise<Row> {
  const before = (await originStats(origin.port)).total;
  const cpuBefore = treeCpuSeconds(proxy.child.pid!);
  const started = performance.now();
  const r = await run();
  const wall = (performance.now() - started) / 1000;
  const cpu = treeCpuSeconds(proxy.child.pid!) - cpuBefore;
  return { server, r, cpu, wall, originFetches: (await originStats(origin.port)).total - before };
}

/** A server to measure; given the rows measured before it in the same run. */
interface Contender {
  name: (before: Row[]) => string;
  start: (origin: Server, before: Row[]) => Promise<Server | undefined>;
}

async function zipfRun(workload: Workload, contenders: Contender[]): Promise<Row[]> {
  const dir = tempDir('zipf');
  const file = join(dir, 'paths.txt');
  writeFileSync(file, `${workload.paths.join('\n')}\n`);
  const script = replayScript(dir, file);
  const warmup = warmupScript(dir);
  const origin = await startOrigin();
  const rows: Row[] = [];
  try {
    for (const contender of contenders) {
      const name = contender.name(rows);
      const proxy = await contender.start(origin, rows);
      if (proxy === undefined) {
        out(`${name}: not installed, skipped`);
        continue;
      }
      try {
        await warmUp(proxy, warmup);
        rows.push(await measured(name, proxy, origin, () => wrk(`http://${HOST}:${proxy.port}/`, { seconds: SECONDS, connections: CONNECTIONS, threads: THREADS, script })));
      } finally {
        await stop(proxy.child);
      }
    }
  } finally {
    await stop(origin.child);
  }
  const nginx = rows.find((row) => row.server.startsWith('nginx'));
  const perCpu = (row: Row) => row.r.requests / row.cpu;
  const percent = (ratio: number) => `${(ratio * 100).toFixed(1)}%`;
  out(
    table(
      ['server', 'req/s', 'proxy CPU', 'requests per proxy-CPU-second', 'vs nginx', 'p50', 'p99', 'hit ratio', 'keeping everything', 'working set', 'errors'],
      rows.map((row) => {
        const requests = reached(workload, row.r.requests);
        return [
          row.server,
          fmtInt(row.r.rps),
          `${fmtInt((row.cpu / row.wall) * 100)}% of a core`,
          fmtInt(perCpu(row)),
          nginx ? fmtRatio(perCpu(row) / perCpu(nginx)) : '—',
          fmtMs(row.r.p50),
          fmtMs(row.r.p99),
          percent(1 - row.originFetches / row.r.requests),
          percent(1 - workload.distinct[requests]! / requests),
          `${fmtInt(workload.workingSet[requests]! / (1024 * KIB))} MB`,
          [row.r.non2xx ? `${row.r.non2xx} non-2xx` : '', row.r.socketErrors].filter(Boolean).join('; ') || '—',
        ];
      }),
      [false, true, true, true, true, true, true, true, true, true, false],
    ),
  );
  out('keeping everything: the hit ratio of a cache that never evicts, over the same requests; working set: the bytes of their distinct keys');
  out();
  return rows;
}

/** The edge as a user starts it (defaults but `extra`), with an admin port for /stats. */
async function startEdgeWithAdmin(origin: Server, dir: string, extra: string[] = []): Promise<Server & { admin: number }> {
  const admin = await freePort();
  const edge = await startEdge(origin.port, dir, `edge-${admin}`, { extra: ['--admin-listen', `${HOST}:${admin}`, ...extra] });
  await waitHttp(admin, '/healthz', edge);
  return { ...edge, admin };
}

export async function zipf(): Promise<void> {
  out('## zipf: the miss and fill path against nginx and Varnish (issue 14)');
  out(`wrk replays one Zipf (s = 1.0) key sequence for ${SECONDS} s, ${CONNECTIONS} connections, ${THREADS} threads; each server starts with an empty cache, after ${WARMUP_SECONDS} s of warm-up traffic on ${WARMUP_KEYS} other keys (the process warm, not the cache); origin delay ${ORIGIN_DELAY_MS} ms`);
  out();
  const fixed = (name: string) => () => name;
  const small = zipfWorkload('Zipf over 100,000 keys of 1 KiB', 100_000, () => KIB);
  out(`### ${small.name}`);
  await zipfRun(small, [
    { name: fixed('nginx proxy_cache (1 worker)'), start: (origin) => startNginx(origin.port, tempDir('nginx'), 1) },
    { name: fixed('outpost edge (defaults, 1 worker)'), start: (origin) => startEdgeWithAdmin(origin, tempDir('edge')) },
    { name: fixed('varnish (malloc 256M)'), start: (origin) => startVarnish(origin.port, tempDir('varnish'), 'malloc,256m') },
  ]);
  const large = zipfWorkload('Zipf over 1,000,000 keys of 1–64 KiB', 1_000_000, mixedSize);
  out(`### ${large.name}`);
  // A quarter of the working set nginx's run reached (the first row), in MB.
  const memoryMb = (before: Row[]) => {
    const requests = reached(large, before[0]?.r.requests ?? 60_000);
    return Math.max(8, Math.ceil(large.workingSet[requests]! / 4 / (1024 * KIB)));
  };
  await zipfRun(large, [
    { name: fixed('nginx proxy_cache (1 worker, disk)'), start: (origin) => startNginx(origin.port, tempDir('nginx'), 1, { maxSize: '8g', keysZone: '64m' }) },
    { name: (before) => `outpost edge (--memory-size ${memoryMb(before)}MB)`, start: (origin, before) => startEdgeWithAdmin(origin, tempDir('edge'), ['--memory-size', `${memoryMb(before)}MB`]) },
    { name: (before) => `varnish (malloc ${memoryMb(before)}M)`, start: (origin, before) => startVarnish(origin.port, tempDir('varnish'), `malloc,${memoryMb(before)}m`) },
  ]);
}

/** Files under `dir`, recursively (nginx keeps one per cached object). */
function fileCount(dir: string): number {
  let count = 0;
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    count += statSync(path).isDirectory() ? fileCount(path) : 1;
  }
  return count;
}

export async function coldFill(): Promise<void> {
  out('## coldfill: every request a distinct 1 KiB key that is stored (issue 14)');
  out(`wrk, ${CONNECTIONS} connections, ${COLDFILL_SECONDS} s per server after ${WARMUP_SECONDS} s of warm-up traffic on ${WARMUP_KEYS} other keys (not counted), origin without delay`);
  out();
  const dir = tempDir('coldfill');
  const warmup = warmupScript(dir);
  const origin = await startOrigin();
  const rows: { server: string; row: Row; stored: number; note: string }[] = [];
  try {
    const edge = await startEdgeWithAdmin(origin, dir);
    type Stats = { tiers: { disk: { entries: number } }; disk?: { skippedBehind?: number } };
    const stats = async () => (await (await fetch(`http://${HOST}:${edge.admin}/stats`)).json()) as Stats;
    try {
      await warmUp(edge, warmup);
      const before = await stats();
      const row = await measured('outpost edge (defaults)', edge, origin, () =>
        wrk(`http://${HOST}:${edge.port}/`, { seconds: COLDFILL_SECONDS, connections: CONNECTIONS, threads: THREADS, script: distinctScript(dir, 'edge') }),
      );
      const after = await stats();
      const skipped = (after.disk?.skippedBehind ?? 0) - (before.disk?.skippedBehind ?? 0);
      rows.push({ server: row.server, row, stored: after.tiers.disk.entries - before.tiers.disk.entries, note: `disk writes skipped while LevelDB was behind: ${fmtInt(skipped)}` });
    } finally {
      await stop(edge.child);
    }
    const nginxDir = tempDir('nginx');
    const nginx = await startNginx(origin.port, nginxDir, 1, { maxSize: '8g', keysZone: '64m' });
    if (nginx !== undefined) {
      try {
        await warmUp(nginx, warmup);
        const before = fileCount(join(nginxDir, 'cache'));
        const row = await measured('nginx proxy_cache (1 worker)', nginx, origin, () =>
          wrk(`http://${HOST}:${nginx.port}/`, { seconds: COLDFILL_SECONDS, connections: CONNECTIONS, threads: THREADS, script: distinctScript(dir, 'nginx') }),
        );
        rows.push({ server: row.server, row, stored: fileCount(join(nginxDir, 'cache')) - before, note: 'one file per object' });
      } finally {
        await stop(nginx.child);
      }
    }
  } finally {
    await stop(origin.child);
  }
  const nginxRow = rows.find((row) => row.server.startsWith('nginx'));
  const storedPerCpu = (entry: (typeof rows)[number]) => entry.stored / entry.row.cpu;
  out(
    table(
      ['server', 'req/s', 'proxy CPU', 'stored', 'stored/s', 'stored per proxy-CPU-second', 'vs nginx', 'CPU per stored object', 'p99', 'notes'],
      rows.map((entry) => [
        entry.server,
        fmtInt(entry.row.r.rps),
        `${fmtInt((entry.row.cpu / entry.row.wall) * 100)}% of a core`,
        fmtInt(entry.stored),
        fmtInt(entry.stored / entry.row.wall),
        fmtInt(storedPerCpu(entry)),
        nginxRow ? fmtRatio(storedPerCpu(entry) / storedPerCpu(nginxRow)) : '—',
        `${((entry.row.cpu / entry.stored) * 1e6).toFixed(0)} µs`,
        fmtMs(entry.row.r.p99),
        entry.note,
      ]),
      [false, true, true, true, true, true, true, true, true, false],
    ),
  );
  out();
}
