/**
 * Request collapsing (single-flight): concurrent misses for one key make one upstream request
 * whose body streams to every waiter; unshareable responses and requests never serialise.
 */
import test from 'ava';
import { request } from 'undici';
import { delay, fetchFrom, header, startOrigin, startTestEdge, testDispatcher } from '../helpers/harness.js';

const BODY = Buffer.alloc(256 * 1024, 'x');

test('N concurrent cold requests make 1 origin request and get N identical full bodies', async (t) => {
  const origin = await startOrigin(async (_req, res) => {
    await delay(200);
    res.writeHead(200, { 'cache-control': 'max-age=60', 'content-length': BODY.length });
    // Stream in pieces so waiters join mid-body.
    for (let i = 0; i < BODY.length; i += 32 * 1024) {
      res.write(BODY.subarray(i, i + 32 * 1024));
      await delay(5);
    }
    res.end();
  });
  const edge = await startTestEdge(origin.url);
  t.teardown(async () => {
    await edge.close();
    await origin.close();
  });
  const replies = await Promise.all(Array.from({ length: 50 }, () => fetchFrom(edge.url, '/cold')));
  t.is(origin.count('/cold'), 1);
  for (const reply of replies) {
    t.is(reply.status, 200);
    t.is(reply.body.length, BODY.length);
    t.true(reply.body.equals(BODY));
  }
  // Each reply either waited on the one fill or (on a slow machine) arrived after it was stored.
  for (const reply of replies) t.regex(header(reply, 'cache-status')!, /fwd=uri-miss; fwd-status=200; stored|hit/);
});

test('waiters receive body bytes as they stream in, before the origin finishes', async (t) => {
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  const origin = await startOrigin(async (_req, res) => {
    res.writeHead(200, { 'cache-control': 'max-age=60', 'content-length': 10 });
    res.write('first');
    await released;
    res.end('-last');
  });
  const edge = await startTestEdge(origin.url);
  t.teardown(async () => {
    release();
    await edge.close();
    await origin.close();
  });
  const dispatcher = await testDispatcher(edge.url);
  const responses = await Promise.all(Array.from({ length: 5 }, () => request(`${edge.url}/stream`, { dispatcher })));
  const bodies = responses.map((r) => {
    let text = '';
    const first = new Promise<void>((resolve) => r.body.once('data', () => resolve()));
    r.body.on('data', (chunk: Buffer) => (text += chunk.toString()));
    const done = new Promise<string>((resolve) => r.body.once('end', () => resolve(text)));
    return { first, done };
  });
  // Every client (leader and waiters) gets bytes while the origin still holds the rest of the body.
  await Promise.all(bodies.map((b) => b.first));
  release();
  for (const text of await Promise.all(bodies.map((b) => b.done))) t.is(text, 'first-last');
  t.is(origin.count('/stream'), 1);
});

test('when the leading client aborts mid-body, waiters still get the full body', async (t) => {
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  const origin = await startOrigin(async (_req, res) => {
    res.writeHead(200, { 'cache-control': 'max-age=60', 'content-length': BODY.length });
    res.write(BODY.subarray(0, 1000));
    await released;
    res.end(BODY.subarray(1000));
  });
  const edge = await startTestEdge(origin.url);
  t.teardown(async () => {
    release();
    await edge.close();
    await origin.close();
  });
  const controller = new AbortController();
  const leader = await request(`${edge.url}/abort`, { signal: controller.signal, dispatcher: await testDispatcher(edge.url) });
  await new Promise((resolve) => leader.body.once('data', resolve));
  const waiters = Array.from({ length: 5 }, () => fetchFrom(edge.url, '/abort'));
  await delay(50);
  controller.abort();
  leader.body.on('error', () => undefined);
  await delay(50);
  release();
  for (const reply of await Promise.all(waiters)) t.true(reply.body.equals(BODY));
  t.is(origin.count('/abort'), 1);
  // The fill completed and was stored despite the leader leaving.
  const after = await fetchFrom(edge.url, '/abort');
  t.regex(header(after, 'cache-status')!, /hit/);
  t.is(origin.count('/abort'), 1);
});

