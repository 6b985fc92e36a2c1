/** Key ownership over workers (issue 9): deterministic, spread, stable when the worker count changes. */
import test from 'ava';
import { Ownership } from '../../cluster/ownership.js';
import { entryKey } from '../../storage/keys.js';

const urls = Array.from({ length: 20_000 }, (_, i) => `https://example.com/objects/${i}?v=${i % 7}`);

test('every variant of a URL has the URL\'s owner, and every worker computes the same owner', (t) => {
  const a = new Ownership(0, 4);
  const b = new Ownership(3, 4);
  for (const url of urls.slice(0, 500)) {
    const owner = a.ownerOfUrl(url);
    t.is(b.ownerOfUrl(url), owner);
    t.is(a.ownerOfKey(entryKey(url, '')), owner);
    t.is(a.ownerOfKey(entryKey(url, 'accept-encoding=gzip')), owner);
  }
  t.true(new Ownership(2, 4).ownsUrl(urls.find((u) => a.ownerOfUrl(u) === 2)!));
});

test('keys spread over the workers, and adding a worker moves about 1/N of them', (t) => {
  const four = new Ownership(0, 4);
  const five = new Ownership(0, 5);
  const counts = [0, 0, 0, 0];
  let moved = 0;
  for (const url of urls) {
    const owner = four.ownerOfUrl(url);
    counts[owner]!++;
    const next = five.ownerOfUrl(url);
    if (next !== owner) {
      moved++;
      t.is(next, 4, 'a key only ever moves to the new worker');
    }
  }
  for (const count of counts) t.true(count > urls.length * 0.18 && count < urls.length * 0.32, `share ${count / urls.length}`);
  t.true(moved > urls.length * 0.12 && moved < urls.length * 0.28, `moved ${moved / urls.length}`);
});

test('a worker index outside the count is refused', (t) => {
  t.throws(() => new Ownership(2, 2), { instanceOf: RangeError });
  t.throws(() => new Ownership(0, 0), { instanceOf: RangeError });
});
