/**
 * Issue 13, "the disk write queue is unbounded": a disk tier slower than the fills must not make
 * their bodies pile up in the heap. Real LevelDB under a wrapper that delays every commit (a busy
 * disk); the tiered store lets at most `maxPendingDiskWrites` writes (and `maxPendingDiskBytes`
 * body bytes) wait for it, and sends the rest to memory only.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import v8 from 'node:v8';
import vm from 'node:vm';
import test, { type ExecutionContext } from 'ava';
import { putEntry, UNKNOWN_SIZE, type CachedEntry } from '../../storage/cache-store.js';
import { entryKey } from '../../storage/keys.js';
import { LevelStore } from '../../storage/level-store.js';
import { MemoryStore } from '../../storage/memory-store.js';
import { TieredStore } from '../../storage/tiered-store.js';
import { DelayedCommitStore } from '../helpers/delayed-commit-store.js';
import { waitFor } from '../helpers/harness.js';
import { bodyOf, meta, readAll } from './contract.js';
import { tempDir } from '../helpers/temp-dir.js';

const key = (i: number) => entryKey(`https://example.test/object/${i}`, '');

/** The helper's commit-delaying wrapper, with the disk's presence check passed through as well. */
class SlowDisk extends DelayedCommitStore {
  constructor(
    readonly level: LevelStore,
    delayMs: number,
  ) {
    super(level, delayMs);
  }

  mightContain(key: string): boolean {
    return this.level.mightContain(key);
  }
}

interface Rig {
  store: TieredStore;
  level: LevelStore;
  memory: MemoryStore;
}

async function rig(
  t: ExecutionContext,
  options: { delayMs: number; maxPendingDiskWrites?: number; maxPendingDiskBytes?: number; memoryBytes?: number },
): Promise<Rig> {
  const level = await LevelStore.open({ location: tempDir(t, 'outpost-backpressure-'), maxBytes: 1024 ** 3 });
  const memory = new MemoryStore({ maxBytes: options.memoryBytes ?? 64 * 1024 * 1024 });
  const store = new TieredStore({
    memory,
    disk: new SlowDisk(level, options.delayMs),
    ...(options.maxPendingDiskWrites !== undefined ? { maxPendingDiskWrites: options.maxPendingDiskWrites } : {}),
    ...(options.maxPendingDiskBytes !== undefined ? { maxPendingDiskBytes: options.maxPendingDiskBytes } : {}),
  });
  t.teardown(() => store.close());
  return { store, level, memory };
}

/**
 * Starts `count` writes of distinct keys in waves of `wave` (a pause between waves, as fills
 * arriving over time), sampling the disk work in flight after each one starts: the counts only
 * grow when a write opens or a body chunk arrives, so the samples see every peak.
 */
async function load(store: TieredStore, count: number, options: { wave: number; size: (i: number) => number }) {
  const peak = { writes: 0, bytes: 0 };
  const commits: Array<Promise<void>> = [];
  for (let i = 0; i < count; i++) {
    const size = options.size(i);
    commits.push(putEntry(store, key(i), meta(size, { tags: [`n${i % 7}`] }), bodyOf(size, i + 1)));
    const { writes, bytes } = store.diskPending;
    peak.writes = Math.max(peak.writes, writes);
    peak.bytes = Math.max(peak.bytes, bytes);
    if (i % options.wave === options.wave - 1) await sleep(2);
  }
  await Promise.all(commits);
  return peak;
}

