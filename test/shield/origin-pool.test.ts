import test from 'ava';
import { UpstreamError } from '../../pipeline/upstream.js';
import { toUpstreamError } from '../../pipeline/http-upstream.js';
import { OriginPool, type OriginPoolEjectedEvent } from '../../origin-shield/origin-pool.js';
import { HashRing } from '../../origin-shield/hash-ring.js';
import { closeAll, getRequest, postRequest, readText, startTestOrigins } from './fixtures/test-origin.js';

async function setup(t: { teardown(fn: () => Promise<void> | void): void }, count: number, options: Omit<ConstructorParameters<typeof OriginPool>[0], 'members'> = {}) {
  const origins = await startTestOrigins(count);
  const pool = new OriginPool({ members: origins.map((o) => o.url), upstream: { connectTimeoutMs: 1_000, keepAliveTimeoutMs: 500 }, ...options });
  t.teardown(async () => {
    await pool.close();
    await closeAll(origins);
  });
  return { origins, pool };
}

async function getText(pool: OriginPool, path = '/x', cacheKey?: string): Promise<{ status: number; text: string; member: string }> {
  const response = await pool.request(getRequest(path, cacheKey));
  return { status: response.statusCode, text: await readText(response), member: response.member };
}

test('round-robin spreads requests over real origins in turn', async (t) => {
  const { origins, pool } = await setup(t, 3);
  const served: string[] = [];
  for (let i = 0; i < 6; i++) served.push((await getText(pool)).text);
  t.deepEqual(served, ['A', 'B', 'C', 'A', 'B', 'C']);
  t.deepEqual(origins.map((o) => o.requests), [2, 2, 2]);
  t.deepEqual(pool.members().map((m) => m.pending), [0, 0, 0], 'pending released once bodies were read');
});

test('weights shape the round-robin share', async (t) => {
  const origins = await startTestOrigins(2);
  const pool = new OriginPool({ members: [{ url: origins[0]!.url, weight: 3 }, { url: origins[1]!.url, weight: 1 }] });
  t.teardown(async () => { await pool.close(); await closeAll(origins); });
  for (let i = 0; i < 8; i++) await getText(pool);
  t.deepEqual(origins.map((o) => o.requests), [6, 2]);
});

test('a killed origin: every request still succeeds through a retry, and the dead one is ejected', async (t) => {
  const { origins, pool } = await setup(t, 3, { outlierDetection: { consecutiveConnectFailures: 2, baseEjectionMs: 60_000 } });
  const ejected: OriginPoolEjectedEvent[] = [];
  pool.on('ejected', (e) => ejected.push(e));
  const dead = origins[1]!;
  await getText(pool); // warm a connection to A; B is next in turn
  await dead.close();

  for (let i = 0; i < 30; i++) {
    const { status, text } = await getText(pool);
    t.is(status, 200);
    t.not(text, 'B');
  }
  t.is(ejected.length, 1);
  t.like(ejected[0], { url: dead.url, reason: 'connect', ejections: 1, durationMs: 60_000 });
  const stats = pool.stats();
  // Exactly two failed tries reached B (the threshold), each rescued by one retry; none after the ejection.
  t.is(stats.retries, 2);
  t.is(stats.attempts, 31 + 2);
  t.is(stats.ejections, 1);
  const state = pool.members().find((m) => m.url === dead.url)!;
  t.true(state.ejected);
  t.is(state.ejections, 1);
  t.true(state.ejectedUntil! > Date.now());
});

test('an ejected origin returns to service after its ejection time', async (t) => {
  const time = { now: 1_000_000 };
  const { origins, pool } = await setup(t, 2, { now: () => time.now, outlierDetection: { consecutive5xx: 2, baseEjectionMs: 5_000 } });
  origins[0]!.mode = '5xx';
  const returned: string[] = [];
  pool.on('returned', (e) => returned.push(e.url));
  const statuses: number[] = [];
  for (let i = 0; i < 6; i++) statuses.push((await getText(pool)).status);
  // 5xx responses are answers: returned as they are, not retried.
  t.deepEqual(statuses, [503, 200, 503, 200, 200, 200]);
  t.is(pool.stats().retries, 0);
  t.deepEqual(origins.map((o) => o.requests), [2, 4]);
  origins[0]!.mode = 'ok';
  time.now += 5_000;
  const served: string[] = [];
  for (let i = 0; i < 4; i++) served.push((await getText(pool)).text);
  t.deepEqual(returned, [origins[0]!.url]);
  t.true(served.includes('A'), `A back in rotation: ${served.join('')}`);
});

