/**
 * `npm run chaos` — a bounded chaos run of a whole Outpost PoP on loopback, with a byte-exact
 * correctness oracle.
 *
 * Topology, all real processes on 127.0.0.1 (ports chosen up front, so restarts keep them):
 *   3 origins (dist/bench/chaos-origin.js), 2 shields (`bin/outpost shield`, every origin in their
 *   pool, active health checks), 2 edges (`bin/outpost edge`, both shields as upstreams: keys hash
 *   onto shields; purge peers: the other edge and both shields). Each node: 2 workers, its own
 *   data folder, 1 MiB slices (so most large bodies are sliced); shield-1's is a 128 MiB tmpfs (when mount works: we are root) for the disk-full event.
 *
 * Load: CHAOS_CONCURRENCY loops (undici Pools, one per edge) of GETs of Zipf-distributed keys
 *   (s = 1) with bodies of 1 KiB to 5 MiB, 5 % of them Range requests, and ~5 % purges: the driver
 *   bumps the key's version (a file every origin reads per request, see bench/chaos/versions.ts),
 *   then POSTs /purge (admin token) to a live edge, which forwards it to its peers.
 *
 * Oracle: an origin body is a pure function of (key, version) (bench/chaos/body.ts), sent with
 *   x-version, x-checksum (CRC32) and an ETag. Every 200/206 is compared byte for byte with the body
 *   of the version it claims. A body that differs, or ends cleanly but short or long, is a WRONG
 *   BODY (must be 0); a body cut by an error is a failed request. Failures are split into those
 *   where a stale copy may exist (the key was fetched successfully since its last purge; a cache
 *   may still have evicted it) and those without, by cause, and by the chaos event under way
 *   (events count until 2 s after they end). Also counted (allowed, reported): older versions
 *   served, stale copies served after a purge had replied. Counted and fatal like a wrong body:
 *   ETag / x-checksum of another version than x-version, an x-version the driver never set.
 *
 * Chaos, one event at a time after a short warm-up (CHAOS_SEC / 10, at most 5 s), in this order,
 *   round after round, with targets rotating: kill -9 of a whole node (primary and workers: its
 *   process group), then after a pause a restart on the same ports and data folder, ready when
 *   /readyz is 200; filling shield-1's tmpfs to the brim, then deleting the filler and waiting for
 *   /readyz to stop naming the disk; SIGSTOP then SIGCONT of an origin; kill -9 of one worker (its
 *   primary restarts it). Pauses and holds: CHAOS_SEC / 20, between 1 and 4 s. An event that could
 *   not end before CHAOS_SEC is not started.
 *
 * Output: a summary on stdout ending with the line `wrong bodies: N`; progress on stderr.
 * Exit status: 0, or 1 on any wrong body / inconsistent headers / version ahead of the origin /
 *   no request sent / a killed node that could not be restarted; 2 if the processes cannot start.
 * Everything is cleaned up (process groups killed, tmpfs unmounted, temp folders removed) on
 *   exit, Ctrl-C or error; node logs are kept when a wrong body shows up (or CHAOS_KEEP_LOGS=1).
 *
 * Environment:
 *   CHAOS_SEC          run time in seconds (default 60)
 *   CHAOS_CONCURRENCY  client loops (default 24)
 *   CHAOS_KEYS         distinct keys (default 1000)
 *   CHAOS_SEED         seed of the load's random choices (default: from the clock; printed)
 *   CHAOS_KEEP_LOGS=1  keep the run folder with every node's log
 */
import { randomBytes } from 'node:crypto';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import type { AdminStats } from '../admin/admin-server.js';
import { runChaos } from './chaos/events.js';
import { LoadGenerator } from './chaos/load.js';
import { cleanupSync, installCleanup, keepFolder, mountTmpfs, registerFolder, tempFolder } from './chaos/procs.js';
import { Tally, Timeline } from './chaos/record.js';
import { report } from './chaos/report.js';
import { ChaosOrigin, OutpostNode } from './chaos/topology.js';
import { VersionFile } from './chaos/versions.js';
import { freePort, ownCpuSeconds, sleep } from './lib.js';

function numberEnv(name: string, fallback: number): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value) || value <= 0) throw new Error(`${name} must be a positive number, got ${JSON.stringify(raw)}`);
  return value;
}

const SECONDS = numberEnv('CHAOS_SEC', 60);
const CONCURRENCY = Math.round(numberEnv('CHAOS_CONCURRENCY', 24));
const KEYS = Math.round(numberEnv('CHAOS_KEYS', 1000));
const SEED = Math.round(numberEnv('CHAOS_SEED', (Date.now() % 2147483647) + 1));
const HOST = 'chaos.localhost';
/** How long a node stays dead, an origin stopped, a disk full; also the gap between events. */
const HOLD_MS = Math.min(4000, Math.max(1000, (SECONDS * 1000) / 20));
const WARMUP_MS = Math.min(5000, (SECONDS * 1000) / 10);
const TMPFS_MIB = 128;
const DISK_BUDGET = '24MB';
const log = (line: string) => process.stderr.write(`chaos: ${line}\n`);

