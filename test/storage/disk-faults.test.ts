/**
 * Issue 13, "Disk faults": a disk tier whose disk fills up becomes degraded (counted, reported),
 * memory keeps serving, and once there is room again it recovers by itself, without a restart.
 * Real parts: a small tmpfs mounted for the test (we run as root, as CI does), real LevelDB
 * filled until the kernel answers ENOSPC.
 */
import { execFileSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import test, { type ExecutionContext } from 'ava';
import { putEntry, type CachedEntry } from '../../storage/cache-store.js';
import { DiskHealth } from '../../storage/disk-health.js';
import { entryKey } from '../../storage/keys.js';
import { LevelStore } from '../../storage/level-store.js';
import { openTieredStore, type OpenTieredStoreOptions, type TieredStore } from '../../storage/tiered-store.js';
import { startAdmin } from '../../admin/admin-server.js';
import { LocalControl } from '../../admin/node-control.js';
import { silentLogger } from '../../pipeline/logger.js';
import { fetchFrom, header, startOrigin, startTestEdge, waitFor } from '../helpers/harness.js';
import { bodyOf, meta, readAll } from './contract.js';

const MiB = 1024 * 1024;
const BODY = 32 * 1024;

/** Mounts a tmpfs of `mib` MiB for the test; unmounted in teardown. Fails the test, clearly, where mount is impossible. */
function mountTmpfs(t: ExecutionContext, mib: number): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'outpost-tmpfs-'));
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${mib}m`, 'tmpfs', dir], { stdio: 'pipe' });
  } catch (error) {
    fs.rmSync(dir, { recursive: true, force: true });
    const why = (error as { stderr?: Buffer }).stderr?.toString().trim() || (error as Error).message;
    throw new Error(`the disk-fault tests mount a small tmpfs and need root (CI runs them as root): mount failed: ${why}`);
  }
  t.teardown(async () => {
    for (let i = 0; ; i++) {
      try {
        execFileSync('umount', [dir], { stdio: 'pipe' });
        break;
      } catch (error) {
        // Busy for a moment while LevelDB's last handles close.
        if (i === 20) {
          execFileSync('umount', ['-l', dir], { stdio: 'pipe' });
          break;
        }
        await sleep(100);
      }
    }
    fs.rmSync(dir, { recursive: true, force: true });
  });
  return dir;
}

/** Writes `bytes` of data (not zeros, though tmpfs keeps zeros too) to `file`. */
function fill(file: string, bytes: number): void {
  fs.writeFileSync(file, bodyOf(bytes, 99));
}

const key = (name: string | number) => entryKey(`https://example.test/${name}`, '');


async function open(t: ExecutionContext, dataDir: string, options: Partial<OpenTieredStoreOptions> = {}): Promise<TieredStore> {
  const store = await openTieredStore({ dataDir, memoryBytes: 128 * MiB, memoryMaxEntryBytes: 4 * MiB, diskBytes: 1024 * MiB, diskRetryMs: { first: 200, max: 1000 }, ...options });
  t.teardown(() => store.close());
  return store;
}

/** Writes distinct 32 KiB objects until the disk tier turns degraded; returns how many were written. */
async function writeUntilDegraded(store: TieredStore, prefix: string, limit: number): Promise<number> {
  let i = 0;
  for (; i < limit && !store.diskDegraded; i++) await putEntry(store, key(`${prefix}${i}`), meta(BODY, { tags: [`t${i % 4}`] }), bodyOf(BODY, i + 1));
  return i;
}

const level = (store: TieredStore) => store.disk as LevelStore;

