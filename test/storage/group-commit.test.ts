/**
 * Commits queued back to back share one read and one batch (storage/level-store.ts, issue 14).
 * The group must not change what a store guarantees: every entry whole and counted once, the same
 * key committed several times in one group ending with one version and no rows of the others, and
 * a delete or purge asked between two commits applied in that order.
 */
import test from 'ava';
import { putEntry, type EntryMeta } from '../../storage/cache-store.js';
import { entryKey } from '../../storage/keys.js';
import { ENTRY_OVERHEAD_BYTES, LevelStore } from '../../storage/level-store.js';
import { tempDir } from '../helpers/temp-dir.js';
import { bodyRows, rawKeys } from './raw-level.js';

const FAR = 10 ** 13;
const CHUNK = 1024;

const meta = (size: number, tags: string[] = []): EntryMeta => ({ size, tags, storedAt: 1, staleAt: FAR, graceUntil: FAR, deleteAt: FAR, http: { status: 200 } });
const key = (i: number) => entryKey(`https://example.test/group/${i}`, '');
/** Version v of key i: sizes on both sides of one chunk, so groups mix one-row bodies and chunked ones. */
const bodyOf = (i: number, v: number) => Buffer.alloc([0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK][(i + v) % 6]!, `${i}.${v};`);

async function readBody(store: LevelStore, k: string): Promise<Buffer | undefined> {
  const entry = await store.get(k);
  if (entry === undefined) return undefined;
  const parts: Buffer[] = [];
  for await (const part of entry.openBody()) parts.push(part as Buffer);
  return Buffer.concat(parts);
}

test('400 concurrent commits of 50 keys, 8 versions each: every key one whole version, counted once, no rows of the others', async (t) => {
  const dir = tempDir(t, 'outpost-group-');
  const store = await LevelStore.open({ location: dir, maxBytes: 1 << 30, chunkBytes: CHUNK });
  const writes: Promise<void>[] = [];
  for (let v = 0; v < 8; v++) for (let i = 0; i < 50; i++) writes.push(putEntry(store, key(i), meta(bodyOf(i, v).length, [`v${v}`]), bodyOf(i, v)));
  await Promise.all(writes);
  let bytes = 0;
  let chunks = 0;
  const finals: number[] = [];
  for (let i = 0; i < 50; i++) {
    const body = await readBody(store, key(i));
    const version = Array.from({ length: 8 }, (_, v) => v).find((v) => body !== undefined && body.equals(bodyOf(i, v)));
    t.not(version, undefined, `key ${i} holds one of its versions, whole`);
    finals.push(version!);
    bytes += body!.length + ENTRY_OVERHEAD_BYTES;
    chunks += Math.ceil(body!.length / CHUNK);
  }
  t.deepEqual(store.stats(), { entries: 50, bytes });
  await store.close();
  t.is(await bodyRows(dir), chunks, 'exactly the chunks (or body rows) of the 50 bodies kept');
  t.is((await rawKeys(dir, 'o1/p/')).length, 0, 'no pending row left');
  t.is((await rawKeys(dir, 'o1/a/')).length, 50, 'one access row per entry');
  const reopened = await LevelStore.open({ location: dir, maxBytes: 1 << 30, chunkBytes: CHUNK });
  t.teardown(() => reopened.close());
  for (let v = 0; v < 8; v++) {
    t.is(await reopened.purgeTag(`v${v}`), finals.filter((f) => f === v).length, `tag v${v}: only the keys whose last version carries it`);
  }
  t.deepEqual(reopened.stats(), { entries: 0, bytes: 0 });
});

/** Lets pending microtasks run (a writer's commit asks the store for its commit a few ticks after commit()). */
async function ticks(): Promise<void> {
  for (let i = 0; i < 20; i++) await Promise.resolve();
}

test('a delete or purge asked between two commits splits their group: it removes the one before, not the one after', async (t) => {
  const dir = tempDir(t, 'outpost-group-');
  const store = await LevelStore.open({ location: dir, maxBytes: 1 << 30, chunkBytes: CHUNK });
  t.teardown(() => store.close());
  // A mutation first keeps the queue busy (its LevelDB call ends in a later turn), so everything
  // below is asked for, in this order, before any of it runs: without the split, the commits
  // around each delete or purge would share one batch.
  const busy = store.purgeTag('nothing');
  const before = putEntry(store, key(1), meta(10), Buffer.alloc(10, 'a'));
  await ticks();
  const removed = store.delete(key(1));
  const after = putEntry(store, key(1), meta(20), Buffer.alloc(20, 'b'));
  const tagged = putEntry(store, key(2), meta(5, ['t']), Buffer.alloc(5, 'c'));
  await ticks();
  const purged = store.purgeTag('t');
  const kept = putEntry(store, key(3), meta(7, ['t']), Buffer.alloc(7, 'd'));
  await busy;
  await Promise.all([before, after, tagged, kept]);
  t.true(await removed, 'the delete found the entry committed before it');
  t.is(await purged, 1, 'the purge found the tagged entry committed before it');
  t.deepEqual(await readBody(store, key(1)), Buffer.alloc(20, 'b'), 'the commit asked for after the delete stands');
  t.is(await store.get(key(2)), undefined);
  t.deepEqual(await readBody(store, key(3)), Buffer.alloc(7, 'd'), 'the commit asked for after the purge stands');
  t.deepEqual(store.stats(), { entries: 2, bytes: 20 + 7 + 2 * ENTRY_OVERHEAD_BYTES });
});

