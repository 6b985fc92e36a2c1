/**
 * Slicing of large objects (pipeline/slices.ts) and ranges answered from stored content: an edge
 * with 64 KiB slices in front of a real origin that serves byte ranges, and a shield between them.
 * RFC 9110 §14 (ranges), RFC 9111 §3.3/§3.4 (storing and combining partial content).
 */
import test, { type ExecutionContext } from 'ava';
import type { IncomingMessage } from 'node:http';
import { cacheStatus, fetchFrom, header, pattern, setup, settle, startOrigin, delay, type Reply, type TestEdge } from '../helpers/harness.js';
import { loadConfig } from '../../config/config.js';
import { rawGet } from '../helpers/raw-origin.js';
import { rangeHandler, type Version } from '../helpers/range-origin.js';
import { startTestChain } from '../shield/fixtures/chain.js';

const SLICE = 64 * 1024;
/** Six slices, the last one short. */
const SIZE = 5 * SLICE + 1000;

function sliceRange(index: number): string {
  return `bytes=${index * SLICE}-${index * SLICE + SLICE - 1}`;
}

async function slicedEdge(t: ExecutionContext, version: (count: number) => Version, overrides: Record<string, unknown> = {}) {
  return setup(t, rangeHandler(version), { sliceSize: SLICE, ...overrides });
}

/** Origin → shield → edge, both tiers slicing at SLICE, closed when the test ends. */
async function shieldChain(t: ExecutionContext, version: (count: number) => Version) {
  const origin = await startOrigin(rangeHandler(version));
  t.teardown(() => origin.close());
  const { edge } = await startTestChain(t, origin.url, { shield: { sliceSize: SLICE }, edge: { sliceSize: SLICE } });
  return { origin, edge };
}

const ranges = (origin: { requests: Array<{ headers: IncomingMessage['headers'] }> }): Array<string | undefined> => origin.requests.map((r) => r.headers.range);

/** The parts of a multipart/byteranges body (RFC 9110 §14.6). */
function multipartParts(reply: Reply): Array<{ contentRange: string; body: Buffer }> {
  const type = header(reply, 'content-type') ?? '';
  const boundary = /boundary=([^;]+)/.exec(type)?.[1];
  if (boundary === undefined) throw new Error(`not multipart: ${type}`);
  const text = reply.body.toString('latin1');
  const parts: Array<{ contentRange: string; body: Buffer }> = [];
  for (const chunk of text.split(`--${boundary}`).slice(1)) {
    if (chunk.startsWith('--')) break;
    const headEnd = chunk.indexOf('\r\n\r\n');
    const head = chunk.slice(0, headEnd);
    let body = chunk.slice(headEnd + 4);
    if (body.endsWith('\r\n')) body = body.slice(0, -2);
    parts.push({ contentRange: /content-range: ([^\r\n]+)/i.exec(head)?.[1] ?? '', body: Buffer.from(body, 'latin1') });
  }
  return parts;
}

test('slices: a full request for an object larger than sliceSize is fetched slice after slice and stored; the next is a hit', async (t) => {
  const body = pattern(SIZE, 1);
  const { origin, edge } = await slicedEdge(t, () => ({ body, etag: '"v1"' }));
  const first = await fetchFrom(edge.url, '/big');
  t.is(first.status, 200);
  t.is(header(first, 'content-length'), String(SIZE));
  t.is(header(first, 'content-range'), undefined);
  t.true(first.body.equals(body));
  t.deepEqual(ranges(origin), [0, 1, 2, 3, 4, 5].map(sliceRange));
  await settle({ commits: true });
  const second = await fetchFrom(edge.url, '/big');
  t.true(second.body.equals(body));
  t.regex(cacheStatus(second), /; hit/);
  t.is(origin.requests.length, 6, 'the second request is answered from the stored slices');
});

