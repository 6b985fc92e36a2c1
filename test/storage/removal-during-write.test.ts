/**
 * A hard purge or delete that runs while an entry is being written wins: the commit is refused,
 * so a fill begun before a purge cannot bring the purged content back. Soft purges and removals
 * of other keys do not refuse it. And a disk read overtaken by a purge is not promoted to memory.
 */
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { CacheStore, EntryMeta } from '../../storage/cache-store.js';
import { entryKey } from '../../storage/keys.js';
import { LevelStore } from '../../storage/level-store.js';
import { MemoryStore } from '../../storage/memory-store.js';
import { TieredStore, openTieredStore } from '../../storage/tiered-store.js';
import { DelayedCommitStore } from '../helpers/delayed-commit-store.js';

function meta(size: number, tags: string[] = []): EntryMeta {
  const now = Date.now();
  return { size, tags, storedAt: now, staleAt: now + 60_000, graceUntil: now + 60_000, deleteAt: now + 120_000, http: { v: 1 } };
}

const url = 'https://example.test/doc';
const key = entryKey(url, '');

async function stores(t: import('ava').ExecutionContext): Promise<Array<[string, CacheStore]>> {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-removal-'));
  const tiered = await openTieredStore({ dataDir: dir, memoryBytes: 1 << 24, diskBytes: 1 << 26 });
  t.teardown(async () => {
    await tiered.close();
    rmSync(dir, { recursive: true, force: true });
  });
  return [
    ['memory', new MemoryStore({ maxBytes: 1 << 24 })],
    ['tiered', tiered],
  ];
}

const removals: Array<[string, (store: CacheStore) => Promise<unknown>]> = [
  ['purgeUrl', (s) => s.purgeUrl(url)],
  ['purgePrefix', (s) => s.purgePrefix('https://example.test/')],
  ['purgeTag', (s) => s.purgeTag('doc-tag')],
  ['delete', (s) => s.delete(key)],
];

for (const [name, remove] of removals) {
  test(`a ${name} during a write refuses its commit`, async (t) => {
    for (const [storeName, store] of await stores(t)) {
      const writer = store.openWriter(key, meta(5, ['doc-tag']));
      await writer.write(Buffer.from('stale'));
      await remove(store);
      await t.throwsAsync(writer.commit(), { code: 'REMOVED_DURING_WRITE' } as never, storeName);
      t.is(await store.get(key), undefined, storeName);
    }
  });
}

test('soft purges and removals of other keys do not refuse a write', async (t) => {
  for (const [storeName, store] of await stores(t)) {
    const writer = store.openWriter(key, meta(5, ['doc-tag']));
    await writer.write(Buffer.from('fresh'));
    await store.purgeUrl(url, { soft: true });
    await store.purgeTag('other-tag');
    await store.delete(entryKey('https://example.test/other', ''));
    await store.purgeUrl('https://example.test/doc2');
    await writer.commit();
    t.truthy(await store.get(key), storeName);
  }
});

test('a disk read overtaken by a soft purge is not promoted to memory with its pre-purge freshness', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-promote-'));
  const level = await LevelStore.open({ location: dir, maxBytes: 1 << 26 });
  // The real disk store, with reads slowed so a purge can land while one is in flight.
  const slowDisk: CacheStore = Object.assign(Object.create(level) as CacheStore, {
    get: (k: string) => {
      const read = level.get(k);
      return new Promise((resolve) => setTimeout(() => resolve(read), 50));
    },
  });
  const memory = new MemoryStore({ maxBytes: 1 << 24 });
  const store = new TieredStore({ memory, disk: slowDisk });
  t.teardown(async () => {
    await level.close();
    rmSync(dir, { recursive: true, force: true });
  });
  const writer = level.openWriter(key, meta(3));
  await writer.write(Buffer.from('abc'));
  await writer.commit();
  const read = store.get(key) as Promise<unknown>;
  await store.purgeUrl(url, { soft: true });
  await read;
  await store.promotionsIdle();
  const inMemory = memory.get(key);
  t.true(inMemory === undefined || inMemory.meta.staleAt <= Date.now(), 'memory never holds the pre-purge freshness');
});

for (const [name, remove] of removals) {
  test(`a ${name} that lands while a commit is writing to disk removes what it wrote before the ${name} returns`, async (t) => {
    const dir = mkdtempSync(join(tmpdir(), 'outpost-landing-'));
    const level = await LevelStore.open({ location: dir, maxBytes: 1 << 26 });
    // The real disk tier, its commits slowed so the removal arrives while one is landing.
    const store = new TieredStore({ memory: new MemoryStore({ maxBytes: 1 << 24 }), disk: new DelayedCommitStore(level, 100) });
    t.teardown(async () => {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    });
    const writer = store.openWriter(key, meta(5, ['doc-tag']));
    await writer.write(Buffer.from('stale'));
    const commit = writer.commit().then(
      () => 'committed',
      (error: { code?: string }) => error.code,
    );
    await new Promise((resolve) => setTimeout(resolve, 20));
    await remove(store);
    t.is(await store.get(key), undefined, `nothing is found once the ${name} returns`);
    t.true(['committed', 'REMOVED_DURING_WRITE'].includes((await commit) ?? ''));
    t.is(await store.get(key), undefined);
    t.is(await level.get(key), undefined, 'nor on disk');
  });
}
