/**
 * The WAF at the edge (issue 11), through real HTTP: the operator's rules (`waf.rules`) and the
 * built-in set's modes. A blocked request never reaches the cache or the origin.
 */
import test from 'ava';
import { createHash } from 'node:crypto';
import { Client } from 'undici';
import { ConfigError, loadConfig } from '../../config/config.js';
import { fetchFrom, header, raw, send, settle, setup } from '../helpers/harness.js';

const ok = (_q: unknown, res: Parameters<typeof send>[0], body: Buffer) => send(res, 200, { 'cache-control': 'max-age=60' }, `ok:${body.length}`);
const rules = (...list: unknown[]) => ({ waf: { mode: 'off', rules: list } });

test('a block rule answers 403 naming the rule and the request id; the origin never sees it', async (t) => {
  const { origin, edge } = await setup(t, ok, rules({ id: 'block-wp', message: 'no WordPress here', path: { prefix: '/wp-admin' }, action: 'block' }));
  const blocked = await fetchFrom(edge.url, '/wp-admin/install.php');
  t.is(blocked.status, 403);
  t.regex(blocked.text, /^403 Forbidden: blocked by rule block-wp\n/);
  const id = header(blocked, 'x-request-id')!;
  t.truthy(id);
  t.true(blocked.text.includes(id));
  t.is(header(blocked, 'cache-control'), 'no-store');
  t.is(origin.requests.length, 0);
  t.is((await fetchFrom(edge.url, '/blog/wp-admin-tips')).status, 200);
  t.is(edge.metrics.get('waf_matches_total', { rule: 'block-wp', action: 'block' }), 1);
});

test('rules see decoded forms: an encoded or case-changed path does not slip past a prefix rule', async (t) => {
  const { origin, edge } = await setup(t, ok, rules({ id: 'wp', path: [{ prefix: '/wp-admin', ignoreCase: true }] }));
  for (const path of ['/wp%2Dadmin/', '/%77p-admin/', '/WP-ADMIN/x', '/wp%252Dadmin/']) t.is((await fetchFrom(edge.url, path)).status, 403, path);
  t.is(origin.requests.length, 0);
});

test('a rule matches on every field it names (and); a field with a list matches any', async (t) => {
  const { origin, edge } = await setup(
    t,
    ok,
    rules(
      { id: 'api-delete', method: ['DELETE', 'PURGE'], path: { regex: '^/api/v[0-9]+/users' } },
      { id: 'debug-header', headers: { 'x-debug': { present: true } } },
      { id: 'bad-cookie', cookies: { role: { equals: 'admin' } } },
      { id: 'bad-query', query: { regex: 'token=[a-z]{3}$' } },
      { id: 'host', host: 'forbidden.example' },
      { id: 'client', clientAddress: ['10.0.0.0/8'], path: '/x' },
    ),
  );
  t.is((await fetchFrom(edge.url, '/api/v2/users/7', { method: 'DELETE' })).status, 403);
  t.is((await fetchFrom(edge.url, '/api/v2/users/7', { method: 'GET' })).status, 200);
  t.is((await fetchFrom(edge.url, '/api/v2/items/7', { method: 'DELETE' })).status, 200);
  t.is((await fetchFrom(edge.url, '/h', { headers: { 'x-debug': '1' } })).status, 403);
  t.is((await fetchFrom(edge.url, '/c', { headers: { cookie: 'a=1; role=admin' } })).status, 403);
  t.is((await fetchFrom(edge.url, '/c2', { headers: { cookie: 'a=1; role=user' } })).status, 200);
  t.is((await fetchFrom(edge.url, '/q?token=abc')).status, 403);
  t.is((await fetchFrom(edge.url, '/q?token=abcd')).status, 200);
  t.is((await fetchFrom(edge.url, '/', { headers: { host: 'forbidden.example' } })).status, 403);
  // The client is 127.0.0.1, outside 10.0.0.0/8.
  t.is((await fetchFrom(edge.url, '/x')).status, 200);
  t.is(origin.requests.filter((r) => r.url === '/api/v2/users/7').length, 1);
});

