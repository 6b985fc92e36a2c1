/**
 * Who gets which response (pipeline/fill.ts). A request that did not cause a fill, whether it
 * waited on it or arrived while its store commit runs, gets that response only where the store
 * could serve it the same response: RFC 9111 §4 (reuse only of a fresh response, or with
 * validation), §4.1 (the same Vary variant), §4.2 (freshness, stale on arrival), §5.2.1 (the
 * request's own directives). Every edge here runs over the real tiered store whose commits are
 * delayed by COMMIT_DELAY_MS, so the commit window is wide on purpose in both test runs.
 */
import test, { type ExecutionContext } from 'ava';
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import { request } from 'undici';
import { entryKey } from '../../storage/keys.js';
import { cacheStatus, delay, fetchFrom, header, httpDate, send, settle, setup, type Reply } from '../helpers/harness.js';

const WINDOW = 'delayed-commit';

function notFromCache(t: ExecutionContext, reply: Reply): void {
  t.notRegex(cacheStatus(reply), /; hit|detail=collapsed/, cacheStatus(reply));
}

/** An origin handler that answers after `ms`, counting how many requests it holds at once. */
function slowOrigin(ms: number, answer: (req: IncomingMessage, res: ServerResponse, n: number) => void) {
  const load = { now: 0, max: 0 };
  const handler = async (req: IncomingMessage, res: ServerResponse, _body: Buffer, n: number) => {
    load.now++;
    load.max = Math.max(load.max, load.now);
    await delay(ms);
    load.now--;
    answer(req, res, n);
  };
  return { handler, load };
}

// ---- stale on arrival: never served to the next request, even inside the commit window -----------

const STALE_ON_ARRIVAL: Array<[string, () => OutgoingHttpHeaders]> = [
  ['§4.2.1 Expires equal to Date', () => ({ date: httpDate(), expires: httpDate() })],
  ['§4.2.1 Expires before Date', () => ({ date: httpDate(), expires: httpDate(-60) })],
  ['§5.3 an invalid Expires ("0")', () => ({ date: httpDate(), expires: '0' })],
  ['§5.3 an invalid Expires (not an HTTP-date)', () => ({ date: httpDate(), expires: 'next tuesday' })],
  ['§5.2.2.4 response no-cache', () => ({ 'cache-control': 'no-cache', etag: '"nc"' })],
  ['§5.2.2.1 max-age=0', () => ({ 'cache-control': 'max-age=0' })],
  ['§4.2.3 Age beyond max-age', () => ({ 'cache-control': 'max-age=60', age: '120' })],
];

for (const [name, headers] of STALE_ON_ARRIVAL) {
  test(`${name}: the request right after (its commit still running) is forwarded, not served from the fill`, async (t) => {
    const { origin, edge } = await setup(t, (_q, res) => send(res, 200, headers()), {}, WINDOW);
    await fetchFrom(edge.url, '/soa');
    const second = await fetchFrom(edge.url, '/soa');
    t.is(second.status, 200);
    notFromCache(t, second);
    t.is(origin.count('/soa'), 2);
  });

  test(`${name}: a stampede is forwarded in full and not serialised behind one fetch`, async (t) => {
    const { handler, load } = slowOrigin(150, (_q, res) => send(res, 200, headers(), 'soa-body'));
    const { origin, edge } = await setup(t, handler, {}, WINDOW);
    const replies = await Promise.all(Array.from({ length: 20 }, () => fetchFrom(edge.url, '/stampede')));
    for (const reply of replies) {
      t.is(reply.text, 'soa-body');
      t.notRegex(cacheStatus(reply), /; hit|detail=collapsed/);
    }
    t.is(origin.count('/stampede'), 20, 'every request forwarded');
    // The waiters are released together when the response proves stale: their requests overlap at
    // the origin. Serialised behind one another (each the next leader) they never would (max 1).
    t.true(load.max >= 3, `at most ${load.max} origin requests at once`);
  });
}

