/** The disk tier's presence filter: never a false "absent", few false "present", cold misses answered synchronously. */
import test from 'ava';
import { BloomFilter } from '../../storage/bloom-filter.js';
import { putEntry, type EntryMeta } from '../../storage/cache-store.js';
import { LevelStore } from '../../storage/level-store.js';
import { tempDir } from '../helpers/temp-dir.js';

const key = (i: number) => Buffer.from(`https://example.test/object/${i}`);

test('no false negatives, and about 1% false positives at capacity', (t) => {
  const filter = new BloomFilter(10_000);
  for (let i = 0; i < 10_000; i++) filter.add(key(i));
  for (let i = 0; i < 10_000; i++) t.true(filter.mightContain(key(i)));
  let falsePositives = 0;
  for (let i = 10_000; i < 30_000; i++) if (filter.mightContain(key(i))) falsePositives++;
  t.true(falsePositives / 20_000 < 0.03, `${falsePositives} false positives in 20,000`);
  t.false(filter.full);
  filter.add(key(-1));
  t.true(filter.full);
});

function meta(): EntryMeta {
  const now = Date.now();
  return { size: 3, tags: [], storedAt: now, staleAt: now + 60_000, graceUntil: now + 60_000, deleteAt: now + 120_000, http: {} };
}

test('the disk tier answers a never-written key synchronously, finds written keys after reopen and after the filter grows', async (t) => {
  const dir = tempDir(t, 'outpost-bloom-');
  let store = await LevelStore.open({ location: dir, maxBytes: 1 << 30, expectedEntries: 1024 });
  t.is(store.get('https://example.test/never'), undefined, 'a cold miss is not a promise');
  for (let i = 0; i < 2500; i++) await putEntry(store, `k${i}`, meta(), Buffer.from('abc'));
  // Past its capacity the filter was rebuilt larger; every key is still found.
  for (let i = 0; i < 2500; i += 97) t.truthy(await store.get(`k${i}`), `k${i}`);
  await store.close();
  store = await LevelStore.open({ location: dir, maxBytes: 1 << 30, expectedEntries: 1024 });
  t.teardown(() => store.close());
  for (let i = 0; i < 2500; i += 89) t.truthy(await store.get(`k${i}`), `k${i} after reopen`);
  t.is(store.get('https://example.test/never'), undefined);
});

test('keys committed while the filter is being rebuilt are never reported absent', async (t) => {
  const dir = tempDir(t, 'outpost-bloom-');
  const store = await LevelStore.open({ location: dir, maxBytes: 1 << 30, expectedEntries: 1024 });
  t.teardown(() => store.close());
  // All at once: commits queue behind each other while the rebuild starts among them.
  await Promise.all(Array.from({ length: 1400 }, (_, i) => putEntry(store, `c${i}`, meta(), Buffer.from('abc'))));
  let missing = 0;
  for (let i = 0; i < 1400; i++) if ((await store.get(`c${i}`)) === undefined) missing++;
  t.is(missing, 0);
});

test('a filter rebuild scans a snapshot off the mutation queue: commits and deletes go on meanwhile, and it ends with every key found', async (t) => {
  const dir = tempDir(t, 'outpost-bloom-');
  const store = await LevelStore.open({ location: dir, maxBytes: 1 << 30, expectedEntries: 1024 });
  t.teardown(() => store.close());
  const internals = store as unknown as { presence: BloomFilter; rebuildAdds: Buffer[] | undefined };
  for (let i = 0; i < 1024; i++) await putEntry(store, `a${i}`, meta(), Buffer.from('abc'));
  // The rebuild's scan (the next iterator the store opens) waits at a gate; its snapshot is taken when it is opened.
  let release!: () => void;
  const gate = new Promise<void>((resolve) => (release = resolve));
  const iterator = store.db.iterator.bind(store.db);
  store.db.iterator = ((options: Parameters<typeof iterator>[0]) => {
    store.db.iterator = iterator;
    const rows = iterator(options);
    return (async function* () {
      await gate;
      yield* rows;
    })();
  }) as unknown as typeof store.db.iterator;
  // A scan on the mutation queue would hold the commits: after 3 s the gate opens and the test fails.
  let timer: NodeJS.Timeout | undefined;
  const held = new Promise<string>((resolve) => {
    timer = setTimeout(() => {
      release();
      resolve('held by the scan');
    }, 3000);
  });
  const committed = (async () => {
    await putEntry(store, 'a1024', meta(), Buffer.from('abc')); // past capacity: the rebuild starts
    t.not(internals.rebuildAdds, undefined, 'the rebuild is running');
    await Promise.all(Array.from({ length: 50 }, (_, i) => putEntry(store, `b${i}`, meta(), Buffer.from('abc'))));
    return 'committed';
  })();
  t.is(await Promise.race([committed, held]), 'committed', 'commits go on while the scan waits');
  clearTimeout(timer);
  t.true(await store.delete('a0'));
  t.not(internals.rebuildAdds, undefined, 'the scan still waits');
  release();
  for (let i = 0; i < 500 && internals.rebuildAdds !== undefined; i++) await new Promise((resolve) => setTimeout(resolve, 10));
  t.is(internals.rebuildAdds, undefined, 'the rebuild ended');
  t.true(internals.presence.capacity > 1024, 'with a larger filter');
  let missing = 0;
  for (let i = 1; i <= 1024; i++) if ((await store.get(`a${i}`)) === undefined) missing++;
  for (let i = 0; i < 50; i++) if ((await store.get(`b${i}`)) === undefined) missing++;
  t.is(missing, 0, 'every key stored before, during and after the scan is found');
  t.is(await store.get('a0'), undefined);
});
