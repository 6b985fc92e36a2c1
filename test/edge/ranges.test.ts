/**
 * RFC 9110 §14 byte ranges as the pure functions of pipeline/ranges.ts and pipeline/slices.ts see
 * them: which ranges a request gets (Range, If-Range), an upstream's Content-Range, the
 * multipart/byteranges framing, and what an upstream answer to a slice request is.
 */
import { Readable } from 'node:stream';
import test from 'ava';
import { firstRequestedByte, multipartPlan, parseContentRange, selectRanges, type ByteRange } from '../../pipeline/ranges.js';
import { sliceAnswer, sliceOf, sliceRangeHeader, validatorOf } from '../../pipeline/slices.js';
import type { HeaderMap, UpstreamResponse } from '../../pipeline/upstream.js';

const SIZE = 1000;
const NOV_6_1994 = 'Sun, 06 Nov 1994 08:49:37 GMT';
const NOV_6_1994_MS = Date.UTC(1994, 10, 6, 8, 49, 37);
const ONE_SECOND_LATER = 'Sun, 06 Nov 1994 08:49:38 GMT';

/** selectRanges without If-Range or validators. */
const select = (range: string | undefined, size = SIZE) => selectRanges(range, undefined, size, undefined, undefined);
const partial = (...ranges: ByteRange[]) => ({ kind: 'partial', ranges });
const FULL = { kind: 'full' };
const UNSATISFIABLE = { kind: 'unsatisfiable' };

// ── selectRanges: single ranges ─────────────────────────────────────────────

test('RFC 9110 §14.2 no Range header field: the full representation', (t) => {
  t.deepEqual(select(undefined), FULL);
});

test('RFC 9110 §14.1.2 an int-range first-last selects exactly those bytes, inclusive', (t) => {
  t.deepEqual(select('bytes=0-499'), partial({ start: 0, end: 499 }));
  t.deepEqual(select('bytes=500-999'), partial({ start: 500, end: 999 }));
  t.deepEqual(select('bytes=0-0'), partial({ start: 0, end: 0 }));
  t.deepEqual(select('bytes=999-999'), partial({ start: 999, end: 999 }));
});

test('RFC 9110 §14.1.2 an open-ended int-range runs to the last byte', (t) => {
  t.deepEqual(select('bytes=900-'), partial({ start: 900, end: 999 }));
  t.deepEqual(select('bytes=0-'), partial({ start: 0, end: 999 }));
});

test('RFC 9110 §14.1.2 a suffix range selects the last N bytes, the whole representation when N exceeds it', (t) => {
  t.deepEqual(select('bytes=-100'), partial({ start: 900, end: 999 }));
  t.deepEqual(select('bytes=-1'), partial({ start: 999, end: 999 }));
  t.deepEqual(select('bytes=-1000'), partial({ start: 0, end: 999 }));
  t.deepEqual(select('bytes=-5000'), partial({ start: 0, end: 999 }));
});

test('RFC 9110 §14.1.2 a last-pos at or beyond the length is clipped to the last byte', (t) => {
  t.deepEqual(select('bytes=990-5000'), partial({ start: 990, end: 999 }));
  t.deepEqual(select('bytes=990-1000'), partial({ start: 990, end: 999 }));
});

test('RFC 9110 §14.1 range unit names are case-insensitive', (t) => {
  t.deepEqual(select('BYTES=0-9'), partial({ start: 0, end: 9 }));
  t.deepEqual(select('Bytes=0-9'), partial({ start: 0, end: 9 }));
});

// ── selectRanges: what is answered in full ─────────────────────────────────

for (const range of ['bytes=abc', 'bytes=1-2-3', 'bytes=-', 'bytes=0-1,x', 'bytes 0-9', 'bytes=0-9;', 'bytes=+1-2', 'bytes=0x1-2', 'bytes=', 'bytes=,', 'bytes= , ,']) {
  test(`RFC 9110 §14.2 an invalid ranges-specifier ${JSON.stringify(range)} is ignored: the full representation`, (t) => {
    t.deepEqual(select(range), FULL);
  });
}

