/**
 * Helpers for bench/run.ts's `tls` scenario (issue 12): the certificate both servers use, nginx
 * terminating TLS in front of proxy_cache, h2load (installed on demand) and openssl s_time runs
 * and their parsing, TLS and HTTP checks from node (h2 and HTTP/1.1 by ALPN, session resumption,
 * what each server negotiates), access-log tallies, and a short summary of a --cpu-prof profile.
 * Everything binds and connects to 127.0.0.1 only.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { connect as http2Connect } from 'node:http2';
import { request as httpsRequest, type RequestOptions } from 'node:https';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { generate } from 'selfsigned';
import { HOST, NGINX, NGINX_CACHE_LOCATION, ROOT, findBinary, freePort, launch, nginxCacheHttp, nginxMain, runTool, sleep, type Spawned } from './lib.js';

// ---------------------------------------------------------------- certificate

export interface BenchCertificate {
  certFile: string;
  keyFile: string;
  /** The certificate's PEM: self-signed, so it is its own CA for the checks' clients. */
  pem: string;
}

/**
 * EC P-256, SHA-256, for `localhost` and 127.0.0.1 (as test/helpers/certificates.ts makes them),
 * written to a folder of their own under `dir`: the edge watches the folder of its certificate
 * (to see renewals), so a busy file beside it — nginx's access log, one write per request — would
 * wake the edge on every write (it cost the idle edge ~0.4 of a core while nginx was measured).
 */
export async function writeBenchCertificate(parent: string, names = ['localhost', HOST]): Promise<BenchCertificate> {
  const dir = join(parent, 'certificate');
  mkdirSync(dir, { recursive: true });
  const notBeforeDate = new Date(Date.now() - 60_000);
  const generated = await generate([{ name: 'commonName', value: names[0]! }], {
    keyType: 'ec',
    curve: 'P-256',
    algorithm: 'sha256',
    notBeforeDate,
    notAfterDate: new Date(notBeforeDate.getTime() + 30 * 24 * 3600_000),
    extensions: [
      { name: 'basicConstraints', cA: false, critical: true },
      { name: 'keyUsage', digitalSignature: true, critical: true },
      { name: 'extKeyUsage', serverAuth: true },
      { name: 'subjectAltName', altNames: names.map((name) => (isIP(name) === 0 ? { type: 2 as const, value: name } : { type: 7 as const, ip: name })) },
    ],
  });
  const pem = generated.cert.endsWith('\n') ? generated.cert : `${generated.cert}\n`;
  const certFile = join(dir, 'bench.crt');
  const keyFile = join(dir, 'bench.key');
  writeFileSync(certFile, pem);
  writeFileSync(keyFile, generated.private, { mode: 0o600 });
  return { certFile, keyFile, pem };
}

// ---------------------------------------------------------------- nginx

/** nginx -v, e.g. [1, 22, 1]; undefined when nginx is missing or says something else. */
export function nginxVersion(): { text: string; parts: number[] } | undefined {
  if (!NGINX) return undefined;
  const r = spawnSync(NGINX, ['-v'], { encoding: 'utf8' });
  const m = /nginx\/(\d+)\.(\d+)\.(\d+)/.exec(`${r.stdout}${r.stderr}`);
  return m ? { text: `nginx/${m[1]}.${m[2]}.${m[3]}`, parts: [Number(m[1]), Number(m[2]), Number(m[3])] } : undefined;
}

/** The TLS 1.2 suites of the edge's policy (edge/tls/tls-policy.ts, Mozilla intermediate v5.7). */
export const MOZILLA_INTERMEDIATE_TLS12 = [
  'ECDHE-ECDSA-AES128-GCM-SHA256', 'ECDHE-RSA-AES128-GCM-SHA256', 'ECDHE-ECDSA-AES256-GCM-SHA384', 'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305', 'ECDHE-RSA-CHACHA20-POLY1305', 'DHE-RSA-AES128-GCM-SHA256', 'DHE-RSA-AES256-GCM-SHA384', 'DHE-RSA-CHACHA20-POLY1305',
].join(':');

/** `port`: the HTTPS listener; `plainPort`: plain HTTP on the same server block (the reference row). */
export type TlsServer = Spawned & { port: number; plainPort: number; accessLog: string };

