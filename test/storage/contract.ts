/**
 * The CacheStore contract as one ava suite, run against every store (memory, LevelDB, tiered),
 * so the tiers cannot drift apart. Each test gets a fresh store from `makeStore`.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import test, { type ExecutionContext } from 'ava';
import {
  StoreError,
  UNKNOWN_SIZE,
  putEntry,
  type CacheStore,
  type CachedEntry,
  type EntryMeta,
} from '../../storage/cache-store.js';
import { entryKey } from '../../storage/keys.js';

export interface StoreUnderTest {
  store: CacheStore;
  cleanup(): Promise<void>;
}

export type MakeStore = (t: ExecutionContext) => Promise<StoreUnderTest>;

const HOUR = 3_600_000;

export function meta(size: number, overrides: Partial<EntryMeta> = {}): EntryMeta {
  const now = Date.now();
  return {
    size,
    tags: [],
    storedAt: now,
    staleAt: now + HOUR,
    graceUntil: now + 2 * HOUR,
    deleteAt: now + 3 * HOUR,
    http: { status: 200, headers: { 'content-type': 'application/octet-stream' } },
    ...overrides,
  };
}

/** Deterministic, non-repeating-looking bytes (a repeated byte would hide offset bugs). */
export function bodyOf(size: number, seed = 1): Buffer {
  const body = Buffer.allocUnsafe(size);
  let x = seed * 2654435761 || 1;
  for (let i = 0; i < size; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    body[i] = x & 0xff;
  }
  return body;
}

/** Splits a body into uneven pieces, as a network stream would deliver it. */
export function* piecesOf(body: Buffer, sizes = [1, 7, 4096, 65_536, 65_537, 100_003]): Generator<Buffer> {
  let offset = 0;
  let i = 0;
  while (offset < body.length) {
    const size = sizes[i++ % sizes.length]!;
    yield body.subarray(offset, offset + size);
    offset += size;
  }
}

export async function readAll(stream: NodeJS.ReadableStream): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of stream) chunks.push(Buffer.isBuffer(chunk) ? chunk : Buffer.from(chunk as string));
  return Buffer.concat(chunks);
}

export async function getEntry(store: CacheStore, key: string): Promise<CachedEntry | undefined> {
  return await store.get(key);
}

/** The body through openBody, checked against `body` when the entry holds one. */
export async function bodyOfEntry(t: ExecutionContext, entry: CachedEntry): Promise<Buffer> {
  const streamed = await readAll(entry.openBody());
  if (entry.body !== undefined) t.true(entry.body.equals(streamed), 'entry.body and openBody() agree');
  return streamed;
}

function sameBytes(t: ExecutionContext, actual: Buffer, expected: Buffer, message: string): void {
  // Compare, then report lengths only: printing a 2 MiB diff helps nobody.
  t.is(actual.length, expected.length, `${message}: length`);
  t.true(actual.equals(expected), `${message}: bytes`);
}