test.serial('a full disk: degraded (counted, reported), memory keeps serving, and once space is freed the store recovers by itself', async (t) => {
  const started = Date.now();
  const dir = mountTmpfs(t, 16);
  // Another tenant's file takes half the disk; no reserve file, so the store cannot make room itself.
  fill(path.join(dir, 'filler'), 8 * MiB);
  const store = await open(t, dir, { diskReserveBytes: 0 });

  const written = await writeUntilDegraded(store, 'a', 2000);
  t.true(store.diskDegraded, `degraded after ${written} writes of 32 KiB`);
  const report = store.diskReport();
  t.log(`disk full after ${written} writes; ${report.lastError}`);
  t.is(report.state, 'degraded');
  t.is(report.degradedEntered, 1);
  t.regex(report.lastError ?? '', /No space left on device/);
  t.true(report.since! >= started && report.since! <= Date.now());
  t.true(store.counters.diskWriteErrors >= 1, 'the write that hit the full disk went to memory');

  // Memory takes every write meanwhile; nothing is lost to the caller.
  for (let i = 0; i < 50; i++) await putEntry(store, key(`b${i}`), meta(BODY), bodyOf(BODY, 1000 + i));
  t.true(store.counters.diskSkippedDegraded >= 50);
  for (let i = 0; i < 50; i++) t.true((store.get(key(`b${i}`)) as CachedEntry | undefined)?.body?.equals(bodyOf(BODY, 1000 + i)) ?? false, `b${i} from memory`);
  for (let i = 0; i < written; i += 25) t.true((store.get(key(`a${i}`)) as CachedEntry | undefined)?.body?.equals(bodyOf(BODY, i + 1)) ?? false, `hot a${i}`);

  // Reads from disk keep working: a1 left memory (as by eviction) and comes from disk.
  await store.memory.delete(key('a1'));
  const fromDisk = await store.get(key('a1'));
  t.truthy(fromDisk, 'served from the disk while degraded');
  t.true((await readAll(fromDisk!.openBody())).equals(bodyOf(BODY, 2)));

  // A new version of a2 goes to memory only; the old one on disk must not come back.
  await putEntry(store, key('a2'), meta(5), Buffer.from('new-2'));
  await store.memory.delete(key('a2'));
  t.is(await store.get(key('a2')), undefined, 'the outdated disk copy is hidden');
  // A purge the disk cannot take now hides what it matches there at once.
  await store.memory.delete(key('a3'));
  t.truthy(await store.get(key('a3')));
  await store.memory.delete(key('a3'));
  // The count is what memory held of the tag (the disk's share is owed, not counted).
  const tagged = Array.from({ length: written }, (_, i) => i).filter((i) => i % 4 === 3 && store.memory.get(key(`a${i}`)) !== undefined).length;
  t.is(await store.purgeTag('t3'), tagged);
  t.is(await store.get(key('a3')), undefined, 'purged (tag t3), though the disk still holds it');
  // A revalidation (304) the disk cannot take: memory has the new metadata, the disk copy is hidden.
  t.true(await store.updateMeta(key('a4'), meta(BODY, { staleAt: 1 })));
  t.is((store.get(key('a4')) as CachedEntry).meta.staleAt, 1);
  await store.memory.delete(key('a4'));
  t.is(await store.get(key('a4')), undefined, 'not served from disk with the metadata from before');
  t.true(store.diskReport().owed >= 3);

  // Retries meanwhile fail (still full) without closing the disk: reads go on.
  t.true(await waitFor(() => store.diskReport().failedAttempts >= 1, 15_000), 'a recovery attempt ran and failed');
  t.true(store.diskDegraded);
  await store.memory.delete(key('a5'));
  t.truthy(await store.get(key('a5')), 'still read from disk after a failed attempt');

  // Space is freed: the store leaves degraded mode by itself.
  fs.rmSync(path.join(dir, 'filler'));
  t.true(await waitFor(() => !store.diskDegraded, 30_000), 'recovered within the backoff');
  const after = store.diskReport();
  t.log(`recovered after ${after.failedAttempts} failed attempts, ${after.degradedMs} ms degraded`);
  t.is(after.recoveries, 1);
  t.is(after.state, 'ok');
  t.is(after.owed, 0, 'the owed delete and purge were applied');
  t.is(await level(store).get(key('a2')), undefined, 'the outdated copy is gone from the disk');
  t.is(await level(store).get(key('a3')), undefined, 'the purge reached the disk');

  // New writes land on disk again.
  const skipped = store.counters.diskSkippedDegraded;
  for (let i = 0; i < 20; i++) await putEntry(store, key(`c${i}`), meta(BODY), bodyOf(BODY, 2000 + i));
  t.is(store.counters.diskSkippedDegraded, skipped);
  t.false(store.diskDegraded);
  for (let i = 0; i < 20; i++) t.truthy(await level(store).get(key(`c${i}`)), `c${i} on disk`);

  // ...and survive a close and reopen; whatever the disk holds is whole.
  await store.close();
  const reopened = await open(t, dir, { diskReserveBytes: 0 });
  for (let i = 0; i < 20; i++) {
    const entry = await reopened.get(key(`c${i}`));
    t.true(entry !== undefined && (await readAll(entry.openBody())).equals(bodyOf(BODY, 2000 + i)), `c${i} after reopen`);
  }
  let kept = 0;
  for (let i = 0; i < written; i++) {
    const entry = await level(reopened).get(key(`a${i}`));
    if (entry === undefined) continue;
    kept++;
    t.true((await readAll(entry.openBody())).equals(bodyOf(BODY, i + 1)), `a${i} whole`);
  }
  t.log(`${kept} of the ${written} objects written before the disk filled are on disk after the reopen`);
  t.true(kept >= written / 2);
  for (const name of ['a2', 'a3', 'a4']) t.is(await reopened.get(key(name)), undefined, `${name} stays gone`);
});

