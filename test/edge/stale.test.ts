/**
 * stale-while-revalidate and stale-if-error (RFC 5861), and the directives that forbid stale
 * copies (RFC 9111 §4.2.4, §5.2.2.2, §5.2.2.8, §5.2.2.10).
 */
import test from 'ava';
import { MemoryStore } from '../../storage/memory-store.js';
import { DelayedCommitStore } from '../helpers/delayed-commit-store.js';
import { delay, fetchFrom, header, startOrigin, startTestEdge, waitFor } from '../helpers/harness.js';

test('RFC 5861 §3 stale-while-revalidate: stale served at once, exactly one background revalidation under concurrent load', async (t) => {
  let version = 0;
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  const origin = await startOrigin(async (_req, res) => {
    version++;
    // The revalidation is held until every stale reply has arrived: nobody may wait on it.
    if (version > 1) await released;
    // The refreshed copy stays fresh long enough to be asserted as a hit on a slow machine.
    res.writeHead(200, { 'cache-control': `max-age=${version === 1 ? 1 : 60}, stale-while-revalidate=30`, etag: `"v${version}"` });
    res.end(`version ${version}`);
  });
  const edge = await startTestEdge(origin.url);
  t.teardown(async () => {
    release();
    await edge.close();
    await origin.close();
  });
  t.is((await fetchFrom(edge.url, '/swr')).text, 'version 1');
  await delay(1100);
  const replies = await Promise.all(Array.from({ length: 30 }, () => fetchFrom(edge.url, '/swr')));
  for (const reply of replies) {
    t.is(reply.text, 'version 1');
    t.regex(header(reply, 'cache-status')!, /fwd=stale; detail=background-revalidate/);
  }
  t.true(await waitFor(() => origin.count('/swr') === 2));
  await delay(50);
  t.is(origin.count('/swr'), 2, 'one revalidation for 30 stale requests');
  release();
  await edge.pipeline.drain();
  // The revalidation was conditional, and its result now serves as a fresh hit.
  t.is(origin.requests[1]!.headers['if-none-match'], '"v1"');
  const after = await fetchFrom(edge.url, '/swr');
  t.is(after.text, 'version 2');
  t.regex(header(after, 'cache-status')!, /hit/);
});

for (const vary of [false, true]) {
  test(`RFC 9111 §4 the most recent response is used: in a revalidation's commit window requests get the new response, not the stale one it replaces${vary ? ' (a Vary variant)' : ''}`, async (t) => {
    let version = 0;
    const origin = await startOrigin((_req, res) => {
      version++;
      res.writeHead(200, { 'cache-control': `max-age=${version === 1 ? 1 : 60}, stale-while-revalidate=30`, ...(vary ? { vary: 'accept-language' } : {}) });
      res.end(`version ${version}`);
    });
    // Commits take 1.5 s, as a LevelDB write can on a loaded machine: the window is wide on purpose.
    const store = new DelayedCommitStore(new MemoryStore({ maxBytes: 1 << 24 }), 1500);
    const edge = await startTestEdge(origin.url, {}, store);
    t.teardown(async () => {
      await edge.close();
      await origin.close();
    });
    const get = () => fetchFrom(edge.url, '/window', { headers: { 'accept-language': 'fr' } });
    t.is((await get()).text, 'version 1');
    await edge.pipeline.drain();
    await delay(1100);
    const stale = await get();
    t.is(stale.text, 'version 1');
    t.regex(header(stale, 'cache-status')!, /fwd=stale; detail=background-revalidate/);
    t.true(await waitFor(() => origin.count('/window') === 2));
    // The revalidation's response has arrived; its commit is 1.5 s away. Requests meanwhile:
    await delay(100);
    const during = await Promise.all(Array.from({ length: 10 }, () => get()));
    for (const reply of during) {
      t.is(reply.text, 'version 2', 'the response committing, not the stale copy still in the store');
      t.regex(header(reply, 'cache-status')!, /hit/);
    }
    await delay(200);
    t.is(origin.count('/window'), 2, 'no second revalidation while the first commits');
  });
}

