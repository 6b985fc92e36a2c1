/**
 * Benchmark origin: a plain node:http server run as a child process by bench/run.ts.
 *
 *   node dist/bench/origin.js [--port N]      prints {"port":N} on stdout once listening
 *
 * Paths (every request counted by exact path, except /__stats and /health):
 *   /1k, /100k        fixed bodies, Cache-Control: max-age=3600
 *   /cold/…           200 ms delay, Cache-Control: max-age=60, 1 KiB      (stampede)
 *   /swr/…            100 ms delay, Cache-Control: max-age=1, stale-while-revalidate=30, 1 KiB (SWR)
 *   /nostore/…        Cache-Control: no-store, 1 KiB, no delay            (shield miss path, ejection)
 *   /warm/…           Cache-Control: max-age=3600, tiny body              (opening client connections)
 *   /obj/…            Cache-Control: max-age=3600, 1 KiB: one distinct object per path (memory fill)
 *   /large/N/…        Cache-Control: max-age=3600, an N-byte body generated as it is sent (memory, slow clients)
 *   /ranged/N/…       the same with an ETag, answering `Range: bytes=a-b` with a 206, as a file server or S3 does (the edge slices it)
 *   /zipf/D/N/…       Cache-Control: max-age=3600, an N-byte body after D ms (bench/zipf.ts: one object per path)
 *   /health           200 ok
 *   /__stats[?path=P] JSON {"total": n, "path": count of P, "largeSent": /large/ bodies sent in full}
 */
import { createServer, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { singleRange } from './single-range.js';

const KIB = 1024;
const body1k = Buffer.alloc(KIB, 'a');
const body100k = Buffer.alloc(100 * KIB, 'b');
const tiny = Buffer.from('ok\n');

/** Bodies of /zipf/ objects by size: a few dozen sizes, each allocated once. */
const zipfBodies = new Map<number, Buffer>();

function zipfBody(size: number): Buffer {
  let body = zipfBodies.get(size);
  if (body === undefined) zipfBodies.set(size, (body = Buffer.alloc(size, 'z')));
  return body;
}

const counts = new Map<string, number>();
let total = 0;
let largeSent = 0;

/**
 * An N-byte body (or the bytes `start`..`end` of it, for a Range), written 64 KiB at a time as the
 * socket drains: the origin holds none of it. Counted in largeSent when the whole body went out.
 */
function sendLarge(res: ServerResponse, size: number, ranged?: { etag: string; range: string | undefined }): void {
  const headers = { 'Content-Type': 'application/octet-stream', 'Cache-Control': 'max-age=3600', ...(ranged ? { ETag: ranged.etag } : {}) };
  const range = ranged && singleRange(ranged.range, size);
  if (range === 'unsatisfiable') {
    res.writeHead(416, { 'Content-Range': `bytes */${size}`, 'Content-Length': 0 });
    res.end();
    return;
  }
  const { start, end } = range ?? { start: 0, end: size - 1 };
  if (range) res.writeHead(206, { ...headers, 'Content-Range': `bytes ${start}-${end}/${size}`, 'Content-Length': end - start + 1 });
  else res.writeHead(200, { ...headers, 'Content-Length': size });
  const whole = start === 0 && end === size - 1;
  const slice = Buffer.alloc(64 * KIB, 'L');
  const length = end - start + 1;
  let sent = 0;
  const pump = (): void => {
    while (sent < length) {
      const n = Math.min(slice.length, length - sent);
      sent += n;
      if (!res.write(n === slice.length ? slice : slice.subarray(0, n))) {
        res.once('drain', pump);
        return;
      }
    }
    res.end(() => {
      if (whole) largeSent++;
    });
  };
  pump();
}

function send(res: ServerResponse, body: Buffer, cacheControl: string): void {
  res.writeHead(200, {
    'Content-Type': 'application/octet-stream',
    'Content-Length': body.length,
    'Cache-Control': cacheControl,
    'Last-Modified': 'Thu, 26 Nov 2026 00:00:00 GMT',
  });
  res.end(body);
}

const server = createServer((req, res) => {
  const url = req.url ?? '/';
  const q = url.indexOf('?');
  const path = q === -1 ? url : url.slice(0, q);
  if (path === '/__stats') {
    const wanted = q === -1 ? undefined : new URLSearchParams(url.slice(q + 1)).get('path') ?? undefined;
    const out: Record<string, number> = { total };
    if (wanted !== undefined) out.path = counts.get(wanted) ?? 0;
    out.largeSent = largeSent;
    const text = JSON.stringify(out);
    res.writeHead(200, { 'Content-Type': 'application/json', 'Content-Length': Buffer.byteLength(text), 'Cache-Control': 'no-store' });
    res.end(text);
    return;
  }
  if (path === '/health') {
    send(res, tiny, 'no-store');
    return;
  }
  total++;
  counts.set(path, (counts.get(path) ?? 0) + 1);
  if (path === '/1k') return send(res, body1k, 'max-age=3600');
  if (path === '/100k') return send(res, body100k, 'max-age=3600');
  if (path.startsWith('/cold/')) {
    setTimeout(() => send(res, body1k, 'max-age=60'), 200);
    return;
  }
  if (path.startsWith('/swr/')) {
    setTimeout(() => send(res, body1k, 'max-age=1, stale-while-revalidate=30'), 100);
    return;
  }
  if (path.startsWith('/nostore/')) return send(res, body1k, 'no-store');
  if (path.startsWith('/warm/')) return send(res, tiny, 'max-age=3600');
  if (path.startsWith('/obj/')) return send(res, body1k, 'max-age=3600');
  if (path.startsWith('/large/')) return sendLarge(res, Number(path.split('/')[2]));
  if (path.startsWith('/zipf/')) {
    const [, , delay, size] = path.split('/');
    const body = zipfBody(Math.min(Number(size) || 0, 1024 * KIB));
    if (Number(delay) > 0) setTimeout(() => send(res, body, 'max-age=3600'), Number(delay));
    else send(res, body, 'max-age=3600');
    return;
  }
  if (path.startsWith('/ranged/')) return sendLarge(res, Number(path.split('/')[2]), { etag: `"${path}"`, range: req.headers.range });
  res.writeHead(404, { 'Content-Length': 0, 'Cache-Control': 'no-store' });
  res.end();
});
server.keepAliveTimeout = 60_000;

let port = 0;
const i = process.argv.indexOf('--port');
if (i !== -1) port = Number(process.argv[i + 1]);
server.listen(port, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ port: (server.address() as AddressInfo).port })}\n`);
});
process.on('SIGTERM', () => process.exit(0));
