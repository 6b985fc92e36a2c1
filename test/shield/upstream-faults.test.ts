/**
 * Upstream faults through the whole chain (issue 13): a misbehaving origin ← shield ← edge, all
 * real servers on 127.0.0.1. For each fault: what the client sees, that neither tier stores a
 * broken response, and that the node keeps serving. Origins that break framing are raw TCP
 * servers (test/helpers/raw-origin.ts); the client reads raw bytes where framing is the point.
 *
 * Timing windows are wide on purpose (a loaded 2-core CI machine); no test asserts a tight time.
 */
import test, { type ExecutionContext } from 'ava';
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import { gzipSync } from 'node:zlib';
import { cacheStatus, delay, fetchFrom, header, startOrigin, waitFor, type Reply } from '../helpers/harness.js';
import type { RunningNode } from '../../pipeline/node-server.js';
import { startTestChain } from './fixtures/chain.js';
import { chunk, rawGet, rawOriginFor, responseHead } from '../helpers/raw-origin.js';

/** The chain these tests read with a raw client: plain HTTP/1.1 even under OUTPOST_TEST_CLIENT=h2. */
function chain(t: ExecutionContext, origin: string, overrides: { shield?: Record<string, unknown>; edge?: Record<string, unknown> } = {}) {
  return startTestChain(t, origin, { shield: overrides.shield, edge: { listenTls: '', ...overrides.edge } });
}


/** Every request names this host, so both tiers key `path` as http://www.test<path>. */
const HOST = 'www.test';

function get(base: string, path: string, headers: Record<string, string> = {}): Promise<Reply> {
  return fetchFrom(base, path, { headers: { host: HOST, ...headers } });
}

/** Variants a node holds for `path` once its fills and commits are done. */
async function storedVariants(node: RunningNode, path: string): Promise<number> {
  await node.pipeline.drain({ commits: true });
  return (await node.inspect(`http://${HOST}${path}`)).length;
}

/** Neither tier stores anything for `path`. */
async function nothingStored(t: ExecutionContext, nodes: { shield: RunningNode; edge: RunningNode }, path: string): Promise<void> {
  t.is(await storedVariants(nodes.shield, path), 0, `the shield stored ${path}`);
  t.is(await storedVariants(nodes.edge, path), 0, `the edge stored ${path}`);
}

const edgeHit = (reply: Reply): boolean => /outpost-edge; hit/.test(cacheStatus(reply));

/**
 * After a fault on `path`: the next request reaches the origin again and gets the whole body,
 * and the one after is an edge hit (the node recovered and caches again).
 */
async function refetchedThenCached(t: ExecutionContext, nodes: { shield: RunningNode; edge: RunningNode }, origin: { count(path?: string): number }, path: string, body: string | Buffer): Promise<void> {
  const before = origin.count(path);
  const again = await get(nodes.edge.url, path);
  t.is(again.status, 200);
  t.true(again.body.equals(Buffer.from(body)), `refetched body: ${again.body.length} bytes`);
  t.is(origin.count(path), before + 1, 'the next request reached the origin');
  await nodes.edge.pipeline.drain({ commits: true });
  const hit = await get(nodes.edge.url, path);
  t.true(hit.body.equals(Buffer.from(body)));
  t.true(edgeHit(hit), `expected an edge hit: ${cacheStatus(hit)}`);
  t.is(origin.count(path), before + 1);
}

const FULL = 'y'.repeat(1000);

// ---- an origin that resets mid-body -----------------------------------------------------------

