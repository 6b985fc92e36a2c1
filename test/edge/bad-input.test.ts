/**
 * Bad input from both sides: malformed caching fields from the origin, malformed requests from
 * clients (raw sockets), and origins that break HTTP framing. The node must answer sensibly,
 * keep serving, and never store anything wrong.
 */
import test from 'ava';
import { cacheStatus, raw, delay, fetchFrom, header, send, settle, setup, startTestEdge } from '../helpers/harness.js';
import { rawOriginFor } from '../helpers/raw-origin.js';



/** A raw TCP origin (test/helpers/raw-origin.ts) closed with the test: `respond` gets the socket and the request's number. */

// ---- malformed caching fields from the origin --------------------------------------------------------

for (const cc of ['max-age=abc', 'max-age=-5', 'max-age=', 'max-age=1.5', 'max-age']) {
  test(`§1.2.2 an invalid delta-seconds ("${cc}") is treated as stale: served but not reused`, async (t) => {
    const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': cc }));
    const first = await fetchFrom(edge.url, '/bad-cc');
    t.is(first.status, 200);
    t.is(first.text, 'hello');
    await settle();
    const second = await fetchFrom(edge.url, '/bad-cc');
    t.is(second.status, 200);
    t.is(origin.count('/bad-cc'), 2);
  });
}

test('§5.2 a garbled Cache-Control list still yields its valid directives and the node keeps serving', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': ' ,, MAX-AGE=60 ,;; , foo="unterminated, bar' }));
  t.is((await fetchFrom(edge.url, '/garbled')).status, 200);
  await settle();
  const second = await fetchFrom(edge.url, '/garbled');
  t.is(second.status, 200);
  t.is(second.text, 'hello');
  t.is(origin.count('/garbled'), 1, 'max-age=60 (directive names are case-insensitive) still applies');
});

for (const expires of ['tomorrow', '-1', 'Thu, 99 Foo 2099 25:61:61 GMT']) {
  test(`§5.3 an invalid Expires ("${expires}") is treated as already expired`, async (t) => {
    const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { expires }));
    t.is((await fetchFrom(edge.url, '/bad-exp')).status, 200);
    await settle();
    t.is((await fetchFrom(edge.url, '/bad-exp')).status, 200);
    t.is(origin.count('/bad-exp'), 2);
  });
}

for (const age of ['abc', '-10', '1.5', '']) {
  test(`§5.1 an invalid Age ("${age}") is ignored; the Age sent on hits is a valid integer`, async (t) => {
    const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'max-age=60', age }));
    await fetchFrom(edge.url, '/bad-age');
    await settle();
    const hit = await fetchFrom(edge.url, '/bad-age');
    t.regex(cacheStatus(hit), /; hit/);
    t.regex(header(hit, 'age') ?? '', /^\d+$/);
    t.true(Number(header(hit, 'age')) < 5);
    t.is(origin.count('/bad-age'), 1);
  });
}

test('§5.1 a huge Age is capped and makes the response stale, not a crash', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'max-age=60', age: '99999999999999999999999' }));
  t.is((await fetchFrom(edge.url, '/huge-age')).status, 200);
  await settle();
  t.is((await fetchFrom(edge.url, '/huge-age')).status, 200);
  t.is(origin.count('/huge-age'), 2);
});

test('§4.1 a Vary with empty list members is parsed leniently and variants still work', async (t) => {
  const { origin, edge } = await setup(t, (q, res) => send(res, 200, { 'cache-control': 'max-age=60', vary: ' , Accept-Encoding,, ,' }, `enc:${q.headers['accept-encoding'] ?? '-'}`));
  await fetchFrom(edge.url, '/bad-vary', { headers: { 'accept-encoding': 'gzip' } });
  await settle();
  const hit = await fetchFrom(edge.url, '/bad-vary', { headers: { 'accept-encoding': 'gzip' } });
  const other = await fetchFrom(edge.url, '/bad-vary', { headers: { 'accept-encoding': 'br' } });
  t.is(hit.text, 'enc:gzip');
  t.regex(cacheStatus(hit), /; hit/);
  t.is(other.text, 'enc:br');
  t.is(origin.count('/bad-vary'), 2);
});

test('§4.1 a Vary of only empty members does not break the node', async (t) => {
  const { edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'max-age=60', vary: ', ,' }));
  t.is((await fetchFrom(edge.url, '/empty-vary')).status, 200);
  await settle();
  const again = await fetchFrom(edge.url, '/empty-vary');
  t.is(again.status, 200);
  t.is(again.text, 'hello');
});