test('log counts and lets the request through; allow skips every later rule, the built-in set included', async (t) => {
  const { origin, edge } = await setup(t, ok, {
    waf: {
      mode: 'block',
      rules: [
        { id: 'watch', path: { prefix: '/watched' }, action: 'log' },
        { id: 'trusted-tools', path: { prefix: '/tools/' }, clientAddress: ['127.0.0.0/8'], action: 'allow' },
      ],
    },
  });
  t.is((await fetchFrom(edge.url, '/watched/a')).status, 200);
  t.is(edge.metrics.get('waf_matches_total', { rule: 'watch', action: 'log' }), 1);
  const attack = "?q=1'%20UNION%20SELECT%20password%20FROM%20users--";
  t.is((await fetchFrom(edge.url, `/tools/report${attack}`)).status, 200);
  t.is((await fetchFrom(edge.url, `/search${attack}`)).status, 403);
  t.is(origin.requests.length, 2);
});

test('body rules read the first bytes of a body; the origin still receives the body whole', async (t) => {
  const { origin, edge } = await setup(t, ok, { ...rules({ id: 'no-drop', body: { regex: '(?i)drop\\s+table' } }), wafBodyLimit: '1KB' });
  t.is((await fetchFrom(edge.url, '/form', { method: 'POST', body: 'x=1&q=DROP  TABLE users' })).status, 403);
  t.is(origin.requests.length, 0);
  // Past the inspected prefix the body streams on untouched.
  const big = Buffer.concat([Buffer.alloc(4096, 'a'), Buffer.from('drop table')]);
  const reply = await fetchFrom(edge.url, '/upload', { method: 'PUT', body: big });
  t.is(reply.status, 200);
  t.is(reply.text, `ok:${big.length}`);
  const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
  t.is(sha(origin.requests[0]!.body), sha(big));
});

test('ReDoS: a catastrophic pattern against a 100 KiB input is answered (RE2 runs in linear time), and the node keeps serving', async (t) => {
  // On JavaScript's backtracking engine, ^(a+)+$ against 'aaa…a!' takes 2^n steps: 100 KiB would never finish.
  const { origin, edge } = await setup(t, ok, { ...rules({ id: 'evil-query', query: { regex: '^(a+)+$' } }, { id: 'evil-body', body: { regex: '^(a+)+$' } }), wafBodyLimit: '128KB' });
  const input = 'a'.repeat(100 * 1024) + '!';
  const reply = await fetchFrom(edge.url, '/r', { method: 'POST', body: input });
  t.is(reply.status, 200);
  t.is(reply.text, `ok:${input.length}`);
  t.is((await fetchFrom(edge.url, '/r', { method: 'POST', body: 'a'.repeat(100 * 1024) })).status, 403, 'the pattern does match where it should');
  t.is((await fetchFrom(edge.url, `/q?${'a'.repeat(12 * 1024)}!`)).status, 200);
  t.is((await fetchFrom(edge.url, `/q?${'a'.repeat(12 * 1024)}`)).status, 403);
  t.is(origin.requests.length, 2);
});

