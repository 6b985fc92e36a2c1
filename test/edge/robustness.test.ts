/**
 * Failure paths found in review: a store that fails mid-revalidation must not lock a key; a 304
 * that makes a response private removes the shared copy; a client that left releases the
 * upstream body; a fill overtaken by an invalidation is not stored.
 */
import test from 'ava';
import { MemoryStore } from '../../storage/memory-store.js';
import type { EntryMeta } from '../../storage/cache-store.js';
import { cacheStatus, delay, fetchFrom, raw, startOrigin, startTestEdge, waitFor } from '../helpers/harness.js';
import { request } from 'undici';

/** A real memory store whose updateMeta can be made to fail, as a broken disk would. */
class FailingUpdates extends MemoryStore {
  failUpdates = false;
  override async updateMeta(key: string, meta: EntryMeta): Promise<boolean> {
    if (this.failUpdates) throw new Error('disk on fire');
    return super.updateMeta(key, meta);
  }
}

test('a store failure while refreshing after a 304 does not lock the key (every waiter is answered, the flight closes)', async (t) => {
  const origin = await startOrigin((req, res) => {
    if (req.headers['if-none-match'] === '"v1"') {
      res.writeHead(304, { etag: '"v1"', 'cache-control': 'max-age=1' });
      res.end();
      return;
    }
    res.writeHead(200, { etag: '"v1"', 'cache-control': 'max-age=1' });
    res.end('body');
  });
  const store = new FailingUpdates({ maxBytes: 1 << 24 });
  const edge = await startTestEdge(origin.url, { lockWaitMs: 5_000 }, store);
  t.teardown(async () => {
    await edge.close();
    await origin.close();
  });
  t.is((await fetchFrom(edge.url, '/r')).text, 'body');
  await delay(1100);
  store.failUpdates = true;
  const replies = await Promise.all([fetchFrom(edge.url, '/r'), fetchFrom(edge.url, '/r'), fetchFrom(edge.url, '/r')]);
  for (const reply of replies) t.is(reply.status, 200);
  t.is(edge.pipeline.fills.inFlight, 0, 'no flight left behind');
  const started = Date.now();
  await fetchFrom(edge.url, '/r');
  t.true(Date.now() - started < 5_000, 'the next request did not wait for lockWaitMs');
});

test('§4.3.4 + §3: a 304 that makes the response private removes the shared copy; nobody else gets it', async (t) => {
  // The resource turns private after the first response: the 304 and any full answer say so.
  const origin = await startOrigin((req, res, _body, count) => {
    const cacheControl = count === 1 ? 'max-age=1' : 'private, max-age=60';
    if (req.headers['if-none-match'] === '"v1"') {
      res.writeHead(304, { etag: '"v1"', 'cache-control': cacheControl });
      res.end();
      return;
    }
    res.writeHead(200, { etag: '"v1"', 'cache-control': cacheControl });
    res.end('shared');
  });
  const edge = await startTestEdge(origin.url);
  t.teardown(async () => {
    await edge.close();
    await origin.close();
  });
  await fetchFrom(edge.url, '/p');
  await delay(1100);
  const alice = await fetchFrom(edge.url, '/p');
  t.is(alice.status, 200);
  const before = origin.count('/p');
  const bob = await fetchFrom(edge.url, '/p');
  t.notRegex(cacheStatus(bob), /hit/, 'a private response is never served from the shared cache');
  t.is(origin.count('/p'), before + 1, "Bob's request went to the origin");
});

test('§4.3.4 a 304 with a different weak validator updates nothing', async (t) => {
  const origin = await startOrigin((req, res, _body, count) => {
    if (req.headers['if-none-match'] !== undefined) {
      res.writeHead(304, { etag: 'W/"other"', 'cache-control': 'max-age=60', 'x-version': 'new' });
      res.end();
      return;
    }
    res.writeHead(200, { etag: 'W/"v1"', 'cache-control': 'max-age=1', 'x-version': `full-${count}` });
    res.end('original');
  });
  const edge = await startTestEdge(origin.url);
  t.teardown(async () => {
    await edge.close();
    await origin.close();
  });
  await fetchFrom(edge.url, '/w');
  await delay(1100);
  const reply = await fetchFrom(edge.url, '/w');
  t.is(reply.text, 'original');
  t.not(reply.headers['x-version'], 'new', 'the 304 for another representation was not merged into ours');
});

