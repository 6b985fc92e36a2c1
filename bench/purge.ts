/**
 * Purge benchmark (`node dist/bench/purge.js`), for issue 10: "the time to purge 100,000 objects
 * by one tag, and by prefix, on the disk tier". A purge runs while the node serves, and on the disk
 * tier it is a LevelDB scan plus a batch delete per page, so its cost grows with the objects it hits.
 *
 * Each scenario opens a fresh TieredStore (1 MiB memory tier, so nearly every entry is on disk only)
 * in a temp folder, fills it with 1 KiB bodies (256 writes in flight), and times one purge:
 *   - tag:      100,000 entries tagged `t-hot`, among 20,000 with other tags that must survive;
 *   - prefix:   100,000 under https://bench.example/static/, 20,000 under .../other/ that must survive;
 *   - soft tag: as tag, but the entries stay, marked stale.
 * Afterwards it checks the returned count and a sample of purged keys and of survivors.
 * CPU time is process.cpuUsage(): the whole process, LevelDB's worker threads included.
 * PURGE_BENCH_OBJECTS scales the 100,000 down for a quick smoke test.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { putEntry, type EntryMeta } from '../storage/cache-store.js';
import { entryKey } from '../storage/keys.js';
import { openTieredStore, type TieredStore } from '../storage/tiered-store.js';

const OBJECTS = Number(process.env.PURGE_BENCH_OBJECTS ?? 100_000);
const SURVIVORS = Math.floor(OBJECTS / 5);
const BODY = Buffer.alloc(1024, 0x61);
const IN_FLIGHT = 256;
const SAMPLE = 1000;

interface Item {
  key: string;
  tags: string[];
}

interface Scenario {
  name: string;
  purged: (i: number) => Item;
  survivor: (i: number) => Item;
  soft: boolean;
  purge: (store: TieredStore) => Promise<number>;
}

const item = (url: string, tags: string[]): Item => ({ key: entryKey(url, ''), tags });

// Tag scenarios interleave both sets under one path; survivors carry `t-hotter`, which shares t-hot's prefix.
const tagged = {
  purged: (i: number) => item(`https://bench.example/obj/${i}`, ['t-hot', `t-group-${i % 100}`]),
  survivor: (i: number) => item(`https://bench.example/obj/s${i}`, ['t-hotter', `t-group-${i % 100}`]),
};

const SCENARIOS: Scenario[] = [
  { name: 'hard purge by tag', ...tagged, soft: false, purge: (s) => s.purgeTag('t-hot') },
  {
    name: 'hard purge by prefix',
    purged: (i) => item(`https://bench.example/static/${i}`, ['t-static']),
    survivor: (i) => item(`https://bench.example/other/${i}`, ['t-other']),
    soft: false,
    purge: (s) => s.purgePrefix('https://bench.example/static/'),
  },
  { name: 'soft purge by tag', ...tagged, soft: true, purge: (s) => s.purgeTag('t-hot', { soft: true }) },
];

function meta(tags: string[]): EntryMeta {
  const now = Date.now();
  return { size: BODY.length, tags, storedAt: now, staleAt: now + 3.6e6, graceUntil: now + 7.2e6, deleteAt: now + 1e7, http: { status: 200 } };
}

/** Evenly spread indexes in [0, n), first and last included. */
function sample(n: number): number[] {
  if (n <= SAMPLE) return Array.from({ length: n }, (_, i) => i);
  return Array.from({ length: SAMPLE }, (_, i) => Math.round((i * (n - 1)) / (SAMPLE - 1)));
}

interface Result {
  name: string;
  count: number;
  ns: bigint;
  cpuUs: number;
  fillNs: bigint;
  memoryEntries: number;
  diskEntries: number;
  problems: string[];
}

