/**
 * Helpers for bench/run.ts: child processes (own process group, always killed), free ports,
 * readiness polling, wrk runs and parsing, a raw-HTTP capture, percentile maths, tables.
 * Everything binds and connects to 127.0.0.1 only.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { request as httpRequest, Agent } from 'node:http';
import { createServer, type AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const HERE = dirname(fileURLToPath(import.meta.url)); // dist/bench
export const ROOT = join(HERE, '..', '..');
export const HOST = '127.0.0.1';

// ---------------------------------------------------------------- cleanup

const children = new Set<ChildProcess>();
const tempDirs = new Set<string>();

export function tempDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), `outpost-bench-${prefix}-`));
  tempDirs.add(dir);
  return dir;
}

function killGroup(child: ChildProcess, signal: NodeJS.Signals): void {
  if (child.pid === undefined) return;
  try {
    process.kill(-child.pid, signal);
  } catch {
    try {
      child.kill(signal);
    } catch {
      // already gone
    }
  }
}

/** Stops a child's process group: SIGTERM, then SIGKILL after `graceMs`. */
export async function stop(child: ChildProcess, graceMs = 3000): Promise<void> {
  if (!children.has(child)) return;
  children.delete(child);
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  killGroup(child, 'SIGTERM');
  const timer = setTimeout(() => killGroup(child, 'SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
  killGroup(child, 'SIGKILL'); // anything left in the group (varnish's child, nginx workers)
}

/** SIGKILL now (the ejection scenario's "origin dies"). */
export function killNow(child: ChildProcess): void {
  killGroup(child, 'SIGKILL');
}

export function cleanupSync(): void {
  for (const child of children) killGroup(child, 'SIGKILL');
  children.clear();
  for (const dir of tempDirs) rmSync(dir, { recursive: true, force: true });
  tempDirs.clear();
}

export async function cleanup(): Promise<void> {
  await Promise.all([...children].map((c) => stop(c, 2000)));
  cleanupSync();
}

process.once('exit', cleanupSync);
for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  process.once(signal, () => {
    cleanupSync();
    process.exit(130);
  });
}

export interface Spawned {
  child: ChildProcess;
  /** Collected stderr (last 8 KiB), for error messages. */
  stderr: () => string;
}

/**
 * Starts a command in its own process group. stdout goes to `stdoutFile` (or is parsed for a
 * {"port":N} line when `stdoutFile` is 'port'), or is ignored.
 */
export function launch(command: string, args: string[], options: { stdoutFile?: string; env?: NodeJS.ProcessEnv } = {}): Spawned {
  // A file gets the child's stdout as its own fd: the child writes it directly (no pipe through this process).
  const fileFd = options.stdoutFile && options.stdoutFile !== 'port' ? openSync(options.stdoutFile, 'w') : undefined;
  const child = spawn(command, args, {
    cwd: ROOT,
    detached: true,
    stdio: ['ignore', fileFd ?? (options.stdoutFile ? 'pipe' : 'ignore'), 'pipe'],
    env: options.env ?? process.env,
  });
  if (fileFd !== undefined) closeSync(fileFd);
  children.add(child);
  let err = '';
  child.stderr!.on('data', (chunk: Buffer) => {
    err = (err + chunk.toString()).slice(-8192);
  });
  child.on('error', () => undefined);
  return { child, stderr: () => err };
}

/** Spawns a bench node script that prints {"port":N} and waits for it. */
export async function launchNodeScript(script: string, args: string[] = [], nodeArgs: string[] = []): Promise<Spawned & { port: number }> {
  const spawned = launch(process.execPath, [...nodeArgs, join(HERE, script), ...args], { stdoutFile: 'port' });
  const port = await new Promise<number>((resolve, reject) => {
    let buf = '';
    const timer = setTimeout(() => reject(new Error(`${script} did not start: ${spawned.stderr()}`)), 10_000);
    spawned.child.stdout!.on('data', (chunk: Buffer) => {
      buf += chunk.toString();
      const line = /\{"port":(\d+)\}/.exec(buf);
      if (line) {
        clearTimeout(timer);
        resolve(Number(line[1]));
      }
    });
    spawned.child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`${script} exited with ${code}: ${spawned.stderr()}`));
    });
  });
  spawned.child.stdout!.resume();
  return { ...spawned, port };
}

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, HOST, () => {
      const { port } = server.address() as AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

export const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------- HTTP

const plainAgent = new Agent({ keepAlive: false });

export interface Captured {
  status: number;
  rawHeaders: string[];
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
}

export function get(port: number, path: string, agent: Agent = plainAgent): Promise<Captured> {
  return new Promise((resolve, reject) => {
    const req = httpRequest({ host: HOST, port, path, agent, method: 'GET' }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, rawHeaders: res.rawHeaders, headers: res.headers, body: Buffer.concat(chunks) }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.setTimeout(30_000, () => req.destroy(new Error(`GET ${path} timed out`)));
    req.end();
  });
}

/** A response's Cache-Status field as one string. */
export function cacheStatus(headers: Record<string, string | string[] | undefined>): string {
  const value = headers['cache-status'];
  return Array.isArray(value) ? value.join(', ') : value ?? '';
}

/** Polls until GET path answers (any status), or throws after timeoutMs. */
export async function waitHttp(port: number, path: string, spawned?: Spawned, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (spawned && (spawned.child.exitCode !== null || spawned.child.signalCode !== null)) {
      throw new Error(`process exited (${spawned.child.exitCode ?? spawned.child.signalCode}): ${spawned.stderr()}`);
    }
    try {
      await get(port, path);
      return;
    } catch {
      if (Date.now() > deadline) throw new Error(`nothing answers on ${HOST}:${port}${path}${spawned ? `: ${spawned.stderr()}` : ''}`);
      await sleep(50);
    }
  }
}