// ---- malformed requests ---------------------------------------------------------------------------------

test('RFC 9110 §15.5.20 a 200 KiB request header gets 431 and the node keeps serving', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'no-store' }));
  const host = new URL(edge.url).host;
  const response = await raw(edge.url, `GET /big HTTP/1.1\r\nHost: ${host}\r\nX-Big: ${'a'.repeat(200 * 1024)}\r\n\r\n`);
  t.regex(response, /^HTTP\/1\.1 431 /);
  t.is(origin.count('/big'), 0);
  const after = await fetchFrom(edge.url, '/after');
  t.is(after.status, 200);
});

for (const [name, line] of [
  ['a control character in the target', 'GET /a\u0001b HTTP/1.1'],
  ['a space in the target', 'GET /a b HTTP/1.1'],
  ['a bad method token', 'G(E)T /a HTTP/1.1'],
  ['a bad protocol version', 'GET /a HTTP/9.Z'],
] as const) {
  test(`RFC 9112 §3 a request line with ${name} gets 400 and the node keeps serving`, async (t) => {
    const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'no-store' }));
    const host = new URL(edge.url).host;
    const response = await raw(edge.url, `${line}\r\nHost: ${host}\r\n\r\n`);
    t.regex(response, /^HTTP\/1\.1 400 /);
    t.is(origin.count(), 0);
    t.is((await fetchFrom(edge.url, '/ok')).status, 200);
  });
}

test('RFC 9112 §6.1 a request with both Content-Length and Transfer-Encoding gets 400 and is not forwarded', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, {}));
  const host = new URL(edge.url).host;
  const response = await raw(edge.url, `POST /smuggle HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: ${host}\r\n\r\n`);
  t.regex(response, /^HTTP\/1\.1 400 /);
  await delay(100);
  t.is(origin.count('/smuggle'), 0);
  t.is(origin.count('/smuggled'), 0);
  t.is((await fetchFrom(edge.url, '/ok')).status, 200);
});

test('RFC 9112 §6.3 conflicting Content-Length values get 400', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, {}));
  const host = new URL(edge.url).host;
  const response = await raw(edge.url, `POST /cl HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\nabcde`);
  t.regex(response, /^HTTP\/1\.1 400 /);
  t.is(origin.count('/cl'), 0);
});

// ---- origins that break framing ------------------------------------------------------------------------

test('an origin that resets mid-body: client sees truncation, nothing stored, next request refetches', async (t) => {
  const full = 'y'.repeat(1000);
  const origin = await rawOriginFor(t, (socket, { n }) => {
    if (n === 1) {
      socket.write(`HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nCache-Control: max-age=60\r\n\r\n${full.slice(0, 100)}`);
      setTimeout(() => socket.resetAndDestroy(), 30);
    } else {
      socket.write(`HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nCache-Control: max-age=60\r\n\r\n${full}`);
    }
  });
  const edge = await startTestEdge(origin.url);
  t.teardown(() => edge.close());
  const first = await fetchFrom(edge.url, '/reset').then(
    (r) => r.text,
    (e: Error) => `error:${e.message}`,
  );
  t.not(first, full);
  await settle();
  const second = await fetchFrom(edge.url, '/reset');
  t.is(second.text, full);
  t.is(origin.count(), 2);
  await settle();
  const third = await fetchFrom(edge.url, '/reset');
  t.is(third.text, full);
  t.regex(cacheStatus(third), /; hit/);
});

test('RFC 9112 §6.3 an origin that sends more bytes than its Content-Length: nothing is stored, the next request is fetched again, the node keeps serving', async (t) => {
  const origin = await rawOriginFor(t, (socket, { n }) => {
    if (n === 1) socket.write('HTTP/1.1 200 OK\r\nContent-Length: 5\r\nCache-Control: max-age=60\r\n\r\nhelloEXTRA-GARBAGE-THAT-IS-NOT-HTTP\r\n\r\n');
    else socket.write('HTTP/1.1 200 OK\r\nContent-Length: 5\r\nCache-Control: max-age=60\r\n\r\nfresh');
  });
  const edge = await startTestEdge(origin.url);
  t.teardown(() => edge.close());
  const first = await fetchFrom(edge.url, '/extra').then(
    (r) => ({ status: r.status, text: r.text }),
    () => undefined,
  );
  if (first !== undefined && first.status === 200) t.is(first.text, 'hello');
  await settle();
  const second = await fetchFrom(edge.url, '/extra');
  t.is(second.status, 200);
  t.is(second.text, 'fresh', 'the body that ran past its length was not stored');
  t.is(header(second, 'content-length'), '5');
  t.is(origin.count('/extra'), 2);
  // Another path on the same upstream still works (the poisoned connection is not reused).
  const other = await fetchFrom(edge.url, '/other');
  t.is(other.status, 200);
  t.false(other.text.includes('EXTRA'));
});