test('RFC 9111 §3.4 a Range request fetches only the slices it covers; later requests complete the object from the rest', async (t) => {
  const body = pattern(SIZE, 2);
  const { origin, edge } = await slicedEdge(t, () => ({ body, etag: '"v2"' }));
  const middle = await fetchFrom(edge.url, '/big', { headers: { range: 'bytes=150000-200000' } });
  t.is(middle.status, 206);
  t.is(header(middle, 'content-range'), `bytes 150000-200000/${SIZE}`);
  t.true(middle.body.equals(body.subarray(150000, 200001)));
  t.deepEqual(ranges(origin), [sliceRange(2), sliceRange(3)], 'only the two slices holding the range');
  await settle({ commits: true });
  const head = await fetchFrom(edge.url, '/big', { headers: { range: 'bytes=0-999' } });
  t.true(head.body.equals(body.subarray(0, 1000)));
  t.deepEqual(ranges(origin).slice(2), [sliceRange(0)]);
  await settle({ commits: true });
  const full = await fetchFrom(edge.url, '/big');
  t.true(full.body.equals(body));
  t.deepEqual(ranges(origin).slice(3), [sliceRange(1), sliceRange(4), sliceRange(5)], 'the full request fetched only the missing slices');
  await settle({ commits: true });
  const again = await fetchFrom(edge.url, '/big', { headers: { range: 'bytes=-10' } });
  t.is(again.status, 206);
  t.true(again.body.equals(body.subarray(SIZE - 10)));
  t.is(origin.requests.length, 6);
});

test('slices: concurrent full requests on a cold object fetch each slice once and all get the whole body', async (t) => {
  const body = pattern(SIZE, 3);
  const { origin, edge } = await slicedEdge(t, () => ({ body, etag: '"v3"' }));
  const replies = await Promise.all(Array.from({ length: 8 }, () => fetchFrom(edge.url, '/big')));
  for (const reply of replies) t.true(reply.body.equals(body));
  t.deepEqual([...ranges(origin)].sort(), [0, 1, 2, 3, 4, 5].map(sliceRange).sort(), 'one origin request per slice');
});

test('RFC 9110 §8.8.1 a validator change between slices cuts the response: no mixed body, and the next request gets the new version whole', async (t) => {
  const old = pattern(SIZE, 4);
  const fresh = pattern(SIZE, 5);
  // The first slice is of the old version; everything after it, of the new one.
  const { origin, edge } = await slicedEdge(t, (count) => (count === 1 ? { body: old, etag: '"old"' } : { body: fresh, etag: '"new"' }));
  const cut = await rawGet(edge.url, '/big');
  t.is(cut.status, 200);
  t.false(cut.complete, 'the client sees a cut response, not a complete one');
  t.true(cut.body.equals(old.subarray(0, cut.body.length)), 'every byte received is of the first version');
  t.true(cut.body.length <= SLICE, 'nothing of the second slice was sent');
  await settle({ commits: true });
  const next = await fetchFrom(edge.url, '/big');
  t.true(next.body.equals(fresh));
  t.true(origin.requests.length >= 7, 'the first version\'s slice was dropped and fetched again');
});

test('slices: an object no larger than sliceSize, answered 206 for the whole body, is stored as a 200', async (t) => {
  const body = pattern(1000, 6);
  const { origin, edge } = await slicedEdge(t, () => ({ body, etag: '"s"' }));
  const first = await fetchFrom(edge.url, '/small');
  t.is(first.status, 200);
  t.is(header(first, 'content-range'), undefined);
  t.is(header(first, 'content-length'), '1000');
  t.true(first.body.equals(body));
  t.deepEqual(ranges(origin), [sliceRange(0)]);
  await settle({ commits: true });
  const part = await fetchFrom(edge.url, '/small', { headers: { range: 'bytes=10-19' } });
  t.is(part.status, 206);
  t.true(part.body.equals(body.subarray(10, 20)));
  t.regex(cacheStatus(part), /; hit/);
  t.is(origin.requests.length, 1);
});

