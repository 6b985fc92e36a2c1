/**
 * A real multi-worker node for tests: `outpost edge --workers N` as a child process (a primary and
 * N workers) on 127.0.0.1, with its admin API, X-Served-By on, and a temp data folder.
 */
import type { ExecutionContext } from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { request as httpRequest, Agent as HttpAgent } from 'node:http';
import { createServer, type AddressInfo } from 'node:net';
import { Client } from 'undici';
import type { AdminStats } from '../../admin/admin-server.js';
import { delay, send, startOrigin, type TestOrigin } from './harness.js';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const BIN = join(ROOT, 'bin', 'outpost');

export interface RunningCluster {
  url: string;
  admin: string;
  dataDir: string;
  child: ChildProcess;
  stderr(): string;
  stdout(): string;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  stats(): Promise<AdminStats>;
  purge(body: unknown): Promise<{ status: number; json: Record<string, unknown> }>;
  /** A one-connection client whose connection a given worker accepted. */
  clientOn(worker: number): Promise<Client>;
  /** The worker that answered a request on this client. */
  workerOf(client: Client): Promise<number>;
  /** Waits until every worker serves and the node has restarted `restarts` workers in all. */
  waitReady(restarts: number, timeoutMs?: number): Promise<AdminStats>;
}

export interface ClusterOptions {
  workers: number;
  args?: string[];
  /** Reuse a data folder (restart scenarios); removed by the caller. */
  dataDir?: string;
  role?: 'edge' | 'shield';
  /** The admin token (--admin-token); the helpers send it. */
  token?: string;
  /** Environment added to the node's (after OUTPOST_* variables are cleared). */
  env?: NodeJS.ProcessEnv;
}