test('§4.3.1 a stampede on a stored no-cache response revalidates each request with the stored validator', async (t) => {
  const { origin, edge } = await setup(t, (q, res) => {
    if (q.headers['if-none-match'] === '"nc"') return void send(res, 304, { 'cache-control': 'no-cache', etag: '"nc"' }, '');
    send(res, 200, { 'cache-control': 'no-cache', etag: '"nc"' }, 'nc-body');
  }, {}, WINDOW);
  await fetchFrom(edge.url, '/nc');
  await settle({ commits: true });
  const replies = await Promise.all(Array.from({ length: 10 }, () => fetchFrom(edge.url, '/nc')));
  for (const reply of replies) {
    t.is(reply.text, 'nc-body');
    t.regex(cacheStatus(reply), /fwd=stale; fwd-status=304/);
  }
  t.is(origin.count('/nc'), 11);
  t.true(origin.requests.slice(1).every((r) => r.headers['if-none-match'] === '"nc"'), 'each revalidation is conditional');
});

// ---- the request's own directives (§5.2.1) --------------------------------------------------------

test('§5.2.1 a waiter whose min-fresh, max-age=0 or no-cache refuses the shared response forwards its own request', async (t) => {
  const { handler } = slowOrigin(200, (_q, res, n) => send(res, 200, { 'cache-control': 'max-age=60' }, `r${n}`));
  const { origin, edge } = await setup(t, handler, {}, WINDOW);
  const leader = fetchFrom(edge.url, '/d');
  await delay(50);
  const [plain, minFresh, maxAge0, noCache] = await Promise.all([
    fetchFrom(edge.url, '/d'),
    fetchFrom(edge.url, '/d', { headers: { 'cache-control': 'min-fresh=120' } }),
    fetchFrom(edge.url, '/d', { headers: { 'cache-control': 'max-age=0' } }),
    fetchFrom(edge.url, '/d', { headers: { 'cache-control': 'no-cache' } }),
  ]);
  const first = await leader;
  t.is(plain.text, first.text, 'a waiter without directives shares the fill');
  t.regex(cacheStatus(plain), /detail=collapsed/);
  for (const own of [minFresh, maxAge0, noCache]) {
    t.not(own.text, first.text);
    notFromCache(t, own);
  }
  // A fresh response refused by the request's own directives is fwd=request (RFC 9211 §2.2).
  t.regex(cacheStatus(minFresh), /fwd=request/);
  t.is(origin.count('/d'), 4);
});

test('§5.2.1.4 a no-cache request in the commit window is forwarded with fwd=request', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'max-age=60' }), {}, WINDOW);
  await fetchFrom(edge.url, '/w');
  const reply = await fetchFrom(edge.url, '/w', { headers: { 'cache-control': 'no-cache' } });
  t.regex(cacheStatus(reply), /fwd=request/);
  t.is(origin.count('/w'), 2);
});

// ---- the opposite window: fresh responses are hits before their commit ends ---------------------

test('§4 a fresh response is a hit for the request right after it, while its commit still runs', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'max-age=60', etag: '"h"' }, 'hello-window'), {}, WINDOW);
  await fetchFrom(edge.url, '/h');
  const hit = await fetchFrom(edge.url, '/h');
  const range = await fetchFrom(edge.url, '/h', { headers: { range: 'bytes=0-4' } });
  const conditional = await fetchFrom(edge.url, '/h', { headers: { 'if-none-match': '"h"' } });
  const head = await fetchFrom(edge.url, '/h', { method: 'HEAD' });
  t.is(hit.text, 'hello-window');
  t.regex(cacheStatus(hit), /; hit/);
  t.is(range.status, 206);
  t.is(range.text, 'hello');
  t.is(conditional.status, 304);
  t.is(head.status, 200);
  t.is(head.body.length, 0);
  t.is(origin.count('/h'), 1);
});

test('§4.1 Accept-Language de, fr, de, fr in sequence: two origin requests, then hits (every commit delayed)', async (t) => {
  const { origin, edge } = await setup(t, (q, res) =>
    send(res, 200, { 'cache-control': 'max-age=60', vary: 'Accept-Language', 'content-language': String(q.headers['accept-language']) }, `lang:${q.headers['accept-language']}`),
  {}, WINDOW);
  for (let round = 0; round < 5; round++) {
    const path = `/lang/${round}`;
    const replies: Reply[] = [];
    for (const language of ['de', 'fr', 'de', 'fr']) replies.push(await fetchFrom(edge.url, path, { headers: { 'accept-language': language } }));
    t.deepEqual(replies.map((r) => r.text), ['lang:de', 'lang:fr', 'lang:de', 'lang:fr']);
    const statuses = `round ${round}: ${replies.map(cacheStatus).join(' | ')}`;
    t.regex(cacheStatus(replies[2]!), /; hit/, statuses);
    t.regex(cacheStatus(replies[3]!), /; hit/, statuses);
    t.is(origin.count(path), 2);
  }
});