test('a slow disk: writes past the bound skip it (counted), memory serves them, and what reached the disk is intact', async (t) => {
  const { store, level } = await rig(t, { delayMs: 40, maxPendingDiskWrites: 16 });
  const count = 3000;
  const peak = await load(store, count, { wave: 20, size: () => 1024 });
  const skipped = store.counters.diskSkippedBehind;
  t.log(`${count} writes of 1 KiB, commits delayed 40 ms: peak ${peak.writes} disk writes in flight (bound 16), ${skipped} skipped the disk`);
  t.true(peak.writes <= 16, `peak ${peak.writes} disk writes in flight`);
  t.true(peak.writes >= 8, 'the load did reach the bound');
  t.true(skipped > 0 && skipped < count, `${skipped} skipped`);
  t.deepEqual(store.diskPending, { writes: 0, bytes: 0 }, 'drained');
  t.is(store.counters.diskSkippedDegraded, 0);
  t.false(store.diskDegraded, 'backpressure is not a fault');

  // Every object is served, from memory (all fit), byte for byte.
  for (let i = 0; i < count; i++) {
    const hit = store.get(key(i)) as CachedEntry | undefined;
    t.true(hit?.body?.equals(bodyOf(1024, i + 1)) ?? false, `object ${i} from memory`);
  }
  // The disk holds exactly the writes that did not skip it, each one whole.
  t.is(level.stats().entries, count - skipped);
  let onDisk = 0;
  for (let i = 0; i < count; i++) {
    const entry = await level.get(key(i));
    if (entry === undefined) continue;
    onDisk++;
    t.deepEqual(entry.meta.tags, [`n${i % 7}`]);
    t.true((await readAll(entry.openBody())).equals(bodyOf(1024, i + 1)), `object ${i} on disk`);
  }
  t.is(onDisk, count - skipped);
  t.is(store.diskReport().skippedBehind, skipped, 'reported for /stats and /metrics');
});

test('the byte bound: bodies held for the disk stay under maxPendingDiskBytes', async (t) => {
  const bound = 512 * 1024;
  const { store, level } = await rig(t, { delayMs: 40, maxPendingDiskWrites: 1000, maxPendingDiskBytes: bound });
  const count = 400;
  const size = (i: number) => 16 * 1024 + (i % 5) * 8 * 1024;
  const peak = await load(store, count, { wave: 40, size });
  t.log(`${count} writes of 16-48 KiB: peak ${peak.bytes} body bytes held for the disk (bound ${bound}), ${peak.writes} writes; ${store.counters.diskSkippedBehind} skipped`);
  t.true(peak.bytes <= bound, `peak ${peak.bytes} bytes`);
  t.true(peak.bytes > bound / 2, 'the load did reach the bound');
  t.true(store.counters.diskSkippedBehind > 0);
  t.deepEqual(store.diskPending, { writes: 0, bytes: 0 });
  t.is(level.stats().entries, count - store.counters.diskSkippedBehind);
  for (let i = 0; i < count; i++) t.true((store.get(key(i)) as CachedEntry | undefined)?.body?.equals(bodyOf(size(i), i + 1)) ?? false);
});

test('a write that skips the disk outdates the older copy there: it never comes back', async (t) => {
  const { store, level, memory } = await rig(t, { delayMs: 300, maxPendingDiskWrites: 4 });
  await putEntry(store, key(0), meta(5), Buffer.from('old-0'));
  t.truthy(await level.get(key(0)), 'the old version is on disk');
  // Four slow writes fill the bound; the new version of key 0 then goes to memory only.
  const slow = [1, 2, 3, 4].map((i) => putEntry(store, key(i), meta(100), bodyOf(100, i)));
  await putEntry(store, key(0), meta(5), Buffer.from('new-0'));
  t.is(store.counters.diskSkippedBehind, 1);
  t.is((store.get(key(0)) as CachedEntry).body?.toString(), 'new-0');
  // Memory lets go of it (as an eviction would): the old disk copy must not be served instead.
  await memory.delete(key(0));
  t.is(await store.get(key(0)), undefined, 'hidden at once');
  await Promise.all(slow);
  t.is(await level.get(key(0)), undefined, 'and deleted from the disk');
  t.is(store.counters.diskSkippedBehind, 1);
  t.is(await store.get(key(0)), undefined);
  t.is(store.diskReport().owed, 0, 'nothing left owed');

  // A key the disk never held skips without any disk delete (the presence filter says so).
  const more = [5, 6, 7, 8].map((i) => putEntry(store, key(i), meta(100), bodyOf(100, i)));
  await putEntry(store, key(99), meta(3), Buffer.from('new'));
  t.is(store.counters.diskSkippedBehind, 2);
  t.is(store.diskReport().owed, 0);
  await Promise.all(more);
});

