/**
 * The PoP-wide limiter on a real redis-server (one per test): the script's GCRA, two edges sharing a
 * limit, and the fallback while Redis is down or hung, and back.
 */
import test, { type ExecutionContext } from 'ava';
import { Redis } from 'ioredis';
import { pino } from 'pino';
import { setTimeout as delay } from 'node:timers/promises';
import { GcraTable, intervalMicros, type Decision, type Rate } from '../../edge/rate-limit/gcra.js';
import { GCRA_LUA, RedisLimiter, type RedisLimiterOptions } from '../../edge/rate-limit/redis-limiter.js';
import { startRedis, type TestRedis } from '../helpers/redis.js';

interface LogLine {
  level: number;
  msg: string;
}

type Script = Redis & {
  gcra(key: string, intervalUs: number, burst: number, want: number, nowUs: string): Promise<[number, number, number, number, number]>;
};

const WARN = 40;
const INFO = 30;

async function redisOf(t: ExecutionContext): Promise<TestRedis> {
  const redis = await startRedis();
  t.teardown(() => redis.stop());
  return redis;
}

async function until(check: () => boolean, ms = 5000): Promise<boolean> {
  const deadline = performance.now() + ms;
  while (performance.now() < deadline) {
    if (check()) return true;
    await delay(20);
  }
  return check();
}

/** A limiter with its log lines; waits until it decides in Redis. */
async function limiterOf(t: ExecutionContext, redis: TestRedis, options: Partial<RedisLimiterOptions> = {}) {
  const lines: LogLine[] = [];
  const logger = pino({ level: 'debug' }, { write: (line: string) => void lines.push(JSON.parse(line) as LogLine) });
  const limiter = new RedisLimiter({ url: redis.url, logger, ...options });
  t.teardown(() => limiter.close());
  t.true(await until(() => limiter.healthy), 'connected');
  const logged = (level: number) => lines.filter((line) => line.level === level).map((line) => line.msg);
  return { limiter, lines, logged };
}

/** A local fallback: its own GCRA table, counting its calls. */
function localOf(rate: Rate) {
  const table = new GcraTable({ maxKeys: 100 });
  const local = { calls: 0, decide: (): Decision => (local.calls++, table.take('k', rate, performance.now())) };
  return local;
}

async function timed(take: () => Promise<Decision>): Promise<Decision & { ms: number }> {
  const started = performance.now();
  const decision = await take();
  return { ...decision, ms: performance.now() - started };
}

test('the script decides exactly as GcraTable on the same sequence, on the Redis clock', async (t) => {
  const redis = await redisOf(t);
  const client = new Redis(redis.url) as Script;
  t.teardown(() => client.disconnect());
  client.defineCommand('gcra', { numberOfKeys: 1, lua: GCRA_LUA });
  const table = new GcraTable({ maxKeys: 100 });
  const rates: Rate[] = [
    { intervalMs: 10, burst: 5 },
    { intervalMs: 1000 / 3, burst: 3 },
    { intervalMs: 2, burst: 1 },
    { intervalMs: 0.25, burst: 20 },
    { intervalMs: 7.5, burst: 4 },
  ];
  let seed = 7;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  let allowed = 0;
  let denied = 0;
  let partial = 0;
  for (let i = 0; i < 800; i++) {
    if (random() < 0.15) await delay(Math.floor(random() * 15));
    const r = Math.floor(random() * rates.length);
    const rate = rates[r]!;
    const want = random() < 0.7 ? 1 : 2 + Math.floor(random() * 4);
    // The Redis clock (TIME) decides; the table gets the same instant, in ms.
    const [granted, remaining, resetUs, retryUs, nowUs] = await client.gcra(`seq:${r}`, intervalMicros(rate), rate.burst, want, '');
    const local = table.take(`${r}`, rate, nowUs / 1000, want);
    t.deepEqual(
      { granted, remaining, resetMs: resetUs / 1000, retryAfterMs: retryUs / 1000 },
      { granted: local.granted, remaining: local.remaining, resetMs: local.resetMs, retryAfterMs: local.retryAfterMs },
      `step ${i}`,
    );
    if (granted === 0) denied++;
    else allowed++;
    if (granted > 0 && granted < want) partial++;
  }
  // The sequence went through every kind of decision.
  t.true(allowed > 50 && denied > 50 && partial > 5, `${allowed} allowed, ${denied} denied, ${partial} partial`);
  // A given clock at Date.now() scale: the whole burst from rest, exactly.
  const rate = { intervalMs: 60_000 / 7, burst: 3 };
  const now = String(1.7e15 + 123);
  const results = [];
  for (let i = 0; i < 4; i++) results.push((await client.gcra('fixed', intervalMicros(rate), rate.burst, 1, now)).slice(0, 4));
  t.deepEqual(results, [
    [1, 2, 8_571_429, 0],
    [1, 1, 17_142_858, 0],
    [1, 0, 25_714_287, 0],
    [0, 0, 25_714_287, 8_571_429],
  ]);
});

