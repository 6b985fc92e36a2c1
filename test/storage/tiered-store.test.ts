import { PassThrough } from 'node:stream';
import test, { type ExecutionContext } from 'ava';
import {
  StoreError,
  UNKNOWN_SIZE,
  putEntry,
  type CacheStore,
  type CachedEntry,
  type EntryMeta,
  type EntryWriter,
  type PurgeOptions,
} from '../../storage/cache-store.js';
import { entryKey } from '../../storage/keys.js';
import { LevelStore, TOUCH_INTERVAL_MS } from '../../storage/level-store.js';
import { MemoryStore, entryCost } from '../../storage/memory-store.js';
import { TieredStore, openTieredStore } from '../../storage/tiered-store.js';
import { bodyOf, meta, readAll, runStoreContract } from './contract.js';
import { tempDir } from '../helpers/temp-dir.js';

// Memory takes bodies up to 1 MiB, so the contract's 2 MiB body exercises the disk-only path.
runStoreContract('tiered', async (t) => {
  const store = await openTieredStore({
    dataDir: tempDir(t),
    memoryBytes: 32 * 1024 * 1024,
    diskBytes: 256 * 1024 * 1024,
    memoryMaxEntryBytes: 1024 * 1024,
  });
  return { store, cleanup: () => store.close() };
});

/** A promise plus the function that resolves it. */
function gate(): { open(): void; opened: Promise<void> } {
  let open!: () => void;
  const opened = new Promise<void>((resolve) => (open = resolve));
  return { open, opened };
}

/**
 * A real LevelStore behind a pass-through that counts calls. For failure and race tests it can
 * fail commits (a full disk) and hold body streams or deletes until a gate opens.
 */
class CountingStore implements CacheStore {
  readonly calls: Record<string, number> = {};
  failCommits = false;
  bodyGate: Promise<void> | undefined;
  deleteGate: Promise<void> | undefined;
  constructor(readonly inner: LevelStore) {}
  private count(name: string): void {
    this.calls[name] = (this.calls[name] ?? 0) + 1;
  }
  get(key: string) {
    this.count('get');
    return Promise.resolve(this.inner.get(key)).then((entry): CachedEntry | undefined => {
      if (!entry) return entry;
      const held = () => this.bodyGate;
      return {
        key: entry.key,
        meta: entry.meta,
        body: entry.body,
        openBody: (range) => {
          this.count('openBody');
          const gateNow = held();
          if (!gateNow) return entry.openBody(range);
          const out = new PassThrough();
          void gateNow.then(() => {
            const inner = entry.openBody(range);
            inner.on('error', (error) => out.destroy(error));
            inner.pipe(out);
          });
          return out;
        },
      };
    });
  }
  openWriter(key: string, m: EntryMeta): EntryWriter {
    this.count('openWriter');
    const writer = this.inner.openWriter(key, m);
    return {
      write: (chunk) => writer.write(chunk),
      commit: async () => {
        if (this.failCommits) {
          writer.abort();
          throw new StoreError('DISK_FULL', 'no space left on device (simulated)');
        }
        return writer.commit();
      },
      abort: () => writer.abort(),
    };
  }
  updateMeta(key: string, m: EntryMeta) {
    this.count('updateMeta');
    return this.inner.updateMeta(key, m);
  }
  async delete(key: string) {
    this.count('delete');
    if (this.deleteGate) await this.deleteGate;
    return this.inner.delete(key);
  }
  purgeUrl(url: string, o?: PurgeOptions) {
    this.count('purgeUrl');
    return this.inner.purgeUrl(url, o);
  }
  purgePrefix(prefix: string, o?: PurgeOptions) {
    this.count('purgePrefix');
    return this.inner.purgePrefix(prefix, o);
  }
  purgeTag(tag: string, o?: PurgeOptions) {
    this.count('purgeTag');
    return this.inner.purgeTag(tag, o);
  }
  stats() {
    this.count('stats');
    return this.inner.stats();
  }
  variants(url: string) {
    return this.inner.variants(url);
  }
  close() {
    return this.inner.close();
  }
  total(): number {
    return Object.values(this.calls).reduce((a, b) => a + b, 0);
  }
}