test('every origin unhealthy by active checks: traffic still goes to all of them (panic mode)', async (t) => {
  const { origins, pool } = await setup(t, 2, { healthCheck: { intervalMs: 60_000, unhealthyThreshold: 1 } });
  for (const o of origins) o.healthStatus = 500;
  await pool.checkHealth();
  t.deepEqual(pool.members().map((m) => m.healthy), [false, false]);
  for (let i = 0; i < 4; i++) t.is((await getText(pool)).status, 200);
  t.deepEqual(origins.map((o) => o.requests), [2, 2]);
  t.true(pool.stats().panics >= 4);
});

test('an origin failing active checks gets no traffic while another is healthy', async (t) => {
  const { origins, pool } = await setup(t, 2, { healthCheck: { intervalMs: 60_000, unhealthyThreshold: 1, healthyThreshold: 1 } });
  const changes: boolean[] = [];
  pool.on('health', (c) => changes.push(c.healthy));
  origins[0]!.healthStatus = 503;
  await pool.checkHealth();
  for (let i = 0; i < 4; i++) t.is((await getText(pool)).text, 'B');
  origins[0]!.healthStatus = 200;
  await pool.checkHealth();
  const served = new Set<string>();
  for (let i = 0; i < 4; i++) served.add((await getText(pool)).text);
  t.deepEqual([...served].sort(), ['A', 'B']);
  t.deepEqual(changes, [false, true]);
});

test('every origin ejected: traffic still goes to them (panic mode)', async (t) => {
  const { origins, pool } = await setup(t, 2, { outlierDetection: { consecutive5xx: 1, maxEjectionPercent: 100 } });
  for (const o of origins) o.mode = '5xx';
  await getText(pool);
  await getText(pool);
  t.deepEqual(pool.members().map((m) => m.ejected), [true, true]);
  for (const o of origins) o.mode = 'ok';
  t.is((await getText(pool)).status, 200);
  t.is(origins[0]!.requests + origins[1]!.requests, 3);
});

test('circuit breaking: with every origin at its cap the pool answers UPSTREAM_OVERLOADED (503)', async (t) => {
  const { origins, pool } = await setup(t, 2, { maxRequestsPerMember: 2 });
  for (const o of origins) o.mode = 'hold';
  const inFlight = Array.from({ length: 4 }, () => pool.request(getRequest('/slow')));
  t.deepEqual(pool.members().map((m) => m.pending), [2, 2]);
  const error = await t.throwsAsync(pool.request(getRequest('/more')), { instanceOf: UpstreamError });
  t.is(error!.code, 'UPSTREAM_OVERLOADED');
  t.is(error!.status, 503);
  t.false(error!.retryable);
  t.is(pool.stats().overloaded, 1);

  while (origins[0]!.held + origins[1]!.held < 4) await new Promise((r) => setTimeout(r, 5));
  for (const o of origins) { o.mode = 'ok'; o.release(); }
  for (const response of await Promise.all(inFlight)) t.is(await readText(response), response.member === origins[0]!.url ? 'A' : 'B');
  t.deepEqual(pool.members().map((m) => m.pending), [0, 0]);
  t.is((await getText(pool)).status, 200, 'closed again once requests finish');
});

test('one member at its cap: requests go to the other', async (t) => {
  const { origins, pool } = await setup(t, 2, { maxRequestsPerMember: 1 });
  origins[0]!.mode = 'hold';
  const held = pool.request(getRequest('/slow')); // A
  for (let i = 0; i < 3; i++) t.is((await getText(pool)).text, 'B');
  while (origins[0]!.held < 1) await new Promise((r) => setTimeout(r, 5));
  origins[0]!.release();
  t.is(await readText(await held), 'A');
});

test('a non-idempotent request with a body is never retried, even on a refused connection', async (t) => {
  const { origins, pool } = await setup(t, 2);
  await origins[0]!.close(); // round-robin tries A first
  const error = await t.throwsAsync(pool.request(postRequest('/orders', 'payload')), { instanceOf: UpstreamError });
  t.is(error!.code, 'UPSTREAM_CONNECT');
  t.is(error!.status, 502);
  t.is(origins[1]!.requests, 0);
  t.is(pool.stats().retries, 0);
});

test('a GET with no body after a refused connection is retried on another origin; so is a bodiless POST (nothing was sent)', async (t) => {
  const { origins, pool } = await setup(t, 3);
  await origins[0]!.close();
  const get = await getText(pool); // round-robin tries A first
  t.is(get.text, 'B');
  t.is(pool.stats().retries, 1);

  const fresh = new OriginPool({ members: origins.map((o) => o.url) }); // A first again
  t.teardown(() => fresh.close());
  const response = await fresh.request(postRequest('/ping', null));
  t.is(response.statusCode, 200);
  t.not(await readText(response), 'A');
  t.is(fresh.stats().retries, 1);
});

