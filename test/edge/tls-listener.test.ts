/**
 * The edge's HTTPS listener end to end (issue 12): certificates by SNI, reloaded from disk,
 * ALPN h2 and http/1.1 into one cache, TLS 1.2+ only, session resumption, HSTS, --redirect-http,
 * and https:// upstreams verified against a CA, with a client certificate, or (explicitly) not.
 */
import test from 'ava';
import { X509Certificate } from 'node:crypto';
import { renameSync, writeFileSync } from 'node:fs';
import http2 from 'node:http2';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { connect as tlsConnect, type ConnectionOptions, type TLSSocket } from 'node:tls';
import { Agent, request } from 'undici';
import { fetchFrom, header, raw, send, setup, startTestEdge, waitFor, type TestEdge } from '../helpers/harness.js';
import { makeCa, makeCertificate, writePair, type PemPair } from '../helpers/certificates.js';
import { startTestShield } from '../shield/fixtures/chain.js';
import { tempDir } from '../helpers/temp-dir.js';

const cacheable = (_q: unknown, res: Parameters<typeof send>[0]) => send(res, 200, { 'cache-control': 'max-age=60' }, 'hello over tls');

/** Connects, returns what the server presented and negotiated, and closes. */
function handshake(
  url: string,
  options: ConnectionOptions,
): Promise<{ cn: string; serial: string; cipher: string; alpn: string | false; protocol: string | null; session: Buffer | undefined; reused: boolean }> {
  const { hostname, port } = new URL(url);
  return new Promise((resolve, reject) => {
    let session: Buffer | undefined;
    const socket: TLSSocket = tlsConnect({ host: hostname, port: Number(port), ...options }, () => {
      const peer = socket.getPeerCertificate();
      const result = { cn: String(peer.subject?.CN), serial: String(peer.serialNumber), cipher: socket.getCipher().name, alpn: socket.alpnProtocol ?? false, protocol: socket.getProtocol(), reused: socket.isSessionReused() };
      // TLS 1.3 tickets arrive after the handshake: wait a moment for one.
      setTimeout(() => {
        socket.end();
        resolve({ ...result, session });
      }, 50);
    });
    socket.on('session', (s: Buffer) => (session = s));
    socket.on('error', reject);
  });
}

async function tlsEdge(t: Parameters<typeof setup>[0], pairs: Array<{ certFile: string; keyFile: string }>, overrides: Record<string, unknown> = {}) {
  return setup(t, cacheable, { listenTls: '127.0.0.1:0', tlsCert: pairs.map((p) => p.certFile), tlsKey: pairs.map((p) => p.keyFile), ...overrides });
}

test('SNI: each name gets its own certificate, a wildcard covers one label, no SNI or an unknown name gets the first pair', async (t) => {
  const dir = tempDir(t, 'outpost-tls-');
  const ca = await makeCa();
  const pairs = [
    writePair(dir, 'default', await makeCertificate(['default.example'], { ca })),
    writePair(dir, 'a', await makeCertificate(['a.example'], { ca })),
    writePair(dir, 'wild', await makeCertificate(['*.wild.example'], { ca })),
  ];
  const { edge } = await tlsEdge(t, pairs);
  const url = edge.tlsUrl!;
  t.is((await handshake(url, { servername: 'a.example', ca: ca.cert })).cn, 'a.example');
  t.is((await handshake(url, { servername: 'x.wild.example', ca: ca.cert })).cn, '*.wild.example');
  t.is((await handshake(url, { servername: 'y.x.wild.example', ca: ca.cert, checkServerIdentity: () => undefined })).cn, 'default.example');
  t.is((await handshake(url, { servername: 'unknown.example', ca: ca.cert, checkServerIdentity: () => undefined })).cn, 'default.example');
  t.is((await handshake(url, { ca: ca.cert, checkServerIdentity: () => undefined })).cn, 'default.example');
});

test('ALPN offers h2 and http/1.1; both reach one cache', async (t) => {
  const dir = tempDir(t, 'outpost-tls-');
  const pem = await makeCertificate(['localhost']);
  const { origin, edge } = await tlsEdge(t, [writePair(dir, 'edge', pem)]);
  const url = edge.tlsUrl!.replace('127.0.0.1', 'localhost');
  t.is((await handshake(url, { ca: pem.cert, ALPNProtocols: ['h2', 'http/1.1'] })).alpn, 'h2');
  t.is((await handshake(url, { ca: pem.cert, ALPNProtocols: ['http/1.1'] })).alpn, 'http/1.1');
  t.is((await handshake(url, { ca: pem.cert })).alpn, false, 'a client without ALPN gets HTTP/1.1');
  const h1 = new Agent({ connect: { ca: pem.cert } });
  const h2 = new Agent({ allowH2: true, connect: { ca: pem.cert } });
  t.teardown(() => Promise.all([h1.close(), h2.close()]).then(() => undefined));
  const first = await request(`${url}/one`, { dispatcher: h1 });
  await first.body.text();
  const second = await request(`${url}/one`, { dispatcher: h2 });
  t.is(await second.body.text(), 'hello over tls');
  t.regex(String(second.headers['cache-status']), /; hit/, 'the HTTP/2 client is served what the HTTP/1.1 client filled');
  t.is(origin.count(), 1);
});

