/**
 * Reads the first bytes of a request body for inspection, and leaves in `x.body` a stream that
 * replays them followed by the rest, so the upstream gets the body whole. Only the prefix is
 * buffered: a large upload streams on once it is read.
 */
import { Readable } from 'node:stream';
import { hasRequestBody, type Exchange } from '../../pipeline/exchange.js';

/** Requests whose body the WAF reads (GET and HEAD bodies are never forwarded by the cache). */
export function carriesBody(x: Exchange): boolean {
  return x.method !== 'GET' && x.method !== 'HEAD' && hasRequestBody(x.req);
}

export function readBodyPrefix(x: Exchange, limit: number): Promise<Buffer> {
  const req = x.req;
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    let size = 0;
    let finished = false;
    const done = (): void => {
      if (finished) return;
      finished = true;
      req.off('data', onData);
      req.off('end', done);
      req.off('error', done);
      req.off('close', done);
      req.pause();
      const prefix = Buffer.concat(chunks, size);
      x.body = Readable.from(replay(chunks, req), { objectMode: false });
      resolve(prefix.subarray(0, limit));
    };
    const onData = (chunk: Buffer): void => {
      chunks.push(chunk);
      size += chunk.length;
      if (size >= limit) done();
    };
    req.on('data', onData);
    req.once('end', done);
    req.once('error', done);
    req.once('close', done);
  });
}

async function* replay(prefix: Buffer[], rest: Readable): AsyncGenerator<Buffer> {
  yield* prefix;
  if (!rest.readableEnded && !rest.destroyed) for await (const chunk of rest) yield chunk as Buffer;
}