test('RFC 9110 §14.2 a range unit other than bytes is ignored: the full representation', (t) => {
  t.deepEqual(select('items=0-5'), FULL);
  t.deepEqual(select('bits=0-5'), FULL);
  t.deepEqual(select('none'), FULL);
});

test('RFC 9110 §14.1.1 a range-spec whose last-pos is less than its first-pos is invalid: the full representation', (t) => {
  t.deepEqual(select('bytes=500-100'), FULL);
  t.deepEqual(select('bytes=0-9,500-100'), FULL);
  t.deepEqual(select('bytes=1-0'), FULL);
});

// ── selectRanges: satisfiability ───────────────────────────────────────────

test('RFC 9110 §14.1.1 unsatisfiable range-specs are dropped and the satisfiable ones kept', (t) => {
  t.deepEqual(select('bytes=2000-3000,0-9'), partial({ start: 0, end: 9 }));
  t.deepEqual(select('bytes=1000-,0-9'), partial({ start: 0, end: 9 }));
  t.deepEqual(select('bytes=-0,0-9'), partial({ start: 0, end: 9 }));
});

test('RFC 9110 §15.5.17 when no range-spec is satisfiable the answer is unsatisfiable (416)', (t) => {
  t.deepEqual(select('bytes=1000-'), UNSATISFIABLE);
  t.deepEqual(select('bytes=1000-1000'), UNSATISFIABLE);
  t.deepEqual(select('bytes=2000-3000,5000-'), UNSATISFIABLE);
  t.deepEqual(select('bytes=-0'), UNSATISFIABLE);
});

test('RFC 9110 §14.1.2 on an empty representation an int-range is unsatisfiable', (t) => {
  t.deepEqual(select('bytes=0-', 0), UNSATISFIABLE);
  t.deepEqual(select('bytes=0-0', 0), UNSATISFIABLE);
  t.deepEqual(select('bytes=-0', 0), UNSATISFIABLE);
});

test('RFC 9110 §14.1.2 on an empty representation a suffix range with a non-zero length is satisfiable: not a 416 but the (empty) full representation', (t) => {
  // §14.1.2: "When a selected representation has zero length, the only satisfiable form of
  // range-spec in a GET request is a suffix-range with a non-zero suffix-length." A 206 cannot
  // describe zero bytes (§14.4), and §14.2 lets a server ignore Range on an empty representation.
  t.deepEqual(select('bytes=-5', 0), FULL);
  t.deepEqual(select('bytes=-1', 0), FULL);
});

test('RFC 9110 §5.6.1 empty list elements in the range-set are ignored', (t) => {
  t.deepEqual(select('bytes=,0-9'), partial({ start: 0, end: 9 }));
  t.deepEqual(select('bytes=0-9,,'), partial({ start: 0, end: 9 }));
  t.deepEqual(select('bytes= , 0-9 ,'), partial({ start: 0, end: 9 }));
  t.deepEqual(select('bytes=0-9, ,500-509'), partial({ start: 0, end: 9 }, { start: 500, end: 509 }));
});

// ── selectRanges: many ranges ──────────────────────────────────────────────

test('RFC 9110 §14.2 more than 64 range-specs are refused: the full representation (64 is still served)', (t) => {
  t.deepEqual(select(`bytes=${Array(64).fill('0-0').join(',')}`), partial({ start: 0, end: 0 }));
  t.deepEqual(select(`bytes=${Array(65).fill('0-0').join(',')}`), FULL);
});

