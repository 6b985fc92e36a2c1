/**
 * The short chaos run (bench/chaos.ts, `npm run chaos`) as a test: 15 s of mixed load through
 * 2 edges, 2 shields and 3 origins (real processes) while nodes are killed and restarted, origins
 * stopped and resumed and a disk filled. No response may carry a body other than the origin's for
 * the version it claims.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

const driver = fileURLToPath(new URL('../../bench/chaos.js', import.meta.url));

test('a 15 s chaos run sends requests, causes chaos events, answers most of them and serves no wrong body', async (t) => {
  t.timeout(120_000);
  const env = { ...process.env, CHAOS_SEC: '15' };
  const child = spawn(process.execPath, [driver], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  t.teardown(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    // SIGTERM: the driver kills its process groups, unmounts its tmpfs and removes its folders.
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    await exit;
    clearTimeout(timer);
  });
  const code = await exit;
  const report = `${stdout}\n--- stderr ---\n${stderr}`;
  t.is(code, 0, report);
  t.regex(stdout, /^wrong bodies: 0$/m, report);
  const sent = Number(/^requests sent: (\d+)/m.exec(stdout)?.[1] ?? 0);
  t.true(sent > 0, report);
  // A node that failed everything would serve no wrong body either: most requests must succeed
  // (the failures belong to the chaos: a killed edge refuses connections while it is down).
  const ok = Number(/^requests ok: (\d+)/m.exec(stdout)?.[1] ?? 0);
  t.true(ok >= sent / 2, report);
  const events = Number(/^chaos events: (\d+)/m.exec(stdout)?.[1] ?? 0);
  t.true(events > 0, report);
  t.regex(stdout, /kill -9 (edge|shield)-\d: down \d+ ms, restarted/, report);
});