async function counted(
  t: ExecutionContext,
  options: { memoryBytes?: number; memoryMaxEntryBytes?: number; diskBytes?: number; admission?: boolean } = {},
) {
  const level = await LevelStore.open({ location: tempDir(t), maxBytes: options.diskBytes ?? 64 * 1024 * 1024 });
  const disk = new CountingStore(level);
  const memory = new MemoryStore({
    maxBytes: options.memoryBytes ?? 16 * 1024 * 1024,
    ...(options.memoryMaxEntryBytes !== undefined ? { maxEntryBytes: options.memoryMaxEntryBytes } : {}),
    admission: options.admission ?? false,
  });
  const store = new TieredStore({
    memory,
    disk,
    ...(options.memoryMaxEntryBytes !== undefined ? { memoryMaxEntryBytes: options.memoryMaxEntryBytes } : {}),
  });
  t.teardown(() => store.close());
  return { store, memory, disk, level };
}

const key = (name: string, variant = '') => entryKey(`https://example.test/${name}`, variant);

test('tiered: a memory hit is synchronous and touches no disk', async (t) => {
  const { store, disk } = await counted(t);
  await putEntry(store, key('hot'), meta(1000), bodyOf(1000));
  const before = disk.total();
  for (let i = 0; i < 5; i++) {
    const hit = store.get(key('hot'));
    t.false((hit as unknown) instanceof Promise, 'no promise on a memory hit');
    t.true((hit as { body?: Buffer }).body?.equals(bodyOf(1000)));
  }
  t.is(disk.total(), before, 'no disk calls');
  t.is(store.counters.memoryHits, 5);
  t.is(store.counters.diskHits, 0);
});

for (const [name, size, reads] of [['a one-chunk body, read with its meta: promoted at once', 50_000, 0], ['a longer body, read in the background', 200_000, 1]] as const) {
  test(`tiered: a disk hit is served, then promoted to memory: ${name}`, async (t) => {
    const { store, memory, disk, level } = await counted(t);
    const body = bodyOf(size, 3);
    await putEntry(level, key('cold'), meta(body.length, { tags: ['c'] }), body); // disk only
    t.is(memory.get(key('cold')), undefined);

    const pending = store.get(key('cold'));
    t.true(pending instanceof Promise, 'a disk lookup is a promise');
    const entry = await pending;
    if (!entry) return t.fail('disk entry missing');
    t.true((await readAll(entry.openBody())).equals(body));
    t.is(store.counters.diskHits, 1);
    t.is(entry.body !== undefined, reads === 0, 'a one-chunk body comes with the entry');
    if (reads === 0) t.is(store.counters.promotions, 1, 'promoted at once');
    await store.promotionsIdle();
    t.is(store.counters.promotions, 1);
    t.is(disk.calls.openBody, 1 + reads, 'the body is read for the promotion only when it did not come with the entry');

    const diskGets = disk.calls.get;
    const hit = store.get(key('cold'));
    t.false((hit as unknown) instanceof Promise);
    t.true((hit as { body?: Buffer }).body?.equals(body));
    t.deepEqual((hit as { meta: EntryMeta }).meta.tags, ['c']);
    t.is(disk.calls.get, diskGets, 'second read served from memory');
    t.is(store.counters.memoryHits, 1);
    t.is(store.memoryStats().entries, 1);

    t.is(await store.get(key('absent')), undefined);
    t.is(store.counters.misses, 1);
  });
}