export function runStoreContract(name: string, makeStore: MakeStore): void {
  /** Registers a test that gets a fresh store and always cleans it up. */
  const storeTest = (title: string, body: (t: ExecutionContext, store: CacheStore) => Promise<void>): void => {
    test(`${name}: ${title}`, async (t) => {
      const { store, cleanup } = await makeStore(t);
      try {
        await body(t, store);
      } finally {
        await cleanup();
      }
    });
  };

  for (const [label, size] of [
    ['0 B', 0],
    ['1 KiB', 1024],
    ['100 KiB', 100 * 1024],
    ['2 MiB streamed in pieces', 2 * 1024 * 1024],
  ] as const) {
    storeTest(`round trip is byte-exact: ${label}`, async (t, store) => {
      const key = entryKey(`https://example.test/object-${size}`, '');
      const body = bodyOf(size, size + 3);
      const m = meta(size, { tags: ['t1'], http: { status: 200, headers: { etag: '"x"' } } });
      await putEntry(store, key, m, size > 200_000 ? piecesOf(body) : body);
      const entry = await getEntry(store, key);
      if (!entry) return t.fail('entry missing after commit');
      t.is(entry.key, key);
      t.is(entry.meta.size, size);
      t.deepEqual(entry.meta.tags, ['t1']);
      t.deepEqual(entry.meta.http, m.http);
      t.is(entry.meta.staleAt, m.staleAt);
      t.is(entry.meta.deleteAt, m.deleteAt);
      sameBytes(t, await bodyOfEntry(t, entry), body, 'body');
      // A second read gets the same bytes (streams are independent).
      sameBytes(t, await readAll(entry.openBody()), body, 'second read');
    });
  }

  storeTest('get of a missing key is undefined', async (t, store) => {
    t.is(await getEntry(store, entryKey('https://example.test/missing', '')), undefined);
    await putEntry(store, entryKey('https://example.test/present', ''), meta(3), Buffer.from('abc'));
    t.is(await getEntry(store, entryKey('https://example.test/missing', '')), undefined);
    t.is(await getEntry(store, entryKey('https://example.test/present', 'other-variant')), undefined);
  });

  storeTest('a write is invisible before commit; the old version stays visible meanwhile', async (t, store) => {
    const key = entryKey('https://example.test/pending', '');
    const writer = store.openWriter(key, meta(6));
    await writer.write(Buffer.from('abc'));
    t.is(await getEntry(store, key), undefined);
    await writer.write(Buffer.from('def'));
    t.is(await getEntry(store, key), undefined);
    t.is(store.stats().entries, 0);
    await writer.commit();
    const entry = await getEntry(store, key);
    t.is(entry && (await bodyOfEntry(t, entry)).toString(), 'abcdef');

    const replacing = store.openWriter(key, meta(3));
    await replacing.write(Buffer.from('new'));
    const during = await getEntry(store, key);
    t.is(during && (await bodyOfEntry(t, during)).toString(), 'abcdef');
    await replacing.commit();
    const after = await getEntry(store, key);
    t.is(after && (await bodyOfEntry(t, after)).toString(), 'new');
  });

  storeTest('abort leaves nothing, and keeps an earlier version', async (t, store) => {
    const key = entryKey('https://example.test/aborted', '');
    const writer = store.openWriter(key, meta(200_000));
    await writer.write(bodyOf(100_000));
    writer.abort();
    writer.abort(); // idempotent
    t.is(await getEntry(store, key), undefined);
    t.deepEqual(store.stats(), { entries: 0, bytes: 0 });

    await putEntry(store, key, meta(5), Buffer.from('first'));
    const second = store.openWriter(key, meta(6));
    await second.write(Buffer.from('second'));
    second.abort();
    const entry = await getEntry(store, key);
    t.is(entry && (await bodyOfEntry(t, entry)).toString(), 'first');

    // Abort after a successful commit does not undo it.
    const third = store.openWriter(key, meta(5));
    await third.write(Buffer.from('third'));
    await third.commit();
    third.abort();
    const kept = await getEntry(store, key);
    t.is(kept && (await bodyOfEntry(t, kept)).toString(), 'third');
  });

  storeTest('SIZE_MISMATCH rejects short and long bodies and leaves the previous version intact', async (t, store) => {
    const key = entryKey('https://example.test/mismatch', '');
    const previous = bodyOf(5000, 9);
    await putEntry(store, key, meta(previous.length, { tags: ['old'] }), previous);

    for (const [declared, actual] of [
      [10, 9],
      [10, 11],
      [0, 1],
      [100_000, 50_000],
    ] as const) {
      const writer = store.openWriter(key, meta(declared, { tags: ['new'] }));
      let failed: unknown;
      try {
        for (const piece of piecesOf(bodyOf(actual, 2), [4, 4096])) await writer.write(piece);
      } catch (error) {
        failed = error; // a store may reject the excess already at write time
      }
      if (failed === undefined) {
        await t.throwsAsync(writer.commit(), { instanceOf: StoreError, code: 'SIZE_MISMATCH' });
      } else {
        t.is((failed as StoreError).code, 'SIZE_MISMATCH', `declared ${declared}, wrote ${actual}`);
      }
      writer.abort(); // safe after a failed commit
      const entry = await getEntry(store, key);
      if (!entry) return t.fail(`previous version gone after a ${declared}/${actual} mismatch`);
      t.deepEqual(entry.meta.tags, ['old']);
      sameBytes(t, await bodyOfEntry(t, entry), previous, 'previous body');
    }
    t.is(store.stats().entries, 1);
    t.is(await store.purgeTag('new'), 0);
  });

  storeTest('UNKNOWN_SIZE records the measured size', async (t, store) => {
    for (const size of [0, 1, 70_000, 300_000]) {
      const key = entryKey('https://example.test/chunked', String(size));
      const body = bodyOf(size, 5);
      await putEntry(store, key, meta(UNKNOWN_SIZE), piecesOf(body));
      const entry = await getEntry(store, key);
      if (!entry) return t.fail(`missing ${size}`);
      t.is(entry.meta.size, size);
      sameBytes(t, await bodyOfEntry(t, entry), body, `chunked ${size}`);
    }
  });

  storeTest('replacing an entry swaps body, metadata and tags', async (t, store) => {
    const key = entryKey('https://example.test/replaced', 'gzip');
    await putEntry(store, key, meta(40_000, { tags: ['a', 'b'], http: { v: 1 } }), bodyOf(40_000, 1));
    const newer = meta(3, { tags: ['c'], http: { v: 2 } });
    await putEntry(store, key, newer, Buffer.from('xyz'));
    const entry = await getEntry(store, key);
    if (!entry) return t.fail('missing');
    t.deepEqual(entry.meta.http, { v: 2 });
    t.deepEqual(entry.meta.tags, ['c']);
    t.is(entry.meta.size, 3);
    t.is((await bodyOfEntry(t, entry)).toString(), 'xyz');
    t.deepEqual(store.stats().entries, 1);
    // The old tags no longer reach the entry; the new one does.
    t.is(await store.purgeTag('a'), 0);
    t.is(await store.purgeTag('b'), 0);
    t.is(await store.purgeTag('c'), 1);
    t.is(await getEntry(store, key), undefined);
  });

  storeTest('updateMeta replaces metadata in place, keeps the body, and is false on a missing key', async (t, store) => {
    const key = entryKey('https://example.test/revalidated', '');
    const body = bodyOf(10_000, 4);
    const original = meta(body.length, { tags: ['x'] });
    await putEntry(store, key, original, body);
    const later = Date.now() + 10_000;
    const updated: EntryMeta = {
      ...original,
      tags: ['y'],
      storedAt: later,
      staleAt: later + HOUR,
      graceUntil: later + 2 * HOUR,
      deleteAt: later + 3 * HOUR,
      http: { status: 200, revalidated: true },
    };
    t.true(await store.updateMeta(key, updated));
    const entry = await getEntry(store, key);
    if (!entry) return t.fail('missing');
    t.is(entry.meta.staleAt, updated.staleAt);
    t.is(entry.meta.deleteAt, updated.deleteAt);
    t.deepEqual(entry.meta.http, updated.http);
    t.is(entry.meta.size, body.length);
    sameBytes(t, await bodyOfEntry(t, entry), body, 'body after updateMeta');
    t.is(await store.purgeTag('x'), 0, 'old tag unlinked');
    t.is(await store.purgeTag('y', { soft: true }), 1, 'new tag linked');

    t.false(await store.updateMeta(entryKey('https://example.test/never', ''), meta(1)));
    t.is(await getEntry(store, entryKey('https://example.test/never', '')), undefined);
  });

  storeTest('updateMeta with ifStoredAt only updates that version (a 304 must not relabel a newer body)', async (t, store) => {
    const key = entryKey('https://example.test/versioned', '');
    const first = meta(3, { storedAt: Date.now() - 5_000, http: { version: 1 } });
    await putEntry(store, key, first, Buffer.from('one'));
    const second = meta(3, { storedAt: Date.now(), http: { version: 2 } });
    await putEntry(store, key, second, Buffer.from('two'));
    t.false(await store.updateMeta(key, { ...first, http: { version: 1, refreshed: true } }, first.storedAt));
    const entry = await getEntry(store, key);
    if (!entry) return t.fail('missing');
    t.deepEqual(entry.meta.http, { version: 2 });
    t.true(await store.updateMeta(key, { ...second, http: { version: 2, refreshed: true } }, second.storedAt));
    t.deepEqual((await getEntry(store, key))?.meta.http, { version: 2, refreshed: true });
  });

  storeTest('delete removes one entry; false when absent', async (t, store) => {
    const a = entryKey('https://example.test/a', '');
    const b = entryKey('https://example.test/b', '');
    await putEntry(store, a, meta(1), Buffer.from('a'));
    await putEntry(store, b, meta(1), Buffer.from('b'));
    t.true(await store.delete(a));
    t.is(await getEntry(store, a), undefined);
    t.false(await store.delete(a));
    t.not(await getEntry(store, b), undefined);
    t.is(store.stats().entries, 1);
  });

  /** Entries used by the purge tests: URL prefixes of one another on purpose. */
  const purgeFixture = async (store: CacheStore) => {
    const keys = {
      x1: entryKey('https://example.test/x', ''),
      x2: entryKey('https://example.test/x', 'br'),
      x3: entryKey('https://example.test/x', 'gzip'),
      x10: entryKey('https://example.test/x1', ''), // "/x" is a prefix of "/x1"
      xq: entryKey('https://example.test/x?q=1', ''),
      xslash: entryKey('https://example.test/x/y', ''),
      img1: entryKey('https://example.test/img/1.png', ''),
      img2: entryKey('https://example.test/img/2.png', 'webp'),
      other: entryKey('https://other.test/x', ''),
    };
    const tags: Record<keyof typeof keys, string[]> = {
      x1: ['page', 'all'],
      x2: ['page', 'all'],
      x3: ['all'],
      x10: ['all'],
      xq: [],
      xslash: ['all'],
      img1: ['img', 'all'],
      img2: ['img', 'all'],
      other: ['page', 'all'],
    };
    for (const [name, key] of Object.entries(keys)) {
      await putEntry(store, key, meta(name.length, { tags: tags[name as keyof typeof keys] }), Buffer.from(name));
    }
    return keys;
  };

  const present = async (store: CacheStore, keys: Record<string, string>): Promise<string[]> => {
    const names: string[] = [];
    for (const [name, key] of Object.entries(keys)) if ((await getEntry(store, key)) !== undefined) names.push(name);
    return names.sort();
  };

  storeTest('purgeUrl removes every variant of the URL and nothing else', async (t, store) => {
    const keys = await purgeFixture(store);
    t.is(await store.purgeUrl('https://example.test/x'), 3);
    t.deepEqual(await present(store, keys), ['img1', 'img2', 'other', 'x10', 'xq', 'xslash']);
    t.is(await store.purgeUrl('https://example.test/x'), 0);
    t.is(await store.purgeUrl('https://example.test/'), 0, 'a URL is not a prefix');
    t.is(await store.purgeUrl('https://example.test/x?q=1'), 1);
    t.deepEqual(await present(store, keys), ['img1', 'img2', 'other', 'x10', 'xslash']);
    t.is(store.stats().entries, 5);
  });

  storeTest('purgePrefix removes every URL starting with the prefix', async (t, store) => {
    const keys = await purgeFixture(store);
    t.is(await store.purgePrefix('https://example.test/img/'), 2);
    t.deepEqual(await present(store, keys), ['other', 'x1', 'x10', 'x2', 'x3', 'xq', 'xslash']);
    t.is(await store.purgePrefix('https://example.test/x'), 6, 'x (3 variants), x1, x?q, x/y');
    t.deepEqual(await present(store, keys), ['other']);
    t.is(await store.purgePrefix('https://nothing.test/'), 0);
    t.is(store.stats().entries, 1);
  });

  storeTest('purgeTag removes every entry carrying the tag', async (t, store) => {
    const keys = await purgeFixture(store);
    t.is(await store.purgeTag('page'), 3);
    t.deepEqual(await present(store, keys), ['img1', 'img2', 'x10', 'x3', 'xq', 'xslash']);
    t.is(await store.purgeTag('img'), 2);
    t.is(await store.purgeTag('no-such-tag'), 0);
    t.is(await store.purgeTag('all'), 3);
    t.deepEqual(await present(store, keys), ['xq']);
  });

  storeTest('soft purge sets staleAt to now and keeps body and the rest of the metadata', async (t, store) => {
    const keys = await purgeFixture(store);
    const before = await getEntry(store, keys.x1);
    const check = async (names: string[], from: number, to: number) => {
      for (const name of names) {
        const key = keys[name as keyof typeof keys];
        const entry = await getEntry(store, key);
        if (!entry) return t.fail(`${name} deleted by a soft purge`);
        t.true(entry.meta.staleAt >= from && entry.meta.staleAt <= to, `${name} staleAt is the purge time`);
        t.true(entry.meta.graceUntil > to, `${name} graceUntil kept`);
        t.true(entry.meta.deleteAt > to, `${name} deleteAt kept`);
        t.is((await bodyOfEntry(t, entry)).toString(), name);
      }
    };
    let from = Date.now();
    t.is(await store.purgeUrl('https://example.test/x', { soft: true }), 3);
    await check(['x1', 'x2', 'x3'], from, Date.now());
    const x10 = await getEntry(store, keys.x10);
    t.true(x10!.meta.staleAt > Date.now() + HOUR / 2, 'prefix-sharing URL untouched');
    t.deepEqual((await getEntry(store, keys.x1))!.meta.http, before!.meta.http);

    from = Date.now();
    t.is(await store.purgePrefix('https://example.test/img/', { soft: true }), 2);
    await check(['img1', 'img2'], from, Date.now());

    from = Date.now();
    t.is(await store.purgeTag('page', { soft: true }), 3);
    await check(['other'], from, Date.now());
    t.is(store.stats().entries, 9, 'soft purges delete nothing');
    const fresh = await getEntry(store, keys.xslash);
    t.true(fresh!.meta.staleAt > Date.now() + HOUR / 2);
  });

  storeTest('openBody streams an inclusive byte range', async (t, store) => {
    const size = 300_000;
    const body = bodyOf(size, 11);
    const key = entryKey('https://example.test/ranged', '');
    await putEntry(store, key, meta(size), piecesOf(body));
    const entry = await getEntry(store, key);
    if (!entry) return t.fail('missing');
    for (const [start, end] of [
      [0, 0],
      [0, 99],
      [1, 1],
      [65_535, 65_536],
      [1000, 200_000],
      [size - 1, size - 1],
      [size - 500, size - 1],
      [0, size - 1],
    ] as const) {
      sameBytes(t, await readAll(entry.openBody({ start, end })), body.subarray(start, end + 1), `range ${start}-${end}`);
    }
  });

  storeTest('keys and tags may hold NUL, \\u0001, unicode and 10 KB', async (t, store) => {
    const long = 'https://example.test/' + 'l'.repeat(10_000);
    const urls = [
      'https://example.test/nul\u0000byte',
      'https://example.test/nul',
      'https://example.test/one\u0001byte',
      'https://example.test/one\u0001\u0001\u0002',
      'https://example.test/\u00e9t\u00e9/\u{1F600}/\u4e2d\u6587',
      long,
      long + 'x',
    ];
    const variants = ['', 'gzip\u0000br', '\u0001', '\u{1F600}'];
    const tags = ['tag\u0000nul', 'tag\u0001one', '\u{1F600}', 't'.repeat(10_000)];
    let n = 0;
    for (const url of urls) {
      for (const variant of variants) {
        const tag = tags[n % tags.length]!;
        await putEntry(store, entryKey(url, variant), meta(6, { tags: [tag, `n${n}`] }), Buffer.from(`body${n}`.padEnd(6)));
        n++;
      }
    }
    n = 0;
    for (const url of urls) {
      for (const variant of variants) {
        const entry = await getEntry(store, entryKey(url, variant));
        if (!entry) return t.fail(`missing ${JSON.stringify(url.slice(0, 60))} ${JSON.stringify(variant)}`);
        t.is(entry.key, entryKey(url, variant));
        t.is((await bodyOfEntry(t, entry)).toString(), `body${n}`.padEnd(6));
        t.deepEqual(entry.meta.tags, [tags[n % tags.length], `n${n}`]);
        n++;
      }
    }
    t.is(store.stats().entries, urls.length * variants.length);
    // Purging the URL with a NUL does not touch its prefix "…/nul", nor the other way round.
    t.is(await store.purgeUrl('https://example.test/nul'), variants.length);
    t.not(await getEntry(store, entryKey('https://example.test/nul\u0000byte', '')), undefined);
    t.is(await store.purgeUrl('https://example.test/nul\u0000byte'), variants.length);
    t.is(await store.purgeUrl('https://example.test/one\u0001byte'), variants.length);
    t.not(await getEntry(store, entryKey('https://example.test/one\u0001\u0001\u0002', '')), undefined);
    t.is(await store.purgePrefix('https://example.test/one\u0001'), variants.length);
    t.is(await store.purgeUrl(long), variants.length);
    t.not(await getEntry(store, entryKey(long + 'x', '')), undefined);
    t.is(await store.purgePrefix(long), variants.length);
    t.is(await store.purgeTag('\u{1F600}'), 1, 'only the unicode entry left with that tag');
    t.is(await store.purgeTag('tag\u0000nul'), 1);
    t.is(await store.purgeTag('tag\u0001one'), 1);
    t.is(await store.purgeTag('t'.repeat(10_000)), 1);
    t.is(store.stats().entries, 0);
  });

  storeTest('entries past deleteAt are absent', async (t, store) => {
    const now = Date.now();
    const gone = entryKey('https://example.test/expired', '');
    const soon = entryKey('https://example.test/expiring', '');
    const kept = entryKey('https://example.test/kept', '');
    await putEntry(store, gone, meta(4, { staleAt: now - 3000, graceUntil: now - 2000, deleteAt: now - 1000 }), Buffer.from('gone'));
    // Generous margin so a slow machine still sees it before its deleteAt.
    const soonDeleteAt = Date.now() + 800;
    await putEntry(store, soon, meta(4, { deleteAt: soonDeleteAt }), Buffer.from('soon'));
    await putEntry(store, kept, meta(4), Buffer.from('kept'));
    t.is(await getEntry(store, gone), undefined);
    t.not(await getEntry(store, soon), undefined);
    await sleep(soonDeleteAt - Date.now() + 20);
    t.is(await getEntry(store, soon), undefined);
    t.is(await getEntry(store, gone), undefined);
    t.not(await getEntry(store, kept), undefined);
    // A stale entry within its grace period is still served (only deleteAt removes).
    const stale = entryKey('https://example.test/stale', '');
    await putEntry(store, stale, meta(5, { staleAt: Date.now() - 10 }), Buffer.from('stale'));
    t.not(await getEntry(store, stale), undefined);
  });

  storeTest('stats counts entries and bytes', async (t, store) => {
    t.deepEqual(store.stats(), { entries: 0, bytes: 0 });
    const sizes = [0, 1000, 50_000, 200_000];
    for (const [i, size] of sizes.entries()) {
      await putEntry(store, entryKey(`https://example.test/s${i}`, ''), meta(size), bodyOf(size, i + 1));
    }
    const total = sizes.reduce((a, b) => a + b, 0);
    const full = store.stats();
    t.is(full.entries, sizes.length);
    t.true(full.bytes >= total, `bytes ${full.bytes} cover the bodies (${total})`);
    t.true(full.bytes <= total + sizes.length * 16 * 1024, `bytes ${full.bytes} are body bytes plus modest overhead`);

    // Replacing does not add an entry, and bytes follow the new size.
    await putEntry(store, entryKey('https://example.test/s3', ''), meta(10), bodyOf(10));
    const replaced = store.stats();
    t.is(replaced.entries, sizes.length);
    t.true(full.bytes - replaced.bytes >= 200_000 - 10 - 1024, 'bytes shrink with the replacement');

    t.true(await store.delete(entryKey('https://example.test/s2', '')));
    const deleted = store.stats();
    t.is(deleted.entries, sizes.length - 1);
    t.true(replaced.bytes - deleted.bytes >= 50_000, 'bytes shrink on delete');

    await store.purgePrefix('https://example.test/s');
    t.deepEqual(store.stats(), { entries: 0, bytes: 0 });
  });
}
