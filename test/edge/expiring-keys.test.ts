import test from 'ava';
import { ExpiringKeys } from '../../pipeline/expiring-keys.js';

test('a key is remembered until its deadline, then forgotten; delete forgets it at once', (t) => {
  let now = 1_000;
  const keys = new ExpiringKeys(() => now);
  keys.add('a', 500);
  keys.add('b', 500);
  t.true(keys.has('a'));
  keys.delete('b');
  t.false(keys.has('b'));
  now += 499;
  t.true(keys.has('a'));
  now += 1;
  t.false(keys.has('a'));
  t.false(keys.has('never'));
});

test('past its bound, adding drops every expired key (a set that is never asked about stays bounded)', (t) => {
  let now = 0;
  const keys = new ExpiringKeys(() => now, 3);
  for (const k of ['a', 'b', 'c']) keys.add(k, 10);
  now = 20;
  keys.add('d', 10);
  // The prune ran: only d is held (size is private; an expired key re-added would reveal nothing).
  t.is((keys as unknown as { until: Map<string, number> }).until.size, 1);
  t.true(keys.has('d'));
});
