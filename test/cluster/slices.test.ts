/**
 * Slices of a large object on a node of two workers (issue 13): the worker that owns the URL
 * fetches, stores and stitches the slices; the other one asks it, and it answers the client's range
 * itself, so no worker copies a whole large object across the hop.
 */
import test from 'ava';
import { Ownership } from '../../cluster/ownership.js';
import { cacheKey } from '../../pipeline/cache-key.js';
import { pattern, startOrigin } from '../helpers/harness.js';
import { startCluster, type RunningCluster } from '../helpers/cluster.js';
import { rangeHandler } from '../helpers/range-origin.js';

const SLICE = 64 * 1024;
const SIZE = 4 * SLICE + 123;

function pathOwnedBy(node: RunningCluster, owner: number, prefix: string): string {
  const ownership = new Ownership(0, 2);
  for (let i = 0; ; i++) {
    const path = `${prefix}${i}`;
    if (ownership.ownerOfUrl(cacheKey('http', new URL(node.url).host, path, { sortQuery: false, dropQueryParams: [] })) === owner) return path;
  }
}

test('a range of a sliced object asked of the worker that does not own it: the owner fetches only the slices it covers and answers the range', async (t) => {
  const body = pattern(SIZE, 21);
  const origin = await startOrigin(rangeHandler(() => ({ body, etag: '"k"' })));
  t.teardown(() => origin.close());
  const node = await startCluster(t, origin.url, { workers: 2, args: ['--slice-size', String(SLICE)] });
  const client = await node.clientOn(1);
  const path = pathOwnedBy(node, 0, '/video/');
  const part = await client.request({ method: 'GET', path, headers: { range: `bytes=${2 * SLICE + 10}-${2 * SLICE + 19}` } });
  const bytes = Buffer.from(await part.body.arrayBuffer());
  t.is(part.statusCode, 206);
  t.is(part.headers['content-range'], `bytes ${2 * SLICE + 10}-${2 * SLICE + 19}/${SIZE}`);
  t.true(bytes.equals(body.subarray(2 * SLICE + 10, 2 * SLICE + 20)));
  t.deepEqual(origin.requests.map((r) => r.headers.range), [`bytes=${2 * SLICE}-${3 * SLICE - 1}`]);
  const whole = await client.request({ method: 'GET', path });
  const wholeBytes = Buffer.from(await whole.body.arrayBuffer());
  t.true(wholeBytes.equals(body));
  t.is(origin.requests.length, 5, 'each slice fetched once, by the owner');
});