test('an invalid rule is rejected when the config loads, naming the rule and the field', (t) => {
  const load = (waf: unknown) => loadConfig('edge', { fileContents: { waf } });
  const bad: Array<[unknown, RegExp]> = [
    [{ rules: [{ id: 'r1', pathh: { prefix: '/' } }] }, /waf\.rules\[r1\]\.pathh.*unknown field/],
    [{ rules: [{ id: 'r2', path: { regex: '(a)\\1' } }] }, /waf\.rules\[r2\]\.path\.regex.*RE2/],
    [{ rules: [{ id: 'r3', path: { regex: 'a(?=b)' } }] }, /waf\.rules\[r3\]\.path\.regex/],
    [{ rules: [{ id: 'r4', path: '/a', action: 'drop' }] }, /waf\.rules\[r4\]\.action/],
    [{ rules: [{ id: 'r5', body: 'x', phase: 'request' }] }, /waf\.rules\[r5\]\.body/],
    [{ rules: [{ id: 'r6' }] }, /waf\.rules\[r6\].*matches nothing/],
    [{ rules: [{ id: 'r7', clientAddress: ['10.0.0.0/33'] }] }, /waf\.rules\[r7\]\.clientAddress/],
    [{ rules: [{ id: 'r8', path: '/a' }, { id: 'r8', path: '/b' }] }, /waf\.rules\[r8\]\.id.*duplicate/],
    [{ rules: [{ path: '/a' }] }, /waf\.rules\[0\]\.id/],
    [{ mode: 'strict' }, /waf\.mode/],
    [{ rules: [{ id: 'r9', headers: { 'x-a': [{ present: true }, 'b'] } }] }, /waf\.rules\[r9\]\.headers\.x-a.*stands alone/],
  ];
  for (const [waf, message] of bad) {
    const error = t.throws(() => load(waf), { instanceOf: ConfigError });
    t.regex(error!.message, message);
  }
  t.throws(() => loadConfig('edge', { flags: { wafParanoia: ['4'] } }), { message: /wafParanoia/ });
  t.throws(() => loadConfig('edge', { fileContents: { wafBodyLimit: 0, waf: { rules: [{ id: 'b', body: 'x' }] } } }), { message: /wafBodyLimit.*body rule b/ });
  // --waf block changes the mode and keeps the file's rules.
  const merged = loadConfig('edge', { fileContents: { waf: { rules: [{ id: 'keep', path: '/k' }] } }, flags: { waf: ['block'] } });
  t.is(merged.waf.mode, 'block');
  t.is(merged.waf.rules[0]!.id, 'keep');
});

test('the built-in set: detect (the default) logs and counts, block answers 403, off does neither', async (t) => {
  const attack = '/item?id=1%27%20OR%20%271%27%3D%271';
  const detect = await setup(t, ok);
  t.is((await fetchFrom(detect.edge.url, attack)).status, 200);
  const counted = (await detect.edge.metrics.json()).find((m) => m.name === 'outpost_waf_matches_total');
  t.truthy(counted?.values.find((v) => v.labels.action === 'detect' && String(v.labels.rule).startsWith('sqli')));
  const block = await setup(t, ok, { waf: 'block' });
  const blocked = await fetchFrom(block.edge.url, attack);
  t.is(blocked.status, 403);
  t.regex(blocked.text, /rule sqli/);
  t.is(block.origin.requests.length, 0);
  const off = await setup(t, ok, { waf: 'off' });
  t.is((await fetchFrom(off.edge.url, attack)).status, 200);
  t.falsy((await off.edge.metrics.json()).find((m) => m.name === 'outpost_waf_matches_total'));
});

test('a cached object is no shelter: rules apply to hits, and a reload swaps them without dropping connections', async (t) => {
  const { origin, edge } = await setup(t, ok, { waf: 'off' });
  const client = new Client(edge.url, { pipelining: 1 });
  t.teardown(() => client.close());
  let connects = 0;
  client.on('connect', () => connects++);
  const get = async (path: string) => {
    const r = await client.request({ method: 'GET', path });
    await r.body.text();
    return r.statusCode;
  };
  t.is(await get('/cached'), 200);
  await settle({ commits: true });
  t.is(await get('/cached'), 200);
  t.is(origin.requests.length, 1);
  edge.reconfigure(loadConfig('edge', { fileContents: { upstreams: [origin.url], listen: '127.0.0.1:0', logLevel: 'silent', ...rules({ id: 'gone', path: '/cached' }) } }));
  t.is(await get('/cached'), 403);
  t.is(await get('/other'), 200);
  t.is(connects, 1, 'one connection throughout');
});

