/**
 * Conditional requests answered by the cache (RFC 9110 §13), revalidation (RFC 9111 §4.3),
 * HEAD (§4.3.5), ranges (RFC 9110 §14) and invalidation (RFC 9111 §4.4) against a real edge and origin.
 */
import test, { type ExecutionContext } from 'ava';
import type { OutgoingHttpHeaders, ServerResponse } from 'node:http';
import { cacheStatus, fetchFrom, header, httpDate, send, settle, setup, type OriginHandler } from '../helpers/harness.js';

const LAST_MODIFIED = httpDate(-3600);
const BODY = '0123456789';

async function stored(t: ExecutionContext, headers: OutgoingHttpHeaders = {}) {
  const ctx = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'max-age=60', etag: '"abc"', 'last-modified': LAST_MODIFIED, ...headers }, BODY));
  await fetchFrom(ctx.edge.url, '/r');
  await settle();
  return ctx;
}

// ---- RFC 9110 §13 conditionals from the cache ------------------------------------------------------

test('RFC 9110 §13.1.2 If-None-Match matching the stored ETag gets 304 from the cache', async (t) => {
  const { origin, edge } = await stored(t);
  const reply = await fetchFrom(edge.url, '/r', { headers: { 'if-none-match': '"abc"' } });
  t.is(reply.status, 304);
  t.is(reply.body.length, 0);
  t.is(header(reply, 'etag'), '"abc"');
  t.truthy(header(reply, 'cache-status'));
  t.is(origin.count('/r'), 1);
});

test('RFC 9110 §13.1.2 If-None-Match uses weak comparison (W/ prefix ignored, lists accepted)', async (t) => {
  const { origin, edge } = await stored(t);
  const weak = await fetchFrom(edge.url, '/r', { headers: { 'if-none-match': 'W/"abc"' } });
  const list = await fetchFrom(edge.url, '/r', { headers: { 'if-none-match': '"zzz", W/"abc"' } });
  t.is(weak.status, 304);
  t.is(list.status, 304);
  t.is(origin.count('/r'), 1);
});

test('RFC 9110 §13.1.2 If-None-Match not matching gets the full 200 from the cache', async (t) => {
  const { origin, edge } = await stored(t);
  const reply = await fetchFrom(edge.url, '/r', { headers: { 'if-none-match': '"other"' } });
  t.is(reply.status, 200);
  t.is(reply.text, BODY);
  t.is(origin.count('/r'), 1);
});

test('RFC 9110 §13.1.3 If-Modified-Since at or after Last-Modified gets 304 from the cache; earlier gets 200', async (t) => {
  const { origin, edge } = await stored(t);
  const same = await fetchFrom(edge.url, '/r', { headers: { 'if-modified-since': LAST_MODIFIED } });
  const earlier = await fetchFrom(edge.url, '/r', { headers: { 'if-modified-since': httpDate(-7200) } });
  t.is(same.status, 304);
  t.is(earlier.status, 200);
  t.is(earlier.text, BODY);
  t.is(origin.count('/r'), 1);
});

test('RFC 9110 §13.2.2 If-None-Match takes precedence over If-Modified-Since', async (t) => {
  const { edge } = await stored(t);
  const reply = await fetchFrom(edge.url, '/r', { headers: { 'if-none-match': '"other"', 'if-modified-since': LAST_MODIFIED } });
  t.is(reply.status, 200);
});

// ---- §4.3 revalidation ---------------------------------------------------------------------------------

test('§4.3.1 a stale stored response with an ETag is revalidated with If-None-Match; §4.3.4 the 304 updates stored headers', async (t) => {
  const { origin, edge } = await setup(t, (q, res, _b, n) => {
    if (q.headers['if-none-match'] === '"e1"') return void send(res, 304, { etag: '"e1"', 'cache-control': 'max-age=60', 'x-version': '2' }, '');
    send(res, 200, { etag: '"e1"', 'cache-control': 'max-age=60', age: '100', 'x-version': String(n) }, 'body-e1');
  });
  await fetchFrom(edge.url, '/reval');
  await settle();
  const revalidated = await fetchFrom(edge.url, '/reval');
  t.is(revalidated.status, 200);
  t.is(revalidated.text, 'body-e1');
  t.is(origin.requests[1]!.headers['if-none-match'], '"e1"');
  t.regex(cacheStatus(revalidated), /fwd=stale/);
  t.regex(cacheStatus(revalidated), /fwd-status=304/);
  await settle();
  const hit = await fetchFrom(edge.url, '/reval');
  t.is(hit.text, 'body-e1');
  t.is(header(hit, 'x-version'), '2', 'the header from the 304 replaces the stored one');
  t.regex(cacheStatus(hit), /; hit/);
  t.is(origin.count('/reval'), 2);
});

