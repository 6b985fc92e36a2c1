/**
 * TLS, PROXY protocol and client-limit options are checked at start-up: each rule below rejects a
 * bad combination or value with a ConfigError naming the field (and where it came from), while
 * the nearest valid setting loads. The CLI applies the checks that need files (certificates, the
 * upstream CA) before it listens or creates its data folder, and exits 2 naming the field.
 */
import test, { type ExecutionContext } from 'ava';
import { spawn } from 'node:child_process';
import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ConfigError, envName, flagName, loadConfig, parseBytes, type Config, type ConfigSources, type OptionName } from '../../config/config.js';
import { makeCertificate, writePair } from '../helpers/certificates.js';
import { tempDir } from '../helpers/temp-dir.js';

const bin = fileURLToPath(new URL('../../../bin/outpost', import.meta.url));

interface Rule {
  /** The rule, as it appears in the test title. */
  rule: string;
  bad: ConfigSources;
  /** ConfigError.field, and the start of the message: `invalid <field> (<source>): …`. */
  field: string;
  source: string;
  /** What the rest of the message must say. */
  reason: RegExp;
  /** The nearest valid setting, and what it loads to. */
  good: ConfigSources;
  loads: Partial<Config>;
}

type Via = 'file' | 'env' | 'flag';

/** `field` given its value by a config file, the environment or a flag. */
function given(field: OptionName, via: Via, raw: number | string): ConfigSources {
  if (via === 'file') return { fileContents: { [field]: raw } };
  if (via === 'env') return { env: { [envName(field)]: String(raw) } };
  return { flags: { [field]: [String(raw)] } };
}

/** A numeric bound: `bad` refused past it, `good` (by default the bound itself) loads. Sizes such as '1KB' are read as the node reads them. */
function bound(field: OptionName, via: Via, side: 'least' | 'most', limit: number, bad: number | string, good: number | string = limit): Rule {
  const value = (raw: number | string): number => (typeof raw === 'string' ? parseBytes(raw)! : raw);
  return {
    rule: `${field} at ${side} ${limit} (${via})`,
    bad: given(field, via, bad),
    field,
    source: via === 'file' ? 'config' : via === 'env' ? `environment ${envName(field)}` : `flag --${flagName(field)}`,
    reason: new RegExp(`must be at ${side} ${limit}, got ${value(bad)}$`),
    good: given(field, via, good),
    loads: { [field]: value(good) } as Partial<Config>,
  };
}

const TLS = { listenTls: '127.0.0.1:0' };