export async function originStats(originPort: number, path?: string): Promise<{ total: number; path: number }> {
  const res = await get(originPort, path === undefined ? '/__stats' : `/__stats?path=${encodeURIComponent(path)}`);
  const parsed = JSON.parse(res.body.toString()) as { total: number; path?: number };
  return { total: parsed.total, path: parsed.path ?? 0 };
}

// ---------------------------------------------------------------- wrk

export const WRK = findBinary('wrk', ['/usr/bin/wrk', '/usr/local/bin/wrk']);
export const NGINX = findBinary('nginx', ['/usr/sbin/nginx', '/usr/local/sbin/nginx', '/usr/local/nginx/sbin/nginx', '/usr/bin/nginx']);
export const VARNISHD = findBinary('varnishd', ['/usr/sbin/varnishd', '/usr/local/sbin/varnishd', '/usr/bin/varnishd']);

export function findBinary(name: string, candidates: string[]): string | undefined {
  const which = spawnSync('sh', ['-c', `command -v ${name}`], { encoding: 'utf8' });
  const found = which.status === 0 ? which.stdout.trim() : '';
  if (found && existsSync(found)) return found;
  return candidates.find((c) => existsSync(c));
}

export interface WrkResult {
  requests: number;
  rps: number;
  /** Latency percentiles in ms from --latency. */
  p50: number;
  p90: number;
  p99: number;
  max: number;
  non2xx: number;
  socketErrors: string;
  raw: string;
}

function toMs(value: string, unit: string): number {
  const n = Number(value);
  switch (unit) {
    case 'us':
      return n / 1000;
    case 'ms':
      return n;
    case 's':
      return n * 1000;
    case 'm':
      return n * 60_000;
    default:
      return Number.NaN;
  }
}

export function parseWrk(raw: string): WrkResult {
  const pct = (p: string): number => {
    const m = new RegExp(`^\\s*${p}%\\s+([\\d.]+)(us|ms|s|m)\\s*$`, 'm').exec(raw);
    return m ? toMs(m[1]!, m[2]!) : Number.NaN;
  };
  const rps = /Requests\/sec:\s+([\d.]+)/.exec(raw);
  const reqs = /(\d+) requests in/.exec(raw);
  const max = /Latency\s+[\d.]+\w+\s+[\d.]+\w+\s+([\d.]+)(us|ms|s|m)/.exec(raw);
  const non2xx = /Non-2xx or 3xx responses:\s+(\d+)/.exec(raw);
  const sock = /Socket errors:(.*)/.exec(raw);
  return {
    requests: reqs ? Number(reqs[1]) : 0,
    rps: rps ? Number(rps[1]) : Number.NaN,
    p50: pct('50'),
    p90: pct('90'),
    p99: pct('99'),
    max: max ? toMs(max[1]!, max[2]!) : Number.NaN,
    non2xx: non2xx ? Number(non2xx[1]) : 0,
    socketErrors: sock ? sock[1]!.trim() : '',
    raw,
  };
}

