/**
 * A real redis-server for tests, on 127.0.0.1 and a free port, with no persistence and a temp dir.
 * Callers: `const redis = await startRedis(); t.teardown(() => redis.stop());`
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TestRedis {
  url: string;
  port: number;
  /** Stops the server (SIGTERM, then SIGKILL) and waits for it to exit. Safe to call twice. */
  stop(): Promise<void>;
  /** SIGSTOP: the server keeps its connections but answers nothing (a slow or hung Redis). */
  pause(): void;
  /** SIGCONT after pause(). */
  resume(): void;
  /** Starts the server again on the same port after stop() (empty: no persistence). */
  restart(): Promise<void>;
}

const REDIS_SERVER = process.env.REDIS_SERVER ?? 'redis-server';

// Children still running when the test process exits (a failed test that skipped its teardown).
const running = new Set<ChildProcess>();
process.once('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

export async function startRedis(): Promise<TestRedis> {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-redis-'));
  let child: ChildProcess | undefined;
  let port = 0;
  let lastError: unknown;
  // Another process may take the free port between our probe and redis' bind: try again on a new one.
  for (let attempt = 0; attempt < 5 && child === undefined; attempt++) {
    port = await freePort();
    try {
      child = await spawnRedis(port, dir);
    } catch (error) {
      lastError = error;
    }
  }
  if (child === undefined) {
    rmSync(dir, { recursive: true, force: true });
    throw lastError;
  }
  let paused = false;
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    pause() {
      if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGSTOP');
      paused = true;
    },
    resume() {
      if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGCONT');
      paused = false;
    },
    async stop() {
      const current = child;
      child = undefined;
      if (current) {
        if (paused) current.kill('SIGCONT');
        paused = false;
        await kill(current);
      }
      rmSync(dir, { recursive: true, force: true });
    },
    async restart() {
      if (child) throw new Error('restart() needs stop() first');
      mkdirSync(dir, { recursive: true });
      // The old socket is gone once the child exited; retry briefly in case the kernel is slow to let go.
      for (let attempt = 0; ; attempt++) {
        try {
          child = await spawnRedis(port, dir);
          return;
        } catch (error) {
          if (attempt >= 10) throw error;
          await new Promise((resolve) => setTimeout(resolve, 100));
        }
      }
    },
  };
}

async function spawnRedis(port: number, dir: string): Promise<ChildProcess> {
  const child = spawn(
    REDIS_SERVER,
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir, '--loglevel', 'warning'],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  running.add(child);
  let output = '';
  child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.once('exit', () => running.delete(child));
  child.once('error', (error) => (output += String(error)));
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) break;
    if (await ping(port)) return child;
    await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 25))]);
  }
  await kill(child);
  throw new Error(`redis-server on port ${port} did not answer PING: ${output.trim()}`);
}

async function kill(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 3000);
  await exited;
  clearTimeout(timer);
}

function ping(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    let reply = '';
    const done = (ok: boolean) => {
      clearTimeout(timer);
      socket.destroy();
      resolve(ok);
    };
    const timer = setTimeout(() => done(false), 1000);
    socket.on('connect', () => socket.write('PING\r\n'));
    socket.on('data', (chunk) => {
      reply += chunk.toString();
      if (reply.includes('\r\n')) done(reply.startsWith('+PONG'));
    });
    socket.on('error', () => done(false));
    socket.on('close', () => done(false));
  });
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
}