const rules: Rule[] = [
  {
    rule: 'tlsKey: as many --tls-key as --tls-cert (file)',
    bad: { fileContents: { ...TLS, tlsCert: ['a.crt', 'b.crt'], tlsKey: ['a.key'] } },
    field: 'tlsKey',
    source: 'config',
    reason: /2 --tls-cert but 1 --tls-key/,
    good: { fileContents: { ...TLS, tlsCert: ['a.crt', 'b.crt'], tlsKey: ['a.key', 'b.key'] } },
    loads: { tlsCert: ['a.crt', 'b.crt'], tlsKey: ['a.key', 'b.key'] },
  },
  {
    rule: 'tlsKey: as many --tls-key as --tls-cert (a key with no certificate, flags)',
    bad: { flags: { listenTls: ['127.0.0.1:0'], tlsKey: ['a.key'] } },
    field: 'tlsKey',
    source: 'config',
    reason: /0 --tls-cert but 1 --tls-key/,
    good: { flags: { listenTls: ['127.0.0.1:0'], tlsCert: ['a.crt'], tlsKey: ['a.key'] } },
    loads: { tlsCert: ['a.crt'], tlsKey: ['a.key'] },
  },
  {
    rule: 'redirectHttp needs listenTls',
    bad: { fileContents: { redirectHttp: true } },
    field: 'redirectHttp',
    source: 'config',
    reason: /needs --listen-tls/,
    good: { fileContents: { ...TLS, tlsCert: ['a.crt'], tlsKey: ['a.key'], redirectHttp: true } },
    loads: { redirectHttp: true, listenTls: { host: '127.0.0.1', port: 0 } },
  },
  {
    rule: 'redirectHttp needs listenTls (flag --redirect-http)',
    bad: { flags: { redirectHttp: ['true'] } },
    field: 'redirectHttp',
    source: 'config',
    reason: /needs --listen-tls/,
    good: { flags: { redirectHttp: ['true'], listenTls: ['127.0.0.1:0'], tlsCert: ['a.crt'], tlsKey: ['a.key'] } },
    loads: { redirectHttp: true, listenTls: { host: '127.0.0.1', port: 0 } },
  },
  {
    rule: 'tlsCert needs listenTls',
    bad: { fileContents: { tlsCert: ['a.crt'], tlsKey: ['a.key'] } },
    field: 'tlsCert',
    source: 'config',
    reason: /certificates given but no --listen-tls/,
    good: { fileContents: { ...TLS, tlsCert: ['a.crt'], tlsKey: ['a.key'] } },
    loads: { tlsCert: ['a.crt'], listenTls: { host: '127.0.0.1', port: 0 } },
  },
  {
    rule: 'upstreamCert needs upstreamKey',
    bad: { fileContents: { upstreamCert: 'client.crt' } },
    field: 'upstreamKey',
    source: 'config',
    reason: /give --upstream-cert and --upstream-key together/,
    good: { fileContents: { upstreamCert: 'client.crt', upstreamKey: 'client.key' } },
    loads: { upstreamCert: 'client.crt', upstreamKey: 'client.key' },
  },
  {
    rule: 'upstreamKey needs upstreamCert',
    bad: { flags: { upstreamKey: ['client.key'] } },
    field: 'upstreamCert',
    source: 'config',
    reason: /give --upstream-cert and --upstream-key together/,
    good: { flags: { upstreamKey: ['client.key'], upstreamCert: ['client.crt'] } },
    loads: { upstreamCert: 'client.crt', upstreamKey: 'client.key' },
  },
  {
    rule: 'trustedProxies needs proxyProtocol',
    bad: { fileContents: { trustedProxies: ['10.0.0.0/8'] } },
    field: 'trustedProxies',
    source: 'config',
    reason: /only means something with --proxy-protocol/,
    good: { fileContents: { trustedProxies: ['10.0.0.0/8'], proxyProtocol: true } },
    loads: { proxyProtocol: true, trustedProxies: ['10.0.0.0/8'] },
  },
  {
    rule: 'proxyProtocol needs trustedProxies',
    bad: { flags: { proxyProtocol: ['true'] } },
    field: 'trustedProxies',
    source: 'config',
    reason: /--proxy-protocol needs the balancers .*--trusted-proxy/,
    good: { flags: { proxyProtocol: ['true'], trustedProxies: ['10.0.0.1', '::1'] } },
    loads: { proxyProtocol: true, trustedProxies: ['10.0.0.1', '::1'] },
  },
  bound('tlsTicketRotateSec', 'file', 'least', 60, 59),
  bound('tlsTicketRotateSec', 'env', 'least', 60, 0, 86_400),
  bound('clientMaxHeaders', 'file', 'least', 8, 7),
  bound('clientMaxHeaders', 'flag', 'most', 10_000, 10_001),
  bound('clientHeaderMaxBytes', 'file', 'least', 1024, 1023, '1KB'),
  bound('clientHeaderMaxBytes', 'flag', 'most', 1024 ** 2, '1025KB', '1MB'),
  bound('h2MaxConcurrentStreams', 'file', 'least', 1, 0),
  bound('maxConnectionsPerClient', 'file', 'least', 0, -1),
  {
    rule: 'trustedProxies are addresses or CIDRs',
    bad: { fileContents: { proxyProtocol: true, trustedProxies: ['10.0.0.1', 'not-an-ip'] } },
    field: 'trustedProxies',
    source: 'config',
    reason: /not an IP address or CIDR: "not-an-ip"/,
    good: { fileContents: { proxyProtocol: true, trustedProxies: ['10.0.0.1', '192.168.0.0/16', 'fd00::/8'] } },
    loads: { proxyProtocol: true, trustedProxies: ['10.0.0.1', '192.168.0.0/16', 'fd00::/8'] },
  },
  {
    rule: 'trustedProxies are addresses or CIDRs (flag --trusted-proxy, repeated)',
    bad: { flags: { proxyProtocol: ['true'], trustedProxies: ['10.0.0.1', 'not-an-ip'] } },
    field: 'trustedProxies',
    source: 'flag --trusted-proxy',
    reason: /not an IP address or CIDR: "not-an-ip"/,
    good: { flags: { proxyProtocol: ['true'], trustedProxies: ['10.0.0.1', '10.1.0.0/16'] } },
    loads: { proxyProtocol: true, trustedProxies: ['10.0.0.1', '10.1.0.0/16'] },
  },
];

const escape = (text: string): string => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

for (const rule of rules) {
  test(`rule ${rule.rule}: rejected naming ${rule.field}, the valid setting loads`, (t) => {
    const error = t.throws(() => loadConfig('edge', rule.bad), { instanceOf: ConfigError });
    t.is(error?.field, rule.field);
    t.is(error?.source, rule.source);
    t.regex(error!.message, rule.reason);
    t.like(loadConfig('edge', rule.good), rule.loads);
  });
}