/** Runs wrk (as a child in its own group, so it is killed with the rest on error). */
export async function wrk(url: string, options: { seconds: number; connections: number; threads?: number; script?: string; headers?: string[]; cpu?: number }): Promise<WrkResult> {
  if (!WRK) throw new Error('wrk is not installed');
  const args = ['-t', String(options.threads ?? 1), '-c', String(options.connections), '-d', `${options.seconds}s`, '--latency', '--timeout', '10s'];
  for (const header of options.headers ?? []) args.push('-H', header);
  if (options.script) args.push('-s', options.script);
  args.push(url);
  // `cpu`: run wrk on that core only (taskset), so it does not share the server's core.
  const child = options.cpu === undefined ? spawn(WRK, args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'] }) : spawn('taskset', ['-c', String(options.cpu), WRK, ...args], { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  children.add(child);
  let out = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr.on('data', (c: Buffer) => (out += c.toString()));
  const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
  children.delete(child);
  if (code !== 0) throw new Error(`wrk failed (${code}): ${out}`);
  return parseWrk(out);
}

/**
 * Runs a load tool (h2load, openssl s_time…) as a child in its own group, so it is killed with the
 * rest on error; resolves with its exit code and stdout + stderr, whatever the code.
 */
export async function runTool(command: string, args: string[], options: { env?: NodeJS.ProcessEnv } = {}): Promise<{ code: number | null; out: string }> {
  const child = spawn(command, args, { detached: true, stdio: ['ignore', 'pipe', 'pipe'], env: options.env ?? process.env });
  children.add(child);
  let out = '';
  child.stdout.on('data', (c: Buffer) => (out += c.toString()));
  child.stderr.on('data', (c: Buffer) => (out += c.toString()));
  const code = await new Promise<number | null>((resolve) => {
    child.once('error', (error) => {
      out += String(error);
      resolve(-1);
    });
    child.once('exit', (c) => resolve(c));
  });
  children.delete(child);
  return { code, out };
}

// ---------------------------------------------------------------- numbers and tables

export function percentile(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[i]!;
}

export const fmtInt = (n: number) => (Number.isFinite(n) ? Math.round(n).toLocaleString('en-US') : '—');
export const fmtMs = (n: number) => (Number.isFinite(n) ? `${n.toFixed(n < 10 ? 2 : 1)} ms` : '—');
export const fmtRatio = (n: number) => (Number.isFinite(n) ? `${n.toFixed(2)}×` : '—');

export function table(head: string[], rows: string[][], alignRight: boolean[] = head.map((_, i) => i > 0)): string {
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) => `| ${cells.map((c, i) => (alignRight[i] ? c.padStart(widths[i]!) : c.padEnd(widths[i]!))).join(' | ')} |`;
  const sep = `|${widths.map((w, i) => (alignRight[i] ? `${'-'.repeat(w + 1)}:` : `${'-'.repeat(w + 2)}`)).join('|')}|`;
  return [line(head), sep, ...rows.map(line)].join('\n');
}

// ---------------------------------------------------------------- CPU from /proc

/** Clock ticks per second of /proc/PID/stat times (USER_HZ; 100 on Linux). */
const TICKS_PER_SECOND = 100;

/** Pins a process, its threads and every live descendant to one core (taskset). */
export function pinTree(pid: number, cpu: number): void {
  const visit = (id: number): void => {
    spawnSync('taskset', ['-a', '-c', '-p', String(cpu), String(id)], { stdio: 'ignore' });
    try {
      for (const task of readdirSync(`/proc/${id}/task`)) {
        const children = readFileSync(`/proc/${id}/task/${task}/children`, 'utf8').trim();
        for (const child of children ? children.split(' ') : []) visit(Number(child));
      }
    } catch {
      // exited meanwhile
    }
  };
  visit(pid);
}

