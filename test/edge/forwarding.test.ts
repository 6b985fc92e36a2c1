/**
 * Forwarding at the edge (RFC 9110 §7.6): methods and bodies, hop-by-hop fields, Via,
 * X-Forwarded-*, upstream failures (502/504) and what is (not) stored from them.
 */
import test from 'ava';
import { createHash, randomBytes } from 'node:crypto';
import { createServer, request as httpRequest } from 'node:http';
import { type AddressInfo } from 'node:net';
import { cacheStatus, raw, delay, fetchFrom, header, send, settle, setup, startTestEdge } from '../helpers/harness.js';

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');


// ---- methods and bodies -----------------------------------------------------------------------

for (const method of ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']) {
  test(`RFC 9110 §9 ${method} is forwarded with its method${['POST', 'PUT', 'PATCH'].includes(method) ? ' and body' : ''}`, async (t) => {
    const { origin, edge } = await setup(t, (q, res, body) => send(res, 200, { 'cache-control': 'no-store', 'x-method': q.method ?? '' }, `${q.method}:${body.toString()}`));
    const hasBody = ['POST', 'PUT', 'PATCH'].includes(method);
    const reply = await fetchFrom(edge.url, '/m', { method, body: hasBody ? 'payload-123' : undefined });
    t.is(reply.status, 200);
    t.is(origin.requests.length, 1);
    if (method === 'HEAD') {
      // A cache may fill a HEAD miss with a GET (RFC 9110 §9.3.2 lets it answer HEAD from a stored GET); either is forwarding.
      t.true(['HEAD', 'GET'].includes(origin.requests[0]!.method), origin.requests[0]!.method);
      t.is(reply.body.length, 0);
    } else {
      t.is(header(reply, 'x-method'), method);
      t.is(origin.requests[0]!.method, method);
    }
    t.is(origin.requests[0]!.body.toString(), hasBody ? 'payload-123' : '');
    if (method !== 'HEAD') t.is(reply.text, `${method}:${hasBody ? 'payload-123' : ''}`);
  });
}

test('RFC 9110 §9.3.3 a 5 MiB POST body reaches the origin intact', async (t) => {
  const { origin, edge } = await setup(t, (_q, res, body) => send(res, 200, {}, `${body.length}:${sha(body)}`));
  const payload = randomBytes(5 * 1024 * 1024);
  const reply = await fetchFrom(edge.url, '/upload', { method: 'POST', body: payload });
  t.is(reply.status, 200);
  t.is(reply.text, `${payload.length}:${sha(payload)}`);
  t.is(origin.requests[0]!.body.length, payload.length);
});

test('RFC 9110 §9.3.3 a request body is streamed: the origin receives bytes before the client has finished sending', async (t) => {
  let sawData!: () => void;
  const firstBytes = new Promise<void>((resolve) => (sawData = resolve));
  let received = 0;
  const origin = createServer((req, res) => {
    req.on('data', (c: Buffer) => {
      received += c.length;
      sawData();
    });
    req.on('end', () => send(res, 200, {}, String(received)));
  });
  await new Promise<void>((resolve) => origin.listen(0, '127.0.0.1', resolve));
  const edge = await startTestEdge(`http://127.0.0.1:${(origin.address() as AddressInfo).port}`);
  t.teardown(async () => {
    await edge.close();
    origin.closeAllConnections();
    await new Promise((resolve) => origin.close(resolve));
  });
  const { port } = new URL(edge.url);
  const replied = new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = httpRequest({ host: '127.0.0.1', port: Number(port), method: 'POST', path: '/stream', headers: { 'transfer-encoding': 'chunked' } }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.write(Buffer.alloc(64 * 1024, 1));
    const timeout = delay(3000).then(() => 'timeout' as const);
    void Promise.race([firstBytes.then(() => 'data' as const), timeout]).then((what) => {
      t.is(what, 'data', 'origin saw the first chunk while the upload was still open');
      req.end(Buffer.alloc(64 * 1024, 2));
    });
  });
  const result = await replied;
  t.is(result.status, 200);
  t.is(result.body, String(128 * 1024));
});

// ---- hop-by-hop fields ------------------------------------------------------------------------------