test('TLS 1.3 by default; TLS 1.2 negotiates an ECDHE suite with an AEAD cipher (the refusal of 1.1 and of CBC suites: tls-certificates)', async (t) => {
  const dir = tempDir(t, 'outpost-tls-');
  const pem = await makeCertificate(['localhost']);
  const { edge } = await tlsEdge(t, [writePair(dir, 'edge', pem)]);
  const url = edge.tlsUrl!;
  const options = { ca: pem.cert, servername: 'localhost' };
  t.is((await handshake(url, options)).protocol, 'TLSv1.3');
  const tls12 = await handshake(url, { ...options, maxVersion: 'TLSv1.2' });
  t.is(tls12.protocol, 'TLSv1.2');
  t.regex(tls12.cipher, /^ECDHE-ECDSA-(AES(128|256)-GCM-SHA(256|384)|CHACHA20-POLY1305)$/);
});

test('sessions resume from a ticket, also after a renewed certificate was loaded (the shared ticket key is kept), and clients without SNI get the renewed one', async (t) => {
  const dir = tempDir(t, 'outpost-tls-');
  const ca = await makeCa();
  const pair = writePair(dir, 'edge', await makeCertificate(['localhost'], { ca }));
  const { edge } = await tlsEdge(t, [pair]);
  const options = { ca: ca.cert, servername: 'localhost' };
  for (const maxVersion of ['TLSv1.2', 'TLSv1.3'] as const) {
    const first = await handshake(edge.tlsUrl!, { ...options, maxVersion });
    t.truthy(first.session);
    t.true((await handshake(edge.tlsUrl!, { ...options, maxVersion, session: first.session! })).reused, maxVersion);
  }
  const before = await handshake(edge.tlsUrl!, options);
  const renewed = await makeCertificate(['localhost'], { ca });
  writePair(dir, 'edge', renewed);
  // As SIGHUP does: the files are re-read, and the listener's own context (no SNI) replaced.
  edge.reconfigure(edge.config);
  const noSni = await handshake(edge.tlsUrl!, { ca: ca.cert, checkServerIdentity: () => undefined });
  t.is(noSni.serial, new X509Certificate(renewed.cert).serialNumber, 'a client without SNI gets the renewed certificate');
  t.true((await handshake(edge.tlsUrl!, { ...options, session: before.session! })).reused, 'a ticket from before the renewal still resumes');
});

test('a certificate replaced on disk is served without a restart; a broken one is refused and the old one keeps serving', async (t) => {
  const dir = tempDir(t, 'outpost-tls-');
  const ca = await makeCa();
  const pair = writePair(dir, 'edge', await makeCertificate(['localhost'], { ca }));
  const { edge } = await tlsEdge(t, [pair]);
  const serial = async () => {
    const { hostname, port } = new URL(edge.tlsUrl!);
    return new Promise<string>((resolve, reject) => {
      const socket = tlsConnect({ host: hostname, port: Number(port), ca: ca.cert, servername: 'localhost' }, () => {
        resolve(socket.getPeerCertificate().serialNumber);
        socket.end();
      });
      socket.on('error', reject);
    });
  };
  const original = await serial();
  // Renewal as cert-manager and certbot do it: new files renamed over the old ones.
  const renewed = await makeCertificate(['localhost'], { ca });
  writeFileSync(`${pair.keyFile}.tmp`, renewed.key);
  writeFileSync(`${pair.certFile}.tmp`, renewed.cert);
  renameSync(`${pair.keyFile}.tmp`, pair.keyFile);
  renameSync(`${pair.certFile}.tmp`, pair.certFile);
  let current = original;
  t.true(await waitFor(async () => (current = await serial()) !== original, 5_000), 'the renewed certificate is served');
  writeFileSync(pair.certFile, '-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n');
  // A SIGHUP re-reads the files too: the broken one is refused, the renewed one stays.
  edge.reconfigure(edge.config);
  await new Promise((resolve) => setTimeout(resolve, 300));
  t.is(await serial(), current);
  const reply = await fetchFrom(edge.url, '/still-serving');
  t.is(reply.status, 200);
});

