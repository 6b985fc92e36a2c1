/**
 * Integration tests of the shield tier: real origins, shields and edges on 127.0.0.1 wired as
 * edge → shields (consistent-hash ring) → origin pools. No mocks.
 */
import test from 'ava';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { delay, fetchFrom, header, startOrigin, startTestEdge, type Reply, type TestOrigin } from '../helpers/harness.js';
import { Pool } from 'undici';
import { ShieldRing } from '../../origin-shield/shield-ring.js';
import { cacheStatusMembers, memberOf, startTestShield } from './fixtures/chain.js';

const HOST = 'www.test';

/** Cacheable unless the path starts with /nocache; the body names the origin and the path. */
function objectHandler(name: string) {
  return (req: IncomingMessage, res: ServerResponse) => {
    const path = req.url ?? '/';
    const cacheControl = path.startsWith('/nocache') ? 'no-store' : 'max-age=60';
    res.writeHead(200, { 'cache-control': cacheControl, 'content-type': 'text/plain', 'x-origin': name });
    res.end(`${name} ${path}`);
  };
}

async function startOrigins(names: string[]): Promise<TestOrigin[]> {
  return Promise.all(names.map((name) => startOrigin(objectHandler(name))));
}

function get(base: string, path: string, host = HOST): Promise<Reply> {
  return fetchFrom(base, path, { headers: { host } });
}

function totalCount(origins: TestOrigin[], path: string): number {
  return origins.reduce((sum, o) => sum + o.count(path), 0);
}

/** Which shield (by nodeName) stored the object on this request, per its Cache-Status member. */
function storingShield(reply: Reply, names: string[]): string | undefined {
  const cs = header(reply, 'cache-status');
  return names.find((n) => / stored|; stored/.test(memberOf(cs, n) ?? ''));
}

/** Which shield (by nodeName) answered this request at all. */
function answeringShield(reply: Reply, names: string[]): string | undefined {
  const cs = header(reply, 'cache-status');
  return names.find((n) => memberOf(cs, n) !== undefined);
}

async function inBatches<T>(items: T[], size: number, fn: (item: T) => Promise<void>): Promise<void> {
  for (let i = 0; i < items.length; i += size) await Promise.all(items.slice(i, i + size).map(fn));
}

test('three origins, two shields, one edge: each object reaches the origins once; both shields own keys; second pass all edge hits', async (t) => {
  const origins = await startOrigins(['o1', 'o2', 'o3']);
  const urls = origins.map((o) => o.url);
  const shieldA = await startTestShield(urls, { nodeName: 'shield-a' });
  const shieldB = await startTestShield(urls, { nodeName: 'shield-b' });
  const edge = await startTestEdge([shieldA.url, shieldB.url]);
  t.teardown(async () => {
    await edge.close();
    await Promise.all([shieldA.close(), shieldB.close()]);
    await Promise.all(origins.map((o) => o.close()));
  });

  const paths = Array.from({ length: 60 }, (_, i) => `/object/${i}`);
  const storedBy = new Map<string, number>();
  await inBatches(paths, 10, async (path) => {
    const reply = await get(edge.url, path);
    t.is(reply.status, 200, path);
    t.true(reply.text.endsWith(` ${path}`), `${path}: ${reply.text}`);
    const shield = storingShield(reply, ['shield-a', 'shield-b']);
    t.truthy(shield, `${path}: no shield stored it: ${header(reply, 'cache-status')}`);
    storedBy.set(shield!, (storedBy.get(shield!) ?? 0) + 1);
  });
  for (const path of paths) t.is(totalCount(origins, path), 1, `origins saw ${path} ${totalCount(origins, path)} times`);
  t.is(origins.reduce((s, o) => s + o.count(), 0), 60);
  t.true((storedBy.get('shield-a') ?? 0) > 0, `shield-a owns no keys: ${JSON.stringify([...storedBy])}`);
  t.true((storedBy.get('shield-b') ?? 0) > 0, `shield-b owns no keys: ${JSON.stringify([...storedBy])}`);
  // Round-robin spreads the misses over all three origins.
  for (const origin of origins) t.true(origin.count() > 0);

  await inBatches(paths, 10, async (path) => {
    const reply = await get(edge.url, path);
    t.is(reply.status, 200);
    const members = cacheStatusMembers(header(reply, 'cache-status'));
    t.regex(members[members.length - 1] ?? '', /^outpost-edge; hit/, `${path}: ${header(reply, 'cache-status')}`);
  });
  t.is(origins.reduce((s, o) => s + o.count(), 0), 60, 'second pass reached an origin');
});

