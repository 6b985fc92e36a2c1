import test from 'ava';
import { RetryBudget } from '../../origin-shield/retry-budget.js';

test('defaults are Envoy\'s: 20 % with a minimum of 3', (t) => {
  const budget = new RetryBudget();
  t.is(budget.budgetPercent, 20);
  t.is(budget.minRetryConcurrency, 3);
  t.is(budget.maxRetries, 3);
});

test('max retries = max(min, floor(percent × active requests))', (t) => {
  const budget = new RetryBudget({ budgetPercent: 20, minRetryConcurrency: 3 });
  const ends: Array<() => void> = [];
  const expect = (active: number, max: number) => {
    while (budget.activeRequests < active) ends.push(budget.startRequest());
    t.is(budget.maxRetries, max, `${active} active`);
  };
  expect(0, 3);
  expect(10, 3); // 2 < 3
  expect(15, 3);
  expect(20, 4);
  expect(24, 4); // 4.8 → 4
  expect(25, 5);
  expect(100, 20);
  for (const end of ends) end();
  t.is(budget.activeRequests, 0);
});

test('retries are granted while in flight < max, refused after, and freed on release', (t) => {
  const budget = new RetryBudget({ budgetPercent: 50, minRetryConcurrency: 1 });
  const ends = Array.from({ length: 4 }, () => budget.startRequest()); // max = 2
  const r1 = budget.tryAcquireRetry();
  const r2 = budget.tryAcquireRetry();
  t.truthy(r1);
  t.truthy(r2);
  t.is(budget.retriesInFlight, 2);
  t.is(budget.tryAcquireRetry(), undefined);
  t.is(budget.denied, 1);
  r1!();
  r1!(); // releasing twice is harmless
  t.is(budget.retriesInFlight, 1);
  t.truthy(budget.tryAcquireRetry());
  // Fewer active requests shrink the budget: 1 active × 50 % = 0 → minimum 1, and 2 are in flight.
  ends.slice(1).forEach((end) => end());
  t.is(budget.maxRetries, 1);
  t.is(budget.tryAcquireRetry(), undefined);
});

test('a zero budget with no minimum allows no retries', (t) => {
  const budget = new RetryBudget({ budgetPercent: 0, minRetryConcurrency: 0 });
  budget.startRequest();
  t.is(budget.tryAcquireRetry(), undefined);
});

test('rejects negative settings', (t) => {
  t.throws(() => new RetryBudget({ budgetPercent: -1 }), { instanceOf: RangeError });
  t.throws(() => new RetryBudget({ minRetryConcurrency: -1 }), { instanceOf: RangeError });
});
