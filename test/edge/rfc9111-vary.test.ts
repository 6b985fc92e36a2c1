/**
 * RFC 9111 §4.1 (Vary: selecting a stored variant) against a real edge and origin.
 */
import test from 'ava';
import { cacheStatus, delay, fetchFrom, send, settle, setup, type OriginHandler, type Reply } from '../helpers/harness.js';


/** An origin that echoes the request's Accept-Encoding in the body and varies on it. */
const echoEncoding: OriginHandler = (q, res) =>
  send(res, 200, { 'cache-control': 'max-age=60', vary: 'Accept-Encoding' }, `enc:${q.headers['accept-encoding'] ?? '-'}`);

async function get(base: string, path: string, acceptEncoding?: string): Promise<Reply> {
  const reply = await fetchFrom(base, path, { headers: acceptEncoding === undefined ? {} : { 'accept-encoding': acceptEncoding } });
  await settle();
  return reply;
}

test('§4.1 each Vary variant is stored and served separately', async (t) => {
  const { origin, edge } = await setup(t, echoEncoding);
  t.is((await get(edge.url, '/v', 'gzip')).text, 'enc:gzip');
  t.is((await get(edge.url, '/v', 'br')).text, 'enc:br');
  const gzip = await get(edge.url, '/v', 'gzip');
  const br = await get(edge.url, '/v', 'br');
  t.is(gzip.text, 'enc:gzip');
  t.is(br.text, 'enc:br');
  t.regex(cacheStatus(gzip), /; hit/);
  t.regex(cacheStatus(br), /; hit/);
  t.is(origin.count('/v'), 2);
});

test('§4.1 a request whose Vary field differs is a miss (Cache-Status fwd=vary-miss)', async (t) => {
  const { origin, edge } = await setup(t, echoEncoding);
  await get(edge.url, '/vm', 'gzip');
  const other = await get(edge.url, '/vm', 'identity');
  t.is(other.text, 'enc:identity');
  t.regex(cacheStatus(other), /fwd=vary-miss/);
  t.is(origin.count('/vm'), 2);
});

test('§4.1 an absent Vary field only matches a stored response whose request also lacked it', async (t) => {
  const { origin, edge } = await setup(t, (q, res) =>
    send(res, 200, { 'cache-control': 'max-age=60', vary: 'Accept-Language' }, `lang:${q.headers['accept-language'] ?? '-'}`),
  );
  t.is((await fetchFrom(edge.url, '/abs')).text, 'lang:-');
  await settle();
  const withLang = await fetchFrom(edge.url, '/abs', { headers: { 'accept-language': 'de' } });
  t.is(withLang.text, 'lang:de');
  await settle();
  const again = await fetchFrom(edge.url, '/abs');
  t.is(again.text, 'lang:-');
  t.is(origin.count('/abs'), 2);
});

test('§4.1 Vary: * never matches: such a response is not stored', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'max-age=60', vary: '*' }));
  await get(edge.url, '/star');
  const second = await get(edge.url, '/star');
  t.is(second.status, 200);
  t.is(origin.count('/star'), 2);
  t.notRegex(cacheStatus(second), /; hit/);
});

test('§4.1 Vary containing * among other names is not stored', async (t) => {
  const { origin, edge } = await setup(t, (_q, res) => send(res, 200, { 'cache-control': 'max-age=60', vary: 'Accept-Encoding, *' }));
  await get(edge.url, '/star2', 'gzip');
  await get(edge.url, '/star2', 'gzip');
  t.is(origin.count('/star2'), 2);
});

test('§4.1 header values are normalised before matching: whitespace around list items', async (t) => {
  const { origin, edge } = await setup(t, echoEncoding);
  await get(edge.url, '/ws', 'gzip, br');
  const spaced = await get(edge.url, '/ws', 'gzip ,   br');
  const tight = await get(edge.url, '/ws', 'gzip,br');
  t.regex(cacheStatus(spaced), /; hit/);
  t.regex(cacheStatus(tight), /; hit/);
  t.is(origin.count('/ws'), 1);
});

test('§4.1 header values are normalised before matching: case of Accept-Encoding', async (t) => {
  const { origin, edge } = await setup(t, echoEncoding);
  await get(edge.url, '/case', 'gzip');
  const upper = await get(edge.url, '/case', 'GZIP');
  t.regex(cacheStatus(upper), /; hit/);
  t.is(upper.text, 'enc:gzip');
  t.is(origin.count('/case'), 1);
});