/**
 * nginx terminating TLS in front of proxy_cache: the `hits` scenario's proxy_cache block, and
 * `listen … ssl` with HTTP/2 (`http2 on;` from 1.25.1, `listen … ssl http2` before), the same
 * certificate, versions, suites and groups as the edge, client cipher order (as the edge:
 * honorCipherOrder false), a shared session cache and session tickets on; plain HTTP on a second
 * port of the same server block, for a reference row without TLS. The access log
 * records what each connection negotiated and whether it resumed, for the scenario's checks.
 */
export async function startNginxTls(originPort: number, dir: string, cert: BenchCertificate, workers = 1): Promise<TlsServer | undefined> {
  const version = nginxVersion();
  if (!NGINX || !version) return undefined;
  const [major, minor, patch] = version.parts as [number, number, number];
  const http2Directive = major > 1 || minor > 25 || (minor === 25 && patch >= 1);
  const port = await freePort();
  const plainPort = await freePort();
  const conf = join(dir, 'nginx-tls.conf');
  const accessLog = join(dir, 'nginx-tls-access.log');
  writeFileSync(
    conf,
    `# generated by bench/run.ts (tls scenario)
${nginxMain(dir, 'nginx-tls', workers)}
http {
  log_format bench '$status $upstream_cache_status $server_protocol $ssl_protocol $ssl_cipher $ssl_curve $ssl_session_reused';
  access_log ${accessLog} bench;
${nginxCacheHttp(dir, originPort)}
  server {
    listen ${HOST}:${port} ssl${http2Directive ? '' : ' http2'} backlog=4096;
    listen ${HOST}:${plainPort} backlog=4096;
    ${http2Directive ? 'http2 on;' : ''}
    ssl_certificate ${cert.certFile};
    ssl_certificate_key ${cert.keyFile};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ciphers ${MOZILLA_INTERMEDIATE_TLS12};
    ssl_prefer_server_ciphers off;
    ssl_ecdh_curve X25519:prime256v1:secp384r1;
    ssl_session_cache shared:bench_tls:10m;
    ssl_session_timeout 1d;
    ssl_session_tickets on;
    location / {
${NGINX_CACHE_LOCATION}
      add_header Cache-Status "nginx; $upstream_cache_status" always;
    }
  }
}
`,
  );
  const spawned = launch(NGINX, ['-c', conf, '-p', dir, '-e', join(dir, 'nginx-error.log')]);
  await waitHttps(port, cert, spawned);
  return { ...spawned, port, plainPort, accessLog };
}

// ---------------------------------------------------------------- HTTPS from node (checks)

export interface HttpsResult {
  status: number;
  cacheStatus: string;
  alpn: string;
  protocol: string;
  cipher: string;
  bytes: number;
}

/** One GET over HTTP/1.1 by ALPN (a fresh connection, certificate verified against `cert`). */
export function getHttp1(port: number, path: string, cert: BenchCertificate): Promise<HttpsResult> {
  return new Promise((resolve, reject) => {
    const options = { host: HOST, port, path, ca: cert.pem, ALPNProtocols: ['http/1.1'], agent: false, method: 'GET' } as RequestOptions;
    const req = httpsRequest(options, (res) => {
      const socket = res.socket as TLSSocket;
      const info = { alpn: String(socket.alpnProtocol), protocol: socket.getProtocol() ?? '', cipher: socket.getCipher()?.standardName ?? '' };
      let bytes = 0;
      res.on('data', (c: Buffer) => (bytes += c.length));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, cacheStatus: headerText(res.headers['cache-status']), bytes, ...info }));
      res.on('error', reject);
    });
    req.on('error', reject);
    req.setTimeout(10_000, () => req.destroy(new Error(`GET ${path} over HTTPS timed out`)));
    req.end();
  });
}

/** One GET over HTTP/2 (a fresh session, certificate verified against `cert`). */
export function getHttp2(port: number, path: string, cert: BenchCertificate): Promise<HttpsResult> {
  return new Promise((resolve, reject) => {
    const session = http2Connect(`https://${HOST}:${port}`, { ca: cert.pem });
    const fail = (error: Error) => {
      session.destroy();
      reject(error);
    };
    session.on('error', fail);
    const timer = setTimeout(() => fail(new Error(`GET ${path} over h2 timed out`)), 10_000);
    const stream = session.request({ ':method': 'GET', ':path': path });
    let status = 0;
    let cacheStatus = '';
    let bytes = 0;
    stream.on('response', (headers) => {
      status = Number(headers[':status']);
      cacheStatus = headerText(headers['cache-status']);
    });
    stream.on('data', (c: Buffer) => (bytes += c.length));
    stream.on('error', fail);
    stream.on('end', () => {
      clearTimeout(timer);
      const socket = session.socket as TLSSocket;
      const result = { status, cacheStatus, bytes, alpn: String(session.alpnProtocol), protocol: socket.getProtocol() ?? '', cipher: socket.getCipher()?.standardName ?? '' };
      session.close();
      resolve(result);
    });
    stream.end();
  });
}