test('a commit reads the old meta row only of a key the presence filter does not rule out', async (t) => {
  const store = await LevelStore.open({ location: tempDir(t, 'outpost-group-'), maxBytes: 1 << 30, chunkBytes: CHUNK });
  t.teardown(() => store.close());
  let readRows = 0;
  const getMany = store.db.getMany.bind(store.db);
  store.db.getMany = ((keys: Buffer[]) => {
    readRows += keys.length;
    return getMany(keys);
  }) as typeof store.db.getMany;
  await Promise.all(Array.from({ length: 100 }, (_, i) => putEntry(store, key(i), meta(bodyOf(i, 0).length), bodyOf(i, 0))));
  t.is(readRows, 0, '100 new keys: nothing read');
  await putEntry(store, key(7), meta(bodyOf(7, 1).length), bodyOf(7, 1));
  t.is(readRows, 1, 'a replacement reads the row it replaces');
  t.deepEqual(await readBody(store, key(7)), bodyOf(7, 1));
});

for (const [name, countInBackgroundAboveBytes] of [['counted at open', Infinity], ['counted in the background', 0]] as const) {
  test(`after a reopen (${name}), replacing every key leaves no row of the old versions`, async (t) => {
    const dir = tempDir(t, 'outpost-group-');
    const first = await LevelStore.open({ location: dir, maxBytes: 1 << 30, chunkBytes: CHUNK });
    for (let i = 0; i < 30; i++) await putEntry(first, key(i), meta(bodyOf(i, 0).length, ['old']), bodyOf(i, 0));
    await first.close();
    const store = await LevelStore.open({ location: dir, maxBytes: 1 << 30, chunkBytes: CHUNK, countInBackgroundAboveBytes });
    await Promise.all(Array.from({ length: 30 }, (_, i) => putEntry(store, key(i), meta(bodyOf(i, 1).length), bodyOf(i, 1))));
    await store.counted;
    let bytes = 0;
    let chunks = 0;
    for (let i = 0; i < 30; i++) {
      bytes += bodyOf(i, 1).length + ENTRY_OVERHEAD_BYTES;
      chunks += Math.ceil(bodyOf(i, 1).length / CHUNK);
    }
    t.deepEqual(store.stats(), { entries: 30, bytes });
    t.is(await store.purgeTag('old'), 0, 'no tag row of the old versions');
    await store.close();
    t.is(await bodyRows(dir), chunks, 'only the new versions\' chunks');
    t.is((await rawKeys(dir, 'o1/a/')).length, 30, 'one access row per entry');
  });
}

test('a commit asked for while a reopen recounts reads the row it replaces (the emptied filter answers nothing until the count is done)', async (t) => {
  const dir = tempDir(t, 'outpost-group-');
  const store = await LevelStore.open({ location: dir, maxBytes: 1 << 30, chunkBytes: CHUNK });
  t.teardown(() => store.close());
  const internals = store as unknown as { presence: object };
  await putEntry(store, key(1), meta(3 * CHUNK, ['old']), Buffer.alloc(3 * CHUNK, 'o'));
  const filter = internals.presence;
  const reopened = store.reopen();
  // The moment the reopen empties the filter (it counts the new handle's rows after opening it).
  while (internals.presence === filter) await new Promise((resolve) => setImmediate(resolve));
  await putEntry(store, key(1), meta(10), Buffer.alloc(10, 'n'));
  await reopened;
  t.deepEqual(store.stats(), { entries: 1, bytes: 10 + ENTRY_OVERHEAD_BYTES }, 'the old version is not counted beside the new');
  t.is(await store.purgeTag('old'), 0, 'no tag row of the old version');
  t.deepEqual(await readBody(store, key(1)), Buffer.alloc(10, 'n'));
  await store.close();
  t.deepEqual(await rawKeys(dir, 'o1/b/'), [], 'no chunk of the old version');
  t.is((await rawKeys(dir, 'o1/f/')).length, 1, 'the new version\'s body row');
  t.is((await rawKeys(dir, 'o1/a/')).length, 1);
});