test('tiered: a promotion overtaken by a mutation does not bring back old data', async (t) => {
  const { store, memory, disk, level } = await counted(t);
  const names = ['deleted', 'updated', 'soft-purged', 'purged'];
  for (const name of names) await putEntry(level, key(name), meta(100_000, { tags: [name] }), bodyOf(100_000));
  /** Looks the keys up (starting promotions), runs `mutate` while their body reads are held, then lets them finish. */
  const overtake = async (keys: string[], mutate: () => Promise<void>) => {
    const bodies = gate();
    disk.bodyGate = bodies.opened;
    for (const name of keys) t.truthy(await store.get(key(name)));
    await mutate();
    bodies.open();
    await store.promotionsIdle();
    disk.bodyGate = undefined;
  };
  await overtake(['deleted', 'updated'], async () => {
    t.true(await store.delete(key('deleted')));
    t.true(await store.updateMeta(key('updated'), meta(100_000, { tags: ['updated'], http: { version: 2 } })));
  });
  const softAt = Date.now();
  await overtake(['soft-purged', 'purged'], async () => {
    t.is(await store.purgeTag('soft-purged', { soft: true }), 1);
    t.is(await store.purgeTag('purged'), 1);
  });
  t.is(store.counters.promotions, 0);
  t.is(store.counters.promotionsDropped, names.length);
  for (const name of names) t.is(memory.get(key(name)), undefined, `${name}: stale copy not promoted`);
  t.is(await store.get(key('deleted')), undefined);
  t.is(await store.get(key('purged')), undefined);
  t.deepEqual((await store.get(key('updated')))?.meta.http, { version: 2 });
  const soft = await store.get(key('soft-purged'));
  t.true(soft!.meta.staleAt >= softAt && soft!.meta.staleAt <= Date.now(), 'soft purge kept');
});

test('tiered: no promotion starts while a delete of the key is under way', async (t) => {
  const { store, memory, disk, level } = await counted(t);
  await putEntry(level, key('p'), meta(1000), bodyOf(1000));
  const deletes = gate();
  disk.deleteGate = deletes.opened;
  const deleting = store.delete(key('p')); // memory side done, disk side held
  const seen = await store.get(key('p')); // disk still has it: served, but must not be promoted
  t.truthy(seen);
  deletes.open();
  t.true(await deleting);
  await store.promotionsIdle();
  t.is(memory.get(key('p')), undefined);
  t.is(await store.get(key('p')), undefined);
});

test('tiered: objects above memoryMaxEntryBytes live on disk only', async (t) => {
  const { store, memory, level } = await counted(t, { memoryMaxEntryBytes: 4096 });
  t.is(store.memoryMaxEntryBytes, 4096);
  const big = bodyOf(8192, 5);
  await putEntry(store, key('big'), meta(big.length), big);
  await putEntry(store, key('big-chunked'), meta(UNKNOWN_SIZE), [big.subarray(0, 3000), big.subarray(3000)]);
  await putEntry(store, key('small'), meta(4096), bodyOf(4096));
  for (const name of ['big', 'big-chunked']) {
    t.is(memory.get(key(name)), undefined, `${name} not in memory`);
    const onDisk = await level.get(key(name));
    t.is(onDisk?.meta.size, big.length);
    const entry = await store.get(key(name));
    t.true((await readAll(entry!.openBody())).equals(big));
  }
  await store.promotionsIdle();
  t.is(memory.get(key('big')), undefined, 'not promoted either');
  t.is(store.counters.promotions, 0);
  t.not(memory.get(key('small')), undefined, 'a body at the limit goes to memory');
  t.not(await level.get(key('small')), undefined, '…and to disk');

  // Replacing a small (memory) version with a big one must not leave the old one in memory.
  await putEntry(store, key('small'), meta(big.length), big);
  t.is(memory.get(key('small')), undefined);
  const replaced = await store.get(key('small'));
  t.is(replaced?.meta.size, big.length);
});

test('tiered: purges and updates reach both tiers and count each entry once', async (t) => {
  const { store, memory, level } = await counted(t);
  await putEntry(store, key('p', 'a'), meta(10, { tags: ['t'] }), bodyOf(10));
  await putEntry(store, key('p', 'b'), meta(10, { tags: ['t'] }), bodyOf(10));
  await putEntry(level, key('p', 'c'), meta(10, { tags: ['t'] }), bodyOf(10)); // disk only
  t.is(memory.stats().entries, 2);
  t.is(store.stats().entries, 3, 'stats are the disk superset');
  t.is(await store.purgeTag('t', { soft: true }), 3);
  t.true((memory.get(key('p', 'a'))!.meta.staleAt) <= Date.now());
  t.true((await level.get(key('p', 'a')))!.meta.staleAt <= Date.now());
  t.is(await store.purgeUrl('https://example.test/p'), 3);
  t.deepEqual(store.memoryStats(), { entries: 0, bytes: 0 });
  t.is(store.stats().entries, 0);
});

