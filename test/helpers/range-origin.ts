/** A test origin that serves byte ranges, as real origins (and nginx, S3) do, for the slicing tests. */
import type { IncomingMessage, OutgoingHttpHeaders, ServerResponse } from 'node:http';
import { sendWithRange } from '../../bench/single-range.js';

export interface Version {
  body: Buffer;
  etag?: string;
  headers?: OutgoingHttpHeaders;
}

/** An origin that serves one byte range (`bytes=a-b`, `bytes=a-`) or the whole body, and answers If-None-Match. */
export function rangeHandler(version: (count: number) => Version) {
  return (req: IncomingMessage, res: ServerResponse, _body: Buffer, count: number): void => {
    const v = version(count);
    const base: OutgoingHttpHeaders = { 'content-type': 'application/octet-stream', 'cache-control': 'max-age=60', 'accept-ranges': 'bytes', ...(v.etag ? { etag: v.etag } : {}), ...v.headers };
    if (v.etag !== undefined && req.headers['if-none-match'] === v.etag) {
      res.writeHead(304, base);
      res.end();
      return;
    }
    sendWithRange(req, res, base, v.body);
  };
}