test('RFC 9110 §14.2 more than 16 parts left after coalescing: the full representation (16 is still served)', (t) => {
  const spaced = (n: number): ByteRange[] => Array.from({ length: n }, (_, i) => ({ start: i * 100, end: i * 100 + 9 }));
  const header = (ranges: ByteRange[]): string => `bytes=${ranges.map((r) => `${r.start}-${r.end}`).join(',')}`;
  t.deepEqual(select(header(spaced(16)), 10_000), { kind: 'partial', ranges: spaced(16) });
  t.deepEqual(select(header(spaced(17)), 10_000), FULL);
  // 40 specs that coalesce into 2 parts are served.
  const many = [...Array(20).fill('0-9'), ...Array(20).fill('5000-5009')].join(',');
  t.deepEqual(select(`bytes=${many}`, 10_000), partial({ start: 0, end: 9 }, { start: 5000, end: 5009 }));
});

test('RFC 9110 §14.6 overlapping ranges are coalesced, and the parts then come in ascending order', (t) => {
  t.deepEqual(select('bytes=500-599,0-99,50-149'), partial({ start: 0, end: 149 }, { start: 500, end: 599 }));
  t.deepEqual(select('bytes=0-999,100-199'), partial({ start: 0, end: 999 }));
  t.deepEqual(select('bytes=100-199,0-999'), partial({ start: 0, end: 999 }));
  t.deepEqual(select('bytes=-100,850-949'), partial({ start: 850, end: 999 }));
});

test('RFC 9110 §14.6 ranges separated by a gap smaller than a part header are coalesced', (t) => {
  // A gap of 79 bytes (10..88) is merged; one of 80 bytes (10..89) is not.
  t.deepEqual(select('bytes=0-9,89-99'), partial({ start: 0, end: 99 }));
  t.deepEqual(select('bytes=0-9,90-99'), partial({ start: 0, end: 9 }, { start: 90, end: 99 }));
  t.deepEqual(select('bytes=0-9,10-19'), partial({ start: 0, end: 19 }));
  t.deepEqual(select('bytes=500-509,0-9,589-599'), partial({ start: 0, end: 9 }, { start: 500, end: 599 }));
});

test('RFC 9110 §14.6 ranges that are not coalesced keep the order they were asked in', (t) => {
  t.deepEqual(select('bytes=500-599,0-99'), partial({ start: 500, end: 599 }, { start: 0, end: 99 }));
  t.deepEqual(select('bytes=900-,0-9,400-409'), partial({ start: 900, end: 999 }, { start: 0, end: 9 }, { start: 400, end: 409 }));
});

// ── selectRanges: If-Range ──────────────────────────────────────────────────

test('RFC 9110 §13.1.5 If-Range with an entity-tag that strongly matches: the range is served', (t) => {
  t.deepEqual(selectRanges('bytes=0-9', '"abc"', SIZE, '"abc"', undefined), partial({ start: 0, end: 9 }));
  t.deepEqual(selectRanges('bytes=0-9', ' "abc" ', SIZE, '"abc"', NOV_6_1994), partial({ start: 0, end: 9 }));
});

test('RFC 9110 §13.1.5 If-Range with another entity-tag, or none stored: the full representation', (t) => {
  t.deepEqual(selectRanges('bytes=0-9', '"xyz"', SIZE, '"abc"', undefined), FULL);
  t.deepEqual(selectRanges('bytes=0-9', '"abc"', SIZE, undefined, NOV_6_1994), FULL);
});

test('RFC 9110 §13.1.5 If-Range with a weak entity-tag never matches (strong comparison)', (t) => {
  t.deepEqual(selectRanges('bytes=0-9', 'W/"abc"', SIZE, 'W/"abc"', undefined), FULL);
  t.deepEqual(selectRanges('bytes=0-9', '"abc"', SIZE, 'W/"abc"', undefined), FULL);
  t.deepEqual(selectRanges('bytes=0-9', 'W/"abc"', SIZE, '"abc"', undefined), FULL);
});

