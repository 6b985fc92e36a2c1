/**
 * Rate limits at the edge (issue 11), through real HTTP: 429 with Retry-After and the RateLimit
 * fields of draft-ietf-httpapi-ratelimit-headers, hits limited like misses, named limits keyed
 * by header, path group and client, the client address from trusted X-Forwarded-For only, and a
 * worker's leased limiter bounded in memory.
 */
import test from 'ava';
import { ConfigError, loadConfig } from '../../config/config.js';
import { LeasedLimiter, LocalLimiter } from '../../edge/rate-limit/limiter.js';
import { clientBucket } from '../../edge/rate-limit/rate-limits.js';
import { delay, fetchFrom, header, send, settle, setup } from '../helpers/harness.js';

const cached = (_q: unknown, res: Parameters<typeof send>[0]) => send(res, 200, { 'cache-control': 'max-age=60' });

test('over the limit: 429 with Retry-After, RateLimit-Policy and RateLimit; cache hits count like misses', async (t) => {
  // 1/s with a burst of 3: three at once, then one a second.
  const { origin, edge } = await setup(t, cached, { rateLimit: '1/s', rateLimitBurst: 3, waf: 'off' });
  t.is((await fetchFrom(edge.url, '/same')).status, 200);
  await settle({ commits: true });
  t.is((await fetchFrom(edge.url, '/same')).status, 200);
  t.is((await fetchFrom(edge.url, '/same')).status, 200);
  t.is(origin.requests.length, 1, 'the later two were hits');
  const limited = await fetchFrom(edge.url, '/same');
  t.is(limited.status, 429);
  t.is(header(limited, 'retry-after'), '1');
  t.is(header(limited, 'ratelimit-policy'), '"default";q=3;w=3');
  t.regex(header(limited, 'ratelimit')!, /^"default";r=0;t=[1-3]$/);
  t.regex(limited.text, /^429 Too Many Requests: rate limit "default" exceeded\n/);
  t.truthy(header(limited, 'x-request-id'));
  t.is(edge.metrics.get('rate_limited_total', { limit: 'default' }), 1);
  // A second later a token is back; within the limit the fields are sent only when configured.
  await delay(1_100);
  const admitted = await fetchFrom(edge.url, '/same');
  t.is(admitted.status, 200);
  t.is(header(admitted, 'ratelimit'), undefined);
});

test('the burst defaults to one period of the rate; RateLimit fields within the limit when configured', async (t) => {
  const { edge } = await setup(t, cached, { rateLimit: '4/m', rateLimitHeaders: true, waf: 'off' });
  const remaining: string[] = [];
  for (let i = 0; i < 4; i++) {
    const reply = await fetchFrom(edge.url, `/p${i}`);
    t.is(reply.status, 200);
    t.is(header(reply, 'ratelimit-policy'), '"default";q=4;w=60');
    remaining.push(/r=(\d+)/.exec(header(reply, 'ratelimit')!)![1]!);
  }
  t.deepEqual(remaining, ['3', '2', '1', '0']);
  const limited = await fetchFrom(edge.url, '/p4');
  t.is(limited.status, 429);
  // The next token comes in 15 s (60 s / 4).
  t.true(Number(header(limited, 'retry-after')) >= 14 && Number(header(limited, 'retry-after')) <= 15, header(limited, 'retry-after'));
});

test('named limits: keyed by a header value within a path group; requests outside the group or without the header are not under it', async (t) => {
  const { edge } = await setup(t, cached, {
    waf: 'off',
    rateLimits: [
      { name: 'api', rate: '2/m', key: ['header:x-api-key', 'path'], paths: [{ prefix: '/api/' }, { prefix: '/v2/' }], headers: true },
      { name: 'login', rate: '1/m', methods: ['POST'], paths: [{ equals: '/login' }] },
    ],
  });
  const api = (path: string, key?: string) => fetchFrom(edge.url, path, key ? { headers: { 'x-api-key': key } } : {}).then((r) => r.status);
  t.deepEqual([await api('/api/a', 'k1'), await api('/api/b', 'k1'), await api('/api/c', 'k1')], [200, 200, 429]);
  t.is(await api('/api/a', 'k2'), 200, 'another key has its own bucket');
  t.is(await api('/v2/a', 'k1'), 200, 'another path group has its own bucket');
  t.is(await api('/api/a'), 200, 'no key: not under the limit');
  t.is(await api('/static/a', 'k1'), 200, 'outside the path groups');
  const login = () => fetchFrom(edge.url, '/login', { method: 'POST', body: 'u=a' }).then((r) => r.status);
  t.deepEqual([await login(), await login()], [200, 429]);
  t.is((await fetchFrom(edge.url, '/login')).status, 200, 'GET is not under a POST-only limit');
});

