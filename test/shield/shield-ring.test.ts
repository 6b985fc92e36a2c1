import test from 'ava';
import { UpstreamError } from '../../pipeline/upstream.js';
import { HashRing } from '../../origin-shield/hash-ring.js';
import { ShieldRing, type ShieldDownEvent } from '../../origin-shield/shield-ring.js';
import { closeAll, getRequest, postRequest, readText, startTestOrigins, type TestOrigin } from './fixtures/test-origin.js';

const keyFor = (i: number) => `https://www.example.com/static/${i}.css`;

async function setup(t: { teardown(fn: () => Promise<void> | void): void }, count: number, options: Omit<ConstructorParameters<typeof ShieldRing>[0], 'shields'> = {}) {
  const shields = await startTestOrigins(count);
  const time = { now: 1_000_000 };
  const ring = new ShieldRing({ shields: shields.map((s) => s.url), now: () => time.now, upstream: { connectTimeoutMs: 1_000, keepAliveTimeoutMs: 500 }, ...options });
  const downs: ShieldDownEvent[] = [];
  ring.on('down', (e) => downs.push(e));
  t.teardown(async () => {
    await ring.close();
    await closeAll(shields);
  });
  const reference = new HashRing(shields.map((s) => ({ id: s.url })));
  const byUrl = (url: string) => shields.find((s) => s.url === url)!;
  /** A key whose owner is `shield`, and the shield after it on the ring. */
  const keyOwnedBy = (shield: TestOrigin) => {
    for (let i = 0; ; i++) {
      const [owner, next] = [...reference.walk(keyFor(i))];
      if (owner!.id === shield.url) return { key: keyFor(i), next: byUrl(next?.id ?? owner!.id) };
    }
  };
  return { shields, ring, time, downs, reference, byUrl, keyOwnedBy };
}

async function fetchKey(ring: ShieldRing, key: string) {
  const response = await ring.request(getRequest('/asset', key));
  return { status: response.statusCode, member: response.member, text: await readText(response) };
}

test('each cache key goes to its owner on the ring, every time', async (t) => {
  const { shields, ring, reference } = await setup(t, 3);
  for (let i = 0; i < 30; i++) {
    const key = keyFor(i);
    t.is(ring.ownerOf(key), reference.lookup(key)!.id);
    t.is((await fetchKey(ring, key)).member, reference.lookup(key)!.id);
    t.is((await fetchKey(ring, key)).member, reference.lookup(key)!.id);
  }
  t.true(shields.every((s) => s.requests > 0), 'keys spread over every shield');
});

test('same ownership whatever order the shields are listed in', async (t) => {
  const { shields, ring } = await setup(t, 3);
  const reversed = new ShieldRing({ shields: [...shields].reverse().map((s) => s.url) });
  t.teardown(() => reversed.close());
  for (let i = 0; i < 200; i++) t.is(reversed.ownerOf(keyFor(i)), ring.ownerOf(keyFor(i)));
});

test('a dead shield: its keys are retried on the next shield, it is marked down and skipped, other keys stay put', async (t) => {
  const { shields, ring, time, downs, keyOwnedBy, reference } = await setup(t, 3, { downMs: 10_000 });
  const dead = shields[0]!;
  const { key, next } = keyOwnedBy(dead);
  await dead.close();

  const first = await fetchKey(ring, key);
  t.is(first.status, 200);
  t.is(first.member, next.url);
  t.is(downs.length, 1);
  t.like(downs[0], { url: dead.url, until: time.now + 10_000 });
  t.like(ring.members().find((m) => m.url === dead.url), { downUntil: time.now + 10_000, failures: 1 });

  // Skipped while down: straight to the next shield, no new failure.
  for (let i = 0; i < 3; i++) t.is((await fetchKey(ring, key)).member, next.url);
  t.is(downs.length, 1);
  // Keys owned by the live shields do not move.
  for (let i = 0; i < 50; i++) {
    const owner = reference.lookup(keyFor(i))!.id;
    if (owner !== dead.url) t.is((await fetchKey(ring, keyFor(i))).member, owner);
  }

  // Back after its down time once it is listening again.
  await dead.restart();
  time.now += 10_000;
  t.is((await fetchKey(ring, key)).member, dead.url);
  t.is(ring.members().find((m) => m.url === dead.url)!.downUntil, null);
});

test('a shield failing active health checks is skipped without a failed request', async (t) => {
  const { shields, ring, keyOwnedBy, downs } = await setup(t, 3, { healthCheck: { intervalMs: 60_000, unhealthyThreshold: 1, healthyThreshold: 1 } });
  const sick = shields[1]!;
  const { key, next } = keyOwnedBy(sick);
  sick.healthStatus = 503;
  await ring.checkHealth();
  t.false(ring.members().find((m) => m.url === sick.url)!.healthy);
  t.is((await fetchKey(ring, key)).member, next.url);
  t.is(sick.requests, 0);
  t.is(downs.length, 0);
  sick.healthStatus = 200;
  await ring.checkHealth();
  t.is((await fetchKey(ring, key)).member, sick.url);
});

test('errors a shield answers with (5xx) are passed through and do not mark it down', async (t) => {
  const { shields, ring, keyOwnedBy, downs } = await setup(t, 2);
  const { key, next } = keyOwnedBy(shields[0]!);
  shields[0]!.mode = '5xx';
  shields[0]!.errorStatus = 504;
  const answer = await fetchKey(ring, key);
  t.is(answer.status, 504);
  t.is(answer.member, shields[0]!.url);
  t.is(downs.length, 0);
  t.is(next.requests, 0);
});

test('a request with a body is not retried on the next shield', async (t) => {
  const { shields, ring, keyOwnedBy } = await setup(t, 2);
  const { key, next } = keyOwnedBy(shields[0]!);
  await shields[0]!.close();
  const post = postRequest('/submit', 'data');
  post.cacheKey = key;
  const error = await t.throwsAsync(ring.request(post), { instanceOf: UpstreamError });
  t.is(error!.code, 'UPSTREAM_CONNECT');
  t.is(next.requests, 0);
});

test('only one retry: with two dead shields in a row the request fails', async (t) => {
  const { shields, ring, reference, byUrl } = await setup(t, 3);
  const key = keyFor(0);
  const [owner, second] = [...reference.walk(key)];
  await byUrl(owner!.id).close();
  await byUrl(second!.id).close();
  await t.throwsAsync(ring.request(getRequest('/x', key)), { instanceOf: UpstreamError, message: /ECONNREFUSED/ });
  t.is(shields.reduce((sum, s) => sum + s.requests, 0), 0);
  // Both are now down; the third shield takes the key.
  const third = [...reference.walk(key)][2]!;
  t.is((await fetchKey(ring, key)).member, third.id);
});

test('a single shield is always tried, even while marked down', async (t) => {
  const { shields, ring, downs } = await setup(t, 1, { downMs: 60_000 });
  const only = shields[0]!;
  t.is((await fetchKey(ring, keyFor(1))).member, only.url);
  await only.close();
  await t.throwsAsync(ring.request(getRequest('/x', keyFor(1))), { instanceOf: UpstreamError });
  t.is(downs.length, 1);
  await only.restart();
  t.is((await fetchKey(ring, keyFor(2))).member, only.url, 'no other shield: tried although down');
  t.is(ring.members()[0]!.downUntil, null, 'a success clears the down mark');
});
