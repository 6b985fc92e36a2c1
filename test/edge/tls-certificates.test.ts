/**
 * CertificateStore and the TLS policy against real handshakes: a node:tls server on 127.0.0.1
 * with the store's default options and SNI callback, and node:tls clients that say which
 * certificate they were given. Reloads are watched on disk, so those tests poll for the new
 * certificate to be served rather than sleeping.
 */
import test from 'ava';
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { connect, createServer, type ConnectionOptions, type PeerCertificate, type Server } from 'node:tls';
import { pino, type Logger } from 'pino';
import { ConfigError } from '../../config/config-error.js';
import { CertificateStore, type CertificatePair } from '../../edge/tls/certificates.js';
import { ensureSelfSigned } from '../../edge/tls/self-signed.js';
import { SERVER_TLS_POLICY } from '../../edge/tls/tls-policy.js';
import { silentLogger } from '../../pipeline/logger.js';
import { makeCa, makeCertificate, writePair, type PemPair } from '../helpers/certificates.js';
import { tempDir } from '../helpers/temp-dir.js';

interface Fixtures {
  ca: PemPair;
  defaultCert: PemPair;
  exact: PemPair;
  wild: PemPair;
}

let fixtures: Promise<Fixtures> | undefined;

/** Made once for the file; each test that changes files gets its own directory and copies. */
function shared(): Promise<Fixtures> {
  fixtures ??= (async () => {
    const ca = await makeCa();
    const [defaultCert, exact, wild] = await Promise.all([
      makeCertificate(['default.example'], { ca }),
      makeCertificate(['a.example'], { ca }),
      makeCertificate(['*.wild.example'], { ca }),
    ]);
    return { ca, defaultCert, exact, wild };
  })();
  return fixtures;
}

interface LogLine {
  level: number;
  msg: string;
  [key: string]: unknown;
}

function memoryLogger(): { logger: Logger; lines: LogLine[] } {
  const lines: LogLine[] = [];
  const logger = pino({ level: 'debug' }, { write: (line: string) => void lines.push(JSON.parse(line) as LogLine) });
  return { logger, lines };
}

interface Served {
  server: Server;
  port: number;
  /** Handshake failures the server saw (proof that a refused client really reached it). */
  clientErrors: Error[];
}

async function serve(t: { teardown(fn: () => Promise<void> | void): void }, store: CertificateStore): Promise<Served> {
  const server = createServer({ ...store.defaultOptions(), SNICallback: store.sniCallback }, (socket) => socket.end());
  const clientErrors: Error[] = [];
  server.on('tlsClientError', (error) => clientErrors.push(error));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return { server, port: (server.address() as AddressInfo).port, clientErrors };
}

interface Handshake {
  cert: PeerCertificate;
  protocol: string | null;
  cipher: string;
  authorized: boolean;
  authorizationError: string | undefined;
}

/** One handshake; certificate checks are reported, not enforced, unless rejectUnauthorized is given. */
function handshake(port: number, options: ConnectionOptions = {}): Promise<Handshake> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ...options }, () => {
      const result: Handshake = {
        cert: socket.getPeerCertificate(),
        protocol: socket.getProtocol(),
        cipher: socket.getCipher().name,
        authorized: socket.authorized,
        authorizationError: socket.authorizationError === undefined ? undefined : String(socket.authorizationError),
      };
      socket.destroy();
      resolve(result);
    });
    socket.once('error', reject);
  });
}