test('RFC 9110 §8.8.1 a partial 206 without a strong validator is not sliced: the object is fetched whole', async (t) => {
  const body = pattern(SIZE, 7);
  const { origin, edge } = await slicedEdge(t, () => ({ body, etag: 'W/"weak"' }));
  const reply = await fetchFrom(edge.url, '/weak');
  t.true(reply.body.equals(body));
  t.deepEqual(ranges(origin), [sliceRange(0), undefined], 'the first slice, then the whole body');
  await settle({ commits: true });
  const again = await fetchFrom(edge.url, '/weak');
  t.true(again.body.equals(body));
  t.is(origin.requests.length, 2);
});

test('RFC 9110 §8.8.2.2 a Last-Modified a second or more before Date is a strong validator: the object is sliced', async (t) => {
  const body = pattern(SIZE, 8);
  const lastModified = new Date(Date.now() - 3_600_000).toUTCString();
  const { origin, edge } = await slicedEdge(t, () => ({ body, headers: { 'last-modified': lastModified } }));
  const reply = await fetchFrom(edge.url, '/lm');
  t.true(reply.body.equals(body));
  t.deepEqual(ranges(origin), [0, 1, 2, 3, 4, 5].map(sliceRange));
});

test('RFC 9110 §14.6 several ranges of a sliced object: multipart/byteranges from the slices they cover', async (t) => {
  const body = pattern(SIZE, 9);
  const { origin, edge } = await slicedEdge(t, () => ({ body, etag: '"m"' }));
  const reply = await fetchFrom(edge.url, '/big', { headers: { range: 'bytes=10-19, 200000-200009' } });
  t.is(reply.status, 206);
  t.regex(header(reply, 'content-type') ?? '', /^multipart\/byteranges; boundary=/);
  t.is(Number(header(reply, 'content-length')), reply.body.length);
  const parts = multipartParts(reply);
  t.deepEqual(parts.map((p) => p.contentRange), [`bytes 10-19/${SIZE}`, `bytes 200000-200009/${SIZE}`]);
  t.true(parts[0]!.body.equals(body.subarray(10, 20)));
  t.true(parts[1]!.body.equals(body.subarray(200000, 200010)));
  t.deepEqual(ranges(origin), [sliceRange(0), sliceRange(3)]);
});

test('RFC 9110 §14.6 several ranges of a stored object: multipart, coalesced when they overlap, the whole body when that is smaller, 416 when none is satisfiable', async (t) => {
  const body = pattern(1000, 10);
  const { origin, edge } = await slicedEdge(t, () => ({ body, etag: '"w"' }));
  await fetchFrom(edge.url, '/obj');
  await settle({ commits: true });
  const multi = await fetchFrom(edge.url, '/obj', { headers: { range: 'bytes=500-509,0-9' } });
  t.is(multi.status, 206);
  const parts = multipartParts(multi);
  t.deepEqual(parts.map((p) => p.contentRange), ['bytes 500-509/1000', 'bytes 0-9/1000'], 'parts in the order asked');
  t.true(parts[0]!.body.equals(body.subarray(500, 510)));
  t.true(parts[1]!.body.equals(body.subarray(0, 10)));
  t.is(parts.length, 2);
  const overlapping = await fetchFrom(edge.url, '/obj', { headers: { range: 'bytes=0-50,40-60' } });
  t.is(overlapping.status, 206);
  t.is(header(overlapping, 'content-range'), 'bytes 0-60/1000');
  t.true(overlapping.body.equals(body.subarray(0, 61)));
  const tiny = await fetchFrom(edge.url, '/obj', { headers: { range: 'bytes=0-0,200-200,400-400,600-600,800-800' } });
  t.is(tiny.status, 206, 'five one-byte parts are still smaller than the body');
  t.deepEqual(multipartParts(tiny).map((p) => p.body[0]), [0, 200, 400, 600, 800].map((i) => body[i]));
  const none = await fetchFrom(edge.url, '/obj', { headers: { range: 'bytes=2000-3000,5000-' } });
  t.is(none.status, 416);
  t.is(header(none, 'content-range'), 'bytes */1000');
  t.is(origin.requests.length, 1);
});

