/**
 * The HTTPS listener with several workers (issue 12): every worker serves TLS and HTTP/2, a
 * session ticket from one worker resumes on any other (the primary shares the ticket key), and
 * a PROXY header's client reaches whichever worker accepts the connection.
 */
import test from 'ava';
import { mkdtempSync, rmSync } from 'node:fs';
import http2 from 'node:http2';
import { connect as netConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';
import { send, startOrigin } from '../helpers/harness.js';
import { makeCertificate, writePair } from '../helpers/certificates.js';
import { startCluster } from '../helpers/cluster.js';

async function tlsCluster(t: Parameters<typeof startCluster>[0], extra: string[] = []) {
  const origin = await startOrigin((req, res) => send(res, 200, { 'cache-control': 'max-age=60' }, `xff=${req.headers['x-forwarded-for']}`));
  t.teardown(() => origin.close());
  const dir = mkdtempSync(join(tmpdir(), 'outpost-tls-cluster-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const pem = await makeCertificate(['localhost']);
  const pair = writePair(dir, 'edge', pem);
  const node = await startCluster(t, origin.url, { workers: 2, args: ['--worker-scheduling', 'round-robin', '--listen-tls', '127.0.0.1:0', '--tls-cert', pair.certFile, '--tls-key', pair.keyFile, ...extra] });
  const tlsUrl = /listening on \S+ and (https:\/\/[^,\s]+)/.exec(node.stderr())?.[1];
  if (!tlsUrl) throw new Error(`no https URL in: ${node.stderr()}`);
  return { node, tlsUrl, pem };
}

/** One TLS connection: which worker answered (X-Served-By over HTTP/1.1), whether the session was resumed, and its ticket. */
function visit(url: string, ca: string, session: Buffer | undefined): Promise<{ worker: string; reused: boolean; session: Buffer | undefined }> {
  const { port } = new URL(url);
  return new Promise((resolve, reject) => {
    let ticket: Buffer | undefined;
    const socket: TLSSocket = tlsConnect({ host: '127.0.0.1', port: Number(port), servername: 'localhost', ca, ...(session ? { session } : {}), ALPNProtocols: ['http/1.1'] });
    socket.on('session', (s: Buffer) => (ticket = s));
    socket.on('error', reject);
    let text = '';
    socket.on('data', (chunk: Buffer) => (text += chunk.toString('latin1')));
    socket.on('end', () => resolve({ worker: /x-served-by: (\S+)/i.exec(text)?.[1] ?? '?', reused: socket.isSessionReused(), session: ticket }));
    socket.on('secureConnect', () => socket.write('GET /__outpost/health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n'));
  });
}

test('a session ticket issued by one worker resumes on every other worker', async (t) => {
  const { tlsUrl, pem } = await tlsCluster(t);
  const first = await visit(tlsUrl, pem.cert, undefined);
  t.truthy(first.session);
  const workers = new Set<string>();
  let resumed = 0;
  for (let i = 0; i < 40; i++) {
    const next = await visit(tlsUrl, pem.cert, first.session);
    workers.add(next.worker);
    if (next.reused) resumed++;
  }
  t.is(workers.size, 2, `both workers accepted connections: ${[...workers].join(', ')}`);
  t.is(resumed, 40, 'every connection resumed, whichever worker it reached');
});

test('every worker serves HTTP/2 from one node-wide cache', async (t) => {
  const { tlsUrl, pem } = await tlsCluster(t);
  const get = () =>
    new Promise<string>((resolve, reject) => {
      const session = http2.connect(tlsUrl.replace('127.0.0.1', 'localhost'), { ca: pem.cert });
      session.on('error', reject);
      const stream = session.request({ ':path': '/shared' });
      stream.on('response', (headers) => {
        stream.resume();
        stream.on('end', () => {
          resolve(`${headers['x-served-by']} ${headers['cache-status']}`);
          session.close();
        });
      });
    });
  const answers = [];
  for (let i = 0; i < 12; i++) answers.push(await get());
  t.is(answers.filter((a) => a.includes('fwd=uri-miss')).length, 1, answers.join('\n'));
  t.is(new Set(answers.map((a) => a.split(' ')[0])).size, 2, 'both workers answered');
});

test('with --proxy-protocol every worker takes the client from the PROXY header', async (t) => {
  const { node } = await tlsCluster(t, ['--proxy-protocol', '--trusted-proxy', '127.0.0.1']);
  const port = Number(new URL(node.url).port);
  const seen = new Set<string>();
  for (let i = 0; i < 16; i++) {
    const client = `198.51.100.${i + 1}`;
    const reply = await new Promise<string>((resolve, reject) => {
      const socket = netConnect(port, '127.0.0.1', () => socket.write(`PROXY TCP4 ${client} 127.0.0.1 40000 80\r\nGET /p${i} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`));
      let text = '';
      socket.on('data', (chunk: Buffer) => (text += chunk.toString('latin1')));
      socket.on('end', () => resolve(text));
      socket.on('error', reject);
    });
    t.true(reply.includes(`xff=${client}`), reply);
    seen.add(/x-served-by: (\S+)/i.exec(reply)?.[1] ?? '?');
  }
  t.is(seen.size, 2, 'both workers took PROXY connections');
});
