/**
 * RFC 9111 §4.2 (freshness, age), §5.2.1 (request directives), §5.4 (Pragma) and the response
 * directives that forbid serving stale (§4.2.4, §5.2.2) against a real edge and origin.
 */
import test, { type ExecutionContext } from 'ava';
import type { OutgoingHttpHeaders } from 'node:http';
import { cacheStatus, delay, fetchFrom, header, httpDate, send, settle, setup, type Reply } from '../helpers/harness.js';


function ttlOf(r: Reply): number {
  const match = /ttl=(-?\d+)/.exec(cacheStatus(r));
  if (!match) throw new Error(`no ttl in Cache-Status: ${cacheStatus(r)}`);
  return Number(match[1]);
}

/** Stores `headers` for `path` and returns the first hit. */
async function storeThenHit(t: ExecutionContext, headers: OutgoingHttpHeaders, overrides: Record<string, unknown> = {}) {
  const ctx = await setup(t, (_q, res) => send(res, 200, { date: httpDate(), ...headers }), overrides);
  await fetchFrom(ctx.edge.url, '/f');
  await settle();
  const hit = await fetchFrom(ctx.edge.url, '/f');
  return { ...ctx, hit };
}

// ---- §4.2.1 freshness lifetime ----------------------------------------------------------------

test('§4.2.1 s-maxage takes precedence over max-age in a shared cache', async (t) => {
  const { hit, origin } = await storeThenHit(t, { 'cache-control': 'max-age=10, s-maxage=100' });
  t.is(origin.count('/f'), 1);
  const ttl = ttlOf(hit);
  t.true(ttl >= 97 && ttl <= 100, `ttl=${ttl}`);
});

test('§4.2.1 max-age takes precedence over Expires', async (t) => {
  const { hit } = await storeThenHit(t, { 'cache-control': 'max-age=50', expires: httpDate(1000) });
  const ttl = ttlOf(hit);
  t.true(ttl >= 47 && ttl <= 50, `ttl=${ttl}`);
});

test('§4.2.1 without max-age, freshness is Expires − Date', async (t) => {
  const { hit, origin } = await storeThenHit(t, { expires: httpDate(100) });
  t.is(origin.count('/f'), 1);
  const ttl = ttlOf(hit);
  t.true(ttl >= 97 && ttl <= 100, `ttl=${ttl}`);
});

test('§4.2.2 heuristic freshness is 10% of (Date − Last-Modified)', async (t) => {
  const { hit, origin } = await storeThenHit(t, { 'last-modified': httpDate(-1000) });
  t.is(origin.count('/f'), 1);
  const ttl = ttlOf(hit);
  t.true(ttl >= 97 && ttl <= 100, `ttl=${ttl}`);
});

test('§4.2.2 heuristic freshness is capped by heuristicMaxSec', async (t) => {
  const { hit } = await storeThenHit(t, { 'last-modified': httpDate(-1_000_000) }, { heuristicMaxSec: 5 });
  const ttl = ttlOf(hit);
  t.true(ttl >= 3 && ttl <= 5, `ttl=${ttl}`);
});

test('§5.3 an invalid Expires ("0") means already expired: not served from cache', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { expires: '0' }));
  await fetchFrom(edge.url, '/e0');
  await settle();
  const second = await fetchFrom(edge.url, '/e0');
  t.is(origin.count('/e0'), 2);
  t.notRegex(cacheStatus(second), /; hit/);
});

test('§4.2.1 conflicting duplicate max-age directives make the response stale', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => {
    res.setHeader('content-length', 5);
    res.setHeader('cache-control', ['max-age=600', 'max-age=10']);
    res.writeHead(200);
    res.end('hello');
  });
  await fetchFrom(edge.url, '/dup');
  await settle();
  const second = await fetchFrom(edge.url, '/dup');
  t.is(origin.count('/dup'), 2);
  t.notRegex(cacheStatus(second), /; hit/);
});

// ---- §4.2.3 age -------------------------------------------------------------------------------

test('§4.2.3 an upstream Age is subtracted from the lifetime and sent on hits', async (t) => {
  const { hit } = await storeThenHit(t, { 'cache-control': 'max-age=60', age: '30' });
  const ttl = ttlOf(hit);
  t.true(ttl >= 27 && ttl <= 30, `ttl=${ttl}`);
  const age = Number(header(hit, 'age'));
  t.true(age >= 30 && age <= 33, `age=${age}`);
});