test('a limiter decides in Redis, and its keys expire once the bucket is at rest', async (t) => {
  const redis = await redisOf(t);
  const { limiter, logged } = await limiterOf(t, redis);
  const rate = { intervalMs: 1000, burst: 2 };
  const local = localOf(rate);
  const decisions = [];
  for (let i = 0; i < 3; i++) decisions.push(await limiter.take('k', rate, local.decide));
  t.like(decisions[0], { allowed: true, remaining: 1, retryAfterMs: 0 });
  t.like(decisions[1], { allowed: true, remaining: 0, retryAfterMs: 0 });
  t.like(decisions[2], { allowed: false, remaining: 0 });
  t.true(decisions[2]!.retryAfterMs > 500 && decisions[2]!.retryAfterMs <= 1000);
  t.true(decisions[2]!.resetMs > 1500 && decisions[2]!.resetMs <= 2000);
  t.is(local.calls, 0);
  t.deepEqual(limiter.counts, { redis: 3, fallback: 0, outages: 0 });
  const client = new Redis(redis.url);
  t.teardown(() => client.disconnect());
  const ttl = await client.pttl('outpost:rl:k');
  t.true(ttl > 500 && ttl <= 2001, `pttl ${ttl}`);
  // A short bucket: gone from Redis soon after it is at rest (200 ms; a busy CI machine can take 20 ms between two commands).
  t.true((await limiter.take('short', { intervalMs: 200, burst: 1 }, local.decide)).allowed);
  const shortTtl = await client.pttl('outpost:rl:short');
  t.true(shortTtl > 0 && shortTtl <= 201, `pttl ${shortTtl}`);
  let exists = 1;
  for (let i = 0; i < 50 && exists !== 0; i++) {
    await delay(20);
    exists = await client.exists('outpost:rl:short');
  }
  t.is(exists, 0);
  t.deepEqual(logged(INFO), ['rate-limit Redis connected']);
  t.deepEqual(logged(WARN), []);
});

test('two edges sharing 100/s in Redis admit 100/s ± 10% in all', async (t) => {
  const redis = await redisOf(t);
  // A generous timeout: this test is about the shared count, not the fallback.
  const edges = [await limiterOf(t, redis, { timeoutMs: 2000 }), await limiterOf(t, redis, { timeoutMs: 2000 })];
  const rate = { intervalMs: 10, burst: 10 };
  const local = localOf(rate);
  const admitted = [0, 0];
  let total = 0;
  const started = performance.now();
  const end = started + 3000;
  await Promise.all(
    edges.flatMap(({ limiter }, edge) =>
      Array.from({ length: 4 }, async () => {
        while (performance.now() < end) {
          const decision = await limiter.take('shared', rate, local.decide);
          total++;
          if (decision.allowed) admitted[edge]!++;
        }
      }),
    ),
  );
  const seconds = (performance.now() - started) / 1000;
  const expected = rate.burst + 100 * seconds;
  const sum = admitted[0]! + admitted[1]!;
  t.log(`admitted ${admitted.join(' + ')} = ${sum} of ${total} in ${seconds.toFixed(2)} s; expected ${expected.toFixed(0)}`);
  t.true(total > 3 * expected, 'driven well above the limit');
  t.true(Math.abs(sum - expected) <= expected * 0.1, `admitted ${sum}, expected ${expected.toFixed(0)} ± 10%`);
  t.true(admitted[0]! > 0 && admitted[1]! > 0);
  t.is(local.calls, 0);
  for (const { limiter } of edges) t.is(limiter.counts.fallback, 0);
});