function headerText(value: string | string[] | number | undefined): string {
  return Array.isArray(value) ? value.join(', ') : value === undefined ? '' : String(value);
}

/** Polls until the HTTPS listener answers GET /health (any status). */
export async function waitHttps(port: number, cert: BenchCertificate, spawned?: Spawned, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (spawned && (spawned.child.exitCode !== null || spawned.child.signalCode !== null)) {
      throw new Error(`process exited (${spawned.child.exitCode ?? spawned.child.signalCode}): ${spawned.stderr()}`);
    }
    try {
      await getHttp1(port, '/health', cert);
      return;
    } catch {
      if (Date.now() > deadline) throw new Error(`nothing answers HTTPS on ${HOST}:${port}${spawned ? `: ${spawned.stderr()}` : ''}`);
      await sleep(50);
    }
  }
}

/**
 * Whether the server resumes a session: a first connection (one request, then it waits for the
 * session — TLS 1.3 tickets come after the handshake), a second offering that session.
 */
export async function resumes(port: number, cert: BenchCertificate, maxVersion: 'TLSv1.2' | 'TLSv1.3'): Promise<boolean> {
  const once = (session?: Buffer) =>
    new Promise<{ session: Buffer | undefined; reused: boolean }>((resolve, reject) => {
      let latest: Buffer | undefined;
      let reused = false;
      const socket = tlsConnect({ host: HOST, port, ca: cert.pem, ALPNProtocols: ['http/1.1'], maxVersion, ...(session ? { session } : {}) }, () => {
        reused = socket.isSessionReused(); // null once the socket is closed
        socket.write(`GET /health HTTP/1.1\r\nHost: ${HOST}\r\nConnection: close\r\n\r\n`);
      });
      socket.on('session', (s: Buffer) => (latest = s));
      socket.on('data', () => undefined);
      socket.on('error', reject);
      socket.on('close', () => resolve({ session: latest, reused }));
      socket.setTimeout(10_000, () => socket.destroy(new Error('resumption check timed out')));
    });
  const first = await once();
  if (!first.session) return false;
  return (await once(first.session)).reused;
}

// ---------------------------------------------------------------- openssl s_client (what was negotiated)

export interface Negotiated {
  protocol: string;
  cipher: string;
  group: string;
  signature: string;
}

/** What OpenSSL's default client (the one s_time uses) negotiates with the server at `maxVersion`. */
export async function negotiated(port: number, version: 'tls1_2' | 'tls1_3'): Promise<Negotiated | string> {
  const openssl = OPENSSL;
  if (!openssl) return 'openssl not installed';
  const { out } = await runTool('sh', ['-c', `${openssl} s_client -connect ${HOST}:${port} -${version} -servername localhost </dev/null`]);
  const pick = (re: RegExp) => re.exec(out)?.[1]?.trim() ?? '?';
  const line = /^(New|Reused), (TLSv[\d.]+), Cipher is (\S+)/m.exec(out);
  if (!line) return `no handshake: ${out.split('\n').filter((l) => /error|alert/i.test(l)).slice(0, 2).join(' ') || 'see s_client'}`;
  return { protocol: line[2]!, cipher: line[3]!, group: pick(/^(?:Server|Peer) Temp Key: (.+)$/m), signature: pick(/^Peer signature type: (.+)$/m) };
}

// ---------------------------------------------------------------- load tools

export const OPENSSL = findBinary('openssl', ['/usr/bin/openssl', '/usr/local/bin/openssl']);

/**
 * h2load's path, installing Debian's nghttp2-client with apt-get when it is missing (as root).
 * Returns the path, or why there is none (the caller skips its h2 row rather than failing).
 */