test('RFC 9110 §13.1.5 If-Range with an HTTP-date equal to Last-Modified: the range is served', (t) => {
  t.deepEqual(selectRanges('bytes=0-9', NOV_6_1994, SIZE, undefined, NOV_6_1994), partial({ start: 0, end: 9 }));
  t.deepEqual(selectRanges('bytes=0-9', NOV_6_1994, SIZE, '"abc"', NOV_6_1994), partial({ start: 0, end: 9 }));
});

test('RFC 9110 §13.1.5 If-Range with another date, no Last-Modified, or no valid date: the full representation', (t) => {
  t.deepEqual(selectRanges('bytes=0-9', ONE_SECOND_LATER, SIZE, undefined, NOV_6_1994), FULL);
  t.deepEqual(selectRanges('bytes=0-9', NOV_6_1994, SIZE, undefined, undefined), FULL);
  t.deepEqual(selectRanges('bytes=0-9', 'not a date', SIZE, undefined, 'not a date either'), FULL);
});

test('RFC 9110 §13.1.5 If-Range without a Range header field changes nothing', (t) => {
  t.deepEqual(selectRanges(undefined, '"abc"', SIZE, '"abc"', undefined), FULL);
});

// ── parseContentRange ───────────────────────────────────────────────────────

test('RFC 9110 §14.4 Content-Range bytes first-last/complete-length', (t) => {
  t.deepEqual(parseContentRange('bytes 0-499/1000'), { start: 0, end: 499, total: 1000 });
  t.deepEqual(parseContentRange('bytes 999-999/1000'), { start: 999, end: 999, total: 1000 });
  t.deepEqual(parseContentRange('bytes 0-0/1'), { start: 0, end: 0, total: 1 });
  t.deepEqual(parseContentRange('  Bytes 100-199/8388608 '), { start: 100, end: 199, total: 8388608 });
});

test('RFC 9110 §14.4 Content-Range with an unknown complete length (*) has no total', (t) => {
  t.deepEqual(parseContentRange('bytes 0-499/*'), { start: 0, end: 499, total: undefined });
  t.deepEqual(parseContentRange('bytes 500-500/*'), { start: 500, end: 500, total: undefined });
});

test('RFC 9110 §14.4 Content-Range whose last-pos is before its first-pos, or not below the complete length, is invalid', (t) => {
  t.is(parseContentRange('bytes 500-499/1000'), undefined);
  t.is(parseContentRange('bytes 500-499/*'), undefined);
  t.is(parseContentRange('bytes 0-1000/1000'), undefined);
  t.is(parseContentRange('bytes 0-5000/1000'), undefined);
  t.is(parseContentRange('bytes 0-0/0'), undefined);
});

for (const value of [undefined, '', 'garbage', 'bytes */1000', 'bytes=0-9/10', 'items 0-9/10', 'bytes 0-9', 'bytes -1-9/10', 'bytes 0-9/10 extra', 'bytes 0-9/10, bytes 10-19/20', 'bytes 0 - 9/10', 'bytes0-9/10']) {
  test(`RFC 9110 §14.4 ${JSON.stringify(value)} is not a single-part Content-Range`, (t) => {
    t.is(parseContentRange(value), undefined);
  });
}

// ── multipartPlan ───────────────────────────────────────────────────────────

const BOUNDARY = /^multipart\/byteranges; boundary=([0-9a-f]{24})$/;

