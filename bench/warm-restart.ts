/**
 * `npm run bench:restart` — issue 14: time to the first hit after kill -9 of an edge whose disk
 * tier holds BENCH_RESTART_OBJECTS (1,000,000) objects.
 *
 * 1. An edge (one worker) stores one 1 KiB object fetched through it; it is stopped.
 * 2. A child process opens that worker's disk tier and stores the same response under N − 1 more
 *    URLs (the store API, commits in groups), then kills itself with SIGKILL: LevelDB is left
 *    with its log to replay, as after a crash.
 * 3. The edge is started again on the same port and data folder; from the spawn, one request
 *    for a stored URL every 20 ms until one is a hit (Cache-Status), then /stats until the disk
 *    tier has counted every entry. Both times are printed.
 *
 * node dist/bench/warm-restart.js [--bin PATH_TO_bin/outpost] (another build, for a before/after)
 */
import { spawn } from 'node:child_process';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { cacheKey } from '../pipeline/cache-key.js';
import { putEntry } from '../storage/cache-store.js';
import { entryKey } from '../storage/keys.js';
import { LevelStore } from '../storage/level-store.js';
import { HOST, ROOT, cacheStatus, cleanup, fmtInt, freePort, get, launch, launchNodeScript, sleep, stop, tempDir, waitHttp } from './lib.js';

const OBJECTS = Number(process.env.BENCH_RESTART_OBJECTS ?? 1_000_000);
const out = (text = '') => process.stdout.write(`${text}\n`);
const pathOf = (i: number) => `/zipf/0/1024/restart-${i}`;

/** Child mode: fills the shard with copies of the seed entry, then dies by SIGKILL. */
async function fill(location: string, host: string, objects: number): Promise<void> {
  const store = await LevelStore.open({ location, maxBytes: 64 * 1024 ** 3 });
  const keyOf = (i: number) => entryKey(cacheKey('http', host, pathOf(i), { sortQuery: false, dropQueryParams: [] }), '');
  const seed = await store.get(keyOf(0));
  if (seed === undefined) throw new Error('the seed object is not on disk');
  const parts: Buffer[] = [];
  for await (const part of seed.openBody()) parts.push(part as Buffer);
  const body = Buffer.concat(parts);
  const started = performance.now();
  const WINDOW = 1024;
  for (let from = 1; from < objects; from += WINDOW) {
    const puts: Promise<void>[] = [];
    for (let i = from; i < Math.min(objects, from + WINDOW); i++) puts.push(putEntry(store, keyOf(i), seed.meta, body));
    await Promise.all(puts);
  }
  process.stdout.write(`${JSON.stringify({ stored: objects - 1, seconds: (performance.now() - started) / 1000 })}\n`);
  process.kill(process.pid, 'SIGKILL');
}

async function main(): Promise<void> {
  const binAt = process.argv.indexOf('--bin');
  const bin = binAt === -1 ? join(ROOT, 'bin', 'outpost') : process.argv[binAt + 1]!;
  const origin = await launchNodeScript('origin.js');
  const dataDir = tempDir('restart');
  const port = await freePort();
  const admin = await freePort();
  const args = [bin, 'edge', '--upstream', `http://${HOST}:${origin.port}`, '--listen', `${HOST}:${port}`, '--admin-listen', `${HOST}:${admin}`, '--data-dir', dataDir, '--workers', '1', '--access-log', 'false'];
  out(`# warm restart: ${fmtInt(OBJECTS)} objects on disk, kill -9, time to the first hit (${bin}), ${new Date().toISOString()}`);

  let edge = launch(process.execPath, args);
  await waitHttp(port, '/__outpost/health', edge);
  await get(port, pathOf(0));
  for (let i = 0; i < 100 && ((await (await fetch(`http://${HOST}:${admin}/stats`)).json()) as { tiers: { disk: { entries: number } } }).tiers.disk.entries < 1; i++) await sleep(50);
  await stop(edge.child);

  const filler = spawn(process.execPath, [join(ROOT, 'dist', 'bench', 'warm-restart.js'), '--fill', join(dataDir, 'worker-0', 'cache'), `${HOST}:${port}`, String(OBJECTS)], { stdio: ['ignore', 'pipe', 'inherit'] });
  let report = '';
  filler.stdout.on('data', (chunk: Buffer) => (report += chunk.toString()));
  const signal = await new Promise<NodeJS.Signals | null>((resolve) => filler.once('exit', (_code, s) => resolve(s)));
  out(`filled: ${report.trim()} (the filler ended by ${signal})`);

  const started = performance.now();
  edge = launch(process.execPath, args);
  let firstHit: number | undefined;
  let status = '';
  while (firstHit === undefined && performance.now() - started < 120_000) {
    try {
      const res = await get(port, pathOf(OBJECTS - 1));
      status = cacheStatus(res.headers);
      if (res.status === 200 && /;\s*hit/.test(status)) firstHit = performance.now() - started;
    } catch {
      // not listening yet
    }
    if (firstHit === undefined) await sleep(20);
  }
  out(`first hit ${firstHit === undefined ? 'never (last Cache-Status: ' + status + ')' : `${fmtInt(firstHit)} ms`} after the spawn`);
  let counted: number | undefined;
  while (counted === undefined && performance.now() - started < 300_000) {
    try {
      const stats = (await (await fetch(`http://${HOST}:${admin}/stats`)).json()) as { tiers: { disk: { entries: number } } };
      if (stats.tiers.disk.entries >= OBJECTS) counted = performance.now() - started;
    } catch {
      // admin not up yet
    }
    if (counted === undefined) await sleep(100);
  }
  out(`every entry counted ${counted === undefined ? 'not within 300 s' : `${fmtInt(counted)} ms`} after the spawn`);
  await stop(edge.child);
  await stop(origin.child);
}

if (process.argv[2] === '--fill') {
  fill(process.argv[3]!, process.argv[4]!, Number(process.argv[5])).catch((error: unknown) => {
    process.stderr.write(`${(error as Error).stack}\n`);
    process.exit(1);
  });
} else {
  main()
    .catch((error: unknown) => {
      process.stderr.write(`bench:restart failed: ${(error as Error).stack ?? String(error)}\n`);
      process.exitCode = 1;
    })
    .finally(() => cleanup().then(() => process.exit()));
}