export function ensureH2load(say: (line: string) => void): { path?: string; why?: string } {
  const found = findBinary('h2load', ['/usr/bin/h2load', '/usr/local/bin/h2load']);
  if (found) return { path: found };
  if (process.getuid?.() !== 0) return { why: 'h2load is not installed and this is not root: `apt-get install -y nghttp2-client` to add it' };
  if (!findBinary('apt-get', ['/usr/bin/apt-get'])) return { why: 'h2load is not installed and there is no apt-get (Debian\'s package is nghttp2-client)' };
  say('h2load is not installed: running `apt-get update && apt-get install -y nghttp2-client` …');
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const update = spawnSync('apt-get', ['update'], { encoding: 'utf8', env, timeout: 300_000 });
  const install = update.status === 0 ? spawnSync('apt-get', ['install', '-y', 'nghttp2-client'], { encoding: 'utf8', env, timeout: 300_000 }) : update;
  const path = findBinary('h2load', ['/usr/bin/h2load', '/usr/local/bin/h2load']);
  if (install.status === 0 && path) return { path };
  const tail = `${install.stdout ?? ''}${install.stderr ?? ''}`.trim().split('\n').slice(-2).join(' ');
  return { why: `apt-get install nghttp2-client failed (${install.status ?? install.signal ?? install.error?.message}): ${tail}` };
}

export function toolVersion(bin: string | undefined, args: string[]): string {
  if (!bin) return 'not installed';
  const r = spawnSync(bin, args, { encoding: 'utf8' });
  return `${r.stdout}${r.stderr}`.split('\n').find((l) => l.trim())?.trim() ?? 'installed';
}

export interface H2loadResult {
  rps: number;
  done: number;
  succeeded: number;
  failed: number;
  errored: number;
  timeout: number;
  status2xx: number;
  statusOther: number;
  protocol: string;
  cipher: string;
  tempKey: string;
  alpn: string;
  raw: string;
}

export function parseH2load(raw: string): H2loadResult {
  const num = (re: RegExp) => {
    const m = re.exec(raw);
    return m ? Number(m[1]) : Number.NaN;
  };
  const text = (re: RegExp) => re.exec(raw)?.[1]?.trim() ?? '';
  const codes = /status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx/.exec(raw);
  return {
    rps: num(/finished in [\d.]+\w+, ([\d.]+) req\/s/),
    done: num(/requests: \d+ total, \d+ started, (\d+) done/),
    succeeded: num(/(\d+) succeeded/),
    failed: num(/(\d+) failed/),
    errored: num(/(\d+) errored/),
    timeout: num(/(\d+) timeout/),
    status2xx: codes ? Number(codes[1]) : Number.NaN,
    statusOther: codes ? Number(codes[2]) + Number(codes[3]) + Number(codes[4]) : Number.NaN,
    protocol: text(/^TLS Protocol: (.+)$/m),
    cipher: text(/^Cipher: (.+)$/m),
    tempKey: text(/^Server Temp Key: (.+)$/m),
    alpn: text(/^Application protocol: (.+)$/m),
    raw,
  };
}

/**
 * h2load over h2 for `seconds` (-D) after `warmup` unmeasured seconds, one thread (as wrk -t1).
 * Its req/s counts the measured window only.
 */
export async function h2load(bin: string, url: string, options: { seconds: number; clients: number; streams: number; warmup: number }): Promise<H2loadResult> {
  const args = ['-t', '1', '-c', String(options.clients), '-m', String(options.streams), `--warm-up-time=${options.warmup}`, '-D', String(options.seconds), url];
  const { code, out } = await runTool(bin, args);
  const result = parseH2load(out);
  if (!Number.isFinite(result.rps)) throw new Error(`h2load failed (${code}): ${out.split('\n').filter((l) => !l.startsWith('progress')).join('\n')}`);
  return result;
}

export interface STimeResult {
  connections: number;
  /** Wall time from the first s_time's start to the last one's exit, seconds. */
  wall: number;
  perProcess: number[];
  errors: string;
}

/**
 * `processes` × `openssl s_time -new -www PATH -time SECONDS` at once: every connection a full
 * handshake (a new SSL with no session: no resumption), one HTTP/1.0 GET, then closed.
 */
