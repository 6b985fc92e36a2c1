/**
 * The small origin `npm start` fronts when no --origin is given, so a newcomer sees the cache
 * work with nothing else installed. Each path shows one caching behaviour.
 */
import { createHash } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';

interface DemoPath {
  cacheControl: string;
  describe: string;
  body: () => string;
  vary?: string;
  delayMs?: number;
}

const PATHS: Record<string, DemoPath> = {
  '/hello': { cacheControl: 'public, max-age=60', describe: 'fresh for 60 s', body: () => 'Hello from the Outpost demo origin.\n' },
  '/time': { cacheControl: 'max-age=5, stale-while-revalidate=30, stale-if-error=300', describe: 'fresh 5 s, then served stale while one background fetch refreshes it', body: () => `origin time ${new Date().toISOString()}\n` },
  '/slow': { cacheControl: 'max-age=30', describe: 'takes 500 ms at the origin; concurrent misses collapse into one fetch', body: () => 'slow but cached\n', delayMs: 500 },
  '/lang': { cacheControl: 'max-age=60', describe: 'varies on Accept-Language', vary: 'Accept-Language', body: () => 'a variant per Accept-Language\n' },
  '/private': { cacheControl: 'private, max-age=60', describe: 'private: never stored by a shared cache', body: () => `private ${Math.random()}\n` },
  '/no-store': { cacheControl: 'no-store', describe: 'never stored', body: () => `no-store ${Math.random()}\n` },
};

export function demoIndex(): string {
  return Object.entries(PATHS)
    .map(([path, spec]) => `${path.padEnd(10)} Cache-Control: ${spec.cacheControl}  (${spec.describe})`)
    .join('\n');
}

export function createDemoOrigin(): Server {
  return createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0]!;
    if (path === '/healthz') {
      res.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'no-store' });
      res.end('ok\n');
      return;
    }
    if (path === '/') {
      res.writeHead(200, { 'content-type': 'text/plain; charset=utf-8', 'cache-control': 'max-age=10' });
      res.end(`Outpost demo origin. Paths:\n${demoIndex()}\n/bytes/N   a body of N bytes, fresh for 1 hour\n`);
      return;
    }
    const bytes = /^\/bytes\/(\d{1,9})$/.exec(path);
    if (bytes) {
      const size = Math.min(Number(bytes[1]), 64 * 1024 * 1024);
      res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': size, 'cache-control': 'max-age=3600', etag: `"bytes-${size}"` });
      res.end(Buffer.alloc(size, 0x61));
      return;
    }
    const spec = PATHS[path];
    if (!spec) {
      res.writeHead(404, { 'content-type': 'text/plain', 'cache-control': 'max-age=10' });
      res.end('not found\n');
      return;
    }
    const send = () => {
      const body = spec.body();
      const etag = `"${createHash('sha1').update(body).digest('base64url').slice(0, 16)}"`;
      const headers: Record<string, string> = { 'content-type': 'text/plain; charset=utf-8', 'cache-control': spec.cacheControl, etag };
      if (spec.vary) headers['vary'] = spec.vary;
      if (req.headers['if-none-match'] === etag) {
        res.writeHead(304, headers);
        res.end();
        return;
      }
      res.writeHead(200, headers);
      res.end(body);
    };
    if (spec.delayMs) setTimeout(send, spec.delayMs);
    else send();
  });
}

export async function startDemoOrigin(host: string, port: number): Promise<{ server: Server; url: string }> {
  const server = createDemoOrigin();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  const address = server.address() as AddressInfo;
  return { server, url: `http://${host}:${address.port}` };
}