for (const framing of ['content-length', 'chunked'] as const) {
  test(`RFC 9112 §8, RFC 9111 §3.3 an origin that resets mid-body (${framing}): the client that got headers sees a cut connection, edge and shield store nothing`, async (t) => {
    let cut!: () => void;
    const cutNow = new Promise<void>((resolve) => (cut = resolve));
    const head = framing === 'content-length'
      ? responseHead(200, { 'Content-Length': 1000, 'Cache-Control': 'max-age=60' })
      : responseHead(200, { 'Transfer-Encoding': 'chunked', 'Cache-Control': 'max-age=60' });
    const whole = framing === 'content-length' ? FULL : Buffer.concat([chunk(FULL), Buffer.from('0\r\n\r\n')]);
    const origin = await rawOriginFor(t, (socket, request) => {
      if (request.n > 1) return void socket.write(Buffer.concat([Buffer.from(head), Buffer.from(whole)]));
      socket.write(head + (framing === 'content-length' ? FULL.slice(0, 100) : chunk(FULL.slice(0, 100)).toString('latin1')));
      // Reset once the client has the response head (or after a while, whatever happens).
      const fallback = setTimeout(cut, 5_000);
      void cutNow.then(() => {
        clearTimeout(fallback);
        socket.resetAndDestroy();
      });
    });
    const nodes = await chain(t, origin.url);

    const first = await rawGet(nodes.edge.url, '/reset', { headers: { host: HOST }, onHead: () => cut() });
    t.is(first.status, 200, 'the head went out before the reset');
    t.false(first.timedOut);
    t.false(first.complete, `a cut body presented as complete (${first.framing}, ${first.body.length} bytes)`);
    t.true(first.closed, 'the connection was closed');
    t.true(first.body.length < 1000);
    t.true(FULL.startsWith(first.body.toString('latin1')), 'what arrived is a prefix of the body');
    if (first.framing === 'content-length') t.is(first.headers['content-length'], '1000', 'the declared length, not the short one');
    else t.is(first.framing, 'chunked');

    await nothingStored(t, nodes, '/reset');
    await refetchedThenCached(t, nodes, origin, '/reset', FULL);
  });
}

// ---- an origin that sends more, or fewer, bytes than its Content-Length --------------------------

test('RFC 9112 §6.3 an origin that sends more bytes than its Content-Length: nothing stored, the client never gets more than the declared length, nor the extra bytes', async (t) => {
  const origin = await rawOriginFor(t, (socket, request) => {
    if (request.path === '/extra' && request.n === 1) {
      socket.write(`${responseHead(200, { 'Content-Length': 5, 'Cache-Control': 'max-age=60' })}helloEXTRA-GARBAGE-THAT-IS-NOT-HTTP\r\n\r\n`);
    } else {
      socket.write(`${responseHead(200, { 'Content-Length': 5, 'Cache-Control': 'max-age=60' })}fresh`);
    }
  });
  const nodes = await chain(t, origin.url);

  // Watch the connection for a while after the declared bytes: it closes, or stays clean.
  const first = await rawGet(nodes.edge.url, '/extra', { headers: { host: HOST }, watchCloseMs: 1_500 });
  t.false(first.timedOut);
  const received = Buffer.concat([first.body, first.extra]).toString('latin1');
  t.false(received.includes('EXTRA'), `the extra bytes reached the client: ${JSON.stringify(received)}`);
  if (first.status === 200) {
    t.is(first.headers['content-length'], '5');
    t.true('hello'.startsWith(first.body.toString('latin1')), first.body.toString('latin1'));
    // Either all declared bytes and then a closed connection, or a cut one: never more.
    t.true(first.closed, 'the connection was closed');
    t.is(first.extra.length, 0);
  } else {
    t.true(first.status >= 500, `status ${first.status}`);
  }

  await nothingStored(t, nodes, '/extra');
  // Had anything been stored, this would be "hello" from the cache.
  await refetchedThenCached(t, nodes, origin, '/extra', 'fresh');
  // The poisoned upstream connection is not reused: another path gets a clean answer.
  const other = await get(nodes.edge.url, '/other');
  t.is(other.status, 200);
  t.is(other.text, 'fresh');
});

test('RFC 9112 §8, RFC 9111 §3.3 an origin that sends fewer bytes than its Content-Length and closes: cut connection, nothing stored', async (t) => {
  const origin = await rawOriginFor(t, (socket, request) => {
    if (request.n === 1) {
      // A clean close (FIN, not a reset) after 100 of 1000 bytes.
      socket.end(`${responseHead(200, { 'Content-Length': 1000, 'Cache-Control': 'max-age=60' })}${FULL.slice(0, 100)}`);
    } else {
      socket.write(`${responseHead(200, { 'Content-Length': 1000, 'Cache-Control': 'max-age=60' })}${FULL}`);
    }
  });
  const nodes = await chain(t, origin.url);

  const first = await rawGet(nodes.edge.url, '/short', { headers: { host: HOST } });
  t.false(first.timedOut);
  if (first.status === 200) {
    t.false(first.complete, `a short body presented as complete (${first.framing}, ${first.body.length} bytes)`);
    t.true(first.closed);
    t.is(first.headers['content-length'], '1000');
    t.true(first.body.length < 1000);
  } else {
    // The shield may have seen the whole failure before it answered the edge.
    t.true(first.status >= 500, `status ${first.status}`);
  }

  await nothingStored(t, nodes, '/short');
  await refetchedThenCached(t, nodes, origin, '/short', FULL);
});