export async function sTime(port: number, options: { path: string; seconds: number; processes: number; version: 'tls1_2' | 'tls1_3' }): Promise<STimeResult> {
  if (!OPENSSL) throw new Error('openssl is not installed');
  const args = ['s_time', '-connect', `${HOST}:${port}`, '-new', '-www', options.path, '-time', String(options.seconds), `-${options.version}`, '-no-CAfile', '-no-CApath', '-no-CAstore'];
  const started = performance.now();
  const runs = await Promise.all(Array.from({ length: options.processes }, () => runTool(OPENSSL, args)));
  const wall = (performance.now() - started) / 1000;
  const perProcess = runs.map((r) => Number(/(\d+) connections in [\d.]+s;/.exec(r.out)?.[1] ?? Number.NaN));
  const errors = runs
    .filter((r, i) => r.code !== 0 || !Number.isFinite(perProcess[i]!))
    .map((r) => `s_time exited ${r.code}: ${r.out.replace(/\*+/g, '').trim().split('\n').slice(-2).join(' ')}`);
  return { connections: perProcess.filter(Number.isFinite).reduce((sum, n) => sum + n, 0), wall, perProcess, errors: [...new Set(errors)].join('; ') };
}

// ---------------------------------------------------------------- access-log tallies

export function fileSize(file: string): number {
  try {
    return statSync(file).size;
  } catch {
    return 0;
  }
}

function readFrom(file: string, offset: number): string {
  try {
    return readFileSync(file).subarray(offset).toString('utf8');
  } catch {
    return '';
  }
}

export interface Tally {
  lines: number;
  counts: Map<string, number>;
}

function tallyOf(keys: string[][]): Tally {
  const counts = new Map<string, number>();
  for (const ks of keys) for (const k of ks) counts.set(k, (counts.get(k) ?? 0) + 1);
  return { lines: keys.length, counts };
}

/** The edge's JSON access lines for `path` from byte `offset` on: status, cache outcome, incomplete responses. */
export function edgeTally(file: string, offset: number, path: string): Tally {
  const keys: string[][] = [];
  for (const text of readFrom(file, offset).split('\n')) {
    if (!text.includes('"path"')) continue;
    try {
      const line = JSON.parse(text) as { path?: string; status?: number; cache?: string; complete?: boolean };
      if (line.path !== path) continue;
      keys.push([`HTTP ${line.status}`, `cache ${line.cache}`, ...(line.complete === false ? ['incomplete'] : [])]);
    } catch {
      // a line cut at the offset
    }
  }
  return tallyOf(keys);
}

/** nginx's `bench` access lines from byte `offset` on: status, cache, HTTP version, TLS version, suite, group, resumed or new. */
export function nginxTally(file: string, offset: number): Tally {
  const keys: string[][] = [];
  for (const text of readFrom(file, offset).split('\n')) {
    const f = text.trim().split(' ');
    if (f.length < 7) continue;
    if (f[3] === '-' || f[3] === '') keys.push([`HTTP ${f[0]}`, `cache ${f[1]}`, f[2]!, 'no TLS']);
    else keys.push([`HTTP ${f[0]}`, `cache ${f[1]}`, f[2]!, f[3]!, f[4]!, `group ${f[5]}`, f[6] === 'r' ? 'resumed' : 'full handshake']);
  }
  return tallyOf(keys);
}

export function describeTally(t: Tally, order: (key: string) => number = () => 0): string {
  if (t.lines === 0) return 'no lines';
  return [...t.counts.entries()]
    .sort((a, b) => order(a[0]) - order(b[0]) || b[1] - a[1])
    .map(([k, n]) => `${k} ${n === t.lines ? 'all' : `${((n / t.lines) * 100).toFixed(n / t.lines < 0.01 ? 2 : 0)}%`}`)
    .join(', ');
}

// ---------------------------------------------------------------- --cpu-prof summary

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}

export interface ProfileSummary {
  file: string;
  busyMs: number;
  windowMs: number;
  top: Array<{ label: string; ms: number; share: number }>;
  /** `share`: samples with a frame of the part anywhere on the stack; `self`: samples whose leaf is in it (the first matching part; the rest is "other"). */
  buckets: Array<{ name: string; share: number; self: number }>;
}

/**
 * The busiest .cpuprofile in `dir` (the edge's worker; the primary is mostly idle), restricted to
 * samples between `windowStart` and `windowEnd` (µs, CLOCK_MONOTONIC like process.hrtime): the
 * top self-time functions and the inclusive share of a few parts of the TLS hit path.
 */
