/** Purge fan-out to peers: delivered, queued and retried (across restarts, in order), expired, rejected. */
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import test, { type ExecutionContext } from 'ava';
import { pino } from 'pino';
import { PurgeOutbox, type PurgeOutboxOptions, type PurgePeer } from '../../admin/purge-outbox.js';
import { tempDir } from '../helpers/temp-dir.js';

const logger = pino({ level: 'silent' });

interface Received { path: string; headers: IncomingHttpHeaders; body: unknown }

interface Peer {
  url: string;
  port: number;
  received: Received[];
  /** Status to answer with (200 by default), or 'hang' to never answer. */
  answer: number | 'hang';
  close(): Promise<void>;
}

/** A fake admin API on 127.0.0.1 recording what it gets; `port` 0 picks a free one. */
async function startPeer(t: ExecutionContext, port = 0): Promise<Peer> {
  const received: Received[] = [];
  const server: Server = createServer(async (req, res) => {
    let text = '';
    for await (const chunk of req) text += String(chunk);
    received.push({ path: req.url ?? '', headers: req.headers, body: JSON.parse(text) });
    if (peer.answer === 'hang') return;
    res.writeHead(peer.answer, { 'content-type': 'application/json' });
    res.end(JSON.stringify(peer.answer < 300 ? { purged: 1 } : { error: `no (${peer.answer})` }));
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  const bound = (server.address() as AddressInfo).port;
  const close = () => {
    server.closeAllConnections();
    return new Promise<void>((resolve) => server.close(() => resolve()));
  };
  const peer: Peer = { url: `http://127.0.0.1:${bound}`, port: bound, received, answer: 200, close };
  t.teardown(() => (server.listening ? close() : undefined));
  return peer;
}

/** A loopback port with nothing listening (a peer that is down). */
async function downPeer(t: ExecutionContext): Promise<{ url: string; port: number }> {
  const peer = await startPeer(t);
  await peer.close();
  return { url: peer.url, port: peer.port };
}

async function open(t: ExecutionContext, options: Partial<PurgeOutboxOptions> & Pick<PurgeOutboxOptions, 'location' | 'peers'>): Promise<PurgeOutbox> {
  const outbox = await PurgeOutbox.open({ retrySec: 60, logger, initialBackoffMs: 50, maxBackoffMs: 200, timeoutMs: 2000, ...options });
  t.teardown(() => outbox.close());
  return outbox;
}

async function until(condition: () => boolean, what: string, ms = 5000): Promise<void> {
  const deadline = Date.now() + ms;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

test('a peer answering 200 gets the exact body and its Bearer token; nothing is stored', async (t) => {
  const [a, b] = [await startPeer(t), await startPeer(t)];
  const location = tempDir(t, 'outpost-outbox-');
  const peers: PurgePeer[] = [{ url: a.url, token: 'secret-a' }, { url: `${b.url}/`, token: undefined }];
  const outbox = await open(t, { location, peers });
  const request = { tags: ['p-1', 'p-2'], soft: true };
  t.deepEqual(await outbox.forward(request), [{ peer: a.url, result: 'ok' }, { peer: `${b.url}/`, result: 'ok' }]);
  t.deepEqual(a.received.map((r) => [r.path, r.body, r.headers.authorization, r.headers['content-type']]), [['/purge', request, 'Bearer secret-a', 'application/json']]);
  t.deepEqual(b.received.map((r) => [r.path, r.body, r.headers.authorization]), [['/purge', request, undefined]]);
  t.deepEqual(outbox.pending(), {});
  t.deepEqual(outbox.counts, { delivered: 2, queued: 0, rejected: 0, expired: 0 });
  await outbox.close();
  const reopened = await open(t, { location, peers });
  t.deepEqual(reopened.pending(), {});
});

test.serial('a peer that is down gets the purge queued, and delivered once it is back', async (t) => {
  const down = await downPeer(t);
  const outbox = await open(t, { location: tempDir(t, 'outpost-outbox-'), peers: [{ url: down.url, token: 't' }] });
  const [result] = await outbox.forward({ url: 'https://a.example/x' });
  t.like(result, { peer: down.url, result: 'queued', error: 'ECONNREFUSED' });
  t.deepEqual(outbox.pending(), { [down.url]: 1 });
  const peer = await startPeer(t, down.port);
  await until(() => Object.keys(outbox.pending()).length === 0, 'the queue to drain');
  t.deepEqual(peer.received.map((r) => [r.body, r.headers.authorization]), [[{ url: 'https://a.example/x' }, 'Bearer t']]);
  t.deepEqual(outbox.counts, { delivered: 1, queued: 1, rejected: 0, expired: 0 });
});

test.serial('a queued purge survives a restart and is delivered exactly once', async (t) => {
  const down = await downPeer(t);
  const location = tempDir(t, 'outpost-outbox-');
  const peers = [{ url: down.url, token: 't' }];
  const first = await open(t, { location, peers });
  t.like((await first.forward({ prefix: 'http://a.example/static/' }))[0], { result: 'queued' });
  await first.close();
  const second = await open(t, { location, peers });
  t.deepEqual(second.pending(), { [down.url]: 1 });
  const peer = await startPeer(t, down.port);
  await until(() => peer.received.length > 0 && Object.keys(second.pending()).length === 0, 'the delivery');
  await sleep(300); // several backoff periods: a second delivery would show here
  t.deepEqual(peer.received.map((r) => r.body), [{ prefix: 'http://a.example/static/' }]);
  t.is(second.counts.delivered, 1);
  await second.close();
  const third = await open(t, { location, peers });
  t.deepEqual(third.pending(), {});
  await sleep(100);
  t.is(peer.received.length, 1);
});

test.serial('purges queued for one peer arrive in the order given', async (t) => {
  const down = await downPeer(t);
  const outbox = await open(t, { location: tempDir(t, 'outpost-outbox-'), peers: [{ url: down.url, token: undefined }] });
  const results = [
    ...(await outbox.forward({ url: 'http://a.example/1' })),
    ...(await Promise.all([outbox.forward({ url: 'http://a.example/2' }), outbox.forward({ all: true })])).flat(),
  ];
  t.deepEqual(results.map((r) => r.result), ['queued', 'queued', 'queued']);
  t.regex((results[1] as { error: string }).error, /earlier purge\(s\) still queued/);
  const peer = await startPeer(t, down.port);
  await until(() => peer.received.length === 3, 'three deliveries');
  t.deepEqual(peer.received.map((r) => r.body), [{ url: 'http://a.example/1' }, { url: 'http://a.example/2' }, { all: true }]);
  await until(() => Object.keys(outbox.pending()).length === 0, 'the queue to drain');
  // Once drained, the next purge goes straight out again.
  t.deepEqual(await outbox.forward({ url: 'http://a.example/4' }), [{ peer: down.url, result: 'ok' }]);
});

test.serial('an undeliverable purge is dropped once retrySec has passed', async (t) => {
  const down = await downPeer(t);
  let clock = 1_000_000;
  const location = tempDir(t, 'outpost-outbox-');
  const peers = [{ url: down.url, token: 't' }];
  const outbox = await open(t, { location, peers, retrySec: 30, now: () => clock });
  t.like((await outbox.forward({ all: true }))[0], { result: 'queued' });
  await sleep(150);
  t.is(outbox.counts.expired, 0);
  t.deepEqual(outbox.pending(), { [down.url]: 1 });
  clock += 30_000;
  await until(() => outbox.counts.expired === 1, 'the expiry');
  t.deepEqual(outbox.pending(), {});
  await outbox.close();
  t.deepEqual((await open(t, { location, peers })).pending(), {});
});

test.serial('a purge left stored past retrySec is dropped when the outbox opens again', async (t) => {
  const down = await downPeer(t);
  const location = tempDir(t, 'outpost-outbox-');
  const peers = [{ url: down.url, token: 't' }];
  const first = await open(t, { location, peers, retrySec: 0.2 });
  await first.forward({ all: true });
  await first.close();
  await sleep(250);
  const second = await open(t, { location, peers, retrySec: 0.2 });
  await until(() => second.counts.expired === 1, 'the expiry');
  t.deepEqual(second.pending(), {});
});

test('a 401 answer is rejected with its status and error, not retried', async (t) => {
  const peer = await startPeer(t);
  peer.answer = 401;
  const lines: string[] = [];
  const capture = pino({ level: 'info' }, { write: (line: string) => void lines.push(line) });
  const outbox = await open(t, { location: tempDir(t, 'outpost-outbox-'), peers: [{ url: peer.url, token: 'wrong-token-5x7' }], logger: capture });
  t.deepEqual(await outbox.forward({ all: true }), [{ peer: peer.url, result: 'rejected', status: 401, error: 'no (401)' }]);
  t.like(JSON.parse(lines.join('')), { level: 50, peer: peer.url, status: 401, error: 'no (401)' });
  t.false(lines.join('').includes('wrong-token-5x7'));
  await sleep(300);
  t.is(peer.received.length, 1);
  t.deepEqual(outbox.pending(), {});
  t.deepEqual(outbox.counts, { delivered: 0, queued: 0, rejected: 1, expired: 0 });
});

test('a 5xx answer is queued and retried until the peer accepts it', async (t) => {
  const peer = await startPeer(t);
  peer.answer = 503;
  const outbox = await open(t, { location: tempDir(t, 'outpost-outbox-'), peers: [{ url: peer.url, token: 't' }] });
  t.deepEqual(await outbox.forward({ all: true }), [{ peer: peer.url, result: 'queued', error: 'HTTP 503: no (503)' }]);
  await until(() => peer.received.length >= 3, 'retries');
  peer.answer = 200;
  await until(() => outbox.counts.delivered === 1, 'the delivery');
  t.deepEqual(outbox.pending(), {});
});

test('a peer that does not answer in time gets the purge queued', async (t) => {
  const peer = await startPeer(t);
  peer.answer = 'hang';
  const outbox = await open(t, { location: tempDir(t, 'outpost-outbox-'), peers: [{ url: peer.url, token: 't' }], timeoutMs: 100 });
  t.deepEqual(await outbox.forward({ all: true }), [{ peer: peer.url, result: 'queued', error: 'no answer within 100 ms' }]);
  t.deepEqual(outbox.pending(), { [peer.url]: 1 });
});

test.serial('setPeers drops the queue of a peer no longer listed and updates tokens', async (t) => {
  const [a, b] = [await downPeer(t), await downPeer(t)];
  const location = tempDir(t, 'outpost-outbox-');
  const outbox = await open(t, { location, peers: [{ url: a.url, token: 'old' }, { url: b.url, token: 'b' }] });
  t.deepEqual((await outbox.forward({ all: true })).map((r) => r.result), ['queued', 'queued']);
  t.deepEqual(outbox.pending(), { [a.url]: 1, [b.url]: 1 });
  const peers = [{ url: a.url, token: 'new' }];
  outbox.setPeers(peers);
  t.deepEqual(outbox.pending(), { [a.url]: 1 });
  await outbox.close();
  const reopened = await open(t, { location, peers });
  t.deepEqual(reopened.pending(), { [a.url]: 1 });
  const peer = await startPeer(t, a.port);
  await until(() => Object.keys(reopened.pending()).length === 0, 'the delivery');
  t.deepEqual(peer.received.map((r) => r.headers.authorization), ['Bearer new']);
});