test('Redis stopped: decisions come from the local limiter at once, one warn; back on restart, one info', async (t) => {
  const redis = await redisOf(t);
  const { limiter, logged } = await limiterOf(t, redis, { timeoutMs: 50 });
  const rate = { intervalMs: 1000, burst: 3 };
  const local = localOf(rate);
  t.true((await limiter.take('k', rate, local.decide)).allowed);
  await redis.stop();
  const during = [];
  for (let i = 0; i < 10; i++) during.push(await timed(() => limiter.take('k', rate, local.decide)));
  // The local table's own burst of 3, then denials.
  t.deepEqual(
    during.map((d) => d.allowed),
    [true, true, true, false, false, false, false, false, false, false],
  );
  t.true(
    during.every((d) => d.ms <= 50 + 250),
    during.map((d) => d.ms.toFixed(1)).join(' '),
  );
  t.is(local.calls, 10);
  t.false(limiter.healthy);
  t.like(limiter.counts, { redis: 1, fallback: 10, outages: 1 });
  t.deepEqual(logged(WARN), ['rate-limit Redis lost; deciding locally']);

  await redis.restart();
  t.true(await until(() => limiter.healthy), 'back on Redis');
  // A fresh Redis (no persistence): the bucket is at rest there.
  t.like(await limiter.take('k', rate, local.decide), { allowed: true, remaining: 2 });
  t.like(limiter.counts, { redis: 2, fallback: 10, outages: 1 });
  t.is(local.calls, 10);
  t.deepEqual(logged(WARN), ['rate-limit Redis lost; deciding locally']);
  t.deepEqual(logged(INFO), ['rate-limit Redis connected', 'rate-limit Redis back; deciding in Redis']);
});

test('Redis hung (SIGSTOP): at most the timeout once, then local at once; back when it answers', async (t) => {
  const redis = await redisOf(t);
  const { limiter, logged } = await limiterOf(t, redis, { timeoutMs: 50 });
  const rate = { intervalMs: 1000, burst: 3 };
  const local = localOf(rate);
  t.true((await limiter.take('k', rate, local.decide)).allowed);
  redis.pause();
  // Requests in flight when Redis hangs each wait the timeout at most.
  const first = await Promise.all(Array.from({ length: 5 }, () => timed(() => limiter.take('k', rate, local.decide))));
  t.true(
    first.every((d) => d.ms >= 40 && d.ms <= 50 + 250),
    first.map((d) => d.ms.toFixed(1)).join(' '),
  );
  t.false(limiter.healthy);
  const during = [];
  for (let i = 0; i < 30; i++) during.push(await timed(() => limiter.take('k', rate, local.decide)));
  // Were each still waiting for Redis, these 30 would take ≥ 1.5 s.
  const spent = during.reduce((sum, d) => sum + d.ms, 0);
  t.true(spent < 500, `30 decisions took ${spent.toFixed(0)} ms`);
  t.true(during.every((d) => d.ms <= 50 + 250));
  t.is(local.calls, 35);
  t.like(limiter.counts, { redis: 1, fallback: 35, outages: 1 });
  // Still hung a while later: the probe does not flip it back, nor log again.
  await delay(600);
  t.false(limiter.healthy);
  t.deepEqual(logged(WARN), ['rate-limit Redis lost; deciding locally']);

  redis.resume();
  t.true(await until(() => limiter.healthy), 'back on Redis');
  const back = await limiter.take('other', rate, local.decide);
  t.like(back, { allowed: true, remaining: 2 });
  t.like(limiter.counts, { redis: 2, fallback: 35, outages: 1 });
  t.deepEqual(logged(WARN), ['rate-limit Redis lost; deciding locally']);
  t.deepEqual(logged(INFO), ['rate-limit Redis connected', 'rate-limit Redis back; deciding in Redis']);
});

