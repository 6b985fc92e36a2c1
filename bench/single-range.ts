/**
 * The one byte range an origin of the benches and tests serves (`bytes=a-b` or `bytes=a-`, as the
 * nodes' slices ask): its bytes, 'unsatisfiable' past the end, or undefined for no such header.
 * Written apart from pipeline/ranges.ts on purpose: the origins must not share the node's parser.
 */
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';

export function singleRange(range: string | undefined, size: number): { start: number; end: number } | 'unsatisfiable' | undefined {
  const match = /^bytes=(\d+)-(\d*)$/.exec(range ?? '');
  if (match === null) return undefined;
  const start = Number(match[1]);
  if (start >= size) return 'unsatisfiable';
  return { start, end: Math.min(match[2] === '' ? size - 1 : Number(match[2]), size - 1) };
}

/** Answers a GET or HEAD with `body`: the range asked for (206, or 416 past the end), else all of it. */
export function sendWithRange(req: IncomingMessage, res: ServerResponse, headers: OutgoingHttpHeaders, body: Buffer): void {
  const range = singleRange(req.headers.range, body.length);
  if (range === 'unsatisfiable') {
    res.writeHead(416, { 'content-range': `bytes */${body.length}`, 'content-length': 0 });
    res.end();
  } else if (range === undefined) {
    res.writeHead(200, { ...headers, 'content-length': body.length });
    res.end(body);
  } else {
    res.writeHead(206, { ...headers, 'content-range': `bytes ${range.start}-${range.end}/${body.length}`, 'content-length': range.end - range.start + 1 });
    res.end(body.subarray(range.start, range.end + 1));
  }
}