test('two edges with the shield list in different orders map every key to the same shield', async (t) => {
  const origins = await startOrigins(['o1', 'o2']);
  const urls = origins.map((o) => o.url);
  const shieldA = await startTestShield(urls, { nodeName: 'shield-a' });
  const shieldB = await startTestShield(urls, { nodeName: 'shield-b' });
  const edge1 = await startTestEdge([shieldA.url, shieldB.url], { nodeName: 'edge-1' });
  const edge2 = await startTestEdge([shieldB.url, shieldA.url], { nodeName: 'edge-2' });
  const ring1 = new ShieldRing({ shields: [shieldA.url, shieldB.url] });
  const ring2 = new ShieldRing({ shields: [shieldB.url, shieldA.url] });
  t.teardown(async () => {
    await Promise.all([ring1.close(), ring2.close()]);
    await Promise.all([edge1.close(), edge2.close()]);
    await Promise.all([shieldA.close(), shieldB.close()]);
    await Promise.all(origins.map((o) => o.close()));
  });

  const names = new Map([[shieldA.url, 'shield-a'], [shieldB.url, 'shield-b']]);
  const paths = Array.from({ length: 40 }, (_, i) => `/shared/${i}`);
  const owners = new Set<string>();
  for (const path of paths) {
    const key = `http://${HOST}${path}`;
    t.is(ring1.ownerOf(key), ring2.ownerOf(key), key);
    owners.add(ring1.ownerOf(key));
  }
  t.is(owners.size, 2, 'both shields own some of the 40 keys');

  await inBatches(paths, 10, async (path) => {
    // Both edges miss; the second request must find the object on the same shield.
    const first = await get(edge1.url, path);
    const second = await get(edge2.url, path);
    t.is(first.status, 200);
    t.is(second.status, 200);
    const owner = names.get(ring1.ownerOf(`http://${HOST}${path}`))!;
    t.is(storingShield(first, ['shield-a', 'shield-b']), owner, `${path} first: ${header(first, 'cache-status')}`);
    t.is(answeringShield(second, ['shield-a', 'shield-b']), owner, `${path} second: ${header(second, 'cache-status')}`);
    t.regex(memberOf(header(second, 'cache-status'), owner) ?? '', /^shield-.; hit/, `${path} second: ${header(second, 'cache-status')}`);
    t.regex(memberOf(header(second, 'cache-status'), 'edge-2') ?? '', /fwd=uri-miss/);
  });
  for (const path of paths) t.is(totalCount(origins, path), 1, `origins saw ${path} ${totalCount(origins, path)} times`);
});

test('an origin killed under load: cached objects never fail, uncached errors stop once it is ejected', async (t) => {
  const origins = await startOrigins(['o1', 'o2', 'o3']);
  const shield = await startTestShield(origins.map((o) => o.url), {
    outlierConsecutiveConnectFailures: 2,
    outlierBaseEjectionMs: 10_000,
  });
  const edge = await startTestEdge(shield.url);
  t.teardown(async () => {
    await edge.close();
    await shield.close();
    await Promise.all(origins.map((o) => o.close()));
  });

  const cached = Array.from({ length: 10 }, (_, i) => `/cached/${i}`);
  for (const path of cached) t.is((await get(shield.url, path)).status, 200);
  for (const path of cached) t.is((await get(edge.url, path)).status, 200);

  const runMs = 3_000;
  const killAt = 1_000;
  const start = Date.now();
  const errors: Array<{ at: number; path: string; via: string; status: number | string; text: string }> = [];
  let requests = 0;
  let uncachedOk = 0;
  const client = async (id: number) => {
    for (let n = 0; Date.now() - start < runMs; n++) {
      const uncached = n % 2 === 1;
      const path = uncached ? `/nocache/${id}/${n}` : cached[(id + n) % cached.length]!;
      // Half the clients go straight to the shield (so its own cache is exercised), half through the edge.
      const base = id % 2 === 0 ? shield.url : edge.url;
      requests++;
      try {
        const reply = await get(base, path);
        if (reply.status !== 200) errors.push({ at: Date.now() - start, path, via: base, status: reply.status, text: reply.text.slice(0, 120) });
        else if (uncached) uncachedOk++;
      } catch (error) {
        errors.push({ at: Date.now() - start, path, via: base, status: (error as Error).message, text: '' });
      }
    }
  };
  const killed = (async () => {
    await delay(killAt);
    await origins[1]!.close();
  })();
  await Promise.all([...Array.from({ length: 20 }, (_, i) => client(i)), killed]);

  t.log(`${requests} requests, ${uncachedOk} uncached ok, ${errors.length} errors`, errors.slice(0, 5));
  t.true(requests > 200, `only ${requests} requests`);
  t.deepEqual(errors.filter((e) => e.path.startsWith('/cached/')), [], 'a cached object failed');
  t.deepEqual(errors.filter((e) => e.at >= runMs - 1_000), [], 'errors in the last second of the run');
  // The killed origin took no traffic after being closed (ejected), the others did.
  const after = origins.map((o) => o.count());
  await Promise.all(Array.from({ length: 12 }, (_, i) => get(shield.url, `/nocache/after/${i}`)));
  t.is(origins[1]!.count(), after[1]);
  t.true(origins[0]!.count() + origins[2]!.count() >= after[0]! + after[2]! + 12);
});