test('RFC 9110 §7.6.1 hop-by-hop request fields (and those Connection names) are not forwarded', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'no-store' }));
  const host = new URL(edge.url).host;
  const response = await raw(
    edge.url,
    [
      'GET /hop HTTP/1.1',
      `Host: ${host}`,
      'Connection: close, X-Hop',
      'X-Hop: secret',
      'Keep-Alive: timeout=300',
      'TE: trailers',
      'Trailer: X-Trail',
      'Upgrade: websocket',
      'Proxy-Authorization: Basic Zm9vOmJhcg==',
      'Proxy-Connection: keep-alive',
      'X-Keep: yes',
      '',
      '',
    ].join('\r\n'),
  );
  t.regex(response, /^HTTP\/1\.1 200/);
  const seen = origin.requests[0]!.headers;
  for (const name of ['x-hop', 'keep-alive', 'te', 'trailer', 'upgrade', 'proxy-authorization', 'proxy-connection']) t.is(seen[name], undefined, name);
  t.notRegex(String(seen.connection ?? ''), /x-hop/i);
  t.is(seen['x-keep'], 'yes');
});

for (const storable of [false, true]) {
  test(`RFC 9110 §7.6.1 hop-by-hop response fields (and those Connection names) are not delivered (${storable ? 'stored response, miss and hit' : 'not stored'})`, async (t) => {
    const { edge } = await setup(t, (_q, res) =>
      send(res, 200, {
        'cache-control': storable ? 'max-age=60' : 'no-store',
        connection: 'keep-alive, X-Hop-Res',
        'x-hop-res': 'secret',
        'keep-alive': 'timeout=99',
        upgrade: 'h2c',
        'proxy-authenticate': 'Basic realm="x"',
        'proxy-connection': 'keep-alive',
        'x-keep': 'yes',
      }),
    );
    const replies = [await fetchFrom(edge.url, '/hopres')];
    await settle();
    if (storable) replies.push(await fetchFrom(edge.url, '/hopres'));
    if (storable) t.regex(cacheStatus(replies[1]!), /; hit/);
    for (const reply of replies) {
      for (const name of ['x-hop-res', 'upgrade', 'proxy-authenticate', 'proxy-connection']) t.is(header(reply, name), undefined, name);
      t.not(header(reply, 'keep-alive'), 'timeout=99');
      t.notRegex(header(reply, 'connection') ?? '', /x-hop-res/i);
      t.is(header(reply, 'x-keep'), 'yes');
    }
  });
}

// ---- Via, X-Forwarded-* -----------------------------------------------------------------------------

test('RFC 9110 §7.6.3 Via is added to the forwarded request and to the response (appended to existing values)', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'max-age=60', via: '1.1 shield-a' }));
  const miss = await fetchFrom(edge.url, '/via', { headers: { via: '1.0 corp-proxy' } });
  await settle();
  const hit = await fetchFrom(edge.url, '/via');
  t.is(origin.requests[0]!.headers.via, '1.0 corp-proxy, 1.1 outpost-edge');
  t.is(header(miss, 'via'), '1.1 shield-a, 1.1 outpost-edge');
  t.is(header(hit, 'via'), '1.1 shield-a, 1.1 outpost-edge');
  const plain = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'no-store' }));
  const reply = await fetchFrom(plain.edge.url, '/via');
  t.is(plain.origin.requests[0]!.headers.via, '1.1 outpost-edge');
  t.is(header(reply, 'via'), '1.1 outpost-edge');
});

test('X-Forwarded-For/-Proto/-Host are set from what the edge saw; a client-sent X-Forwarded-* is not trusted by default', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'no-store' }));
  await fetchFrom(edge.url, '/xff', { headers: { 'x-forwarded-for': '6.6.6.6', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'evil.example' } });
  const seen = origin.requests[0]!.headers;
  t.is(seen['x-forwarded-for'], '127.0.0.1');
  t.is(seen['x-forwarded-proto'], 'http');
  t.is(seen['x-forwarded-host'], new URL(edge.url).host);
});

test('X-Forwarded-For/-Proto and Forwarded from a peer in trustForwardedFrom are kept (this hop appended); X-Forwarded-Host is still the cache key host', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'no-store' }), { trustForwardedFrom: ['127.0.0.1'] });
  await fetchFrom(edge.url, '/xff', {
    headers: { 'x-forwarded-for': '6.6.6.6', 'x-forwarded-proto': 'https', 'x-forwarded-host': 'www.example', forwarded: 'for=6.6.6.6;proto=https' },
  });
  const seen = origin.requests[0]!.headers;
  t.is(seen['x-forwarded-for'], '6.6.6.6, 127.0.0.1');
  t.is(seen['x-forwarded-proto'], 'https');
  t.is(seen['x-forwarded-host'], new URL(edge.url).host);
  t.is(seen['forwarded'], `for=6.6.6.6;proto=https, for=127.0.0.1;host="${new URL(edge.url).host}";proto=https`);
});

// ---- upstream failures ------------------------------------------------------------------------------

