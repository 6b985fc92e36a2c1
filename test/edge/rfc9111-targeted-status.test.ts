/**
 * Targeted cache-control fields (RFC 9213 CDN-Cache-Control, Surrogate-Control) and the
 * Cache-Status response field (RFC 9211) at the edge.
 */
import test, { type ExecutionContext } from 'ava';
import type { OutgoingHttpHeaders } from 'node:http';
import { cacheStatus, fetchFrom, header, send, settle, setup } from '../helpers/harness.js';


async function twice(t: ExecutionContext, headers: OutgoingHttpHeaders, overrides: Record<string, unknown> = {}) {
  const ctx = await setup(t, (_q, res) => send(res, 200, headers), overrides);
  const first = await fetchFrom(ctx.edge.url, '/t');
  await settle();
  const second = await fetchFrom(ctx.edge.url, '/t');
  return { ...ctx, first, second };
}

// ---- RFC 9213 / Surrogate-Control ----------------------------------------------------------------

test('RFC 9213 §2.2 CDN-Cache-Control takes precedence over Cache-Control (stored despite Cache-Control: no-store)', async (t) => {
  const { origin, second } = await twice(t, { 'cache-control': 'no-store', 'cdn-cache-control': 'max-age=60' });
  t.is(origin.count('/t'), 1);
  t.regex(cacheStatus(second), /; hit/);
  t.is(header(second, 'cache-control'), 'no-store', 'Cache-Control is passed on for downstream caches');
});

test('RFC 9213 §2.2 CDN-Cache-Control: no-store prevents storing despite Cache-Control: max-age', async (t) => {
  const { origin } = await twice(t, { 'cache-control': 'max-age=60', 'cdn-cache-control': 'no-store' });
  t.is(origin.count('/t'), 2);
});

test('RFC 9213 §2.2 CDN-Cache-Control max-age governs the TTL instead of Cache-Control', async (t) => {
  const { second } = await twice(t, { 'cache-control': 'max-age=5', 'cdn-cache-control': 'max-age=100' });
  const ttl = Number(/ttl=(\d+)/.exec(cacheStatus(second))?.[1]);
  t.true(ttl >= 97 && ttl <= 100, `ttl=${ttl}`);
});

test('Surrogate-Control takes precedence over Cache-Control and is removed before delivery by the edge', async (t) => {
  const { origin, first, second } = await twice(t, { 'cache-control': 'private', 'surrogate-control': 'max-age=60' });
  t.is(origin.count('/t'), 1);
  t.regex(cacheStatus(second), /; hit/);
  t.is(header(first, 'surrogate-control'), undefined, 'removed on the miss');
  t.is(header(second, 'surrogate-control'), undefined, 'removed on the hit');
});

test('Surrogate-Control is removed by the edge even when the response is not stored', async (t) => {
  const { origin, first } = await twice(t, { 'surrogate-control': 'no-store' });
  t.is(origin.count('/t'), 2);
  t.is(header(first, 'surrogate-control'), undefined);
});

test('RFC 9213 CDN-Cache-Control takes precedence over Surrogate-Control', async (t) => {
  const { origin } = await twice(t, { 'cdn-cache-control': 'no-store', 'surrogate-control': 'max-age=60' });
  t.is(origin.count('/t'), 2);
});

// ---- RFC 9211 Cache-Status ------------------------------------------------------------------------------

test('RFC 9211 §2 a miss that is stored: fwd=uri-miss, fwd-status, stored', async (t) => {
  const { first } = await twice(t, { 'cache-control': 'max-age=60' });
  const cs = cacheStatus(first);
  t.regex(cs, /^outpost-edge; /);
  t.regex(cs, /fwd=uri-miss/);
  t.regex(cs, /fwd-status=200/);
  t.regex(cs, /; stored/);
});

test('RFC 9211 §2 a hit: hit with ttl', async (t) => {
  const { second } = await twice(t, { 'cache-control': 'max-age=60' });
  t.regex(cacheStatus(second), /^outpost-edge; hit; ttl=\d+/);
  t.notRegex(cacheStatus(second), /fwd=/);
});

test('RFC 9211 §2 a response that is not stored has fwd and fwd-status but no stored', async (t) => {
  const { first } = await twice(t, { 'cache-control': 'no-store' });
  t.regex(cacheStatus(first), /fwd=uri-miss/);
  t.regex(cacheStatus(first), /fwd-status=200/);
  t.notRegex(cacheStatus(first), /stored/);
});

test('RFC 9211 §2 fwd=stale when a stale stored response is revalidated', async (t) => {
  const { second } = await twice(t, { 'cache-control': 'max-age=60', age: '100', etag: '"s"' });
  t.regex(cacheStatus(second), /fwd=stale/);
});