test('a shield closed while the edge runs: its keys move to the other shield without client errors', async (t) => {
  const origins = await startOrigins(['o1', 'o2']);
  const urls = origins.map((o) => o.url);
  const shieldA = await startTestShield(urls, { nodeName: 'shield-a', shutdownTimeoutMs: 5_000 });
  const shieldB = await startTestShield(urls, { nodeName: 'shield-b' });
  const edge = await startTestEdge([shieldA.url, shieldB.url]);
  const ring = new ShieldRing({ shields: [shieldA.url, shieldB.url] });
  t.teardown(async () => {
    await ring.close();
    await edge.close();
    await Promise.all([shieldA.close(), shieldB.close()]);
    await Promise.all(origins.map((o) => o.close()));
  });
  const ownedByA = (path: string) => ring.ownerOf(`http://${HOST}${path}`) === shieldA.url;

  // Distinct never-seen URLs: every request misses at the edge and goes to the ring. Shield A is
  // closed (as on SIGTERM) half a second into the run, while the load goes on.
  type Result = { path: string; status: number | string; shield: string | undefined; sentAt: number };
  const results: Result[] = [];
  const start = Date.now();
  let closeStarted = Number.POSITIVE_INFINITY;
  let closeDone = Number.POSITIVE_INFINITY;
  let stop = false;
  const load = Array.from({ length: 8 }, async (_, client) => {
    for (let n = 0; !stop; n++) {
      const path = `/load/${client}/${n}`;
      const sentAt = Date.now() - start;
      try {
        const reply = await get(edge.url, path);
        results.push({ path, status: reply.status, shield: answeringShield(reply, ['shield-a', 'shield-b']), sentAt });
      } catch (error) {
        results.push({ path, status: (error as Error).message, shield: undefined, sentAt });
      }
    }
  });
  // Close once both shields have served some of the load (not on a fixed clock: CI may be slow).
  const until = async (condition: () => boolean, maxMs: number) => {
    const deadline = Date.now() + maxMs;
    while (!condition() && Date.now() < deadline) await delay(20);
  };
  await until(() => results.filter((r) => r.shield === 'shield-a').length >= 20 && results.length >= 100, 5_000);
  closeStarted = Date.now() - start;
  await shieldA.close();
  closeDone = Date.now() - start;
  // Then go on until plenty of A's keys were requested after the close.
  await until(() => results.filter((r) => r.sentAt > closeDone && ownedByA(r.path)).length >= 100, 5_000);
  stop = true;
  await Promise.all(load);

  const failed = results.filter((r) => r.status !== 200);
  const afterClose = results.filter((r) => r.sentAt > closeDone);
  t.log(`${results.length} requests; close took ${closeDone - closeStarted} ms; ${afterClose.length} sent after it; ${failed.length} failed`, failed.slice(0, 5));
  t.deepEqual(failed, [], 'clients saw errors around the shield going away');
  t.true(results.some((r) => r.sentAt < closeStarted && r.shield === 'shield-a'), 'shield-a took no keys before the close');
  t.true(afterClose.filter((r) => ownedByA(r.path)).length > 10, 'too few keys owned by the closed shield after the close');
  for (const r of afterClose) t.is(r.shield, 'shield-b', `${r.path} (owner ${ownedByA(r.path) ? 'a' : 'b'})`);
  // Keys owned by B never moved.
  for (const r of results.filter((x) => !ownedByA(x.path))) t.is(r.shield, 'shield-b', r.path);
});

