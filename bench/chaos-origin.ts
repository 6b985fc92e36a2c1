/**
 * Origin for `npm run chaos` (bench/chaos.ts), one process per origin so the driver can SIGSTOP it.
 *
 *   node dist/bench/chaos-origin.js --port N --versions FILE
 *
 * GET /k/<key>   the body of <key> at its current version (read per request from FILE, see
 *                bench/chaos/versions.ts): a deterministic slice of a seeded pattern
 *                (bench/chaos/body.ts), with x-version, x-checksum (CRC32 of the body, hex), an
 *                ETag naming key and version, and Cache-Control with stale windows.
 *                If-None-Match with the current ETag gets a 304. `Range: bytes=a-b` (one range, as
 *                the nodes' slices ask) gets a 206 with Content-Range, or 416 beyond the end.
 * GET /health    200 ok (the shields' active health checks)
 * Prints {"port":N} on stdout once listening.
 */
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { checksumOf, etagOf, expectedBody, keyOfPath } from './chaos/body.js';
import { VersionFile } from './chaos/versions.js';
import { sendWithRange } from './single-range.js';

const CACHE_CONTROL = 'max-age=8, stale-while-revalidate=8, stale-if-error=300';

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(name);
  return i === -1 ? undefined : process.argv[i + 1];
}

const versionsPath = arg('--versions');
if (!versionsPath) {
  process.stderr.write('usage: chaos-origin --port N --versions FILE\n');
  process.exit(2);
}
const versions = VersionFile.open(versionsPath);
/** CRC32 per (key, version) once: bodies reach 5 MiB. */
const checksums = new Map<number, { version: number; sum: string }>();

const server = createServer((req, res) => {
  const path = (req.url ?? '/').split('?')[0]!;
  if (path === '/health') {
    res.writeHead(200, { 'content-type': 'text/plain', 'content-length': 3, 'cache-control': 'no-store' });
    res.end('ok\n');
    return;
  }
  const key = keyOfPath(path);
  if (key === undefined || (req.method !== 'GET' && req.method !== 'HEAD')) {
    res.writeHead(404, { 'content-length': 0, 'cache-control': 'no-store' });
    res.end();
    return;
  }
  const version = versions.read(key);
  const body = expectedBody(key, version);
  let sum = checksums.get(key);
  if (sum?.version !== version) {
    sum = { version, sum: checksumOf(body) };
    checksums.set(key, sum);
  }
  const etag = etagOf(key, version);
  const headers = { 'content-type': 'application/octet-stream', 'cache-control': CACHE_CONTROL, etag, 'x-version': String(version), 'x-checksum': sum.sum };
  const inm = req.headers['if-none-match'];
  if (inm !== undefined && inm.split(',').some((tag) => tag.trim().replace(/^W\//, '') === etag)) {
    res.writeHead(304, headers);
    res.end();
    return;
  }
  sendWithRange(req, res, headers, body);
});
server.keepAliveTimeout = 30_000;

server.listen(Number(arg('--port') ?? 0), '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ port: (server.address() as AddressInfo).port })}\n`);
});
process.on('SIGTERM', () => process.exit(0));