// ---- an origin that hangs after the headers, or trickles ---------------------------------------

test('an origin that hangs after the headers: the shield\'s idle-body timeout cuts the response, nothing is stored, other requests are served meanwhile', async (t) => {
  const origin = await rawOriginFor(t, (socket, request) => {
    if (request.path === '/hang' && request.n === 1) {
      // Ten bytes, then silence with the connection open.
      socket.write(`${responseHead(200, { 'Content-Length': 1000, 'Cache-Control': 'max-age=60' })}${FULL.slice(0, 10)}`);
    } else {
      socket.write(`${responseHead(200, { 'Content-Length': 1000, 'Cache-Control': 'max-age=60' })}${FULL}`);
    }
  });
  // The shield's timeout is the one that fires: the edge's is far longer.
  const nodes = await chain(t, origin.url, { shield: { idleBodyTimeoutMs: 1_000 }, edge: { idleBodyTimeoutMs: 30_000 } });

  let headAt = 0;
  const started = Date.now();
  const hanging = rawGet(nodes.edge.url, '/hang', { headers: { host: HOST }, onHead: () => (headAt = Date.now()), timeoutMs: 25_000 });
  t.true(await waitFor(() => headAt !== 0, 10_000), 'the head reached the client');
  // While that body hangs, the node serves other requests.
  const other = await get(nodes.edge.url, '/other');
  t.is(other.status, 200);
  t.is(other.text, FULL);

  const first = await hanging;
  // Without a timeout the fill never ends, and neither would the checks below.
  if (!t.false(first.timedOut, 'the client was left hanging')) return;
  t.is(first.status, 200);
  t.false(first.complete);
  t.true(first.closed, 'the connection was cut');
  t.is(first.body.toString('latin1'), FULL.slice(0, 10));
  t.true(Date.now() - started < 20_000, 'cut by the shield\'s 1 s timeout, not the edge\'s 30 s one');

  await nothingStored(t, nodes, '/hang');
  await refetchedThenCached(t, nodes, origin, '/hang', FULL);
});

/** An origin that writes `body` one byte every `gapMs` (the first with the head) when `first`, else at once. */
function trickle(gapMs: number, body: string) {
  return (socket: Socket, first: boolean): void => {
    socket.write(responseHead(200, { 'Content-Length': body.length, 'Cache-Control': 'max-age=60' }));
    if (!first) return void socket.write(body);
    // The first byte with the head, so the head goes all the way to the client at once.
    socket.write(body[0]!);
    let at = 1;
    const timer = setInterval(() => {
      if (socket.destroyed) return clearInterval(timer);
      socket.write(body[at++]!);
      if (at === body.length) clearInterval(timer);
    }, gapMs);
    socket.once('close', () => clearInterval(timer));
  };
}

test('an origin that trickles one byte a second, within the idle-body timeout: the client gets the whole body and it is stored', async (t) => {
  const send = trickle(1_000, 'hello');
  const origin = await rawOriginFor(t, (socket, request) => send(socket, request.n === 1));
  // Gaps of 1 s against a 5 s timeout on both tiers.
  const nodes = await chain(t, origin.url, { shield: { idleBodyTimeoutMs: 5_000 }, edge: { idleBodyTimeoutMs: 5_000 } });

  const first = await rawGet(nodes.edge.url, '/trickle', { headers: { host: HOST }, timeoutMs: 30_000 });
  t.is(first.status, 200);
  t.true(first.complete, `cut after ${first.body.length} bytes`);
  t.is(first.body.toString('latin1'), 'hello');

  await nodes.edge.pipeline.drain({ commits: true });
  const second = await get(nodes.edge.url, '/trickle');
  t.is(second.text, 'hello');
  t.true(edgeHit(second), cacheStatus(second));
  t.is(origin.count('/trickle'), 1);
  t.is(await storedVariants(nodes.shield, '/trickle'), 1, 'the shield stored it too');
});

