import test from 'ava';
import { HealthChecker, type HealthChange } from '../../origin-shield/health-check.js';
import { startTestOrigin } from './fixtures/test-origin.js';

test('a healthy target stays healthy; probes hit the configured path', async (t) => {
  const origin = await startTestOrigin();
  t.teardown(() => origin.close());
  const checker = new HealthChecker([origin.url], { healthyThreshold: 2, unhealthyThreshold: 2 });
  await checker.checkNow();
  await checker.checkNow();
  t.true(checker.isHealthy(origin.url));
  t.is(origin.probes, 2);
  t.is(origin.requests, 0);
  t.like(checker.status()[0], { url: origin.url, healthy: true, consecutivePasses: 2, consecutiveFailures: 0 });
});

test('unhealthy only after unhealthyThreshold consecutive failures, healthy again after healthyThreshold passes', async (t) => {
  const origin = await startTestOrigin();
  t.teardown(() => origin.close());
  const changes: HealthChange[] = [];
  const checker = new HealthChecker([origin.url], { healthyThreshold: 2, unhealthyThreshold: 3 });
  checker.on('change', (c) => changes.push(c));

  origin.healthStatus = 500;
  await checker.checkNow();
  await checker.checkNow();
  t.true(checker.isHealthy(origin.url), 'two failures are below the threshold of 3');
  origin.healthStatus = 200;
  await checker.checkNow(); // a pass resets the failure streak
  origin.healthStatus = 500;
  await checker.checkNow();
  await checker.checkNow();
  t.true(checker.isHealthy(origin.url), 'the streak restarted after the pass');
  await checker.checkNow();
  t.false(checker.isHealthy(origin.url));
  t.deepEqual(changes, [{ url: origin.url, healthy: false, reason: 'status 500' }]);

  origin.healthStatus = 200;
  await checker.checkNow();
  t.false(checker.isHealthy(origin.url), 'one pass is below the threshold of 2');
  await checker.checkNow();
  t.true(checker.isHealthy(origin.url));
  t.deepEqual(changes.at(-1), { url: origin.url, healthy: true });
  t.is(changes.length, 2);
});

test('expected status may be an exact code or a range', async (t) => {
  const origin = await startTestOrigin();
  t.teardown(() => origin.close());
  origin.healthStatus = 204;
  const exact = new HealthChecker([origin.url], { expectedStatus: 200, unhealthyThreshold: 1 });
  const range = new HealthChecker([origin.url], { expectedStatus: [200, 299], unhealthyThreshold: 1 });
  await Promise.all([exact.checkNow(), range.checkNow()]);
  t.false(exact.isHealthy(origin.url));
  t.true(range.isHealthy(origin.url));
});

test('refused connections and timeouts count as failures', async (t) => {
  const dead = await startTestOrigin();
  await dead.close();
  const slow = await startTestOrigin({ healthPath: '/never' }); // health path not special: held like any request
  slow.mode = 'hold';
  t.teardown(() => slow.close());
  const checker = new HealthChecker([dead.url, slow.url], { path: '/slow', timeoutMs: 50, unhealthyThreshold: 1 });
  await checker.checkNow();
  t.false(checker.isHealthy(dead.url));
  t.false(checker.isHealthy(slow.url));
  const reasons = Object.fromEntries(checker.status().map((s) => [s.url, s.lastReason]));
  t.is(reasons[dead.url], 'ECONNREFUSED');
  t.is(reasons[slow.url], 'timeout after 50 ms');
});

test('initiallyHealthy: false keeps a target out until it passes healthyThreshold probes', async (t) => {
  const origin = await startTestOrigin();
  t.teardown(() => origin.close());
  const checker = new HealthChecker([origin.url], { initiallyHealthy: false, healthyThreshold: 2 });
  t.false(checker.isHealthy(origin.url));
  await checker.checkNow();
  t.false(checker.isHealthy(origin.url));
  await checker.checkNow();
  t.true(checker.isHealthy(origin.url));
  t.true(checker.isHealthy('http://127.0.0.1:1'), 'unknown targets are not taken away');
});

test('start() probes every intervalMs until stop()', async (t) => {
  const origin = await startTestOrigin();
  t.teardown(() => origin.close());
  const checker = new HealthChecker([origin.url], { intervalMs: 20, unhealthyThreshold: 2 });
  const down = new Promise<HealthChange>((resolve) => checker.once('change', resolve));
  checker.start();
  // Repeated probing, without asserting a wall-clock rate (machines here are shared and noisy).
  const deadline = Date.now() + 5_000;
  while (origin.probes < 3 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  t.true(origin.probes >= 3, `only ${origin.probes} probes`);
  origin.healthStatus = 503;
  t.deepEqual(await down, { url: origin.url, healthy: false, reason: 'status 503' });
  checker.stop();
  await new Promise((r) => setTimeout(r, 30)); // let a probe already in flight land
  const after = origin.probes;
  await new Promise((r) => setTimeout(r, 100));
  t.is(origin.probes, after, 'no probes after stop()');
});

test('rejects nonsensical options', (t) => {
  t.throws(() => new HealthChecker([], { intervalMs: 0 }), { instanceOf: RangeError });
  t.throws(() => new HealthChecker([], { healthyThreshold: 0 }), { instanceOf: RangeError });
});