test('RFC 5861 §3 an operator default grace (defaultGraceSec) applies when the origin sends none', async (t) => {
  const origin = await startOrigin(async (_req, res, _body, count) => {
    await delay(100);
    res.writeHead(200, { 'cache-control': 'max-age=1' });
    res.end(`n${count}`);
  });
  const edge = await startTestEdge(origin.url, { defaultGraceSec: 10 });
  t.teardown(async () => {
    await edge.close();
    await origin.close();
  });
  await fetchFrom(edge.url, '/g');
  await delay(1100);
  const stale = await fetchFrom(edge.url, '/g');
  t.is(stale.text, 'n1');
  t.regex(header(stale, 'cache-status')!, /fwd=stale/);
  await edge.pipeline.drain();
  t.is((await fetchFrom(edge.url, '/g')).text, 'n2');
});

test('RFC 5861 §4 stale-if-error: origin down → stale served within the window, 502 after it', async (t) => {
  const origin = await startOrigin((_req, res) => {
    res.writeHead(200, { 'cache-control': 'max-age=1, stale-if-error=2' });
    res.end('cached copy');
  });
  const edge = await startTestEdge(origin.url);
  t.teardown(async () => {
    await edge.close();
  });
  t.is((await fetchFrom(edge.url, '/sie')).text, 'cached copy');
  await origin.close();
  await delay(1100);
  const stale = await fetchFrom(edge.url, '/sie');
  t.is(stale.status, 200);
  t.is(stale.text, 'cached copy');
  t.regex(header(stale, 'cache-status')!, /fwd=stale; detail=stale-if-error/);
  await delay(2000);
  const failed = await fetchFrom(edge.url, '/sie');
  t.is(failed.status, 502);
  t.regex(failed.text, /request id: \S+/);
});

test('RFC 5861 §4 stale-if-error covers 500, 502, 503 and 504 answers from the origin', async (t) => {
  let failWith = 0;
  const origin = await startOrigin((_req, res) => {
    if (failWith) {
      res.writeHead(failWith, { 'content-type': 'text/plain' });
      res.end('origin trouble');
      return;
    }
    res.writeHead(200, { 'cache-control': 'max-age=1, stale-if-error=60' });
    res.end('good copy');
  });
  const edge = await startTestEdge(origin.url);
  t.teardown(async () => {
    await edge.close();
    await origin.close();
  });
  await fetchFrom(edge.url, '/e');
  await delay(1100);
  for (const status of [500, 502, 503, 504]) {
    failWith = status;
    const reply = await fetchFrom(edge.url, '/e');
    t.is(reply.status, 200, `on ${status}`);
    t.is(reply.text, 'good copy');
    t.regex(header(reply, 'cache-status')!, new RegExp(`fwd-status=${status}; detail=stale-if-error`));
  }
  failWith = 404;
  t.is((await fetchFrom(edge.url, '/e')).status, 404, 'a 404 is an answer, not an error');
});

test('RFC 9111 §5.2.2.2 must-revalidate, §5.2.2.8 proxy-revalidate and §5.2.2.10 s-maxage forbid stale-if-error and grace', async (t) => {
  const origin = await startOrigin((req, res) => {
    const directive = req.url!.slice(1);
    res.writeHead(200, { 'cache-control': `max-age=1, ${directive}, stale-if-error=60, stale-while-revalidate=60` });
    res.end(directive);
  });
  const edge = await startTestEdge(origin.url, { defaultStaleIfErrorSec: 60, defaultGraceSec: 60 });
  t.teardown(async () => {
    await edge.close();
  });
  const paths = ['/must-revalidate', '/proxy-revalidate', '/s-maxage=1'];
  for (const path of paths) t.is((await fetchFrom(edge.url, path)).status, 200);
  await origin.close();
  await delay(1100);
  for (const path of paths) {
    const reply = await fetchFrom(edge.url, path);
    t.is(reply.status, 502, path);
  }
});