test('§4.3.1 a stale stored response with only Last-Modified is revalidated with If-Modified-Since', async (t) => {
  const { origin, edge } = await setup(t, (q, res) => {
    if (q.headers['if-modified-since'] === LAST_MODIFIED) return void send(res, 304, { 'cache-control': 'max-age=60' }, '');
    send(res, 200, { 'last-modified': LAST_MODIFIED, 'cache-control': 'max-age=60', age: '100' }, 'body-lm');
  });
  await fetchFrom(edge.url, '/ims');
  await settle();
  const again = await fetchFrom(edge.url, '/ims');
  t.is(again.status, 200);
  t.is(again.text, 'body-lm');
  t.is(origin.requests[1]!.headers['if-modified-since'], LAST_MODIFIED);
  t.is(origin.requests[1]!.headers['if-none-match'], undefined);
});

test('§4.3.2 a conditional client revalidated through the cache gets 304', async (t) => {
  const { origin, edge } = await setup(t, (q, res) => {
    if (q.headers['if-none-match'] === '"e2"') return void send(res, 304, { etag: '"e2"', 'cache-control': 'max-age=60' }, '');
    send(res, 200, { etag: '"e2"', 'cache-control': 'max-age=60', age: '100' }, 'body-e2');
  });
  await fetchFrom(edge.url, '/reval2');
  await settle();
  const reply = await fetchFrom(edge.url, '/reval2', { headers: { 'if-none-match': '"e2"' } });
  t.is(reply.status, 304);
  t.is(origin.count('/reval2'), 2);
});

test('§4.3.3 a full 200 to a revalidation replaces the stored response', async (t) => {
  let version = 1;
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { etag: `"v${version}"`, 'cache-control': 'max-age=60', age: version === 1 ? '100' : '0' }, `body-v${version}`));
  await fetchFrom(edge.url, '/replace');
  await settle();
  version = 2;
  const second = await fetchFrom(edge.url, '/replace');
  t.is(second.text, 'body-v2');
  await settle();
  const third = await fetchFrom(edge.url, '/replace');
  t.is(third.text, 'body-v2');
  t.is(header(third, 'etag'), '"v2"');
  t.is(origin.count('/replace'), 2);
});

// ---- HEAD ----------------------------------------------------------------------------------------

test('§4.3.5 / RFC 9110 §9.3.2 HEAD is answered from a stored GET', async (t) => {
  const { origin, edge } = await stored(t);
  const head = await fetchFrom(edge.url, '/r', { method: 'HEAD' });
  t.is(head.status, 200);
  t.is(head.body.length, 0);
  t.is(header(head, 'etag'), '"abc"');
  t.is(header(head, 'content-length'), String(BODY.length));
  t.is(origin.count('/r'), 1);
});

test('RFC 9110 §9.3.2 a HEAD miss does not store an empty body for a later GET', async (t) => {
  const { edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'max-age=60' }, BODY));
  const head = await fetchFrom(edge.url, '/h', { method: 'HEAD' });
  t.is(head.status, 200);
  t.is(head.body.length, 0);
  await settle();
  const get = await fetchFrom(edge.url, '/h');
  t.is(get.status, 200);
  t.is(get.text, BODY);
  t.is(header(get, 'content-length'), String(BODY.length));
});

// ---- RFC 9110 §14 ranges ----------------------------------------------------------------------------

test('RFC 9110 §14.2 Range bytes=0-4 on a stored object gets 206 with Content-Range from the cache', async (t) => {
  const { origin, edge } = await stored(t);
  const reply = await fetchFrom(edge.url, '/r', { headers: { range: 'bytes=0-4' } });
  t.is(reply.status, 206);
  t.is(reply.text, '01234');
  t.is(header(reply, 'content-range'), `bytes 0-4/${BODY.length}`);
  t.is(header(reply, 'content-length'), '5');
  t.is(origin.count('/r'), 1);
});

test('RFC 9110 §14.1.2 a suffix range returns the last bytes', async (t) => {
  const { edge } = await stored(t);
  const reply = await fetchFrom(edge.url, '/r', { headers: { range: 'bytes=-3' } });
  t.is(reply.status, 206);
  t.is(reply.text, '789');
  t.is(header(reply, 'content-range'), `bytes 7-9/${BODY.length}`);
});

