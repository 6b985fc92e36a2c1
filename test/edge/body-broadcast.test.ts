/** The fill buffer behind request collapsing: every reader gets every byte; an unstored body is not held whole. */
import test from 'ava';
import { PassThrough } from 'node:stream';
import { BodyBroadcast } from '../../pipeline/body-broadcast.js';

function reader(broadcast: BodyBroadcast, range?: { start: number; end: number }): Promise<string> {
  const out = new PassThrough();
  const chunks: Buffer[] = [];
  out.on('data', (c: Buffer) => chunks.push(c));
  const done = new Promise<string>((resolve, reject) => {
    out.on('end', () => resolve(Buffer.concat(chunks).toString()));
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
  t.is(await early, 'hello world');
  t.is(await late, 'hello world');
  t.is(await ranged, 'lo wo');
  t.is(await reader(b), 'hello world', 'a reader after the end still gets everything');
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
  t.is((await first).length, 100 * 1024 + 4);
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