test('RFC 9110 §14.6 multipart/byteranges: the boundary is in the content type, each part has its head, the first with no leading CRLF', (t) => {
  const ranges = [{ start: 0, end: 9 }, { start: 20, end: 29 }, { start: 900, end: 999 }];
  const plan = multipartPlan(ranges, SIZE, 'text/plain');
  const boundary = BOUNDARY.exec(plan.contentType)?.[1];
  if (boundary === undefined) return t.fail(`no boundary in ${plan.contentType}`);
  t.is(plan.parts.length, 3);
  t.is(plan.parts[0]!.head.toString('latin1'), `--${boundary}\r\ncontent-type: text/plain\r\ncontent-range: bytes 0-9/1000\r\n\r\n`);
  t.is(plan.parts[1]!.head.toString('latin1'), `\r\n--${boundary}\r\ncontent-type: text/plain\r\ncontent-range: bytes 20-29/1000\r\n\r\n`);
  t.is(plan.parts[2]!.head.toString('latin1'), `\r\n--${boundary}\r\ncontent-type: text/plain\r\ncontent-range: bytes 900-999/1000\r\n\r\n`);
  t.deepEqual(plan.parts.map((p) => p.range), ranges);
  t.is(plan.tail.toString('latin1'), `\r\n--${boundary}--\r\n`);
});

test('RFC 9110 §14.6 multipart/byteranges: the length is the byte length of the heads, the ranges and the closing delimiter', (t) => {
  const representation = Buffer.alloc(SIZE, 'x');
  const ranges = [{ start: 0, end: 9 }, { start: 500, end: 599 }];
  const plan = multipartPlan(ranges, SIZE, 'application/octet-stream');
  const body = Buffer.concat([...plan.parts.flatMap((p) => [p.head, representation.subarray(p.range.start, p.range.end + 1)]), plan.tail]);
  t.is(plan.length, body.length);
  // 2 + 24 + 2, "content-type: application/octet-stream\r\n" = 40, "content-range: bytes 0-9/1000\r\n" = 31, 2
  //   → 101 for the first head; the second adds a CRLF and 4 more digits → 107; the tail is 2 + 2 + 24 + 2 + 2 = 32.
  t.is(plan.length, 101 + 10 + 107 + 100 + 32);
});

test('RFC 9110 §14.6 multipart/byteranges: no content-type line in a part when the representation has none', (t) => {
  const plan = multipartPlan([{ start: 0, end: 9 }, { start: 500, end: 599 }], SIZE, undefined);
  const boundary = BOUNDARY.exec(plan.contentType)?.[1];
  if (boundary === undefined) return t.fail(`no boundary in ${plan.contentType}`);
  t.is(plan.parts[0]!.head.toString('latin1'), `--${boundary}\r\ncontent-range: bytes 0-9/1000\r\n\r\n`);
  t.is(plan.parts[1]!.head.toString('latin1'), `\r\n--${boundary}\r\ncontent-range: bytes 500-599/1000\r\n\r\n`);
  const lengths = plan.parts.reduce((n, p) => n + p.head.length + p.range.end - p.range.start + 1, 0) + plan.tail.length;
  t.is(plan.length, lengths);
  t.is(plan.length, 61 + 10 + 67 + 100 + 32);
});

test('RFC 9110 §14.6 multipart/byteranges: each response gets its own boundary', (t) => {
  const a = multipartPlan([{ start: 0, end: 0 }, { start: 500, end: 500 }], SIZE, undefined);
  const b = multipartPlan([{ start: 0, end: 0 }, { start: 500, end: 500 }], SIZE, undefined);
  t.regex(a.contentType, BOUNDARY);
  t.not(a.contentType, b.contentType);
});

// ── firstRequestedByte ──────────────────────────────────────────────────────

test('RFC 9110 §14.2 first requested byte: 0 without a Range header field', (t) => {
  t.is(firstRequestedByte(undefined, undefined), 0);
});

test('RFC 9110 §14.1.2 first requested byte: 0 when any range-spec is a suffix range', (t) => {
  t.is(firstRequestedByte('bytes=-100', undefined), 0);
  t.is(firstRequestedByte('bytes=500-599,-10', undefined), 0);
  t.is(firstRequestedByte('bytes=500-599, -10', undefined), 0);
});