test('RFC 9110 §14.6 several ranges whose multipart body would outgrow the representation get the whole 200', async (t) => {
  const body = pattern(300, 11);
  const { edge } = await slicedEdge(t, () => ({ body, etag: '"x"' }));
  await fetchFrom(edge.url, '/obj');
  await settle({ commits: true });
  const reply = await fetchFrom(edge.url, '/obj', { headers: { range: 'bytes=0-0,150-150,299-299' } });
  t.is(reply.status, 200);
  t.true(reply.body.equals(body));
});

test('slices: HEAD of a sliced object gives its whole length and no body', async (t) => {
  const body = pattern(SIZE, 12);
  const { edge } = await slicedEdge(t, () => ({ body, etag: '"h"' }));
  const head = await fetchFrom(edge.url, '/big', { method: 'HEAD' });
  t.is(head.status, 200);
  t.is(header(head, 'content-length'), String(SIZE));
  t.is(head.body.length, 0);
  await settle({ commits: true });
  const get = await fetchFrom(edge.url, '/big');
  t.true(get.body.equals(body));
});

test('slices: an object above maxObjectSize is streamed slice after slice and never stored', async (t) => {
  const body = pattern(SIZE, 13);
  const { origin, edge } = await slicedEdge(t, () => ({ body, etag: '"l"' }), { maxObjectSize: 200_000 });
  for (let round = 1; round <= 2; round++) {
    const reply = await fetchFrom(edge.url, '/huge');
    t.is(reply.status, 200);
    t.true(reply.body.equals(body));
    t.is(origin.requests.length, 6 * round);
  }
  const part = await fetchFrom(edge.url, '/huge', { headers: { range: 'bytes=70000-70009' } });
  t.true(part.body.equals(body.subarray(70000, 70010)));
  // A URL not yet known to be unstorable (after that, hit-for-miss forwards a client's ranges as they are).
  const parts = multipartParts(await fetchFrom(edge.url, '/huge-2', { headers: { range: 'bytes=10-19,200000-200009' } }));
  t.deepEqual(parts.map((p) => p.contentRange), [`bytes 10-19/${SIZE}`, `bytes 200000-200009/${SIZE}`]);
  t.true(parts[1]!.body.equals(body.subarray(200000, 200010)));
  const head = await fetchFrom(edge.url, '/huge-3', { method: 'HEAD' });
  t.is(header(head, 'content-length'), String(SIZE));
  t.is(head.body.length, 0);
});

test('RFC 9111 §4.3.1 stale slices are revalidated with their validator and the Range; 304s keep the stored bytes', async (t) => {
  const body = pattern(SIZE, 14);
  const { origin, edge } = await slicedEdge(t, () => ({ body, etag: '"r"', headers: { 'cache-control': 'max-age=1' } }));
  await fetchFrom(edge.url, '/big');
  await settle({ commits: true });
  await delay(1_100);
  const reply = await fetchFrom(edge.url, '/big');
  t.true(reply.body.equals(body));
  const revalidations = origin.requests.slice(6);
  t.is(revalidations.length, 6);
  for (const [i, r] of revalidations.entries()) {
    t.is(r.headers['if-none-match'], '"r"');
    t.is(r.headers.range, sliceRange(i));
  }
});

test('RFC 9111 §4.4 an unsafe request invalidates every slice of the URL', async (t) => {
  const body = pattern(SIZE, 15);
  const { origin, edge } = await slicedEdge(t, () => ({ body, etag: '"i"' }));
  await fetchFrom(edge.url, '/big');
  await settle({ commits: true });
  origin.handle((_q, res) => {
    res.writeHead(204);
    res.end();
  });
  await fetchFrom(edge.url, '/big', { method: 'POST', body: 'x' });
  origin.handle(rangeHandler(() => ({ body, etag: '"i"' })));
  const reply = await fetchFrom(edge.url, '/big');
  t.true(reply.body.equals(body));
  t.is(origin.requests.length, 6 + 1 + 6, 'every slice fetched again');
});