test('requests the HTTP parser accepts but the WAF must judge: a header flood, invalid bytes in the target, a broken JSON body; none reaches the origin, the node keeps serving', async (t) => {
  // The listener's own limit (clientMaxHeaders, 431) is raised so the flood reaches the WAF.
  const { origin, edge } = await setup(t, ok, { waf: 'block', clientMaxHeaders: 1000 });
  const host = new URL(edge.url).host;
  const flood = Array.from({ length: 120 }, (_, i) => `X-H${i}: ${i}\r\n`).join('');
  t.regex(await raw(edge.url, `GET /flood HTTP/1.1\r\nHost: ${host}\r\n${flood}Connection: close\r\n\r\n`), /^HTTP\/1\.1 403/);
  t.regex(await raw(edge.url, `GET /x?a=%ff%fe%00%c0%af HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`), /^HTTP\/1\.1 403/);
  const json = '{"q": "1\' UNION SELECT password FROM users --", "cut": "';
  t.is((await fetchFrom(edge.url, '/api', { method: 'POST', body: json, headers: { 'content-type': 'application/json' } })).status, 403);
  t.is(origin.requests.length, 0);
  t.is((await fetchFrom(edge.url, '/fine')).status, 200);
});

test('method and host rules ignore case; a log or allow rule works in the body phase too', async (t) => {
  const { origin, edge } = await setup(t, ok, {
    waf: {
      mode: 'block',
      rules: [
        { id: 'no-post-here', method: 'post', host: 'Shop.Example', path: '/cart' },
        { id: 'trusted-import', body: { prefix: 'IMPORT ' }, action: 'allow' },
        { id: 'watch-body', body: { regex: 'watch-me' }, action: 'log' },
      ],
    },
  });
  t.is((await fetchFrom(edge.url, '/cart', { method: 'POST', body: 'x=1', headers: { host: 'shop.example' } })).status, 403);
  // Allowed by its body: the injection after it is not judged by the built-in set.
  t.is((await fetchFrom(edge.url, '/import', { method: 'POST', body: "IMPORT 1' UNION SELECT password FROM users--" })).status, 200);
  t.is((await fetchFrom(edge.url, '/w', { method: 'PUT', body: 'please watch-me' })).status, 200);
  t.is(edge.metrics.get('waf_matches_total', { rule: 'watch-body', action: 'log' }), 1);
  t.is(edge.metrics.get('waf_matches_total', { rule: 'trusted-import', action: 'allow' }), 1);
  t.is(origin.requests.length, 2);
});

test("a query rule reads '+' as a space, as the application will (and a form body's); a host rule ignores the port", async (t) => {
  const { origin, edge } = await setup(
    t,
    ok,
    rules(
      { id: 'no-union', query: { regex: 'union\\s+select', ignoreCase: true } },
      { id: 'no-union-form', phase: 'body', body: { regex: 'union\\s+select', ignoreCase: true } },
      { id: 'shop-admin', host: 'shop.example', path: '/admin' },
    ),
  );
  t.is((await fetchFrom(edge.url, '/q?q=union%20select')).status, 403);
  t.is((await fetchFrom(edge.url, '/q?q=union+select')).status, 403);
  const form = { 'content-type': 'application/x-www-form-urlencoded' };
  t.is((await fetchFrom(edge.url, '/f', { method: 'POST', body: 'q=union+select', headers: form })).status, 403);
  // In a path '+' is a plus, and in a JSON body too.
  t.is((await fetchFrom(edge.url, '/f', { method: 'POST', body: '{"q":"union+select"}', headers: { 'content-type': 'application/json' } })).status, 200);
  t.is((await fetchFrom(edge.url, '/admin', { headers: { host: 'shop.example:8080' } })).status, 403);
  t.is((await fetchFrom(edge.url, '/admin', { headers: { host: 'Shop.Example.' } })).status, 403);
  t.is((await fetchFrom(edge.url, '/admin', { headers: { host: 'other.example:8080' } })).status, 200);
  t.is(origin.requests.length, 2);
});