test.serial('a disk tier that fills its own disk gives back its reserve file, makes room, and recovers without help', async (t) => {
  const dir = mountTmpfs(t, 64);
  const store = await open(t, dir, { diskReserveBytes: 8 * MiB });
  const reserve = path.join(dir, 'cache', 'outpost-reserve');
  t.is(fs.statSync(reserve).size, 8 * MiB, 'the reserve file is written at open');

  const written = await writeUntilDegraded(store, 'a', 4000);
  t.true(store.diskDegraded, `degraded after ${written} writes`);
  t.true(await waitFor(() => !store.diskDegraded, 30_000), 'recovered, with nothing freed from outside');
  const report = store.diskReport();
  const disk = level(store);
  // Evicting and compacting frees space only if LevelDB's own compaction on reopen leaves room
  // for it; otherwise the disk cache is dropped (wiped). Either way the disk takes writes again.
  t.log(`full after ${written} writes; recovered: ${disk.counters.shrunk} shrink (${disk.counters.evicted} evicted), ${disk.counters.wiped} wipe, budget ${report.budget} bytes, disk tier ${disk.stats().bytes} bytes, reserve ${fs.existsSync(reserve) ? 'back' : 'missing'}`);
  t.is(report.recoveries, 1);
  t.true(disk.counters.shrunk + disk.counters.wiped >= 1);
  t.true(fs.existsSync(reserve), 'the reserve file is back');
  t.true(report.budget !== undefined && report.budget < 1024 * MiB, 'the budget now fits the disk');
  t.true(disk.stats().bytes <= report.budget!);

  // It keeps taking writes: eviction within the lowered budget keeps the disk from filling again.
  for (let i = 0; i < 200; i++) await putEntry(store, key(`c${i}`), meta(BODY), bodyOf(BODY, 5000 + i));
  t.false(store.diskDegraded, 'no new fault');
  t.is(store.diskReport().degradedEntered, 1);
  const newest = await disk.get(key('c199'));
  t.true(newest !== undefined && (await readAll(newest.openBody())).equals(bodyOf(BODY, 5199)));
});

test.serial('a full disk whose reserve is used up already: the disk cache is dropped, memory keeps what it has, and the disk takes writes again', async (t) => {
  const dir = mountTmpfs(t, 32);
  const store = await open(t, dir, { diskReserveBytes: 4 * MiB });
  // As if an earlier full disk had taken it and there was never room to write it again.
  fs.rmSync(path.join(dir, 'cache', 'outpost-reserve'));
  const written = await writeUntilDegraded(store, 'a', 2000);
  t.true(store.diskDegraded, `degraded after ${written} writes`);
  t.true(await waitFor(() => !store.diskDegraded, 30_000), 'recovered');
  const disk = level(store);
  t.log(`full after ${written} writes; ${disk.counters.wiped} wipe, budget ${disk.budget} bytes`);
  t.is(disk.counters.wiped, 1);
  t.is(await disk.get(key('a0')), undefined, 'the disk cache starts empty');
  for (let i = 0; i < written; i += 10) t.true((store.get(key(`a${i}`)) as CachedEntry | undefined)?.body?.equals(bodyOf(BODY, i + 1)) ?? false, `a${i} still in memory`);
  t.true(fs.existsSync(path.join(dir, 'cache', 'outpost-reserve')), 'the reserve is written again');
  t.true(disk.budget < 32 * MiB, 'the budget fits the disk');
  await putEntry(store, key('c0'), meta(BODY), bodyOf(BODY, 7));
  const entry = await disk.get(key('c0'));
  t.true(entry !== undefined && (await readAll(entry.openBody())).equals(bodyOf(BODY, 7)));
});

