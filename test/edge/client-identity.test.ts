/**
 * identify (issue 12): who the client is and what the origin is told. X-Forwarded-For,
 * X-Forwarded-Proto and Forwarded (RFC 7239) are believed only from trusted hops; the host the
 * origin is told is the one in the cache key (no cache poisoning through X-Forwarded-Host); a
 * request id travels upstream, kept from a trusted hop.
 */
import test from 'ava';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { cacheStatus, fetchFrom, raw, send, settle, setup, startOrigin, startTestEdge } from '../helpers/harness.js';
import { startTestShield } from '../shield/fixtures/chain.js';

const noStore = (_q: unknown, res: Parameters<typeof send>[0]) => send(res, 200, { 'cache-control': 'no-store' });

test('spoofed X-Forwarded-For, X-Forwarded-Proto, X-Forwarded-Host and Forwarded from an untrusted client are replaced by what the edge saw', async (t) => {
  const { origin, edge } = await setup(t, noStore);
  await fetchFrom(edge.url, '/spoof', {
    headers: { 'x-forwarded-for': '6.6.6.6', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'evil.example', forwarded: 'for=6.6.6.6;proto=https;host=evil.example' },
  });
  const seen = origin.requests[0]!.headers;
  const host = new URL(edge.url).host;
  t.is(seen['x-forwarded-for'], '127.0.0.1');
  t.is(seen['x-forwarded-proto'], new URL(edge.url).protocol.slice(0, -1));
  t.is(seen['x-forwarded-host'], host);
  t.is(seen['forwarded'], `for=127.0.0.1;host="${host}";proto=${new URL(edge.url).protocol.slice(0, -1)}`);
});

test('RFC 7239 §4 a trusted hop’s Forwarded is extended with this hop’s element; §6 an IPv6 node is quoted and bracketed', async (t) => {
  const origin = await startOrigin(noStore);
  const edge = await startTestEdge(origin.url, { listen: '[::1]:0', trustForwardedFrom: ['::1'] });
  t.teardown(async () => {
    await edge.close();
    await origin.close();
  });
  await fetchFrom(edge.url, '/v6', { headers: { forwarded: 'for=192.0.2.60;proto=http', host: 'www.example' } });
  t.is(origin.requests[0]!.headers['forwarded'], 'for=192.0.2.60;proto=http, for="[::1]";host=www.example;proto=http');
});

test('cache poisoning: with an absolute-form target, the target’s host is the cache key (RFC 9112 §3.2.2) and the only host the origin is told, in Host and X-Forwarded-Host', async (t) => {
  // An origin that builds links from X-Forwarded-Host, as many frameworks do.
  const { origin, edge } = await setup(t, (req, res) => {
    const linkHost = req.headers['x-forwarded-host'] ?? req.headers.host;
    send(res, 200, { 'cache-control': 'max-age=60' }, `<a href="https://${linkHost}/login">login</a>`);
  });
  const attack = await raw(edge.url, 'GET http://victim.example/p HTTP/1.1\r\nHost: attacker.example\r\nX-Forwarded-Host: attacker.example\r\nConnection: close\r\n\r\n');
  t.regex(attack, /^HTTP\/1\.1 200/);
  t.false(attack.includes('attacker.example'), 'the attacker’s host is in no link');
  t.is(origin.requests[0]!.headers.host, 'victim.example');
  t.is(origin.requests[0]!.headers['x-forwarded-host'], 'victim.example');
  await settle();
  // A victim asking for the page gets the stored copy, with its own host in the links.
  const victim = await fetchFrom(edge.url, '/p', { headers: { host: 'victim.example' } });
  t.regex(cacheStatus(victim), /; hit/);
  t.is(victim.text, '<a href="https://victim.example/login">login</a>');
  t.is(origin.count(), 1);
});