async function run(scenario: Scenario): Promise<Result> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'outpost-purge-bench-'));
  try {
    const store = await openTieredStore({ dataDir, memoryBytes: 1024 * 1024, diskBytes: 4 * 1024 ** 3 });
    try {
      // Fill: one survivor after every fifth purged entry, IN_FLIGHT writes at a time.
      const items: Item[] = [];
      for (let i = 0; i < OBJECTS; i++) {
        items.push(scenario.purged(i));
        if (i % 5 === 4) items.push(scenario.survivor((i - 4) / 5));
      }
      const fillStart = process.hrtime.bigint();
      for (let i = 0; i < items.length; i += IN_FLIGHT) {
        await Promise.all(items.slice(i, i + IN_FLIGHT).map((it) => putEntry(store, it.key, meta(it.tags), BODY)));
      }
      const fillNs = process.hrtime.bigint() - fillStart;
      // Drain the disk's mutation queue (e.g. the presence filter rebuilt larger) before timing.
      await store.disk.delete(entryKey('https://bench.example/none', ''));
      const memoryEntries = store.memoryStats().entries;
      const diskEntries = store.stats().entries;

      const cpu = process.cpuUsage();
      const start = process.hrtime.bigint();
      const count = await scenario.purge(store);
      const ns = process.hrtime.bigint() - start;
      const used = process.cpuUsage(cpu);

      const problems: string[] = [];
      if (count !== OBJECTS) problems.push(`returned ${count}, expected ${OBJECTS}`);
      const now = Date.now();
      let bad = 0;
      for (const i of sample(OBJECTS)) {
        const entry = await store.get(scenario.purged(i).key);
        if (scenario.soft ? !(entry && entry.meta.staleAt <= now) : entry !== undefined) bad++;
      }
      if (bad > 0) problems.push(`${bad} sampled purged keys ${scenario.soft ? 'missing or not stale' : 'still present'}`);
      bad = 0;
      for (const i of sample(SURVIVORS)) {
        const entry = await store.get(scenario.survivor(i).key);
        if (!entry || entry.meta.staleAt <= now) bad++;
      }
      if (bad > 0) problems.push(`${bad} sampled survivors missing or stale`);
      return { name: scenario.name, count, ns, cpuUs: used.user + used.system, fillNs, memoryEntries, diskEntries, problems };
    } finally {
      await store.close();
    }
  } finally {
    fs.rmSync(dataDir, { recursive: true, force: true });
  }
}

const fmt = (n: number) => Math.round(n).toLocaleString('en-US');
const ms = (ns: bigint | number) => `${(Number(ns) / 1e6).toFixed(0)} ms`;

function table(header: string[], lines: string[][]): void {
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  const row = (cells: string[]) => '| ' + cells.map((c, i) => (i === 0 ? c.padEnd(widths[i]!) : c.padStart(widths[i]!))).join(' | ') + ' |';
  console.log(row(header));
  console.log('|' + widths.map((w, i) => (i === 0 ? '-'.repeat(w + 2) : '-'.repeat(w + 1) + ':')).join('|') + '|');
  for (const l of lines) console.log(row(l));
}

async function main(): Promise<void> {
  if (!(Number.isInteger(OBJECTS) && OBJECTS > 0)) throw new Error('PURGE_BENCH_OBJECTS must be a positive integer');
  const env = process.env.PURGE_BENCH_OBJECTS !== undefined ? `PURGE_BENCH_OBJECTS=${OBJECTS} ` : '';
  const command = `${env}node ${path.relative(process.cwd(), process.argv[1]!)}`;
  console.log(
    `${new Date().toISOString()} | ${os.cpus()[0]?.model ?? 'unknown cpu'} | ${os.cpus().length} cores | node ${process.version} | \`${command}\`\n`,
  );
  const started = process.hrtime.bigint();
  const results: Result[] = [];
  for (const scenario of SCENARIOS) results.push(await run(scenario));

  table(
    ['scenario', 'objects purged', 'wall time', 'CPU time', 'objects purged/s'],
    results.map((r) => [
      r.name,
      r.count === OBJECTS ? fmt(r.count) : `${fmt(r.count)} (expected ${fmt(OBJECTS)})`,
      ms(r.ns),
      ms(r.cpuUs * 1000),
      fmt((r.count * 1e9) / Number(r.ns)),
    ]),
  );
  console.log(`\nEach scenario: fresh store, 1 MiB memory tier, ${fmt(OBJECTS)} + ${fmt(SURVIVORS)} entries of 1 KiB, ${IN_FLIGHT} puts in flight.`);
  for (const r of results) {
    const fill = `fill ${ms(r.fillNs)} (${fmt(((OBJECTS + SURVIVORS) * 1e9) / Number(r.fillNs))} puts/s), ${fmt(r.diskEntries)} on disk, ${fmt(r.memoryEntries)} also in memory`;
    const check = r.problems.length === 0 ? 'checks passed' : `CHECKS FAILED: ${r.problems.join('; ')}`;
    console.log(`- ${r.name}: ${fill}; ${check}`);
  }
  console.log(`\nTotal ${(Number(process.hrtime.bigint() - started) / 1e9).toFixed(1)} s.`);
  if (results.some((r) => r.problems.length > 0)) process.exitCode = 1;
}

await main();