test('HSTS is sent over HTTPS only (HTTP/1.1 and HTTP/2), when configured; a reload changes it for the next response', async (t) => {
  const dir = tempDir(t, 'outpost-tls-');
  const pem = await makeCertificate(['localhost']);
  const pair = writePair(dir, 'edge', pem);
  const { edge } = await tlsEdge(t, [pair], { hsts: 'max-age=31536000; includeSubDomains' });
  const url = edge.tlsUrl!.replace('127.0.0.1', 'localhost');
  const h1 = new Agent({ connect: { ca: pem.cert } });
  const h2 = new Agent({ allowH2: true, connect: { ca: pem.cert } });
  t.teardown(() => Promise.all([h1.close(), h2.close()]).then(() => undefined));
  const hsts = async (dispatcher: Agent) => {
    const reply = await request(`${url}/hsts`, { dispatcher });
    await reply.body.text();
    return reply.headers['strict-transport-security'];
  };
  t.is(await hsts(h1), 'max-age=31536000; includeSubDomains');
  t.is(await hsts(h2), 'max-age=31536000; includeSubDomains');
  t.is(header(await fetchFrom(edge.url, '/hsts'), 'strict-transport-security'), undefined, 'RFC 6797 §7.2: never over plain HTTP');
  edge.reconfigure({ ...edge.config, hsts: '' });
  t.is(await hsts(h1), undefined, 'none when not configured');
  edge.reconfigure({ ...edge.config, hsts: 'max-age=60' });
  t.is(await hsts(h2), 'max-age=60');
});

test('--redirect-http answers plain HTTP with 308 (not stored) to the HTTPS listener, the health path excepted; no valid Host is a 400; a reload turns it off', async (t) => {
  const dir = tempDir(t, 'outpost-tls-');
  const pem = await makeCertificate(['localhost']);
  const { origin, edge } = await tlsEdge(t, [writePair(dir, 'edge', pem)], { redirectHttp: true });
  const tlsPort = new URL(edge.tlsUrl!).port;
  const reply = await fetchFrom(edge.url, '/path?q=1', { headers: { host: 'www.example:8080' } });
  t.is(reply.status, 308);
  t.is(header(reply, 'location'), `https://www.example:${tlsPort}/path?q=1`);
  t.is(header(reply, 'cache-control'), 'no-store');
  t.is((await fetchFrom(edge.url, '/__outpost/health')).status, 200);
  t.regex(await raw(edge.url, 'GET /nohost HTTP/1.0\r\n\r\n'), /^HTTP\/1\.1 400 /, 'HTTP/1.0 without Host: nowhere to redirect to');
  t.regex(await raw(edge.url, 'GET /x HTTP/1.1\r\nHost: evil.example/@x\r\nConnection: close\r\n\r\n'), /^HTTP\/1\.1 400 /, 'a Host that is no host name');
  t.is(origin.count(), 0);
  edge.reconfigure({ ...edge.config, redirectHttp: false });
  t.is((await fetchFrom(edge.url, '/served')).status, 200);
});

// ---- https:// upstreams (re-encryption) ------------------------------------------------------

