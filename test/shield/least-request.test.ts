import test from 'ava';
import type { Member } from '../../origin-shield/balancer.js';
import { LeastRequestBalancer } from '../../origin-shield/least-request.js';
import { mulberry32 } from '../../bench/random.js';

const member = (id: string, pending: number, weight = 1): Member => ({ id, weight, pending });

/** Returns the given numbers in turn. */
const scripted = (...values: number[]) => {
  let i = 0;
  return () => values[i++ % values.length]!;
};

test('of the two drawn, the one with fewer pending wins', (t) => {
  const members = [member('a', 5), member('b', 1), member('c', 9)];
  // draws index 0 (a), then index 0 of the remaining two → b
  t.is(new LeastRequestBalancer({ random: scripted(0.1, 0.1) }).pick(members, '')!.id, 'b');
  // draws index 2 (c), then index 0 → a
  t.is(new LeastRequestBalancer({ random: scripted(0.9, 0.1) }).pick(members, '')!.id, 'a');
  // draws index 2 (c), then index 1 → b
  t.is(new LeastRequestBalancer({ random: scripted(0.9, 0.9) }).pick(members, '')!.id, 'b');
});

test('the two choices are always distinct members', (t) => {
  const members = [member('a', 3), member('b', 0)];
  // Both draws "0": the second must still be the other member, so the idle one wins.
  t.is(new LeastRequestBalancer({ random: () => 0 }).pick(members, '')!.id, 'b');
  t.is(new LeastRequestBalancer({ random: () => 0.999999 }).pick(members, '')!.id, 'b');
});

test('prefers less loaded members over many picks; the most loaded is never chosen', (t) => {
  const members = [member('idle', 0), member('some', 5), member('busy', 10), member('busiest', 20)];
  const lr = new LeastRequestBalancer({ random: mulberry32(42) });
  const counts: Record<string, number> = { idle: 0, some: 0, busy: 0, busiest: 0 };
  for (let i = 0; i < 12_000; i++) counts[lr.pick(members, '')!.id]!++;
  t.is(counts.busiest, 0);
  t.true(counts.idle! > counts.some! && counts.some! > counts.busy!, JSON.stringify(counts));
  // With 4 members, the least loaded is in the random pair with probability 1/2.
  t.true(Math.abs(counts.idle! / 12_000 - 0.5) < 0.03, JSON.stringify(counts));
});

test('equal load spreads evenly', (t) => {
  const members = [member('a', 0), member('b', 0), member('c', 0)];
  const lr = new LeastRequestBalancer({ random: mulberry32(7) });
  const counts: Record<string, number> = { a: 0, b: 0, c: 0 };
  for (let i = 0; i < 9_000; i++) counts[lr.pick(members, '')!.id]!++;
  for (const count of Object.values(counts)) t.true(Math.abs(count - 3_000) < 300, JSON.stringify(counts));
});

test('weight scales the load a member may carry', (t) => {
  const members = [member('small', 3, 1), member('big', 5, 4)];
  // (3+1)/1 = 4 vs (5+1)/4 = 1.5: the big member wins although it has more pending.
  t.is(new LeastRequestBalancer({ random: () => 0 }).pick(members, '')!.id, 'big');
});

test('exclusions, single candidate and empty set', (t) => {
  const a = member('a', 0);
  const b = member('b', 100);
  const lr = new LeastRequestBalancer({ random: mulberry32(1) });
  t.is(lr.pick([a, b], '', new Set([a])), b);
  t.is(lr.pick([a], ''), a);
  t.is(lr.pick([a, b], '', new Set([a, b])), undefined);
  t.is(lr.pick([], ''), undefined);
  t.is(lr.pick([member('z', 0, 0)], ''), undefined);
});
