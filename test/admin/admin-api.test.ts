/**
 * The admin API (issue 10) on real nodes with 2 workers each: an edge in front of a shield in
 * front of a counting origin, as processes on loopback. Purges of every kind reach every tier of
 * both nodes (the edge forwards to the shield, its purge peer); requests after a purge's reply
 * never get purged content; tokens are required; the outbox survives a restart of the sender;
 * SIGHUP applies a good config and keeps the old one for a bad one; /metrics parses as Prometheus text.
 */
import test from 'ava';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import parsePrometheusTextFormat from 'parse-prometheus-text-format';
import { delay, send, startOrigin, waitFor } from '../helpers/harness.js';
import { BIN, freePort, getFresh, getOn, startCluster, versionedOrigin, type RunningCluster } from '../helpers/cluster.js';

const TOKEN = 'edge-token-0123456789';
const SHIELD_TOKEN = 'shield-token-9876543210';

/** Origin ← shield (2 workers) ← edge (2 workers), the edge forwarding purges to the shield. */
async function chain(t: Parameters<typeof startCluster>[0]) {
  const origin = await versionedOrigin(t);
  const shield = await startCluster(t, origin.url, { workers: 2, role: 'shield', token: SHIELD_TOKEN });
  const dir = mkdtempSync(join(tmpdir(), 'outpost-admin-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const config = join(dir, 'edge.json');
  writeFileSync(config, JSON.stringify({ purgePeers: [{ url: shield.admin, token: SHIELD_TOKEN }] }));
  const edge = await startCluster(t, shield.url, { workers: 2, token: TOKEN, args: ['--config', config] });
  return { origin, shield, edge };
}

const keyOf = (node: RunningCluster, path: string) => `${node.url}${path}`;

test.serial('purges by URL, prefix, tag and all, hard and soft, reach every tier of edge and shield; no request after the reply gets purged content', async (t) => {
  const { origin, shield, edge } = await chain(t);
  const cases: Array<{ name: string; paths: string[]; kept: string[]; body: (edge: RunningCluster) => Record<string, unknown> }> = [
    { name: 'url', paths: ['/u/a?q=1'], kept: ['/u/b?q=1', '/u/c'], body: (e) => ({ url: keyOf(e, '/u/a?q=1') }) },
    { name: 'prefix', paths: ['/p/x/1', '/p/x/2'], kept: ['/p/y/1'], body: (e) => ({ prefix: keyOf(e, '/p/x/') }) },
    { name: 'tags', paths: ['/t/1', '/t/2'], kept: ['/other/1'], body: () => ({ tags: ['section-t'] }) },
  ];
  for (const { name, paths, kept, body } of cases) {
    for (const path of [...paths, ...kept]) await getFresh(edge.url, path);
    // A second round so that both workers of the edge hold copies (and the shield's owner its disk entry).
    for (const path of [...paths, ...kept]) for (let i = 0; i < 4; i++) t.is((await getFresh(edge.url, path)).text, `${path.split('?')[0]} v1`);
    const reply = await edge.purge(body(edge));
    t.is(reply.status, 200, name);
    t.true((reply.json['affected'] as number) >= paths.length, `${name}: ${JSON.stringify(reply.json)}`);
    t.deepEqual(reply.json['peers'], [{ peer: shield.admin, result: 'ok' }], name);
    for (const path of paths) {
      const before = origin.count(path);
      for (let i = 0; i < 4; i++) t.is((await getFresh(edge.url, path)).text, `${path.split('?')[0]} v2`, `${name}: ${path} is fetched from the origin again`);
      t.is(origin.count(path), before + 1, `${name}: one fetch through both tiers`);
    }
    for (const path of kept) t.is((await getFresh(edge.url, path)).text, `${path.split('?')[0]} v1`, `${name}: ${path} is not purged`);
  }
  // all, hard: everything goes, in both tiers.
  const all = await edge.purge({ all: true });
  t.is(all.status, 200);
  t.is((await getFresh(edge.url, '/u/c')).text, '/u/c v2');
  // soft (RFC 5861-style): the next request gets the stale copy while one revalidation runs; then the new one.
  await getFresh(edge.url, '/soft/1');
  const soft = await edge.purge({ url: keyOf(edge, '/soft/1'), soft: true });
  t.is(soft.status, 200);
  t.true((soft.json['affected'] as number) >= 1);
  const stale = await getFresh(edge.url, '/soft/1');
  t.is(stale.text, '/soft/1 v1', 'a soft-purged object is served stale once');
  // Generous: on a loaded 2-core CI machine the revalidation through both tiers can take seconds.
  t.true(await waitFor(() => origin.count('/soft/1') >= 2, 15_000), 'one background revalidation reaches the origin');
  t.is(origin.count('/soft/1'), 2, 'only one');
  t.true(await waitFor(async () => (await getFresh(edge.url, '/soft/1')).text === '/soft/1 v2', 15_000), 'then the new version is served');
  const shieldStats = await shield.stats();
  t.is(shieldStats.purges.accepted, 5, 'the shield applied every purge the edge forwarded');
});

test.serial('a purge racing a fill in flight: the request after the reply gets a new fetch, not the body that was streaming', async (t) => {
  const { origin, edge } = await chain(t);
  const inFlight = getFresh(edge.url, '/race/1?delay=600');
  await delay(200);
  const reply = await edge.purge({ url: keyOf(edge, '/race/1?delay=600') });
  t.is(reply.status, 200);
  const after = await getFresh(edge.url, '/race/1?delay=600');
  t.is((await inFlight).text, '/race/1 v1', 'the request that started before the purge gets its response');
  t.is(after.text, '/race/1 v2', 'the one after the reply does not get the purged fill');
  t.is(origin.count('/race/1?delay=600'), 2);
});

test.serial('a purge, hard or soft, while a fill\'s body streams: the body reaches its client but is not stored in either tier', async (t) => {
  const { origin, edge } = await chain(t);
  for (const soft of [false, true]) {
    const path = `/body-race/${soft ? 'soft' : 'hard'}?trickle=800`;
    const inFlight = getFresh(edge.url, path);
    await delay(300);
    const reply = await edge.purge({ url: keyOf(edge, path), soft });
    t.is(reply.status, 200);
    t.is((await inFlight).text, `${path.split('?')[0]} v1`, 'the request that started before the purge gets its response');
    // Its commits would have landed by now, in the edge and in the shield.
    await delay(300);
    t.is((await getFresh(edge.url, path)).text, `${path.split('?')[0]} v2`, `${soft ? 'soft' : 'hard'}: the body that predates the purge was not stored as fresh`);
    t.is(origin.count(path), 2);
  }
});

test.serial('every call but /healthz and /readyz needs the token; a wrong one is refused (401) and logged without the token', async (t) => {
  const origin = await versionedOrigin(t);
  const node = await startCluster(t, origin.url, { workers: 2, token: TOKEN });
  t.is((await fetch(`${node.admin}/healthz`)).status, 200);
  const ready = await fetch(`${node.admin}/readyz`);
  t.is(ready.status, 200);
  t.deepEqual(await ready.json(), { ready: true });
  const wrong = 'not-the-token-zzzz';
  for (const [path, method] of [
    ['/stats', 'GET'],
    ['/metrics', 'GET'],
    ['/cache?url=http://a/', 'GET'],
    ['/purge', 'POST'],
  ] as const) {
    t.is((await fetch(`${node.admin}${path}`, { method, body: method === 'POST' ? '{"all":true}' : undefined })).status, 401, `${path} without a token`);
    const refused = await fetch(`${node.admin}${path}`, { method, headers: { authorization: `Bearer ${wrong}` }, body: method === 'POST' ? '{"all":true}' : undefined });
    t.is(refused.status, 401, `${path} with a wrong token`);
    t.is(refused.headers.get('www-authenticate'), 'Bearer realm="outpost-admin"');
    t.is((await fetch(`${node.admin}${path}`, { method, headers: { authorization: `Bearer ${TOKEN}x` }, body: method === 'POST' ? '{"all":true}' : undefined })).status, 401, 'a longer token');
  }
  t.is((await fetch(`${node.admin}/stats`, { headers: { authorization: `Bearer ${TOKEN}` } })).status, 200);
  await delay(100);
  const logs = node.stdout() + node.stderr();
  t.regex(logs, /admin call refused/);
  t.false(logs.includes(wrong), 'the wrong token is not logged');
  t.false(logs.includes(TOKEN), 'nor the right one');
  // The public listener never answers admin paths.
  t.is((await getFresh(node.url, '/purge', 'POST')).text.includes('affected'), false);
});

test.serial('a node listening beyond loopback without a token refuses to start, naming the field', async (t) => {
  const child = spawn(process.execPath, [BIN, 'edge', '--upstream', 'http://127.0.0.1:1', '--admin-listen', '0.0.0.0:0', '--workers', '1'], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
  t.is(code, 2);
  t.regex(stderr, /invalid adminToken .*beyond loopback/);
});

test.serial('bad purge input gets a 400 naming the problem', async (t) => {
  const origin = await versionedOrigin(t);
  const node = await startCluster(t, origin.url, { workers: 2, token: TOKEN });
  const post = async (body: string) => {
    const response = await fetch(`${node.admin}/purge`, { method: 'POST', body, headers: { authorization: `Bearer ${TOKEN}` } });
    return { status: response.status, error: String(((await response.json()) as { error?: string }).error) };
  };
  const cases: Array<[string, RegExp]> = [
    ['{"url": ', /malformed JSON/],
    ['{"url": "http://a/", "force": true}', /unknown field "force"/],
    ['{"tags": []}', /tags must be a non-empty list/],
    ['{"url": "ftp://a/b"}', /url must be an http:\/\/ or https:\/\/ URL/],
    ['{"prefix": "/relative"}', /prefix must be an absolute/],
    ['{"url": "http://a/", "all": true}', /exactly one of url, prefix, tags, all \(got url and all\)/],
    ['{}', /exactly one .*got none/],
    [`{"tags": ["${'x'.repeat(1024 * 1024)}"]}`, /over 1 MiB/],
  ];
  for (const [body, error] of cases) {
    const reply = await post(body);
    t.is(reply.status, 400, body.slice(0, 40));
    t.regex(reply.error, error);
  }
  t.is((await getFresh(node.url, '/still-serving')).status, 200);
});

test.serial('GET /cache shows every stored variant of a URL: status, headers, times, size, tags and tier, with no body', async (t) => {
  const origin = await startOrigin((req, res) => {
    const lang = String(req.headers['accept-language'] ?? 'none');
    send(res, 200, { 'cache-control': 'max-age=60, stale-while-revalidate=30', vary: 'Accept-Language', 'surrogate-key': 'docs lang-' + lang }, `secret body in ${lang}`);
  });
  t.teardown(() => origin.close());
  const node = await startCluster(t, origin.url, { workers: 2, token: TOKEN });
  const before = Date.now();
  for (const lang of ['en', 'fr']) await fetch(`${node.url}/doc?x=1`, { headers: { 'accept-language': lang } });
  const after = Date.now();
  const inspect = async () => {
    const response = await fetch(`${node.admin}/cache?url=${encodeURIComponent(`${node.url}/doc?x=1`)}`, { headers: { authorization: `Bearer ${TOKEN}` } });
    t.is(response.status, 200);
    const text = await response.text();
    t.false(text.includes('secret body'), 'the body is not shown');
    return JSON.parse(text) as { url: string; variants: Array<Record<string, unknown>> };
  };
  // The owner worker holds each variant on disk (and may in memory); the other may hold a memory
  // copy. A disk commit lands just after the response is delivered: poll until both have.
  const onDisk = (variants: Array<Record<string, unknown>>) => variants.filter((v) => v['kind'] === 'response' && (v['tiers'] as string[]).includes('disk'));
  let inspected = await inspect();
  for (const deadline = Date.now() + 5_000; onDisk(inspected.variants).length < 2 && Date.now() < deadline; ) {
    await delay(20);
    inspected = await inspect();
  }
  t.is(inspected.url, `${node.url}/doc?x=1`, 'the URL is keyed as the pipeline keys it');
  const responses = onDisk(inspected.variants);
  t.deepEqual(responses.map((v) => v['variant']).sort(), ['accept-language=en', 'accept-language=fr']);
  for (const v of responses) {
    t.is(v['status'], 200);
    t.is(v['size'], `secret body in ${String(v['variant']).slice(-2)}`.length);
    t.deepEqual(v['tags'], ['docs', `lang-${String(v['variant']).slice(-2)}`]);
    t.true((v['headers'] as string[][]).some(([name, value]) => name === 'cache-control' && value === 'max-age=60, stale-while-revalidate=30'));
    // Freshness starts at the response's Date (one-second resolution), sent while the test fetched.
    const staleAt = Date.parse(String(v['staleAt']));
    t.true(staleAt >= before - 1_000 + 60_000 && staleAt <= after + 60_000, `staleAt ${staleAt - before} ms after the fetches began`);
    t.is(Date.parse(String(v['graceUntil'])) - staleAt, 30_000, 'stale-while-revalidate=30');
  }
  t.true(inspected.variants.some((v) => v['kind'] === 'vary' && (v['varyOn'] as string[])[0] === 'accept-language'));
  const missing = await fetch(`${node.admin}/cache`, { headers: { authorization: `Bearer ${TOKEN}` } });
  t.is(missing.status, 400);
});

test.serial('/metrics parses as Prometheus text and sums the workers: requests by outcome and status class, latency histograms, tiers, upstream health, purges', async (t) => {
  const origin = await versionedOrigin(t);
  const node = await startCluster(t, origin.url, { workers: 2, token: TOKEN });
  for (let i = 0; i < 10; i++) await getFresh(node.url, `/m/${i}`);
  for (let i = 0; i < 10; i++) await getFresh(node.url, `/m/${i}`);
  await getFresh(node.url, '/__outpost/health');
  await node.purge({ tags: ['section-none'] });
  // Disk commits land just after their responses: wait for the tenth.
  t.true(await waitFor(async () => (await node.stats()).tiers.disk.entries === 10, 5_000));
  const text = await (await fetch(`${node.admin}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } })).text();
  const families = new Map(parsePrometheusTextFormat(text).map((family) => [family.name, family]));
  const values = (name: string) => (families.get(name)?.metrics ?? []) as Array<{ value?: string; labels?: Record<string, string>; count?: string; buckets?: Record<string, string> }>;
  const requests = values('outpost_requests_total');
  const count = (outcome: string) => requests.filter((m) => m.labels?.['outcome'] === outcome && m.labels?.['status_class'] === '2xx').reduce((sum, m) => sum + Number(m.value), 0);
  t.is(count('miss'), 10);
  t.is(count('hit'), 10);
  t.is(families.get('outpost_request_duration_seconds')?.type, 'HISTOGRAM');
  // The +Inf bucket counts every observation.
  t.is(Number(values('outpost_request_duration_seconds')[0]?.buckets?.['+Inf']), 21, 'every client request, summed over both workers');
  t.is(Number(values('outpost_upstream_duration_seconds')[0]?.buckets?.['+Inf']), 10, 'one upstream request per miss');
  t.true(Number(values('outpost_response_body_bytes_total')[0]?.value) > 0);
  const disk = values('outpost_store_entries').find((m) => m.labels?.['tier'] === 'disk');
  t.is(Number(disk?.value), 10);
  t.deepEqual(
    values('outpost_upstream_healthy').map((m) => [m.labels?.['member'], Number(m.value)]),
    [['upstream', 1]],
  );
  t.is(Number(values('outpost_purges_total').find((m) => m.labels?.['kind'] === 'tags')?.value), 1);
  t.is(Number(values('outpost_workers_ready')[0]?.value), 2);
  t.truthy(families.get('outpost_collapsed_requests_total'));
  t.truthy(families.get('outpost_store_evictions_total'));
  const stats = await node.stats();
  t.is(stats.hitRatio, 0.5);
  t.is(stats.tiers.disk.entries, 10);
  t.is(stats.collapsedRequests, 0);
});

test.serial('collapsed requests are counted node-wide: a stampede on one key is one fetch, the others waited for it', async (t) => {
  const origin = await versionedOrigin(t);
  // Two workers: requests for a key owned elsewhere wait at the owner, and the owner's detail travels back.
  const node = await startCluster(t, origin.url, { workers: 2, token: TOKEN });
  // Five connections on each worker: whichever owns the key, five requests come over the hop.
  const clients = await Promise.all(Array.from({ length: 10 }, (_, i) => node.clientOn(i % 2)));
  const replies = await Promise.all(clients.map((client) => getOn(client, '/stampede?delay=400')));
  t.true(replies.every((r) => r.text === '/stampede v1'));
  t.is(origin.count('/stampede?delay=400'), 1);
  t.is((await node.stats()).collapsedRequests, 9);
  const text = await (await fetch(`${node.admin}/metrics`, { headers: { authorization: `Bearer ${TOKEN}` } })).text();
  t.regex(text, /^outpost_collapsed_requests_total\{role="edge"\} 9$/m);
});

test.serial('a purge for a peer that is down is queued in the outbox, survives a restart of the sender, and reaches the peer when it comes back', async (t) => {
  const origin = await versionedOrigin(t);
  const shieldAdminPort = await freePort();
  const dataDir = mkdtempSync(join(tmpdir(), 'outpost-outbox-node-'));
  t.teardown(() => rmSync(dataDir, { recursive: true, force: true }));
  const peer = `http://127.0.0.1:${shieldAdminPort}`;
  const edgeArgs = ['--purge-peer', peer, '--purge-retry-sec', '120'];
  const first = await startCluster(t, origin.url, { workers: 2, token: TOKEN, dataDir, args: edgeArgs });
  const reply = await first.purge({ tags: ['section-x'] });
  t.is(reply.status, 200);
  t.is((reply.json['peers'] as Array<{ result: string }>)[0]?.result, 'queued');
  t.deepEqual((await first.stats()).purgePeers.pending, { [peer]: 1 });
  first.child.kill('SIGTERM');
  await first.exit;
  // The peer (a shield sharing the edge's token) comes up on the address the edge was given.
  const shield = await startCluster(t, origin.url, { workers: 2, role: 'shield', token: TOKEN, args: ['--admin-listen', `127.0.0.1:${shieldAdminPort}`] });
  const second = await startCluster(t, origin.url, { workers: 2, token: TOKEN, dataDir, args: edgeArgs });
  t.true(await waitFor(async () => (await shield.stats()).purges.accepted === 1, 15_000), 'the restarted edge delivered the queued purge');
  t.true(await waitFor(async () => Object.keys((await second.stats()).purgePeers.pending).length === 0, 5_000));
});

test.serial('SIGTERM: readiness turns false at once, purges are refused, and requests in flight finish', async (t) => {
  const origin = await versionedOrigin(t);
  const node = await startCluster(t, origin.url, { workers: 2, token: TOKEN });
  const inFlight = Array.from({ length: 10 }, (_, i) => getFresh(node.url, `/slow/${i}?delay=800`));
  await delay(200);
  node.child.kill('SIGTERM');
  await delay(100);
  const ready = await fetch(`${node.admin}/readyz`);
  t.is(ready.status, 503);
  t.deepEqual(await ready.json(), { ready: false, reasons: ['draining'] });
  const purge = await fetch(`${node.admin}/purge`, { method: 'POST', body: '{"all": true}', headers: { authorization: `Bearer ${TOKEN}` } });
  t.is(purge.status, 503, 'a purge while draining is refused, so that the caller retries: a worker that left would miss it');
  const replies = await Promise.all(inFlight);
  t.true(replies.every((r, i) => r.status === 200 && r.text === `/slow/${i} v1`));
  t.is((await node.exit).code, 0);
});

test.serial('SIGHUP applies a changed config (new origin) and keeps the old one when the new one is invalid, naming the field', async (t) => {
  const first = await startOrigin((req, res) => send(res, 200, { 'cache-control': 'no-store' }, 'first origin'));
  const second = await startOrigin((req, res) => send(res, 200, { 'cache-control': 'no-store' }, 'second origin'));
  t.teardown(async () => {
    await first.close();
    await second.close();
  });
  const dir = mkdtempSync(join(tmpdir(), 'outpost-reload-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const config = join(dir, 'shield.json');
  writeFileSync(config, JSON.stringify({ origins: [first.url] }));
  const shield = await startCluster(t, '', { workers: 2, role: 'shield', token: TOKEN, args: ['--config', config] });
  t.is((await getFresh(shield.url, '/x')).text, 'first origin');
  const reloads = () => (shield.stdout().match(/"worker reloaded"/g) ?? []).length;
  // Invalid: a bad value, named; the node keeps serving from the first origin.
  writeFileSync(config, JSON.stringify({ origins: [first.url], maxAttempts: 'many' }));
  shield.child.kill('SIGHUP');
  t.true(await waitFor(() => /the new config is invalid/.test(shield.stdout()), 5_000));
  t.regex(shield.stdout(), /"field":"maxAttempts"/);
  t.is(reloads(), 0);
  for (let i = 0; i < 4; i++) t.is((await getFresh(shield.url, '/x')).text, 'first origin');
  // Valid: new requests go to the new origin, on every worker.
  writeFileSync(config, JSON.stringify({ origins: [second.url], defaultTtlSec: 5 }));
  shield.child.kill('SIGHUP');
  t.true(await waitFor(() => reloads() === 2, 5_000));
  for (let i = 0; i < 6; i++) t.is((await getFresh(shield.url, '/x')).text, 'second origin');
  t.is((await fetch(`${shield.admin}/readyz`)).status, 200);
});

test.serial('edges that list each other as purge peers apply a purge once each: a forwarded purge is not forwarded again', async (t) => {
  const origin = await versionedOrigin(t);
  const [portA, portB] = [await freePort(), await freePort()];
  const a = await startCluster(t, origin.url, { workers: 1, token: TOKEN, args: ['--admin-listen', `127.0.0.1:${portA}`, '--purge-peer', `http://127.0.0.1:${portB}`] });
  const b = await startCluster(t, origin.url, { workers: 1, token: TOKEN, args: ['--admin-listen', `127.0.0.1:${portB}`, '--purge-peer', `http://127.0.0.1:${portA}`] });
  const reply = await a.purge({ tags: ['section-x'] });
  t.deepEqual(reply.json['peers'], [{ peer: `http://127.0.0.1:${portB}`, result: 'ok' }]);
  await delay(300);
  t.is((await a.stats()).purges.accepted, 1);
  t.is((await b.stats()).purges.accepted, 1);
});
