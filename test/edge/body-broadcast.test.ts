/** The fill buffer behind request collapsing: every reader gets every byte; an unstored body is not held whole. */
import test from 'ava';
import { PassThrough, Readable, Writable } from 'node:stream';
import { BodyBroadcast } from '../../pipeline/body-broadcast.js';
import { writeInPieces } from '../../pipeline/memory-body.js';
import { pattern } from '../helpers/harness.js';

function reader(broadcast: BodyBroadcast, range?: { start: number; end: number }): Promise<Buffer> {
  const out = new PassThrough();
  const chunks: Buffer[] = [];
  out.on('data', (c: Buffer) => chunks.push(c));
  const done = new Promise<Buffer>((resolve, reject) => {
    out.on('end', () => resolve(Buffer.concat(chunks)));
    out.on('error', reject);
  });
  broadcast.pipeTo(out, range, () => undefined);
  return done;
}

test('readers joining at any time get the whole body, or their range', async (t) => {
  const b = new BodyBroadcast();
  const early = reader(b);
  b.push(Buffer.from('hello '));
  const late = reader(b);
  const ranged = reader(b, { start: 3, end: 7 });
  b.push(Buffer.from('world'));
  b.end();
  t.is((await early).toString(), 'hello world');
  t.is((await late).toString(), 'hello world');
  t.is((await ranged).toString(), 'lo wo');
  t.is((await reader(b)).toString(), 'hello world', 'a reader after the end still gets everything');
});

test('after stopRetaining, chunks every reader has passed are dropped and no new reader may start', async (t) => {
  const b = new BodyBroadcast();
  const first = reader(b);
  for (let i = 0; i < 100; i++) b.push(Buffer.alloc(1024, 'x'));
  t.is(b.heldChunks, 100);
  await b.stopRetaining();
  t.is(b.heldChunks, 0, 'the only reader has written everything');
  t.false(b.acceptsReaders);
  b.push(Buffer.from('tail'));
  b.end();
  t.true((await first).equals(Buffer.concat([Buffer.alloc(100 * 1024, 'x'), Buffer.from('tail')])));
  await t.throwsAsync(reader(b));
});

test('a failed body destroys every reader', async (t) => {
  const b = new BodyBroadcast();
  const r = reader(b);
  b.push(Buffer.from('part'));
  b.fail(new Error('origin reset'));
  await t.throwsAsync(r, { message: 'origin reset' });
  t.true(b.failed);
});

/** A response whose client reads nothing until `drain()`: its buffer holds `highWaterMark` bytes. */
function stalledReader(broadcast: BodyBroadcast, highWaterMark = 4096): { written: () => number; release: () => Promise<Buffer>; out: Writable } {
  const received: Buffer[] = [];
  let pending: Array<() => void> = [];
  let stalled = true;
  const out = new Writable({
    highWaterMark,
    write(chunk: Buffer, _encoding, callback) {
      received.push(chunk);
      if (stalled) pending.push(callback);
      else callback();
    },
  });
  const ended = new Promise<Buffer>((resolve, reject) => {
    out.on('finish', () => resolve(Buffer.concat(received)));
    out.on('error', reject);
  });
  broadcast.pipeTo(out, undefined, () => undefined);
  return {
    out,
    written: () => received.reduce((n, c) => n + c.length, 0),
    release: () => {
      stalled = false;
      const callbacks = pending;
      pending = [];
      for (const callback of callbacks) callback();
      return ended;
    },
  };
}


test('a reader honours its response\'s backpressure: a client that reads nothing is handed only what fills its buffer', async (t) => {
  const b = new BodyBroadcast();
  const slow = stalledReader(b);
  const body = pattern(100 * 1024, 1);
  for (let i = 0; i < 100; i++) b.push(body.subarray(i * 1024, (i + 1) * 1024));
  b.end();
  t.true(slow.written() <= 8 * 1024, `written while stalled: ${slow.written()}`);
  t.deepEqual(await slow.release(), body, 'and all of it once it reads');
});

