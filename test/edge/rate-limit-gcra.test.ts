/** The local GCRA table: exact decisions at given clocks, partial grants, credits, and bounded memory. */
import test from 'ava';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { GcraTable, type Rate } from '../../edge/rate-limit/gcra.js';

const R100: Rate = { intervalMs: 10, burst: 5 }; // 100/s, burst 5

test('the burst is admitted at once, then one request per interval', (t) => {
  const table = new GcraTable({ maxKeys: 10 });
  const remaining = [];
  for (let i = 0; i < 5; i++) {
    const d = table.take('k', R100, 1000);
    t.true(d.allowed);
    t.is(d.granted, 1);
    remaining.push(d.remaining);
  }
  t.deepEqual(remaining, [4, 3, 2, 1, 0]);
  t.false(table.take('k', R100, 1000).allowed);
  t.false(table.take('k', R100, 1009.9).allowed);
  t.true(table.take('k', R100, 1010).allowed);
  t.false(table.take('k', R100, 1010).allowed);
  t.false(table.take('k', R100, 1019).allowed);
  t.true(table.take('k', R100, 1020).allowed);
  // A steady stream at the rate is always admitted; faster is held to the rate.
  let admitted = 0;
  for (let now = 1021; now <= 2020; now += 1) if (table.take('k', R100, now).allowed) admitted++;
  t.is(admitted, 100);
});

test('remaining, resetMs and retryAfterMs', (t) => {
  const table = new GcraTable({ maxKeys: 10 });
  t.deepEqual(table.take('k', R100, 1000), { allowed: true, granted: 1, remaining: 4, resetMs: 10, retryAfterMs: 0 });
  for (let i = 0; i < 4; i++) table.take('k', R100, 1000);
  t.deepEqual(table.take('k', R100, 1000), { allowed: false, granted: 0, remaining: 0, resetMs: 50, retryAfterMs: 10 });
  t.deepEqual(table.take('k', R100, 1004), { allowed: false, granted: 0, remaining: 0, resetMs: 46, retryAfterMs: 6 });
  // Denials do not move the bucket: one request conforms exactly when retryAfterMs said.
  t.deepEqual(table.take('k', R100, 1010), { allowed: true, granted: 1, remaining: 0, resetMs: 50, retryAfterMs: 0 });
  // 25 ms later: 2 intervals and a half have drained.
  t.deepEqual(table.take('k', R100, 1035), { allowed: true, granted: 1, remaining: 1, resetMs: 35, retryAfterMs: 0 });
  // Long after: at rest again, full burst.
  t.deepEqual(table.take('k', R100, 5000), { allowed: true, granted: 1, remaining: 4, resetMs: 10, retryAfterMs: 0 });
});

test('a rate whose interval is not exact in binary still yields its whole burst from rest', (t) => {
  const table = new GcraTable({ maxKeys: 10 });
  const rate = { intervalMs: 1000 / 3, burst: 3 };
  const allowed = [0, 1, 2, 3].map(() => table.take('k', rate, 1e12 + 0.123).allowed);
  t.deepEqual(allowed, [true, true, true, false]);
  t.true(table.take('k', rate, 1e12 + 0.123 + 1000 / 3).allowed);
});

test('want > 1 grants what conforms, down to nothing', (t) => {
  const table = new GcraTable({ maxKeys: 10 });
  t.like(table.take('k', R100, 0, 3), { allowed: true, granted: 3, remaining: 2, resetMs: 30 });
  t.like(table.take('k', R100, 0, 3), { allowed: true, granted: 2, remaining: 0, resetMs: 50 });
  t.like(table.take('k', R100, 0, 3), { allowed: false, granted: 0, remaining: 0, retryAfterMs: 10 });
  t.like(table.take('k', R100, 25, 3), { allowed: true, granted: 2, remaining: 0, resetMs: 45 });
  // More than the burst from rest: the burst.
  t.like(table.take('other', R100, 0, 100), { allowed: true, granted: 5, remaining: 0, resetMs: 50 });
});

test('returned tokens are credited back, but never beyond a rested bucket', (t) => {
  const table = new GcraTable({ maxKeys: 10 });
  t.like(table.take('k', R100, 0, 5), { granted: 5, remaining: 0 });
  // 2 unused come back: 2 more conform now.
  t.like(table.take('k', R100, 0, 5, 2), { granted: 2, remaining: 0, resetMs: 50 });
  // Returning far more than was taken only rests the bucket.
  t.like(table.take('k', R100, 0, 1, 1000), { granted: 1, remaining: 4, resetMs: 10 });
  t.like(table.take('rested', R100, 0, 1, 3), { granted: 1, remaining: 4, resetMs: 10 });
  // A credit with a denied take still lands.
  table.take('d', R100, 0, 5);
  t.like(table.take('d', R100, 0), { allowed: false });
  t.like(table.take('d', R100, 0, 2, 1), { allowed: true, granted: 1, remaining: 0 });
});

