/**
 * Store benchmark (`npm run bench:store`): for 1 KiB and 100 KiB bodies, memory-tier gets/s
 * (through TieredStore, the serving path), disk-tier gets/s including reading the whole body,
 * tiered puts/s, and the memory-tier get cost relative to a bare Map get of the same buffer.
 * Uses a temp folder, removed afterwards. Single-threaded, one operation in flight at a time.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { putEntry, type CachedEntry, type EntryMeta } from '../storage/cache-store.js';
import { entryKey } from '../storage/keys.js';
import { openTieredStore, type TieredStore } from '../storage/tiered-store.js';

const MEASURE_MS = Number(process.env.BENCH_MS ?? 1500);
const WARMUP_MS = Math.max(200, MEASURE_MS / 5);
const SIZES = [1024, 100 * 1024];
const KEYS = 500;

interface Result {
  ops: number;
  ns: bigint;
}

/** Runs `op` in batches until `ms` have passed; returns ops and elapsed ns. */
async function timed(ms: number, batch: number, op: (i: number) => unknown | Promise<unknown>): Promise<Result> {
  const budget = BigInt(ms) * 1_000_000n;
  const start = process.hrtime.bigint();
  let ops = 0;
  let elapsed = 0n;
  while (elapsed < budget) {
    for (let i = 0; i < batch; i++) {
      const r = op(ops + i);
      if (r instanceof Promise) await r;
    }
    ops += batch;
    elapsed = process.hrtime.bigint() - start;
  }
  return { ops, ns: elapsed };
}

/** Synchronous variant, so the memory and Map loops pay no await per op. */
function timedSync(ms: number, batch: number, op: (i: number) => number): Result & { sink: number } {
  const budget = BigInt(ms) * 1_000_000n;
  const start = process.hrtime.bigint();
  let ops = 0;
  let sink = 0;
  let elapsed = 0n;
  while (elapsed < budget) {
    for (let i = 0; i < batch; i++) sink += op(ops + i);
    ops += batch;
    elapsed = process.hrtime.bigint() - start;
  }
  return { ops, ns: elapsed, sink };
}

const perSecond = (r: Result) => (r.ops * 1e9) / Number(r.ns);
const nsPerOp = (r: Result) => Number(r.ns) / r.ops;

function meta(size: number): EntryMeta {
  const now = Date.now();
  return { size, tags: ['bench'], storedAt: now, staleAt: now + 3.6e6, graceUntil: now + 7.2e6, deleteAt: now + 1e7, http: { status: 200 } };
}

async function readBody(entry: CachedEntry): Promise<number> {
  if (entry.body) return entry.body.length;
  let n = 0;
  for await (const chunk of entry.openBody()) n += (chunk as Buffer).length;
  return n;
}

async function benchSize(store: TieredStore, size: number) {
  const body = Buffer.alloc(size, 0x61);
  const keys = Array.from({ length: KEYS }, (_, i) => entryKey(`https://bench.test/${size}/${i}`, ''));
  for (const key of keys) await putEntry(store, key, meta(size), body);

  // Memory tier: every key is a memory hit.
  const memGet = (i: number) => (store.get(keys[i % KEYS]!) as CachedEntry).body!.length;
  timedSync(WARMUP_MS, 1000, memGet);
  const memory = timedSync(MEASURE_MS, 1000, memGet);

  // Baseline: a bare Map holding the same buffers under the same keys.
  const map = new Map(keys.map((k) => [k, body]));
  const mapGet = (i: number) => map.get(keys[i % KEYS]!)!.length;
  timedSync(WARMUP_MS, 1000, mapGet);
  const bare = timedSync(MEASURE_MS, 1000, mapGet);

  // Disk tier: ask the LevelStore directly (no promotion), and read the whole body.
  let diskBytes = 0;
  const diskGet = async (i: number) => {
    const entry = await store.disk.get(keys[i % KEYS]!);
    diskBytes += await readBody(entry!);
  };
  await timed(WARMUP_MS, 50, diskGet);
  const disk = await timed(MEASURE_MS, 50, diskGet);
  if (diskBytes === 0) throw new Error('disk reads returned nothing');

  // Puts through the tiered store (disk + memory), fresh keys each time.
  const putKey = (i: number) => entryKey(`https://bench.test/${size}/put/${i}`, '');
  await timed(WARMUP_MS, 20, (i) => putEntry(store, putKey(1e9 + i), meta(size), body));
  const puts = await timed(MEASURE_MS, 20, (i) => putEntry(store, putKey(i), meta(size), body));

  return { size, memory, bare, disk, puts, sink: memory.sink + bare.sink };
}

const fmt = (n: number) => Math.round(n).toLocaleString('en-US');
const label = (size: number) => (size >= 1024 ? `${size / 1024} KiB` : `${size} B`);

async function main(): Promise<void> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'outpost-bench-'));
  const store = await openTieredStore({
    dataDir,
    memoryBytes: 1024 * 1024 * 1024,
    diskBytes: 8 * 1024 * 1024 * 1024,
    memoryMaxEntryBytes: 1024 * 1024,
  });
  const started = process.hrtime.bigint();
  try {
    const rows = [];
    for (const size of SIZES) rows.push(await benchSize(store, size));
    const header = ['body', 'memory gets/s', 'disk gets/s (+body)', 'tiered puts/s', 'Map gets/s', 'memory get ns', 'Map get ns', 'memory/Map cost'];
    const lines = rows.map((r) => [
      label(r.size),
      fmt(perSecond(r.memory)),
      fmt(perSecond(r.disk)),
      fmt(perSecond(r.puts)),
      fmt(perSecond(r.bare)),
      nsPerOp(r.memory).toFixed(1),
      nsPerOp(r.bare).toFixed(1),
      `${(nsPerOp(r.memory) / nsPerOp(r.bare)).toFixed(1)}x`,
    ]);
    const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
    const row = (cells: string[]) => '| ' + cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ') + ' |';
    console.log(row(header));
    console.log('|' + widths.map((w, i) => (i === 0 ? '-'.repeat(w + 2) : '-'.repeat(w + 1) + ':')).join('|') + '|');
    for (const l of lines) console.log(row(l));
    const seconds = Number(process.hrtime.bigint() - started) / 1e9;
    console.log(
      `\n${MEASURE_MS} ms per measurement after ${WARMUP_MS} ms warm-up; ${KEYS} keys per size; one op in flight; ` +
        `disk = LevelStore get + full body read; total ${seconds.toFixed(1)} s (checksum ${rows.reduce((a, r) => a + r.sink, 0) % 997})`,
    );
  } finally {
    await store.close();
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
}

await main();