test('a large body being stored keeps only its window; the fill never waits, and a reader that fell behind continues from the store', async (t) => {
  const body = pattern(200 * 1024, 1);
  let committed!: () => void;
  const stored = new Promise<void>((resolve) => (committed = resolve));
  const asked: Array<[number, number | undefined]> = [];
  const b = new BodyBroadcast({
    window: 16 * 1024,
    fallback: async (start, end) => {
      asked.push([start, end]);
      await stored;
      return Readable.from([body.subarray(start, end === undefined ? body.length : end + 1)]);
    },
  });
  const slow = stalledReader(b);
  const fast = reader(b);
  let maxHeld = 0;
  for (let i = 0; i < 200; i++) {
    b.push(body.subarray(i * 1024, (i + 1) * 1024));
    maxHeld = Math.max(maxHeld, b.held);
  }
  b.end();
  t.true(maxHeld <= 17 * 1024, `held at most ${maxHeld} bytes`);
  t.true((await fast).equals(body), 'the reader that kept up got it from the window');
  t.true(b.acceptsReaders, 'a new reader can still start: from the store');
  const late = reader(b);
  const slowDone = slow.release();
  committed();
  t.deepEqual(await slowDone, body, 'the reader that fell behind gets every byte, in order');
  t.true((await late).equals(body), 'a reader that started late got it from the store');
  t.deepEqual(asked[0], [0, undefined], 'the late reader asked for the whole body');
  const [start, end] = asked[1]!;
  t.true(start > 0 && start < body.length && end === undefined, `the slow one asked for the bytes after the ones it had: ${start}-`);
});

test('a reader behind the window of a body that is then not stored is cut, never handed a gap', async (t) => {
  const b = new BodyBroadcast({ window: 4096, fallback: () => Promise.reject(new Error('not stored')) });
  const slow = stalledReader(b, 1024);
  for (let i = 0; i < 50; i++) b.push(pattern(1024, 1));
  b.end();
  const outcome = slow.release();
  await t.throwsAsync(outcome);
});

test('a body that is not stored: chunks a slow reader still needs make the fill wait (room), and a reader that leaves frees them', async (t) => {
  const b = new BodyBroadcast({ window: 8 * 1024 });
  const slow = stalledReader(b, 1024);
  await b.stopRetaining();
  for (let i = 0; i < 20; i++) b.push(pattern(1024, 1));
  t.true(b.held > 8 * 1024);
  const room = b.room();
  t.truthy(room, 'the fill must wait for the slow reader');
  let released = false;
  void room!.then(() => (released = true));
  await new Promise((resolve) => setImmediate(resolve));
  t.false(released);
  slow.out.destroy();
  await room;
  t.is(b.held, 0, 'the reader that left holds nothing');
  t.is(b.room(), undefined);
});

test('a large memory hit is written a slice at a time as the client drains, never handed to a stalled client whole', async (t) => {
  const body = pattern(1024 * 1024, 1);
  let release!: () => void;
  const stalled = new Promise<void>((resolve) => (release = resolve));
  const received: Buffer[] = [];
  let handed = 0;
  const out = new Writable({
    highWaterMark: 16 * 1024,
    write(chunk: Buffer, _encoding, callback) {
      received.push(chunk);
      void stalled.then(() => callback());
    },
  });
  const originalWrite = out.write.bind(out);
  out.write = ((chunk: Buffer, ...rest: never[]) => {
    handed += chunk.length;
    return originalWrite(chunk, ...rest);
  }) as typeof out.write;
  const finished = new Promise<void>((resolve) => out.on('finish', resolve));
  writeInPieces(out as never, body);
  t.true(handed <= 64 * 1024, `handed to a client that reads nothing: ${handed} bytes`);
  release();
  await finished;
  t.true(Buffer.concat(received).equals(body), 'all of it, in order, once it reads');
});
