import test from 'ava';
import type { Member } from '../../origin-shield/balancer.js';
import { RoundRobinBalancer } from '../../origin-shield/round-robin.js';

const member = (id: string, weight = 1): Member => ({ id, weight, pending: 0 });

test('smooth weighted order matches nginx for weights 5,1,1', (t) => {
  const members = [member('a', 5), member('b', 1), member('c', 1)];
  const rr = new RoundRobinBalancer();
  const order = Array.from({ length: 14 }, () => rr.pick(members, '')!.id).join('');
  t.is(order, 'aabacaa' + 'aabacaa');
});

test('proportions are exact over every cycle of sum(weights) picks', (t) => {
  const members = [member('a', 3), member('b', 2), member('c', 1), member('d', 4)];
  const rr = new RoundRobinBalancer();
  for (let cycle = 0; cycle < 5; cycle++) {
    const counts: Record<string, number> = {};
    for (let i = 0; i < 10; i++) {
      const id = rr.pick(members, '')!.id;
      counts[id] = (counts[id] ?? 0) + 1;
    }
    t.deepEqual(counts, { a: 3, b: 2, c: 1, d: 4 });
  }
});

test('equal weights go round in list order', (t) => {
  const members = [member('a'), member('b'), member('c')];
  const rr = new RoundRobinBalancer();
  t.deepEqual(Array.from({ length: 6 }, () => rr.pick(members, '')!.id), ['a', 'b', 'c', 'a', 'b', 'c']);
});

test('excluded and zero-weight members are skipped; the rest keep their proportions', (t) => {
  const a = member('a', 2);
  const b = member('b', 1);
  const c = member('c', 5);
  const z = member('z', 0);
  const rr = new RoundRobinBalancer();
  const counts: Record<string, number> = {};
  for (let i = 0; i < 30; i++) {
    const id = rr.pick([a, b, c, z], '', new Set([c]))!.id;
    counts[id] = (counts[id] ?? 0) + 1;
  }
  t.deepEqual(counts, { a: 20, b: 10 });
});

test('nothing to pick gives undefined', (t) => {
  const rr = new RoundRobinBalancer();
  const a = member('a');
  t.is(rr.pick([], ''), undefined);
  t.is(rr.pick([a], '', new Set([a])), undefined);
  t.is(rr.pick([member('z', 0)], ''), undefined);
});

test('a rebuilt member list with the same ids continues the cycle', (t) => {
  const rr = new RoundRobinBalancer();
  t.is(rr.pick([member('a', 2), member('b', 1)], '')!.id, 'a');
  // New objects, same ids: state is keyed by id.
  t.is(rr.pick([member('a', 2), member('b', 1)], '')!.id, 'b');
  t.is(rr.pick([member('a', 2), member('b', 1)], '')!.id, 'a');
});