test('the client address is the trusted X-Forwarded-For hop; an untrusted client cannot pick its own bucket', async (t) => {
  const untrusted = await setup(t, cached, { rateLimit: '1/m', waf: 'off' });
  const via = (base: string, xff: string) => fetchFrom(base, `/x${Math.random()}`, { headers: { 'x-forwarded-for': xff } }).then((r) => r.status);
  t.is(await via(untrusted.edge.url, '198.51.100.1'), 200);
  t.is(await via(untrusted.edge.url, '198.51.100.2'), 429, 'X-Forwarded-For from an untrusted peer is not believed');
  const trusted = await setup(t, cached, { rateLimit: '1/m', waf: 'off', trustForwardedFrom: ['127.0.0.1', '10.0.0.0/8'] });
  t.is(await via(trusted.edge.url, '198.51.100.1'), 200);
  t.is(await via(trusted.edge.url, '198.51.100.2'), 200);
  t.is(await via(trusted.edge.url, '198.51.100.1'), 429);
  // Hops left of the right-most untrusted one were written by the client: ignored.
  t.is(await via(trusted.edge.url, '203.0.113.9, 198.51.100.2'), 429);
  // Trusted hops (10.0.0.0/8) are skipped.
  t.is(await via(trusted.edge.url, '198.51.100.3, 10.1.2.3'), 200);
  t.is(await via(trusted.edge.url, '198.51.100.3, 10.9.9.9'), 429);
  // Forwarding appends the peer, as before.
  t.is(trusted.origin.requests.at(-1)!.headers['x-forwarded-for'], '198.51.100.3, 10.1.2.3, 127.0.0.1');
});

test('rate limits in the config are validated with the limit and field named', (t) => {
  const load = (fileContents: Record<string, unknown>) => loadConfig('edge', { fileContents });
  const bad: Array<[Record<string, unknown>, RegExp]> = [
    [{ rateLimit: '100' }, /rateLimit .*100\/s/],
    [{ rateLimit: '10/d' }, /rateLimit/],
    [{ rateLimits: [{ name: 'a' }] }, /rateLimits\[a\]\.rate/],
    [{ rateLimits: [{ name: 'a', rate: '1/s', key: ['cookie:x'] }] }, /rateLimits\[a\]\.key/],
    [{ rateLimits: [{ name: 'a', rate: '1/s', key: ['path'] }] }, /rateLimits\[a\]\.key.*paths/],
    [{ rateLimits: [{ name: 'a', rate: '1/s', burst: -1 }] }, /rateLimits\[a\]\.burst/],
    [{ rateLimits: [{ name: 'a', rate: '1/s', limit: 3 }] }, /rateLimits\[a\]\.limit.*unknown/],
    [{ rateLimits: [{ name: 'default', rate: '1/s' }] }, /rateLimits\[default\]\.name/],
    [{ rateLimitStore: 'http://127.0.0.1:6379' }, /rateLimitStore/],
  ];
  for (const [contents, message] of bad) t.regex(t.throws(() => load(contents), { instanceOf: ConfigError })!.message, message);
});

test('a worker’s leased limiter admits what the primary’s buckets admit, and stays bounded over 1,000,000 keys', async (t) => {
  const primary = new LocalLimiter(10_000);
  const ask = async (request: Parameters<LocalLimiter['lease']>[0]) => primary.lease(request);
  const workers = [new LeasedLimiter({ maxKeys: 10_000, workers: 2, ask }), new LeasedLimiter({ maxKeys: 10_000, workers: 2, ask })];
  // 80 requests at once over two workers against a burst of 40 (1 per minute after that): 40 admitted.
  const rate = { intervalMs: 60_000 / 40, burst: 40 };
  const decisions = await Promise.all(Array.from({ length: 80 }, (_, i) => workers[i % 2]!.take('l', 'client', rate)));
  t.is(decisions.filter((d) => d.allowed).length <= 40 && decisions.filter((d) => d.allowed).length >= 36, true, String(decisions.filter((d) => d.allowed).length));
  for (let i = 0; i < 1_000_000; i++) {
    const decision = workers[0]!.take('flood', `k${i}`, { intervalMs: 10, burst: 100 });
    if (decision instanceof Promise) await decision;
  }
  // At most maxKeys per limit: 10,000 of the flood, and the one key of limit l.
  t.true(workers[0]!.size <= 10_001, `worker leases: ${workers[0]!.size}`);
  t.true(primary.size <= 2 * 10_000, `primary buckets: ${primary.size}`);
});