test('§4.1 waiters of another variant collapse onto one fetch of their own variant', async (t) => {
  const { handler } = slowOrigin(150, (q, res) => send(res, 200, { 'cache-control': 'max-age=60', vary: 'Accept-Language' }, `lang:${q.headers['accept-language']}`));
  const { origin, edge } = await setup(t, handler, {}, WINDOW);
  const requests = Array.from({ length: 16 }, (_, i) => fetchFrom(edge.url, '/v', { headers: { 'accept-language': i % 2 === 0 ? 'de' : 'fr' } }));
  const replies = await Promise.all(requests);
  replies.forEach((reply, i) => t.is(reply.text, i % 2 === 0 ? 'lang:de' : 'lang:fr'));
  t.is(origin.count('/v'), 2, 'one fetch per variant');
});

// ---- revalidation (304) shared with waiters ---------------------------------------------------------

test('§4.3.4 waiters share a revalidation whose 304 makes the response fresh', async (t) => {
  const { origin, edge } = await setup(t, async (q, res) => {
    await delay(150);
    if (q.headers['if-none-match'] === '"r"') return void send(res, 304, { 'cache-control': 'max-age=60', etag: '"r"' }, '');
    // Fresh on arrival despite Date's one-second resolution and the origin's delay; stale 2 s later.
    send(res, 200, { 'cache-control': 'max-age=2', etag: '"r"' }, 'r-body');
  }, {}, WINDOW);
  await fetchFrom(edge.url, '/r');
  await settle({ commits: true });
  await delay(2_100);
  const replies = await Promise.all(Array.from({ length: 10 }, () => fetchFrom(edge.url, '/r')));
  for (const reply of replies) {
    t.is(reply.text, 'r-body');
    t.regex(cacheStatus(reply), /fwd=stale; fwd-status=304/);
  }
  t.is(origin.count('/r'), 2);
});

test('§4.3.4 waiters do not share a revalidation whose 304 leaves the response stale (no-cache): each revalidates', async (t) => {
  const { origin, edge } = await setup(t, async (q, res, _b, n) => {
    await delay(150);
    if (q.headers['if-none-match'] === '"s"') return void send(res, 304, { 'cache-control': 'no-cache', etag: '"s"' }, '');
    send(res, 200, { 'cache-control': n === 1 ? 'max-age=2' : 'no-cache', etag: '"s"' }, 's-body');
  }, {}, WINDOW);
  await fetchFrom(edge.url, '/s');
  await settle({ commits: true });
  await delay(2_100);
  const replies = await Promise.all(Array.from({ length: 10 }, () => fetchFrom(edge.url, '/s')));
  for (const reply of replies) {
    t.is(reply.text, 's-body');
    t.regex(cacheStatus(reply), /fwd=stale; fwd-status=304/);
    t.notRegex(cacheStatus(reply), /collapsed/);
  }
  t.is(origin.count('/s'), 11);
  t.true(origin.requests.slice(1).every((r) => r.headers['if-none-match'] === '"s"'));
});

// ---- invalidation inside the window ----------------------------------------------------------------

test('§4.4 an unsafe request that invalidates the URL closes the commit window: the next GET is forwarded', async (t) => {
  const { origin, edge } = await setup(t, (q, res) => send(res, 200, q.method === 'GET' ? { 'cache-control': 'max-age=60' } : {}, q.method), {}, WINDOW);
  await fetchFrom(edge.url, '/inv');
  await fetchFrom(edge.url, '/inv', { method: 'POST', body: 'x' });
  const after = await fetchFrom(edge.url, '/inv');
  notFromCache(t, after);
  t.is(origin.requests.filter((r) => r.method === 'GET').length, 2);
  await settle({ commits: true });
  t.regex(cacheStatus(await fetchFrom(edge.url, '/inv')), /; hit/, 'the fill that started after the invalidation is stored');
  t.is(header(await fetchFrom(edge.url, '/inv'), 'content-length'), '3');
});

