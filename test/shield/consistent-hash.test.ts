import test from 'ava';
import { createBalancer, type Member } from '../../origin-shield/balancer.js';
import { ConsistentHashBalancer } from '../../origin-shield/consistent-hash.js';
import { HashRing } from '../../origin-shield/hash-ring.js';
import { LeastRequestBalancer } from '../../origin-shield/least-request.js';
import { RoundRobinBalancer } from '../../origin-shield/round-robin.js';

const members: Member[] = Array.from({ length: 4 }, (_, i) => ({ id: `http://127.0.0.1:${8001 + i}`, weight: 1, pending: 0 }));
const keys = Array.from({ length: 2_000 }, (_, i) => `https://example.com/p/${i}`);

test('factory builds each balancer by name and rejects unknown names', (t) => {
  t.true(createBalancer('round-robin') instanceof RoundRobinBalancer);
  t.true(createBalancer('least-request') instanceof LeastRequestBalancer);
  t.true(createBalancer('consistent-hash') instanceof ConsistentHashBalancer);
  t.throws(() => createBalancer('random' as never), { instanceOf: TypeError });
});

test('picks the ring owner of the key, the same as HashRing.lookup', (t) => {
  const balancer = new ConsistentHashBalancer();
  const ring = new HashRing(members);
  for (const key of keys) t.is(balancer.pick(members, key), ring.lookup(key));
});

test('same key, same member, whatever the list order', (t) => {
  const a = new ConsistentHashBalancer();
  const b = new ConsistentHashBalancer();
  const reversed = [...members].reverse();
  for (const key of keys) t.is(a.pick(members, key)!.id, b.pick(reversed, key)!.id);
});

test('an excluded owner hands its keys to the next member on the ring; others keep theirs', (t) => {
  const balancer = new ConsistentHashBalancer();
  const ring = new HashRing(members);
  const down = members[1]!;
  const exclude = new Set([down]);
  for (const key of keys) {
    const [owner, next] = [...ring.walk(key)];
    t.is(balancer.pick(members, key, exclude), owner === down ? next : owner);
  }
  t.is(balancer.pick(members, 'k', new Set(members)), undefined);
});

test('the ring follows membership changes', (t) => {
  const balancer = new ConsistentHashBalancer();
  const three = members.slice(0, 3);
  const ring3 = new HashRing(three);
  for (const key of keys.slice(0, 200)) t.is(balancer.pick(members, key), new HashRing(members).lookup(key));
  for (const key of keys.slice(0, 200)) t.is(balancer.pick(three, key), ring3.lookup(key));
});