test('RFC 9110 §14.1.2 first requested byte: the smallest first-pos of the int-ranges', (t) => {
  t.is(firstRequestedByte('bytes=500-599', undefined), 500);
  t.is(firstRequestedByte('bytes=700-,200-299,400-', undefined), 200);
  t.is(firstRequestedByte('bytes=,300-', undefined), 300);
  t.is(firstRequestedByte(' BYTES = 300-400', undefined), 300);
  t.is(firstRequestedByte('bytes=16777216-', undefined), 16777216);
});

test('RFC 9110 §13.1.5 first requested byte: 0 with If-Range (a failed match asks for the whole representation)', (t) => {
  t.is(firstRequestedByte('bytes=500-599', '"v1"'), 0);
});

test('RFC 9110 §14.1.1 first requested byte: 0 when a range-spec is invalid (selectRanges ignores the whole field)', (t) => {
  t.is(firstRequestedByte('bytes=100000000-5', undefined), 0);
  t.is(firstRequestedByte('bytes=500-599,x', undefined), 0);
});

test('RFC 9110 §14.2 first requested byte: 0 for a value that is not a bytes ranges-specifier', (t) => {
  t.is(firstRequestedByte('bytes=abc', undefined), 0);
  t.is(firstRequestedByte('items=500-', undefined), 0);
  t.is(firstRequestedByte('bytes=', undefined), 0);
  t.is(firstRequestedByte('garbage', undefined), 0);
});

// ── sliceRangeHeader / sliceOf ──────────────────────────────────────────────

test('RFC 9110 §14.1.2 the Range a slice is fetched with is the int-range of its bytes', (t) => {
  t.is(sliceRangeHeader(0, 100), 'bytes=0-99');
  t.is(sliceRangeHeader(3, 100), 'bytes=300-399');
  t.is(sliceRangeHeader(0, 8388608), 'bytes=0-8388607');
  t.is(sliceRangeHeader(3, 8388608), 'bytes=25165824-33554431');
});

test('RFC 9110 §14.1.2 the slice holding a byte position', (t) => {
  t.is(sliceOf(0, 100), 0);
  t.is(sliceOf(99, 100), 0);
  t.is(sliceOf(100, 100), 1);
  t.is(sliceOf(8388608 * 2 + 5, 8388608), 2);
});

// ── sliceAnswer ─────────────────────────────────────────────────────────────

const SLICE = 100;

function upstream(statusCode: number, headers: HeaderMap): UpstreamResponse {
  return { statusCode, headers, body: Readable.from([]), member: 'origin' };
}

test('RFC 9110 §15.5.17 a 416 to the first slice (an empty body): unsliceable, fetched without a range', (t) => {
  t.deepEqual(sliceAnswer(upstream(416, { 'content-range': 'bytes */0' }), 0, SLICE), { kind: 'unsliceable' });
});

test('RFC 9110 §15.5.17 a 416 to a later slice answers the range, not the URL', (t) => {
  t.deepEqual(sliceAnswer(upstream(416, { 'content-range': 'bytes */150' }), 2, SLICE), { kind: 'not-for-the-url' });
  t.deepEqual(sliceAnswer(upstream(416, {}), 1, SLICE), { kind: 'not-for-the-url' });
});

test('RFC 9110 §14.2 a 200 (the origin ignored Range) or any other status is the URL’s own response', (t) => {
  t.deepEqual(sliceAnswer(upstream(200, { 'content-length': '1000', etag: '"abc"' }), 0, SLICE), { kind: 'other' });
  t.deepEqual(sliceAnswer(upstream(304, {}), 0, SLICE), { kind: 'other' });
  t.deepEqual(sliceAnswer(upstream(404, {}), 3, SLICE), { kind: 'other' });
});