// ---- found in review: the windows around invalidation, Authorization, Vary and failures ----------

test('§3.5 an authorized request forwards its own request and leaves the shared stored copy alone', async (t) => {
  const { origin, edge } = await setup(t, (q, res) => {
    if (q.headers['if-none-match'] === '"a"') return void send(res, 304, { 'cache-control': 'max-age=60', etag: '"a"' }, '');
    send(res, 200, { 'cache-control': 'max-age=2', etag: '"a"' }, 'shared');
  }, {}, WINDOW);
  await fetchFrom(edge.url, '/auth');
  await settle({ commits: true });
  await delay(2_100);
  const authorized = await fetchFrom(edge.url, '/auth', { headers: { authorization: 'Bearer x' } });
  t.is(authorized.text, 'shared');
  t.is(origin.requests[1]!.headers['if-none-match'], undefined, 'not conditional on the shared copy');
  const anonymous = await fetchFrom(edge.url, '/auth');
  t.is(anonymous.text, 'shared');
  t.is(origin.requests[2]!.headers['if-none-match'], '"a"', 'the shared copy is still stored and revalidated');
  t.is(origin.count('/auth'), 3);
});

for (const who of ['a leading fill', 'an authorized request']) {
  test(`§4.4 a response fetched by ${who} while an invalidation runs is neither stored nor shared`, async (t) => {
    let version = 1;
    const { origin, edge } = await setup(t, async (q, res) => {
      if (q.method === 'POST') {
        version = 2;
        return void send(res, 200, {}, 'posted');
      }
      const served = version;
      await delay(q.headers['x-slow'] ? 300 : 0);
      send(res, 200, { 'cache-control': 'public, max-age=60' }, `v${served}`);
    }, {}, WINDOW);
    const headers: Record<string, string> = { 'x-slow': '1', ...(who === 'an authorized request' ? { authorization: 'Bearer x' } : {}) };
    const slow = fetchFrom(edge.url, '/doc', { headers });
    await delay(100);
    await fetchFrom(edge.url, '/doc', { method: 'POST', body: 'x' });
    t.is((await slow).text, 'v1', 'the request gets its own response');
    await settle({ commits: true });
    const after = await fetchFrom(edge.url, '/doc');
    t.is(after.text, 'v2');
    notFromCache(t, after);
    t.regex(cacheStatus(after), /fwd=uri-miss/, 'an invalidation does not make the key hit-for-miss');
    t.is(origin.requests.filter((r) => r.method === 'GET').length, 2);
  });
}

test('§4.1 a variant whose fill began before the URL had a Vary record stays findable after another variant commits', async (t) => {
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  const { origin, edge } = await setup(t, async (q, res) => {
    const language = String(q.headers['accept-language']);
    res.writeHead(200, { 'cache-control': 'max-age=60', vary: 'Accept-Language', 'content-length': 5 });
    res.write(language);
    if (language === 'de') await released;
    res.end('-ok');
  }, {}, WINDOW);
  const de = request(`${edge.url}/vk`, { headers: { 'accept-language': 'de' } });
  const deBody = (await de).body.text();
  t.is((await fetchFrom(edge.url, '/vk', { headers: { 'accept-language': 'fr' } })).text, 'fr-ok');
  // fr commits and writes the URL's Vary record while de is still streaming in.
  const primary = entryKey(`http://${new URL(edge.url).host}/vk`, '');
  const deadline = Date.now() + 5_000;
  while ((await edge.store.get(primary)) === undefined && Date.now() < deadline) await delay(20);
  t.truthy(await edge.store.get(primary), 'the Vary record is stored');
  release();
  t.is(await deBody, 'de-ok');
  const again = await fetchFrom(edge.url, '/vk', { headers: { 'accept-language': 'de' } });
  t.is(again.text, 'de-ok');
  t.is(origin.requests.filter((r) => r.headers['accept-language'] === 'de').length, 1);
});