test('shield close() finishes the request in flight and then closes its kept-alive connection at once', async (t) => {
  let release: () => void = () => {};
  const released = new Promise<void>((resolve) => (release = resolve));
  const origin = await startOrigin(async (req, res) => {
    if (req.url === '/held') await released;
    res.writeHead(200, { 'cache-control': 'no-store' });
    res.end(`done ${req.url}`);
  });
  const shield = await startTestShield(origin.url, { shutdownTimeoutMs: 3_000 });
  // A client that keeps connections alive for long, like an edge under steady load.
  const client = new Pool(shield.url, { connections: 1, keepAliveTimeout: 60_000, keepAliveMaxTimeout: 60_000 });
  t.teardown(async () => {
    release();
    await client.destroy();
    await shield.close();
    await origin.close();
  });
  const warm = await client.request({ path: '/warm', method: 'GET' });
  t.is(warm.statusCode, 200);
  await warm.body.text();

  const inFlight = client.request({ path: '/held', method: 'GET' });
  while (origin.count('/held') < 1) await delay(5);
  const started = Date.now();
  const closed = shield.close();
  await delay(100);
  release();
  const held = await inFlight;
  t.is(held.statusCode, 200);
  t.is(await held.body.text(), 'done /held');
  await closed;
  const took = Date.now() - started;
  t.true(took < 1_000, `close() took ${took} ms: it waited for the client's idle keep-alive connection (shutdownTimeoutMs 3000)`);
  t.is(held.headers['connection'], 'close', 'a response sent during shutdown should tell the client not to reuse the connection');
});

test('a shield that comes back on its address gets its keys back', async (t) => {
  const origins = await startOrigins(['o1']);
  let shieldA = await startTestShield(origins[0]!.url, { nodeName: 'shield-a' });
  const shieldB = await startTestShield(origins[0]!.url, { nodeName: 'shield-b' });
  const addressA = shieldA.url.replace('http://', '');
  const edge = await startTestEdge([shieldA.url, shieldB.url]);
  t.teardown(async () => {
    await edge.close();
    await Promise.all([shieldA.close(), shieldB.close()]);
    await Promise.all(origins.map((o) => o.close()));
  });
  const paths = Array.from({ length: 20 }, (_, i) => `/nocache/back/${i}`);
  const owners = async () => Promise.all(paths.map(async (p) => answeringShield(await get(edge.url, p), ['shield-a', 'shield-b'])));
  const before = await owners();
  t.true(before.includes('shield-a') && before.includes('shield-b'));
  await shieldA.close();
  t.true((await owners()).every((s) => s === 'shield-b'));
  shieldA = await startTestShield(origins[0]!.url, { nodeName: 'shield-a', listen: addressA });
  // Down time (5 s) and health checks (every 2 s) bound the return.
  const deadline = Date.now() + 12_000;
  let now: Array<string | undefined> = [];
  while (Date.now() < deadline) {
    now = await owners();
    if (now.join() === before.join()) break;
    await delay(250);
  }
  t.deepEqual(now, before);
});

test('Cache-Status has one member per tier, shield first and edge last; Via lists both', async (t) => {
  const [origin] = await startOrigins(['o1']);
  const shield = await startTestShield(origin!.url);
  const edge = await startTestEdge(shield.url);
  t.teardown(async () => {
    await edge.close();
    await shield.close();
    await origin!.close();
  });

  const miss = await get(edge.url, '/tiers');
  t.is(miss.status, 200);
  const members = cacheStatusMembers(header(miss, 'cache-status'));
  t.is(members.length, 2, header(miss, 'cache-status'));
  t.regex(members[0]!, /^outpost-shield; fwd=uri-miss; fwd-status=200; stored; ttl=\d+$/);
  t.regex(members[1]!, /^outpost-edge; fwd=uri-miss; fwd-status=200; stored; ttl=\d+$/);
  t.regex(header(miss, 'via') ?? '', /^1\.1 outpost-shield, 1\.1 outpost-edge$/);

  const hit = await get(edge.url, '/tiers');
  const hitMembers = cacheStatusMembers(header(hit, 'cache-status'));
  t.is(hitMembers.length, 2, header(hit, 'cache-status'));
  t.regex(hitMembers[0]!, /^outpost-shield; fwd=uri-miss; fwd-status=200; stored; ttl=\d+$/);
  t.regex(hitMembers[1]!, /^outpost-edge; hit; ttl=\d+$/);
  t.regex(header(hit, 'via') ?? '', /^1\.1 outpost-shield, 1\.1 outpost-edge$/);

  // The origin saw both tiers in its request Via, shield last.
  t.regex(String(origin!.requests[0]!.headers['via']), /outpost-edge.*outpost-shield$/);

  const uncached = await get(edge.url, '/nocache/tiers');
  const u = cacheStatusMembers(header(uncached, 'cache-status'));
  t.is(u.length, 2, header(uncached, 'cache-status'));
  t.regex(u[0]!, /^outpost-shield; /);
  t.regex(u[1]!, /^outpost-edge; /);
  t.regex(header(uncached, 'via') ?? '', /^1\.1 outpost-shield, 1\.1 outpost-edge$/);
});

