import test, { type ExecutionContext } from 'ava';
import { crc32 } from 'node:zlib';
import { putEntry, StoreError, UNKNOWN_SIZE, type CachedEntry, type EntryMeta } from '../../storage/cache-store.js';
import { entryKey } from '../../storage/keys.js';
import { ENTRY_OVERHEAD_BYTES, LevelStore, TOUCH_INTERVAL_MS, type LevelStoreOptions } from '../../storage/level-store.js';
import { tempDir } from '../helpers/temp-dir.js';
import { rawKeys, withRaw } from './raw-level.js';

const FAR = 10 ** 13;

async function open(t: ExecutionContext, dir: string, options: Partial<LevelStoreOptions> = {}): Promise<LevelStore> {
  const store = await LevelStore.open({ location: dir, maxBytes: 1 << 30, ...options });
  t.teardown(() => store.close());
  return store;
}

function meta(size: number, extra: Partial<EntryMeta> = {}): EntryMeta {
  return { size, tags: [], storedAt: 1, staleAt: FAR, graceUntil: FAR, deleteAt: FAR, http: { status: 200 }, ...extra };
}

/** Deterministic, non-repeating-per-chunk bytes. */
function body(size: number, seed = 1): Buffer {
  const out = Buffer.allocUnsafe(size);
  let x = seed * 2654435761;
  for (let i = 0; i < size; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

async function read(entry: CachedEntry | undefined, range?: { start: number; end: number }): Promise<Buffer> {
  if (!entry) throw new Error('entry missing');
  const parts: Buffer[] = [];
  for await (const part of entry.openBody(range)) parts.push(part as Buffer);
  return Buffer.concat(parts);
}

test('round-trips 0 B, 1 KiB and 5 MiB bodies byte-exact, across a reopen', async (t) => {
  const dir = tempDir(t);
  const bodies = new Map([
    ['empty', body(0)],
    ['small', body(1024, 2)],
    ['large', body(5 * 1024 * 1024, 3)],
  ]);
  let store = await LevelStore.open({ location: dir, maxBytes: 1 << 30 });
  for (const [key, bytes] of bodies) {
    // Odd-sized pieces so chunk boundaries never line up with writes.
    const pieces = [];
    for (let at = 0; at < bytes.length; at += 100_003) pieces.push(bytes.subarray(at, at + 100_003));
    await putEntry(store, key, meta(bytes.length, { tags: [key], http: { status: 200, h: ['a'] } }), pieces);
  }
  await putEntry(store, 'forever', meta(3, { deleteAt: Infinity, graceUntil: Infinity }), Buffer.from('abc'));
  const expectedBytes = 1024 + 5 * 1024 * 1024 + 3 + 4 * ENTRY_OVERHEAD_BYTES;
  t.deepEqual(store.stats(), { entries: 4, bytes: expectedBytes });
  for (const round of ['before reopen', 'after reopen']) {
    for (const [key, bytes] of bodies) {
      const entry = await store.get(key);
      t.is(entry?.key, key, round);
      // A one-chunk body comes with its meta, in the same read; a longer one is streamed.
      t.is(entry?.body?.equals(bytes), key === 'small' ? true : undefined);
      t.is(entry?.meta.size, bytes.length);
      t.deepEqual(entry?.meta.tags, [key]);
      t.deepEqual(entry?.meta.http, { status: 200, h: ['a'] });
      t.true((await read(entry)).equals(bytes), `${key} ${round}`);
    }
    const forever = await store.get('forever');
    t.is(forever?.meta.deleteAt, Infinity);
    t.is((await read(forever)).toString(), 'abc');
    await store.close();
    store = await LevelStore.open({ location: dir, maxBytes: 1 << 30 });
    t.deepEqual(store.stats(), { entries: 4, bytes: expectedBytes });
  }
  await store.close();
  // 5 MiB in 64 KiB chunks; the 1 KiB and 3 B bodies in their body rows.
  t.is((await rawKeys(dir, 'o1/b/')).length, 80);
  t.is((await rawKeys(dir, 'o1/f/')).length, 2);
});

test('a streamed write is invisible until commit and replaces the old entry atomically', async (t) => {
  const store = await open(t, tempDir(t), { chunkBytes: 1000 });
  const first = body(2500, 1);
  const second = body(4200, 2);
  await putEntry(store, 'k', meta(first.length), first);
  const writer = store.openWriter('k', meta(second.length));
  await writer.write(second.subarray(0, 3000));
  t.true((await read(await store.get('k'))).equals(first), 'old body while the new one is written');
  await writer.write(second.subarray(3000));
  t.is((await store.get('k'))?.meta.size, first.length);
  await writer.commit();
  t.true((await read(await store.get('k'))).equals(second));
  t.deepEqual(store.stats(), { entries: 1, bytes: second.length + ENTRY_OVERHEAD_BYTES });

  const fresh = store.openWriter('new', meta(UNKNOWN_SIZE));
  await fresh.write(Buffer.from('hello'));
  t.is(await store.get('new'), undefined);
  await fresh.commit();
  const entry = await store.get('new');
  t.is(entry?.meta.size, 5, 'UNKNOWN_SIZE records the measured size');
  t.is((await read(entry)).toString(), 'hello');
  await t.throwsAsync(fresh.commit(), { code: 'WRITER_CLOSED' });
});

test('abort, SIZE_MISMATCH and close with an open writer leave nothing behind', async (t) => {
  const dir = tempDir(t);
  const store = await LevelStore.open({ location: dir, maxBytes: 1 << 30, chunkBytes: 1000 });
  const aborted = store.openWriter('aborted', meta(10_000));
  await aborted.write(body(7000));
  aborted.abort();
  aborted.abort();

  const short = store.openWriter('short', meta(5000));
  await short.write(body(4000));
  await t.throwsAsync(short.commit(), { instanceOf: StoreError, code: 'SIZE_MISMATCH' });
  short.abort();
  await t.throwsAsync(putEntry(store, 'long', meta(5000), body(6000)), { code: 'SIZE_MISMATCH' });
  await t.throwsAsync(putEntry(store, 'huge', meta(2 ** 31), Buffer.alloc(0)), { code: 'ENTRY_TOO_LARGE' });

  const unfinished = store.openWriter('unfinished', meta(UNKNOWN_SIZE));
  await unfinished.write(body(3500));
  for (const key of ['aborted', 'short', 'long', 'huge', 'unfinished']) t.is(await store.get(key), undefined, key);
  t.deepEqual(store.stats(), { entries: 0, bytes: 0 });
  await store.close();
  await t.throwsAsync(unfinished.commit(), { code: 'WRITER_CLOSED' });
  for (const prefix of ['o1/b/', 'o1/p/', 'o1/m/', 'o1/a/']) t.deepEqual(await rawKeys(dir, prefix), [], prefix);
});

test('range reads return exactly the inclusive byte range', async (t) => {
  const store = await open(t, tempDir(t), { chunkBytes: 1000 });
  const bytes = body(4500);
  await putEntry(store, 'k', meta(bytes.length), bytes);
  const entry = await store.get('k');
  const ranges: Array<[number, number]> = [
    [0, 0],
    [0, 999],
    [999, 1000],
    [10, 20],
    [1500, 3700],
    [4499, 4499],
    [0, 4499],
    [4000, 9999],
  ];
  for (const [start, end] of ranges) {
    t.true((await read(entry, { start, end })).equals(bytes.subarray(start, end + 1)), `${start}-${end}`);
  }
  t.is((await read(entry, { start: 5000, end: 6000 })).length, 0);
});

test('purgeUrl, purgePrefix and purgeTag, hard and soft', async (t) => {
  let clock = 5_000_000;
  const store = await open(t, tempDir(t), { now: () => clock });
  const urls = ['https://a.test/x', 'https://a.test/x?q=1', 'https://a.test/xy', 'https://b.test/x'];
  const put = async (key: string, tags: string[]) => putEntry(store, key, meta(3, { tags }), Buffer.from('abc'));
  for (const url of urls) {
    await put(entryKey(url, ''), ['all', url.includes('a.test') ? 'a' : 'b']);
    await put(entryKey(url, 'gzip'), ['all', 'ab']);
  }
  t.is(store.stats().entries, 8);

  t.is(await store.purgeUrl('https://a.test/x', { soft: true }), 2);
  const soft = await store.get(entryKey('https://a.test/x', 'gzip'));
  t.is(soft?.meta.staleAt, clock, 'soft purge marks stale');
  t.is((await store.get(entryKey('https://a.test/x?q=1', '')))?.meta.staleAt, FAR);
  t.is(store.stats().entries, 8);

  t.is(await store.purgeUrl('https://a.test/x'), 2);
  t.is(await store.get(entryKey('https://a.test/x', '')), undefined);
  t.truthy(await store.get(entryKey('https://a.test/x?q=1', '')));

  t.is(await store.purgeTag('a'), 2, 'tag "a" is not a prefix match of tag "ab"');
  t.truthy(await store.get(entryKey('https://a.test/xy', 'gzip')));

  clock += 1000;
  t.is(await store.purgeTag('ab', { soft: true }), 3);
  t.is((await store.get(entryKey('https://b.test/x', 'gzip')))?.meta.staleAt, clock);
  t.is((await store.get(entryKey('https://b.test/x', '')))?.meta.staleAt, FAR);

  t.is(await store.purgePrefix('https://a.test/'), 2);
  t.is(await store.purgePrefix('https://a.test/'), 0);
  t.is(await store.purgeTag('all'), 2);
  t.deepEqual(store.stats(), { entries: 0, bytes: 0 });

  await put('d', []);
  t.true(await store.delete('d'));
  t.false(await store.delete('d'));
  t.false(await store.updateMeta('d', meta(3)));
});

test('updateMeta replaces metadata and tag index in place, keeping the body', async (t) => {
  const store = await open(t, tempDir(t));
  await putEntry(store, 'k', meta(3, { tags: ['old'] }), Buffer.from('abc'));
  t.true(await store.updateMeta('k', meta(999, { tags: ['new'], staleAt: 77, http: { status: 304 } })));
  const entry = await store.get('k');
  t.is(entry?.meta.size, 3);
  t.is(entry?.meta.staleAt, 77);
  t.deepEqual(entry?.meta.http, { status: 304 });
  t.is((await read(entry)).toString(), 'abc');
  t.is(await store.purgeTag('old'), 0);
  t.is(await store.purgeTag('new'), 1);
});

test('keeps bytes under maxBytes by evicting the least recently used entry', async (t) => {
  let clock = 1_000_000;
  const cost = 10_000 + ENTRY_OVERHEAD_BYTES;
  const store = await open(t, tempDir(t), { maxBytes: 3 * cost, chunkBytes: 4096, now: () => clock });
  // One touch interval between writes, so the hit on a below is due.
  for (const key of ['a', 'b', 'c']) {
    await putEntry(store, key, meta(10_000), body(10_000, key.charCodeAt(0)));
    clock += TOUCH_INTERVAL_MS;
  }
  t.deepEqual(store.stats(), { entries: 3, bytes: 3 * cost });
  t.truthy(await store.get('a')); // touches a: b is now least recently used
  clock += 10_000;
  await putEntry(store, 'd', meta(10_000), body(10_000, 4));
  t.is(await store.get('b'), undefined);
  t.is(store.counters.evicted, 1);
  t.deepEqual(store.stats(), { entries: 3, bytes: 3 * cost });

  // Order now c, a, d. Touch a, then d; a second hit on a within the touch interval does not
  // move it again, so a stays older than d.
  clock += 2 * TOUCH_INTERVAL_MS;
  t.truthy(await store.get('a'));
  clock += 1000;
  t.truthy(await store.get('d'));
  clock += 1000;
  t.truthy(await store.get('a'));
  clock += 1000;
  await putEntry(store, 'e', meta(10_000), body(10_000, 5));
  t.is(await store.get('c'), undefined);
  await putEntry(store, 'f', meta(10_000), body(10_000, 6));
  t.is(await store.get('a'), undefined);
  t.is(store.counters.evicted, 3);
  for (const [key, seed] of [['d', 4], ['e', 5], ['f', 6]] as const) {
    t.true((await read(await store.get(key))).equals(body(10_000, seed)), key);
  }
  t.deepEqual(store.stats(), { entries: 3, bytes: 3 * cost });
});

test('expired entries are absent and swept in the background', async (t) => {
  let clock = 1_000_000;
  const dir = tempDir(t);
  const store = await open(t, dir, { now: () => clock, sweepIntervalMs: 20, chunkBytes: 1000 });
  await putEntry(store, 'soon', meta(3000, { deleteAt: clock + 100.5 }), body(3000));
  await putEntry(store, 'later', meta(3, { deleteAt: clock + 10_000 }), Buffer.from('abc'));
  clock += 100;
  await store.sweepExpired();
  t.is(store.counters.expired, 0, 'not yet: deleteAt is half a millisecond away');
  t.truthy(await store.get('soon'));
  clock += 1;
  t.is(await store.get('soon'), undefined, 'past deleteAt reads as absent');
  for (let waited = 0; store.counters.expired === 0 && waited < 2000; waited += 10) {
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  t.is(store.counters.expired, 1, 'the timer swept it');
  t.deepEqual(store.stats(), { entries: 1, bytes: 3 + ENTRY_OVERHEAD_BYTES });
  t.truthy(await store.get('later'));
  clock += 10_000;
  await store.sweepExpired();
  t.is(store.counters.expired, 2, 'swept by the timer or by this call');
  t.deepEqual(store.stats(), { entries: 0, bytes: 0 });
  await store.close();
  for (const prefix of ['o1/b/', 'o1/m/', 'o1/x/', 'o1/a/']) t.deepEqual(await rawKeys(dir, prefix), [], prefix);
});

test('corrupt chunks, missing chunks and corrupt meta are never served and are counted', async (t) => {
  const dir = tempDir(t);
  const bytes = body(5000);
  let store = await LevelStore.open({ location: dir, maxBytes: 1 << 30, chunkBytes: 1000 });
  for (const key of ['flip-chunk', 'flip-last', 'lose-chunk', 'swap-chunks', 'forge-chunk', 'flip-meta', 'good']) {
    await putEntry(store, key, meta(bytes.length), bytes);
  }
  await store.close();

  await withRaw(dir, async (db) => {
    const gen = async (key: string) => (await db.get(Buffer.from(`o1/m/${key}`)))!.subarray(4, 20);
    const chunk = async (key: string, index: number) => {
      const k = Buffer.alloc(4);
      k.writeUInt32BE(index);
      return Buffer.concat([Buffer.from('o1/b/'), await gen(key), k]);
    };
    const flip = async (key: Buffer, at: number) => {
      const value = Buffer.from((await db.get(key))!);
      value[at]! ^= 0x40;
      await db.put(key, value);
    };
    await flip(await chunk('flip-chunk', 2), 500);
    await flip(await chunk('flip-last', 4), 4 + 999);
    await db.del(await chunk('lose-chunk', 3));
    // Intact chunks in each other's place: each chunk's checksum covers its key.
    const [one, two] = [await chunk('swap-chunks', 1), await chunk('swap-chunks', 2)];
    const [oneValue, twoValue] = [(await db.get(one))!, (await db.get(two))!];
    await db.batch([
      { type: 'put', key: one, value: twoValue },
      { type: 'put', key: two, value: oneValue },
    ]);
    // Other bytes under a valid chunk checksum: only the whole-body checksum notices.
    const forged = await chunk('forge-chunk', 1);
    const data = Buffer.alloc(1000, 7);
    const crc = Buffer.alloc(4);
    crc.writeUInt32BE(crc32(data, crc32(forged)));
    await db.put(forged, Buffer.concat([crc, data]));
    await flip(Buffer.from('o1/m/flip-meta'), 30);
  });

  store = await LevelStore.open({ location: dir, maxBytes: 1 << 30, chunkBytes: 1000 });
  t.teardown(() => store.close());
  t.is(store.counters.corruptDropped, 1, 'the bad meta is dropped while counting on open');
  t.is(await store.get('flip-meta'), undefined);
  t.is(store.stats().entries, 6);

  for (const [key, goodChunks] of [
    ['flip-chunk', 2],
    ['flip-last', 4],
    ['lose-chunk', 3],
    ['swap-chunks', 1],
    ['forge-chunk', 4], // the forged chunk passes its own check; the last chunk is withheld
  ] as const) {
    const entry = await store.get(key);
    t.truthy(entry, `${key}: meta is fine, the body is checked while streaming`);
    const received: Buffer[] = [];
    const stream = entry!.openBody();
    const error = await t.throwsAsync(async () => {
      for await (const part of stream) received.push(part as Buffer);
    });
    t.is((error as StoreError).code, 'CORRUPT_ENTRY', key);
    const expected = Buffer.from(bytes.subarray(0, goodChunks * 1000));
    if (key === 'forge-chunk') expected.fill(7, 1000, 2000);
    t.true(Buffer.concat(received).equals(expected), `${key}: nothing past the bad chunk`);
    t.is(await store.get(key), undefined, `${key} is dropped`);
  }
  t.is(store.counters.corruptDropped, 6);
  t.deepEqual(store.stats(), { entries: 1, bytes: bytes.length + ENTRY_OVERHEAD_BYTES });
  t.true((await read(await store.get('good'))).equals(bytes));
  // Meta going bad while the store runs: get() misses, and its chunks and bytes go too.
  const goodMeta = Buffer.from((await store.db.get(Buffer.from('o1/m/good')))!);
  goodMeta[40]! ^= 1;
  await store.db.put(Buffer.from('o1/m/good'), goodMeta);
  t.is(await store.get('good'), undefined);
  t.is(store.counters.corruptDropped, 7);
  t.deepEqual(store.stats(), { entries: 0, bytes: 0 });
  // A range that avoids the bad chunk of an entry is still served; one that needs it is not.
  await putEntry(store, 'ranged', meta(bytes.length), bytes);
  await store.close();
  await withRaw(dir, async (db) => {
    const gen = (await db.get(Buffer.from('o1/m/ranged')))!.subarray(4, 20);
    await db.put(Buffer.concat([Buffer.from('o1/b/'), gen, Buffer.from([0, 0, 0, 4])]), Buffer.from('junk'));
  });
  store = await LevelStore.open({ location: dir, maxBytes: 1 << 30, chunkBytes: 1000 });
  const ranged = await store.get('ranged');
  t.true((await read(ranged, { start: 100, end: 3999 })).equals(bytes.subarray(100, 4000)));
  await t.throwsAsync(read(ranged, { start: 3000, end: 4200 }), { code: 'CORRUPT_ENTRY' });
  t.is(await store.get('ranged'), undefined);
  await store.close();
  // The flipped metas still named their generation, so their chunks went too.
  t.deepEqual(await rawKeys(dir, 'o1/b/'), [], 'no chunks left behind');
});

test('a one-chunk body is read with its meta and checked: a bad, missing or other generation\'s body row is never served, and the entry is dropped', async (t) => {
  const dir = tempDir(t);
  const small = body(700);
  let store = await LevelStore.open({ location: dir, maxBytes: 1 << 30, chunkBytes: 1000 });
  for (const key of ['small-flipped', 'small-lost', 'small-swapped', 'small-good']) await putEntry(store, key, meta(small.length), small);
  await store.close();
  await withRaw(dir, async (db) => {
    const row = (key: string) => Buffer.from(`o1/f/${key}`);
    const value = Buffer.from((await db.get(row('small-flipped')))!);
    value[100]! ^= 1;
    await db.put(row('small-flipped'), value);
    await db.del(row('small-lost'));
    // The same bytes with a valid checksum, but of another entry's generation.
    await db.put(row('small-swapped'), (await db.get(row('small-good')))!);
  });
  store = await LevelStore.open({ location: dir, maxBytes: 1 << 30, chunkBytes: 1000 });
  t.teardown(() => store.close());
  const good = await store.get('small-good');
  t.true(good?.body?.equals(small), 'the body comes with the meta');
  t.true((await read(good, { start: 10, end: 19 })).equals(small.subarray(10, 20)));
  for (const key of ['small-flipped', 'small-lost', 'small-swapped']) t.is(await store.get(key), undefined, `${key} is a miss`);
  t.is(store.counters.corruptDropped, 3);
  t.deepEqual(store.stats(), { entries: 1, bytes: small.length + ENTRY_OVERHEAD_BYTES }, 'dropped, and counted out');
  await store.close();
  t.deepEqual((await rawKeys(dir, 'o1/m/')).map(String), ['o1/m/small-good']);
  t.deepEqual((await rawKeys(dir, 'o1/f/')).map(String), ['o1/f/small-good'], 'no body row left of the dropped');
});

test('a range read inside one chunk of a longer body is checked as a streamed one: a bad or missing chunk is never served', async (t) => {
  const dir = tempDir(t);
  const large = body(5000);
  let store = await LevelStore.open({ location: dir, maxBytes: 1 << 30, chunkBytes: 1000 });
  for (const key of ['large-lost', 'large-flipped']) await putEntry(store, key, meta(large.length), large);
  await store.close();
  await withRaw(dir, async (db) => {
    const chunk = async (key: string, index: number) => {
      const at = Buffer.alloc(4);
      at.writeUInt32BE(index);
      return Buffer.concat([Buffer.from('o1/b/'), (await db.get(Buffer.from(`o1/m/${key}`)))!.subarray(4, 20), at]);
    };
    const flipped = await chunk('large-flipped', 3);
    const value = Buffer.from((await db.get(flipped))!);
    value[100]! ^= 1;
    await db.put(flipped, value);
    await db.del(await chunk('large-lost', 2));
  });
  store = await LevelStore.open({ location: dir, maxBytes: 1 << 30, chunkBytes: 1000 });
  t.teardown(() => store.close());
  for (const [key, index] of [['large-lost', 2], ['large-flipped', 3]] as const) {
    const entry = await store.get(key);
    t.is(entry?.body, undefined, 'a longer body is streamed');
    t.true((await read(entry, { start: 1000, end: 1999 })).equals(large.subarray(1000, 2000)), 'a range in an intact chunk is served');
    await t.throwsAsync(read(entry, { start: index * 1000 + 100, end: index * 1000 + 200 }), { code: 'CORRUPT_ENTRY' }, 'a range in the bad chunk is not');
    t.is(await store.get(key), undefined);
  }
  t.is(store.counters.corruptDropped, 2);
});

test('a folder held by another handle rejects with STORE_LOCKED naming the folder', async (t) => {
  const dir = tempDir(t);
  await open(t, dir);
  const error = await t.throwsAsync(LevelStore.open({ location: dir, maxBytes: 1000 }));
  t.true(error instanceof StoreError);
  t.is((error as StoreError).code, 'STORE_LOCKED');
  t.true(error!.message.includes(dir));
});

test('keys and tags of any UTF-16 content: NUL, lone surrogates, emoji, long and empty', async (t) => {
  const dir = tempDir(t);
  let store = await LevelStore.open({ location: dir, maxBytes: 1 << 30 });
  const keys = [
    '',
    'a',
    'a\u0000',
    'a\u0000b',
    '\uD800', // a lone surrogate: must not collide with U+FFFD as UTF-8 encoding would
    '\uFFFD',
    entryKey('https://e.test/\uD83D\uDE00', ''),
    entryKey('https://e.test/\uD83D', 'v'),
    entryKey('https://e.test/\u0000\u0001', 'br'),
    'x'.repeat(20_000) + '\u00e9',
  ];
  const tags = ['t\u0000u', 't', '\uD83D', '\uD83D\uDE00', ''];
  for (const [i, key] of keys.entries()) {
    await putEntry(store, key, meta(8, { tags: [tags[i % tags.length]!] }), Buffer.from(`body-${i}`.padEnd(8, '.')));
  }
  t.is(store.stats().entries, keys.length);
  await store.close();
  store = await LevelStore.open({ location: dir, maxBytes: 1 << 30 });
  t.teardown(() => store.close());
  for (const [i, key] of keys.entries()) {
    const entry = await store.get(key);
    t.is(entry?.key, key);
    t.is((await read(entry)).toString(), `body-${i}`.padEnd(8, '.'));
  }
  t.is(store.counters.corruptDropped, 0);
  // '\uD83D' (half of the emoji) is a string prefix of the emoji URL, so both match.
  t.is(await store.purgePrefix('https://e.test/\uD83D'), 2);
  t.is(await store.purgeUrl('https://e.test/\u0000\u0001'), 1);
  t.is(await store.purgeTag('t'), 1, 'tag "t" does not match tag "t\\0u"');
  t.is(await store.get('a'), undefined);
  t.truthy(await store.get(''));
  t.is(await store.purgeTag('\uD83D'), 1, 'half an emoji is not the emoji tag');
  t.is(await store.get('a\u0000'), undefined);
  t.truthy(await store.get('a\u0000b'));
  t.true(await store.delete('\uD800'));
  t.truthy(await store.get('\uFFFD'));
  t.true(await store.delete('x'.repeat(20_000) + '\u00e9'));
  t.is(store.stats().entries, 3);
});

test('failing disk writes reject commits with STORE_WRITE_FAILED while existing entries keep serving', async (t) => {
  const dir = tempDir(t);
  const store = await open(t, dir, { chunkBytes: 1000 });
  await putEntry(store, 'kept', meta(2500), body(2500));
  // chmod cannot make this folder read-only for root (tests run as root) and LevelDB appends to
  // an already open log file anyway; so the handle's write methods are made to fail the way a
  // full or read-only disk does (LevelDB reports an IO error), while reads keep working.
  const db = store.db;
  const real = { put: db.put, batch: db.batch, del: db.del };
  const ioError = () =>
    Promise.reject(Object.assign(new Error('IO error: No space left on device'), { code: 'LEVEL_IO_ERROR' }));
  Object.assign(db, { put: ioError, batch: ioError, del: ioError });
  t.teardown(() => Object.assign(db, real));

  await t.throwsAsync(putEntry(store, 'new', meta(2500), body(2500, 2)), {
    instanceOf: StoreError,
    code: 'STORE_WRITE_FAILED',
  });
  await t.throwsAsync(putEntry(store, 'kept', meta(3), Buffer.from('abc')), { code: 'STORE_WRITE_FAILED' });
  await t.throwsAsync(store.purgePrefix('ke'), { code: 'STORE_WRITE_FAILED' });
  t.true(store.counters.writeErrors >= 3);
  t.true((await read(await store.get('kept'))).equals(body(2500)));
  t.deepEqual(store.stats(), { entries: 1, bytes: 2500 + ENTRY_OVERHEAD_BYTES });

  // Commit's own batch failing (the chunks were written): still a clean rejection.
  Object.assign(db, { put: real.put, del: real.del });
  const before = store.counters.writeErrors;
  await t.throwsAsync(putEntry(store, 'new', meta(2500), body(2500, 2)), { code: 'STORE_WRITE_FAILED' });
  t.is(store.counters.writeErrors, before + 1);
  Object.assign(db, real);
  t.is(await store.get('new'), undefined);
  await putEntry(store, 'new', meta(2500), body(2500, 2));
  t.true((await read(await store.get('new'))).equals(body(2500, 2)));
});

test('a body stream keeps reading its generation when the entry is replaced mid-stream', async (t) => {
  // Chunks larger than the stream's 16 KiB highWaterMark, so it cannot have read ahead.
  const store = await open(t, tempDir(t), { chunkBytes: 20_000 });
  const first = body(100_000, 1);
  await putEntry(store, 'k', meta(first.length), first);
  const stream = (await store.get('k'))!.openBody()[Symbol.asyncIterator]();
  const parts: Buffer[] = [(await stream.next()).value as Buffer];
  await putEntry(store, 'k', meta(300), body(300, 2));
  for (let step = await stream.next(); !step.done; step = await stream.next()) parts.push(step.value as Buffer);
  t.true(Buffer.concat(parts).equals(first), 'the old body, whole, from the snapshot');
  t.true((await read(await store.get('k'))).equals(body(300, 2)));

  // Removed before the stream started: an error, but not corruption. (A one-chunk body was read
  // with its meta and is served whole.)
  const held = await store.get('k');
  await putEntry(store, 'k', meta(first.length), first);
  const entry = await store.get('k');
  t.true(await store.delete('k'));
  await t.throwsAsync(read(entry), { code: 'ENTRY_GONE' });
  t.true((await read(held)).equals(body(300, 2)));
  t.is(store.counters.corruptDropped, 0);
});

test('rows outside the o1/ format are left alone', async (t) => {
  const dir = tempDir(t);
  const foreign = ['o2/m/k', 'o2/b/x', 'o1', 'o0/a/zz', 'zz'].map((key) => Buffer.from(key));
  await withRaw(dir, (db) => db.batch(foreign.map((key) => ({ type: 'put' as const, key, value: Buffer.from('v') }))));
  let clock = 1000;
  const store = await LevelStore.open({ location: dir, maxBytes: 3 * (100 + ENTRY_OVERHEAD_BYTES), now: () => clock });
  for (let i = 0; i < 5; i++) {
    await putEntry(store, `k${i}`, meta(100, { tags: ['t'], deleteAt: clock + 10 }), body(100, i));
    clock += 6000;
  }
  t.is(store.counters.evicted, 2);
  await store.purgePrefix('');
  await store.purgeTag('t');
  await store.sweepExpired();
  t.deepEqual(store.stats(), { entries: 0, bytes: 0 });
  await store.close();
  await withRaw(dir, async (db) => {
    for (const key of foreign) t.deepEqual(await db.get(key), Buffer.from('v'), key.toString());
    t.deepEqual(await db.keys({ gte: Buffer.from('o1/'), lt: Buffer.from('o10') }).all(), []);
  });
});

test('a reopen counts each stored key once: entries, bytes and the presence filter are rebuilt, not added to', async (t) => {
  const store = await open(t, tempDir(t), { expectedEntries: 1024 });
  for (let i = 0; i < 300; i++) await putEntry(store, entryKey(`https://r.test/${i}`, ''), meta(10), body(10, i + 1));
  const before = store.stats();
  const filter = (): { count: number } => (store as unknown as { presence: { count: number } }).presence;
  t.is(filter().count, 300);
  for (let round = 0; round < 3; round++) await store.reopen();
  t.deepEqual(store.stats(), before);
  t.is(filter().count, 300, 'a filter counting every key again per reopen would soon be rebuilt larger for nothing');
  t.truthy(await store.get(entryKey('https://r.test/7', '')));
});