// 1 MiB slices: bodies above it (up to 5 MiB) are fetched, stored and stitched in slices.
const NODE_ARGS = ['--workers', '2', '--served-by', '--access-log', 'false', '--memory-size', '64MB', '--memory-max-object-size', '1MB', '--slice-size', '1MB'];
const SHIELD_ARGS = ['--health-check-path', '/health', '--health-check-interval-ms', '1000', '--health-check-timeout-ms', '500', '--first-byte-timeout-ms', '2000', '--idle-body-timeout-ms', '3000'];
const EDGE_ARGS = ['--first-byte-timeout-ms', '8000', '--idle-body-timeout-ms', '6000'];

interface Pop {
  origins: ChaosOrigin[];
  shields: OutpostNode[];
  edges: OutpostNode[];
  diskDir: string | undefined;
}

async function buildPop(runDir: string, versionsFile: string, token: string, onCrash: (node: OutpostNode, how: string) => void): Promise<Pop> {
  const dataRoot = join(runDir, 'data');
  const logs = join(runDir, 'logs');
  mkdirSync(dataRoot);
  mkdirSync(logs);
  registerFolder(dataRoot); // removed even when the logs are kept
  const ports = async (n: number) => Promise.all(Array.from({ length: n }, () => freePort()));
  const origins = (await ports(3)).map((port, i) => new ChaosOrigin(`origin-${i + 1}`, port, versionsFile, join(logs, `origin-${i + 1}.log`)));
  const [s1, s1a, s2, s2a, e1, e1a, e2, e2a] = await ports(8);
  const node = (name: string, role: 'edge' | 'shield', port: number, adminPort: number, args: string[]) => {
    const dataDir = join(dataRoot, name);
    mkdirSync(dataDir);
    return new OutpostNode({ name, role, port, adminPort, dataDir, args: [...NODE_ARGS, ...args] }, join(logs, `${name}.log`), token, onCrash);
  };
  const admin = (port: number) => `http://127.0.0.1:${port}`;
  const originArgs = origins.flatMap((o) => ['--origin', o.url]);
  // shield-1's data folder becomes a small tmpfs with a disk budget well under its size: LevelDB's
  // files reach about 3× the budget under this churn (measured: ~70 MiB for 24 MB), and the disk
  // must fill when the driver fills it, not before.
  const diskDir = join(dataRoot, 'shield-1');
  const shields = [node('shield-1', 'shield', s1!, s1a!, [...originArgs, ...SHIELD_ARGS, '--disk-size', DISK_BUDGET]), node('shield-2', 'shield', s2!, s2a!, [...originArgs, ...SHIELD_ARGS, '--disk-size', '512MB'])];
  const mounted = mountTmpfs(diskDir, `${TMPFS_MIB}m`);
  if (!mounted) log('could not mount a tmpfs (not root?): no disk-full events');
  const upstreams = shields.flatMap((s) => ['--upstream', s.url]);
  const peers = (other: number) => ['--purge-peer', admin(other), '--purge-peer', admin(s1a!), '--purge-peer', admin(s2a!)];
  const edges = [node('edge-1', 'edge', e1!, e1a!, [...upstreams, ...peers(e2a!), ...EDGE_ARGS, '--disk-size', '512MB']), node('edge-2', 'edge', e2!, e2a!, [...upstreams, ...peers(e1a!), ...EDGE_ARGS, '--disk-size', '512MB'])];
  return { origins, shields, edges, diskDir: mounted ? diskDir : undefined };
}

async function nodeNotes(nodes: OutpostNode[]): Promise<string[]> {
  return Promise.all(
    nodes.map(async (n) => {
      try {
        const s = await n.adminJson<AdminStats>('/stats');
        const pending = Object.values(s.purgePeers.pending).reduce((a, b) => a + b, 0);
        return `${n.name}: hit ratio ${s.hitRatio === null ? '—' : s.hitRatio.toFixed(2)}, disk ${s.tiers.disk.entries} entries / ${(s.tiers.disk.bytes / 1048576).toFixed(1)} MiB, worker restarts ${s.workers?.restarts ?? 0}, purges ${s.purges.accepted}, purge outbox pending ${pending}, readyz ${await n.readyz()}`;
      } catch (error) {
        return `${n.name}: /stats failed (${(error as Error).message})`;
      }
    }),
  );
}