test('a write that skips the disk still loses to a purge or delete that ran while it was written, and a purge waits for it', async (t) => {
  const { store } = await rig(t, { delayMs: 300, maxPendingDiskWrites: 1 });
  const slow = putEntry(store, key(1), meta(100), bodyOf(100, 1));
  const purged = store.openWriter(key(2), meta(3, { tags: ['p'] }));
  const deleted = store.openWriter(key(3), meta(3));
  t.is(store.counters.diskSkippedBehind, 2);
  purged.write(Buffer.from('abc'));
  deleted.write(Buffer.from('abc'));
  t.is(await store.purgeTag('p'), 0);
  t.false(await store.delete(key(3)));
  await t.throwsAsync(purged.commit(), { code: 'REMOVED_DURING_WRITE' });
  await t.throwsAsync(deleted.commit(), { code: 'REMOVED_DURING_WRITE' });
  t.is(store.get(key(2)), undefined);
  t.is(store.get(key(3)), undefined);

  await slow;

  // A purge right after a skipped commit began finds its entry.
  const slow2 = putEntry(store, key(5), meta(100), bodyOf(100, 5));
  const kept = store.openWriter(key(4), meta(3, { tags: ['q'] }));
  t.is(store.counters.diskSkippedBehind, 3);
  kept.write(Buffer.from('xyz'));
  const committing = kept.commit();
  t.is(await store.purgeTag('q'), 1);
  await committing;
  t.is(store.get(key(4)), undefined);
  await slow2;
});

test('a body too large for memory is not stored while the disk is behind (DISK_BEHIND), and nothing is left of it', async (t) => {
  const { store, level } = await rig(t, { delayMs: 300, maxPendingDiskWrites: 1, memoryBytes: 1024 * 1024 });
  const slow = putEntry(store, key(1), meta(100), bodyOf(100, 1));
  const big = bodyOf(store.memoryMaxEntryBytes + 1, 2);
  await t.throwsAsync(putEntry(store, key(2), meta(big.length), big), { code: 'DISK_BEHIND' });
  await slow;
  t.is(await store.get(key(2)), undefined);
  t.is(await level.get(key(2)), undefined);
  // Once the disk caught up, the same body goes to disk.
  await putEntry(store, key(2), meta(big.length), big);
  t.true((await readAll((await store.get(key(2)))!.openBody())).equals(big));
});

/** The heap after a full GC (ava runs each file in its own process, so the flag is ours). */
function heapAfterGc(): number {
  v8.setFlagsFromString('--expose-gc');
  const gc = vm.runInNewContext('gc') as () => void;
  gc();
  gc();
  return process.memoryUsage().heapUsed;
}

test('heap under a burst of fills faster than the disk: the default bound keeps it flat, no bound lets it grow with the backlog', async (t) => {
  const count = 8000;
  const results: Array<{ bound: number; peakWrites: number; heapGrowth: number; skipped: number }> = [];
  // The defaults (256 writes, 16 MiB), then no bound at all.
  for (const unbounded of [false, true]) {
    // Memory small enough that what it holds is the same in both runs; the difference is the backlog.
    const { store } = await rig(t, { delayMs: 1000, memoryBytes: 4 * 1024 * 1024, ...(unbounded ? { maxPendingDiskWrites: 1_000_000, maxPendingDiskBytes: 1024 ** 3 } : {}) });
    const before = heapAfterGc();
    const commits: Array<Promise<void>> = [];
    let peakWrites = 0;
    for (let i = 0; i < count; i++) {
      commits.push(putEntry(store, key(i), meta(1024), bodyOf(1024, i + 1)));
      peakWrites = Math.max(peakWrites, store.diskPending.writes);
    }
    // Every write has started; the skipped ones have landed in memory, no disk commit has (1 s delay).
    await sleep(100);
    const during = heapAfterGc();
    await Promise.all(commits);
    results.push({ bound: store.maxPendingDiskWrites, peakWrites, heapGrowth: during - before, skipped: store.counters.diskSkippedBehind });
    await store.close();
  }
  for (const r of results) {
    t.log(`bound ${r.bound}: peak ${r.peakWrites} disk writes in flight, ${r.skipped} skipped, heap +${(r.heapGrowth / 1048576).toFixed(1)} MiB during a burst of ${count} 1 KiB fills (after forced GC)`);
  }
  const [bounded, unbounded] = results as [(typeof results)[0], (typeof results)[0]];
  t.is(bounded.bound, 256, 'the default');
  t.is(bounded.peakWrites, 256);
  t.is(bounded.skipped, count - 256);
  t.is(unbounded.peakWrites, count, 'without the bound every write waits for the disk');
  // Measured +3.7 MiB against +46.7 MiB: a third leaves room for a collector's noise.
  t.true(bounded.heapGrowth < unbounded.heapGrowth / 3, 'the bound keeps the backlog out of the heap');
});