test('an unreachable upstream gets 502 with the request id in the body', async (t) => {
  const closed = createServer();
  await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
  const port = (closed.address() as AddressInfo).port;
  await new Promise((resolve) => closed.close(resolve));
  const edge = await startTestEdge(`http://127.0.0.1:${port}`);
  t.teardown(() => edge.close());
  const reply = await fetchFrom(edge.url, '/down');
  t.is(reply.status, 502);
  const id = header(reply, 'x-request-id');
  t.truthy(id);
  t.true(reply.text.includes(id!), reply.text);
  t.regex(cacheStatus(reply), /outpost-edge/);
  const post = await fetchFrom(edge.url, '/down', { method: 'POST', body: 'x' });
  t.is(post.status, 502);
  t.true(post.text.includes(header(post, 'x-request-id')!));
});

test('an upstream that does not answer within firstByteTimeoutMs gets 504, and the 504 is not cached', async (t) => {
  const { origin, edge } = await setup(
    t,
    async (_q, res, _b, n) => {
      if (n === 1) await delay(1500);
      if (!res.destroyed) send(res, 200, { 'cache-control': 'max-age=60' }, 'late-but-fine');
    },
    { firstByteTimeoutMs: 200 },
  );
  const started = Date.now();
  const first = await fetchFrom(edge.url, '/slow');
  t.is(first.status, 504);
  t.true(Date.now() - started < 1400, `took ${Date.now() - started} ms`);
  const second = await fetchFrom(edge.url, '/slow');
  t.is(second.status, 200);
  t.is(second.text, 'late-but-fine');
  t.is(origin.count('/slow'), 2);
});

for (const framing of ['content-length', 'chunked'] as const) {
  test(`a truncated upstream body (${framing}) is seen truncated by the client and not stored`, async (t) => {
    const full = 'x'.repeat(1000);
    const { origin, edge } = await setup(t, (_q, res, _b, n) => {
      if (n > 1) return send(res, 200, { 'cache-control': 'max-age=60' }, full);
      res.writeHead(200, { 'cache-control': 'max-age=60', ...(framing === 'content-length' ? { 'content-length': 1000 } : {}) });
      res.write(full.slice(0, 100));
      setTimeout(() => res.socket?.destroy(), 50);
    });
    const first = await fetchFrom(edge.url, '/trunc').then(
      (r) => r.text,
      (e: Error) => `error:${e.message}`,
    );
    t.not(first, full, 'the client must not see a complete-looking response');
    await settle();
    const second = await fetchFrom(edge.url, '/trunc');
    t.is(second.status, 200);
    t.is(second.text, full);
    t.is(origin.count('/trunc'), 2, 'the truncated response was not stored');
    await settle();
    const third = await fetchFrom(edge.url, '/trunc');
    t.is(third.text, full);
    t.regex(cacheStatus(third), /; hit/);
  });
}

test('RFC 9110 §7.6.3 Via on hits still names the edge after a 304 revalidation that carries its own Via', async (t) => {
  const { origin, edge } = await setup(t, (q, res) => {
    if (q.headers['if-none-match'] === '"v"') return void send(res, 304, { etag: '"v"', 'cache-control': 'max-age=60', via: '1.1 shield-a' }, '');
    send(res, 200, { etag: '"v"', 'cache-control': 'max-age=60', age: '100', via: '1.1 shield-a' });
  });
  await fetchFrom(edge.url, '/via304');
  await settle();
  const revalidated = await fetchFrom(edge.url, '/via304');
  await settle();
  const hit = await fetchFrom(edge.url, '/via304');
  t.is(origin.count('/via304'), 2);
  t.regex(cacheStatus(hit), /; hit/);
  t.is(header(revalidated, 'via'), '1.1 shield-a, 1.1 outpost-edge');
  t.is(header(hit, 'via'), '1.1 shield-a, 1.1 outpost-edge');
});

test('a client that goes away mid-download does not stop the fill: the complete response is stored', async (t) => {
  const chunk = 'z'.repeat(1024);
  const { origin, edge } = await setup(t, async (_q, res) => {
    res.writeHead(200, { 'cache-control': 'max-age=60', 'content-length': chunk.length * 10 });
    for (let i = 0; i < 10; i++) {
      res.write(chunk);
      await delay(20);
    }
    res.end();
  });
  const { port } = new URL(edge.url);
  await new Promise<void>((resolve) => {
    const req = httpRequest({ host: '127.0.0.1', port: Number(port), path: '/abandoned' }, (res) => {
      res.once('data', () => {
        req.destroy();
        resolve();
      });
    });
    req.on('error', () => resolve());
    req.end();
  });
  await delay(400);
  const hit = await fetchFrom(edge.url, '/abandoned');
  t.is(hit.text, chunk.repeat(10));
  t.regex(cacheStatus(hit), /; hit/);
  t.is(origin.count('/abandoned'), 1);
});
