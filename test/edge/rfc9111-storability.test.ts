/**
 * RFC 9111 §3 (storing responses) against a real edge and a real origin on 127.0.0.1.
 */
import test from 'ava';
import { cacheStatus, fetchFrom, header, httpDate, raw, send, settle, setup, startTestEdge } from '../helpers/harness.js';


test('§3 a cacheable 200 GET is stored (control)', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'max-age=60' }));
  await fetchFrom(edge.url, '/s');
  await settle();
  const second = await fetchFrom(edge.url, '/s');
  t.is(origin.count('/s'), 1);
  t.regex(cacheStatus(second), /; hit/);
});

test('§3 a response to POST is not stored (method)', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'max-age=60' }, 'posted'));
  const post = await fetchFrom(edge.url, '/p', { method: 'POST', body: 'x' });
  t.is(post.status, 200);
  await settle();
  const get = await fetchFrom(edge.url, '/p');
  t.is(get.status, 200);
  t.deepEqual(origin.requests.map((r) => r.method), ['POST', 'GET']);
  t.notRegex(cacheStatus(get), /; hit/);
});

test('§3/§4.2.2 a 404 with Last-Modified and no explicit freshness is stored heuristically', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 404, { 'last-modified': httpDate(-10_000), date: httpDate() }, 'nope'));
  const first = await fetchFrom(edge.url, '/missing');
  t.is(first.status, 404);
  await settle();
  const second = await fetchFrom(edge.url, '/missing');
  t.is(second.status, 404);
  t.is(second.text, 'nope');
  t.is(origin.count('/missing'), 1);
  t.regex(cacheStatus(second), /; hit/);
});

test('§3/§4.2.2 a 301 with Last-Modified is stored heuristically', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 301, { location: '/elsewhere', 'last-modified': httpDate(-10_000), date: httpDate() }, 'moved'));
  const first = await fetchFrom(edge.url, '/moved');
  t.is(first.status, 301);
  await settle();
  const second = await fetchFrom(edge.url, '/moved');
  t.is(second.status, 301);
  t.is(header(second, 'location'), '/elsewhere');
  t.is(origin.count('/moved'), 1);
});

test('§3 a 500 without explicit freshness is not stored', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 500, { 'last-modified': httpDate(-10_000) }, 'boom'));
  t.is((await fetchFrom(edge.url, '/err')).status, 500);
  await settle();
  t.is((await fetchFrom(edge.url, '/err')).status, 500);
  t.is(origin.count('/err'), 2);
});

test('§5.2.2.5 a no-store response is not stored', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'no-store, max-age=60' }));
  const first = await fetchFrom(edge.url, '/ns');
  t.is(first.text, 'hello');
  await settle();
  await fetchFrom(edge.url, '/ns');
  t.is(origin.count('/ns'), 2);
});

test('§5.2.1.5 request no-store: the response is not stored', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'max-age=60' }));
  const first = await fetchFrom(edge.url, '/rns', { headers: { 'cache-control': 'no-store' } });
  t.is(first.text, 'hello');
  await settle();
  const second = await fetchFrom(edge.url, '/rns');
  t.is(origin.count('/rns'), 2);
  t.notRegex(cacheStatus(second), /; hit/);
});

test('§5.2.2.7 a private response is not stored by a shared cache', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'private, max-age=60' }));
  await fetchFrom(edge.url, '/priv');
  await settle();
  await fetchFrom(edge.url, '/priv');
  t.is(origin.count('/priv'), 2);
});

test('§3.5 a response to a request with Authorization is not stored without public/s-maxage/must-revalidate', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'max-age=60' }, 'secret'));
  const first = await fetchFrom(edge.url, '/auth', { headers: { authorization: 'Bearer a' } });
  t.is(first.text, 'secret');
  await settle();
  const anonymous = await fetchFrom(edge.url, '/auth');
  t.is(anonymous.text, 'secret');
  t.is(origin.count('/auth'), 2, 'the authorized response must not be served to another client');
  t.is(origin.requests[1]!.headers.authorization, undefined);
});

for (const directive of ['public, max-age=60', 's-maxage=60', 'max-age=60, must-revalidate']) {
  test(`§3.5 a response to a request with Authorization is stored with "${directive}"`, async (t) => {
    const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': directive }, 'shared'));
    await fetchFrom(edge.url, '/auth-ok', { headers: { authorization: 'Bearer a' } });
    await settle();
    const second = await fetchFrom(edge.url, '/auth-ok');
    t.is(second.text, 'shared');
    t.is(origin.count('/auth-ok'), 1);
    t.regex(cacheStatus(second), /; hit/);
  });
}