test('cache poisoning: a client’s X-Forwarded-Host never reaches the origin, even from a trusted hop', async (t) => {
  const { origin, edge } = await setup(t, (req, res) => send(res, 200, { 'cache-control': 'max-age=60' }, `host=${req.headers['x-forwarded-host']}`), {
    trustForwardedFrom: ['127.0.0.1'],
  });
  const poisoned = await fetchFrom(edge.url, '/xfh', { headers: { host: 'victim.example', 'x-forwarded-host': 'attacker.example' } });
  t.is(poisoned.text, 'host=victim.example');
  t.is(origin.requests[0]!.headers['x-forwarded-host'], 'victim.example');
});

test('the request id: the edge’s own travels upstream in X-Request-Id; an untrusted client’s is replaced', async (t) => {
  const { origin, edge } = await setup(t, noStore);
  await fetchFrom(edge.url, '/id', { headers: { 'x-request-id': 'chosen-by-client' } });
  const sent = origin.requests[0]!.headers['x-request-id'];
  t.truthy(sent);
  t.not(sent, 'chosen-by-client');
  await fetchFrom(edge.url, '/id2');
  t.not(origin.requests[1]!.headers['x-request-id'], sent, 'one id per request');
});

test('the request id of a trusted hop is kept: sent upstream, and named in error bodies; a malformed one is replaced', async (t) => {
  const closed = createServer();
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
  const port = (closed.address() as AddressInfo).port;
  await new Promise<void>((resolve) => closed.close(() => resolve()));
  const dead = await startTestEdge(`http://127.0.0.1:${port}`, { trustForwardedFrom: ['127.0.0.1'] });
  const { origin, edge } = await setup(t, noStore, { trustForwardedFrom: ['127.0.0.1'] });
  t.teardown(() => dead.close());
  await fetchFrom(edge.url, '/kept', { headers: { 'x-request-id': 'lb-7f3a9c' } });
  t.is(origin.requests[0]!.headers['x-request-id'], 'lb-7f3a9c');
  const failed = await fetchFrom(dead.url, '/down', { headers: { 'x-request-id': 'lb-8b21' } });
  t.is(failed.status, 502);
  t.regex(failed.text, /request id: lb-8b21/);
  await fetchFrom(edge.url, '/odd', { headers: { 'x-request-id': 'has spaces in it' } });
  t.not(origin.requests[1]!.headers['x-request-id'], 'has spaces in it');
  await fetchFrom(edge.url, '/long', { headers: { 'x-request-id': 'x'.repeat(129) } });
  t.not(origin.requests[2]!.headers['x-request-id'], 'x'.repeat(129));
  // A quote or backslash would break the access log's JSON and the error bodies' one line.
  await fetchFrom(edge.url, '/quoted', { headers: { 'x-request-id': 'a"b\\c' } });
  t.not(origin.requests[3]!.headers['x-request-id'], 'a"b\\c');
  t.regex(String(origin.requests[3]!.headers['x-request-id']), /^[0-9a-z]+-[0-9a-z]+$/);
});

test('one request id through edge, shield and origin when the shield trusts the edge', async (t) => {
  const origin = await startOrigin(noStore);
  const shield = await startTestShield(origin.url, { trustForwardedFrom: ['127.0.0.1'] });
  const edge = await startTestEdge(shield.url, { trustForwardedFrom: ['127.0.0.1'] });
  const untrusting = await startTestShield(origin.url);
  const edgeOfUntrusting = await startTestEdge(untrusting.url, { trustForwardedFrom: ['127.0.0.1'] });
  t.teardown(async () => {
    await edge.close();
    await edgeOfUntrusting.close();
    await shield.close();
    await untrusting.close();
    await origin.close();
  });
  await fetchFrom(edge.url, '/chain', { headers: { 'x-request-id': 'lb-chain-1' } });
  t.is(origin.requests[0]!.headers['x-request-id'], 'lb-chain-1');
  t.is(origin.requests[0]!.headers['x-forwarded-for'], '127.0.0.1, 127.0.0.1', 'the client, then the edge');
  await fetchFrom(edgeOfUntrusting.url, '/chain2', { headers: { 'x-request-id': 'lb-chain-2' } });
  t.not(origin.requests[1]!.headers['x-request-id'], 'lb-chain-2', 'a shield that does not trust the edge uses its own');
});
