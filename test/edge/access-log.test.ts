/** The access log: one valid JSON line per request (pino's line format), whatever the request carries. */
import test from 'ava';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { loadConfig } from '../../config/config.js';
import { startEdge } from '../../edge/edge.js';
import { MemoryStore } from '../../storage/memory-store.js';
import { fetchFrom, startOrigin } from '../helpers/harness.js';

test('every request writes one JSON line with id, method, host, path, status, bytes, ms and cache outcome', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-log-'));
  const origin = await startOrigin((_req, res) => {
    res.writeHead(200, { 'cache-control': 'max-age=60' });
    res.end('hello');
  });
  const file = join(dir, 'access.log');
  const destination = pino.destination({ dest: file, sync: true });
  const logger = pino({ level: 'info', name: 'outpost-edge', base: { pid: process.pid } }, destination);
  const config = loadConfig('edge', { fileContents: { listen: '127.0.0.1:0', upstreams: [origin.url], dataDir: dir } });
  const edge = await startEdge(config, { logger, store: new MemoryStore({ maxBytes: 1 << 24 }) });
  t.teardown(async () => {
    await origin.close();
    rmSync(dir, { recursive: true, force: true });
  });
  await fetchFrom(edge.url, '/a');
  await fetchFrom(edge.url, '/a');
  await fetchFrom(edge.url, '/q?x="quoted"&y=%E2%9C%93', { headers: { host: 'Ünïcode.test' } }).catch(() => undefined);
  await fetchFrom(edge.url, '/post', { method: 'POST', body: 'x' });
  await edge.close();
  const lines = readFileSync(file, 'utf8').trim().split('\n').map((line) => JSON.parse(line) as Record<string, unknown>);
  const requests = lines.filter((line) => line.msg === 'request');
  t.is(requests.length, 4);
  for (const line of requests) {
    t.is(line.level, 30);
    t.is(line.name, 'outpost-edge');
    t.is(typeof line.time, 'number');
    t.is(typeof line.id, 'string');
    t.is(typeof line.ms, 'number');
    t.is(line.complete, true);
  }
  t.like(requests[0], { method: 'GET', path: '/a', status: 200, bytes: 5, cache: 'miss', client: '127.0.0.1' });
  t.like(requests[1], { method: 'GET', path: '/a', status: 200, bytes: 5, cache: 'hit' });
  t.is(requests[2]!.path, '/q?x=%22quoted%22&y=%E2%9C%93');
  t.is(requests[2]!.host, 'ünïcode.test');
  t.like(requests[3], { method: 'POST', path: '/post', cache: 'pass' });
  t.not(requests[0]!.id, requests[1]!.id);
});
