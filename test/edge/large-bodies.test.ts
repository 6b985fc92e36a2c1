/**
 * Bodies larger than the memory tier's object limit, and clients slower than the origin (issue 13):
 * the fill goes at the origin's pace, the edge holds a window of the body rather than all of it,
 * and clients that fall behind carry on from the disk tier with every byte in order.
 */
import test, { type ExecutionContext } from 'ava';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { get } from 'node:http';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { openTieredStore } from '../../storage/tiered-store.js';
import { delay, fetchFrom, pattern, startOrigin, startTestEdge, waitFor, type TestEdge } from '../helpers/harness.js';

setFlagsFromString('--expose-gc');
const collect = runInNewContext('gc') as () => void;

/** Array buffer bytes alive: V8 frees buffers' memory after a collection, on its own thread. */
async function liveArrayBuffers(): Promise<number> {
  for (let i = 0; i < 3; i++) {
    collect();
    await delay(50);
  }
  return process.memoryUsage().arrayBuffers;
}

const MiB = 1024 * 1024;

const sha256 = (bytes: Buffer): string => createHash('sha256').update(bytes).digest('hex');

/** The SHA-256 of a 200 response's body, read as it arrives. */
function digestOf(base: string, path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    get(base + path, { agent: false }, (res) => {
      if (res.statusCode !== 200) reject(new Error(`status ${res.statusCode}`));
      const hash = createHash('sha256');
      res.on('data', (chunk: Buffer) => hash.update(chunk));
      res.once('end', () => resolve(hash.digest('hex')));
      res.once('error', reject);
    }).once('error', reject);
  });
}

/** A client on a raw socket that reads nothing until `resume()`: its buffers fill, then the edge's. */
function stalledClient(base: string, path: string): { resume: () => Promise<{ head: string; body: Buffer }> } {
  const { hostname, port } = new URL(base);
  const socket = connect(Number(port), hostname);
  socket.pause();
  socket.write(`GET ${path} HTTP/1.1\r\nHost: ${hostname}:${port}\r\nConnection: close\r\n\r\n`);
  return {
    resume: () =>
      new Promise((resolve, reject) => {
        const chunks: Buffer[] = [];
        socket.on('data', (chunk: Buffer) => chunks.push(chunk));
        socket.once('error', reject);
        socket.once('end', () => {
          const all = Buffer.concat(chunks);
          const split = all.indexOf('\r\n\r\n');
          resolve({ head: all.subarray(0, split).toString('latin1'), body: all.subarray(split + 4) });
        });
        socket.resume();
      }),
  };
}

async function largeObjectEdge(t: ExecutionContext, body: Buffer): Promise<{ edge: TestEdge; finishedAt: () => number | undefined; fetches: () => number }> {
  let finishedAt: number | undefined;
  const origin = await startOrigin((_req, res) => {
    res.writeHead(200, { 'cache-control': 'max-age=300', 'content-type': 'application/octet-stream', 'content-length': body.length });
    res.on('finish', () => (finishedAt = Date.now()));
    res.end(body);
  });
  const dataDir = mkdtempSync(join(tmpdir(), 'outpost-large-'));
  const store = await openTieredStore({ dataDir, memoryBytes: 64 * MiB, diskBytes: 1024 * MiB, memoryMaxEntryBytes: MiB });
  const edge = await startTestEdge(origin.url, { memoryMaxObjectSize: MiB, fillBufferSize: 256 * 1024 }, store);
  t.teardown(async () => {
    await edge.close();
    await origin.close();
    rmSync(dataDir, { recursive: true, force: true });
  });
  return { edge, finishedAt: () => finishedAt, fetches: () => origin.count() };
}

// Serial: the first test measures the process's array buffers, which a concurrent test's bodies would inflate.
test.serial('a fill is not slowed by its slowest readers: 20 stalled clients of a 48 MiB object, the origin finishes, the edge holds a window, and every client then gets every byte', async (t) => {
  const body = pattern(48 * MiB, 7);
  const { edge, finishedAt, fetches } = await largeObjectEdge(t, body);
  const before = await liveArrayBuffers();
  const stalled = Array.from({ length: 20 }, () => stalledClient(edge.url, '/big'));
  // A client that keeps up, at the same time; it hashes as it reads, so the test holds no copy.
  t.is(await digestOf(edge.url, '/big'), sha256(body));
  t.true(await waitFor(() => finishedAt() !== undefined, 30_000), 'the origin sent the whole body while 20 clients read nothing');
  await edge.pipeline.drain();
  const held = (await liveArrayBuffers()) - before;
  t.log(`array buffers held with 20 stalled clients after the fill: ${(held / MiB).toFixed(1)} MiB (body ${body.length / MiB} MiB)`);
  t.true(held < 16 * MiB, `the edge holds a window, not the body: ${(held / MiB).toFixed(1)} MiB`);
  const results = await Promise.all(stalled.map((client) => client.resume()));
  for (const { head, body: got } of results) {
    t.regex(head, /^HTTP\/1\.1 200/);
    t.regex(head, new RegExp(`content-length: ${body.length}`, 'i'));
    t.true(got.equals(body), 'every byte, in order, from the window and then the disk tier');
  }
  t.is(fetches(), 1, 'one origin fetch for all of them');
});

test.serial('a client that joins a large fill after its window has moved on is served from the disk tier once the fill commits', async (t) => {
  const body = pattern(24 * MiB, 3);
  const { edge, finishedAt, fetches } = await largeObjectEdge(t, body);
  const first = stalledClient(edge.url, '/big');
  // The fill runs ahead of the stalled first client; later ones find the first byte gone from the window.
  t.true(await waitFor(() => finishedAt() !== undefined, 30_000));
  const later = await Promise.all(Array.from({ length: 3 }, () => fetchFrom(edge.url, '/big')));
  for (const reply of later) t.true(reply.body.equals(body));
  const { body: got } = await first.resume();
  t.true(got.equals(body));
  t.is(fetches(), 1);
});
