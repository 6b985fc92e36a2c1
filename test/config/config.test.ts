/** One schema: file < environment < flags; a bad value is rejected at start-up naming the field and its source. */
import test from 'ava';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { ConfigError, loadConfig, parseBytes } from '../../config/config.js';
import { liveConfig, workerConfig } from '../../config/reload.js';

test('defaults per role, frozen', (t) => {
  const edge = loadConfig('edge');
  t.deepEqual(edge.listen, { host: '127.0.0.1', port: 8080 });
  t.is(loadConfig('shield').listen.port, 9000);
  t.is(edge.memorySize, 256 * 1024 * 1024);
  t.true(Object.isFrozen(edge));
});

test('file < environment < flags', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-config-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'outpost.json');
  writeFileSync(file, JSON.stringify({ memorySize: '64MB', lockWaitMs: 100, upstreams: ['http://127.0.0.1:9001'] }));
  const fromFile = loadConfig('edge', { file });
  t.is(fromFile.memorySize, 64 * 1024 * 1024);
  const fromEnv = loadConfig('edge', { file, env: { OUTPOST_LOCK_WAIT_MS: '250' } });
  t.is(fromEnv.lockWaitMs, 250);
  t.is(fromEnv.memorySize, 64 * 1024 * 1024);
  const fromFlags = loadConfig('edge', { file, env: { OUTPOST_LOCK_WAIT_MS: '250' }, flags: { lockWaitMs: ['300'], upstreams: ['http://127.0.0.1:9002', 'http://127.0.0.1:9003/'] } });
  t.is(fromFlags.lockWaitMs, 300);
  t.deepEqual(fromFlags.upstreams, ['http://127.0.0.1:9002', 'http://127.0.0.1:9003']);
});

test('a bad value names the field and where it came from', (t) => {
  const cases: Array<[() => unknown, string, RegExp]> = [
    [() => loadConfig('edge', { flags: { memorySize: ['12XB'] } }), 'memorySize', /flag --memory-size/],
    [() => loadConfig('edge', { env: { OUTPOST_LOCK_WAIT_MS: 'soon' } }), 'lockWaitMs', /OUTPOST_LOCK_WAIT_MS/],
    [() => loadConfig('edge', { fileContents: { upstreams: ['ftp://x'] } }), 'upstreams', /http/],
    [() => loadConfig('edge', { fileContents: { upstreams: ['http://x/path'] } }), 'upstreams', /no path/],
    [() => loadConfig('edge', { fileContents: { listen: 'nowhere' } }), 'listen', /host:port/],
    [() => loadConfig('edge', { fileContents: { heuristicFraction: 2 } }), 'heuristicFraction', /at most 1/],
    [() => loadConfig('edge', { fileContents: { bogus: 1 } }), 'bogus', /unknown field/],
    [() => loadConfig('edge', { flags: { storeStatuses: ['200,2xx'] } }), 'storeStatuses', /not a final status code.*2xx/],
    [() => loadConfig('edge', { fileContents: { storeStatuses: [200, 101] } }), 'storeStatuses', /not a final status code.*101/],
    [() => loadConfig('edge', { fileContents: { origins: ['http://x'] } }), 'origins', /not an option of the edge/],
    [() => loadConfig('shield', { fileContents: { balance: 'random' } }), 'balance', /one of/],
    [() => loadConfig('edge', { fileContents: { trustForwardedFrom: ['10.0.0.0/33'] } }), 'trustForwardedFrom', /CIDR/],
    [() => loadConfig('shield', { fileContents: { routes: [{ host: 'a', origins: [] }] } }), 'routes[0].origins', /non-empty/],
    [() => loadConfig('shield', { fileContents: { routes: [{ pathPrefix: 'api', origins: ['http://x'] }] } }), 'routes[0].pathPrefix', /start/],
    [() => loadConfig('edge', { fileContents: { accessLog: 'maybe' } }), 'accessLog', /true or false/],
  ];
  for (const [load, field, message] of cases) {
    const error = t.throws(load, { instanceOf: ConfigError });
    t.is(error?.field, field);
    t.regex(error!.message, message);
  }
});

