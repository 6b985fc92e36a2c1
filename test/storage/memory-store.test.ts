import test from 'ava';
import { StoreError, UNKNOWN_SIZE, putEntry } from '../../storage/cache-store.js';
import { entryKey } from '../../storage/keys.js';
import { MemoryStore, entryCost } from '../../storage/memory-store.js';
import { bodyOf, meta, runStoreContract } from './contract.js';

runStoreContract('memory', async () => {
  const store = new MemoryStore({ maxBytes: 64 * 1024 * 1024 });
  return { store, cleanup: () => store.close() };
});

test('memory: evicts the least recently used entry to stay within its byte budget', async (t) => {
  // Every entry here has the same cost: 1 KiB body, a one-letter tag, keys of one length.
  const cost = entryCost(entryKey('https://example.test/a', ''), meta(1024, { tags: ['a'] }), 1024);
  const store = new MemoryStore({ maxBytes: 3 * cost, maxEntryBytes: 2048 });
  t.teardown(() => store.close());
  const key = (name: string) => entryKey(`https://example.test/${name}`, '');
  for (const name of ['a', 'b', 'c']) await putEntry(store, key(name), meta(1024, { tags: [name] }), bodyOf(1024));
  t.is(store.stats().entries, 3);
  t.not(store.get(key('a')), undefined); // a is now more recent than b
  await putEntry(store, key('d'), meta(1024, { tags: ['d'] }), bodyOf(1024));
  t.is(store.get(key('b')), undefined, 'b was least recently used');
  t.not(store.get(key('a')), undefined);
  t.not(store.get(key('c')), undefined);
  t.not(store.get(key('d')), undefined);
  t.true(store.stats().bytes <= 3 * cost);
  t.is(store.stats().entries, 3);
  t.is(store.evictions, 1, 'evictions are counted (purges and deletes are not)');
  await store.purgeTag('c');
  await store.delete(key('d'));
  t.is(store.evictions, 1);
  // The evicted entry is unlinked from the purge indexes too.
  t.is(await store.purgeTag('b'), 0);
  t.is(await store.purgeUrl('https://example.test/b'), 0);
  t.is(await store.purgeTag('a'), 1);
});

test('memory: a body larger than the tier is skipped and counted, not stored', async (t) => {
  const store = new MemoryStore({ maxBytes: 100_000, maxEntryBytes: 10_000 });
  t.teardown(() => store.close());
  const key = entryKey('https://example.test/big', '');

  await t.throwsAsync(putEntry(store, key, meta(20_000), bodyOf(20_000)), { instanceOf: StoreError, code: 'ENTRY_TOO_LARGE' });
  t.is(store.skippedTooLarge, 1);
  // Undeclared size: discovered while streaming.
  await t.throwsAsync(putEntry(store, key, meta(UNKNOWN_SIZE), [bodyOf(6000), bodyOf(6000)]), { code: 'ENTRY_TOO_LARGE' });
  t.is(store.skippedTooLarge, 2);
  t.false(store.insert(key, meta(20_000), bodyOf(20_000)));
  t.is(store.skippedTooLarge, 3);
  t.is(store.get(key), undefined);
  t.deepEqual(store.stats(), { entries: 0, bytes: 0 });

  // A body right at the limit is kept.
  await putEntry(store, key, meta(10_000), bodyOf(10_000));
  t.is(store.get(key)?.body?.length, 10_000);
});

test('memory: a hit is returned synchronously with the whole body', async (t) => {
  const store = new MemoryStore({ maxBytes: 1_000_000 });
  t.teardown(() => store.close());
  const key = entryKey('https://example.test/sync', '');
  await putEntry(store, key, meta(3), Buffer.from('abc'));
  const hit = store.get(key);
  t.false((hit as unknown) instanceof Promise);
  t.is(hit?.body?.toString(), 'abc');
});

test('memory: TinyLFU admission: while full, a new entry goes in only if asked for more often than each entry it would evict; a replacement always does', async (t) => {
  const key = (name: string) => entryKey(`https://example.test/${name}`, '');
  const cost = entryCost(key('a'), meta(1024), 1024);
  const store = new MemoryStore({ maxBytes: 3 * cost, maxEntryBytes: 2048, admission: true });
  t.teardown(() => store.close());
  for (const name of ['a', 'b', 'c']) {
    t.true(store.admits(key(name), meta(1024), 1024), `${name}: fits, admitted`);
    await putEntry(store, key(name), meta(1024), bodyOf(1024));
  }
  // Lookups count: a once, b and c three times (least recently used first: a, b, c); the newcomer d once (names of one length: entries of one cost).
  const ask = (name: string, times: number) => {
    for (let n = 0; n < times; n++) store.get(key(name));
  };
  ask('a', 1);
  ask('b', 3);
  ask('c', 3);
  ask('d', 1);
  t.false(store.admits(key('d'), meta(1024), 1024), 'asked for as often as the least recently used: ties go to what is held');
  t.is(store.admissionsRefused, 1);
  t.true(store.admits(key('a'), meta(1024), 1024), 'a replacement is never refused');
  ask('d', 1);
  t.true(store.admits(key('d'), meta(1024), 1024), 'asked for more often than the one it would evict');
  // e, at twice the size, evicts two, a and b: it must beat both.
  ask('e', 2);
  t.false(store.admits(key('e'), meta(2048), 2048), 'the second entry it would evict is asked for more often');
  t.is(store.admissionsRefused, 2);
  t.deepEqual(store.keys().sort(), [key('a'), key('b'), key('c')].sort(), 'asking evicts nothing');
});

test('memory: without admission every entry goes in (plain LRU)', async (t) => {
  const key = (name: string) => entryKey(`https://example.test/${name}`, '');
  const store = new MemoryStore({ maxBytes: 3 * entryCost(key('a'), meta(1024), 1024), maxEntryBytes: 2048 });
  t.teardown(() => store.close());
  for (const name of ['a', 'b', 'c']) await putEntry(store, key(name), meta(1024), bodyOf(1024));
  for (const name of ['a', 'b', 'c']) store.get(key(name));
  t.true(store.admits(key('d'), meta(1024), 1024));
  t.is(store.admissionsRefused, 0);
});
