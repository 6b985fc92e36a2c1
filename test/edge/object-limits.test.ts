/** Responses the cache streams but must not store or share: oversized bodies and Set-Cookie. */
import test from 'ava';
import { delay, fetchFrom, header, startOrigin, startTestEdge } from '../helpers/harness.js';

test('a response above maxObjectSize is delivered whole but not stored (declared or streamed length)', async (t) => {
  const body = Buffer.alloc(64 * 1024, 'z');
  const origin = await startOrigin((req, res) => {
    const headers: Record<string, string | number> = { 'cache-control': 'max-age=60' };
    if (req.url === '/declared') headers['content-length'] = body.length;
    res.writeHead(200, headers);
    res.write(body.subarray(0, 1024));
    res.end(body.subarray(1024));
  });
  const edge = await startTestEdge(origin.url, { maxObjectSize: '16KB' });
  t.teardown(async () => {
    await edge.close();
    await origin.close();
  });
  for (const path of ['/declared', '/chunked']) {
    const first = await fetchFrom(edge.url, path);
    t.true(first.body.equals(body), path);
    await edge.pipeline.drain();
    const second = await fetchFrom(edge.url, path);
    t.true(second.body.equals(body));
    t.notRegex(header(second, 'cache-status')!, /hit/, path);
    t.is(origin.count(path), 2, path);
  }
});

test('§3.1 opted-in Set-Cookie responses: the requester gets its cookie, collapsed waiters and later hits never do', async (t) => {
  const origin = await startOrigin(async (_req, res, _body, count) => {
    await delay(150);
    res.writeHead(200, { 'cache-control': 'max-age=60', 'set-cookie': `session=${count}` });
    res.end('page');
  });
  const edge = await startTestEdge(origin.url, { cacheSetCookiePaths: ['/shop'] });
  t.teardown(async () => {
    await edge.close();
    await origin.close();
  });
  const leader = fetchFrom(edge.url, '/shop/item');
  await delay(30);
  const waiters = await Promise.all([fetchFrom(edge.url, '/shop/item'), fetchFrom(edge.url, '/shop/item')]);
  t.is(header(await leader, 'set-cookie'), 'session=1');
  for (const waiter of waiters) {
    t.is(waiter.text, 'page');
    t.is(header(waiter, 'set-cookie'), undefined);
  }
  const hit = await fetchFrom(edge.url, '/shop/item');
  t.regex(header(hit, 'cache-status')!, /hit/);
  t.is(header(hit, 'set-cookie'), undefined);
  t.is(origin.count('/shop/item'), 1);
});