test.serial('an edge whose disk fills keeps answering 200s with the right bodies, and its disk recovers once space is freed', async (t) => {
  const dir = mountTmpfs(t, 16);
  fill(path.join(dir, 'filler'), 8 * MiB);
  const origin = await startOrigin((req, res) => {
    const n = Number(new URL(req.url ?? '/', 'http://x').searchParams.get('n'));
    const body = bodyOf(BODY, n + 1);
    res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length, 'cache-control': 'max-age=3600' });
    res.end(body);
  });
  t.teardown(() => origin.close());
  const store = await openTieredStore({ dataDir: dir, memoryBytes: 128 * MiB, diskBytes: 1024 * MiB, diskReserveBytes: 0, diskRetryMs: { first: 200, max: 1000 } });
  const edge = await startTestEdge(origin.url, {}, store);
  t.teardown(() => edge.close());
  const admin = await startAdmin({ listen: { host: '127.0.0.1', port: 0 }, control: new LocalControl([edge]), logger: silentLogger(), config: () => edge.config });
  t.teardown(() => admin.close());
  const adminGet = async (path: string) => (await fetch(`${admin.url}${path}`)).json() as Promise<Record<string, unknown>>;
  t.deepEqual(await adminGet('/readyz'), { ready: true }, 'a healthy node says just that');

  const get = async (n: number) => {
    const reply = await fetchFrom(edge.url, `/object?n=${n}`);
    t.is(reply.status, 200, `object ${n}`);
    t.true(reply.body.equals(bodyOf(BODY, n + 1)), `object ${n} body`);
    return reply;
  };
  let n = 0;
  while (!store.diskDegraded && n < 2000) await get(n++);
  t.true(store.diskDegraded, `degraded after ${n} misses`);
  const snapshot = await edge.snapshot();
  t.is(snapshot.disk?.state, 'degraded', 'in the node snapshot (/stats, /readyz)');
  const metrics = await edge.metrics.registry.metrics();
  t.regex(metrics, /outpost_disk_degraded(\{[^}]*\})? 1/);
  t.regex(metrics, /outpost_disk_degraded_total(\{[^}]*\})? 1/);
  // Degraded is not unready (memory serves): /readyz says 200 and why, /stats has the state.
  const ready = await fetch(`${admin.url}/readyz`);
  t.is(ready.status, 200);
  const readyBody = (await ready.json()) as { ready: boolean; detail?: { disk?: string } };
  t.true(readyBody.ready);
  t.regex(readyBody.detail?.disk ?? '', /^degraded since .*No space left on device/);
  const stats = (await adminGet('/stats')) as { disk?: { state: string; degradedEntered: number; lastError?: string } };
  t.is(stats.disk?.state, 'degraded');
  t.is(stats.disk?.degradedEntered, 1);

  // Misses and hits go on while degraded.
  for (let i = n; i < n + 30; i++) await get(i);
  await edge.pipeline.drain({ commits: true });
  for (let i = n; i < n + 30; i++) t.regex(header(await get(i), 'cache-status') ?? '', /hit/, `object ${i} is a hit from memory`);
  t.true(store.counters.diskSkippedDegraded >= 30);

  fs.rmSync(path.join(dir, 'filler'));
  t.true(await waitFor(() => !store.diskDegraded, 30_000), 'recovered');
  const entries = level(store).stats().entries;
  for (let i = n + 30; i < n + 60; i++) await get(i);
  await edge.pipeline.drain({ commits: true });
  t.is(level(store).stats().entries, entries + 30, 'new fills land on disk again');
  const after = await edge.snapshot();
  t.is(after.disk?.state, 'ok');
  t.is(after.disk?.recoveries, 1);
  t.deepEqual(await adminGet('/readyz'), { ready: true });
  t.is(((await adminGet('/stats')) as { disk?: { recoveries: number } }).disk?.recoveries, 1);
  t.regex(await edge.metrics.registry.metrics(), /outpost_disk_recoveries_total(\{[^}]*\})? 1/);
});