test('an origin that answers with garbage instead of HTTP gets 502 and nothing is stored', async (t) => {
  const origin = await rawOriginFor(t, (socket, { n }) => {
    if (n === 1) socket.end('THIS IS NOT HTTP\r\n\r\n');
    else socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: max-age=60\r\n\r\nok');
  });
  const edge = await startTestEdge(origin.url);
  t.teardown(() => edge.close());
  const first = await fetchFrom(edge.url, '/garbage');
  t.is(first.status, 502);
  const second = await fetchFrom(edge.url, '/garbage');
  t.is(second.status, 200);
  t.is(second.text, 'ok');
});

test('an origin response with conflicting Content-Length values gets 502 and nothing is stored', async (t) => {
  const origin = await rawOriginFor(t, (socket, { n }) => {
    if (n === 1) socket.end('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 5\r\nCache-Control: max-age=60\r\n\r\nhello');
    else socket.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: max-age=60\r\n\r\nok');
  });
  const edge = await startTestEdge(origin.url);
  t.teardown(() => edge.close());
  const first = await fetchFrom(edge.url, '/dupcl').then(
    (r) => r.status,
    () => 0,
  );
  t.not(first, 200);
  const second = await fetchFrom(edge.url, '/dupcl');
  t.is(second.text, 'ok');
});

test('§1.2.2 a huge max-age is clamped (2^31 s) and the response is stored', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'max-age=99999999999999999999' }));
  await fetchFrom(edge.url, '/huge');
  await settle();
  const hit = await fetchFrom(edge.url, '/huge');
  t.is(hit.status, 200);
  t.regex(cacheStatus(hit), /; hit/);
  t.is(origin.count('/huge'), 1);
});

test('RFC 9112 §3.2 a request without Host gets 400', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, {}));
  const response = await raw(edge.url, 'GET /nohost HTTP/1.1\r\n\r\n');
  t.regex(response, /^HTTP\/1\.1 400 /);
  t.is(origin.count(), 0);
});

test('RFC 9112 §3.2 a request with two Host field lines gets 400 (no cache-key confusion)', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'max-age=60' }));
  const host = new URL(edge.url).host;
  const response = await raw(edge.url, `GET /twohosts HTTP/1.1\r\nHost: ${host}\r\nHost: evil.example\r\nConnection: close\r\n\r\n`);
  t.regex(response, /^HTTP\/1\.1 400 /);
  t.is(origin.count(), 0);
});

test('RFC 9112 §3.2 a header field name with invalid characters gets 400', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, {}));
  const host = new URL(edge.url).host;
  const response = await raw(edge.url, `GET /badname HTTP/1.1\r\nHost: ${host}\r\nBad Name: x\r\n\r\n`);
  t.regex(response, /^HTTP\/1\.1 400 /);
  t.is(origin.count(), 0);
});

test('RFC 9112 §3.2.2 an absolute-form request target names the same resource (and cache entry) as origin-form', async (t) => {
  const { origin, edge } = await setup(t, (q, res) => send(res, 200, { 'cache-control': 'max-age=60' }, `url:${q.url}`));
  const host = new URL(edge.url).host;
  const normal = await fetchFrom(edge.url, '/abs');
  t.is(normal.text, 'url:/abs');
  await settle();
  const response = await raw(edge.url, `GET http://${host}/abs HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`);
  t.regex(response, /^HTTP\/1\.1 200 /);
  t.true(response.endsWith('url:/abs'), response.slice(-40));
  t.regex(response, /cache-status: [^\r\n]*; hit/i);
  t.is(origin.count(), 1);
});

test('§4.2.1 two conflicting Expires field lines make the response stale', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => {
    res.setHeader('content-length', 5);
    res.setHeader('expires', [new Date(Date.now() + 600_000).toUTCString(), new Date(Date.now() + 60_000).toUTCString()]);
    res.writeHead(200);
    res.end('hello');
  });
  await fetchFrom(edge.url, '/two-exp');
  await settle();
  await fetchFrom(edge.url, '/two-exp');
  t.is(origin.count('/two-exp'), 2);
});