test('a config file that is not JSON is named', (t) => {
  const dir = mkdtempSync(join(tmpdir(), 'outpost-config-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const file = join(dir, 'broken.json');
  writeFileSync(file, '{ "listen": ');
  const error = t.throws(() => loadConfig('edge', { file }), { instanceOf: ConfigError });
  t.regex(error!.message, /broken\.json.*not valid JSON/);
  t.throws(() => loadConfig('edge', { file: join(dir, 'missing.json') }), { message: /cannot read/ });
});

test('sizes take units', (t) => {
  t.is(parseBytes('10GB'), 10 * 1024 ** 3);
  t.is(parseBytes('256mb'), 256 * 1024 ** 2);
  t.is(parseBytes('1.5K'), 1536);
  t.is(parseBytes('12XB'), undefined);
});

test('storeStatuses takes a list of final statuses from any source', (t) => {
  t.deepEqual(loadConfig('edge').storeStatuses, []);
  t.deepEqual(loadConfig('edge', { env: { OUTPOST_STORE_STATUSES: '200, 301,404' } }).storeStatuses, [200, 301, 404]);
  t.deepEqual(loadConfig('shield', { fileContents: { storeStatuses: [200, '410'] } }).storeStatuses, [200, 410]);
});

test('workers: auto is one per core; a count outside 1..1024 is rejected naming the field', (t) => {
  t.is(loadConfig('edge').workers, availableParallelism());
  t.is(loadConfig('shield', { flags: { workers: ['3'] } }).workers, 3);
  t.is(loadConfig('edge').workerScheduling, 'kernel');
  t.throws(() => loadConfig('edge', { flags: { workers: ['0'] } }), { instanceOf: ConfigError, message: /invalid workers \(flag --workers\): must be auto or a whole number from 1 to 1024/ });
  t.throws(() => loadConfig('edge', { env: { OUTPOST_WORKERS: 'many' } }), { message: /invalid workers \(environment OUTPOST_WORKERS\)/ });
});

test('admin: off by default; beyond loopback only with a token; the token file is read; purge peers from flags and file', (t) => {
  t.is(loadConfig('edge').adminListen, undefined);
  t.deepEqual(loadConfig('edge', { flags: { adminListen: ['127.0.0.1:8081'] } }).adminListen, { host: '127.0.0.1', port: 8081 });
  t.throws(() => loadConfig('edge', { flags: { adminListen: ['0.0.0.0:8081'] } }), { message: /invalid adminToken \(config\): the admin API listens on 0\.0\.0\.0, beyond loopback: give --admin-token or --admin-token-file/ });
  t.is(loadConfig('edge', { flags: { adminListen: ['0.0.0.0:8081'], adminToken: ['s3cret'] } }).adminToken, 's3cret');
  const dir = mkdtempSync(join(tmpdir(), 'outpost-token-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  writeFileSync(join(dir, 'token'), 'from-file\n');
  writeFileSync(join(dir, 'empty'), '\n');
  t.is(loadConfig('edge', { flags: { adminListen: ['[::]:8081'], adminTokenFile: [join(dir, 'token')] } }).adminToken, 'from-file');
  t.throws(() => loadConfig('edge', { flags: { adminTokenFile: [join(dir, 'empty')] } }), { message: /invalid adminTokenFile .*is empty/ });
  t.throws(() => loadConfig('edge', { flags: { adminTokenFile: [join(dir, 'missing')] } }), { message: /invalid adminTokenFile .*cannot read/ });
  t.deepEqual(loadConfig('edge', { flags: { purgePeers: ['http://10.0.0.2:8081/', 'http://10.0.0.3:8081'] } }).purgePeers, [{ url: 'http://10.0.0.2:8081' }, { url: 'http://10.0.0.3:8081' }]);
  t.deepEqual(loadConfig('edge', { fileContents: { purgePeers: ['http://a:1', { url: 'http://b:2', token: 't' }] } }).purgePeers, [{ url: 'http://a:1' }, { url: 'http://b:2', token: 't' }]);
  t.throws(() => loadConfig('edge', { fileContents: { purgePeers: [{ url: 'http://b:2', secret: 't' }] } }), { message: /invalid purgePeers\[0\]\.secret \(config\): unknown field/ });
  t.throws(() => loadConfig('edge', { fileContents: { purgePeers: [{ url: 'ftp://b' }] } }), { message: /invalid purgePeers\[0\]\.url/ });
  t.is(loadConfig('shield').purgeRetrySec, 600);
});

test('SIGHUP: restart-only options keep their values and are named; a reload may not leave the running admin listener without a token; workers get no tokens', (t) => {
  const current = loadConfig('edge', { flags: { adminListen: ['0.0.0.0:8081'], adminToken: ['s3cret'], upstreams: ['http://127.0.0.1:9000'] } });
  const next = loadConfig('edge', { flags: { adminListen: ['127.0.0.1:8081'], upstreams: ['http://127.0.0.1:9001'], purgePeers: ['http://10.0.0.2:8081'] } });
  t.throws(() => liveConfig(current, next), { instanceOf: ConfigError, message: /invalid adminToken \(reload\): the admin API listens on 0\.0\.0\.0/ });
  const kept = liveConfig(current, { ...next, adminToken: 'new-token' });
  t.deepEqual(kept.needRestart, ['adminListen']);
  t.deepEqual(kept.config.adminListen, { host: '0.0.0.0', port: 8081 });
  t.deepEqual(kept.config.upstreams, ['http://127.0.0.1:9001']);
  const forWorkers = workerConfig(kept.config);
  t.is(forWorkers.adminToken, '');
  t.deepEqual(forWorkers.purgePeers, []);
  t.deepEqual(forWorkers.upstreams, ['http://127.0.0.1:9001']);
});

test('sliceSize is 0 (off) or at least 64KB, with the field named', (t) => {
  t.throws(() => loadConfig('edge', { flags: { sliceSize: ['1KB'] } }), { instanceOf: ConfigError, message: /invalid sliceSize \(flag --slice-size\): must be 0 \(off\) or at least 65536, got 1024$/ });
  t.throws(() => loadConfig('edge', { env: { OUTPOST_SLICE_SIZE: '1000' } }), { message: /invalid sliceSize \(environment OUTPOST_SLICE_SIZE\)/ });
  t.is(loadConfig('edge', { flags: { sliceSize: ['0'] } }).sliceSize, 0);
  t.is(loadConfig('edge', { flags: { sliceSize: ['64KB'] } }).sliceSize, 65536);
  t.is(loadConfig('edge', {}).sliceSize, 8 * 1024 * 1024);
});