test('tiered: a failed disk commit still commits to memory and is counted', async (t) => {
  const { store, memory, disk } = await counted(t, { memoryMaxEntryBytes: 64 * 1024 });
  await putEntry(store, key('x'), meta(5), Buffer.from('old-1'));
  disk.failCommits = true;
  await putEntry(store, key('x'), meta(5), Buffer.from('new-2')); // no error for the caller
  t.is(store.counters.diskWriteErrors, 1);
  t.is((store.lastDiskError as StoreError).code, 'DISK_FULL');
  t.is(memory.get(key('x'))?.body?.toString(), 'new-2');
  // The outdated disk copy is owed a delete (the disk is degraded now): it never comes back.
  await memory.delete(key('x'));
  t.is(await store.get(key('x')), undefined, 'the outdated disk copy is hidden');
  // Too big for memory: nowhere to put it, so the caller hears about the disk.
  await t.throwsAsync(putEntry(store, key('y'), meta(100_000), bodyOf(100_000)), { code: 'DISK_FULL' });
  t.is(await store.get(key('y')), undefined);
  t.is(store.counters.diskWriteErrors, 1);
});

test('tiered: SIZE_MISMATCH leaves both tiers untouched', async (t) => {
  const { store, memory, level } = await counted(t);
  await putEntry(store, key('m'), meta(3), Buffer.from('abc'));
  await t.throwsAsync(putEntry(store, key('m'), meta(5), Buffer.from('abcd')), { code: 'SIZE_MISMATCH' });
  t.is(memory.get(key('m'))?.body?.toString(), 'abc');
  t.is((await level.get(key('m')))?.meta.size, 3);
  t.is(store.counters.diskWriteErrors, 0);
});

test('tiered: the disk tier evicts within its own byte budget', async (t) => {
  const diskBytes = 512 * 1024;
  // Memory keeps nothing here (limit 0), so every read below is answered by disk.
  const { store, level } = await counted(t, { diskBytes, memoryMaxEntryBytes: 0 });
  const size = 32 * 1024;
  for (let i = 0; i < 40; i++) await putEntry(store, key(`e${i}`), meta(size), bodyOf(size, i + 1));
  t.true(store.stats().bytes <= diskBytes, `disk bytes ${store.stats().bytes} <= ${diskBytes}`);
  t.true(level.counters.evicted > 0);
  t.is(await store.get(key('e0')), undefined, 'the oldest entry went first');
  const newest = await store.get(key('e39'));
  t.true((await readAll(newest!.openBody())).equals(bodyOf(size, 40)));
  t.is(store.memoryStats().entries, 0);
});

test('tiered: entries survive a reopen', async (t) => {
  const dataDir = tempDir(t);
  const options = { dataDir, memoryBytes: 8 * 1024 * 1024, diskBytes: 64 * 1024 * 1024 };
  const body = bodyOf(200_000, 8);
  let store = await openTieredStore(options);
  await putEntry(store, key('durable', 'br'), meta(body.length, { tags: ['keep'] }), body);
  await putEntry(store, key('small'), meta(3), Buffer.from('abc'));
  await store.close();

  store = await openTieredStore(options);
  t.teardown(() => store.close());
  t.deepEqual(store.memoryStats(), { entries: 0, bytes: 0 }, 'memory starts empty');
  t.is(store.stats().entries, 2);
  const entry = await store.get(key('durable', 'br'));
  if (!entry) return t.fail('lost on reopen');
  t.deepEqual(entry.meta.tags, ['keep']);
  t.true((await readAll(entry.openBody())).equals(body));
  t.is(store.counters.diskHits, 1);
  await store.promotionsIdle();
  t.is(store.memoryStats().entries, 1, 'promoted after the reopen');
  t.is(await store.purgeTag('keep'), 1);
});