test('§4.2.3/§5.1 the Age of a hit grows with time in the cache', async (t) => {
  const { edge, hit } = await storeThenHit(t, { 'cache-control': 'max-age=60' });
  const before = Number(header(hit, 'age'));
  t.false(Number.isNaN(before));
  await delay(1100);
  const later = await fetchFrom(edge.url, '/f');
  t.regex(cacheStatus(later), /; hit/);
  t.true(Number(header(later, 'age')) >= before + 1, `age ${before} then ${header(later, 'age')}`);
});

test('§4.2.3 a response whose Age exceeds max-age is stale on arrival', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'max-age=60', age: '120' }));
  await fetchFrom(edge.url, '/old');
  await settle();
  await fetchFrom(edge.url, '/old');
  t.is(origin.count('/old'), 2);
});

// ---- §5.2.1 request directives ------------------------------------------------------------------

test('§5.2.1.4 request no-cache forwards (revalidates) even when a fresh response is stored', async (t) => {
  const { origin, edge } = await setup(t, (q, res) => {
    if (q.headers['if-none-match'] === '"v1"') return void send(res, 304, { etag: '"v1"', 'cache-control': 'max-age=60' }, '');
    send(res, 200, { etag: '"v1"', 'cache-control': 'max-age=60' });
  });
  await fetchFrom(edge.url, '/nc');
  await settle();
  const second = await fetchFrom(edge.url, '/nc', { headers: { 'cache-control': 'no-cache' } });
  t.is(second.status, 200);
  t.is(second.text, 'hello');
  t.is(origin.count('/nc'), 2);
});

test('§5.4 Pragma: no-cache without Cache-Control acts as request no-cache', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'max-age=60' }));
  await fetchFrom(edge.url, '/pragma');
  await settle();
  await fetchFrom(edge.url, '/pragma', { headers: { pragma: 'no-cache' } });
  t.is(origin.count('/pragma'), 2);
});

test('§5.4 Pragma: no-cache is ignored when Cache-Control is present', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'max-age=60' }));
  await fetchFrom(edge.url, '/pragma2');
  await settle();
  const second = await fetchFrom(edge.url, '/pragma2', { headers: { pragma: 'no-cache', 'cache-control': 'max-stale=0' } });
  t.is(origin.count('/pragma2'), 1);
  t.regex(cacheStatus(second), /; hit/);
});

test('§5.2.1.1 request max-age: a stored response older than it is not used', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'max-age=600', age: '30' }));
  await fetchFrom(edge.url, '/ma');
  await settle();
  const ok = await fetchFrom(edge.url, '/ma', { headers: { 'cache-control': 'max-age=300' } });
  t.regex(cacheStatus(ok), /; hit/);
  t.is(origin.count('/ma'), 1);
  await fetchFrom(edge.url, '/ma', { headers: { 'cache-control': 'max-age=10' } });
  t.is(origin.count('/ma'), 2);
});

test('§5.2.1.2 request max-stale accepts a stale stored response', async (t) => {
  // Age > max-age: stale on arrival, kept because it has a validator.
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'max-age=60', age: '100', etag: '"s"' }));
  await fetchFrom(edge.url, '/ms');
  await settle();
  const stale = await fetchFrom(edge.url, '/ms', { headers: { 'cache-control': 'max-stale=3600' } });
  t.is(stale.status, 200);
  t.is(stale.text, 'hello');
  t.is(origin.count('/ms'), 1);
  t.regex(cacheStatus(stale), /fwd=stale/);
  const tooStale = await fetchFrom(edge.url, '/ms', { headers: { 'cache-control': 'max-stale=5' } });
  t.is(tooStale.status, 200);
  t.is(origin.count('/ms'), 2);
});

test('§5.2.1.3 request min-fresh: a response fresh for less than it is not used', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'max-age=60' }));
  await fetchFrom(edge.url, '/mf');
  await settle();
  const ok = await fetchFrom(edge.url, '/mf', { headers: { 'cache-control': 'min-fresh=10' } });
  t.regex(cacheStatus(ok), /; hit/);
  await fetchFrom(edge.url, '/mf', { headers: { 'cache-control': 'min-fresh=120' } });
  t.is(origin.count('/mf'), 2);
});

