/**
 * Byte ranges (RFC 9110 §14): which ranges of a representation a request asks for (Range and
 * If-Range, §14.2, §13.1.5), the Content-Range of an upstream 206 (§14.4), and the
 * multipart/byteranges framing of a response with several parts (§14.6).
 */
import { randomBytes } from 'node:crypto';
import { parseHttpDate } from './http-date.js';

/** Inclusive byte positions. */
export interface ByteRange {
  start: number;
  end: number;
}

export type RangeAnswer =
  | { kind: 'full' }
  | { kind: 'partial'; ranges: ByteRange[] }
  | { kind: 'unsatisfiable' };

/** Range specs read from one request; more is refused (answered in full), as nginx's max_ranges does. */
const MAX_SPECS = 64;
/** Parts of one multipart response after coalescing. */
const MAX_PARTS = 16;
/** Ranges closer than this are sent as one part: a part header costs about this much (§14.6 lets a server coalesce). */
const COALESCE_GAP = 80;

/**
 * The ranges of a representation of `size` bytes a request asks for. Anything this cache does not
 * serve as ranges (other units, syntax errors, too many ranges, an If-Range that does not match)
 * gets the full response, which §14.2 permits (a server MAY ignore Range). Unsatisfiable specs are
 * dropped; none left is a 416 (§15.5.17). Overlapping or nearly adjacent ranges are coalesced;
 * otherwise the parts keep the order they were asked in (§14.6).
 */
export function selectRanges(
  range: string | undefined,
  ifRange: string | undefined,
  size: number,
  etag: string | undefined,
  lastModified: string | undefined,
): RangeAnswer {
  if (range === undefined) return { kind: 'full' };
  if (ifRange !== undefined && !ifRangeMatches(ifRange, etag, lastModified)) return { kind: 'full' };
  const specs = rangeSpecs(range);
  if (specs === undefined) return { kind: 'full' };
  const ranges: ByteRange[] = [];
  for (const { first, last } of specs) {
    if (first === undefined) {
      // Suffix range: the last N bytes. §14.1.2: on an empty representation only a suffix range
      // is satisfiable, and there is no 206 for zero bytes (§14.4): the empty 200 it is.
      if (last! > 0 && size === 0) return { kind: 'full' };
      if (last! > 0) ranges.push({ start: Math.max(0, size - last!), end: size - 1 });
    } else if (first < size) ranges.push({ start: first, end: last === undefined ? size - 1 : Math.min(last, size - 1) });
  }
  if (ranges.length === 0) return { kind: 'unsatisfiable' };
  const parts = coalesce(ranges);
  if (parts.length > MAX_PARTS) return { kind: 'full' };
  return { kind: 'partial', ranges: parts };
}

/** Ranges that overlap or nearly touch, merged (then in ascending order); otherwise as asked. */
function coalesce(ranges: ByteRange[]): ByteRange[] {
  if (ranges.length === 1) return ranges;
  const sorted = [...ranges].sort((a, b) => a.start - b.start);
  const merged: ByteRange[] = [{ ...sorted[0]! }];
  for (const r of sorted.slice(1)) {
    const last = merged[merged.length - 1]!;
    if (r.start <= last.end + COALESCE_GAP) last.end = Math.max(last.end, r.end);
    else merged.push({ ...r });
  }
  return merged.length === ranges.length ? ranges : merged;
}

/** If-Range (§13.1.5): a strong ETag match, or an exact Last-Modified date. */
function ifRangeMatches(ifRange: string, etag: string | undefined, lastModified: string | undefined): boolean {
  const value = ifRange.trim();
  if (value.startsWith('"') || value.startsWith('W/')) {
    return etag !== undefined && !value.startsWith('W/') && !etag.startsWith('W/') && value === etag.trim();
  }
  return lastModified !== undefined && parseHttpDate(value) === parseHttpDate(lastModified) && parseHttpDate(value) !== undefined;
}

/** A Content-Range of a single part (§14.4): `bytes first-last/complete`; complete is undefined for `*`. */
export function parseContentRange(value: string | undefined): (ByteRange & { total: number | undefined }) | undefined {
  if (value === undefined) return undefined;
  const match = /^\s*bytes\s+(\d+)-(\d+)\/(\d+|\*)\s*$/i.exec(value);
  if (!match) return undefined;
  const start = Number(match[1]);
  const end = Number(match[2]);
  const total = match[3] === '*' ? undefined : Number(match[3]);
  if (end < start || (total !== undefined && end >= total)) return undefined;
  return { start, end, total };
}

/** A multipart/byteranges body (§14.6): each part's header, the range it carries, and the closing line. */
export interface MultipartPlan {
  contentType: string;
  parts: Array<{ head: Buffer; range: ByteRange }>;
  tail: Buffer;
  /** Content-Length of the whole body. */
  length: number;
}

export function multipartPlan(ranges: readonly ByteRange[], size: number, partContentType: string | undefined): MultipartPlan {
  const boundary = randomBytes(12).toString('hex');
  const type = partContentType === undefined ? '' : `content-type: ${partContentType}\r\n`;
  let length = 0;
  const parts = ranges.map((range, i) => {
    // The CRLF before each boundary belongs to the delimiter (RFC 2046 §5.1.1); none before the first.
    const head = Buffer.from(`${i === 0 ? '' : '\r\n'}--${boundary}\r\n${type}content-range: bytes ${range.start}-${range.end}/${size}\r\n\r\n`, 'latin1');
    length += head.length + range.end - range.start + 1;
    return { head, range };
  });
  const tail = Buffer.from(`\r\n--${boundary}--\r\n`, 'latin1');
  length += tail.length;
  return { contentType: `multipart/byteranges; boundary=${boundary}`, parts, tail, length };
}

/**
 * The first byte a request's Range asks for, to know which slice to look at first (slices.ts): 0
 * when any spec counts from the end, when If-Range may turn it into a full request, or when the
 * value is one `selectRanges` would ignore.
 */
export function firstRequestedByte(range: string | undefined, ifRange: string | undefined): number {
  const specs = range === undefined || ifRange !== undefined ? undefined : rangeSpecs(range);
  if (specs === undefined || specs.some((spec) => spec.first === undefined)) return 0;
  return Math.min(...specs.map((spec) => spec.first!));
}

/**
 * The specs of a `bytes=` Range value (§14.1.1): `first` undefined for a suffix range, `last`
 * undefined for an open one. Undefined for a value this cache answers in full: another unit, a
 * syntax error, last before first, no spec at all, or more than MAX_SPECS. Empty list elements are
 * allowed (§5.6.1).
 */
function rangeSpecs(range: string): Array<{ first: number | undefined; last: number | undefined }> | undefined {
  const unit = /^\s*bytes\s*=/i.exec(range);
  if (!unit) return undefined;
  const texts = range.slice(unit[0].length).split(',');
  if (texts.length > MAX_SPECS) return undefined;
  const specs: Array<{ first: number | undefined; last: number | undefined }> = [];
  for (const text of texts) {
    const spec = text.trim();
    if (spec === '') continue;
    const match = /^(\d*)\s*-\s*(\d*)$/.exec(spec);
    if (!match || (match[1] === '' && match[2] === '')) return undefined;
    const first = match[1] === '' ? undefined : Number(match[1]);
    const last = match[2] === '' ? undefined : Number(match[2]);
    if (first !== undefined && last !== undefined && last < first) return undefined;
    specs.push({ first, last });
  }
  return specs.length > 0 ? specs : undefined;
}
