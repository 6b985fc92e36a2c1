/**
 * Slicing, as nginx's slice module and Varnish's segmented caching do it: an object larger than
 * `sliceSize` is fetched from upstream in ranges of that size, and each range is stored as an entry
 * of its own (key: the object's variant plus the slice index, keys.ts), a 206 that shares the
 * object's strong validator.
 *
 * - A miss asks upstream for the slice holding the first byte wanted (`Range: bytes=0-8388607` for
 *   a full request). A 200 (the origin ignores ranges) or a 206 covering the whole body is an
 *   ordinary response, stored under the URL as before. A partial 206 makes the object sliced.
 * - A client's response is stitched from slices, each looked up or fetched in turn (single-flight
 *   per slice): a Range request fetches and stores only the slices it covers, a full request
 *   streams slice after slice, and stored slices fill the gaps a later request would have fetched
 *   (RFC 9111 §3.4: parts are combined only when they share a strong validator).
 * - Every slice must carry the first one's validator and total length. One that does not (the
 *   object changed between slices) cuts the client's response, so no body mixes two versions,
 *   and the object's stored slices are dropped.
 */
import { Readable } from 'node:stream';
import type { CachedEntry, EntryMeta } from '../storage/cache-store.js';
import { parseHttpDate } from './http-date.js';
import { parseContentRange, type ByteRange } from './ranges.js';
import { entryBytes } from './memory-body.js';
import { headerText } from './response-policy.js';
import { fieldOf, type ResponseRecord } from './stored-response.js';
import type { HeaderMap, UpstreamResponse } from './upstream.js';

/** The Range header that asks for slice `index`. */
export function sliceRangeHeader(index: number, sliceSize: number): string {
  const start = index * sliceSize;
  return `bytes=${start}-${start + sliceSize - 1}`;
}

/** The slice holding byte `position`. */
export function sliceOf(position: number, sliceSize: number): number {
  return Math.floor(position / sliceSize);
}

/** What an upstream answer to a slice request is. */
export type SliceAnswer =
  /** A partial 206 for exactly the slice asked for, with a strong validator. */
  | { kind: 'slice'; total: number }
  /** A 206 that holds the whole body: an ordinary 200 in all but its status. */
  | { kind: 'whole'; response: UpstreamResponse }
  /**
   * Cannot be sliced: no strong validator, an empty body, or a first slice other than asked for
   * (RFC 9110 §15.3.7 lets a server send less): fetch it in full.
   */
  | { kind: 'unsliceable' }
  /** A later slice's 206 for some other range than the one asked for. */
  | { kind: 'mismatch'; message: string }
  /** A 416: it answers the range, not the URL, and is never stored. */
  | { kind: 'not-for-the-url' }
  /** Anything else (200, 304, 404…): the URL's own response. */
  | { kind: 'other' };

export function sliceAnswer(response: UpstreamResponse, index: number, sliceSize: number): SliceAnswer {
  const status = response.statusCode;
  // The first slice of an empty body is unsatisfiable: the body is fetched without a range.
  if (status === 416) return index === 0 ? { kind: 'unsliceable' } : { kind: 'not-for-the-url' };
  if (status !== 206) return { kind: 'other' };
  const headers = response.headers;
  const range = parseContentRange(headerText(headers['content-range']));
  const start = index * sliceSize;
  const mismatch = (message: string): SliceAnswer => (index === 0 ? { kind: 'unsliceable' } : { kind: 'mismatch', message });
  if (range === undefined || range.total === undefined || range.start !== start || range.end !== Math.min(start + sliceSize, range.total) - 1) {
    return mismatch(`asked for bytes ${start}-${start + sliceSize - 1}, the upstream sent ${headerText(headers['content-range']) ?? 'no Content-Range'}`);
  }
  const length = range.end - range.start + 1;
  const declared = headerText(headers['content-length']);
  if (declared !== undefined && Number(declared) !== length) return mismatch(`Content-Length ${declared} for a ${length}-byte range`);
  // The body is checked against this length as it is stored (store-writer.ts).
  headers['content-length'] = String(length);
  if (range.start === 0 && range.end === range.total - 1) {
    const whole: HeaderMap = { ...headers };
    delete whole['content-range'];
    return { kind: 'whole', response: { ...response, statusCode: 200, headers: whole } };
  }
  if (upstreamValidator(headers) === undefined) return { kind: 'unsliceable' };
  return { kind: 'slice', total: range.total };
}

/** The strong validator of an upstream response's headers (see validatorOf). */
function upstreamValidator(headers: HeaderMap): string | undefined {
  return validatorOf(headerText(headers['etag']), headerText(headers['last-modified']), headerText(headers['date']));
}

/**
 * The strong validator slices are joined by (RFC 9110 §8.8.1): a strong ETag, else a Last-Modified
 * at least a second before the response's Date (§8.8.2.2). Undefined when there is none.
 */
export function validatorOf(etag: string | undefined, lastModified: string | undefined, date: string | undefined): string | undefined {
  if (etag !== undefined && !etag.trim().startsWith('W/')) return `etag ${etag.trim()}`;
  const modified = parseHttpDate(lastModified);
  const dated = parseHttpDate(date);
  if (modified !== undefined && dated !== undefined && dated - modified >= 1000) return `last-modified ${modified}`;
  return undefined;
}