test('an origin that trickles with gaps longer than the idle-body timeout: cut, not stored', async (t) => {
  const send = trickle(3_000, 'hello');
  const origin = await rawOriginFor(t, (socket, request) => send(socket, request.n === 1));
  // Gaps of 3 s against the shield's 1 s timeout.
  const nodes = await chain(t, origin.url, { shield: { idleBodyTimeoutMs: 1_000 }, edge: { idleBodyTimeoutMs: 30_000 } });

  const first = await rawGet(nodes.edge.url, '/slow', { headers: { host: HOST }, timeoutMs: 25_000 });
  if (!t.false(first.timedOut)) return;
  t.is(first.status, 200);
  t.false(first.complete, `a cut body presented as complete (${first.body.length} bytes)`);
  t.true(first.closed);
  t.true(first.body.length < 5);

  await nothingStored(t, nodes, '/slow');
  await refetchedThenCached(t, nodes, origin, '/slow', 'hello');
});

// ---- a gzip body of the wrong length --------------------------------------------------------

const GZIPPED = gzipSync(Buffer.from(randomBytes(3_000).toString('base64')));

for (const fault of ['shorter', 'longer', 'truncated-chunked'] as const) {
  const what = {
    shorter: 'a gzip stream cut short of its Content-Length, then a close',
    longer: 'a gzip stream longer than its Content-Length',
    'truncated-chunked': 'a truncated gzip stream in chunks, without the last chunk, then a close',
  }[fault];
  test(`RFC 9112 §6.3 a 200 with Content-Encoding gzip and ${what}: never stored, never served as complete, bytes passed through undecoded`, async (t) => {
    const half = GZIPPED.subarray(0, Math.floor(GZIPPED.length / 2));
    const gzipHead = (fields: Record<string, string | number>) => Buffer.from(responseHead(200, { 'Content-Type': 'text/plain', 'Content-Encoding': 'gzip', 'Cache-Control': 'max-age=60', ...fields }));
    const origin = await rawOriginFor(t, (socket, request) => {
      if (request.n > 1) return void socket.write(Buffer.concat([gzipHead({ 'Content-Length': GZIPPED.length }), GZIPPED]));
      if (fault === 'shorter') socket.end(Buffer.concat([gzipHead({ 'Content-Length': GZIPPED.length }), half]));
      else if (fault === 'longer') socket.write(Buffer.concat([gzipHead({ 'Content-Length': half.length }), GZIPPED]));
      else socket.end(Buffer.concat([gzipHead({ 'Transfer-Encoding': 'chunked' }), chunk(half)]));
    });
    const nodes = await chain(t, origin.url);

    const first = await rawGet(nodes.edge.url, '/gz', { headers: { host: HOST, 'accept-encoding': 'gzip' }, watchCloseMs: 1_000 });
    t.false(first.timedOut);
    if (first.status === 200) {
      t.is(first.headers['content-encoding'], 'gzip', 'the encoding is passed through');
      t.true(GZIPPED.subarray(0, first.body.length).equals(first.body), 'the gzip bytes, undecoded');
      t.is(first.extra.length, 0, 'nothing past the message');
      if (fault === 'longer') {
        // At most the declared length, then a closed connection.
        t.true(first.body.length <= half.length);
        t.true(first.closed);
      } else {
        t.false(first.complete, `a ${first.body.length}-byte body presented as complete (${first.framing})`);
        t.true(first.closed);
      }
    } else {
      t.true(first.status >= 500, `status ${first.status}`);
    }

    await nothingStored(t, nodes, '/gz');
    await refetchedThenCached(t, nodes, origin, '/gz', GZIPPED);
  });
}

// ---- 500s in bursts ---------------------------------------------------------------------------

/** `clients` loops requesting `path` until `done()` or the deadline; every reply (or error) is kept. */
async function load(base: string, path: string, clients: number, done: (replies: ReadonlyArray<Reply | Error>) => boolean, deadlineMs: number): Promise<Array<Reply | Error>> {
  const replies: Array<Reply | Error> = [];
  const until = Date.now() + deadlineMs;
  await Promise.all(
    Array.from({ length: clients }, async () => {
      while (!done(replies) && Date.now() < until) {
        replies.push(await get(base, path).catch((error: Error) => error));
        await delay(5);
      }
    }),
  );
  return replies;
}

