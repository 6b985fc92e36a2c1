/**
 * The processes of the chaos run: outpost nodes (`bin/outpost edge|shield`, a primary and its
 * workers in one process group) and chaos origins, each on ports chosen up front so a restart
 * keeps them. Readiness is the admin API's /readyz (nodes) or /health (origins).
 */
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { request } from 'undici';
import { signalGroup, spawnGroup, stopGroup, type Proc } from './procs.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const BIN = join(ROOT, 'bin', 'outpost');
const ORIGIN_SCRIPT = join(ROOT, 'dist', 'bench', 'chaos-origin.js');
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** One small HTTP call with a deadline; status and text, or throws. */
export async function call(url: string, options: { method?: 'GET' | 'POST'; token?: string; body?: string; timeoutMs?: number } = {}): Promise<{ status: number; text: string }> {
  const headers: Record<string, string> = {};
  if (options.token) headers.authorization = `Bearer ${options.token}`;
  if (options.body !== undefined) headers['content-type'] = 'application/json';
  const reply = await request(url, { method: options.method ?? 'GET', headers, body: options.body, signal: AbortSignal.timeout(options.timeoutMs ?? 3000) });
  return { status: reply.statusCode, text: await reply.body.text() };
}

/** Polls `check` every 100 ms until it is true; throws after `timeoutMs` or once `dead()` says the process is gone. */
async function waitFor(what: string, check: () => Promise<boolean>, dead: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (dead()) throw new Error(`${what} exited while starting`);
    if (await check().catch(() => false)) return;
    if (Date.now() > deadline) throw new Error(`${what} not ready after ${timeoutMs} ms`);
    await sleep(100);
  }
}

export interface NodeSpec {
  name: string;
  role: 'edge' | 'shield';
  port: number;
  adminPort: number;
  dataDir: string;
  args: string[];
}

export class OutpostNode {
  proc: Proc | undefined;
  /** False from a kill until the restart is ready. */
  up = false;
  private expectingExit = false;

  constructor(
    readonly spec: NodeSpec,
    private readonly logFile: string,
    private readonly token: string,
    /** Called when the node exits without being told to (a crash). */
    private readonly onCrash: (node: OutpostNode, how: string) => void,
  ) {}

  get name(): string {
    return this.spec.name;
  }
  get url(): string {
    return `http://127.0.0.1:${this.spec.port}`;
  }
  get admin(): string {
    return `http://127.0.0.1:${this.spec.adminPort}`;
  }

  async start(timeoutMs = 30_000): Promise<void> {
    const { role, port, adminPort, dataDir, name, args } = this.spec;
    const argv = [BIN, role, '--listen', `127.0.0.1:${port}`, '--admin-listen', `127.0.0.1:${adminPort}`, '--admin-token', this.token, '--data-dir', dataDir, '--node-name', name, ...args];
    const env = { ...process.env };
    for (const key of Object.keys(env)) if (key.startsWith('OUTPOST_')) delete env[key];
    const proc = spawnGroup(process.execPath, argv, this.logFile, env);
    this.proc = proc;
    this.expectingExit = false;
    void proc.exited.then(({ code, signal }) => {
      if (this.proc === proc && !this.expectingExit) {
        this.up = false;
        this.onCrash(this, `exit code ${code} signal ${signal}`);
      }
    });
    await waitFor(name, async () => (await call(`${this.admin}/readyz`, { timeoutMs: 1000 })).status === 200, () => !proc.alive(), timeoutMs);
    this.up = true;
  }

  /** kill -9 of the whole node (primary and workers). */
  async kill9(): Promise<void> {
    if (!this.proc) return;
    this.expectingExit = true;
    this.up = false;
    signalGroup(this.proc, 'SIGKILL');
    await this.proc.exited;
  }

  async stop(): Promise<void> {
    if (!this.proc) return;
    this.expectingExit = true;
    this.up = false;
    await stopGroup(this.proc);
  }

  async adminJson<T>(path: string): Promise<T> {
    const reply = await call(`${this.admin}${path}`, { token: this.token });
    if (reply.status !== 200) throw new Error(`${this.name} ${path}: ${reply.status} ${reply.text}`);
    return JSON.parse(reply.text) as T;
  }

  async readyz(): Promise<string> {
    try {
      const reply = await call(`${this.admin}/readyz`, { timeoutMs: 2000 });
      return `${reply.status} ${reply.text.replace(/\s+/g, ' ').trim()}`;
    } catch (error) {
      return `unreachable (${(error as Error).message})`;
    }
  }

  async purge(body: unknown): Promise<{ status: number; text: string }> {
    return call(`${this.admin}/purge`, { method: 'POST', token: this.token, body: JSON.stringify(body), timeoutMs: 10_000 });
  }
}

export class ChaosOrigin {
  proc: Proc | undefined;
  stopped = false;

  constructor(
    readonly name: string,
    readonly port: number,
    private readonly versionsFile: string,
    private readonly logFile: string,
  ) {}

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  async start(): Promise<void> {
    const proc = spawnGroup(process.execPath, [ORIGIN_SCRIPT, '--port', String(this.port), '--versions', this.versionsFile], this.logFile);
    this.proc = proc;
    await waitFor(this.name, async () => (await call(`${this.url}/health`, { timeoutMs: 1000 })).status === 200, () => !proc.alive(), 15_000);
  }

  /** SIGSTOP: the origin keeps its connections and accepts into its backlog, but answers nothing. */
  pause(): void {
    if (this.proc) signalGroup(this.proc, 'SIGSTOP');
    this.stopped = true;
  }

  resume(): void {
    if (this.proc) signalGroup(this.proc, 'SIGCONT');
    this.stopped = false;
  }

  async stop(): Promise<void> {
    if (this.proc) await stopGroup(this.proc, 2000);
  }
}
