import test from 'ava';
import { HashRing, hash32 } from '../../origin-shield/hash-ring.js';

const ids = (n: number, base = 7001) => Array.from({ length: n }, (_, i) => ({ id: `http://127.0.0.1:${base + i}` }));
const keys = Array.from({ length: 10_000 }, (_, i) => `https://example.com/assets/${i}.js?v=${i % 7}`);

function mapping(ring: HashRing): string[] {
  return keys.map((k) => ring.lookup(k)!.id);
}

test('hash32 is stable, 32-bit unsigned, and hashes UTF-8 bytes', (t) => {
  t.is(hash32('abc'), hash32('abc'));
  t.not(hash32('abc'), hash32('abd'));
  for (const s of ['', 'a', 'é', '€', '😀', '\ud800']) {
    const h = hash32(s);
    t.true(Number.isInteger(h) && h >= 0 && h < 2 ** 32);
  }
  // A lone surrogate hashes like U+FFFD, as its UTF-8 encoding would.
  t.is(hash32('\ud800'), hash32('\ufffd'));
  t.not(hash32('😀'), hash32('\ufffd\ufffd'));
});

test('empty ring finds nothing', (t) => {
  const ring = new HashRing([]);
  t.is(ring.lookup('x'), undefined);
  t.deepEqual([...ring.walk('x')], []);
});

test('single member owns every key', (t) => {
  const [only] = ids(1);
  const ring = new HashRing([only!]);
  t.true(keys.slice(0, 100).every((k) => ring.lookup(k) === only));
});

test('duplicate ids are rejected', (t) => {
  t.throws(() => new HashRing([{ id: 'a' }, { id: 'a' }]), { message: /duplicate/ });
});

test('same key maps to the same member regardless of member list order', (t) => {
  const members = ids(7);
  const reference = mapping(new HashRing(members));
  const reversed = mapping(new HashRing([...members].reverse()));
  const rotated = mapping(new HashRing([...members.slice(3), ...members.slice(0, 3)]));
  // Fresh objects with the same ids: only ids matter, not identity.
  const copies = mapping(new HashRing(members.map((m) => ({ id: m.id }))));
  t.deepEqual(reversed, reference);
  t.deepEqual(rotated, reference);
  t.deepEqual(copies, reference);
});

test('160 vnodes spread 10,000 keys within ±25% of even across members', (t) => {
  for (const n of [2, 3, 4, 5, 8]) {
    const ring = new HashRing(ids(n));
    const counts = new Map<string, number>();
    for (const id of mapping(ring)) counts.set(id, (counts.get(id) ?? 0) + 1);
    t.is(counts.size, n);
    const even = keys.length / n;
    for (const [id, count] of counts) {
      t.true(Math.abs(count - even) / even <= 0.25, `${n} members: ${id} got ${count} keys, even is ${even}`);
    }
  }
});

test('adding a member moves only about 1/N of the keys, all to the new member', (t) => {
  const members = ids(5);
  const before = mapping(new HashRing(members));
  const added = { id: 'http://127.0.0.1:7100' };
  const after = mapping(new HashRing([...members, added]));
  let moved = 0;
  for (let i = 0; i < keys.length; i++) {
    if (before[i] !== after[i]) {
      moved++;
      t.is(after[i], added.id, 'a key moved between two old members');
    }
  }
  const fraction = moved / keys.length;
  t.true(fraction > (1 / 6) * 0.6 && fraction < (1 / 6) * 1.4, `moved ${fraction}`);
});

test('removing a member moves only that member\'s keys (about 1/N)', (t) => {
  const members = ids(5);
  const before = mapping(new HashRing(members));
  const removed = members[2]!;
  const after = mapping(new HashRing(members.filter((m) => m !== removed)));
  let moved = 0;
  for (let i = 0; i < keys.length; i++) {
    if (before[i] !== after[i]) {
      moved++;
      t.is(before[i], removed.id, 'a key of a remaining member moved');
    }
    if (before[i] === removed.id) t.not(after[i], removed.id);
  }
  const fraction = moved / keys.length;
  t.true(fraction > 0.2 * 0.6 && fraction < 0.2 * 1.4, `moved ${fraction}`);
});

test('walk starts at the owner and yields every member once', (t) => {
  const members = ids(6);
  const ring = new HashRing(members);
  for (const key of keys.slice(0, 200)) {
    const order = [...ring.walk(key)];
    t.is(order[0]!, ring.lookup(key)!);
    t.is(order.length, members.length);
    t.is(new Set(order).size, members.length);
  }
});

test('walk order is the fallback: removing the owner sends its keys to the walk\'s second member', (t) => {
  const members = ids(5);
  const ring = new HashRing(members);
  for (const key of keys.slice(0, 500)) {
    const [owner, second] = [...ring.walk(key)];
    const without = new HashRing(members.filter((m) => m !== owner));
    t.is(without.lookup(key)!.id, second!.id);
  }
});

test('binary-search lookup agrees with a linear scan of the points', (t) => {
  const members = ids(4);
  const ring = new HashRing(members, { vnodesPerMember: 10 });
  // Rebuild the point list independently to check the search.
  const points = members
    .flatMap((m) => Array.from({ length: 10 }, (_, v) => ({ h: hash32(`${m.id}-${v}`), id: m.id })))
    .sort((a, b) => a.h - b.h || (a.id < b.id ? -1 : 1));
  for (const key of keys.slice(0, 2000)) {
    const h = hash32(key);
    const owner = points.find((p) => p.h >= h) ?? points[0]!;
    t.is(ring.lookup(key)!.id, owner.id);
  }
});

test('weight scales a member\'s share; weight 0 takes no keys', (t) => {
  const ring = new HashRing([{ id: 'a', weight: 1 }, { id: 'b', weight: 3 }, { id: 'c', weight: 0 }]);
  const counts: Record<string, number> = { a: 0, b: 0, c: 0 };
  for (const k of keys) counts[ring.lookup(k)!.id]!++;
  t.is(counts.c, 0);
  const share = counts.b! / keys.length;
  t.true(share > 0.65 && share < 0.85, `b share ${share}`);
  t.deepEqual([...ring.walk('k')].map((m) => m.id).sort(), ['a', 'b']);
});