test('RFC 9111 §4.2.2 500s in a burst under concurrent load: never stored (500 is not heuristically cacheable), and the 200s after it are served and cached', async (t) => {
  let errorsLeft = 20;
  let oks = 0;
  const origin = await startOrigin((_req, res) => {
    if (errorsLeft > 0) {
      errorsLeft--;
      // Last-Modified would give a heuristically cacheable status a heuristic lifetime (§4.2.2).
      res.writeHead(500, { 'content-type': 'text/plain', 'content-length': 4, 'last-modified': new Date(Date.now() - 3_600_000).toUTCString() });
      res.end('down');
      return;
    }
    oks++;
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 2, 'cache-control': 'max-age=60' });
    res.end('up');
  });
  t.teardown(() => origin.close());
  const nodes = await chain(t, origin.url);

  const ok = (r: Reply | Error): boolean => !(r instanceof Error) && r.status === 200;
  // Ten clients hammer one key until 30 of them have had the 200 that follows the burst.
  const replies = await load(nodes.edge.url, '/burst', 10, (all) => all.filter(ok).length >= 30, 30_000);
  const recovered = replies.filter(ok).length;

  const errors = replies.filter((r): r is Error => r instanceof Error);
  t.deepEqual(errors.map((e) => e.message), [], 'no request failed at the connection level');
  const answers = replies as Reply[];
  const fiveHundreds = answers.filter((r) => r.status === 500);
  t.true(answers.every((r) => (r.status === 500 && r.text === 'down') || (r.status === 200 && r.text === 'up')), 'only the origin\'s own answers');
  t.is(errorsLeft, 0, 'the burst reached the origin');
  // Each 500 a client saw is one the origin sent: none came from a cache.
  t.true(fiveHundreds.length <= 20, `${fiveHundreds.length} 500s for 20 the origin sent`);
  t.deepEqual(fiveHundreds.filter((r) => /hit/.test(cacheStatus(r))).map(cacheStatus), []);
  t.true(recovered > 0, 'the node recovered');
  // Once the origin answers 200, the node caches it: a handful of concurrent misses at most.
  await Promise.all([nodes.edge.pipeline.drain({ commits: true }), nodes.shield.pipeline.drain({ commits: true })]);
  const originBefore = origin.count('/burst');
  const after = await Promise.all(Array.from({ length: 10 }, () => get(nodes.edge.url, '/burst')));
  t.true(after.every((r) => r.status === 200 && r.text === 'up' && edgeHit(r)), after.map(cacheStatus).join(' | '));
  t.is(origin.count('/burst'), originBefore, 'the recovered 200 is served from the cache');
  // Hit-for-miss after the 500s stops collapsing, so each client may fetch once or twice before the commit.
  t.true(oks <= 20, `${oks} 200s fetched from the origin`);
  t.log(`${answers.length} replies: ${fiveHundreds.length} × 500, ${recovered} × 200; origin sent ${oks} × 200`);
});

test('RFC 5861 §4 500s in a burst with a stored stale copy and stale-if-error: the stale copy is served throughout, the new version after', async (t) => {
  let failing = false;
  let sent500 = 0;
  let version = 'v1';
  const origin = await startOrigin((_req, res) => {
    if (failing) {
      sent500++;
      res.writeHead(500, { 'content-type': 'text/plain', 'content-length': 4 });
      res.end('down');
      return;
    }
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': version.length, 'cache-control': 'max-age=1, stale-if-error=600' });
    res.end(version);
  });
  t.teardown(() => origin.close());
  const nodes = await chain(t, origin.url);

  t.is((await get(nodes.edge.url, '/sie')).text, 'v1');
  await Promise.all([nodes.edge.pipeline.drain({ commits: true }), nodes.shield.pipeline.drain({ commits: true })]);
  // Stale on both tiers (max-age=1).
  await delay(2_200);
  failing = true;
  version = 'v2';
  // Ten clients until the origin has answered at least 20 of their requests with 500.
  const burst = await load(nodes.edge.url, '/sie', 10, () => sent500 >= 20, 30_000);
  t.true(sent500 >= 20, `the burst reached the origin ${sent500} times`);
  const bad = burst.filter((r) => r instanceof Error || r.status !== 200 || r.text !== 'v1');
  t.deepEqual(bad.map((r) => (r instanceof Error ? r.message : `${r.status} ${r.text} ${cacheStatus(r)}`)), [], 'every client got the stale copy during the burst');
  t.true((burst as Reply[]).some((r) => /stale-if-error/.test(cacheStatus(r))), 'served as stale-if-error');

  // The origin is back: the stale copies revalidate to the new version, which is cached again.
  failing = false;
  t.true(await waitFor(async () => (await get(nodes.edge.url, '/sie')).text === 'v2', 15_000), 'the new version reached the client');
  const now = await get(nodes.edge.url, '/sie');
  t.is(now.status, 200);
  t.is(now.text, 'v2');
  t.is(header(now, 'content-length'), '2');
});