// A list flag's value is split on commas as the environment's is (--drop-query-params a,b too).
test('rule trustedProxies (flag --trusted-proxy): a comma-separated value is split, as its help says', (t) => {
  const config = loadConfig('edge', { flags: { proxyProtocol: ['true'], trustedProxies: ['10.0.0.1,10.1.0.0/16'] } });
  t.deepEqual(config.trustedProxies, ['10.0.0.1', '10.1.0.0/16']);
  const fromEnv = loadConfig('edge', { env: { OUTPOST_PROXY_PROTOCOL: 'true', OUTPOST_TRUSTED_PROXIES: '10.0.0.1, 10.1.0.0/16' } });
  t.deepEqual(fromEnv.trustedProxies, ['10.0.0.1', '10.1.0.0/16'], 'as the environment variable is');
  const error = t.throws(() => loadConfig('edge', { flags: { proxyProtocol: ['true'], trustedProxies: ['10.0.0.1,not-an-ip'] } }), { instanceOf: ConfigError });
  t.regex(error!.message, /not an IP address or CIDR: "not-an-ip"$/);
  t.deepEqual(loadConfig('edge', { flags: { dropQueryParams: ['utm_source,utm_medium', 'fbclid'] } }).dropQueryParams, ['utm_source', 'utm_medium', 'fbclid']);
});

// ---- The CLI: checks that read files run before the node listens ----

/** Every OUTPOST_* variable of the test run left out, so only the flags count. */
function cleanEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('OUTPOST_')));
}

interface Run {
  code: number | null;
  signal: NodeJS.Signals | null;
  stderr: string;
  ms: number;
}

/**
 * Spawns `outpost edge` with a data folder that does not exist yet (the primary creates it once
 * its config is checked); kills the child in teardown in case it started after all.
 */
function runEdge(t: ExecutionContext, dir: string, args: string[], timeoutMs = 20_000): Promise<Run> {
  const dataDir = join(dir, 'data');
  const child = spawn(
    process.execPath,
    [bin, 'edge', '--upstream', 'http://127.0.0.1:1', '--listen', '127.0.0.1:0', '--data-dir', dataDir, '--workers', '1', '--access-log', 'false', ...args],
    { stdio: ['ignore', 'ignore', 'pipe'], env: cleanEnv() },
  );
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  const started = Date.now();
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      // Let the last stderr chunk arrive.
      child.stderr.once('close', () => resolve({ code, signal, stderr, ms: Date.now() - started }));
      if (child.stderr.closed) resolve({ code, signal, stderr, ms: Date.now() - started });
    });
  });
}

/** Exit 2 (a ConfigError), the field named in `outpost: invalid <field> (<source>): …`, nothing started. */
function assertRefused(t: ExecutionContext, run: Run, dir: string, field: string, source: string, reason: RegExp): void {
  t.is(run.signal, null, `not killed by the timeout: ${run.stderr}`);
  t.is(run.code, 2, run.stderr);
  t.regex(run.stderr, new RegExp(`^outpost: invalid ${field} \\(${escape(source)}\\): `), run.stderr);
  t.regex(run.stderr, reason);
  t.notRegex(run.stderr, /listening on/);
  t.false(existsSync(join(dir, 'data')), 'refused before the data folder is created');
  t.true(run.ms < 15_000, `exited after ${run.ms} ms`);
}

// One CLI process at a time: eight node start-ups at once would load a 2-core CI machine for
// the other test files running beside this one.
test.serial('CLI rule tlsCert: --listen-tls without --tls-cert exits 2 naming tlsCert before listening', async (t) => {
  const dir = tempDir(t, 'outpost-tls-options-');
  const run = await runEdge(t, dir, ['--listen-tls', '127.0.0.1:0']);
  assertRefused(t, run, dir, 'tlsCert', 'flag --tls-cert', /--listen-tls needs a --tls-cert and --tls-key/);
});

test.serial('CLI rule tlsCert: a --tls-cert file that is not a certificate exits 2 naming tlsCert and the file', async (t) => {
  const dir = tempDir(t, 'outpost-tls-options-');
  const good = writePair(dir, 'good', await makeCertificate(['localhost']));
  const garbage = join(dir, 'garbage.crt');
  writeFileSync(garbage, 'this is not a certificate\n');
  const run = await runEdge(t, dir, ['--listen-tls', '127.0.0.1:0', '--tls-cert', garbage, '--tls-key', good.keyFile]);
  assertRefused(t, run, dir, 'tlsCert', 'config', new RegExp(`${escape(garbage)}: not a PEM certificate`));
});