test('slices through a shield: the edge and the shield both store slices; the origin sees each slice once', async (t) => {
  const body = pattern(SIZE, 16);
  const { origin, edge } = await shieldChain(t, () => ({ body, etag: '"c"' }));
  const first = await fetchFrom(edge.url, '/big');
  t.true(first.body.equals(body));
  t.deepEqual(ranges(origin), [0, 1, 2, 3, 4, 5].map(sliceRange));
  await settle({ commits: true });
  const part = await fetchFrom(edge.url, '/big', { headers: { range: 'bytes=100000-100099' } });
  t.true(part.body.equals(body.subarray(100000, 100100)));
  t.regex(cacheStatus(part), /outpost-edge; hit/);
  t.is(origin.requests.length, 6);
});

/** SIGHUP with another slice size, as an operator would. */
function reloadSliceSize(edge: TestEdge, sliceSize: number): void {
  const { upstreams, dataDir } = edge.config;
  edge.reconfigure(loadConfig('edge', { fileContents: { listen: '127.0.0.1:0', upstreams, dataDir, accessLog: false, logLevel: 'silent', sliceSize } }));
}

for (const [from, to] of [
  [SLICE, SLICE * 2],
  [SLICE * 2, SLICE],
]) {
  test(`slices: slices cut to ${from / 1024} KiB are never joined with slices of ${to / 1024} KiB after the size changes`, async (t) => {
    const body = pattern(SIZE, 17);
    const { edge } = await slicedEdge(t, () => ({ body, etag: '"g"' }), { sliceSize: from });
    // Only the first slice (and the one holding byte 70000) stored at the old size.
    await fetchFrom(edge.url, '/big', { headers: { range: 'bytes=0-9' } });
    await fetchFrom(edge.url, '/big', { headers: { range: 'bytes=70000-70009' } });
    await settle({ commits: true });
    reloadSliceSize(edge, to);
    const full = await rawGet(edge.url, '/big');
    t.true(full.complete);
    t.is(full.body.length, SIZE);
    t.true(full.body.equals(body));
    t.is(full.extra.length, 0, 'not a byte after the body');
  });
}

test('RFC 9110 §15.3.7 a 206 to a request that asked for no range is never stored as the URL\'s response', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => {
    res.writeHead(206, { 'cache-control': 'max-age=60', 'content-range': 'bytes 0-99/100', 'content-length': 100, etag: '"p"' });
    res.end(Buffer.alloc(100, 1));
  }, { sliceSize: 0 });
  for (let i = 0; i < 2; i++) {
    const reply = await fetchFrom(edge.url, '/partial');
    t.is(reply.status, 206);
    t.is(reply.body.length, 100);
    await settle({ commits: true });
  }
  t.is(origin.requests.length, 2, 'not stored');
});

test('slices through a shield: after a version change between slices, the next request revalidates the shield\'s slices (no-cache) and gets the new version whole', async (t) => {
  const old = pattern(SIZE, 18);
  const fresh = pattern(SIZE, 19);
  let current = { body: old, etag: '"old"' };
  const { edge } = await shieldChain(t, () => current);
  // The shield (and the edge) hold the first slice of the old version only.
  await fetchFrom(edge.url, '/big', { headers: { range: 'bytes=0-9' } });
  await settle({ commits: true });
  current = { body: fresh, etag: '"new"' };
  await edge.pipeline.purgeHere({ url: `http://${new URL(edge.url).host}/big` });
  const cut = await rawGet(edge.url, '/big');
  t.false(cut.complete, 'the old first slice and the new second one are not joined');
  t.true(cut.body.equals(old.subarray(0, cut.body.length)));
  await settle({ commits: true });
  const next = await rawGet(edge.url, '/big');
  t.true(next.complete);
  t.true(next.body.equals(fresh), 'the shield validated its stale slice with the origin');
});