test('tiered: memory hits keep the disk copy warm in the disk tier LRU order', async (t) => {
  const size = 16 * 1024;
  let clock = 1_000_000;
  const now = () => clock;
  const level = await LevelStore.open({ location: tempDir(t), maxBytes: 3 * (size + 1024), now });
  const store = new TieredStore({ memory: new MemoryStore({ maxBytes: 16 * 1024 * 1024, now }), disk: level });
  t.teardown(() => store.close());
  for (const [i, name] of ['a', 'b', 'c'].entries()) {
    await putEntry(store, key(name), meta(size), bodyOf(size, i + 1));
    clock += 1000;
  }
  // 'a' is the oldest on disk but hot in memory, a touch interval later; the next write must evict 'b' instead.
  clock += TOUCH_INTERVAL_MS;
  t.false((store.get(key('a')) as unknown) instanceof Promise);
  await putEntry(store, key('d'), meta(size), bodyOf(size, 4));
  t.truthy(await level.get(key('a')), 'the memory-hot entry stays on disk');
  t.is(await level.get(key('b')), undefined, 'the least recently used entry went');
});

/** A tiered store on a test clock, with the keys its memory hits pass on to the disk tier (noteAccess). */
async function notingStore(t: ExecutionContext) {
  const clock = { now: 1_000_000 };
  const now = () => clock.now;
  const level = await LevelStore.open({ location: tempDir(t), maxBytes: 64 * 1024 * 1024, now });
  const store = new TieredStore({ memory: new MemoryStore({ maxBytes: 16 * 1024 * 1024, now }), disk: level });
  t.teardown(() => store.close());
  const noted: string[] = [];
  const noteAccess = level.noteAccess.bind(level);
  level.noteAccess = (k) => {
    noted.push(k);
    noteAccess(k);
  };
  return { clock, store, noted };
}

test('tiered: a memory-hot entry is passed on to the disk tier at most once per touch interval, counted from its fill', async (t) => {
  const { clock, store, noted } = await notingStore(t);
  await putEntry(store, key('hot'), meta(100), bodyOf(100, 1));
  const hits = async (n: number) => {
    for (let i = 0; i < n; i++) {
      t.truthy(await store.get(key('hot')));
      clock.now += 100;
    }
  };
  await hits(50); // 5 s after the fill, which wrote the disk copy's access time
  t.deepEqual(noted, [], 'hits within the interval after the fill write nothing to disk');
  clock.now += TOUCH_INTERVAL_MS;
  await hits(50);
  t.deepEqual(noted, [key('hot')], 'one note for every hit of the next interval');
  clock.now += TOUCH_INTERVAL_MS;
  await hits(1);
  t.is(noted.length, 2, 'and one more an interval later');
});

test('tiered: a soft purge or a 304 refresh of a memory entry keeps when it was last passed on to the disk tier', async (t) => {
  const { clock, store, noted } = await notingStore(t);
  const m = meta(100);
  await putEntry(store, key('kept'), m, bodyOf(100, 1));
  clock.now += TOUCH_INTERVAL_MS / 2;
  t.is(await store.purgeUrl('https://example.test/kept', { soft: true }), 1);
  t.truthy(await store.updateMeta(key('kept'), { ...m, staleAt: clock.now }));
  t.truthy(await store.get(key('kept')));
  t.deepEqual(noted, [], 'the replaced entry did not start at 0');
  clock.now += TOUCH_INTERVAL_MS / 2;
  t.truthy(await store.get(key('kept')));
  t.deepEqual(noted, [key('kept')], 'an interval after the fill, not after the purge or refresh');
});

