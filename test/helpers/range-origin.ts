/** A test origin that serves byte ranges, as real origins (and nginx, S3) do, for the slicing tests. */
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';

export interface Version {
  body: Buffer;
  etag?: string;
  headers?: OutgoingHttpHeaders;
}

/** An origin that serves one byte range (`bytes=a-b`, `bytes=a-`) or the whole body, and answers If-None-Match. */
export function rangeHandler(version: (count: number) => Version) {
  return (req: IncomingMessage, res: ServerResponse, _body: Buffer, count: number): void => {
    const v = version(count);
    const size = v.body.length;
    const base: OutgoingHttpHeaders = { 'content-type': 'application/octet-stream', 'cache-control': 'max-age=60', 'accept-ranges': 'bytes', ...(v.etag ? { etag: v.etag } : {}), ...v.headers };
    if (v.etag !== undefined && req.headers['if-none-match'] === v.etag) {
      res.writeHead(304, base);
      res.end();
      return;
    }
    const match = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? '');
    if (match === null) {
      res.writeHead(200, { ...base, 'content-length': size });
      res.end(v.body);
      return;
    }
    const start = Number(match[1]);
    if (start >= size) {
      res.writeHead(416, { 'content-range': `bytes */${size}` });
      res.end();
      return;
    }
    const end = Math.min(match[2] === '' ? size - 1 : Number(match[2]), size - 1);
    res.writeHead(206, { ...base, 'content-range': `bytes ${start}-${end}/${size}`, 'content-length': end - start + 1 });
    res.end(v.body.subarray(start, end + 1));
  };
}