async function until<T>(probe: () => Promise<T | undefined>, what: string, deadlineMs = 5000): Promise<T> {
  const deadline = Date.now() + deadlineMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

function fingerprint(pem: string): string {
  return new X509Certificate(pem).fingerprint256;
}

/** The three pairs, default first, in a fresh directory. */
async function threePairs(t: { teardown(fn: () => void): void }): Promise<{ dir: string; pairs: CertificatePair[]; f: Fixtures }> {
  const f = await shared();
  const dir = tempDir(t, 'outpost-tls-');
  const pairs = [writePair(dir, 'default', f.defaultCert), writePair(dir, 'a', f.exact), writePair(dir, 'wild', f.wild)];
  return { dir, pairs, f };
}

test('SNI picks the exact name, then a one-label wildcard, else the first pair', async (t) => {
  const { pairs } = await threePairs(t);
  const store = new CertificateStore(pairs, { logger: silentLogger(), watch: false });
  t.teardown(() => store.close());
  const { port } = await serve(t, store);
  t.deepEqual(store.names(), [['default.example'], ['a.example'], ['*.wild.example']]);

  const cases: Array<[string | undefined, string]> = [
    ['a.example', 'a.example'],
    ['x.wild.example', '*.wild.example'],
    ['a.b.wild.example', 'default.example'],
    ['wild.example', 'default.example'],
    ['unknown.example', 'default.example'],
    ['A.Example', 'a.example'],
    ['X.WILD.example', '*.wild.example'],
    ['', 'default.example'],
    [undefined, 'default.example'],
  ];
  for (const [servername, expected] of cases) {
    const { cert } = await handshake(port, servername === undefined ? {} : { servername });
    t.is(cert.subject.CN, expected, `servername ${JSON.stringify(servername)}`);
  }
});

test('select() ignores case and a trailing dot and keeps the first pair for the rest', async (t) => {
  const { pairs } = await threePairs(t);
  const store = new CertificateStore(pairs, { logger: silentLogger(), watch: false });
  const a = store.select('a.example');
  const wild = store.select('x.wild.example');
  const fallback = store.select(undefined);
  t.not(a, fallback);
  t.not(wild, fallback);
  t.is(store.select('A.EXAMPLE.'), a);
  t.is(store.select('a.example.'), a);
  t.is(store.select('y.Wild.Example.'), wild);
  t.is(store.select('wild.example'), fallback);
  t.is(store.select('.wild.example'), fallback);
  t.is(store.select('a.b.wild.example'), fallback);
  t.is(store.select(''), fallback);
  t.is(store.select('default.example'), fallback);
  t.is(store.select('example'), fallback);
});

test('the certificate served for an SNI name verifies against its CA with the default hostname check', async (t) => {
  const { pairs, f } = await threePairs(t);
  const store = new CertificateStore(pairs, { logger: silentLogger(), watch: false });
  const { port } = await serve(t, store);
  for (const servername of ['a.example', 'x.wild.example', 'default.example']) {
    const result = await handshake(port, { servername, ca: f.ca.cert, rejectUnauthorized: true });
    t.true(result.authorized, servername);
  }
  // The fallback is the default certificate, which does not name an unknown host.
  const error = await t.throwsAsync(handshake(port, { servername: 'unknown.example', ca: f.ca.cert, rejectUnauthorized: true }));
  t.is((error as NodeJS.ErrnoException).code, 'ERR_TLS_CERT_ALTNAME_INVALID');
  // Another CA's clients do not trust it.
  const other = await makeCa('Other CA');
  await t.throwsAsync(handshake(port, { servername: 'a.example', ca: other.cert, rejectUnauthorized: true }));
});

test('a chain file serves leaf and intermediate: clients trusting only the root verify', async (t) => {
  const root = await makeCa('Root CA');
  const intermediate = await makeCa('Intermediate CA', { ca: root });
  const leaf = await makeCertificate(['chain.example'], { ca: intermediate });
  const dir = tempDir(t, 'outpost-tls-');
  const pair = writePair(dir, 'chain', { cert: leaf.cert + intermediate.cert, key: leaf.key });
  const store = new CertificateStore([pair], { logger: silentLogger(), watch: false });
  const { port } = await serve(t, store);
  const result = await handshake(port, { servername: 'chain.example', ca: root.cert, rejectUnauthorized: true });
  t.true(result.authorized);
  t.is(result.cert.subject.CN, 'chain.example');
});

test('policy: TLS 1.1 is refused, TLS 1.2 gets ECDHE with an AEAD cipher, TLS 1.3 works with SNI', async (t) => {
  const { pairs } = await threePairs(t);
  const store = new CertificateStore(pairs, { logger: silentLogger(), watch: false });
  const { port, clientErrors } = await serve(t, store);

  // SECLEVEL=0 so the refusal cannot come from the client's own OpenSSL policy: the server must see it.
  await t.throwsAsync(handshake(port, { servername: 'a.example', minVersion: 'TLSv1', maxVersion: 'TLSv1.1', ciphers: 'DEFAULT:@SECLEVEL=0' }));
  await until(async () => (clientErrors.length > 0 ? true : undefined), 'the server to see the TLS 1.1 client');
  t.regex(clientErrors[0]!.message, /unsupported protocol|version/i);

  const tls12 = await handshake(port, { servername: 'a.example', maxVersion: 'TLSv1.2' });
  t.is(tls12.protocol, 'TLSv1.2');
  t.regex(tls12.cipher, /^ECDHE-ECDSA-(AES(128|256)-GCM-SHA(256|384)|CHACHA20-POLY1305)$/);
  t.is(tls12.cert.subject.CN, 'a.example');

  // A TLS 1.2 client offering only CBC suites finds nothing in common.
  await t.throwsAsync(handshake(port, { servername: 'a.example', maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES128-SHA' }));

  const tls13 = await handshake(port, { servername: 'x.wild.example' });
  t.is(tls13.protocol, 'TLSv1.3');
  t.regex(tls13.cipher, /^TLS_(AES_(128|256)_GCM_SHA(256|384)|CHACHA20_POLY1305_SHA256)$/);
  t.is(tls13.cert.subject.CN, '*.wild.example');

  t.is(SERVER_TLS_POLICY.minVersion, 'TLSv1.2');
  t.true(Object.isFrozen(SERVER_TLS_POLICY));
});

test('a pair rewritten in place is served after the watcher reloads it, even when the cert lands before its key', async (t) => {
  const { pairs, f } = await threePairs(t);
  const { logger, lines } = memoryLogger();
  const store = new CertificateStore(pairs, { logger });
  t.teardown(() => store.close());
  const { port } = await serve(t, store);
  const before = (await handshake(port, { servername: 'a.example' })).cert.fingerprint256;
  t.is(before, fingerprint(f.exact.cert));

  const renewed = await makeCertificate(['a.example'], { ca: f.ca });
  writeFileSync(pairs[1]!.certFile, renewed.cert);
  // The half-written state is seen and refused: the old certificate stays.
  await until(async () => (lines.some((line) => line.level === 50 && String(line.msg).includes(pairs[1]!.keyFile)) ? true : undefined), 'the mismatched key to be logged');
  t.is((await handshake(port, { servername: 'a.example' })).cert.fingerprint256, before);

  writeFileSync(pairs[1]!.keyFile, renewed.key);
  const after = await until(async () => {
    const served = (await handshake(port, { servername: 'a.example' })).cert.fingerprint256;
    return served !== before ? served : undefined;
  }, 'the renewed certificate');
  t.is(after, fingerprint(renewed.cert));
  t.deepEqual(store.reload(), []);
});

test('a pair replaced by rename is served after the watcher reloads it', async (t) => {
  const { dir, pairs, f } = await threePairs(t);
  let reloads = 0;
  const store = new CertificateStore(pairs, { logger: silentLogger(), onReload: () => reloads++ });
  t.teardown(() => store.close());
  const { port } = await serve(t, store);

  const renewed = await makeCertificate(['x.wild.example', '*.wild.example'], { ca: f.ca });
  writeFileSync(join(dir, '.wild.key.tmp'), renewed.key);
  writeFileSync(join(dir, '.wild.crt.tmp'), renewed.cert);
  renameSync(join(dir, '.wild.key.tmp'), pairs[2]!.keyFile);
  renameSync(join(dir, '.wild.crt.tmp'), pairs[2]!.certFile);
  await until(async () => ((await handshake(port, { servername: 'y.wild.example' })).cert.fingerprint256 === fingerprint(renewed.cert) ? true : undefined), 'the renamed certificate');
  t.deepEqual(store.names()[2], ['x.wild.example', '*.wild.example']);
  t.true(reloads >= 1);
});

test('a Kubernetes-style secret update (..data symlink swapped) is picked up', async (t) => {
  const f = await shared();
  const dir = tempDir(t, 'outpost-tls-');
  mkdirSync(join(dir, '..v1'));
  writePair(join(dir, '..v1'), 'tls', f.exact);
  symlinkSync('..v1', join(dir, '..data'));
  symlinkSync(join('..data', 'tls.crt'), join(dir, 'tls.crt'));
  symlinkSync(join('..data', 'tls.key'), join(dir, 'tls.key'));
  const store = new CertificateStore([{ certFile: join(dir, 'tls.crt'), keyFile: join(dir, 'tls.key') }], { logger: silentLogger() });
  t.teardown(() => store.close());
  const { port } = await serve(t, store);
  t.is((await handshake(port, { servername: 'a.example' })).cert.fingerprint256, fingerprint(f.exact.cert));

  // What the kubelet does: a new timestamped directory, a new link to it, renamed over ..data.
  const renewed = await makeCertificate(['a.example'], { ca: f.ca });
  mkdirSync(join(dir, '..v2'));
  writePair(join(dir, '..v2'), 'tls', renewed);
  symlinkSync('..v2', join(dir, '..data_tmp'));
  renameSync(join(dir, '..data_tmp'), join(dir, '..data'));
  await until(async () => ((await handshake(port, { servername: 'a.example' })).cert.fingerprint256 === fingerprint(renewed.cert) ? true : undefined), 'the swapped secret');
  t.pass();
});

test('after a reload that changed a pair, onReload is called, and clients without SNI get the new default once it sets the server context', async (t) => {
  const { dir, pairs, f } = await threePairs(t);
  let server: Server | undefined;
  let reloads = 0;
  const onReload = (): void => {
    reloads++;
    server!.setSecureContext(store.defaultOptions());
  };
  const store = new CertificateStore(pairs, { logger: silentLogger(), watch: false, onReload });
  const served = await serve(t, store);
  server = served.server;
  t.deepEqual(store.reload(), []);
  t.is(reloads, 0, 'files unchanged: nothing to do');
  const renewed = await makeCertificate(['default.example'], { ca: f.ca });
  writePair(dir, 'default', renewed);
  t.deepEqual(store.reload(), []);
  t.is(reloads, 1);
  t.is((await handshake(served.port)).cert.fingerprint256, fingerprint(renewed.cert));
  t.is((await handshake(served.port, { servername: 'unknown.example' })).cert.fingerprint256, fingerprint(renewed.cert));
});

test('garbage in a cert file keeps the old certificate, logs the file and is returned by reload()', async (t) => {
  const { pairs } = await threePairs(t);
  const { logger, lines } = memoryLogger();
  let reloads = 0;
  const store = new CertificateStore(pairs, { logger, watch: false, onReload: () => reloads++ });
  const { port } = await serve(t, store);
  const before = (await handshake(port, { servername: 'a.example' })).cert.fingerprint256;

  writeFileSync(pairs[1]!.certFile, 'this is not a certificate\n');
  const errors = store.reload();
  t.is(errors.length, 1);
  t.true(errors[0]!.startsWith(`${pairs[1]!.certFile}: `), errors[0]);
  const logged = lines.filter((line) => line.level === 50);
  t.is(logged.length, 1);
  t.true(String(logged[0]!.msg).includes(pairs[1]!.certFile));
  t.is(reloads, 0);
  t.is((await handshake(port, { servername: 'a.example' })).cert.fingerprint256, before);

  // A PEM armour around nonsense is refused too.
  writeFileSync(pairs[1]!.certFile, '-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n');
  t.regex(store.reload()[0]!, /invalid certificate/);
  t.is((await handshake(port, { servername: 'a.example' })).cert.fingerprint256, before);
});

test('a key that does not match its certificate is refused and the old pair keeps serving', async (t) => {
  const { dir, pairs, f } = await threePairs(t);
  const { logger, lines } = memoryLogger();
  const store = new CertificateStore(pairs, { logger, watch: false });
  const { port } = await serve(t, store);
  writeFileSync(pairs[1]!.keyFile, f.wild.key);
  const errors = store.reload();
  t.is(errors.length, 1);
  t.true(errors[0]!.startsWith(`${pairs[1]!.keyFile}: private key does not match`), errors[0]);
  t.true(lines.some((line) => line.level === 50 && String(line.msg).includes(pairs[1]!.keyFile)));
  t.is((await handshake(port, { servername: 'a.example' })).cert.fingerprint256, fingerprint(f.exact.cert));
  // The other pairs still reload normally.
  const renewed = await makeCertificate(['*.wild.example'], { ca: f.ca });
  writePair(dir, 'wild', renewed);
  t.is(store.reload().length, 1);
  t.is((await handshake(port, { servername: 'q.wild.example' })).cert.fingerprint256, fingerprint(renewed.cert));
});

test('the constructor throws a ConfigError naming the bad file', async (t) => {
  const { dir, pairs, f } = await threePairs(t);
  const check = (bad: CertificatePair[], file: string, reason: RegExp): void => {
    const error = t.throws(() => new CertificateStore(bad, { logger: silentLogger(), watch: false }), { instanceOf: ConfigError });
    t.is(error?.field, 'tlsCert');
    t.true(error?.message.includes(file), error?.message);
    t.regex(error?.message ?? '', reason);
  };
  const missing = join(dir, 'missing.crt');
  check([pairs[0]!, { certFile: missing, keyFile: pairs[1]!.keyFile }], missing, /ENOENT/);

  const garbage = writePair(dir, 'garbage', { cert: 'nope', key: f.exact.key });
  check([garbage], garbage.certFile, /not a PEM certificate/);

  const badKey = writePair(dir, 'bad-key', { cert: f.exact.cert, key: 'nope' });
  check([badKey], badKey.keyFile, /not a PEM private key/);

  const mismatch = writePair(dir, 'mismatch', { cert: f.exact.cert, key: f.wild.key });
  check([pairs[0]!, mismatch], mismatch.keyFile, /does not match/);

  const ipOnly = writePair(dir, 'ip-only', await makeCertificate(['127.0.0.1'], { ca: f.ca }));
  check([ipOnly], ipOnly.certFile, /no usable name/);

  t.throws(() => new CertificateStore([], { logger: silentLogger(), watch: false }), { instanceOf: ConfigError });
});

test('names come from DNS subjectAltNames, else the subject CN; an expired certificate loads with a warning', async (t) => {
  const f = await shared();
  const dir = tempDir(t, 'outpost-tls-');
  const many = writePair(dir, 'many', await makeCertificate(['Multi.Example', 'other.example', '*.multi.example', '10.0.0.1'], { ca: f.ca }));
  const expiredPem = await makeCertificate(['old.example'], { ca: f.ca, notBefore: new Date(Date.now() - 10 * 86400_000), notAfter: new Date(Date.now() - 86400_000) });
  const expired = writePair(dir, 'expired', expiredPem);
  // No subjectAltName: the CN names it. A CN beside DNS names is ignored (RFC 6125 §6.4.4).
  const cnOnly = writePair(dir, 'cn-only', await makeCertificate(['CN-Only.Example'], { ca: f.ca, noSubjectAltName: true }));
  const cnAside = writePair(dir, 'cn-aside', await makeCertificate(['san.example'], { ca: f.ca, cn: 'cn.example' }));
  const { logger, lines } = memoryLogger();
  const store = new CertificateStore([many, expired, cnOnly, cnAside], { logger, watch: false });
  t.deepEqual(store.names(), [['multi.example', 'other.example', '*.multi.example'], ['old.example'], ['cn-only.example'], ['san.example']]);
  const warning = lines.find((line) => line.level === 40);
  t.truthy(warning);
  t.true(String(warning!.msg).includes(expired.certFile));
  t.true(String(warning!.msg).includes(new X509Certificate(expiredPem.cert).validTo));
  const { port } = await serve(t, store);
  t.is((await handshake(port, { servername: 'old.example' })).cert.subject.CN, 'old.example');
});

test('close() stops watching; files that disappear are an error naming the file and the old pair keeps serving', async (t) => {
  const f = await shared();
  const dir = tempDir(t, 'outpost-tls-');
  const pair = writePair(dir, 'a', f.exact);
  const { logger, lines } = memoryLogger();
  let reloads = 0;
  const store = new CertificateStore([pair], { logger, onReload: () => reloads++ });
  store.close();
  writePair(dir, 'a', await makeCertificate(['a.example'], { ca: f.ca }));
  await new Promise((resolve) => setTimeout(resolve, 1_500));
  t.is(reloads, 0);
  // Explicit reload still works after close (SIGHUP path).
  t.deepEqual(store.reload(), []);
  t.is(reloads, 1);

  const again = new CertificateStore([pair], { logger, onReload: () => reloads++ });
  t.teardown(() => again.close());
  rmSync(dir, { recursive: true, force: true });
  await until(async () => (lines.some((line) => line.level === 50 && String(line.msg).includes(pair.certFile) && String(line.msg).includes('ENOENT')) ? true : undefined), 'the missing file to be logged');
  t.is(again.names()[0]![0], 'a.example', 'the old pair is still served');
});

test('ensureSelfSigned creates a localhost pair that serves and verifies against itself, then reuses it', async (t) => {
  const dataDir = tempDir(t, 'outpost-tls-');
  const { logger } = memoryLogger();
  const started = performance.now();
  const pair = await ensureSelfSigned(dataDir, logger);
  t.log(`self-signed generation: ${Math.round(performance.now() - started)} ms`);
  t.is(pair.certFile, join(dataDir, 'tls', 'localhost.crt'));
  t.is(pair.keyFile, join(dataDir, 'tls', 'localhost.key'));
  t.is(statSync(pair.keyFile).mode & 0o777, 0o600);
  const cert = readFileSync(pair.certFile, 'utf8');
  const x509 = new X509Certificate(cert);
  t.regex(x509.subjectAltName ?? '', /DNS:localhost/);
  t.regex(x509.subjectAltName ?? '', /IP Address:127\.0\.0\.1/);
  t.regex(x509.subjectAltName ?? '', /IP Address:0:0:0:0:0:0:0:1/);
  t.is(x509.subject, 'CN=localhost');
  const days = (Date.parse(x509.validTo) - Date.now()) / 86400_000;
  t.true(days > 360 && days < 366, `${days}`);

  const store = new CertificateStore([pair], { logger: silentLogger(), watch: false });
  t.deepEqual(store.names(), [['localhost']]);
  const { port } = await serve(t, store);
  const result = await handshake(port, { servername: 'localhost', ca: cert, rejectUnauthorized: true });
  t.true(result.authorized);
  // By IP too: the IP SAN covers clients that connect to https://127.0.0.1/.
  const byIp = await handshake(port, { ca: cert, rejectUnauthorized: true });
  t.true(byIp.authorized);

  const reused = await ensureSelfSigned(dataDir, logger);
  t.deepEqual(reused, pair);
  t.is(new X509Certificate(readFileSync(pair.certFile)).fingerprint256, x509.fingerprint256);
});

test('ensureSelfSigned regenerates an expired, nearly expired or garbage certificate', async (t) => {
  const dataDir = tempDir(t, 'outpost-tls-');
  const tlsDir = join(dataDir, 'tls');
  mkdirSync(tlsDir, { recursive: true });
  const fingerprintOf = (file: string): string => new X509Certificate(readFileSync(file)).fingerprint256;

  const expired = await makeCertificate(['localhost'], { notBefore: new Date(Date.now() - 30 * 86400_000), notAfter: new Date(Date.now() - 86400_000) });
  let pair = writePair(tlsDir, 'localhost', expired);
  await ensureSelfSigned(dataDir, silentLogger());
  t.not(fingerprintOf(pair.certFile), fingerprint(expired.cert));
  t.true(Date.parse(new X509Certificate(readFileSync(pair.certFile)).validTo) > Date.now() + 300 * 86400_000);

  const soon = await makeCertificate(['localhost'], { notAfter: new Date(Date.now() + 3 * 86400_000) });
  pair = writePair(tlsDir, 'localhost', soon);
  await ensureSelfSigned(dataDir, silentLogger());
  t.not(fingerprintOf(pair.certFile), fingerprint(soon.cert));

  // Still valid for long enough, made elsewhere: reused as is.
  const fine = await makeCertificate(['localhost'], { notAfter: new Date(Date.now() + 30 * 86400_000) });
  pair = writePair(tlsDir, 'localhost', fine);
  await ensureSelfSigned(dataDir, silentLogger());
  t.is(fingerprintOf(pair.certFile), fingerprint(fine.cert));

  writeFileSync(pair.certFile, 'garbage');
  await ensureSelfSigned(dataDir, silentLogger());
  const regenerated = new X509Certificate(readFileSync(pair.certFile));
  t.true(regenerated.checkPrivateKey(createPrivateKey(readFileSync(pair.keyFile))));
  t.is(statSync(pair.keyFile).mode & 0o777, 0o600);
});
