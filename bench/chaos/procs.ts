/**
 * Child processes, tmpfs mounts and temp folders of the chaos run, all registered here so that one
 * synchronous cleanup (process exit, Ctrl-C, an exception) kills every process group, unmounts
 * every tmpfs and removes every folder.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const groups = new Set<ChildProcess>();
const mounts: string[] = [];
const folders: string[] = [];

export interface Proc {
  child: ChildProcess;
  pid: number;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  alive(): boolean;
}

/** Starts a command as the leader of its own process group, stdout and stderr appended to `logFile`. */
export function spawnGroup(command: string, args: string[], logFile: string, env: NodeJS.ProcessEnv = process.env): Proc {
  const fd = openSync(logFile, 'a');
  const child = spawn(command, args, { detached: true, stdio: ['ignore', fd, fd], env });
  closeSync(fd);
  groups.add(child);
  child.on('error', () => undefined);
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => {
      groups.delete(child);
      resolve({ code, signal });
    }),
  );
  if (child.pid === undefined) throw new Error(`cannot start ${command}`);
  return { child, pid: child.pid, exited, alive: () => child.exitCode === null && child.signalCode === null };
}

/** Signals a whole process group (a node's primary and its workers). */
export function signalGroup(proc: Proc, signal: NodeJS.Signals): void {
  try {
    process.kill(-proc.pid, signal);
  } catch {
    // gone already
  }
}

/** SIGTERM, then SIGKILL after `graceMs`; resolves when the leader has exited. */
export async function stopGroup(proc: Proc, graceMs = 5000): Promise<void> {
  if (!proc.alive()) return;
  signalGroup(proc, 'SIGCONT');
  signalGroup(proc, 'SIGTERM');
  const timer = setTimeout(() => signalGroup(proc, 'SIGKILL'), graceMs);
  await proc.exited;
  clearTimeout(timer);
  signalGroup(proc, 'SIGKILL'); // workers left behind
}

export function tempFolder(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  folders.push(dir);
  return dir;
}

/** Removes `dir` at cleanup too (a folder made inside a temp folder, cleaned before it). */
export function registerFolder(dir: string): void {
  folders.push(dir);
}

/** Mounts a tmpfs of `size` (e.g. "64m") on `dir`; false when that is not possible (not root). */
export function mountTmpfs(dir: string, size: string): boolean {
  const result = spawnSync('mount', ['-t', 'tmpfs', '-o', `size=${size}`, 'tmpfs', dir], { encoding: 'utf8' });
  if (result.status !== 0) return false;
  mounts.push(dir);
  return true;
}

function sleepSync(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

function unmount(dir: string): void {
  for (let attempt = 0; attempt < 30; attempt++) {
    if (spawnSync('umount', [dir]).status === 0) return;
    sleepSync(100); // killed processes may still hold files open for a moment
  }
  spawnSync('umount', ['-l', dir]);
}

/** Kills every process group, unmounts, removes the folders. Synchronous: safe in an exit handler. */
export function cleanupSync(): void {
  for (const child of groups) {
    try {
      process.kill(-child.pid!, 'SIGCONT');
      process.kill(-child.pid!, 'SIGKILL');
    } catch {
      // gone
    }
  }
  groups.clear();
  while (mounts.length > 0) unmount(mounts.pop()!);
  while (folders.length > 0) rmSync(folders.pop()!, { recursive: true, force: true });
}

/** Keeps `dir` (logs for a post-mortem): it is no longer removed by cleanup. */
export function keepFolder(dir: string): void {
  const i = folders.indexOf(dir);
  if (i !== -1) folders.splice(i, 1);
}

let installed = false;
export function installCleanup(): void {
  if (installed) return;
  installed = true;
  process.once('exit', cleanupSync);
  for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(signal, () => {
      process.stderr.write(`chaos: ${signal}, cleaning up\n`);
      process.exit(130);
    });
  }
}