async function main(): Promise<number> {
  installCleanup();
  const runDir = tempFolder('outpost-chaos-');
  const versionsFile = join(runDir, 'versions.bin');
  const versions = VersionFile.create(versionsFile, KEYS);
  const token = randomBytes(16).toString('hex');
  const crashes: string[] = [];
  // Crashes are restarted only while the run is under way (a start-up failure ends the run).
  let running = false;
  let stopping = false;
  let clock = new Timeline(Date.now());
  const onCrash = (node: OutpostNode, how: string) => {
    if (!running || stopping) return;
    crashes.push(`t=${(clock.now() / 1000).toFixed(1)}s ${node.name} exited on its own (${how}); restarted`);
    log(`${node.name} exited on its own (${how}); restarting`);
    node.start().catch((error: Error) => crashes.push(`${node.name} restart after its exit failed: ${error.message}`));
  };
  const pop = await buildPop(runDir, versionsFile, token, onCrash);
  const nodes = [pop.edges[0]!, pop.shields[0]!, pop.edges[1]!, pop.shields[1]!];
  log(`seed ${SEED}, ${SECONDS} s, logs in ${join(runDir, 'logs')}`);
  try {
    await Promise.all(pop.origins.map((o) => o.start()));
    await Promise.all(pop.shields.map((s) => s.start()));
    await Promise.all(pop.edges.map((e) => e.start()));
  } catch (error) {
    log(`cannot start the PoP: ${(error as Error).message}`);
    keepFolder(runDir);
    log(`logs kept in ${join(runDir, 'logs')}`);
    return 2;
  }
  log(`up: edges ${pop.edges.map((e) => e.url).join(' ')}, shields ${pop.shields.map((s) => s.url).join(' ')}, origins ${pop.origins.map((o) => o.url).join(' ')}`);

  const tally = new Tally();
  clock = new Timeline(Date.now());
  running = true;
  const load = new LoadGenerator({ edges: pop.edges, keys: KEYS, concurrency: CONCURRENCY, purgeShare: 0.05, rangeShare: 0.05, seed: SEED, host: HOST, versions, tally, timeline: clock });
  const cpuAtStart = ownCpuSeconds().self;
  load.start();
  const progress = setInterval(() => log(`t=${Math.round(clock.now() / 1000)}s sent ${tally.sent}, failed ${tally.failed}, wrong ${tally.wrongBodies}, purges ${tally.purges.ok}`), 10_000);
  const endMs = SECONDS * 1000;
  await sleep(WARMUP_MS);
  const diskNode = pop.diskDir ? { node: pop.shields[0]!, dir: pop.diskDir } : undefined;
  await runChaos({ nodes, origins: pop.origins, disk: diskNode, timeline: clock, holdMs: HOLD_MS, log }, endMs - 500, () => clock.now() >= endMs);
  await sleep(Math.max(0, endMs - clock.now()));
  await load.stop();
  clearInterval(progress);
  const driverCpu = ownCpuSeconds().self - cpuAtStart;
  const notes = await nodeNotes([...pop.edges, ...pop.shields]);
  stopping = true;
  await Promise.all([...pop.edges, ...pop.shields].map((n) => n.stop()));
  await Promise.all(pop.origins.map((o) => o.stop()));
  versions.close();

  const unrestarted = clock.events.filter((e) => e.failed && e.kind === 'kill -9');
  const bad = tally.wrongBodies > 0 || tally.inconsistentHeaders > 0 || tally.versionsAhead > 0;
  if (bad || process.env.CHAOS_KEEP_LOGS === '1') keepFolder(runDir);
  process.stdout.write(
    `${report(
      {
        seconds: SECONDS,
        concurrency: CONCURRENCY,
        keys: KEYS,
        topology: '2 edges → 2 shields → 3 origins (2 workers each)',
        diskNode: diskNode ? `${diskNode.node.name} (${TMPFS_MIB} MiB tmpfs, --disk-size ${DISK_BUDGET})` : 'skipped (no tmpfs)',
        crashes,
        driverCpu: `${driverCpu.toFixed(1)} s (${((100 * driverCpu) / SECONDS).toFixed(0)} % of one core)`,
        nodeNotes: notes,
        logs: join(runDir, 'logs'),
      },
      tally,
      clock,
    )}\n`,
  );
  if (tally.sent === 0) log('no request was sent');
  if (unrestarted.length > 0) log(`${unrestarted.length} killed node(s) could not be restarted`);
  return bad || tally.sent === 0 || unrestarted.length > 0 ? 1 : 0;
}

// A run that overstays its time by far is stuck: leave (the exit handler cleans up).
const watchdog = setTimeout(
  () => {
    log('watchdog: the run is stuck, giving up');
    process.exit(3);
  },
  (SECONDS + 180) * 1000,
);
watchdog.unref();

main()
  .then((code) => {
    cleanupSync();
    process.exit(code);
  })
  .catch((error: unknown) => {
    log(`failed: ${(error as Error).stack ?? String(error)}`);
    cleanupSync();
    process.exit(2);
  });