test('tiered: keys outside diskKeys live in memory only and are never read from disk (a worker\'s copies of keys it does not own)', async (t) => {
  const level = await LevelStore.open({ location: tempDir(t), maxBytes: 64 * 1024 * 1024 });
  const memory = new MemoryStore({ maxBytes: 16 * 1024 * 1024 });
  const store = new TieredStore({ memory, disk: level, diskKeys: (k) => k.startsWith('https://mine/') });
  t.teardown(() => store.close());
  const mine = entryKey('https://mine/a', '');
  const theirs = entryKey('https://theirs/a', '');
  const body = bodyOf(1000);
  // A copy left on this disk from before (another worker count) must not be served for a key owned elsewhere.
  await putEntry(level, theirs, meta(body.length), bodyOf(1000, 9));
  await putEntry(store, mine, meta(body.length), body);
  await putEntry(store, theirs, meta(body.length), body);
  t.not(await level.get(mine), undefined, 'an owned key goes to disk');
  t.true((await readAll((await level.get(theirs))!.openBody())).equals(bodyOf(1000, 9)), 'the other key is not written to disk');
  t.true((store.get(theirs) as CachedEntry).body!.equals(body), 'served from memory');
  await store.delete(theirs);
  t.is(store.get(theirs), undefined, 'a memory miss for a key outside diskKeys is a miss, synchronously, whatever the disk holds');
  t.true(await store.updateMeta(mine, meta(body.length, { staleAt: 1 })));
  t.is((await level.get(mine))?.meta.staleAt, 1);
});

test('tiered: with TinyLFU admission, a one-time fill or disk hit does not push hot entries out of memory; it is served from disk', async (t) => {
  const body = bodyOf(10_000);
  const cost = entryCost(key('h0'), meta(body.length), body.length);
  const { store, memory, disk, level } = await counted(t, { memoryBytes: 4 * cost, memoryMaxEntryBytes: cost, admission: true });
  const hot = ['h0', 'h1', 'h2', 'h3'];
  for (const name of hot) await putEntry(store, key(name), meta(body.length), body);
  for (let round = 0; round < 3; round++) for (const name of hot) t.truthy(store.get(key(name)));
  // A fill of a key asked for once: the disk takes it, memory does not.
  t.is(await store.get(key('once')), undefined);
  await putEntry(store, key('once'), meta(body.length), body);
  t.deepEqual(memory.keys().sort(), hot.map((name) => key(name)).sort(), 'the hot entries stay in memory');
  t.is(memory.admissionsRefused, 1);
  t.is(store.diskReport().memoryAdmissionsRefused, 1);
  const fromDisk = await store.get(key('once'));
  t.true((await readAll(fromDisk!.openBody())).equals(body), 'served from disk');
  t.is(memory.get(key('once')), undefined, 'its disk hit is not promoted either: asked for twice, as often as the hot ones were before');
  // Asked for often enough, it is promoted at its next disk hit.
  for (let n = 0; n < 4; n++) store.get(key('once'));
  await store.get(key('once'));
  await store.promotionsIdle();
  t.truthy(memory.get(key('once')), 'promoted once asked for more often than the entry it evicts');
  t.true(disk.calls.get! >= 2);
  void level;
});

test('tiered: admission never refuses a write that memory must keep: a replacement of a memory entry, or a fill the disk failed to take', async (t) => {
  const body = bodyOf(10_000);
  const cost = entryCost(key('h0'), meta(body.length), body.length);
  const { store, memory, disk } = await counted(t, { memoryBytes: 2 * cost, memoryMaxEntryBytes: cost, admission: true });
  for (const name of ['h0', 'h1']) await putEntry(store, key(name), meta(body.length), body);
  for (let round = 0; round < 3; round++) for (const name of ['h0', 'h1']) store.get(key(name));
  const newer = bodyOf(10_000, 9);
  await putEntry(store, key('h0'), meta(newer.length), newer);
  t.true(memory.get(key('h0'))?.body.equals(newer), 'the new version replaces the old in memory');
  disk.failCommits = true;
  await putEntry(store, key('lost-on-disk'), meta(body.length), body);
  t.truthy(memory.get(key('lost-on-disk')), 'memory holds the only copy');
  t.is(memory.admissionsRefused, 0);
});