test('§4.1 Vary field names are case-insensitive', async (t) => {
  const { origin, edge } = await setup(t, (q, res) =>
    send(res, 200, { 'cache-control': 'max-age=60', vary: 'aCCept-ENCODING' }, `enc:${q.headers['accept-encoding'] ?? '-'}`),
  );
  await get(edge.url, '/names', 'gzip');
  const hit = await get(edge.url, '/names', 'gzip');
  const miss = await get(edge.url, '/names', 'br');
  t.regex(cacheStatus(hit), /; hit/);
  t.is(miss.text, 'enc:br');
  t.is(origin.count('/names'), 2);
});

test('§4.1 (operator cap) beyond maxVariantsPerUrl new variants are not stored and vary_cap_hits_total counts them', async (t) => {
  const { origin, edge } = await setup(t, echoEncoding, { maxVariantsPerUrl: 2 });
  // The cap counts stored variants: let both commit (variants still committing may exceed it).
  await get(edge.url, '/cap', 'a');
  await get(edge.url, '/cap', 'b');
  await settle({ commits: true });
  t.is(edge.metrics.get('vary_cap_hits_total'), 0);
  const third = await get(edge.url, '/cap', 'c');
  t.is(third.status, 200);
  t.is(third.text, 'enc:c');
  t.is(edge.metrics.get('vary_cap_hits_total'), 1);
  const thirdAgain = await get(edge.url, '/cap', 'c');
  t.is(thirdAgain.text, 'enc:c');
  t.is(origin.count('/cap'), 4, 'the third variant is not stored');
  // The variants under the cap are still served from the cache.
  t.regex(cacheStatus(await get(edge.url, '/cap', 'a')), /; hit/);
  t.regex(cacheStatus(await get(edge.url, '/cap', 'b')), /; hit/);
  t.is(origin.count('/cap'), 4);
});

test('§4.1 collapsed requests with different Vary values each get their own variant', async (t) => {
  const { origin, edge } = await setup(t, async (q, res) => {
    await delay(150);
    echoEncoding(q, res, Buffer.alloc(0), 0);
  });
  const [a, b] = await Promise.all([fetchFrom(edge.url, '/col', { headers: { 'accept-encoding': 'gzip' } }), fetchFrom(edge.url, '/col', { headers: { 'accept-encoding': 'br' } })]);
  t.is(a.text, 'enc:gzip');
  t.is(b.text, 'enc:br');
  t.true(origin.count('/col') >= 2);
});

test('§4.1 a short-lived variant expiring does not make a longer-lived sibling variant unreachable', async (t) => {
  const { origin, edge } = await setup(t, (q, res) => {
    const enc = String(q.headers['accept-encoding'] ?? '-');
    send(res, 200, { 'cache-control': enc === 'gzip' ? 'max-age=600' : 'max-age=1', vary: 'Accept-Encoding' }, `enc:${enc}`);
  });
  await get(edge.url, '/life', 'gzip');
  await get(edge.url, '/life', 'br');
  await delay(1100);
  const gzip = await get(edge.url, '/life', 'gzip');
  t.is(gzip.text, 'enc:gzip');
  t.regex(cacheStatus(gzip), /; hit/, 'the gzip variant is fresh for 600 s');
  t.is(origin.count('/life'), 2);
});

// ---- normalised selecting values: whitespace, case, order and equal weights do not matter ----------

for (const [field, stored, equivalent, different] of [
  ['accept-language', 'de-DE, fr;q=0.5', 'fr;q=0.50,DE-de', 'fr, de-DE;q=0.5'],
  ['accept-language', 'en;q=0.8, de;q=0.8', 'de;q=0.8,en;q=0.800', 'de;q=0.8, en;q=0.7'],
  ['accept-encoding', 'gzip, br', 'br,GZIP', 'gzip'],
  ['accept-encoding', 'gzip;q=1.0, identity; q=0.5', 'identity;q=0.5 , gzip', 'gzip, identity'],
] as const) {
  test(`§4.1 Vary: ${field}: "${equivalent}" selects the variant stored for "${stored}", "${different}" does not`, async (t) => {
    const { origin, edge } = await setup(t, (q, res) => send(res, 200, { 'cache-control': 'max-age=60', vary: field }, `for:${q.headers[field]}`));
    await fetchFrom(edge.url, '/n', { headers: { [field]: stored } });
    await settle();
    const same = await fetchFrom(edge.url, '/n', { headers: { [field]: equivalent } });
    t.is(same.text, `for:${stored}`);
    t.regex(cacheStatus(same), /; hit/);
    const other = await fetchFrom(edge.url, '/n', { headers: { [field]: different } });
    t.is(other.text, `for:${different}`);
    t.is(origin.count('/n'), 2);
  });
}