test('slices not stored (private) keep the upstream\'s Set-Cookie and Age', async (t) => {
  const body = pattern(SIZE, 20);
  const { edge } = await slicedEdge(t, () => ({ body, etag: '"p"', headers: { 'cache-control': 'private, max-age=60', 'set-cookie': 'session=abc', age: '30' } }));
  const reply = await fetchFrom(edge.url, '/private');
  t.true(reply.body.equals(body));
  t.is(header(reply, 'set-cookie'), 'session=abc');
  t.true(Number(header(reply, 'age')) >= 30);
});

test('RFC 9111 §5.2.1.7 only-if-cached with only some slices stored: nothing is fetched', async (t) => {
  const body = pattern(SIZE, 22);
  const { origin, edge } = await slicedEdge(t, () => ({ body, etag: '"o"' }));
  await fetchFrom(edge.url, '/big', { headers: { range: 'bytes=0-9' } });
  await settle({ commits: true });
  const reply = await rawGet(edge.url, '/big', { headers: { 'cache-control': 'only-if-cached' } });
  t.false(reply.complete && reply.body.length === SIZE, 'not the whole object');
  t.is(origin.requests.length, 1, 'no slice was fetched for it');
  const stored = await fetchFrom(edge.url, '/big', { headers: { 'cache-control': 'only-if-cached', range: 'bytes=5-9' } });
  t.is(stored.status, 206);
  t.true(stored.body.equals(body.subarray(5, 10)));
});

test('slices: an authorized download of many slices adds one close listener to the response, not one per slice', async (t) => {
  const body = pattern(20 * SLICE, 23);
  const warnings: string[] = [];
  const onWarning = (w: Error): void => void warnings.push(w.name);
  process.on('warning', onWarning);
  t.teardown(() => void process.off('warning', onWarning));
  const { edge } = await slicedEdge(t, () => ({ body, etag: '"a"' }));
  const reply = await fetchFrom(edge.url, '/secret', { headers: { authorization: 'Bearer x' } });
  t.true(reply.body.equals(body));
  await delay(50);
  t.false(warnings.includes('MaxListenersExceededWarning'));
});

test('RFC 9110 §15.3.7 a first slice shorter than asked is fetched whole, not a 502', async (t) => {
  const body = pattern(200_000, 24);
  const { origin, edge } = await setup(t, (q, res) => {
    if (q.headers.range !== undefined) {
      // Fewer bytes than asked for, as RFC 9110 allows.
      res.writeHead(206, { 'cache-control': 'max-age=60', etag: '"f"', 'content-range': `bytes 0-999/${body.length}`, 'content-length': 1000 });
      res.end(body.subarray(0, 1000));
      return;
    }
    res.writeHead(200, { 'cache-control': 'max-age=60', etag: '"f"', 'content-length': body.length });
    res.end(body);
  }, { sliceSize: SLICE });
  const reply = await fetchFrom(edge.url, '/short');
  t.is(reply.status, 200);
  t.true(reply.body.equals(body));
  t.deepEqual(ranges(origin), [sliceRange(0), undefined]);
});

test('RFC 5861 §3 after stale-while-revalidate refreshed the first slice to a new version, older stored slices are fetched again, not joined to it', async (t) => {
  const old = pattern(SIZE, 25);
  const fresh = pattern(SIZE, 26);
  let current: Version = { body: old, etag: '"v1"', headers: { 'cache-control': 'max-age=1, stale-while-revalidate=60' } };
  const { edge } = await slicedEdge(t, () => current);
  t.true((await fetchFrom(edge.url, '/big')).body.equals(old));
  await settle({ commits: true });
  await delay(1_100);
  current = { ...current, body: fresh, etag: '"v2"' };
  // Stale: served from the old first slice, which is revalidated in the background (the only one touched).
  const stale = await fetchFrom(edge.url, '/big', { headers: { range: 'bytes=0-9' } });
  t.true(stale.body.equals(old.subarray(0, 10)));
  await settle({ commits: true });
  const next = await rawGet(edge.url, '/big');
  t.true(next.complete, 'not cut at the first slice boundary');
  t.true(next.body.equals(fresh));
});
