/** Origin pool and health-check edge cases found in review. */
import test from 'ava';
import { HealthChecker } from '../../origin-shield/health-check.js';
import { OriginPool } from '../../origin-shield/origin-pool.js';
import { closeAll, getRequest, readText, startTestOrigins } from './fixtures/test-origin.js';

test('a drained (weight 0) member does not hold off panic mode when every weighted member is ejected', async (t) => {
  const origins = await startTestOrigins(2);
  const [a, b] = origins as [(typeof origins)[0], (typeof origins)[0]];
  const pool = new OriginPool({
    members: [{ url: a.url, weight: 1 }, { url: b.url, weight: 0 }],
    outlierDetection: { consecutive5xx: 1, baseEjectionMs: 60_000 },
  });
  t.teardown(async () => {
    await pool.close();
    await closeAll(origins);
  });
  a.mode = '5xx';
  const failed = await pool.request(getRequest('/x'));
  await readText(failed);
  t.true(pool.members().find((m) => m.url === a.url)!.ejected, 'the only weighted member is ejected');
  a.mode = 'ok';
  // Panic mode: with no weighted member available, traffic still goes to the pool.
  const response = await pool.request(getRequest('/y'));
  t.is(response.statusCode, 200);
  await readText(response);
  t.true(pool.stats().panics > 0);
});

test('a request refused before it leaves the process (invalid path) does not count against the origin', async (t) => {
  const origins = await startTestOrigins(1);
  const pool = new OriginPool({ members: [origins[0]!.url], outlierDetection: { consecutive5xx: 2, consecutiveConnectFailures: 2 } });
  t.teardown(async () => {
    await pool.close();
    await closeAll(origins);
  });
  for (let i = 0; i < 5; i++) {
    const error = await t.throwsAsync(pool.request(getRequest('/a b')));
    t.true((error as { local?: boolean }).local);
  }
  t.false(pool.members()[0]!.ejected);
  t.is((await pool.request(getRequest('/fine'))).statusCode, 200);
});

test('a probe that cannot even be sent counts as a failed probe and the checker keeps running', async (t) => {
  const origins = await startTestOrigins(1);
  t.teardown(() => closeAll(origins));
  const checker = new HealthChecker([origins[0]!.url], { host: 'bad\nhost', unhealthyThreshold: 1 });
  await checker.checkNow();
  t.false(checker.isHealthy(origins[0]!.url));
  await checker.checkNow();
  t.false(checker.isHealthy(origins[0]!.url));
  checker.stop();
});
