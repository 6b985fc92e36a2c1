/**
 * Reads one response body and holds it against the oracle: the bytes the origin sends for the
 * version the response claims (x-version), compared chunk by chunk as they arrive (nothing is
 * buffered), plus its CRC32 (x-checksum) and ETag. A body that ends early with an error is cut;
 * one that ends cleanly but short, long or different is wrong.
 */
import { crc32 } from 'node:zlib';
import { bodySize, checksumOf, etagOf, expectedBody } from './body.js';

export interface Checked {
  kind: 'ok' | 'wrong' | 'cut';
  version: number;
  bytes: number;
  expectedBytes: number;
  /** Why it is wrong, or what cut it. */
  reason: string;
  firstDiff: number;
  diffHex: string;
  /** The first 64 bytes received (to tell which version a wrong body is). */
  head: Buffer;
  /** ETag or x-checksum of another version while the bytes are right. */
  inconsistent: string;
}

type Headers = Record<string, string | string[] | undefined>;
const one = (value: string | string[] | undefined) => (Array.isArray(value) ? value.join(', ') : value);

function firstDifference(got: Buffer, want: Buffer): number {
  const n = Math.min(got.length, want.length);
  for (let i = 0; i < n; i++) if (got[i] !== want[i]) return i;
  return n;
}

/** The bytes `first`..`last` (inclusive, last clipped to the body) a request's Range asked for. */
export interface AskedRange {
  first: number;
  last: number;
}

/** The part of `full` a 206 says it carries, or a reason it cannot be trusted: it must be the range asked for. */
function partOf(full: Buffer, contentRange: string | undefined, asked: AskedRange | undefined): Buffer | string {
  const match = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(contentRange ?? '');
  if (!match) return `206 with Content-Range ${JSON.stringify(contentRange)}`;
  const [first, last, total] = [Number(match[1]), Number(match[2]), Number(match[3])];
  if (total !== full.length) return `Content-Range total ${total}, the version's body has ${full.length}`;
  if (last < first || last >= total) return `Content-Range ${contentRange} out of bounds`;
  if (asked === undefined) return `206 to a request without Range (${contentRange})`;
  if (first !== asked.first || last !== Math.min(asked.last, total - 1)) return `Content-Range ${contentRange} for bytes=${asked.first}-${asked.last}`;
  return full.subarray(first, last + 1);
}

/**
 * A 416 to a range that starts at or past the end of a version's body is right, for the version
 * the cache holds (which may be older than the current one): its Content-Range names as complete
 * length that of one of versions 1..current, no more than the first byte asked for.
 */
export function rightlyUnsatisfiable(key: number, contentRange: string | undefined, asked: AskedRange, current: number): boolean {
  const total = Number(/^bytes \*\/(\d+)$/.exec(contentRange ?? '')?.[1] ?? NaN);
  if (!(total <= asked.first)) return false;
  for (let version = 1; version <= current; version++) if (bodySize(key, version) === total) return true;
  return false;
}

export async function readAndCheck(key: number, status: number, headers: Headers, body: AsyncIterable<Buffer>, asked: AskedRange | undefined): Promise<Checked> {
  const version = Number(one(headers['x-version']));
  const result: Checked = { kind: 'ok', version, bytes: 0, expectedBytes: 0, reason: '', firstDiff: -1, diffHex: '', head: Buffer.alloc(0), inconsistent: '' };
  let expected: Buffer | undefined;
  if (!Number.isInteger(version) || version < 1) result.reason = `x-version ${JSON.stringify(one(headers['x-version']))}`;
  else {
    const full = expectedBody(key, version);
    const part = status === 206 ? partOf(full, one(headers['content-range']), asked) : full;
    if (typeof part === 'string') result.reason = part;
    else expected = part;
  }
  result.expectedBytes = expected?.length ?? 0;
  const headParts: Buffer[] = [];
  let headBytes = 0;
  let crc = 0;
  try {
    for await (const chunk of body) {
      if (headBytes < 64) {
        headParts.push(chunk.subarray(0, 64 - headBytes));
        headBytes += Math.min(chunk.length, 64 - headBytes);
      }
      if (expected && result.firstDiff === -1) {
        const want = expected.subarray(result.bytes, result.bytes + chunk.length);
        if (want.length !== chunk.length || !chunk.equals(want)) {
          const at = firstDifference(chunk, want);
          result.firstDiff = result.bytes + at;
          result.diffHex = `got ${chunk.subarray(at, at + 16).toString('hex') || '(end)'} want ${want.subarray(at, at + 16).toString('hex') || '(end)'}`;
        }
      }
      crc = crc32(chunk, crc);
      result.bytes += chunk.length;
    }
  } catch (error) {
    result.head = Buffer.concat(headParts);
    // Bytes already wrong before the cut still make a wrong body.
    if (result.firstDiff !== -1) return { ...result, kind: 'wrong', reason: `bytes differ at ${result.firstDiff}, then cut (${errorCause(error)})` };
    return { ...result, kind: 'cut', reason: errorCause(error) };
  }
  result.head = Buffer.concat(headParts);
  if (!expected) return { ...result, kind: 'wrong' };
  if (result.firstDiff === expected.length) return { ...result, kind: 'wrong', reason: `complete with ${result.bytes} bytes of ${expected.length}` };
  if (result.firstDiff !== -1) return { ...result, kind: 'wrong', reason: `bytes differ at ${result.firstDiff} of ${expected.length}` };
  if (result.bytes !== expected.length) return { ...result, kind: 'wrong', firstDiff: result.bytes, reason: `complete with ${result.bytes} bytes of ${expected.length}` };
  const etag = one(headers.etag);
  if (etag !== etagOf(key, version)) result.inconsistent = `ETag ${etag} with x-version ${version}`;
  const sum = one(headers['x-checksum']);
  if (status === 200 && sum !== crc.toString(16).padStart(8, '0')) result.inconsistent += `${result.inconsistent ? '; ' : ''}x-checksum ${sum}, body ${checksumOf(expected)}`;
  return result;
}

/** A short name for what made a request fail. */
export function errorCause(error: unknown): string {
  const e = error as { code?: string; name?: string; message?: string; cause?: { code?: string } };
  const code = e.code ?? e.cause?.code ?? e.name ?? 'error';
  return code === 'UND_ERR_SOCKET' || code === 'ECONNRESET' ? `${code} (${(e.message ?? '').slice(0, 40)})` : code;
}
