/**
 * Opening a large disk tier counts it in the background (issue 14, warm restart): the store
 * serves at once, never answers a miss from a presence filter that does not hold every stored key
 * yet, and comes out with exact counts however writes, replacements, deletes and purges interleave
 * with the count. `countInBackgroundAboveBytes: 0` makes every open count in the background.
 */
import test, { type ExecutionContext } from 'ava';
import { putEntry, type EntryMeta } from '../../storage/cache-store.js';
import { entryKey } from '../../storage/keys.js';
import { ENTRY_OVERHEAD_BYTES, LevelStore, type LevelStoreOptions } from '../../storage/level-store.js';
import { tempDir } from '../helpers/temp-dir.js';
import { withRaw } from './raw-level.js';

const FAR = 10 ** 13;
const ENTRIES = 3000;

async function open(t: ExecutionContext, dir: string, options: Partial<LevelStoreOptions> = {}): Promise<LevelStore> {
  const store = await LevelStore.open({ location: dir, maxBytes: 1 << 30, ...options });
  t.teardown(() => store.close());
  return store;
}

const meta = (size: number, tags: string[] = []): EntryMeta => ({ size, tags, storedAt: 1, staleAt: FAR, graceUntil: FAR, deleteAt: FAR, http: { status: 200 } });
const key = (i: number) => entryKey(`https://example.test/object/${i}`, '');
const bodyOf = (i: number, version = 1) => Buffer.alloc(100 + (i % 50), `${i}:${version}`);

/** A closed store folder holding ENTRIES entries, tagged by tens. */
async function filledFolder(t: ExecutionContext): Promise<string> {
  const dir = tempDir(t, 'outpost-count-');
  const store = await LevelStore.open({ location: dir, maxBytes: 1 << 30 });
  await Promise.all(Array.from({ length: ENTRIES }, (_, i) => putEntry(store, key(i), meta(bodyOf(i).length, [`tens-${Math.floor(i / 10)}`]), bodyOf(i))));
  await store.close();
  return dir;
}

/** What a plain open of `dir` counts (the store is closed again). */
async function countedByPlainOpen(dir: string): Promise<{ entries: number; bytes: number }> {
  const store = await LevelStore.open({ location: dir, maxBytes: 1 << 30, countInBackgroundAboveBytes: Infinity });
  try {
    return store.stats();
  } finally {
    await store.close();
  }
}

test('an open counted in the background serves every stored key before the count is done, and ends with exact counts', async (t) => {
  const dir = await filledFolder(t);
  const expected = await countedByPlainOpen(dir);
  t.is(expected.entries, ENTRIES);
  const store = await open(t, dir, { countInBackgroundAboveBytes: 0 });
  t.true(store.stats().entries < ENTRIES, 'the count was still running when open resolved');
  // Every key, asked for at once: none may be answered as absent by a half-filled filter.
  const found = await Promise.all(Array.from({ length: ENTRIES }, (_, i) => store.get(key(i))));
  t.is(found.filter((entry) => entry !== undefined).length, ENTRIES);
  t.true(Array.from({ length: ENTRIES }, (_, i) => store.mightContain(key(i))).every(Boolean));
  await store.counted;
  t.deepEqual(store.stats(), expected);
  t.is(store.get(key(ENTRIES + 1)), undefined, 'once counted, an absent key is answered without a read');
});

test('writes, replacements, deletes and purges racing the background count leave the same counts a plain open finds', async (t) => {
  const dir = await filledFolder(t);
  const store = await open(t, dir, { countInBackgroundAboveBytes: 0 });
  const racing: Promise<unknown>[] = [];
  for (let i = 0; i < 300; i++) {
    racing.push(putEntry(store, key(i), meta(bodyOf(i, 2).length + 7), Buffer.concat([bodyOf(i, 2), Buffer.alloc(7)]))); // replaced, larger
    racing.push(store.delete(key(1000 + i))); // removed
    racing.push(putEntry(store, key(ENTRIES + i), meta(bodyOf(i, 3).length), bodyOf(i, 3))); // new
  }
  racing.push(store.purgeTag('tens-250')); // 10 entries, 2500–2509
  await Promise.all(racing);
  await store.counted;
  const during = store.stats();
  await store.close();
  const plain = await countedByPlainOpen(dir);
  t.deepEqual(during, plain);
  t.is(plain.entries, ENTRIES - 300 + 300 - 10);
});