test('RFC 9110 §14.4 a 206 whose Content-Range is not the slice asked for is a mismatch', (t) => {
  t.deepEqual(sliceAnswer(upstream(206, { 'content-range': 'bytes 0-99/1000', etag: '"abc"' }), 1, SLICE), {
    kind: 'mismatch',
    message: 'asked for bytes 100-199, the upstream sent bytes 0-99/1000',
  });
  t.deepEqual(sliceAnswer(upstream(206, { 'content-range': 'bytes 100-149/1000', etag: '"abc"' }), 1, SLICE), {
    kind: 'mismatch',
    message: 'asked for bytes 100-199, the upstream sent bytes 100-149/1000',
  });
  t.deepEqual(sliceAnswer(upstream(206, { 'content-range': 'bytes 100-199/*', etag: '"abc"' }), 1, SLICE), {
    kind: 'mismatch',
    message: 'asked for bytes 100-199, the upstream sent bytes 100-199/*',
  });
  t.deepEqual(sliceAnswer(upstream(206, { 'content-type': 'multipart/byteranges; boundary=x', etag: '"abc"' }), 1, SLICE), {
    kind: 'mismatch',
    message: 'asked for bytes 100-199, the upstream sent no Content-Range',
  });
});

test('RFC 9110 §15.3.7 a first slice other than asked for (shorter, or of unknown total) is unsliceable: the body is fetched whole', (t) => {
  t.deepEqual(sliceAnswer(upstream(206, { 'content-range': 'bytes 0-49/1000', etag: '"abc"' }), 0, SLICE), { kind: 'unsliceable' });
  t.deepEqual(sliceAnswer(upstream(206, { 'content-range': 'bytes 0-99/*', etag: '"abc"' }), 0, SLICE), { kind: 'unsliceable' });
  t.deepEqual(sliceAnswer(upstream(206, { 'content-range': 'bytes 0-99/1000', 'content-length': '50', etag: '"abc"' }), 0, SLICE), { kind: 'unsliceable' });
});

test('RFC 9110 §8.6 a 206 whose Content-Length disagrees with its Content-Range is a mismatch', (t) => {
  t.deepEqual(sliceAnswer(upstream(206, { 'content-range': 'bytes 100-199/1000', 'content-length': '50', etag: '"abc"' }), 1, SLICE), {
    kind: 'mismatch',
    message: 'Content-Length 50 for a 100-byte range',
  });
});

test('RFC 9110 §15.3.7 a 206 holding the whole body is an ordinary 200: no Content-Range, Content-Length set', (t) => {
  const response = upstream(206, { 'content-range': 'bytes 0-49/50', etag: 'W/"weak"', 'content-type': 'text/plain' });
  const answer = sliceAnswer(response, 0, SLICE);
  if (answer.kind !== 'whole') return t.fail(`expected whole, got ${JSON.stringify(answer)}`);
  t.is(answer.response.statusCode, 200);
  t.deepEqual(answer.response.headers, { etag: 'W/"weak"', 'content-type': 'text/plain', 'content-length': '50' });
  t.false('content-range' in answer.response.headers);
  t.is(answer.response.body, response.body);
  t.is(answer.response.member, 'origin');
});

test('RFC 9110 §15.3.7 a 206 holding the whole body of exactly one slice is whole too', (t) => {
  const answer = sliceAnswer(upstream(206, { 'content-range': 'bytes 0-99/100', 'content-length': '100' }), 0, SLICE);
  if (answer.kind !== 'whole') return t.fail(`expected whole, got ${JSON.stringify(answer)}`);
  t.is(answer.response.statusCode, 200);
  t.deepEqual(answer.response.headers, { 'content-length': '100' });
});

test('RFC 9110 §8.8.1 a partial 206 with only a weak ETag and no Last-Modified is unsliceable', (t) => {
  t.deepEqual(sliceAnswer(upstream(206, { 'content-range': 'bytes 0-99/1000', etag: 'W/"weak"' }), 0, SLICE), { kind: 'unsliceable' });
  t.deepEqual(sliceAnswer(upstream(206, { 'content-range': 'bytes 0-99/1000' }), 0, SLICE), { kind: 'unsliceable' });
});