test('§5.2.1.7 only-if-cached with nothing stored gets 504 and the origin is not contacted', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'max-age=60' }));
  const reply = await fetchFrom(edge.url, '/oic', { headers: { 'cache-control': 'only-if-cached' } });
  t.is(reply.status, 504);
  t.is(origin.count(), 0);
});

test('§5.2.1.7 only-if-cached is served when a fresh response is stored', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'max-age=60' }, 'cached'));
  await fetchFrom(edge.url, '/oic2');
  await settle();
  const reply = await fetchFrom(edge.url, '/oic2', { headers: { 'cache-control': 'only-if-cached' } });
  t.is(reply.status, 200);
  t.is(reply.text, 'cached');
  t.is(origin.count('/oic2'), 1);
});

test('§5.2.1.7 only-if-cached with only a stale stored response gets 504', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'max-age=60', age: '100', etag: '"x"' }));
  await fetchFrom(edge.url, '/oic3');
  await settle();
  const reply = await fetchFrom(edge.url, '/oic3', { headers: { 'cache-control': 'only-if-cached' } });
  t.is(reply.status, 504);
  t.is(origin.count('/oic3'), 1);
});

// ---- response no-cache, must-revalidate & co ---------------------------------------------------

test('§5.2.2.4 response no-cache: stored, revalidated on every use, a 304 serves the stored body', async (t) => {
  const { origin, edge } = await setup(t, (q, res) => {
    if (q.headers['if-none-match'] === '"nc1"') return void send(res, 304, { etag: '"nc1"', 'cache-control': 'no-cache' }, '');
    send(res, 200, { etag: '"nc1"', 'cache-control': 'no-cache' }, 'body-1');
  });
  const first = await fetchFrom(edge.url, '/rnc');
  t.is(first.text, 'body-1');
  await settle();
  for (let i = 0; i < 2; i++) {
    const again = await fetchFrom(edge.url, '/rnc');
    t.is(again.status, 200);
    t.is(again.text, 'body-1');
    await settle();
  }
  t.is(origin.count('/rnc'), 3);
  t.is(origin.requests[0]!.headers['if-none-match'], undefined);
  t.is(origin.requests[1]!.headers['if-none-match'], '"nc1"');
  t.is(origin.requests[2]!.headers['if-none-match'], '"nc1"');
});

/** A stored, stale response with a validator; then the origin goes away. */
async function staleThenOriginDown(t: ExecutionContext, cacheControl: string) {
  const ctx = await setup(t, (_q, res) => send(res, 200, { 'cache-control': cacheControl, age: '100', etag: '"d"' }, 'stale-body'), { defaultStaleIfErrorSec: 3600 });
  await fetchFrom(ctx.edge.url, '/down');
  await settle();
  await ctx.origin.close();
  return fetchFrom(ctx.edge.url, '/down');
}

test('RFC 5861 stale-if-error (defaultStaleIfErrorSec) serves stale when the origin is down (control)', async (t) => {
  const reply = await staleThenOriginDown(t, 'max-age=60');
  t.is(reply.status, 200);
  t.is(reply.text, 'stale-body');
  t.regex(cacheStatus(reply), /fwd=stale/);
});

for (const cc of ['max-age=60, must-revalidate', 'max-age=60, proxy-revalidate', 's-maxage=60']) {
  test(`§4.2.4/§5.2.2 "${cc}" forbids serving stale even with stale-if-error configured`, async (t) => {
    const reply = await staleThenOriginDown(t, cc);
    t.true(reply.status === 502 || reply.status === 504, `status ${reply.status}`);
    t.not(reply.text, 'stale-body');
  });
}

test('§5.2.2.2 must-revalidate: request max-stale does not allow serving the stale response', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'max-age=60, must-revalidate', age: '100', etag: '"m"' }));
  await fetchFrom(edge.url, '/mr');
  await settle();
  await fetchFrom(edge.url, '/mr', { headers: { 'cache-control': 'max-stale' } });
  t.is(origin.count('/mr'), 2);
});

