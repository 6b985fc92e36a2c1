/**
 * The built-in rule set end to end (issue 11): every request of the two corpora sent as raw bytes
 * to a real edge in block mode at paranoia 1. An attack counts as stopped when the edge answers
 * 4xx and the origin never sees it (a 400 from the HTTP parser counts: smuggling shapes die
 * there); an ordinary request must reach the origin and come back 200. No crash, no hang.
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import { connect } from 'node:net';
import { fetchFrom, send, setup } from '../helpers/harness.js';

interface CorpusRequest {
  name: string;
  method: string;
  path: string;
  query: string;
  headers: Record<string, string>;
  rawHeaders?: string[];
  body?: string;
  bodyBase64?: string;
  expect?: string;
}

const corpus = (file: string): CorpusRequest[] => JSON.parse(readFileSync(new URL(`../../../test/fixtures/waf/${file}`, import.meta.url), 'utf8')) as CorpusRequest[];
const attacks = corpus('attacks.json');
const ordinary = corpus('benign.json');

/** The request as bytes, with an id header the origin reports back. */
function wire(r: CorpusRequest, id: number): Buffer {
  const body = r.bodyBase64 !== undefined ? Buffer.from(r.bodyBase64, 'base64') : Buffer.from(r.body ?? '', 'utf8');
  const pairs: Array<[string, string]> = [];
  if (r.rawHeaders) for (let i = 0; i + 1 < r.rawHeaders.length; i += 2) pairs.push([r.rawHeaders[i]!, r.rawHeaders[i + 1]!]);
  else for (const [name, value] of Object.entries(r.headers)) pairs.push([name, value]);
  const names = new Set(pairs.map(([name]) => name.toLowerCase()));
  if (body.length > 0 && !names.has('content-length') && !names.has('transfer-encoding')) pairs.push(['Content-Length', String(body.length)]);
  // An ordinary chunked upload: its body framed as chunks (attack shapes carry their own bytes).
  const chunked = !r.expect && pairs.some(([n, v]) => n.toLowerCase() === 'transfer-encoding' && v.toLowerCase() === 'chunked') && !/\r\n0\r\n\r\n$/.test(body.toString('latin1'));
  const framed = chunked ? Buffer.concat([Buffer.from(`${body.length.toString(16)}\r\n`), body, Buffer.from('\r\n0\r\n\r\n')]) : body;
  pairs.push(['X-Corpus-Id', String(id)], ['Connection', 'close']);
  const target = r.query ? `${r.path}?${r.query}` : r.path;
  const head = `${r.method} ${target} HTTP/1.1\r\n${pairs.map(([n, v]) => `${n}: ${v}`).join('\r\n')}\r\n\r\n`;
  return Buffer.concat([Buffer.from(head, 'latin1'), framed]);
}

/** Sends raw bytes; resolves to the status the edge answered (0: closed without an answer). */
function statusOf(base: string, bytes: Buffer): Promise<number> {
  const { hostname, port } = new URL(base);
  return new Promise((resolve) => {
    const socket = connect(Number(port), hostname);
    let received = '';
    // The final status: interim ones (100 Continue) come first.
    const final = () => [...received.matchAll(/HTTP\/1\.[01] (\d{3})/g)].map((m) => Number(m[1])).find((status) => status >= 200);
    const done = () => {
      clearTimeout(timer);
      socket.destroy();
      resolve(final() ?? 0);
    };
    const timer = setTimeout(done, 10_000);
    socket.on('data', (c: Buffer) => {
      received += c.toString('latin1');
      if (final() !== undefined) done();
    });
    socket.on('close', done);
    socket.on('error', done);
    socket.write(bytes);
  });
}

async function run(base: string, list: CorpusRequest[], offset: number): Promise<number[]> {
  const statuses: number[] = new Array(list.length);
  let next = 0;
  await Promise.all(
    Array.from({ length: 16 }, async () => {
      while (next < list.length) {
        const i = next++;
        statuses[i] = await statusOf(base, wire(list[i]!, offset + i));
      }
    }),
  );
  return statuses;
}

test('block mode, paranoia 1: ≥ 95 % of the attack corpus stopped, no ordinary request refused, the node keeps serving', async (t) => {
  t.timeout(120_000);
  t.true(attacks.length >= 300, `${attacks.length} attacks`);
  t.true(ordinary.length >= 300, `${ordinary.length} ordinary requests`);
  const seen = new Set<number>();
  const { edge } = await setup(
    t,
    (req, res) => {
      seen.add(Number(req.headers['x-corpus-id']));
      send(res, 200, { 'cache-control': 'no-store' });
    },
    { waf: 'block' },
  );
  const attackStatuses = await run(edge.url, attacks, 0);
  const missed = attacks.filter((_, i) => !(attackStatuses[i]! >= 400 && attackStatuses[i]! < 500 && !seen.has(i)));
  const rate = 1 - missed.length / attacks.length;
  t.true(rate >= 0.95, `stopped ${(rate * 100).toFixed(1)} %; missed:\n${missed.map((r) => r.name).join('\n')}`);
  const offset = attacks.length;
  const ordinaryStatuses = await run(edge.url, ordinary, offset);
  const refused = ordinary.filter((_, i) => ordinaryStatuses[i] !== 200 || !seen.has(offset + i));
  t.deepEqual(
    refused.map((r) => `${r.name}: ${ordinaryStatuses[ordinary.indexOf(r)]}`),
    [],
    `false positives (${refused.length} of ${ordinary.length})`,
  );
  t.is((await fetchFrom(edge.url, '/still-serving')).status, 200);
  t.log(`attacks stopped: ${(rate * 100).toFixed(1)} % of ${attacks.length}; ordinary refused: ${refused.length} of ${ordinary.length}`);
});