test('RFC 9211 §2 fwd=method for unsafe methods', async (t) => {
  const { edge } = await setup(t, (_q, res) => send(res, 200, {}));
  const reply = await fetchFrom(edge.url, '/m', { method: 'POST', body: 'x' });
  t.regex(cacheStatus(reply), /fwd=method/);
  t.regex(cacheStatus(reply), /fwd-status=200/);
});

test('RFC 9211 §2 Cache-Status is on synthetic responses too (only-if-cached 504)', async (t) => {
  const { edge } = await setup(t, (_q, res) => send(res, 200, {}));
  const reply = await fetchFrom(edge.url, '/oic', { headers: { 'cache-control': 'only-if-cached' } });
  t.is(reply.status, 504);
  t.regex(cacheStatus(reply), /^outpost-edge; /);
});

test('RFC 9211 §2 key= appears only when cacheStatusKey is true', async (t) => {
  const off = await twice(t, { 'cache-control': 'max-age=60' });
  t.notRegex(cacheStatus(off.first), /key=/);
  t.notRegex(cacheStatus(off.second), /key=/);
  const on = await twice(t, { 'cache-control': 'max-age=60' }, { cacheStatusKey: true });
  const host = new URL(on.edge.url).host;
  t.true(cacheStatus(on.second).includes(`key="${new URL(on.edge.url).protocol}//${host}/t"`), cacheStatus(on.second));
});

test('RFC 9211 §2 an upstream Cache-Status member is kept in front of ours (miss and hit)', async (t) => {
  const { first, second } = await twice(t, { 'cache-control': 'max-age=60', 'cache-status': 'shield-1; fwd=uri-miss; stored' });
  t.regex(cacheStatus(first), /^shield-1; fwd=uri-miss; stored, outpost-edge; fwd=uri-miss/);
  t.regex(cacheStatus(second), /^shield-1; fwd=uri-miss; stored, outpost-edge; hit/);
});

test('RFC 9211 §2 an upstream Cache-Status member is kept on responses that are not stored', async (t) => {
  const { first } = await twice(t, { 'cache-control': 'no-store', 'cache-status': 'shield-1; fwd=uri-miss' });
  t.regex(cacheStatus(first), /^shield-1; fwd=uri-miss, outpost-edge; /);
});

for (const cc of ['no-cache', 'max-age=0', 'min-fresh=3600']) {
  test(`RFC 9211 §2.2 fwd=request when request directives (${cc}) forbid using a fresh stored response`, async (t) => {
    const { edge, origin } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'max-age=600' }));
    await fetchFrom(edge.url, '/fr');
    await settle();
    const reply = await fetchFrom(edge.url, '/fr', { headers: { 'cache-control': cc } });
    t.is(origin.count('/fr'), 2);
    t.regex(cacheStatus(reply), /fwd=request/);
  });
}

// ---- RFC 9213 §2.1: CDN-Cache-Control is a Structured Fields dictionary -------------------------------

for (const invalid of ['max-age=60,,', 'MAX-AGE=60', 'max-age=60;', 'max-age=(60', '', 'max-age="60']) {
  test(`RFC 9213 §2.1 a CDN-Cache-Control that does not parse (${JSON.stringify(invalid)}) is ignored whole: Cache-Control governs`, async (t) => {
    const { origin, second } = await twice(t, { 'cache-control': 'no-store', 'cdn-cache-control': invalid });
    t.is(origin.count('/t'), 2, 'Cache-Control: no-store applies');
    t.notRegex(cacheStatus(second), /; hit/);
  });
}

test('RFC 9213 §2.1 a CDN-Cache-Control that does not parse falls back to Cache-Control freshness', async (t) => {
  const { origin, second } = await twice(t, { 'cache-control': 'max-age=60', 'cdn-cache-control': 'no-store,,' });
  t.is(origin.count('/t'), 1);
  t.regex(cacheStatus(second), /; hit/);
});

for (const wrongType of ['max-age="60"', 'max-age=60.5', 'max-age=60.0', 'max-age=?1', 'max-age=-1', 'max-age=abc']) {
  test(`RFC 9213 §2.1 a directive value of the wrong type (${wrongType}) is invalid: the response is stale`, async (t) => {
    const { origin, second } = await twice(t, { 'cache-control': 'max-age=600', 'cdn-cache-control': wrongType });
    t.is(origin.count('/t'), 2);
    t.notRegex(cacheStatus(second), /; hit/);
  });
}

test('RFC 9213 §2.1 unknown keys are ignored; the known directives beside them apply', async (t) => {
  const { origin, second } = await twice(t, { 'cache-control': 'no-store', 'cdn-cache-control': 'foo=bar, max-age=60, baz' });
  t.is(origin.count('/t'), 1);
  t.regex(cacheStatus(second), /; hit/);
});

test('RFC 9213 §2.1 a Boolean false turns a directive off (no-store=?0)', async (t) => {
  const { origin } = await twice(t, { 'cdn-cache-control': 'no-store=?0, max-age=60' });
  t.is(origin.count('/t'), 1);
});
