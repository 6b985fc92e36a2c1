import test from 'ava';
import { fetchFrom, header, startOrigin, startTestEdge } from '../helpers/harness.js';

test('a cacheable response is stored and served as a hit', async (t) => {
  const origin = await startOrigin((_req, res) => {
    res.writeHead(200, { 'cache-control': 'max-age=60', 'content-type': 'text/plain' });
    res.end('hello');
  });
  const edge = await startTestEdge(origin.url);
  t.teardown(async () => { await edge.close(); await origin.close(); });
  const first = await fetchFrom(edge.url, '/a');
  const second = await fetchFrom(edge.url, '/a');
  t.is(first.text, 'hello');
  t.is(second.text, 'hello');
  t.is(origin.count('/a'), 1);
  console.log(first.headers, second.headers);
  t.regex(header(second, 'cache-status')!, /hit/);
});
