/**
 * Real parts for pipeline tests: a test origin on 127.0.0.1 that records and counts requests,
 * an edge (or shield) in front of it with a real store, and a small HTTP client.
 */
import { createServer, type IncomingMessage, type OutgoingHttpHeaders, type Server, type ServerResponse } from 'node:http';
import type { ExecutionContext } from 'ava';
import { connect, type AddressInfo } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { request as undiciRequest, Agent } from 'undici';
import { loadConfig, type Config } from '../../config/config.js';
import { startEdge } from '../../edge/edge.js';
import { silentLogger } from '../../pipeline/logger.js';
import type { RunningNode } from '../../pipeline/node-server.js';
import { MemoryStore } from '../../storage/memory-store.js';
import type { CacheStore } from '../../storage/cache-store.js';
import { openTieredStore } from '../../storage/tiered-store.js';
import type { CertificatePair } from '../../edge/tls/certificates.js';
import { makeCertificate, writePair } from './certificates.js';
import { DelayedCommitStore } from './delayed-commit-store.js';

export interface RecordedRequest {
  method: string;
  url: string;
  headers: IncomingMessage['headers'];
  body: Buffer;
}

export type OriginHandler = (req: IncomingMessage, res: ServerResponse, body: Buffer, count: number) => void | Promise<void>;

export interface TestOrigin {
  url: string;
  server: Server;
  requests: RecordedRequest[];
  /** Requests seen for a path (with query). */
  count(path?: string): number;
  /** Replaces the handler (for scripted sequences). */
  handle(handler: OriginHandler): void;
  close(): Promise<void>;
}