test('RFC 9110 §8.8.2.2 a partial 206 with a weak ETag but a Last-Modified too close to its Date is unsliceable', (t) => {
  const headers = { 'content-range': 'bytes 0-99/1000', etag: 'W/"weak"', 'last-modified': NOV_6_1994, date: NOV_6_1994 };
  t.deepEqual(sliceAnswer(upstream(206, headers), 0, SLICE), { kind: 'unsliceable' });
});

test('RFC 9110 §8.8.1 a partial 206 with a strong ETag is a slice of the complete length', (t) => {
  const response = upstream(206, { 'content-range': 'bytes 100-199/1000', etag: '"abc"' });
  t.deepEqual(sliceAnswer(response, 1, SLICE), { kind: 'slice', total: 1000 });
  t.is(response.headers['content-length'], '100');
  t.is(response.headers['content-range'], 'bytes 100-199/1000');
});

test('RFC 9110 §8.8.2.2 a partial 206 with a strong Last-Modified (a second before Date) is a slice', (t) => {
  const headers = { 'content-range': 'bytes 0-99/1000', 'content-length': '100', 'last-modified': NOV_6_1994, date: ONE_SECOND_LATER };
  t.deepEqual(sliceAnswer(upstream(206, headers), 0, SLICE), { kind: 'slice', total: 1000 });
});

test('RFC 9110 §14.4 the last slice is shorter: its Content-Range ends at the complete length', (t) => {
  t.deepEqual(sliceAnswer(upstream(206, { 'content-range': 'bytes 900-949/950', 'content-length': '50', etag: '"abc"' }), 9, SLICE), { kind: 'slice', total: 950 });
  t.is(sliceAnswer(upstream(206, { 'content-range': 'bytes 900-999/950', etag: '"abc"' }), 9, SLICE).kind, 'mismatch');
  t.is(sliceAnswer(upstream(206, { 'content-range': 'bytes 900-998/1000', etag: '"abc"' }), 9, SLICE).kind, 'mismatch');
});

// ── validatorOf ─────────────────────────────────────────────────────────────

test('RFC 9110 §8.8.1 a strong ETag is the validator slices are joined by', (t) => {
  t.is(validatorOf('"abc"', undefined, undefined), 'etag "abc"');
  t.is(validatorOf(' "abc" ', undefined, undefined), 'etag "abc"');
  t.is(validatorOf('"abc"', NOV_6_1994, ONE_SECOND_LATER), 'etag "abc"');
});

test('RFC 9110 §8.8.1 a weak ETag is not a strong validator and is ignored', (t) => {
  t.is(validatorOf('W/"abc"', undefined, undefined), undefined);
  t.is(validatorOf('W/"abc"', NOV_6_1994, ONE_SECOND_LATER), `last-modified ${NOV_6_1994_MS}`);
});

test('RFC 9110 §8.8.2.2 a Last-Modified less than a second before Date is weak', (t) => {
  t.is(validatorOf(undefined, NOV_6_1994, NOV_6_1994), undefined);
  t.is(validatorOf(undefined, ONE_SECOND_LATER, NOV_6_1994), undefined);
});

test('RFC 9110 §8.8.2.2 a Last-Modified at least a second before Date is strong', (t) => {
  t.is(validatorOf(undefined, NOV_6_1994, ONE_SECOND_LATER), `last-modified ${NOV_6_1994_MS}`);
  t.is(validatorOf(undefined, NOV_6_1994, 'Mon, 07 Nov 1994 08:49:37 GMT'), 'last-modified 784111777000');
});

test('RFC 9110 §8.8.2.2 without a Date, or without a valid Last-Modified, there is no strong validator', (t) => {
  t.is(validatorOf(undefined, NOV_6_1994, undefined), undefined);
  t.is(validatorOf(undefined, 'yesterday', ONE_SECOND_LATER), undefined);
  t.is(validatorOf(undefined, undefined, undefined), undefined);
});