test('§4.3.4 a 304 for a response still streaming in is answered at once, not after its body ends', async (t) => {
  let release!: () => void;
  const released = new Promise<void>((resolve) => (release = resolve));
  const { edge } = await setup(t, async (q, res) => {
    if (q.headers['if-none-match'] === '"t"') return void send(res, 304, { 'cache-control': 'no-cache', etag: '"t"' }, '');
    res.writeHead(200, { 'cache-control': 'no-cache', etag: '"t"', 'content-length': 10 });
    res.write('first');
    await released;
    res.end('-last');
  }, {}, WINDOW);
  t.teardown(() => release());
  const first = await request(`${edge.url}/t`);
  const firstBody = first.body.text();
  const second = await Promise.race([request(`${edge.url}/t`), delay(3_000).then(() => undefined)]);
  t.truthy(second, 'the revalidated response started while the first body was still arriving');
  t.is(second?.statusCode, 200);
  release();
  t.is(await second!.body.text(), 'first-last');
  t.is(await firstBody, 'first-last');
});

test('RFC 5861 §4 stale-if-error never serves a fill that stopped being stored: the error is answered', async (t) => {
  const { edge } = await setup(t, async (_q, res, _b, n) => {
    if (n === 1) {
      res.writeHead(200, { 'cache-control': 'max-age=0, stale-if-error=60', etag: '"big"' });
      res.write(Buffer.alloc(8 * 1024, 'a'));
      await delay(300);
      res.end(Buffer.alloc(32 * 1024, 'b'));
      return;
    }
    await delay(600);
    send(res, 503, {}, 'down');
  }, { maxObjectSize: '16KB' }, WINDOW);
  const first = fetchFrom(edge.url, '/sie');
  await delay(100);
  const second = await fetchFrom(edge.url, '/sie');
  t.is(second.status, 503, 'answered, not reset mid-body');
  t.is((await first).body.length, 40 * 1024);
});

test('RFC 5861 §3 a stale-while-revalidate response in its commit window is served stale and revalidated once', async (t) => {
  const { origin, edge } = await setup(t, (_q, res, _b, n) => send(res, 200, { 'cache-control': 'max-age=0, stale-while-revalidate=60' }, `v${n}`), {}, WINDOW);
  await fetchFrom(edge.url, '/swr');
  const stale = await fetchFrom(edge.url, '/swr');
  t.is(stale.text, 'v1');
  t.regex(cacheStatus(stale), /detail=background-revalidate/);
  await settle();
  t.is(origin.count('/swr'), 2, 'one background revalidation');
});

test('waiters whose clients left send nothing upstream when the shared response turns out not to be theirs', async (t) => {
  const { handler } = slowOrigin(300, (_q, res) => send(res, 200, { 'cache-control': 'private, max-age=60' }, 'mine'));
  const { origin, edge } = await setup(t, handler, {}, WINDOW);
  const leader = fetchFrom(edge.url, '/gone');
  await delay(50);
  const controllers = Array.from({ length: 5 }, () => new AbortController());
  const waiters = controllers.map((c) => request(`${edge.url}/gone`, { signal: c.signal }).catch(() => undefined));
  await delay(50);
  for (const c of controllers) c.abort();
  await Promise.all(waiters);
  t.is((await leader).text, 'mine');
  await settle();
  t.is(origin.count('/gone'), 1);
});

test('§4.3.1 waiters refused a stale-on-arrival response revalidate with its validator', async (t) => {
  const { handler } = slowOrigin(150, (q, res) => {
    if (q.headers['if-none-match'] === '"w"') return void send(res, 304, { 'cache-control': 'no-cache', etag: '"w"' }, '');
    send(res, 200, { 'cache-control': 'no-cache', etag: '"w"' }, 'w-body');
  });
  const { origin, edge } = await setup(t, handler, {}, WINDOW);
  const replies = await Promise.all(Array.from({ length: 10 }, () => fetchFrom(edge.url, '/w')));
  for (const reply of replies) t.is(reply.text, 'w-body');
  t.is(origin.count('/w'), 10);
  t.is(origin.requests.filter((r) => r.headers['if-none-match'] === '"w"').length, 9);
});