export function summarizeProfile(dir: string, windowStart: number, windowEnd: number, n = 12): ProfileSummary | undefined {
  if (!existsSync(dir)) return undefined;
  let best: ProfileSummary | undefined;
  for (const name of readdirSync(dir).filter((f) => f.endsWith('.cpuprofile'))) {
    const prof = JSON.parse(readFileSync(join(dir, name), 'utf8')) as { nodes: ProfileNode[]; startTime: number; samples: number[]; timeDeltas: number[] };
    const byId = new Map(prof.nodes.map((node) => [node.id, node]));
    const parent = new Map<number, number>();
    for (const node of prof.nodes) for (const c of node.children ?? []) parent.set(c, node.id);
    const label = (node: ProfileNode): string => {
      const { functionName, url, lineNumber } = node.callFrame;
      const file = url.replace(/^file:\/\//, '').replace(`${ROOT}/`, '');
      return `${functionName || '(anonymous)'} ${file ? `${file}:${lineNumber + 1}` : ''}`.trim();
    };
    const buckets: Array<[string, (node: ProfileNode) => boolean]> = [
      ['node:_tls_wrap / tls_wrap (TLS record and handshake glue)', (x) => /_tls_wrap|tls_wrap|_tls_common/.test(x.callFrame.url) || /^(onhandshake|onnewsession|onocspresponse|requestOCSP|onServerSocketSecure|tlsConnectionListener)/.test(x.callFrame.functionName)],
      ['node:internal/http2 (HTTP/2 sessions, streams, compat)', (x) => x.callFrame.url.startsWith('node:internal/http2/')],
      ['node:_http_* (HTTP/1.1 parser and responses)', (x) => /^node:_http_/.test(x.callFrame.url)],
      ['Outpost code (dist/)', (x) => x.callFrame.url.includes(`${ROOT}/dist/`) && !x.callFrame.url.includes('/node_modules/')],
      ['garbage collector', (x) => x.callFrame.functionName === '(garbage collector)'],
      ['(program): native code with no JS frame (OpenSSL, libuv, nghttp2 callbacks…)', (x) => x.callFrame.functionName === '(program)'],
      ['native calls from JS (writev, writeBuffer, writeUtf8String…: TLS encryption and the socket write)', (x) => x.callFrame.url === '' && !/^\(/.test(x.callFrame.functionName)],
    ];
    const other = 'other (node:events, streams, timers, node_modules…)';
    const selfOf = new Map<string, number>();
    const self = new Map<string, number>();
    const inclusive = new Map<string, number>();
    let total = 0;
    let t = prof.startTime;
    for (let i = 0; i < prof.samples.length; i++) {
      t += prof.timeDeltas[i] ?? 0;
      const dt = prof.timeDeltas[i + 1] ?? 0;
      if (t < windowStart || t > windowEnd) continue;
      const node = byId.get(prof.samples[i]!);
      if (!node || node.callFrame.functionName === '(idle)') continue;
      const key = label(node);
      self.set(key, (self.get(key) ?? 0) + dt);
      total += dt;
      const hit = new Set<string>();
      for (let cur: number | undefined = node.id; cur !== undefined; cur = parent.get(cur)) {
        const x = byId.get(cur)!;
        for (const [bucket, match] of buckets) if (!hit.has(bucket) && match(x)) hit.add(bucket);
      }
      for (const bucket of hit) inclusive.set(bucket, (inclusive.get(bucket) ?? 0) + dt);
      const leaf = buckets.find(([, match]) => match(node))?.[0] ?? other;
      selfOf.set(leaf, (selfOf.get(leaf) ?? 0) + dt);
    }
    if (best && best.busyMs >= total / 1000) continue;
    best = {
      file: name,
      busyMs: total / 1000,
      windowMs: (windowEnd - windowStart) / 1000,
      top: [...self.entries()].sort((a, b) => b[1] - a[1]).slice(0, n).map(([k, us]) => ({ label: k, ms: us / 1000, share: total ? us / total : 0 })),
      buckets: [...buckets.map(([bucket]) => ({ name: bucket, share: total ? (inclusive.get(bucket) ?? 0) / total : 0, self: total ? (selfOf.get(bucket) ?? 0) / total : 0 })), { name: other, share: Number.NaN, self: total ? (selfOf.get(other) ?? 0) / total : 0 }],
    };
  }
  return best;
}
