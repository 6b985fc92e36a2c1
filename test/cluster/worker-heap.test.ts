/**
 * The heap limit workers start with (cluster/worker-heap.ts, issue 13): derived from their share
 * of the memory tier, so V8 does not let a churning tier's garbage grow to several times its live
 * heap; an operator's own limit is kept.
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import { HEADROOM_MB, heapLimitGiven, workerExecArgv, workerHeapLimitMb } from '../../cluster/worker-heap.js';
import { startCluster } from '../helpers/cluster.js';
import { send, startOrigin } from '../helpers/harness.js';

const MiB = 1024 * 1024;

/** The command line a process was started with. */
const commandLine = (pid: number) => readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean);

test('the limit is the worker\'s share of the memory tier plus the headroom, rounded up to a MB', (t) => {
  t.is(workerHeapLimitMb(128 * MiB), 128 + HEADROOM_MB);
  t.is(workerHeapLimitMb(128 * MiB + 1), 129 + HEADROOM_MB);
  t.deepEqual(workerExecArgv(['--enable-source-maps'], undefined, 256 * MiB), ['--enable-source-maps', `--max-old-space-size=${256 + HEADROOM_MB}`]);
});

test('an operator\'s limit, in node flags or NODE_OPTIONS, in any spelling, is kept as given', (t) => {
  for (const flag of ['--max-old-space-size=300', '--max_old_space_size=300', '--max-old-space-size']) {
    t.true(heapLimitGiven([flag], undefined), flag);
    t.deepEqual(workerExecArgv([flag], undefined, 256 * MiB), [flag], flag);
  }
  t.true(heapLimitGiven([], '--enable-source-maps --max-old-space-size=300'));
  t.deepEqual(workerExecArgv([], '--max-old-space-size=300', 256 * MiB), []);
  t.false(heapLimitGiven(['--max-semi-space-size=8'], '--max-semi-space-size=8'), 'another heap flag is not the limit');
});

test.serial('each worker process starts with the limit derived from --memory-size; the primary keeps node\'s own', async (t) => {
  const origin = await startOrigin((_req, res) => send(res, 200, { 'cache-control': 'max-age=60' }, 'x'));
  t.teardown(() => origin.close());
  const node = await startCluster(t, origin.url, { workers: 2, args: ['--memory-size', '200MB'] });
  const stats = await node.stats();
  const workers = stats.workers!.list.map((worker) => worker.pid!);
  t.is(workers.length, 2);
  for (const pid of workers) t.true(commandLine(pid).includes(`--max-old-space-size=${100 + HEADROOM_MB}`), commandLine(pid).join(' '));
  t.false(commandLine(node.child.pid!).some((arg) => arg.startsWith('--max-old-space-size')), 'the primary is not limited by it');
});

test.serial('NODE_OPTIONS with a limit: the workers are started without one of ours', async (t) => {
  const origin = await startOrigin((_req, res) => send(res, 200, { 'cache-control': 'max-age=60' }, 'x'));
  t.teardown(() => origin.close());
  const node = await startCluster(t, origin.url, { workers: 1, args: ['--memory-size', '200MB'], env: { NODE_OPTIONS: '--max-old-space-size=900' } });
  const [worker] = (await node.stats()).workers!.list;
  t.false(commandLine(worker!.pid!).some((arg) => arg.startsWith('--max-old-space-size')), commandLine(worker!.pid!).join(' '));
  t.is((await fetch(`${node.url}/a`)).status, 200, 'and they serve');
});