test('RFC 5861 §3 the stale-while-revalidate window is measured from when the response became stale (Age counts)', async (t) => {
  // Age 100 with max-age=60: stale for 40 s already, beyond the 30 s window: must not be served stale.
  const { origin, edge } = await setup(t, (_q, res, _b, n) =>
    send(res, 200, { 'cache-control': 'max-age=60, stale-while-revalidate=30', age: n === 1 ? '100' : '0', etag: `"w${n}"` }, `version-${n}`),
  );
  await fetchFrom(edge.url, '/swr');
  await settle();
  const second = await fetchFrom(edge.url, '/swr');
  t.is(second.text, 'version-2', 'forwarded synchronously, not served stale');
  t.notRegex(cacheStatus(second), /background-revalidate/);
  t.is(origin.count('/swr'), 2);
});

test('RFC 5861 §4 the stale-if-error window is measured from when the response became stale (Age counts)', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'max-age=60, stale-if-error=30', age: '100', etag: '"e"' }, 'stale-body'));
  await fetchFrom(edge.url, '/sie');
  await settle();
  await origin.close();
  const reply = await fetchFrom(edge.url, '/sie');
  t.is(reply.status, 502, 'stale for 40 s, beyond the 30 s stale-if-error window');
  t.not(reply.text, 'stale-body');
});

test('RFC 5861 §4 stale-if-error within its window serves stale when the origin is down (control)', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'max-age=60, stale-if-error=300', age: '100', etag: '"e"' }, 'stale-body'));
  await fetchFrom(edge.url, '/sie2');
  await settle();
  await origin.close();
  const reply = await fetchFrom(edge.url, '/sie2');
  t.is(reply.status, 200);
  t.is(reply.text, 'stale-body');
});

// ---- RFC 9110 §5.6.7: Expires in every HTTP-date format; anything else means stale ----------------

function rfc850(ms: number): string {
  const d = new Date(ms);
  const day = ['Sunday', 'Monday', 'Tuesday', 'Wednesday', 'Thursday', 'Friday', 'Saturday'][d.getUTCDay()];
  const [, dd, mon, yyyy, time] = d.toUTCString().split(' ');
  return `${day}, ${dd}-${mon}-${yyyy!.slice(2)} ${time} GMT`;
}

function asctime(ms: number): string {
  const [wkd, dd, mon, yyyy, time] = new Date(ms).toUTCString().split(' ');
  return `${wkd!.slice(0, 3)} ${mon} ${dd!.replace(/^0/, ' ')} ${time} ${yyyy}`;
}

for (const [format, expires] of [
  ['rfc850-date', () => rfc850(Date.now() + 100_000)],
  ['asctime-date', () => asctime(Date.now() + 100_000)],
] as const) {
  test(`§4.2.1 + RFC 9110 §5.6.7 an Expires in ${format} format gives freshness`, async (t) => {
    const { hit, origin } = await storeThenHit(t, { expires: expires() });
    t.is(origin.count('/f'), 1);
    const ttl = ttlOf(hit);
    t.true(ttl >= 95 && ttl <= 100, `ttl=${ttl}`);
  });
}

for (const expires of ['Thu, 01 Jan 2099 00:00:00 UTC', 'Thu 01 Jan 2099 00:00:00 GMT', '2099-01-01T00:00:00Z', 'Thu, 01-Jan-2099 00:00:00 GMT', 'Thu, 1 Jan 2099 00:00:00 GMT']) {
  test(`§5.3 an Expires that is not an HTTP-date (${JSON.stringify(expires)}) makes the response stale`, async (t) => {
    const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { date: httpDate(), expires }));
    await fetchFrom(edge.url, '/bad-date');
    await settle();
    const second = await fetchFrom(edge.url, '/bad-date');
    t.is(origin.count('/bad-date'), 2);
    t.notRegex(cacheStatus(second), /; hit/);
  });
}

// ---- §5.1 Age ---------------------------------------------------------------------------------------

for (const [age, stale] of [
  ['7200, 0', true],
  ['7200;foo=bar', true],
  ['0, 7200', false],
  ['7200.0', false],
  ['abc', false],
] as const) {
  test(`§5.1 Age: ${age} counts as ${stale ? '7200 (stale)' : 'invalid or 0 (fresh)'} for a max-age=3600 response`, async (t) => {
    const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { date: httpDate(), 'cache-control': 'max-age=3600', age }));
    await fetchFrom(edge.url, '/age');
    await settle();
    const second = await fetchFrom(edge.url, '/age');
    t.is(origin.count('/age'), stale ? 2 : 1, cacheStatus(second));
  });
}