export async function startOrigin(handler: OriginHandler): Promise<TestOrigin> {
  const requests: RecordedRequest[] = [];
  let current = handler;
  const server = createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks);
    requests.push({ method: req.method ?? '', url: req.url ?? '', headers: req.headers, body });
    try {
      await current(req, res, body, requests.length);
    } catch (error) {
      res.destroy(error as Error);
    }
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    server,
    requests,
    count: (path) => (path === undefined ? requests.length : requests.filter((r) => r.url === path).length),
    handle: (next) => {
      current = next;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

export interface TestEdge extends RunningNode {
  store: CacheStore;
  /** The config it started with (tests reload it as SIGHUP would). */
  config: Readonly<Config>;
  /** Everything created for the test, removed on close. */
  dataDir: string;
}

/**
 * The store test edges use unless a test brings its own. OUTPOST_TEST_STORE picks it, so the
 * same edge tests run over each (npm test runs both):
 * - `memory` (default): a MemoryStore, whose commits are immediate;
 * - `delayed-commit`: the real tiered store (memory over LevelDB in the edge's temp folder)
 *   whose commits and metadata updates each wait 200 ms, as a busy disk's do, so every request
 *   that follows a miss lands in the window between delivery and commit.
 */
export const TEST_STORE = process.env['OUTPOST_TEST_STORE'] ?? 'memory';
export const COMMIT_DELAY_MS = 200;

export type TestStoreKind = 'memory' | 'delayed-commit';

async function testStore(dataDir: string, kind: string): Promise<CacheStore> {
  if (kind === 'memory') return new MemoryStore({ maxBytes: 64 * 1024 * 1024 });
  if (kind === 'delayed-commit') {
    const tiered = await openTieredStore({ dataDir, memoryBytes: 64 * 1024 * 1024, diskBytes: 1024 ** 3 });
    return new DelayedCommitStore(tiered, COMMIT_DELAY_MS);
  }
  throw new Error(`OUTPOST_TEST_STORE must be memory or delayed-commit, got ${JSON.stringify(kind)}`);
}

/**
 * An edge on 127.0.0.1:0 in front of `upstream`, with config overrides as in a config file, over
 * `store`: a store of the test's own, one of the test store kinds, or (default) OUTPOST_TEST_STORE's.
 */
export async function startTestEdge(upstream: string | string[], overrides: Record<string, unknown> = {}, store: CacheStore | TestStoreKind = TEST_STORE as TestStoreKind): Promise<TestEdge> {
  const dataDir = mkdtempSync(join(tmpdir(), 'outpost-edge-'));
  // Over HTTP/2, the edge gets a TLS listener and the test's `edge.url` is that listener.
  const overH2 = TEST_CLIENT === 'h2' && overrides['listenTls'] === undefined;
  const tls = overH2 ? { listenTls: '127.0.0.1:0', tlsCert: [(await testCertificate()).certFile], tlsKey: [(await testCertificate()).keyFile] } : {};
  const config: Readonly<Config> = loadConfig('edge', {
    fileContents: { listen: '127.0.0.1:0', upstreams: Array.isArray(upstream) ? upstream : [upstream], dataDir, accessLog: false, logLevel: 'silent', ...tls, ...overrides },
  });
  const node = await startEdge(config, { logger: silentLogger(), store: typeof store === 'string' ? await testStore(dataDir, store) : store });
  const edge: TestEdge = {
    ...node,
    ...(overH2 ? { url: node.tlsUrl! } : {}),
    config,
    dataDir,
    close: async () => {
      liveEdges.delete(edge);
      await node.close();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
  liveEdges.add(edge);
  return edge;
}

export interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  text: string;
}

/** A client with its own connection pool, so tests do not share sockets. */
const agent = new Agent({ connections: 512, keepAliveTimeout: 1_000 });

/**
 * OUTPOST_TEST_CLIENT=h2 runs the same edge tests over HTTP/2: every test edge also listens for
 * TLS (a certificate for 127.0.0.1 made once per test process) and `edge.url` is its https URL;
 * fetchFrom then speaks HTTP/2 to it. npm test runs the caching tests both ways.
 */
export const TEST_CLIENT = process.env['OUTPOST_TEST_CLIENT'] ?? 'h1';
let certificate: Promise<CertificatePair & { ca: string }> | undefined;
function testCertificate(): Promise<CertificatePair & { ca: string }> {
  return (certificate ??= makeCertificate(['localhost', '127.0.0.1']).then((pem) => ({ ...writePair(mkdtempSync(join(tmpdir(), 'outpost-cert-')), 'edge', pem), ca: pem.cert })));
}
let h2Agent: Agent | undefined;
/** The client for a test edge's URL: HTTP/2 over TLS for its https URL (OUTPOST_TEST_CLIENT=h2). */
export async function testDispatcher(base: string): Promise<Agent> {
  if (!base.startsWith('https:')) return agent;
  // Tests send Host fields of their own, which undici also uses as the TLS server name: the
  // certificate is checked against the test CA, not against those names.
  return (h2Agent ??= new Agent({ allowH2: true, connections: 64, keepAliveTimeout: 1_000, connect: { ca: (await testCertificate()).ca, checkServerIdentity: () => undefined } }));
}

export async function fetchFrom(base: string, path: string, init: { method?: string; headers?: Record<string, string>; body?: string | Buffer } = {}): Promise<Reply> {
  const response = await undiciRequest(base + path, {
    method: (init.method ?? 'GET') as 'GET',
    headers: init.headers,
    body: init.body,
    dispatcher: await testDispatcher(base),
  });
  const body = Buffer.from(await response.body.arrayBuffer());
  return { status: response.statusCode, headers: response.headers as Reply['headers'], body, text: body.toString('utf8') };
}

export function header(reply: Reply, name: string): string | undefined {
  const value = reply.headers[name];
  return Array.isArray(value) ? value.join(', ') : value;
}

/** Bytes that differ at every offset and between versions, so a misplaced or mixed byte shows. */
export function pattern(size: number, seed: number): Buffer {
  const bytes = Buffer.alloc(size);
  for (let i = 0; i < size; i++) bytes[i] = (i * 31 + (i >>> 8) * 7 + seed * 101) & 0xff;
  return bytes;
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** HTTP-date for `offsetSec` from now. */
export function httpDate(offsetSec = 0): string {
  return new Date(Date.now() + offsetSec * 1000).toUTCString();
}

/** Polls `condition` every 10 ms until it holds or `timeoutMs` passes; returns whether it held. */
export async function waitFor(condition: () => boolean | Promise<boolean>, timeoutMs = 3_000): Promise<boolean> {
  const deadline = Date.now() + timeoutMs;
  while (!(await condition())) {
    if (Date.now() > deadline) return false;
    await delay(10);
  }
  return true;
}

/** Edges started by startTestEdge and not yet closed (for settle()). */
const liveEdges = new Set<TestEdge>();

/** An origin and an edge in front of it, both closed when the test ends. */
export async function setup(
  t: ExecutionContext,
  handler: OriginHandler,
  overrides: Record<string, unknown> = {},
  store?: TestStoreKind,
): Promise<{ origin: TestOrigin; edge: TestEdge }> {
  const origin = await startOrigin(handler);
  const edge = await startTestEdge(origin.url, overrides, store);
  t.teardown(async () => {
    await edge.close();
    await origin.close();
  });
  return { origin, edge };
}

/** Writes a complete response with Content-Type and Content-Length. */
export function send(res: ServerResponse, status: number, headers: OutgoingHttpHeaders, body = 'hello'): void {
  res.writeHead(status, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(body), ...headers });
  res.end(body);
}

export const cacheStatus = (reply: Reply): string => header(reply, 'cache-status') ?? '';

/**
 * Waits until every running test edge has finished its upstream fetches and background
 * revalidations. With the memory store it also waits for store commits; with the delayed-commit
 * store it does not, so the next request lands in the window between delivery and commit, where
 * it must get the same answer as from the store. `commits: true` waits for commits too, for tests
 * whose premise is what the store holds.
 */
export async function settle(options: { commits?: boolean } = {}): Promise<void> {
  const commits = options.commits ?? TEST_STORE !== 'delayed-commit';
  await Promise.all([...liveEdges].map((edge) => edge.pipeline.drain({ commits })));
}

/** Sends raw bytes to `base` and returns everything received until the server closes (or the timeout). */
export async function raw(base: string, data: string | Buffer, timeoutMs = 3000): Promise<string> {
  const { hostname, port, protocol } = new URL(base);
  // A test edge's https URL (OUTPOST_TEST_CLIENT=h2): the same bytes, HTTP/1.1 inside TLS.
  const ca = protocol === 'https:' ? (await testCertificate()).ca : undefined;
  return new Promise((resolve) => {
    const socket = ca === undefined ? connect(Number(port), hostname) : tlsConnect({ host: hostname, port: Number(port), ca, ALPNProtocols: ['http/1.1'] });
    const chunks: Buffer[] = [];
    const done = () => {
      clearTimeout(timer);
      socket.destroy();
      resolve(Buffer.concat(chunks).toString('latin1'));
    };
    const timer = setTimeout(done, timeoutMs);
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.on('end', done);
    socket.on('close', done);
    socket.on('error', done);
    socket.write(data);
  });
}