/** One slice as the stitcher reads it: where it sits in the object, its validator, its bytes. */
export interface SlicePiece {
  range: ByteRange;
  total: number;
  validator: string | undefined;
  /** Its bytes from `from` to `to`, inclusive, counted from the slice's first byte. */
  bytes(from: number, to: number): Iterable<Buffer> | AsyncIterable<Buffer>;
  /** Releases what the piece holds when its bytes were never read (an upstream body). */
  release(): void;
}

/** A stored slice (or one in its commit window); undefined for anything else (only slices are stored as 206). */
export function storedPiece(entry: CachedEntry): SlicePiece | undefined {
  const record = entry.meta.http as unknown as ResponseRecord;
  if (record.status !== 206) return undefined;
  const range = parseContentRange(fieldOf(record.headers, 'content-range'));
  if (range?.total === undefined) return undefined;
  return {
    range,
    total: range.total,
    validator: validatorOf(record.etag, record.lastModified, fieldOf(record.headers, 'date')),
    bytes: (from, to) => entryBytes(entry, { start: from, end: to }),
    release: () => undefined,
  };
}

/** A slice upstream answered but that is not stored (private, too large): its body can be read once. */
export function upstreamPiece(response: UpstreamResponse): SlicePiece | undefined {
  const headers = response.headers;
  const range = parseContentRange(headerText(headers['content-range']));
  if (range?.total === undefined) return undefined;
  let read = false;
  return {
    range,
    total: range.total,
    validator: upstreamValidator(headers),
    bytes: (from, to) => {
      if (read) throw new Error('an unstored slice was read twice');
      read = true;
      return clip(response.body, from, to);
    },
    release: () => {
      if (!read) response.body.destroy();
    },
  };
}

/** Bytes `from` to `to` (inclusive) of a stream; the rest is not read. */
async function* clip(body: Readable, from: number, to: number): AsyncGenerator<Buffer> {
  let position = 0;
  try {
    for await (const chunk of body as AsyncIterable<Buffer>) {
      const chunkStart = position;
      position += chunk.length;
      if (position <= from) continue;
      yield chunk.subarray(Math.max(0, from - chunkStart), Math.min(chunk.length, to + 1 - chunkStart));
      if (position > to) return;
    }
  } finally {
    if (!body.readableEnded) body.destroy();
  }
  if (position <= to) throw new Error('the slice ended early');
}

export class SliceMismatch extends Error {
  readonly code = 'SLICE_MISMATCH';
}

export interface SlicedObjectInit {
  /** The key of the slice the response was built from (logs, the owner hop). */
  key: string;
  /** That slice's meta: Age and freshness of the whole response come from it. */
  meta: EntryMeta;
  first: { index: number; piece: SlicePiece };
  sliceSize: number;
  /**
   * Slice `index`, of the version `validator` names when one is stored: looked up, or fetched and
   * stored. Rejects when there is none to be had.
   */
  slice: (index: number, validator: string | undefined) => Promise<SlicePiece>;
  /** Called once when a slice does not belong with the first (the object changed upstream). */
  mismatch: () => void;
}

/**
 * A sliced object as the deliver phase sees a stored entry: `openBody(range)` streams the range
 * slice after slice, each one checked against the first.
 */
export class SlicedObject implements CachedEntry {
  readonly body = undefined;
  readonly key: string;
  readonly meta: EntryMeta;
  readonly total: number;
  private readonly init: SlicedObjectInit;
  private firstUsed = false;

  constructor(init: SlicedObjectInit) {
    this.init = init;
    this.key = init.key;
    this.meta = init.meta;
    this.total = init.first.piece.total;
  }

  openBody(range?: ByteRange): Readable {
    return Readable.from(this.stitch(range ?? { start: 0, end: this.total - 1 }), { objectMode: false });
  }

  /** The first slice's upstream body, when no response read it (HEAD, 304, 416). */
  release(): void {
    if (!this.firstUsed) this.init.first.piece.release();
  }

  private async *stitch(range: ByteRange): AsyncGenerator<Buffer> {
    const { first, sliceSize } = this.init;
    for (let index = sliceOf(range.start, sliceSize); index <= sliceOf(range.end, sliceSize); index++) {
      let piece: SlicePiece;
      if (index === first.index && !this.firstUsed) {
        this.firstUsed = true;
        piece = first.piece;
      } else {
        try {
          piece = await this.init.slice(index, first.piece.validator);
        } catch (error) {
          if (error instanceof SliceMismatch) this.init.mismatch();
          throw error;
        }
      }
      const start = index * sliceSize;
      const end = Math.min(start + sliceSize, this.total) - 1;
      if (piece.total !== this.total || piece.validator !== first.piece.validator || piece.range.start !== start || piece.range.end !== end) {
        piece.release();
        this.init.mismatch();
        throw new SliceMismatch(`slice ${index} is of another version of the object`);
      }
      const from = Math.max(range.start, start) - start;
      const to = Math.min(range.end, end) - start;
      // Never more or fewer bytes than the range holds: the response's Content-Length says how many.
      let sent = 0;
      for await (const chunk of piece.bytes(from, to)) {
        sent += chunk.length;
        if (sent > to - from + 1) throw new Error(`slice ${index} holds more bytes than its range`);
        yield chunk;
      }
      if (sent !== to - from + 1) throw new Error(`slice ${index} ended after ${sent} of ${to - from + 1} bytes`);
    }
  }
}
