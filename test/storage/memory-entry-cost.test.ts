/**
 * What a memory-tier entry really costs (issue 13): its body, and under 1 KiB for everything
 * around it; and the tier's budget charges at least that, so `memorySize` bounds real memory.
 * Measured on the live heap after collections, over 20,000 entries built as the pipeline builds them.
 */
import test from 'ava';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { makeResponseRecord } from '../../pipeline/stored-response.js';
import type { EntryMeta } from '../../storage/cache-store.js';
import { entryKey } from '../../storage/keys.js';
import { MemoryStore } from '../../storage/memory-store.js';

setFlagsFromString('--expose-gc');
const collect = runInNewContext('gc') as () => void;

async function liveBytes(): Promise<number> {
  for (let i = 0; i < 3; i++) {
    collect();
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  const usage = process.memoryUsage();
  return usage.heapUsed + usage.arrayBuffers;
}

const ENTRIES = 20_000;
const BODY = 1024;

/** A header value as a parser delivers it: one flat string (a template literal would be a tree of parts). */
const parsed = (text: string): string => Buffer.from(text, 'latin1').toString('latin1');

/** A response as an origin sends it: its own Date second, validators, a body read with its headers. */
function storedResponse(i: number): { key: string; meta: EntryMeta; body: Buffer } {
  const now = Date.now();
  const date = new Date(now - (i % 5) * 1000).toUTCString();
  const record = makeResponseRecord({
    status: 200,
    headers: {
      'content-type': 'text/html; charset=utf-8',
      'cache-control': 'public, max-age=3600',
      date: parsed(date),
      'last-modified': parsed(new Date(now - 86_400_000).toUTCString()),
      etag: parsed(`"${(i * 2654435761).toString(16)}-${i}"`),
      server: 'origin/1.0',
    },
    freshness: { lifetimeSec: 3600, initialAgeSec: 0, staleAt: now + 3_600_000, swrUntil: now + 3_600_000, sieUntil: now + 3_600_000, graceUntil: now + 3_600_000, deleteAt: now + 7_200_000, noStale: false },
    vary: [],
    stripSurrogate: true,
    via: `1.1 outpost-edge`,
  });
  // A body as a socket delivers it: a view into a read that also held the response's headers.
  const read = Buffer.alloc(300 + BODY, i & 0xff);
  return {
    key: entryKey(`https://www.example.test/articles/${i}/index.html?page=${i % 7}`, ''),
    meta: { size: BODY, tags: [], storedAt: now, staleAt: now + 3_600_000, graceUntil: now + 3_600_000, deleteAt: now + 7_200_000, http: record as unknown as Record<string, unknown> },
    body: read.subarray(300),
  };
}

test('a 1 KiB entry costs under 1 KiB beyond its body, and the memory tier charges at least what it costs', async (t) => {
  const store = new MemoryStore({ maxBytes: 1024 ** 3, maxEntryBytes: 64 * 1024 });
  t.teardown(() => store.close());
  const before = await liveBytes();
  for (let i = 0; i < ENTRIES; i++) {
    const { key, meta, body } = storedResponse(i);
    t.true(store.insert(key, meta, body));
  }
  const after = await liveBytes();
  const perEntry = (after - before) / ENTRIES;
  const charged = store.stats().bytes / ENTRIES;
  t.log(`live bytes per entry: ${perEntry.toFixed(0)} (body ${BODY}); charged per entry: ${charged.toFixed(0)}`);
  t.true(perEntry - BODY < 1024, `overhead beyond the body: ${(perEntry - BODY).toFixed(0)} bytes`);
  t.true(charged >= perEntry * 0.9, `the budget charges ${charged.toFixed(0)} for ${perEntry.toFixed(0)} bytes`);
  t.is(store.stats().entries, ENTRIES);
});
