import test from 'ava';
import { OutlierDetector, type EjectionEvent } from '../../origin-shield/outlier-detector.js';

function clock(start = 1_000_000) {
  const c = { now: start, fn: () => c.now };
  return c;
}

const ids = (n: number) => Array.from({ length: n }, (_, i) => `m${i}`);

test('consecutive 5xx eject at the threshold; a success resets the streak', (t) => {
  const time = clock();
  const d = new OutlierDetector(ids(2), { consecutive5xx: 3, baseEjectionMs: 1_000, now: time.fn });
  d.recordFailure('m0', '5xx');
  d.recordFailure('m0', '5xx');
  d.recordSuccess('m0');
  d.recordFailure('m0', '5xx');
  d.recordFailure('m0', '5xx');
  t.false(d.isEjected('m0'));
  d.recordFailure('m0', '5xx');
  t.true(d.isEjected('m0'));
  t.is(d.ejectedUntil('m0'), time.now + 1_000);
  t.false(d.isEjected('m1'));
});

test('connect failures have their own threshold; a 5xx ends the connect streak', (t) => {
  const time = clock();
  const d = new OutlierDetector(ids(2), { consecutive5xx: 10, consecutiveConnectFailures: 2, now: time.fn });
  d.recordFailure('m0', 'connect');
  d.recordFailure('m0', '5xx'); // it answered: reachable
  d.recordFailure('m0', 'connect');
  t.false(d.isEjected('m0'));
  d.recordFailure('m0', 'connect');
  t.true(d.isEjected('m0'));
  // and connect failures do not count toward the 5xx threshold
  const e = new OutlierDetector(ids(2), { consecutive5xx: 2, consecutiveConnectFailures: 10, now: time.fn });
  e.recordFailure('m1', '5xx');
  e.recordFailure('m1', 'connect');
  t.false(e.isEjected('m1'));
  e.recordFailure('m1', '5xx');
  t.true(e.isEjected('m1'));
});

test('members return after their ejection time, with counters reset', (t) => {
  const time = clock();
  const d = new OutlierDetector(ids(2), { consecutive5xx: 1, baseEjectionMs: 500, now: time.fn });
  const returned: string[] = [];
  d.on('return', (e) => returned.push(e.id));
  d.recordFailure('m0', '5xx');
  time.now += 499;
  t.true(d.isEjected('m0'));
  time.now += 1;
  t.false(d.isEjected('m0'));
  t.deepEqual(returned, ['m0']);
  t.like(d.state()[0], { id: 'm0', ejected: false, ejectedUntil: null, ejections: 1, consecutive5xx: 0 });
});

test('ejection time grows with each ejection (base × n) and is capped at maxEjectionMs', (t) => {
  const time = clock();
  const events: EjectionEvent[] = [];
  const d = new OutlierDetector(ids(2), {
    consecutive5xx: 1, baseEjectionMs: 1_000, maxEjectionMs: 3_500, multiplierDecayMs: 1_000_000, now: time.fn,
  });
  d.on('eject', (e) => events.push(e));
  for (let i = 0; i < 5; i++) {
    d.recordFailure('m0', '5xx');
    const until = d.ejectedUntil('m0')!;
    time.now = until; // back in service exactly when the ejection ends
    t.false(d.isEjected('m0'));
  }
  t.deepEqual(events.map((e) => e.durationMs), [1_000, 2_000, 3_000, 3_500, 3_500]);
  t.deepEqual(events.map((e) => e.ejections), [1, 2, 3, 4, 5]);
  t.is(d.ejectionsTotal, 5);
});

test('the multiplier decays one step per multiplierDecayMs in service', (t) => {
  const time = clock();
  const events: EjectionEvent[] = [];
  const d = new OutlierDetector(ids(2), { consecutive5xx: 1, baseEjectionMs: 1_000, multiplierDecayMs: 10_000, now: time.fn });
  d.on('eject', (e) => events.push(e));
  d.recordFailure('m0', '5xx');
  time.now = d.ejectedUntil('m0')!;
  d.recordFailure('m0', '5xx'); // straight away: 2×
  time.now = d.ejectedUntil('m0')!;
  d.isEjected('m0');
  time.now += 15_000; // one decay step
  d.recordFailure('m0', '5xx'); // multiplier 2 → 1, then this ejection → 2
  t.deepEqual(events.map((e) => e.durationMs), [1_000, 2_000, 2_000]);
  t.deepEqual(events.map((e) => e.ejections), [1, 2, 3]);
});

test('max ejection percent caps how much of the pool is ejected at once', (t) => {
  const time = clock();
  const d = new OutlierDetector(ids(10), { consecutive5xx: 1, maxEjectionPercent: 30, now: time.fn });
  for (const id of ids(10)) d.recordFailure(id, '5xx');
  t.is(d.ejected, 3);
  t.deepEqual(d.state().filter((s) => s.ejected).map((s) => s.id), ['m0', 'm1', 'm2']);
  t.is(d.ejectionsSkipped, 7);
  // The refused members keep their streak: when room frees up, their next failure ejects them.
  time.now += 30_000;
  t.is(d.ejected, 0);
  d.recordFailure('m5', '5xx');
  t.true(d.isEjected('m5'));
});

test('Envoy semantics: one member may always be ejected, however small the percentage', (t) => {
  const time = clock();
  // 2 members at 10 %: 1/2 = 50 % > 10 %, yet one may go, never both.
  const d = new OutlierDetector(ids(2), { consecutive5xx: 1, maxEjectionPercent: 10, now: time.fn });
  d.recordFailure('m0', '5xx');
  d.recordFailure('m1', '5xx');
  t.true(d.isEjected('m0'));
  t.false(d.isEjected('m1'));
  // A single-member pool can lose its only member (the pool's panic mode still sends it traffic).
  const single = new OutlierDetector(['only'], { consecutive5xx: 1, maxEjectionPercent: 0, now: time.fn });
  single.recordFailure('only', '5xx');
  t.true(single.isEjected('only'));
});

test('failures of requests that were in flight do not extend an ejection', (t) => {
  const time = clock();
  const d = new OutlierDetector(ids(2), { consecutive5xx: 1, baseEjectionMs: 1_000, now: time.fn });
  d.recordFailure('m0', '5xx');
  const until = d.ejectedUntil('m0');
  d.recordFailure('m0', '5xx');
  d.recordFailure('m0', 'connect');
  t.is(d.ejectedUntil('m0'), until);
  t.is(d.ejectionsTotal, 1);
});

test('removing an ejected member frees its place in the cap', (t) => {
  const time = clock();
  const d = new OutlierDetector(ids(4), { consecutive5xx: 1, maxEjectionPercent: 25, now: time.fn });
  d.recordFailure('m0', '5xx');
  d.recordFailure('m1', '5xx');
  t.is(d.ejected, 1);
  d.remove('m0');
  t.is(d.ejected, 0);
  d.recordFailure('m1', '5xx');
  t.true(d.isEjected('m1'));
});
