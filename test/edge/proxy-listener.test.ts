/**
 * PROXY protocol at the edge's listeners (pipeline/listeners.ts, edge/proxy-protocol.ts): an
 * L4 balancer on 127.0.0.1 (the trusted proxy) sends a v1 or v2 header, then the client's HTTP
 * or TLS bytes on the same connection. The header's source address becomes the client: the
 * origin sees it in X-Forwarded-For and the rate limit is keyed by it. Connections without a
 * valid header, or from anyone but a trusted proxy, are closed without an HTTP answer and
 * counted by reason. Headers are built byte by byte here, never by the code under test.
 */
import test, { type ExecutionContext } from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import { connect as h2connect } from 'node:http2';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { pino } from 'pino';
import { ConfigError, loadConfig } from '../../config/config.js';
import { startEdge } from '../../edge/edge.js';
import { MemoryStore } from '../../storage/memory-store.js';
import { makeCertificate, writePair, type PemPair } from '../helpers/certificates.js';
import { send, startOrigin, startTestEdge, waitFor, type OriginHandler, type TestEdge, type TestOrigin } from '../helpers/harness.js';

const A = '203.0.113.7';
const B = '198.51.100.23';
/** What a client claims in its own X-Forwarded-For: never to be believed unless the client is trusted. */
const CLAIMED = '192.0.2.99';

// ---------- PROXY headers, byte by byte ----------

const latin1 = (s: string) => Buffer.from(s, 'latin1');

function v1(source: string, sourcePort = 5555, destination = '127.0.0.1', destinationPort = 80): Buffer {
  const family = source.includes(':') ? 'TCP6' : 'TCP4';
  return latin1(`PROXY ${family} ${source} ${destination} ${sourcePort} ${destinationPort}\r\n`);
}

const SIGNATURE = [0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a];

function u16(n: number): number[] {
  return [(n >> 8) & 0xff, n & 0xff];
}

function ipv4Bytes(address: string): number[] {
  return address.split('.').map(Number);
}

/** Full (uncompressed) IPv6 written group by group: only for addresses with one '::'. */
function ipv6Bytes(address: string): number[] {
  const [head, tail] = address.split('::') as [string, string | undefined];
  const left = head === '' ? [] : head.split(':');
  const right = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups = [...left, ...Array<string>(8 - left.length - right.length).fill('0'), ...right];
  return groups.flatMap((g) => u16(parseInt(g, 16)));
}

/** v2 PROXY command (0x21), TCP over IPv4 (0x11) or IPv6 (0x21): addresses, ports, length from the block. */
function v2(source: string, sourcePort = 5555, destination?: string, destinationPort = 443): Buffer {
  const six = source.includes(':');
  const block = [...(six ? ipv6Bytes(source) : ipv4Bytes(source)), ...(six ? ipv6Bytes(destination ?? '::1') : ipv4Bytes(destination ?? '127.0.0.1')), ...u16(sourcePort), ...u16(destinationPort)];
  return Buffer.from([...SIGNATURE, 0x21, six ? 0x21 : 0x11, ...u16(block.length), ...block]);
}

/** v2 LOCAL (0x20): a balancer's own health check; family AF_UNSPEC, no address block. */
const V2_LOCAL = Buffer.from([...SIGNATURE, 0x20, 0x00, ...u16(0)]);

const request = (path: string, forwardedFor?: string) =>
  latin1(`GET ${path} HTTP/1.1\r\nHost: x\r\n${forwardedFor === undefined ? '' : `X-Forwarded-For: ${forwardedFor}\r\n`}Connection: close\r\n\r\n`);

// ---------- set-up ----------

/** Every request reaches the origin (no-store), which records what it saw. */
const recorder: OriginHandler = (req, res) => send(res, 200, { 'cache-control': 'no-store' }, String(req.headers['x-forwarded-for']));

