/**
 * The `outpost shield` and `outpost edge` commands as real processes: edge → shield → origin
 * over loopback, SIGTERM shutdown, and bad flags rejected with the field or flag named.
 * Needs the compiled CLI (`npx tsc -p .`).
 */
import test from 'ava';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { fetchFrom, header, startOrigin } from '../helpers/harness.js';

// dist/test/shield → project root
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const BIN = join(ROOT, 'bin', 'outpost');

interface Proc {
  child: ChildProcess;
  stderr: () => string;
  stdout: () => string;
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function run(args: string[], cwd: string): Proc {
  const env = { ...process.env };
  for (const name of Object.keys(env)) if (name.startsWith('OUTPOST_')) delete env[name];
  const child = spawn(process.execPath, [BIN, ...args], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  let stdout = '';
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  child.stdout!.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolvePromise) =>
    child.once('exit', (code, signal) => resolvePromise({ code, signal })),
  );
  return { child, stderr: () => stderr, stdout: () => stdout, exit };
}

/** Waits for "outpost <role> listening on http://…" on stderr. */
async function listeningUrl(proc: Proc, role: string, timeoutMs = 10_000): Promise<string> {
  const pattern = new RegExp(`outpost ${role} listening on (http://[^,\\s]+)`);
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const match = pattern.exec(proc.stderr());
    if (match) return match[1]!;
    if (proc.child.exitCode !== null) throw new Error(`outpost ${role} exited ${proc.child.exitCode}: ${proc.stderr()}`);
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`outpost ${role} did not start within ${timeoutMs} ms: ${proc.stderr()}`);
}

function stop(proc: Proc): void {
  if (proc.child.exitCode === null && proc.child.signalCode === null) proc.child.kill('SIGKILL');
}

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'outpost-cli-'));
}

test('outpost shield and outpost edge as processes: a request goes through both; SIGTERM exits 0', async (t) => {
  const origin = await startOrigin((req, res) => {
    res.writeHead(200, { 'cache-control': 'max-age=60', 'content-type': 'text/plain' });
    res.end(`origin ${req.url}`);
  });
  const cwd = tempDir();
  const shield = run(['shield', '--listen', '127.0.0.1:0', '--origin', origin.url, '--data-dir', join(cwd, 'shield'), '--access-log', 'false', '--log-level', 'silent'], cwd);
  t.teardown(async () => {
    stop(shield);
    await origin.close();
    rmSync(cwd, { recursive: true, force: true });
  });
  const shieldUrl = await listeningUrl(shield, 'shield');
  const edge = run(['edge', '--listen', '127.0.0.1:0', '--upstream', shieldUrl, '--data-dir', join(cwd, 'edge'), '--access-log', 'false', '--log-level', 'silent'], cwd);
  t.teardown(() => stop(edge));
  const edgeUrl = await listeningUrl(edge, 'edge');
  t.regex(edge.stderr(), new RegExp(`upstream ${shieldUrl.replace(/[.]/g, '\\.')}`));

  const first = await fetchFrom(edgeUrl, '/cli/a');
  t.is(first.status, 200);
  t.is(first.text, 'origin /cli/a');
  t.regex(header(first, 'cache-status') ?? '', /^outpost-shield; fwd=uri-miss; fwd-status=200; stored; ttl=\d+, outpost-edge; fwd=uri-miss; fwd-status=200; stored; ttl=\d+$/);
  // A request right after the first may still join its fill (the entry is being committed to disk),
  // so poll until the edge answers from its store.
  let second = await fetchFrom(edgeUrl, '/cli/a');
  for (let i = 0; i < 50 && !/outpost-edge; hit/.test(header(second, 'cache-status') ?? ''); i++) {
    await new Promise((r) => setTimeout(r, 20));
    second = await fetchFrom(edgeUrl, '/cli/a');
  }
  t.is(second.text, 'origin /cli/a');
  t.regex(header(second, 'cache-status') ?? '', /outpost-edge; hit/);
  t.is(origin.count('/cli/a'), 1);
  t.is((await fetchFrom(shieldUrl, '/__outpost/health')).text, 'ok\n');

  edge.child.kill('SIGTERM');
  shield.child.kill('SIGTERM');
  const [edgeExit, shieldExit] = await Promise.all([edge.exit, shield.exit]);
  t.deepEqual(edgeExit, { code: 0, signal: null }, edge.stderr());
  t.deepEqual(shieldExit, { code: 0, signal: null }, shield.stderr());
  t.regex(shield.stderr(), /SIGTERM, finishing requests in flight/);
});

const badFlags: Array<{ title: string; args: string[]; message: RegExp }> = [
  { title: '--balance bogus', args: ['--origin', 'http://127.0.0.1:9', '--balance', 'bogus'], message: /invalid balance \(flag --balance\): must be one of round-robin, least-request, consistent-hash, got "bogus"/ },
  { title: '--origin ftp://x', args: ['--origin', 'ftp://x'], message: /invalid origins \(flag --origin\): must be http:\/\/ or https:\/\// },
  { title: 'an unknown flag', args: ['--origin', 'http://127.0.0.1:9', '--frobnicate', '1'], message: /unknown flag --frobnicate/ },
  { title: 'an edge-only flag', args: ['--origin', 'http://127.0.0.1:9', '--upstream', 'http://127.0.0.1:9'], message: /--upstream is not an option of `outpost shield`/ },
  { title: 'no origin', args: [], message: /invalid origins .*at least one --origin/ },
  { title: '--max-attempts 0', args: ['--origin', 'http://127.0.0.1:9', '--max-attempts', '0'], message: /invalid maxAttempts \(flag --max-attempts\): must be at least 1/ },
];

for (const { title, args, message } of badFlags) {
  // Serial: spawning many node processes at once slows the load tests running alongside.
  test.serial(`outpost shield rejects ${title} with a non-zero exit naming the field`, async (t) => {
    const cwd = tempDir();
    const proc = run(['shield', '--listen', '127.0.0.1:0', '--data-dir', join(cwd, 'data'), ...args], cwd);
    t.teardown(() => {
      stop(proc);
      rmSync(cwd, { recursive: true, force: true });
    });
    const exit = await proc.exit;
    t.not(exit.code, 0);
    t.not(exit.code, null, `killed by ${exit.signal}`);
    t.regex(proc.stderr(), message);
    t.notRegex(proc.stderr(), /listening on/);
  });
}

test.serial('outpost edge rejects a bad --upstream with a non-zero exit naming the field', async (t) => {
  const cwd = tempDir();
  const proc = run(['edge', '--listen', '127.0.0.1:0', '--data-dir', join(cwd, 'data'), '--upstream', 'ftp://x'], cwd);
  t.teardown(() => {
    stop(proc);
    rmSync(cwd, { recursive: true, force: true });
  });
  const exit = await proc.exit;
  t.not(exit.code, 0);
  t.regex(proc.stderr(), /invalid upstreams \(flag --upstream\): must be http:\/\/ or https:\/\//);
});