test('reopen: a body stream on the old handle is cut with an error (never a short body), a writer begun before cannot commit, the rest is intact', async (t) => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'outpost-reopen-'));
  t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
  const store = await LevelStore.open({ location: dir, maxBytes: 64 * MiB, chunkBytes: 1000 });
  t.teardown(() => store.close());
  const body = bodyOf(200_000, 3);
  await putEntry(store, 'big', meta(body.length), body);
  await putEntry(store, 'small', meta(5), Buffer.from('small'));

  const entry = await store.get('big');
  const stream = entry!.openBody();
  const received: Buffer[] = [];
  const iterator = stream[Symbol.asyncIterator]();
  received.push((await iterator.next()).value as Buffer);
  const writer = store.openWriter('unfinished', meta(3000));
  await writer.write(bodyOf(2500, 4));

  const reopening = store.reopen();
  const lookup = store.get('small'); // races the reopen: served or a miss, never an error
  await reopening;
  const seen = await lookup;
  t.true(seen === undefined || seen.meta.size === 5);
  const error = await t.throwsAsync(async () => {
    for (let next = await iterator.next(); !next.done; next = await iterator.next()) received.push(next.value as Buffer);
  });
  t.log(`stream cut after ${Buffer.concat(received).length} of ${body.length} bytes: ${error?.message}`);
  t.true(body.subarray(0, Buffer.concat(received).length).equals(Buffer.concat(received)), 'what was sent is a true prefix');
  await writer.write(bodyOf(500, 5));
  await t.throwsAsync(writer.commit());
  t.is(store.counters.reopened, 1);

  // Everything committed is there and whole; the unfinished write left nothing.
  t.true((await readAll((await store.get('big'))!.openBody())).equals(body));
  t.is(await store.get('unfinished'), undefined);
  t.deepEqual(store.stats(), { entries: 2, bytes: body.length + 5 + 2 * 1024 });
  await putEntry(store, 'after', meta(3), Buffer.from('new'));
  await store.close();
  const again = await LevelStore.open({ location: dir, maxBytes: 64 * MiB });
  t.teardown(() => again.close());
  t.is((await again.get('after'))?.meta.size, 3);
  t.is(again.stats().entries, 3);
});

test('degraded mode retries with a doubling delay, and a disk that fails again soon after does not start over at the shortest', async (t) => {
  const attempts: number[] = [];
  let failuresLeft = 3;
  const health = new DiskHealth({
    firstRetryMs: 40,
    maxRetryMs: 400,
    recover: async () => {
      attempts.push(Date.now());
      if (failuresLeft-- > 0) throw new Error('still broken');
    },
  });
  t.teardown(() => health.close());
  const start = Date.now();
  const before = health.epoch;
  health.fail(new Error('ENOSPC: no space left on device'));
  t.true(health.degraded);
  t.is(health.report().lastError, 'ENOSPC: no space left on device');
  t.true(await waitFor(() => !health.degraded, 10_000));
  health.fail(new Error('late'), before);
  t.false(health.degraded, 'a failure of an operation begun before the recovery is not news');
  t.is(attempts.length, 4);
  // Lower bounds only: 40, 80, 160, 320 ms apart at least.
  const gaps = attempts.map((at, i) => at - (i === 0 ? start : attempts[i - 1]!));
  t.log(`gaps between attempts: ${gaps.join(', ')} ms`);
  [40, 80, 160, 320].forEach((min, i) => t.true(gaps[i]! >= min - 5, `attempt ${i + 1} after ${gaps[i]} ms`));
  const report = health.report();
  t.is(report.recoveries, 1);
  t.is(report.failedAttempts, 3);
  t.true(report.degradedMs >= 600 - 20);
  t.is(report.state, 'ok');
  t.is(report.lastError, undefined);

  // It fails again at once: the next attempt waits the longest delay, not the first.
  const again = Date.now();
  health.fail(new Error('EIO'));
  t.true(await waitFor(() => !health.degraded, 10_000));
  t.true(attempts[4]! - again >= 400 - 5, `waited ${attempts[4]! - again} ms`);
  t.is(health.report().degradedEntered, 2);
  t.is(health.report().recoveries, 2);
});