test('§3 1xx responses are never stored: the final response is what is stored and served', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => {
    res.writeEarlyHints({ link: '</style.css>; rel=preload; as=style' });
    send(res, 200, { 'cache-control': 'max-age=60' }, 'final');
  });
  const first = await fetchFrom(edge.url, '/hints');
  t.is(first.status, 200);
  t.is(first.text, 'final');
  await settle();
  const second = await fetchFrom(edge.url, '/hints');
  t.is(second.status, 200);
  t.is(second.text, 'final');
  t.is(origin.count('/hints'), 1);
});

test('§3 (operator policy) a response with Set-Cookie is not stored by default', async (t) => {
  const { origin, edge } = await setup(t, (_q, res, _b, n) => send(res, 200, { 'cache-control': 'max-age=60', 'set-cookie': `session=${n}` }));
  const first = await fetchFrom(edge.url, '/c');
  t.is(header(first, 'set-cookie'), 'session=1');
  await settle();
  const second = await fetchFrom(edge.url, '/c');
  t.is(header(second, 'set-cookie'), 'session=2');
  t.is(origin.count('/c'), 2);
});

test('§3 (operator policy) with cacheSetCookiePaths the response is stored, the client that caused the fetch gets its Set-Cookie, other clients never do', async (t) => {
  const { origin, edge } = await setup(t, (_q, res, _b, n) => send(res, 200, { 'cache-control': 'max-age=60', 'set-cookie': `session=${n}` }, 'page'), {
    cacheSetCookiePaths: ['/c'],
  });
  const first = await fetchFrom(edge.url, '/c/page');
  t.is(first.text, 'page');
  await settle();
  const second = await fetchFrom(edge.url, '/c/page');
  t.is(second.text, 'page');
  t.is(origin.count('/c/page'), 1, 'stored under the opt-in path');
  t.is(header(second, 'set-cookie'), undefined, 'a stored Set-Cookie is never served to another client');
  t.is(header(first, 'set-cookie'), 'session=1', 'the client whose request was forwarded receives the origin Set-Cookie');
});

test('§3 (operator policy) cacheSetCookiePaths does not apply outside its prefix', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'max-age=60', 'set-cookie': 'a=b' }), { cacheSetCookiePaths: ['/c'] });
  await fetchFrom(edge.url, '/other');
  await settle();
  await fetchFrom(edge.url, '/other');
  t.is(origin.count('/other'), 2);
});

// ---- §3 any final status with explicit freshness; must-understand; the operator's status list ----

for (const status of [400, 403, 404, 410, 418, 500, 502, 503]) {
  test(`§3 a ${status} with explicit freshness (max-age) is stored and served from cache`, async (t) => {
    const { origin, edge } = await setup(t, (_q, res) => send(res, status, { 'cache-control': 'max-age=60' }, `status ${status}`));
    t.is((await fetchFrom(edge.url, '/st')).status, status);
    await settle();
    const second = await fetchFrom(edge.url, '/st');
    t.is(second.status, status);
    t.is(second.text, `status ${status}`);
    t.regex(cacheStatus(second), /; hit/);
    t.is(origin.count('/st'), 1);
  });
}

test('§3 a 503 with an Expires in the future is stored (explicit freshness, not max-age)', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 503, { date: httpDate(), expires: httpDate(60) }, 'later'));
  await fetchFrom(edge.url, '/exp503');
  await settle();
  t.regex(cacheStatus(await fetchFrom(edge.url, '/exp503')), /; hit/);
  t.is(origin.count('/exp503'), 1);
});

test('§3 (operator policy) storeStatuses restricts what is stored, as nginx proxy_cache_valid does', async (t) => {
  const { origin, edge } = await setup(t, (q, res) => send(res, q.url === '/ok' ? 200 : 404, { 'cache-control': 'max-age=60' }), { storeStatuses: [200] });
  for (const path of ['/ok', '/gone', '/ok', '/gone']) await fetchFrom(edge.url, path);
  t.is(origin.count('/ok'), 1);
  t.is(origin.count('/gone'), 2, 'a 404 is not stored when only 200 is listed');
});