test('RFC 9110 §14.1.2 an open-ended range returns the rest', async (t) => {
  const { edge } = await stored(t);
  const reply = await fetchFrom(edge.url, '/r', { headers: { range: 'bytes=6-' } });
  t.is(reply.status, 206);
  t.is(reply.text, '6789');
});

test('RFC 9110 §15.5.17 an unsatisfiable range gets 416 with Content-Range bytes */size', async (t) => {
  const { edge } = await stored(t);
  const reply = await fetchFrom(edge.url, '/r', { headers: { range: 'bytes=100-200' } });
  t.is(reply.status, 416);
  t.is(header(reply, 'content-range'), `bytes */${BODY.length}`);
});

test('RFC 9110 §13.1.5 If-Range with the matching strong ETag gets 206; a different ETag gets the full 200', async (t) => {
  const { edge } = await stored(t);
  const match = await fetchFrom(edge.url, '/r', { headers: { range: 'bytes=0-4', 'if-range': '"abc"' } });
  const other = await fetchFrom(edge.url, '/r', { headers: { range: 'bytes=0-4', 'if-range': '"nope"' } });
  t.is(match.status, 206);
  t.is(match.text, '01234');
  t.is(other.status, 200);
  t.is(other.text, BODY);
});

test('RFC 9110 §14.2 a Range request on a miss asks for the first slice; an origin that answers 200 has it stored whole', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'max-age=60' }, BODY));
  const partial = await fetchFrom(edge.url, '/rm', { headers: { range: 'bytes=2-3' } });
  t.is(partial.status, 206);
  t.is(partial.text, '23');
  t.is(origin.requests[0]!.headers.range, 'bytes=0-8388607', 'the cache asks for the first slice, not the client range');
  await settle();
  const full = await fetchFrom(edge.url, '/rm');
  t.is(full.text, BODY);
  t.is(origin.count('/rm'), 1);
});

// ---- §4.4 invalidation ---------------------------------------------------------------------------------

async function invalidationSetup(t: ExecutionContext, unsafe: (q: Parameters<OriginHandler>[0], res: ServerResponse) => void) {
  return setup(t, (q, res, _b, n) => {
    if (q.method !== 'GET') return unsafe(q, res);
    send(res, 200, { 'cache-control': 'max-age=600' }, `${q.url}#${n}`);
  });
}

async function warm(base: string, ...paths: string[]): Promise<void> {
  for (const p of paths) await fetchFrom(base, p);
  await settle();
}

for (const method of ['POST', 'PUT', 'DELETE']) {
  test(`§4.4 a 2xx response to ${method} invalidates the target URI`, async (t) => {
    const { origin, edge } = await invalidationSetup(t, (_q, res) => send(res, 200, {}, 'done'));
    await warm(edge.url, '/doc');
    t.regex(cacheStatus(await fetchFrom(edge.url, '/doc')), /; hit/);
    const unsafe = await fetchFrom(edge.url, '/doc', { method, body: method === 'DELETE' ? undefined : 'payload' });
    t.is(unsafe.status, 200);
    const after = await fetchFrom(edge.url, '/doc');
    t.notRegex(cacheStatus(after), /; hit/);
    t.is(origin.requests.filter((r) => r.method === 'GET').length, 2);
  });
}

test('§4.4 a 3xx response to POST invalidates the target URI and a same-origin Location', async (t) => {
  let edgeUrl = '';
  const { origin, edge } = await invalidationSetup(t, (_q, res) => send(res, 303, { location: `${edgeUrl}/loc` }, ''));
  edgeUrl = edge.url;
  await warm(edge.url, '/form', '/loc');
  await fetchFrom(edge.url, '/form', { method: 'POST', body: 'a=1' });
  await fetchFrom(edge.url, '/form');
  await fetchFrom(edge.url, '/loc');
  t.is(origin.count('/form'), 3, 'GET, POST, GET');
  t.is(origin.count('/loc'), 2);
});

test('§4.4 a 2xx response to POST invalidates a relative Content-Location', async (t) => {
  const { origin, edge } = await invalidationSetup(t, (_q, res) => send(res, 201, { 'content-location': '/items/7' }, 'created'));
  await warm(edge.url, '/items/7');
  await fetchFrom(edge.url, '/items', { method: 'POST', body: 'x' });
  await fetchFrom(edge.url, '/items/7');
  t.is(origin.count('/items/7'), 2);
});