test('after the edge revalidates through the shield (304), Cache-Status and Via still show both tiers', async (t) => {
  const origin = await startOrigin((req, res) => {
    // The 304 renews for a minute, so the hit after it does not depend on how fast the refresh commits.
    if (req.headers['if-none-match'] === '"v1"') {
      res.writeHead(304, { etag: '"v1"', 'cache-control': 'max-age=60' });
      res.end();
      return;
    }
    res.writeHead(200, { etag: '"v1"', 'cache-control': 'max-age=1', 'content-type': 'text/plain' });
    res.end('version 1');
  });
  const shield = await startTestShield(origin.url);
  const edge = await startTestEdge(shield.url);
  t.teardown(async () => {
    await edge.close();
    await shield.close();
    await origin.close();
  });

  const first = await get(edge.url, '/revalidated');
  t.is(header(first, 'via'), '1.1 outpost-shield, 1.1 outpost-edge');
  await delay(1_200);
  // Both tiers hold a stale copy: the edge asks the shield, the shield asks the origin; 304 all the way.
  const refreshed = await get(edge.url, '/revalidated');
  t.is(refreshed.status, 200);
  t.is(refreshed.text, 'version 1');
  t.is(origin.count('/revalidated'), 2);
  t.is(origin.requests[1]!.headers['if-none-match'], '"v1"');
  const members = cacheStatusMembers(header(refreshed, 'cache-status'));
  t.is(members.length, 2, header(refreshed, 'cache-status'));
  t.regex(members[0]!, /^outpost-shield; fwd=stale; fwd-status=304/);
  t.regex(members[1]!, /^outpost-edge; fwd=stale; fwd-status=304/);
  t.is(header(refreshed, 'via'), '1.1 outpost-shield, 1.1 outpost-edge', 'the refreshed response lost a Via hop');
  const hit = await get(edge.url, '/revalidated');
  t.regex(cacheStatusMembers(header(hit, 'cache-status'))[1] ?? '', /^outpost-edge; hit/);
  t.is(header(hit, 'via'), '1.1 outpost-shield, 1.1 outpost-edge', 'the refreshed entry lost a Via hop');
});

test('active health checks configured on the shield take a failing origin out of rotation and bring it back', async (t) => {
  let sick = false;
  const originA = await startOrigin((req, res) => {
    if (req.url === '/healthz') {
      res.writeHead(sick ? 503 : 200);
      res.end();
      return;
    }
    res.writeHead(200, { 'cache-control': 'no-store' });
    res.end('A');
  });
  const originB = await startOrigin((req, res) => {
    res.writeHead(200, { 'cache-control': 'no-store' });
    res.end(req.url === '/healthz' ? '' : 'B');
  });
  const shield = await startTestShield([originA.url, originB.url], {
    healthCheckPath: '/healthz',
    healthCheckIntervalMs: 50,
    healthyThreshold: 1,
    unhealthyThreshold: 2,
  });
  t.teardown(async () => {
    await shield.close();
    await Promise.all([originA.close(), originB.close()]);
  });
  const tally = async (tag: string) => {
    const seen: Record<string, number> = {};
    for (let i = 0; i < 10; i++) {
      const reply = await get(shield.url, `/nocache/${tag}/${i}`);
      t.is(reply.status, 200);
      seen[reply.text] = (seen[reply.text] ?? 0) + 1;
    }
    return seen;
  };
  // Probes to one origin are sequential: once the n-th probe after a flip arrives, n − 1 have been applied.
  const probesAfterFlip = async (n: number) => {
    const seen = originA.count('/healthz');
    const deadline = Date.now() + 5_000;
    while (originA.count('/healthz') < seen + n && Date.now() < deadline) await delay(10);
  };
  await probesAfterFlip(1);
  t.deepEqual(await tally('healthy'), { A: 5, B: 5 });
  sick = true;
  await probesAfterFlip(3); // unhealthyThreshold 2
  t.deepEqual(await tally('sick'), { B: 10 });
  sick = false;
  await probesAfterFlip(2); // healthyThreshold 1
  t.deepEqual(await tally('back'), { A: 5, B: 5 });
  t.true(originA.count('/healthz') >= 6, 'the shield did not probe the origin');
});

