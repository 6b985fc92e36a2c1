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
  const cost = entryCost(entryKey('https://example.test/a', ''), meta(1024, { tags: ['a'] }), bodyOf(1024));
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