/** CPU seconds used so far by a process and every live descendant (an nginx master and its workers, a primary and its workers). */
export function treeCpuSeconds(pid: number): number {
  let ticks = 0;
  const visit = (id: number): void => {
    try {
      // Fields after the command name (which may hold spaces): utime and stime are the 12th and 13th.
      const stat = readFileSync(`/proc/${id}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks += Number(fields[11]) + Number(fields[12]);
      for (const task of readdirSync(`/proc/${id}/task`)) {
        const children = readFileSync(`/proc/${id}/task/${task}/children`, 'utf8').trim();
        for (const child of children ? children.split(' ') : []) visit(Number(child));
      }
    } catch {
      // exited meanwhile
    }
  };
  visit(pid);
  return ticks / TICKS_PER_SECOND;
}

/**
 * CPU seconds the whole machine has spent so far (every core; /proc/stat): `tasks` in processes
 * (user, nice, system), `interrupts` in hard and soft interrupts (loopback packets are mostly
 * softirq work, which no process's /proc/PID/stat counts), `steal` taken by the hypervisor.
 */
export function machineCpuSeconds(): { tasks: number; interrupts: number; steal: number } {
  try {
    const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1, 9).map(Number);
    return { tasks: (f[0]! + f[1]! + f[2]!) / TICKS_PER_SECOND, interrupts: (f[5]! + f[6]!) / TICKS_PER_SECOND, steal: f[7]! / TICKS_PER_SECOND };
  } catch {
    return { tasks: Number.NaN, interrupts: Number.NaN, steal: Number.NaN };
  }
}

/**
 * CPU seconds of this process (`self`) and of its exited, reaped children (`children`: wrk, h2load,
 * s_time… once they have exited; /proc/self/stat cutime + cstime).
 */
export function ownCpuSeconds(): { self: number; children: number } {
  try {
    const stat = readFileSync('/proc/self/stat', 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ').map(Number);
    return { self: (f[11]! + f[12]!) / TICKS_PER_SECOND, children: (f[13]! + f[14]!) / TICKS_PER_SECOND };
  } catch {
    return { self: Number.NaN, children: Number.NaN };
  }
}

/**
 * The `http {}` lines every bench nginx shares: temp folders in `dir`, keep-alive as the other
 * servers', the proxy cache and the origin upstream (every bench nginx: bench/servers.ts, the tls scenario).
 */
export function nginxCacheHttp(dir: string, originPort: number, cache: { maxSize?: string; keysZone?: string } = {}): string {
  return `  client_body_temp_path ${dir}/client_body;
  proxy_temp_path ${dir}/proxy_temp;
  fastcgi_temp_path ${dir}/fastcgi_temp;
  uwsgi_temp_path ${dir}/uwsgi_temp;
  scgi_temp_path ${dir}/scgi_temp;
  sendfile on;
  keepalive_requests 1000000;
  keepalive_timeout 75s;
  proxy_cache_path ${dir}/cache levels=1:2 keys_zone=bench:${cache.keysZone ?? '16m'} max_size=${cache.maxSize ?? '1g'} inactive=60m use_temp_path=off;
  upstream origin { server ${HOST}:${originPort}; keepalive 64; }`;
}

/** The top of every bench nginx.conf: workers, in the foreground, pid and error log in `dir`. */
export function nginxMain(dir: string, pidName: string, workers: number): string {
  return `worker_processes ${workers};
daemon off;
master_process on;
${process.getuid?.() === 0 ? 'user root;' : ''}
pid ${dir}/${pidName}.pid;
error_log ${dir}/nginx-error.log warn;
events { worker_connections 4096; }`;
}

/** What every bench nginx does in `location /`: proxy to the origin with keep-alive and cache, one fetch per key at a time. */
export const NGINX_CACHE_LOCATION = `      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache bench;
      proxy_cache_valid 200 60m;
      proxy_cache_lock on;
      proxy_cache_lock_timeout 60s;
      proxy_cache_lock_age 60s;`;