async function proxyEdge(t: ExecutionContext, overrides: Record<string, unknown> = {}): Promise<{ origin: TestOrigin; edge: TestEdge }> {
  const origin = await startOrigin(recorder);
  const edge = await startTestEdge(origin.url, { proxyProtocol: true, trustedProxies: ['127.0.0.1'], waf: 'off', ...overrides });
  t.teardown(async () => {
    await edge.close();
    await origin.close();
  });
  return { origin, edge };
}

let certificate: Promise<PemPair> | undefined;

async function tlsOverrides(t: ExecutionContext): Promise<{ overrides: Record<string, unknown>; ca: string }> {
  certificate ??= makeCertificate(['localhost', '127.0.0.1']);
  const pem = await certificate;
  const dir = mkdtempSync(join(tmpdir(), 'outpost-proxy-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const pair = writePair(dir, 'edge', pem);
  return { overrides: { listenTls: '127.0.0.1:0', tlsCert: [pair.certFile], tlsKey: [pair.keyFile] }, ca: pem.cert };
}

const refused = (edge: TestEdge, reason: string) => edge.metrics.get('client_connections_refused_total', { reason });

/** The last request the origin saw for `path`. */
function seen(origin: TestOrigin, path: string) {
  const found = origin.requests.filter((r) => r.url === path);
  return found[found.length - 1];
}

interface Exchange {
  /** Everything received until the edge closed the connection. */
  text: string;
  /** Milliseconds from connect to close. */
  ms: number;
  status: number | undefined;
}

/**
 * Connects (from `localAddress`), writes `data` (or nothing), returns what came back when the
 * edge closes the connection or `timeoutMs` passes; `end` half-closes after writing.
 */
function exchange(base: string, data: Buffer | undefined, options: { localAddress?: string; timeoutMs?: number; end?: boolean } = {}): Promise<Exchange> {
  const { hostname, port } = new URL(base);
  return new Promise((resolve) => {
    const socket: Socket = connect({ host: hostname, port: Number(port), ...(options.localAddress ? { localAddress: options.localAddress } : {}) });
    const chunks: Buffer[] = [];
    let connectedAt = performance.now();
    const done = () => {
      clearTimeout(timer);
      socket.destroy();
      const text = Buffer.concat(chunks).toString('latin1');
      const status = /^HTTP\/1\.1 (\d{3})/.exec(text)?.[1];
      resolve({ text, ms: performance.now() - connectedAt, status: status === undefined ? undefined : Number(status) });
    };
    const timer = setTimeout(done, options.timeoutMs ?? 10_000);
    socket.on('connect', () => {
      connectedAt = performance.now();
      if (data !== undefined) socket.write(data);
      if (options.end) socket.end();
    });
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('close', done);
    socket.on('error', done);
  });
}

/** A request through the "balancer": header then HTTP on one connection from 127.0.0.1. */
async function proxied(base: string, header: Buffer, path: string, forwardedFor: string | undefined = CLAIMED): Promise<Exchange> {
  return exchange(base, Buffer.concat([header, request(path, forwardedFor)]));
}

/** The edge still serves a well-formed proxied request. */
async function stillServes(t: ExecutionContext, edge: TestEdge, origin: TestOrigin): Promise<void> {
  const path = `/still-${Math.random().toString(36).slice(2)}`;
  const reply = await proxied(edge.url, v1(B), path);
  t.is(reply.status, 200, 'the edge keeps serving');
  t.is(seen(origin, path)?.headers['x-forwarded-for'], B);
}

// ---------- the header's address is the client ----------

for (const [name, make, a, b] of [
  ['v1 TCP4', v1, A, B],
  ['v2 TCP4', v2, A, B],
  ['v2 TCP6', v2, '2001:db8::7', '2001:db8:1::7'],
] as const) {
  test(`${name}: the origin sees the header's source as X-Forwarded-For (the client's own replaced) and the rate limit is keyed by it`, async (t) => {
    const { origin, edge } = await proxyEdge(t, { rateLimit: '2/m' });
    const statuses: (number | undefined)[] = [];
    for (const [i, source] of [a, a, a, b].entries()) statuses.push((await proxied(edge.url, make(source), `/who-${i}`)).status);
    t.deepEqual(statuses, [200, 200, 429, 200], 'two from A admitted, the third limited, B admitted: A is the address limited');
    t.is(seen(origin, '/who-0')?.headers['x-forwarded-for'], a, "X-Forwarded-For is the header's source, not the socket's nor the client's claim");
    t.is(seen(origin, '/who-3')?.headers['x-forwarded-for'], b);
    t.is(origin.count('/who-2'), 0, 'the limited request did not reach the origin');
    t.regex(String(seen(origin, '/who-0')?.headers['forwarded']), new RegExp(`for=${a.includes(':') ? `"\\[${a}\\]"` : a.replace(/\./g, '\\.')}`));
  });
}

test("with trustForwardedFrom holding the header's source, the client's X-Forwarded-For is kept and appended to; without, replaced", async (t) => {
  const { origin, edge } = await proxyEdge(t, { trustForwardedFrom: [A] });
  t.is((await proxied(edge.url, v1(A), '/trusted')).status, 200);
  t.is(seen(origin, '/trusted')?.headers['x-forwarded-for'], `${CLAIMED}, ${A}`, 'kept, with the trusted hop appended');
  t.is((await proxied(edge.url, v1(B), '/untrusted')).status, 200);
  t.is(seen(origin, '/untrusted')?.headers['x-forwarded-for'], B, 'from a source not trusted: replaced');
});

test("v2 LOCAL (a balancer's health check) and v1 UNKNOWN are served with the socket's own address as the client", async (t) => {
  const { origin, edge } = await proxyEdge(t);
  t.is((await proxied(edge.url, V2_LOCAL, '/local-v2')).status, 200);
  t.is(seen(origin, '/local-v2')?.headers['x-forwarded-for'], '127.0.0.1');
  t.is((await proxied(edge.url, latin1('PROXY UNKNOWN\r\n'), '/unknown-v1')).status, 200);
  t.is(seen(origin, '/unknown-v1')?.headers['x-forwarded-for'], '127.0.0.1');
});

// ---------- TLS listener ----------

/** Connects to the TLS listener from 127.0.0.1, writes the PROXY header, then starts TLS on the same socket. */
async function tlsAfterHeader(t: ExecutionContext, tlsUrl: string, ca: string, header: Buffer, alpn: string): Promise<TLSSocket> {
  const { port } = new URL(tlsUrl);
  const socket = connect({ host: '127.0.0.1', port: Number(port) });
  t.teardown(() => socket.destroy());
  await new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  socket.write(header);
  const secure = tlsConnect({ socket, ca, servername: 'localhost', ALPNProtocols: [alpn] });
  t.teardown(() => secure.destroy());
  await new Promise((resolve, reject) => {
    secure.once('secureConnect', resolve);
    secure.once('error', reject);
  });
  t.is(secure.alpnProtocol, alpn);
  return secure;
}

test('TLS listener: PROXY v2 header, then the TLS handshake, then an HTTP/2 request: X-Forwarded-For is the header address', async (t) => {
  const tls = await tlsOverrides(t);
  const { origin, edge } = await proxyEdge(t, tls.overrides);
  const secure = await tlsAfterHeader(t, edge.tlsUrl!, tls.ca, v2(A), 'h2');
  const session = h2connect('https://localhost', { createConnection: () => secure });
  session.on('error', () => undefined);
  t.teardown(() => session.destroy());
  const status = await new Promise<number>((resolve, reject) => {
    const stream = session.request({ ':path': '/tls-h2', 'x-forwarded-for': CLAIMED });
    stream.on('response', (headers) => resolve(Number(headers[':status'])));
    stream.on('error', reject);
    stream.resume();
    stream.end();
  });
  t.is(status, 200);
  const got = seen(origin, '/tls-h2');
  t.is(got?.headers['x-forwarded-for'], A);
  t.is(got?.headers['x-forwarded-proto'], 'https');
});

test('TLS listener: PROXY v2 header, then the TLS handshake, then an HTTP/1.1 request: X-Forwarded-For is the header address', async (t) => {
  const tls = await tlsOverrides(t);
  const { origin, edge } = await proxyEdge(t, tls.overrides);
  const secure = await tlsAfterHeader(t, edge.tlsUrl!, tls.ca, v2('2001:db8::7'), 'http/1.1');
  const chunks: Buffer[] = [];
  secure.on('data', (c: Buffer) => chunks.push(c));
  let ended = false;
  secure.on('end', () => (ended = true));
  secure.on('close', () => (ended = true));
  secure.write(request('/tls-h1', CLAIMED));
  t.true(await waitFor(() => ended, 5_000));
  t.regex(Buffer.concat(chunks).toString('latin1'), /^HTTP\/1\.1 200 /);
  t.is(seen(origin, '/tls-h1')?.headers['x-forwarded-for'], '2001:db8::7');
});

test('TLS listener: a TLS ClientHello without a PROXY header is closed (proxy-missing), no handshake', async (t) => {
  const tls = await tlsOverrides(t);
  const { origin, edge } = await proxyEdge(t, tls.overrides);
  const { port } = new URL(edge.tlsUrl!);
  const secure = tlsConnect({ host: '127.0.0.1', port: Number(port), ca: tls.ca, servername: 'localhost', ALPNProtocols: ['h2'] });
  t.teardown(() => secure.destroy());
  const outcome = await new Promise<string>((resolve) => {
    secure.once('secureConnect', () => resolve('handshake'));
    secure.once('error', () => resolve('error'));
    secure.once('close', () => resolve('closed'));
  });
  t.not(outcome, 'handshake');
  t.is(refused(edge, 'proxy-missing'), 1);
  await stillServes(t, edge, origin);
});

// ---------- connections closed at accept ----------

test('no PROXY header (a plain GET straight away): closed without an HTTP answer, proxy-missing', async (t) => {
  const { origin, edge } = await proxyEdge(t);
  const reply = await exchange(edge.url, request('/no-header'));
  t.is(reply.text, '', 'no HTTP answer');
  t.true(reply.ms < 3_000, `closed at once (${Math.round(reply.ms)} ms)`);
  t.is(refused(edge, 'proxy-missing'), 1);
  t.is(origin.count('/no-header'), 0);
  await stillServes(t, edge, origin);
});

test('an invalid PROXY header: closed without an HTTP answer, proxy-invalid', async (t) => {
  const { origin, edge } = await proxyEdge(t);
  const reply = await exchange(edge.url, Buffer.concat([latin1('PROXY TCP4 999.0.113.7 127.0.0.1 5555 80\r\n'), request('/invalid')]));
  t.is(reply.text, '');
  t.true(reply.ms < 3_000);
  t.is(refused(edge, 'proxy-invalid'), 1);
  t.is(origin.count('/invalid'), 0);
  await stillServes(t, edge, origin);
});

test('a header not complete within 5 s: closed after about 5 s, proxy-timeout', async (t) => {
  const { origin, edge } = await proxyEdge(t);
  const reply = await exchange(edge.url, latin1('PROXY TCP4 203.0.113.7 127.0.0'), { timeoutMs: 15_000 });
  t.is(reply.text, '');
  t.true(reply.ms >= 4_500 && reply.ms <= 10_000, `closed after ${Math.round(reply.ms)} ms`);
  t.is(refused(edge, 'proxy-timeout'), 1);
  await stillServes(t, edge, origin);
});

test('a connection from outside trustedProxies is closed at once, without waiting for a header, proxy-untrusted', async (t) => {
  const { origin, edge } = await proxyEdge(t);
  // Sends nothing: the refusal must not wait for bytes (nor for the 5 s header timeout).
  const silent = await exchange(edge.url, undefined, { localAddress: '127.0.0.2', timeoutMs: 4_000 });
  t.true(silent.ms < 2_000, `closed at once (${Math.round(silent.ms)} ms)`);
  t.is(silent.text, '');
  // With a well-formed header it is still refused: only a trusted proxy may name the client.
  const forged = await exchange(edge.url, Buffer.concat([v1(A), request('/forged')]), { localAddress: '127.0.0.2' });
  t.is(forged.text, '');
  t.is(refused(edge, 'proxy-untrusted'), 2);
  t.is(origin.count('/forged'), 0);
  await stillServes(t, edge, origin);
});

test('truncated v2 headers are closed: a length shorter than the address block (invalid), and a header cut short by the peer (closed)', async (t) => {
  const { origin, edge } = await proxyEdge(t);
  const full = v2(A);
  // Declared length 4: cannot hold the 12-byte IPv4 block.
  const short = Buffer.concat([full.subarray(0, 14), Buffer.from(u16(4)), full.subarray(16, 20), request('/short')]);
  const shortReply = await exchange(edge.url, short);
  t.is(shortReply.text, '');
  t.is(refused(edge, 'proxy-invalid'), 1);
  // The first 20 of 28 bytes, then the peer ends its side.
  const cut = await exchange(edge.url, full.subarray(0, 20), { end: true });
  t.is(cut.text, '');
  t.true(cut.ms < 3_000, `closed at once, not at the header timeout (${Math.round(cut.ms)} ms)`);
  t.is(refused(edge, 'proxy-closed'), 1);
  t.is(origin.count(), 0);
  await stillServes(t, edge, origin);
});

test('an oversized v2 header (declared length past 4096 bytes) is closed as soon as its length is read', async (t) => {
  const { origin, edge } = await proxyEdge(t);
  // Signature, PROXY TCP4, length 5000: only the 16 fixed bytes are sent.
  const head = Buffer.from([...SIGNATURE, 0x21, 0x11, ...u16(5000)]);
  const reply = await exchange(edge.url, head);
  t.is(reply.text, '');
  t.true(reply.ms < 3_000, `closed at once (${Math.round(reply.ms)} ms)`);
  t.is(refused(edge, 'proxy-invalid'), 1);
  // And a header that really is that long.
  const huge = Buffer.concat([head, Buffer.alloc(5000)]);
  t.is((await exchange(edge.url, huge)).text, '');
  t.is(refused(edge, 'proxy-invalid'), 2);
  await stillServes(t, edge, origin);
});

test('maxConnectionsPerClient counts the PROXY header address, not the balancer: a 3rd connection for one client is closed, another client is served', async (t) => {
  const { origin, edge } = await proxyEdge(t, { maxConnectionsPerClient: 2, clientKeepAliveTimeoutMs: 60_000 });
  const { port } = new URL(edge.url);
  const open: Socket[] = [];
  t.teardown(() => open.forEach((s) => s.destroy()));
  for (let i = 0; i < 2; i++) {
    const socket = connect({ host: '127.0.0.1', port: Number(port) });
    socket.on('error', () => undefined);
    open.push(socket);
    const chunks: Buffer[] = [];
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.write(Buffer.concat([v1(A), latin1(`GET /held-${i} HTTP/1.1\r\nHost: x\r\n\r\n`)]));
    t.true(await waitFor(() => /^HTTP\/1\.1 200 /.test(Buffer.concat(chunks).toString('latin1')), 5_000), `connection ${i} for A served and kept`);
  }
  const third = await proxied(edge.url, v1(A), '/third');
  t.is(third.text, '', 'a 3rd connection for A is closed');
  t.is(refused(edge, 'per-client'), 1);
  await stillServes(t, edge, origin);
});

/** A connection from the balancer (127.0.0.1) that sent `header` and a keep-alive request, was served, and is held open. */
async function heldProxied(t: ExecutionContext, base: string, header: Buffer, path: string): Promise<{ socket: Socket; text: () => string }> {
  const { port } = new URL(base);
  const socket = connect({ host: '127.0.0.1', port: Number(port) });
  socket.on('error', () => undefined);
  t.teardown(() => socket.destroy());
  const chunks: Buffer[] = [];
  socket.on('data', (c: Buffer) => chunks.push(c));
  const text = () => Buffer.concat(chunks).toString('latin1');
  socket.write(Buffer.concat([header, latin1(`GET ${path} HTTP/1.1\r\nHost: x\r\n\r\n`)]));
  t.true(await waitFor(() => /^HTTP\/1\.1 200 /.test(text()) || socket.destroyed, 5_000), `${path}: an answer or a close`);
  t.regex(text(), /^HTTP\/1\.1 200 /, `${path}: served and kept`);
  return { socket, text };
}

test('maxConnectionsPerClient: the balancer itself (a trusted proxy) is exempt: four PROXY v2 LOCAL connections from 127.0.0.1 with a limit of 2 are all admitted and served', async (t) => {
  const { origin, edge } = await proxyEdge(t, { maxConnectionsPerClient: 2, clientKeepAliveTimeoutMs: 60_000 });
  const held: { socket: Socket; text: () => string }[] = [];
  for (let i = 0; i < 4; i++) held.push(await heldProxied(t, edge.url, V2_LOCAL, `/local-held-${i}`));
  t.is(refused(edge, 'per-client'), 0, 'none refused as per-client');
  t.true(held.every((h) => !h.socket.destroyed), 'all four are still open');
  // Each is still served on its own connection.
  for (const [i, h] of held.entries()) {
    const before = h.text().length;
    h.socket.write(latin1(`GET /local-again-${i} HTTP/1.1\r\nHost: x\r\n\r\n`));
    t.true(await waitFor(() => /^HTTP\/1\.1 200 /.test(h.text().slice(before)), 5_000), `connection ${i} served again`);
  }
  t.is(seen(origin, '/local-held-3')?.headers['x-forwarded-for'], '127.0.0.1', "the LOCAL connections' client is the balancer's own address");
});

test("the access log line names the PROXY header's client, not the balancer", async (t) => {
  const origin = await startOrigin(recorder);
  const dataDir = mkdtempSync(join(tmpdir(), 'outpost-proxy-log-'));
  const lines: string[] = [];
  const logger = pino({ level: 'info', name: 'outpost-edge' }, { write: (line: string) => void lines.push(line) });
  const config = loadConfig('edge', {
    fileContents: { listen: '127.0.0.1:0', upstreams: [origin.url], dataDir, waf: 'off', proxyProtocol: true, trustedProxies: ['127.0.0.1'] },
  });
  const edge = await startEdge(config, { logger, store: new MemoryStore({ maxBytes: 1 << 24 }) });
  let closed = false;
  t.teardown(async () => {
    if (!closed) await edge.close();
    await origin.close();
    rmSync(dataDir, { recursive: true, force: true });
  });
  t.is((await proxied(edge.url, v1('203.0.113.9'), '/logged')).status, 200);
  // Closing flushes the access log's batch.
  await edge.close();
  closed = true;
  const requests = lines
    .join('')
    .split('\n')
    .filter((line) => line !== '')
    .map((line) => JSON.parse(line) as Record<string, unknown>)
    .filter((line) => line['msg'] === 'request' && line['path'] === '/logged');
  t.is(requests.length, 1, 'one access log line for the request');
  t.is(requests[0]?.['client'], '203.0.113.9', "client is the PROXY header's source");
});

// ---------- config ----------

test('config: proxyProtocol without trustedProxies is rejected at load, naming trustedProxies', (t) => {
  const error = t.throws(() => loadConfig('edge', { fileContents: { upstreams: ['http://127.0.0.1:1'], proxyProtocol: true } }), { instanceOf: ConfigError });
  t.is(error?.field, 'trustedProxies');
  t.regex(error?.message ?? '', /trustedProxies/);
  t.notThrows(() => loadConfig('edge', { fileContents: { upstreams: ['http://127.0.0.1:1'], proxyProtocol: true, trustedProxies: ['10.0.0.0/8'] } }));
});