test('§4.4 a Location on another origin is not invalidated', async (t) => {
  const { origin, edge } = await invalidationSetup(t, (_q, res) => send(res, 201, { location: 'http://other.example/same' }, ''));
  await warm(edge.url, '/same');
  await fetchFrom(edge.url, '/post', { method: 'POST', body: 'x' });
  const after = await fetchFrom(edge.url, '/same');
  t.regex(cacheStatus(after), /; hit/);
  t.is(origin.count('/same'), 1);
});

test('§4.4 an error response (500) to POST does not invalidate', async (t) => {
  const { origin, edge } = await invalidationSetup(t, (_q, res) => send(res, 500, {}, 'failed'));
  await warm(edge.url, '/keep');
  const post = await fetchFrom(edge.url, '/keep', { method: 'POST', body: 'x' });
  t.is(post.status, 500);
  const after = await fetchFrom(edge.url, '/keep');
  t.regex(cacheStatus(after), /; hit/);
  t.is(origin.requests.filter((r) => r.method === 'GET').length, 1);
});

test('§4.3.4 a 304 whose strong ETag matches no stored response does not update it: the client never gets the old body under the new ETag', async (t) => {
  const { edge } = await setup(t, (q, res) => {
    if (q.headers['if-none-match'] !== undefined) return void send(res, 304, { etag: '"b"', 'cache-control': 'max-age=60' }, '');
    send(res, 200, { etag: q.headers['x-second'] ? '"b"' : '"a"', 'cache-control': 'max-age=60', age: '100' }, q.headers['x-second'] ? 'body-B' : 'body-A');
  });
  await fetchFrom(edge.url, '/mismatch');
  await settle();
  const reply = await fetchFrom(edge.url, '/mismatch', { headers: { 'x-second': '1' } });
  t.is(reply.status, 200);
  const pair = `${header(reply, 'etag')} ${reply.text}`;
  t.true(pair === '"a" body-A' || pair === '"b" body-B', `ETag and body disagree: ${pair}`);
  await settle();
  const next = await fetchFrom(edge.url, '/mismatch', { headers: { 'x-second': '1' } });
  const nextPair = `${header(next, 'etag')} ${next.text}`;
  t.true(nextPair === '"a" body-A' || nextPair === '"b" body-B', `ETag and body disagree: ${nextPair}`);
});

test('§4.4 invalidation removes every Vary variant of the target URI', async (t) => {
  const { origin, edge } = await setup(t, (q, res) => {
    if (q.method === 'POST') return void send(res, 204, {}, '');
    send(res, 200, { 'cache-control': 'max-age=600', vary: 'Accept-Encoding' }, `enc:${q.headers['accept-encoding'] ?? '-'}`);
  });
  for (const enc of ['gzip', 'br']) await fetchFrom(edge.url, '/vinv', { headers: { 'accept-encoding': enc } });
  await settle();
  await fetchFrom(edge.url, '/vinv', { method: 'POST', body: 'x' });
  for (const enc of ['gzip', 'br']) {
    const reply = await fetchFrom(edge.url, '/vinv', { headers: { 'accept-encoding': enc } });
    t.is(reply.text, `enc:${enc}`);
    t.notRegex(cacheStatus(reply), /; hit/);
  }
  t.is(origin.requests.filter((r) => r.method === 'GET').length, 4);
});

// ---- §4.3.2 If-Modified-Since without a stored Last-Modified ---------------------------------------

test('§4.3.2 If-Modified-Since is compared with the stored Date when there is no Last-Modified', async (t) => {
  const date = httpDate(-100);
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'max-age=600', date }, BODY));
  await fetchFrom(edge.url, '/d');
  await settle();
  const notModified = await fetchFrom(edge.url, '/d', { headers: { 'if-modified-since': httpDate(-50) } });
  t.is(notModified.status, 304);
  const same = await fetchFrom(edge.url, '/d', { headers: { 'if-modified-since': date } });
  t.is(same.status, 304);
  const modified = await fetchFrom(edge.url, '/d', { headers: { 'if-modified-since': httpDate(-1000) } });
  t.is(modified.status, 200);
  t.is(modified.text, BODY);
  t.is(origin.count('/d'), 1);
});

test('RFC 9110 §13.1.3 an If-Modified-Since that is not an HTTP-date is ignored', async (t) => {
  const { edge } = await stored(t);
  const reply = await fetchFrom(edge.url, '/r', { headers: { 'if-modified-since': '2999-01-01' } });
  t.is(reply.status, 200);
});
