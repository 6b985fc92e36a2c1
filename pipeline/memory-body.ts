/**
 * Bodies held in memory, read and written in 64 KiB pieces: TLS and HTTP/2 copy whatever they are
 * handed, so a thousand slow clients handed a whole large body would hold a thousand copies.
 */
import type { ServerResponse } from 'node:http';
import type { CachedEntry } from '../storage/cache-store.js';
import type { ByteRange } from './ranges.js';

export const PIECE_BYTES = 64 * 1024;

/** Bytes `from` to `to` (inclusive) of a body held in memory, a piece at a time. */
function* pieces(body: Buffer, from: number, to: number): Generator<Buffer> {
  for (let at = from; at <= to; at += PIECE_BYTES) yield body.subarray(at, Math.min(at + PIECE_BYTES, to + 1));
}

/** A byte range of a stored entry: from memory a piece at a time, else its body stream. */
export function entryBytes(entry: CachedEntry, range: ByteRange): Iterable<Buffer> | AsyncIterable<Buffer> {
  return entry.body !== undefined ? pieces(entry.body, range.start, range.end) : entry.openBody(range);
}

/**
 * A large body held in memory, written as the client's buffer drains. (Plain TCP keeps a reference
 * to the stored buffer instead, and takes it whole: there one write is cheaper.)
 */
export function writeInPieces(res: Pick<ServerResponse, 'write' | 'end' | 'once' | 'destroyed'>, bytes: Buffer): void {
  let offset = 0;
  const next = (): void => {
    while (offset < bytes.length) {
      if (res.destroyed) return;
      const end = Math.min(offset + PIECE_BYTES, bytes.length);
      const flowing = res.write(bytes.subarray(offset, end));
      offset = end;
      if (!flowing) {
        res.once('drain', next);
        return;
      }
    }
    res.end();
  };
  next();
}