export async function startCluster(t: ExecutionContext, upstream: string, options: ClusterOptions): Promise<RunningCluster> {
  const ownDir = options.dataDir === undefined;
  const dataDir = options.dataDir ?? mkdtempSync(join(tmpdir(), 'outpost-cluster-'));
  const role = options.role ?? 'edge';
  const env = { ...process.env };
  for (const name of Object.keys(env)) if (name.startsWith('OUTPOST_')) delete env[name];
  Object.assign(env, options.env);
  const child = spawn(
    process.execPath,
    [
      BIN,
      role,
      // '' : the upstream comes from a config file in `args`.
      ...(upstream === '' ? [] : [role === 'edge' ? '--upstream' : '--origin', upstream]),
      '--listen',
      '127.0.0.1:0',
      '--admin-listen',
      '127.0.0.1:0',
      '--workers',
      String(options.workers),
      '--data-dir',
      dataDir,
      '--served-by',
      '--access-log',
      'false',
      ...(options.token !== undefined ? ['--admin-token', options.token] : []),
      ...(options.args ?? []),
    ],
    { env, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let stderr = '';
  let stdout = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((done) => child.once('exit', (code, signal) => done({ code, signal })));
  const clients = new Set<Client>();
  t.teardown(async () => {
    for (const client of clients) await client.destroy().catch(() => undefined);
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGKILL');
      await exit;
    }
    // Workers whose primary was SIGKILLed notice the lost channel and leave; give them a moment.
    await delay(100);
    if (ownDir) rmSync(dataDir, { recursive: true, force: true });
  });
  const deadline = Date.now() + 20_000;
  let url: string | undefined;
  let admin: string | undefined;
  while (url === undefined || admin === undefined) {
    url = new RegExp(`outpost ${role} listening on (http://[^,\\s]+)`).exec(stderr)?.[1];
    admin = /admin API on (http:\/\/\S+)/.exec(stderr)?.[1];
    if (child.exitCode !== null) throw new Error(`outpost exited ${child.exitCode}: ${stderr}`);
    if (Date.now() > deadline) throw new Error(`outpost did not start: ${stderr}`);
    await delay(20);
  }
  const base = url;
  const adminBase = admin;
  const auth: Record<string, string> = options.token !== undefined ? { authorization: `Bearer ${options.token}` } : {};
  const workerOf = async (client: Client): Promise<number> => {
    const reply = await client.request({ method: 'GET', path: '/__outpost/health' });
    await reply.body.text();
    const servedBy = String(reply.headers['x-served-by'] ?? '');
    const match = /\/worker-(\d+)$/.exec(servedBy);
    if (!match) throw new Error(`no worker in X-Served-By: ${JSON.stringify(servedBy)}`);
    return Number(match[1]);
  };
  const cluster: RunningCluster = {
    url: base,
    admin: adminBase,
    dataDir,
    child,
    stderr: () => stderr,
    stdout: () => stdout,
    exit,
    stats: async () => {
      try {
        return (await (await fetch(`${adminBase}/stats`, { headers: auth })).json()) as AdminStats;
      } catch (error) {
        throw new Error(`admin API unreachable (${(error as Error).message}); node stderr:\n${stderr}\nstdout:\n${stdout.slice(-4000)}`);
      }
    },
    purge: async (body) => {
      const response = await fetch(`${adminBase}/purge`, { method: 'POST', body: JSON.stringify(body), headers: { 'content-type': 'application/json', ...auth } });
      return { status: response.status, json: (await response.json()) as Record<string, unknown> };
    },
    workerOf,
    clientOn: async (worker) => {
      for (let attempt = 0; attempt < 200; attempt++) {
        const client = new Client(base, { pipelining: 1 });
        if ((await workerOf(client)) === worker) {
          clients.add(client);
          return client;
        }
        await client.close();
      }
      throw new Error(`no connection reached worker ${worker}`);
    },
    waitReady: async (restarts, timeoutMs = 15_000) => {
      const until = Date.now() + timeoutMs;
      for (;;) {
        const stats = await cluster.stats();
        if (stats.workers!.ready === stats.workers!.count && stats.workers!.restarts >= restarts) return stats;
        if (Date.now() > until) throw new Error(`workers not ready: ${JSON.stringify(stats)}`);
        await delay(50);
      }
    },
  };
  return cluster;
}

/** GET on one client; the body as text. */
export async function getOn(client: Client, path: string, headers: Record<string, string> = {}): Promise<{ status: number; headers: Record<string, string | string[] | undefined>; text: string }> {
  const reply = await client.request({ method: 'GET', path, headers });
  return { status: reply.statusCode, headers: reply.headers, text: await reply.body.text() };
}

/** An origin whose bodies name the path and how many times it was fetched (`/a v2`); `?delay=ms` stalls it. */
export async function versionedOrigin(t: { teardown(fn: () => Promise<void>): void }): Promise<TestOrigin> {
  const versions = new Map<string, number>();
  const origin = await startOrigin(async (req, res) => {
    const url = new URL(req.url ?? '/', 'http://origin');
    const wait = Number(url.searchParams.get('delay') ?? 0);
    if (wait > 0) await delay(wait);
    const version = (versions.get(url.pathname) ?? 0) + 1;
    versions.set(url.pathname, version);
    const section = url.pathname.split('/')[1] ?? '';
    const headers = { 'cache-control': 'max-age=300', 'surrogate-key': `section-${section}` };
    const body = `${url.pathname} v${version}`;
    // ?trickle=MS: the headers and a first byte at once, the rest MS later (a fill whose body is still streaming).
    const trickle = Number(url.searchParams.get('trickle') ?? 0);
    if (trickle <= 0) return send(res, 200, headers, body);
    res.writeHead(200, { ...headers, 'content-length': Buffer.byteLength(body) });
    res.write(body.slice(0, 1));
    await delay(trickle);
    res.end(body.slice(1));
  });
  t.teardown(() => origin.close());
  return origin;
}

/** One request on a connection of its own (no keep-alive): the primary hands each one to a worker. */
const freshConnections = new HttpAgent({ keepAlive: false, maxSockets: Infinity });
export function getFresh(base: string, path: string, method = 'GET'): Promise<{ status: number; text: string; worker: string }> {
  const { hostname, port } = new URL(base);
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: hostname, port, path, method, agent: freshConnections }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => (text += chunk));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, text, worker: String(res.headers['x-served-by'] ?? '') }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.end();
  });
}

export function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
}