test('routes: a Host route goes to its own pool, everything else to the default origins', async (t) => {
  const [originA, originB] = await startOrigins(['A', 'B']);
  const shield = await startTestShield(originA!.url, { routes: [{ host: 'api.test', origins: [originB!.url] }] });
  t.teardown(async () => {
    await shield.close();
    await originA!.close();
    await originB!.close();
  });

  const api = await get(shield.url, '/nocache/r1', 'api.test');
  t.is(api.status, 200);
  t.is(api.text, 'B /nocache/r1');
  const apiWithPort = await get(shield.url, '/nocache/r2', 'API.test:8443');
  t.is(apiWithPort.text, 'B /nocache/r2');
  const other = await get(shield.url, '/nocache/r3', 'www.test');
  t.is(other.text, 'A /nocache/r3');
  const sub = await get(shield.url, '/nocache/r4', 'x.api.test');
  t.is(sub.text, 'A /nocache/r4');
  t.is(originA!.count(), 2);
  t.is(originB!.count(), 2);

  // Cacheable objects on both hosts are separate entries, each from its own pool.
  t.is((await get(shield.url, '/same', 'api.test')).text, 'B /same');
  t.is((await get(shield.url, '/same', 'www.test')).text, 'A /same');
  t.is((await get(shield.url, '/same', 'api.test')).text, 'B /same');
  t.is(originB!.count('/same'), 1);
  t.is(originA!.count('/same'), 1);
});

test('routes: a pathPrefix route, and a route-only shield answers unrouted requests with a clear 502', async (t) => {
  const [originA, originB] = await startOrigins(['A', 'B']);
  const mixed = await startTestShield(originA!.url, { routes: [{ pathPrefix: '/nocache/api/', origins: [originB!.url] }] });
  const routeOnly = await startTestShield([], { routes: [{ host: 'api.test', origins: [originB!.url] }] });
  t.teardown(async () => {
    await Promise.all([mixed.close(), routeOnly.close()]);
    await originA!.close();
    await originB!.close();
  });
  t.is((await get(mixed.url, '/nocache/api/x')).text, 'B /nocache/api/x');
  t.is((await get(mixed.url, '/nocache/apix')).text, 'A /nocache/apix');
  t.is((await get(routeOnly.url, '/nocache/y', 'api.test')).text, 'B /nocache/y');
  const unrouted = await get(routeOnly.url, '/nocache/z', 'other.test');
  t.is(unrouted.status, 502);
  t.regex(unrouted.text, /no route for host other\.test/);
});

test('circuit breaking end to end: a second concurrent request to a saturated origin gets a 503 naming the limit', async (t) => {
  let release: () => void = () => {};
  const released = new Promise<void>((resolve) => (release = resolve));
  const origin = await startOrigin(async (req, res) => {
    if (req.url?.startsWith('/slow')) await released;
    res.writeHead(200, { 'cache-control': 'no-store' });
    res.end(`slow ${req.url}`);
  });
  const shield = await startTestShield(origin.url, { maxRequestsPerOrigin: 1 });
  const edge = await startTestEdge(shield.url);
  t.teardown(async () => {
    release();
    await edge.close();
    await shield.close();
    await origin.close();
  });

  const first = get(shield.url, '/slow/1');
  while (origin.count() < 1) await delay(5);
  const second = await get(shield.url, '/other/2');
  t.is(second.status, 503);
  t.regex(second.text, /^503 Service Unavailable: every origin is at its limit of 1 requests in flight/);
  t.is(header(second, 'cache-control'), 'no-store');
  t.regex(header(second, 'cache-status') ?? '', /outpost-shield; fwd=miss; detail=UPSTREAM_OVERLOADED/);
  t.is(origin.count(), 1, 'the refused request reached the origin');

  // Through the edge: the shield's 503 is passed on (the edge does not retry an answer).
  const viaEdge = await get(edge.url, '/other/3');
  t.is(viaEdge.status, 503);
  t.regex(viaEdge.text, /every origin is at its limit of 1 requests in flight/);

  release();
  const done = await first;
  t.is(done.status, 200);
  t.is(done.text, 'slow /slow/1');
  // Once the slow response is finished, the slot is free again.
  const after = await get(shield.url, '/other/4');
  t.is(after.status, 200);
});