test('a flood of concurrent requests on one key queues behind one lease at a time and is settled in order', async (t) => {
  const primary = new LocalLimiter(100);
  let asks = 0;
  const worker = new LeasedLimiter({ maxKeys: 100, workers: 2, ask: async (request) => (asks++, primary.lease(request)) });
  const decisions = await Promise.all(Array.from({ length: 20_000 }, () => worker.take('l', 'flood', { intervalMs: 60_000, burst: 100 })));
  t.is(decisions.filter((d) => d.allowed).length <= 100, true);
  t.true(decisions.filter((d) => d.allowed).length >= 90);
  // The first ones in got the tokens; everyone after the denial was denied without another ask each.
  t.true(decisions.slice(0, 90).every((d) => d.allowed));
  t.true(asks < 100, `${asks} asks`);
});

test('a primary that does not lease in time (stopping, gone): requests are admitted, never held', async (t) => {
  const worker = new LeasedLimiter({ maxKeys: 100, workers: 2, ask: () => Promise.reject(new Error('no lease in time')) });
  const decisions = await Promise.all(Array.from({ length: 5 }, () => worker.take('l', 'k', { intervalMs: 1000, burst: 1 })));
  t.true(decisions.every((d) => d.allowed));
});

test('IPv6 clients are limited by /64; IPv4-mapped addresses as IPv4', (t) => {
  t.is(clientBucket('2001:db8:1:2:aaaa::1'), '2001:db8:1:2::/64');
  t.is(clientBucket('2001:0db8:0001:0002:ffff:0:0:9'), '2001:db8:1:2::/64');
  t.is(clientBucket('2001:db8::1'), '2001:db8:0:0::/64');
  t.is(clientBucket('::1'), '0:0:0:0::/64');
  t.is(clientBucket('::ffff:198.51.100.7'), '198.51.100.7');
  t.is(clientBucket('198.51.100.7'), '198.51.100.7');
});

test('a trusted X-Forwarded-For hop that carries a port is still the client', async (t) => {
  const { edge } = await setup(t, cached, { rateLimit: '1/m', waf: 'off', trustForwardedFrom: ['127.0.0.1'] });
  const via = (xff: string) => fetchFrom(edge.url, `/p${Math.random()}`, { headers: { 'x-forwarded-for': xff } }).then((r) => r.status);
  t.is(await via('198.51.100.1:4711'), 200);
  t.is(await via('198.51.100.1:5000'), 429);
  t.is(await via('[2001:db8::1]:443'), 200);
  t.is(await via('2001:db8::2'), 429, 'same /64');
});

test('a 403 or 429 to a request whose body was not read closes the connection, and the node keeps serving', async (t) => {
  const { origin, edge } = await setup(t, cached, { waf: { mode: 'off', rules: [{ id: 'no-drop', body: { regex: 'drop table' } }] } });
  const reply = await fetchFrom(edge.url, '/upload', { method: 'POST', body: Buffer.concat([Buffer.from('drop table '), Buffer.alloc(4 * 1024 * 1024, 'x')]) });
  t.is(reply.status, 403);
  t.is(header(reply, 'connection'), 'close');
  t.is((await fetchFrom(edge.url, '/after')).status, 200);
  t.is(origin.requests.length, 1);
});

test('RateLimit-Policy: a burst below the rate advertises the rate (the pace a client may keep), a burst above it the burst and its refill time', async (t) => {
  const below = await setup(t, cached, { rateLimit: '100/s', rateLimitBurst: 10, rateLimitHeaders: true, waf: 'off' });
  t.is(header(await fetchFrom(below.edge.url, '/b'), 'ratelimit-policy'), '"default";q=100;w=1');
  const above = await setup(t, cached, { rateLimit: '10/s', rateLimitBurst: 50, rateLimitHeaders: true, waf: 'off' });
  t.is(header(await fetchFrom(above.edge.url, '/a'), 'ratelimit-policy'), '"default";q=50;w=5');
});

