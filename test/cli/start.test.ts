/**
 * `outpost start` (what `npm start` runs): edge → shield → demo origin on one machine, with the
 * URLs printed; the second request is a hit at the edge; SIGTERM stops everything cleanly.
 */
import test from 'ava';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http2 from 'node:http2';
import type { TLSSocket } from 'node:tls';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { cacheStatus, fetchFrom, header } from '../helpers/harness.js';

const bin = fileURLToPath(new URL('../../../bin/outpost', import.meta.url));

test('start runs the whole chain on the demo origin and prints the edge URL and a curl to try; its admin API purges both tiers', async (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-start-'));
  const child = spawn(process.execPath, [bin, 'start', '--listen', '127.0.0.1:0', '--listen-tls', '127.0.0.1:0', '--admin-listen', '127.0.0.1:0', '--data-dir', dir, '--access-log', 'false'], { stdio: ['ignore', 'ignore', 'pipe'] });
  t.teardown(() => {
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  });
  let stderr = '';
  const edgeUrl = await new Promise<string>((resolve, reject) => {
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
      const match = /edge\s+(http:\/\/127\.0\.0\.1:\d+)/.exec(stderr);
      if (match && stderr.includes('curl')) resolve(match[1]!);
    });
    child.once('exit', (code) => reject(new Error(`exited ${code}: ${stderr}`)));
  });
  t.regex(stderr, /shield\s+http:\/\/127\.0\.0\.1:\d+/);
  t.regex(stderr, /origin\s+http:\/\/127\.0\.0\.1:\d+ \(demo origin\)/);
  t.regex(stderr, new RegExp(`curl -si ${edgeUrl}/hello`));
  // HTTPS with a self-signed certificate for localhost, made in the data folder, and the curl that trusts it.
  const https = /curl -si --cacert (\S+) (https:\/\/localhost:\d+)\/hello/.exec(stderr);
  t.truthy(https, stderr);
  t.true(https![1]!.startsWith(dir));
  const first = await fetchFrom(edgeUrl, '/hello');
  t.is(first.status, 200);
  t.regex(first.text, /Hello from the Outpost demo origin/);
  t.regex(cacheStatus(first), /^outpost-shield; fwd=uri-miss.*, outpost-edge; fwd=uri-miss/);
  const second = await fetchFrom(edgeUrl, '/hello');
  t.regex(cacheStatus(second), /outpost-edge; hit/);
  t.is(header(second, 'via'), '1.1 outpost-shield, 1.1 outpost-edge');
  const overTls = () =>
    new Promise<{ status: number; cacheStatus: string; alpn: string }>((resolve, reject) => {
      const session = http2.connect(https![2]!, { ca: readFileSync(https![1]!) });
      session.on('error', reject);
      const stream = session.request({ ':path': '/hello' });
      stream.on('response', (headers) => {
        stream.resume();
        stream.on('end', () => {
          resolve({ status: Number(headers[':status']), cacheStatus: String(headers['cache-status']), alpn: String((session.socket as TLSSocket).alpnProtocol) });
          session.close();
        });
      });
    });
  t.like(await overTls(), { status: 200, alpn: 'h2' });
  t.regex((await overTls()).cacheStatus, /outpost-edge; hit/);
  // The admin API is on for `npm start`; `outpost purge` reaches the edge and the shield behind it.
  const admin = /admin\s+(http:\/\/127\.0\.0\.1:\d+)/.exec(stderr)?.[1];
  t.truthy(admin, stderr);
  t.is((await fetch(`${admin}/readyz`)).status, 200);
  const purge = spawnSync(process.execPath, [bin, 'purge', '--admin', admin!, '--url', `${edgeUrl}/hello`], { encoding: 'utf8' });
  t.is(purge.status, 0, purge.stderr);
  const purged = JSON.parse(purge.stdout) as { affected: number; peers: unknown[] };
  t.is(purged.affected, 2, 'the edge copy and the shield copy');
  t.regex(cacheStatus(await fetchFrom(edgeUrl, '/hello')), /^outpost-shield; fwd=uri-miss.*, outpost-edge; fwd=uri-miss/);
  const stats = (await (await fetch(`${admin}/stats`)).json()) as { requests: Record<string, number>; purges: { accepted: number } };
  t.is(stats.requests['hit'], 2, 'one over HTTP/1.1, one over HTTP/2');
  t.is(stats.purges.accepted, 1);
  const refused = spawnSync(process.execPath, [bin, 'purge', '--admin', admin!, '--url', 'ftp://x/'], { encoding: 'utf8' });
  t.is(refused.status, 1);
  t.regex(refused.stderr, /400 [\s\S]*url must be an http:\/\/ or https:\/\/ URL/);
  const usage = spawnSync(process.execPath, [bin, 'purge', '--admin', admin!], { encoding: 'utf8' });
  t.is(usage.status, 2);
  t.regex(usage.stderr, /say what to purge/);
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  child.kill('SIGTERM');
  t.is(await exit, 0);
});

test('the CLI rejects an unknown command or flag, naming it, with a non-zero exit', async (t) => {
  for (const args of [['bogus'], ['start', '--bogus'], ['edge', '--upstream', 'http://127.0.0.1:1', '--lock-wait-ms', 'soon']]) {
    const child = spawn(process.execPath, [bin, ...args], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    t.is(code, 2, args.join(' '));
    t.regex(stderr, /bogus|lockWaitMs/, args.join(' '));
  }
});