test('bodies on their way into memory stay under maxPendingMemoryBytes: past it a large write goes to disk only, and to memory on its first hit', async (t) => {
  const level = await LevelStore.open({ location: tempDir(t, 'outpost-backpressure-'), maxBytes: 1024 ** 3 });
  const memory = new MemoryStore({ maxBytes: 64 * 1024 * 1024, maxEntryBytes: 8 * 1024 * 1024 });
  const store = new TieredStore({ memory, disk: level, memoryMaxEntryBytes: 8 * 1024 * 1024, maxPendingMemoryBytes: 4 * 1024 * 1024 });
  t.teardown(() => store.close());
  const size = 3 * 1024 * 1024;
  // Two large writes open at once: the second would take memory writes in flight past 4 MiB.
  const first = store.openWriter(key(1), meta(size));
  const second = store.openWriter(key(2), meta(size));
  // A small one always goes ahead.
  const small = store.openWriter(key(3), meta(1000));
  t.is(store.diskReport().memoryPendingBytes, size + 1000);
  first.write(bodyOf(size, 1));
  await second.write(bodyOf(size, 2));
  small.write(bodyOf(1000, 3));
  await Promise.all([first.commit(), second.commit(), small.commit()]);
  t.is(store.diskReport().memoryPendingBytes, 0, 'released at commit');
  t.is(store.counters.memorySkippedBusy, 1);
  t.truthy(memory.get(key(1)), 'the first went to memory');
  t.is(memory.get(key(2)), undefined, 'the second went to disk only');
  t.truthy(memory.get(key(3)));
  const fromDisk = await store.get(key(2));
  t.true((await readAll(fromDisk!.openBody())).equals(bodyOf(size, 2)));
  t.true(await waitFor(() => memory.get(key(2)) !== undefined), 'promoted on its first hit');
  // With nothing in flight, a large write goes to memory again; an aborted one gives its bytes back.
  const third = store.openWriter(key(4), meta(size));
  third.abort();
  t.is(store.diskReport().memoryPendingBytes, 0);
  await putEntry(store, key(5), meta(size), bodyOf(size, 5));
  t.truthy(memory.get(key(5)));
});

test("a worker's memory-only copies: too large is ENTRY_TOO_LARGE, past the in-flight bound MEMORY_BUSY; a body of undeclared size counts as it grows", async (t) => {
  const level = await LevelStore.open({ location: tempDir(t, 'outpost-backpressure-'), maxBytes: 1024 ** 3 });
  const memory = new MemoryStore({ maxBytes: 64 * 1024 * 1024 });
  // Keys of another worker: memory only.
  const store = new TieredStore({ memory, disk: level, diskKeys: () => false, memoryMaxEntryBytes: 1024 * 1024, maxPendingMemoryBytes: 1024 * 1024 });
  t.teardown(() => store.close());
  const large = store.openWriter(key(1), meta(2 * 1024 * 1024));
  t.throws(() => large.write(bodyOf(1000, 1)), { code: 'ENTRY_TOO_LARGE' });
  const first = store.openWriter(key(2), meta(900 * 1024));
  const busy = store.openWriter(key(3), meta(900 * 1024));
  t.throws(() => busy.write(bodyOf(1000, 3)), { code: 'MEMORY_BUSY' });
  first.write(bodyOf(900 * 1024, 2));
  await first.commit();
  t.is(store.diskReport().memoryPendingBytes, 0);
  const unsized = store.openWriter(key(4), meta(UNKNOWN_SIZE));
  unsized.write(bodyOf(300 * 1024, 4));
  t.is(store.diskReport().memoryPendingBytes, 300 * 1024);
  unsized.write(bodyOf(200 * 1024, 5));
  t.is(store.diskReport().memoryPendingBytes, 500 * 1024);
  unsized.abort();
  t.is(store.diskReport().memoryPendingBytes, 0);
});