test('an uncacheable response releases waiters and marks the key hit-for-miss, so requests no longer queue', async (t) => {
  let inFlight = 0;
  let maxInFlight = 0;
  // Second wave: each request is held until all ten are in flight (or 2 s pass), so on a loaded
  // machine ten requests arriving over more than one origin delay still count as concurrent.
  let barrier = false;
  let held: Array<() => void> = [];
  const origin = await startOrigin(async (_req, res) => {
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    if (!barrier) await delay(200);
    else {
      await new Promise<void>((resolve) => {
        held.push(resolve);
        if (inFlight === 10) for (const release of held.splice(0)) release();
        setTimeout(resolve, 2000);
      });
    }
    inFlight--;
    res.writeHead(200, { 'cache-control': 'private, max-age=60' });
    res.end('mine');
  });
  const edge = await startTestEdge(origin.url);
  t.teardown(async () => {
    await edge.close();
    await origin.close();
  });
  // First wave: one leader, the rest are released together when its response proves private.
  const first = await Promise.all(Array.from({ length: 10 }, () => fetchFrom(edge.url, '/private')));
  for (const reply of first) t.is(reply.text, 'mine');
  t.is(origin.count('/private'), 10);
  // Second wave: hit-for-miss, so all go to the origin at once instead of queueing.
  maxInFlight = 0;
  barrier = true;
  held = [];
  const started = Date.now();
  const second = await Promise.all(Array.from({ length: 10 }, () => fetchFrom(edge.url, '/private')));
  t.is(maxInFlight, 10);
  t.true(Date.now() - started < 2000, 'requests were not serialised');
  for (const reply of second) t.regex(header(reply, 'cache-status')!, /fwd=bypass/);
});

test('waiters whose Vary values differ from the leader fetch their own variant', async (t) => {
  const origin = await startOrigin(async (req, res) => {
    await delay(150);
    res.writeHead(200, { 'cache-control': 'max-age=60', vary: 'Accept-Language' });
    res.end(`lang=${req.headers['accept-language']}`);
  });
  const edge = await startTestEdge(origin.url);
  t.teardown(async () => {
    await edge.close();
    await origin.close();
  });
  const languages = ['en', 'fr', 'en', 'de', 'fr', 'en'];
  const replies = await Promise.all(languages.map((lang) => fetchFrom(edge.url, '/v', { headers: { 'accept-language': lang } })));
  replies.forEach((reply, i) => t.is(reply.text, `lang=${languages[i]}`));
  // Later requests hit their own variant.
  for (const lang of ['en', 'fr', 'de']) {
    const reply = await fetchFrom(edge.url, '/v', { headers: { 'accept-language': lang } });
    t.is(reply.text, `lang=${lang}`);
    t.regex(header(reply, 'cache-status')!, /hit/);
  }
});

test('requests that may never share a response (Authorization, no-store) do not wait on a fill', async (t) => {
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  const origin = await startOrigin(async (req, res) => {
    if (req.headers.authorization === undefined && req.headers['cache-control'] === undefined) await released;
    res.writeHead(200, { 'cache-control': 'max-age=60' });
    res.end(req.headers.authorization ? 'authorized' : 'public');
  });
  const edge = await startTestEdge(origin.url);
  t.teardown(async () => {
    release();
    await edge.close();
    await origin.close();
  });
  const leader = fetchFrom(edge.url, '/p');
  await delay(50);
  const authorized = await fetchFrom(edge.url, '/p', { headers: { authorization: 'Bearer x' } });
  t.is(authorized.text, 'authorized');
  const noStore = await fetchFrom(edge.url, '/p', { headers: { 'cache-control': 'no-store' } });
  t.is(noStore.status, 200);
  release();
  t.is((await leader).text, 'public');
});

test('a waiter gives up after lockWaitMs and fetches on its own', async (t) => {
  const origin = await startOrigin(async (_req, res, _body, count) => {
    if (count === 1) await delay(1500);
    res.writeHead(200, { 'cache-control': 'max-age=60' });
    res.end(`answer ${count}`);
  });
  const edge = await startTestEdge(origin.url, { lockWaitMs: 100 });
  t.teardown(async () => {
    await edge.close();
    await origin.close();
  });
  const leader = fetchFrom(edge.url, '/lock');
  await delay(30);
  const started = Date.now();
  const waiter = await fetchFrom(edge.url, '/lock');
  t.true(Date.now() - started < 1000);
  t.is(waiter.text, 'answer 2');
  t.is((await leader).text, 'answer 1');
});

test('concurrent misses for different keys do not queue behind each other', async (t) => {
  let inFlight = 0;
  let maxInFlight = 0;
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  const origin = await startOrigin(async (_req, res) => {
    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    await released;
    inFlight--;
    res.writeHead(200, { 'cache-control': 'max-age=60' });
    res.end('ok');
  });
  const edge = await startTestEdge(origin.url);
  t.teardown(async () => {
    release();
    await edge.close();
    await origin.close();
  });
  const all = Promise.all(Array.from({ length: 300 }, (_, i) => fetchFrom(edge.url, `/k${i}`)));
  for (let i = 0; i < 100 && inFlight < 256; i++) await delay(50);
  await delay(100);
  t.is(maxInFlight, 256, 'the default pool allows 256 concurrent upstream requests, and no more');
  release();
  t.is((await all).length, 300);
  t.is(origin.count(), 300);
});