test.serial('CLI rule tlsCert: a PEM --tls-cert whose body is garbage exits 2 naming the file', async (t) => {
  const dir = tempDir(t, 'outpost-tls-options-');
  const good = writePair(dir, 'good', await makeCertificate(['localhost']));
  const garbage = join(dir, 'armoured.crt');
  writeFileSync(garbage, '-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n');
  const run = await runEdge(t, dir, ['--listen-tls', '127.0.0.1:0', '--tls-cert', garbage, '--tls-key', good.keyFile]);
  assertRefused(t, run, dir, 'tlsCert', 'config', new RegExp(`${escape(garbage)}: invalid certificate`));
});

test.serial('CLI rule tlsCert: a --tls-key that does not match its certificate exits 2 naming both files', async (t) => {
  const dir = tempDir(t, 'outpost-tls-options-');
  const a = writePair(dir, 'a', await makeCertificate(['a.localhost']));
  const b = writePair(dir, 'b', await makeCertificate(['b.localhost']));
  const run = await runEdge(t, dir, ['--listen-tls', '127.0.0.1:0', '--tls-cert', a.certFile, '--tls-key', b.keyFile]);
  assertRefused(t, run, dir, 'tlsCert', 'config', new RegExp(`${escape(b.keyFile)}: private key does not match the certificate in ${escape(a.certFile)}`));
});

test.serial('CLI rule tlsCert: a missing --tls-key file exits 2 naming the file', async (t) => {
  const dir = tempDir(t, 'outpost-tls-options-');
  const a = writePair(dir, 'a', await makeCertificate(['a.localhost']));
  const missing = join(dir, 'missing.key');
  const run = await runEdge(t, dir, ['--listen-tls', '127.0.0.1:0', '--tls-cert', a.certFile, '--tls-key', missing]);
  assertRefused(t, run, dir, 'tlsCert', 'config', new RegExp(`${escape(missing)}: cannot read \\(ENOENT\\)`));
});

test.serial('CLI rule upstreamCa: an unreadable --upstream-ca exits 2 naming upstreamCa and the file', async (t) => {
  const dir = tempDir(t, 'outpost-tls-options-');
  const run = await runEdge(t, dir, ['--upstream-ca', '/nonexistent']);
  assertRefused(t, run, dir, 'upstreamCa', 'config', /cannot read \/nonexistent: ENOENT/);
});

test.serial('CLI rule upstreamKey: --upstream-cert without --upstream-key exits 2 naming upstreamKey', async (t) => {
  const dir = tempDir(t, 'outpost-tls-options-');
  const client = writePair(dir, 'client', await makeCertificate(['client.localhost']));
  const run = await runEdge(t, dir, ['--upstream-cert', client.certFile]);
  assertRefused(t, run, dir, 'upstreamKey', 'config', /give --upstream-cert and --upstream-key together/);
});

test.serial('CLI control: a valid --tls-cert/--tls-key pair with --listen-tls and --upstream-ca starts and listens on HTTPS', async (t) => {
  const dir = tempDir(t, 'outpost-tls-options-');
  const pair = writePair(dir, 'edge', await makeCertificate(['localhost']));
  const ca = join(dir, 'ca.pem');
  writeFileSync(ca, (await makeCertificate(['ca.localhost'])).cert);
  const dataDir = join(dir, 'data');
  const child = spawn(
    process.execPath,
    [bin, 'edge', '--upstream', 'http://127.0.0.1:1', '--listen', '127.0.0.1:0', '--data-dir', dataDir, '--workers', '1', '--access-log', 'false',
      '--listen-tls', '127.0.0.1:0', '--tls-cert', pair.certFile, '--tls-key', pair.keyFile, '--upstream-ca', ca, '--redirect-http'],
    { stdio: ['ignore', 'ignore', 'pipe'], env: cleanEnv() },
  );
  t.teardown(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  });
  let stderr = '';
  const listening = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`not listening after 30 s: ${stderr}`)), 30_000);
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
      const line = /outpost edge listening on [^\n]*\n/.exec(stderr);
      if (line) {
        clearTimeout(timer);
        resolve(line[0]);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`exited ${code}: ${stderr}`));
    });
  });
  t.regex(listening, /listening on http:\/\/127\.0\.0\.1:\d+ and https:\/\/127\.0\.0\.1:\d+/);
  t.true(existsSync(dataDir));
  const exit = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  child.kill('SIGTERM');
  t.is(await exit, 0, stderr);
});