test('a store over its budget at open evicts to it once the background count is done', async (t) => {
  const dir = await filledFolder(t);
  const full = await countedByPlainOpen(dir);
  const budget = Math.floor(full.bytes / 2);
  const store = await open(t, dir, { maxBytes: budget, countInBackgroundAboveBytes: 0 });
  await store.counted;
  const after = store.stats();
  t.true(after.bytes <= budget, `${after.bytes} bytes within ${budget}`);
  t.true(after.entries < ENTRIES && after.entries > ENTRIES / 3);
  t.true(after.bytes >= budget - (149 + ENTRY_OVERHEAD_BYTES), 'evicted only what the budget needs');
});

test('a small store is counted before open resolves, as before', async (t) => {
  const dir = await filledFolder(t);
  const store = await open(t, dir);
  t.is(store.stats().entries, ENTRIES, 'below the default threshold (4 MiB of meta rows)');
});

test('a reopen during the background count counts again from scratch, exactly', async (t) => {
  const dir = await filledFolder(t);
  const expected = await countedByPlainOpen(dir);
  const store = await open(t, dir, { countInBackgroundAboveBytes: 0 });
  await store.reopen();
  t.deepEqual(store.stats(), expected, 'the reopen counted before serving; the first count stopped');
  await store.counted;
  t.deepEqual(store.stats(), expected, 'and the first count added nothing after it');
});

/** A filled folder with five meta rows whose checksum fails (a byte flipped with a plain LevelDB handle); their keys. */
async function folderWithCorruptRows(t: ExecutionContext): Promise<{ dir: string; corruptKeys: string[] }> {
  const dir = await filledFolder(t);
  const rows = await withRaw(dir, async (db) => {
    const found = await db.iterator({ gte: Buffer.from('o1/m/'), lt: Buffer.from('o1/m0'), limit: 5 }).all();
    for (const [rowKey, value] of found) {
      const broken = Buffer.from(value);
      broken[broken.length - 2] ^= 0xff;
      await db.put(rowKey, broken);
    }
    return found;
  });
  return { dir, corruptKeys: rows.map(([rowKey]) => rowKey.subarray('o1/m/'.length).toString('utf8')) };
}

for (const race of ['get', 'delete', 'commit', 'purge'] as const) {
  test(`corrupt meta rows met by ${race === 'get' ? 'lookups' : race === 'commit' ? 'commits replacing them' : `${race}s`} during the background count are counted out once`, async (t) => {
    const { dir, corruptKeys } = await folderWithCorruptRows(t);
    const store = await open(t, dir, { countInBackgroundAboveBytes: 0 });
    if (race === 'get') await Promise.all(corruptKeys.map((k) => store.get(k)));
    if (race === 'delete') await Promise.all(corruptKeys.map((k) => store.delete(k)));
    if (race === 'commit') await Promise.all(corruptKeys.map((k) => putEntry(store, k, meta(3), Buffer.from('new'))));
    if (race === 'purge') await store.purgePrefix('https://example.test/object/');
    await store.counted;
    const during = store.stats();
    await store.close();
    const plain = await countedByPlainOpen(dir);
    t.deepEqual(during, plain);
    t.is(plain.entries, race === 'commit' ? ENTRIES : race === 'purge' ? 0 : ENTRIES - 5);
  });
}

test('a memory hit noted during the background count still moves its key up the disk tier\'s LRU order', async (t) => {
  const dir = tempDir(t, 'outpost-count-');
  let now = 1_000_000;
  const first = await LevelStore.open({ location: dir, maxBytes: 1 << 30, now: () => now });
  for (let i = 0; i < ENTRIES; i++) {
    now += 1;
    await putEntry(first, key(i), meta(bodyOf(i).length), bodyOf(i));
  }
  await first.close();
  now += 60_000;
  const store = await open(t, dir, { countInBackgroundAboveBytes: 0, now: () => now });
  store.noteAccess(key(0)); // the least recently used entry, before the count has reached it
  await store.counted;
  await store.close();
  // Reopened at a third of the bytes: eviction drops the least recently used first.
  const full = await countedByPlainOpen(dir);
  const small = await open(t, dir, { maxBytes: Math.floor(full.bytes / 3), countInBackgroundAboveBytes: Infinity, now: () => now });
  t.not(await small.get(key(0)), undefined, 'the noted key was kept');
  t.is(await small.get(key(1)), undefined, 'its neighbour in the old order was evicted');
});