test('§5.2.2.3 must-understand with a status the cache implements overrides no-store', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'must-understand, no-store, max-age=60' }));
  await fetchFrom(edge.url, '/mu');
  await settle();
  t.regex(cacheStatus(await fetchFrom(edge.url, '/mu')), /; hit/);
  t.is(origin.count('/mu'), 1);
});

test('§5.2.2.3 must-understand with a status the cache does not know (299) is not stored', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 299, { 'cache-control': 'must-understand, max-age=60' }));
  const first = await fetchFrom(edge.url, '/mu299');
  t.is(first.status, 299);
  await settle();
  await fetchFrom(edge.url, '/mu299');
  t.is(origin.count('/mu299'), 2);
});

test('§5.2.2.3 without must-understand, no-store still wins (control)', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'no-store, max-age=60' }));
  await fetchFrom(edge.url, '/nomu');
  await settle();
  await fetchFrom(edge.url, '/nomu');
  t.is(origin.count('/nomu'), 2);
});

// ---- RFC 9110 §15.2 interim responses -------------------------------------------------------------

const EARLY_HINTS = (_q: unknown, res: import('node:http').ServerResponse) => {
  res.writeEarlyHints({ link: '</style.css>; rel=preload; as=style' });
  setTimeout(() => send(res, 200, { 'cache-control': 'max-age=60' }, 'final'), 20);
};

test('RFC 9110 §15.2 a 103 Early Hints from upstream reaches the client before the final response, and is not stored', async (t) => {
  const { origin, edge } = await setup(t, EARLY_HINTS);
  const first = await raw(edge.url, 'GET /early HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n');
  const hints = first.indexOf('HTTP/1.1 103 Early Hints');
  t.true(hints === 0, first.slice(0, 200));
  t.regex(first, /^HTTP\/1\.1 103 Early Hints\r\n(?:[^\r]*\r\n)*?link: <\/style\.css>; rel=preload; as=style\r\n/im);
  t.true(first.indexOf('HTTP/1.1 200') > hints);
  await settle();
  const hit = await raw(edge.url, 'GET /early HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n');
  t.true(hit.startsWith('HTTP/1.1 200'), 'a hit carries no interim response');
  t.regex(hit, /cache-status: [^\r]*hit/i);
  t.is(origin.count('/early'), 1);
});

test('RFC 9110 §15.2 no interim response is sent to an HTTP/1.0 client', async (t) => {
  const { edge } = await setup(t, EARLY_HINTS);
  const reply = await raw(edge.url, 'GET /early10 HTTP/1.0\r\nHost: a.test\r\n\r\n');
  t.true(reply.startsWith('HTTP/1.0 200') || reply.startsWith('HTTP/1.1 200'), reply.slice(0, 100));
  t.false(reply.includes(' 103 '));
});

test('RFC 9110 §15.2 a 103 with several links, or one node:http refuses, never costs the final response', async (t) => {
  const { createServer } = await import('node:net');
  const links = ['</a.css>; rel=preload; as=style, </b.js>; rel=preload; as=script', '</c.css>; rel=preload; title="a, b"', '<bad link'];
  let served = 0;
  const origin = createServer((socket) => {
    socket.once('data', () => {
      const link = links[served++ % links.length]!;
      socket.end(`HTTP/1.1 103 Early Hints\r\nLink: ${link}\r\n\r\nHTTP/1.1 200 OK\r\nCache-Control: no-store\r\nContent-Length: 5\r\n\r\nfinal`);
    });
  });
  await new Promise<void>((resolve) => origin.listen(0, '127.0.0.1', resolve));
  const edge = await startTestEdge(`http://127.0.0.1:${(origin.address() as import('node:net').AddressInfo).port}`);
  t.teardown(async () => {
    await edge.close();
    origin.close();
  });
  const multi = await raw(edge.url, 'GET /m1 HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n');
  t.regex(multi, /^HTTP\/1\.1 103 Early Hints\r\nlink: <\/a\.css>; rel=preload; as=style, <\/b\.js>; rel=preload; as=script\r\n/i);
  t.regex(multi, /HTTP\/1\.1 200 OK[\s\S]*\r\n\r\nfinal$/);
  for (const path of ['/m2', '/m3']) {
    const reply = await raw(edge.url, `GET ${path} HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n`);
    t.regex(reply, /HTTP\/1\.1 200 OK[\s\S]*\r\n\r\nfinal$/, path);
  }
});