test('a client that left before the answer releases the upstream body instead of holding it', async (t) => {
  let closedEarly!: () => void;
  const closed = new Promise<void>((resolve) => (closedEarly = resolve));
  const origin = await startOrigin(async (_req, res) => {
    await delay(200);
    res.writeHead(200, { 'cache-control': 'no-store' });
    res.on('close', () => {
      if (!res.writableFinished) closedEarly();
    });
    // A large body written slowly: only a reader keeps it flowing.
    for (let i = 0; i < 2000 && !res.destroyed; i++) {
      if (!res.write(Buffer.alloc(64 * 1024))) await new Promise((resolve) => res.once('drain', resolve));
    }
    res.end();
  });
  const edge = await startTestEdge(origin.url, { idleBodyTimeoutMs: 60_000 });
  t.teardown(async () => {
    await edge.close();
    await origin.close();
  });
  const controller = new AbortController();
  const pending = request(`${edge.url}/big`, { signal: controller.signal }).catch(() => undefined);
  await delay(50);
  controller.abort();
  await pending;
  t.true(await Promise.race([closed.then(() => true), delay(5_000).then(() => false)]), 'the upstream response was closed');
});

test('§4.4 a fill that began before an invalidating POST is not stored', async (t) => {
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  const origin = await startOrigin(async (req, res) => {
    if (req.method === 'POST') {
      res.writeHead(204);
      res.end();
      return;
    }
    res.writeHead(200, { 'cache-control': 'max-age=60', 'content-length': 10 });
    res.write('before');
    await released;
    res.end('-old');
  });
  const edge = await startTestEdge(origin.url);
  t.teardown(async () => {
    release();
    await edge.close();
    await origin.close();
  });
  const fill = fetchFrom(edge.url, '/doc');
  await waitFor(() => origin.count('/doc') === 1);
  t.is((await fetchFrom(edge.url, '/doc', { method: 'POST', body: 'x' })).status, 204);
  release();
  t.is((await fill).text, 'before-old');
  await edge.pipeline.drain();
  const after = await fetchFrom(edge.url, '/doc');
  t.notRegex(cacheStatus(after), /hit/, 'the pre-POST representation was not stored');
});

test('a failing store read is treated as a miss (counted), never as a failed request', async (t) => {
  const origin = await startOrigin((_req, res) => {
    res.writeHead(200, { 'cache-control': 'max-age=60' });
    res.end('from origin');
  });
  const store = new MemoryStore({ maxBytes: 1 << 24 });
  // Every lookup rejects, as a disk read error does.
  store.get = () => Promise.reject(new Error('read error')) as never;
  const edge = await startTestEdge(origin.url, {}, store);
  t.teardown(async () => {
    await edge.close();
    await origin.close();
  });
  for (let i = 0; i < 2; i++) {
    const reply = await fetchFrom(edge.url, '/broken-disk');
    t.is(reply.status, 200);
    t.is(reply.text, 'from origin');
  }
  // Two lookups per request: the URL, then (nothing found) the first slice of a large object.
  t.is(edge.metrics.get('store_read_errors_total'), 4);
});

test('RFC 9112 §3.2.4 OPTIONS * is answered by the node itself; another method with * is a 400', async (t) => {
  const origin = await startOrigin((_req, res) => {
    res.end('origin');
  });
  const edge = await startTestEdge(origin.url);
  t.teardown(async () => {
    await edge.close();
    await origin.close();
  });
  const options = await raw(edge.url, 'OPTIONS * HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n');
  t.regex(options, /^HTTP\/1\.1 200 /);
  t.regex(options, /allow: GET, HEAD/i);
  const get = await raw(edge.url, 'GET * HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n');
  t.regex(get, /^HTTP\/1\.1 400 /);
  t.is(origin.count(), 0, 'nothing reached the origin');
});

/** A real memory store that cannot open writers, as a store whose disk is gone. */
class NoWriters extends MemoryStore {
  override openWriter(): never {
    throw new Error('cannot open a writer');
  }
}

test('a store that cannot open a writer still delivers the response, counts it, and keeps serving', async (t) => {
  const origin = await startOrigin((_req, res) => {
    res.writeHead(200, { 'cache-control': 'max-age=60', 'content-length': 4 });
    res.end('body');
  });
  const edge = await startTestEdge(origin.url, {}, new NoWriters({ maxBytes: 1 << 24 }));
  t.teardown(async () => {
    await edge.close();
    await origin.close();
  });
  t.is((await fetchFrom(edge.url, '/w')).text, 'body');
  t.is((await fetchFrom(edge.url, '/w')).text, 'body');
  t.is(edge.metrics.get('not_stored_total', { reason: 'store-error' }), 2);
  t.is(edge.pipeline.fills.inFlight, 0, 'no commit window left open');
});
