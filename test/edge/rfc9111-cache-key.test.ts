/**
 * RFC 9111 §2 (the cache key: target URI — scheme, host, path and query) and the operator's
 * key options sortQuery and dropQueryParams.
 */
import test from 'ava';
import { cacheStatus, fetchFrom, settle, setup, type OriginHandler, type Reply } from '../helpers/harness.js';


/** Echoes host and URL so a wrongly shared entry shows in the body. */
const echo: OriginHandler = (q, res) => {
  const body = `${q.headers.host} ${q.url}`;
  res.writeHead(200, { 'cache-control': 'max-age=60', 'content-length': Buffer.byteLength(body) });
  res.end(body);
};

async function get(base: string, path: string, headers: Record<string, string> = {}): Promise<Reply> {
  const reply = await fetchFrom(base, path, { headers });
  await settle();
  return reply;
}

test('§2 the query is part of the key', async (t) => {
  const { origin, edge } = await setup(t, echo);
  await get(edge.url, '/k?a=1');
  const other = await get(edge.url, '/k?a=2');
  t.true(other.text.endsWith('/k?a=2'));
  t.is(origin.count(), 2);
  t.regex(cacheStatus(await get(edge.url, '/k?a=1')), /; hit/);
});

test('§2 query order matters by default', async (t) => {
  const { origin, edge } = await setup(t, echo);
  await get(edge.url, '/k?a=1&b=2');
  await get(edge.url, '/k?b=2&a=1');
  t.is(origin.count(), 2);
});

test('§2 (operator) sortQuery makes parameter order irrelevant', async (t) => {
  const { origin, edge } = await setup(t, echo, { sortQuery: true });
  await get(edge.url, '/k?a=1&b=2');
  const swapped = await get(edge.url, '/k?b=2&a=1');
  t.regex(cacheStatus(swapped), /; hit/);
  t.is(origin.count(), 1);
});

test('§2 (operator) dropQueryParams leaves named parameters out of the key but forwards the URL unchanged', async (t) => {
  const { origin, edge } = await setup(t, echo, { dropQueryParams: ['utm_source'] });
  await get(edge.url, '/k?id=1&utm_source=mail');
  const hit = await get(edge.url, '/k?id=1&utm_source=web');
  const plain = await get(edge.url, '/k?id=1');
  t.regex(cacheStatus(hit), /; hit/);
  t.regex(cacheStatus(plain), /; hit/);
  t.is(origin.count(), 1);
  t.is(origin.requests[0]!.url, '/k?id=1&utm_source=mail');
  await get(edge.url, '/k?id=2&utm_source=mail');
  t.is(origin.count(), 2, 'other parameters still count');
});

test('§2 a different Host is a different object', async (t) => {
  const { origin, edge } = await setup(t, echo);
  const a = await get(edge.url, '/h', { host: 'a.example' });
  const b = await get(edge.url, '/h', { host: 'b.example' });
  t.is(a.text, 'a.example /h');
  t.is(b.text, 'b.example /h');
  t.is(origin.count(), 2);
  const aAgain = await get(edge.url, '/h', { host: 'A.EXAMPLE' });
  t.is(aAgain.text, 'a.example /h', 'host names compare case-insensitively');
  t.regex(cacheStatus(aAgain), /; hit/);
});

test('§2 the path is case-sensitive', async (t) => {
  const { origin, edge } = await setup(t, echo);
  await get(edge.url, '/Case');
  const lower = await get(edge.url, '/case');
  t.true(lower.text.endsWith('/case'));
  t.is(origin.count(), 2);
});

test('§2 the key includes the scheme (Cache-Status key)', async (t) => {
  const { edge } = await setup(t, echo, { cacheStatusKey: true });
  const reply = await get(edge.url, '/s?q=1');
  t.true(cacheStatus(reply).includes(`key="${new URL(edge.url).protocol}//${new URL(edge.url).host}/s?q=1"`), cacheStatus(reply));
});