test('a reset: an idempotent request is retried elsewhere, a non-idempotent one is not', async (t) => {
  const { origins, pool } = await setup(t, 2, { balancer: 'consistent-hash', outlierDetection: false });
  const ring = new HashRing(origins.map((o) => ({ id: o.url })));
  const key = 'http://example.test/reset-me';
  const owner = origins.find((o) => o.url === ring.lookup(key)!.id)!;
  const other = origins.find((o) => o !== owner)!;
  owner.mode = 'reset';
  const get = await getText(pool, '/r', key);
  t.is(get.member, other.url);
  t.is(pool.stats().retries, 1);

  const post = postRequest('/r', null);
  post.cacheKey = key;
  const error = await t.throwsAsync(pool.request(post), { instanceOf: UpstreamError });
  t.is(error!.code, 'UPSTREAM_CONNECT');
  t.false(error!.retryable);
  t.is(other.requests, 1, 'the POST did not reach the other origin');
});

test('a reset after the request was sent is retried only within the retry budget: none with a zero budget', async (t) => {
  const { origins, pool } = await setup(t, 2, { retryBudget: { budgetPercent: 0, minRetryConcurrency: 0 }, outlierDetection: false });
  origins[0]!.mode = 'reset'; // round-robin tries A first; A reads the request, then resets
  const error = await t.throwsAsync(pool.request(getRequest('/x')), { instanceOf: UpstreamError });
  t.is(error!.code, 'UPSTREAM_CONNECT');
  t.true(error!.retryable, 'an idempotent GET may be repeated…');
  t.false(error!.neverSent, '…but it was sent, so the retry needs the budget');
  t.is(origins[0]!.requests, 1);
  t.is(origins[1]!.requests, 0);
  t.like(pool.stats(), { retries: 0, retriesNeverSent: 0, retriesDenied: 1 });
});

test('no retry when maxAttempts is 1, even of a request that was never sent', async (t) => {
  const { origins } = await setup(t, 2);
  await origins[0]!.close();
  const single = new OriginPool({ members: origins.map((o) => o.url), maxAttempts: 1 });
  t.teardown(() => single.close());
  const error = await t.throwsAsync(single.request(getRequest('/x')), { instanceOf: UpstreamError, message: /ECONNREFUSED/ });
  t.true(error!.neverSent);
  t.is(single.stats().retries, 0);
  t.is(origins[1]!.requests, 0);
});

test('a refused connection (never sent) is retried outside the retry budget: 50 concurrent requests with a zero budget all succeed', async (t) => {
  const live = (await startTestOrigins(1))[0]!;
  // A port nothing listens on: bind one, note it, close it.
  const dead = await startTestOrigins(1).then(([o]) => o!);
  const deadUrl = dead.url;
  await dead.close();
  // Round-robin sends every other first try to the dead member; no ejection, so all 50 meet it.
  const pool = new OriginPool({
    members: [deadUrl, live.url],
    retryBudget: { budgetPercent: 0, minRetryConcurrency: 0 },
    outlierDetection: false,
  });
  t.teardown(async () => {
    await pool.close();
    await live.close();
  });
  const results = await Promise.all(Array.from({ length: 50 }, (_, i) => getText(pool, `/c/${i}`).catch((e: Error) => ({ status: 0, text: e.message, member: '' }))));
  t.deepEqual(results.filter((r) => r.status !== 200), [], 'every request succeeded');
  t.true(results.every((r) => r.member === live.url && r.text === 'A'));
  t.is(live.requests, 50);
  const stats = pool.stats();
  t.is(stats.retriesDenied, 0);
  t.true(stats.retriesNeverSent >= 25, `${stats.retriesNeverSent} never-sent retries`);
  t.is(stats.retries, stats.retriesNeverSent);
  t.is(stats.attempts, 50 + stats.retries);
});

test('a never-sent retry never goes back to the member that refused it, and stops when every member is tried', async (t) => {
  const gone = await startTestOrigins(2);
  const urls = gone.map((o) => o.url);
  await closeAll(gone);
  const pool = new OriginPool({ members: urls, maxAttempts: 5, retryBudget: { budgetPercent: 0, minRetryConcurrency: 0 }, outlierDetection: false });
  t.teardown(() => pool.close());
  const error = await t.throwsAsync(pool.request(getRequest('/x')), { instanceOf: UpstreamError, message: /ECONNREFUSED/ });
  t.true(error!.neverSent);
  // Two members, each tried once, although maxAttempts would allow five.
  t.like(pool.stats(), { attempts: 2, retries: 1, retriesNeverSent: 1, retriesDenied: 0 });
});