test("failMode 'open' admits everything while Redis is down", async (t) => {
  const redis = await redisOf(t);
  // 150 ms: time enough for Redis's own answers on a busy machine, so the first three are its decisions.
  const { limiter, logged } = await limiterOf(t, redis, { timeoutMs: 150, failMode: 'open' });
  const rate = { intervalMs: 1000, burst: 2 };
  const local = localOf(rate);
  t.true((await limiter.take('k', rate, local.decide)).allowed);
  t.true((await limiter.take('k', rate, local.decide)).allowed);
  t.false((await limiter.take('k', rate, local.decide)).allowed);
  await redis.stop();
  const during = [];
  for (let i = 0; i < 20; i++) during.push(await timed(() => limiter.take('k', rate, local.decide)));
  t.true(during.every((d) => d.allowed && d.retryAfterMs === 0));
  t.true(during.every((d) => d.ms <= 150 + 250));
  t.is(local.calls, 0);
  t.like(limiter.counts, { redis: 3, fallback: 20, outages: 1 });
  t.is(logged(WARN).length, 1);
});

test('Redis down from the start: local decisions at once, one warn; connects when Redis comes up', async (t) => {
  const redis = await redisOf(t);
  await redis.stop();
  const lines: LogLine[] = [];
  const logger = pino({ level: 'debug' }, { write: (line: string) => void lines.push(JSON.parse(line) as LogLine) });
  const limiter = new RedisLimiter({ url: redis.url, logger, timeoutMs: 50 });
  t.teardown(() => limiter.close());
  const rate = { intervalMs: 1000, burst: 1 };
  const local = localOf(rate);
  const during = [];
  for (let i = 0; i < 5; i++) during.push(await timed(() => limiter.take('k', rate, local.decide)));
  t.deepEqual(
    during.map((d) => d.allowed),
    [true, false, false, false, false],
  );
  t.true(during.every((d) => d.ms <= 50 + 250));
  t.is(local.calls, 5);
  // Reconnect attempts (every ≤ 1 s) do not log again.
  await delay(1200);
  t.deepEqual(
    lines.filter((line) => line.level === WARN).map((line) => line.msg),
    ['rate-limit Redis unavailable; deciding locally'],
  );
  await redis.restart();
  t.true(await until(() => limiter.healthy), 'connected');
  t.true((await limiter.take('k', rate, local.decide)).allowed);
  t.is(limiter.counts.redis, 1);
  t.deepEqual(
    lines.filter((line) => line.level === INFO).map((line) => line.msg),
    ['rate-limit Redis back; deciding in Redis'],
  );
});

test('a first decision waits for the first connection, so a new edge decides in Redis', async (t) => {
  const redis = await redisOf(t);
  const limiter = new RedisLimiter({ url: redis.url, logger: pino({ level: 'silent' }), timeoutMs: 1000 });
  t.teardown(() => limiter.close());
  const local = localOf({ intervalMs: 10, burst: 1 });
  t.like(await limiter.take('k', { intervalMs: 10, burst: 1 }, local.decide), { allowed: true });
  t.deepEqual(limiter.counts, { redis: 1, fallback: 0, outages: 0 });
  await limiter.close();
  // Closed: the fallback, at once.
  t.like(await limiter.take('k', { intervalMs: 10, burst: 1 }, local.decide), { allowed: true });
  t.is(local.calls, 1);
});

test('close() returns promptly even while Redis is hung', async (t) => {
  const redis = await redisOf(t);
  const { limiter } = await limiterOf(t, redis, { timeoutMs: 50 });
  redis.pause();
  await limiter.take('k', { intervalMs: 10, burst: 1 }, () => ({ allowed: true, remaining: 0, resetMs: 0, retryAfterMs: 0 }));
  const started = performance.now();
  await limiter.close();
  t.true(performance.now() - started < 1000);
});