async function httpsOrigin(t: Parameters<typeof setup>[0], pem: PemPair, options: { clientCa?: string } = {}) {
  const seen: Array<{ servername: string | false; clientCn: string | undefined }> = [];
  const server = createHttpsServer({ ...pem, ...(options.clientCa ? { ca: options.clientCa, requestCert: true, rejectUnauthorized: true } : {}) }, (req, res) => {
    const socket = req.socket as TLSSocket;
    seen.push({ servername: (socket as TLSSocket & { servername?: string | false }).servername ?? false, clientCn: String(socket.getPeerCertificate()?.subject?.CN) });
    send(res, 200, { 'cache-control': 'no-store' }, 'from the https origin');
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return { url: `https://localhost:${(server.address() as AddressInfo).port}`, seen };
}

async function edgeOf(t: Parameters<typeof setup>[0], upstream: string, overrides: Record<string, unknown>): Promise<TestEdge> {
  const edge = await startTestEdge(upstream, overrides);
  t.teardown(() => edge.close());
  return edge;
}

test('https:// upstreams are verified against --upstream-ca, with SNI set to the upstream host; an unknown CA is a 502', async (t) => {
  const dir = tempDir(t, 'outpost-tls-');
  const ca = await makeCa();
  const origin = await httpsOrigin(t, await makeCertificate(['localhost'], { ca }));
  writeFileSync(join(dir, 'ca.pem'), ca.cert);
  const trusting = await edgeOf(t, origin.url, { upstreamCa: join(dir, 'ca.pem') });
  const reply = await fetchFrom(trusting.url, '/verified');
  t.is(reply.status, 200);
  t.is(reply.text, 'from the https origin');
  t.is(origin.seen[0]!.servername, 'localhost');
  const other = await makeCa('Another CA');
  writeFileSync(join(dir, 'other.pem'), other.cert);
  const distrusting = await edgeOf(t, origin.url, { upstreamCa: join(dir, 'other.pem') });
  t.is((await fetchFrom(distrusting.url, '/unverified')).status, 502);
  const systemCas = await edgeOf(t, origin.url, {});
  t.is((await fetchFrom(systemCas.url, '/system')).status, 502, 'a private CA is not among the system CAs');
  const insecure = await edgeOf(t, origin.url, { upstreamInsecure: true });
  t.is((await fetchFrom(insecure.url, '/insecure')).status, 200, '--upstream-insecure skips verification');
});

test('an origin that requires mTLS gets the --upstream-cert client certificate; without one the edge answers 502', async (t) => {
  const dir = tempDir(t, 'outpost-tls-');
  const ca = await makeCa();
  const origin = await httpsOrigin(t, await makeCertificate(['localhost'], { ca }), { clientCa: ca.cert });
  writeFileSync(join(dir, 'ca.pem'), ca.cert);
  const client = writePair(dir, 'client', await makeCertificate(['edge-client.example'], { ca }));
  const withCert = await edgeOf(t, origin.url, { upstreamCa: join(dir, 'ca.pem'), upstreamCert: client.certFile, upstreamKey: client.keyFile });
  t.is((await fetchFrom(withCert.url, '/mtls')).status, 200);
  t.is(origin.seen.at(-1)!.clientCn, 'edge-client.example');
  const withoutCert = await edgeOf(t, origin.url, { upstreamCa: join(dir, 'ca.pem') });
  t.is((await fetchFrom(withoutCert.url, '/no-cert')).status, 502);
});

test('HTTP/2 requests get the same caching answers as HTTP/1.1: a conditional hit is a 304', async (t) => {
  const dir = tempDir(t, 'outpost-tls-');
  const pem = await makeCertificate(['localhost']);
  const { edge } = await setup(
    t,
    (_q, res) => send(res, 200, { 'cache-control': 'max-age=60', etag: '"v1"' }, 'tagged'),
    { listenTls: '127.0.0.1:0', tlsCert: [writePair(dir, 'edge', pem).certFile], tlsKey: [join(dir, 'edge.key')] },
  );
  const session = http2.connect(edge.tlsUrl!.replace('127.0.0.1', 'localhost'), { ca: pem.cert });
  t.teardown(() => session.close());
  const get = (headers: Record<string, string>) =>
    new Promise<{ status: number; headers: http2.IncomingHttpHeaders; body: string }>((resolve, reject) => {
      const stream = session.request({ ':path': '/etag', ...headers });
      let body = '';
      let responseHeaders: http2.IncomingHttpHeaders = {};
      stream.on('response', (h) => (responseHeaders = h));
      stream.on('data', (chunk: Buffer) => (body += chunk.toString()));
      stream.on('end', () => resolve({ status: Number(responseHeaders[':status']), headers: responseHeaders, body }));
      stream.on('error', reject);
    });
  t.is((await get({})).body, 'tagged');
  const conditional = await get({ 'if-none-match': '"v1"' });
  t.is(conditional.status, 304);
  t.regex(String(conditional.headers['cache-status']), /; hit/);
  const mismatch = await get({ ':authority': 'localhost', host: 'other.example' });
  t.is(mismatch.status, 400, 'RFC 9113 §8.3.1: a Host that differs from :authority is malformed');
  t.is((await get({ ':authority': 'localhost', host: 'LOCALHOST' })).status, 200, 'host names compare case-insensitively');
});

test('shutdown: requests in flight over HTTPS and HTTP/2 finish, then the listeners close', async (t) => {
  const dir = tempDir(t, 'outpost-tls-');
  const pem = await makeCertificate(['localhost']);
  const pair = writePair(dir, 'edge', pem);
  let arrived = 0;
  const { edge } = await setup(
    t,
    (_q, res) => {
      arrived++;
      setTimeout(() => send(res, 200, { 'cache-control': 'no-store' }, 'late but whole'), 400);
    },
    { listenTls: '127.0.0.1:0', tlsCert: [pair.certFile], tlsKey: [pair.keyFile] },
  );
  const url = edge.tlsUrl!.replace('127.0.0.1', 'localhost');
  const h1 = new Agent({ connect: { ca: pem.cert } });
  t.teardown(() => h1.close());
  const overH1 = request(`${url}/slow1`, { dispatcher: h1 }).then(async (r) => [r.statusCode, await r.body.text()]);
  // node's own HTTP/2 client: undici's fails streams in flight when a graceful GOAWAY arrives.
  const session = http2.connect(url, { ca: pem.cert });
  session.on('error', () => undefined);
  const overH2 = new Promise<[number, string]>((resolve, reject) => {
    const stream = session.request({ ':path': '/slow2' });
    let status = 0;
    let body = '';
    stream.on('response', (headers) => (status = Number(headers[':status'])));
    stream.on('data', (chunk: Buffer) => (body += chunk.toString()));
    stream.on('end', () => resolve([status, body]));
    stream.on('error', reject);
  });
  await waitFor(() => arrived === 2);
  const closed = edge.close();
  t.deepEqual(await overH1, [200, 'late but whole']);
  t.deepEqual(await overH2, [200, 'late but whole']);
  await closed;
  await t.throwsAsync(handshake(edge.tlsUrl!, { ca: pem.cert, servername: 'localhost' }), undefined, 'no longer accepting');
});

test('a ring of https:// shields on a private CA: requests and the ring’s health checks are verified against --upstream-ca, so both stay healthy', async (t) => {
  t.timeout(30_000);
  const dir = tempDir(t, 'outpost-tls-');
  const ca = await makeCa();
  writeFileSync(join(dir, 'ca.pem'), ca.cert);
  const origin = await httpsOrigin(t, await makeCertificate(['localhost'], { ca }));
  const shields = [];
  for (const name of ['a', 'b']) {
    const pair = writePair(dir, `shield-${name}`, await makeCertificate(['localhost'], { ca }));
    const shield = await startTestShield(origin.url, { listenTls: '127.0.0.1:0', tlsCert: [pair.certFile], tlsKey: [pair.keyFile], upstreamCa: join(dir, 'ca.pem') });
    t.teardown(() => shield.close());
    shields.push(shield.tlsUrl!.replace('127.0.0.1', 'localhost'));
  }
  const edge = await edgeOf(t, shields[0]!, { upstreams: shields, upstreamCa: join(dir, 'ca.pem') });
  for (let i = 0; i < 8; i++) t.is((await fetchFrom(edge.url, `/ring${i}`)).status, 200);
  // The ring probes every 2 s and marks a shield down after 2 failed probes: past that, still up.
  await new Promise((resolve) => setTimeout(resolve, 5_000));
  t.deepEqual(
    edge.upstream.memberHealth().map((m) => m.healthy),
    [true, true],
  );
});

test('HTTP/2 request bodies: forwarded whole without a Content-Length, and read by the WAF\'s body phase (a body ends with the stream, RFC 9113 §8.1)', async (t) => {
  const dir = tempDir(t, 'outpost-tls-');
  const pem = await makeCertificate(['localhost']);
  const pair = writePair(dir, 'edge', pem);
  const { origin, edge } = await setup(t, (_q, res, body) => send(res, 200, { 'cache-control': 'no-store' }, `got ${body.length}`), {
    listenTls: '127.0.0.1:0',
    tlsCert: [pair.certFile],
    tlsKey: [pair.keyFile],
    waf: { mode: 'block', rules: [{ id: 'no-drop', phase: 'body', body: { regex: 'drop table', ignoreCase: true } }] },
  });
  const session = http2.connect(edge.tlsUrl!.replace('127.0.0.1', 'localhost'), { ca: pem.cert });
  t.teardown(() => session.close());
  const post = (body: string) =>
    new Promise<{ status: number; text: string }>((resolve, reject) => {
      // node's client sends no content-length unless told: the body is known by its END_STREAM.
      const stream = session.request({ ':path': '/submit', ':method': 'POST', 'content-type': 'text/plain' });
      let status = 0;
      let text = '';
      stream.on('response', (headers) => (status = Number(headers[':status'])));
      stream.on('data', (chunk: Buffer) => (text += chunk.toString()));
      stream.on('end', () => resolve({ status, text }));
      stream.on('error', reject);
      stream.end(body);
    });
  t.deepEqual(await post('a'.repeat(5000)), { status: 200, text: 'got 5000' });
  t.is(origin.requests[0]!.headers['content-length'], undefined);
  t.is((await post('please DROP TABLE users')).status, 403);
  t.is(origin.requests.length, 1);
});