test('consistent-hash pool: the same cache key always reaches the same origin', async (t) => {
  const { origins, pool } = await setup(t, 3, { balancer: 'consistent-hash' });
  const ring = new HashRing(origins.map((o) => ({ id: o.url })));
  for (let k = 0; k < 12; k++) {
    const key = `http://example.test/object/${k}`;
    for (let i = 0; i < 2; i++) t.is((await getText(pool, '/o', key)).member, ring.lookup(key)!.id);
  }
});

test('least-request pool sends new requests away from a member with requests in flight', async (t) => {
  const { origins, pool } = await setup(t, 2, { balancer: 'least-request' });
  origins[0]!.mode = 'hold';
  origins[1]!.mode = 'hold';
  const first = pool.request(getRequest('/a'));
  const loaded = pool.members().find((m) => m.pending === 1)!;
  while (origins[0]!.held + origins[1]!.held < 1) await new Promise((r) => setTimeout(r, 5));
  origins.forEach((o) => { o.mode = 'ok'; });
  for (let i = 0; i < 3; i++) t.not((await getText(pool)).member, loaded.url);
  origins.forEach((o) => o.release());
  await readText(await first);
});

test('a client abort is not held against the origin and is not retried', async (t) => {
  const { origins, pool } = await setup(t, 2);
  origins[0]!.mode = 'hold';
  const controller = new AbortController();
  const pending = pool.request({ ...getRequest('/slow'), signal: controller.signal });
  while (origins[0]!.held < 1) await new Promise((r) => setTimeout(r, 5));
  controller.abort();
  await t.throwsAsync(pending);
  t.is(origins[1]!.requests, 0);
  t.like(pool.members()[0], { consecutiveConnectFailures: 0, consecutive5xx: 0, pending: 0 });
  origins[0]!.release();
});

test('members() reports state for the admin API', async (t) => {
  const { origins, pool } = await setup(t, 2);
  t.deepEqual(pool.members(), origins.map((o) => ({
    url: o.url, weight: 1, healthy: true, ejected: false, ejectedUntil: null, pending: 0, ejections: 0, consecutive5xx: 0, consecutiveConnectFailures: 0,
  })));
});

test('configuration errors are reported at construction', (t) => {
  t.throws(() => new OriginPool({ members: [] }), { message: /at least one/ });
  t.throws(() => new OriginPool({ members: ['http://127.0.0.1:1', 'http://127.0.0.1:1/'] }), { message: /twice/ });
  t.throws(() => new OriginPool({ members: ['http://127.0.0.1:1'], maxAttempts: 0 }), { instanceOf: RangeError });
});

test('toUpstreamError: only errors from connect() or DNS are never-sent; the same code on an open socket is not', (t) => {
  const fromConnect = Object.assign(new Error('connect EHOSTUNREACH 10.0.0.1:80'), { code: 'EHOSTUNREACH', syscall: 'connect' });
  const fromRead = Object.assign(new Error('read EHOSTUNREACH'), { code: 'EHOSTUNREACH', syscall: 'read' });
  const fromDns = Object.assign(new Error('getaddrinfo ENOTFOUND x.invalid'), { code: 'ENOTFOUND', syscall: 'getaddrinfo' });
  t.like(toUpstreamError(fromConnect, 'http://o', false), { code: 'UPSTREAM_CONNECT', neverSent: true, retryable: true });
  t.like(toUpstreamError(fromDns, 'http://o', false), { code: 'UPSTREAM_CONNECT', neverSent: true, retryable: true });
  // Possibly sent: retryable only for an idempotent request, and never outside the budget.
  t.like(toUpstreamError(fromRead, 'http://o', false), { code: 'UPSTREAM_CONNECT', neverSent: false, retryable: false });
  t.like(toUpstreamError(fromRead, 'http://o', true), { code: 'UPSTREAM_CONNECT', neverSent: false, retryable: true });
  // Happy Eyeballs: one connect error per address.
  t.like(toUpstreamError(Object.assign(new AggregateError([fromConnect, fromConnect]), { code: 'EHOSTUNREACH' }), 'http://o', false), { neverSent: true });
  t.like(toUpstreamError(Object.assign(new Error('connect timeout'), { code: 'UND_ERR_CONNECT_TIMEOUT' }), 'http://o', false), { code: 'UPSTREAM_TIMEOUT', neverSent: true, retryable: true });
  t.like(toUpstreamError(Object.assign(new Error('other side closed'), { code: 'UND_ERR_SOCKET' }), 'http://o', true), { neverSent: false });
});