test('keys and their rates are independent', (t) => {
  const table = new GcraTable({ maxKeys: 10 });
  const slow: Rate = { intervalMs: 1000, burst: 2 };
  for (let i = 0; i < 5; i++) table.take('fast', R100, 0);
  t.false(table.take('fast', R100, 0).allowed);
  t.like(table.take('slow', slow, 0), { allowed: true, remaining: 1, resetMs: 1000 });
  t.like(table.take('slow', slow, 0), { allowed: true, remaining: 0, resetMs: 2000 });
  t.like(table.take('slow', slow, 10), { allowed: false, retryAfterMs: 990 });
  t.true(table.take('fast', R100, 10).allowed);
  t.false(table.take('slow', slow, 10).allowed);
  t.is(table.size, 2);
  table.clear();
  t.is(table.size, 0);
  t.like(table.take('fast', R100, 10), { allowed: true, remaining: 4 });
});

test('the least recently used key is evicted when full', (t) => {
  const table = new GcraTable({ maxKeys: 3 });
  const one: Rate = { intervalMs: 1000, burst: 1 };
  for (const key of ['a', 'b', 'c']) t.true(table.take(key, one, 0).allowed);
  t.false(table.take('a', one, 1).allowed); // a is now the most recent
  t.true(table.take('d', one, 1).allowed); // evicts b
  t.is(table.size, 3);
  t.false(table.take('a', one, 2).allowed);
  t.false(table.take('c', one, 2).allowed); // least recent first: d, a, c
  t.true(table.take('b', one, 2).allowed); // b was forgotten: a fresh burst; evicts d
  t.true(table.take('d', one, 3).allowed); // d was forgotten; evicts a
  t.true(table.take('a', one, 3).allowed);
  t.is(table.size, 3);
});

test('invalid rates and wants throw', (t) => {
  const table = new GcraTable({ maxKeys: 3 });
  t.throws(() => table.take('k', { intervalMs: 0, burst: 1 }, 0), { instanceOf: RangeError });
  t.throws(() => table.take('k', { intervalMs: 10, burst: 0 }, 0), { instanceOf: RangeError });
  t.throws(() => table.take('k', { intervalMs: Number.NaN, burst: 1 }, 0), { instanceOf: RangeError });
  t.throws(() => table.take('k', R100, 0, 0), { instanceOf: RangeError });
  t.throws(() => new GcraTable({ maxKeys: 0 }), { instanceOf: RangeError });
});

test('1,000,000 distinct keys: size stays within maxKeys and memory within a bound set by maxKeys', (t) => {
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const used = () => {
    gc();
    gc();
    const m = process.memoryUsage();
    return m.heapUsed + m.external; // external includes the typed arrays
  };
  const maxKeys = 100_000;
  const before = used();
  const table = new GcraTable({ maxKeys });
  const rate: Rate = { intervalMs: 1000, burst: 10 };
  let maxSize = 0;
  for (let i = 0; i < 1_000_000; i++) {
    table.take(`client-${i}.example`, rate, i / 1000);
    if (table.size > maxSize) maxSize = table.size;
  }
  const after = used();
  t.is(maxSize, maxKeys);
  t.is(table.size, maxKeys);
  // ~190 bytes per key (key string, Map entry, slot arrays): ~19 MB; all 1,000,000 keys would be ~120 MB.
  const bound = maxKeys * 320;
  t.log(`retained ${((after - before) / 1e6).toFixed(1)} MB for ${maxKeys} keys (bound ${(bound / 1e6).toFixed(1)} MB)`);
  t.true(after - before < bound, `retained ${after - before} bytes, bound ${bound}`);
  // The newest keys are the ones kept.
  t.like(table.take('client-999999.example', rate, 1000), { remaining: 8 });
  t.like(table.take('client-0.example', rate, 1000), { remaining: 9 });
});

test('a hot key among 10,000 under a stream at twice its rate admits exactly half (no drift over 1,000,000 takes)', (t) => {
  const table = new GcraTable({ maxKeys: 100_000 });
  for (let i = 0; i < 10_000; i++) table.take(`k${i}`, R100, 0);
  const rate: Rate = { intervalMs: 0.001, burst: 10 };
  let now = 0;
  let allowed = 0;
  const n = 1_000_000;
  for (let i = 0; i < n; i++) {
    if (table.take('hot', rate, now).allowed) allowed++;
    now += 0.0005;
  }
  // The burst, then one in two.
  t.true(Math.abs(allowed - n / 2) <= 10, `${allowed}`);
});
