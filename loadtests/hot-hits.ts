/**
 * Hot hits: a constant arrival rate of requests for one object the edge already holds.
 * Measures the edge's hit path (memory tier) and checks every answer is an edge hit.
 *
 *   k6 run -e TARGET=http://127.0.0.1:8081 loadtests/hot-hits.ts
 *   docker compose --profile loadtest run --rm k6 run /scripts/hot-hits.ts
 *
 * Knobs (-e NAME=value): RATE (requests/s, 2000), DURATION (60s), HOT_PATH (/bytes/1024: fresh
 * for an hour, so it never expires mid-test), P99_MS (25), P95_MS (10).
 */
import { check, fail } from 'k6';
import http from 'k6/http';
import type { Options } from 'k6/options';
import { TARGET, edgeCacheStatus, envNumber, envString, isEdgeHit } from './lib/common.ts';

const RATE = envNumber('RATE', 2000);
const HOT_PATH = envString('HOT_PATH', '/bytes/1024');
const P99_MS = envNumber('P99_MS', 25);
const P95_MS = envNumber('P95_MS', 10);

export const options: Options = {
  scenarios: {
    hot: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: envString('DURATION', '60s'),
      preAllocatedVUs: Math.max(10, Math.ceil(RATE / 50)),
      maxVUs: Math.max(50, Math.ceil(RATE / 5)),
      tags: { phase: 'hot' },
    },
  },
  thresholds: {
    // Only the measured requests (tag phase:hot), not the warm-up in setup().
    'http_req_duration{phase:hot}': [`p(99)<${P99_MS}`, `p(95)<${P95_MS}`],
    'http_req_failed{phase:hot}': ['rate<0.001'],
    'checks{check:edge hit}': ['rate>0.999'],
    checks: ['rate>0.999'],
    // k6 could not start iterations on time: the load generator, not the edge, was the limit.
    dropped_iterations: [`count<${Math.ceil(RATE)}`],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(95)', 'p(99)', 'max'],
};

/** Fetches the object until the edge reports a hit (the first request fills it). */
export function setup(): { url: string } {
  const url = `${TARGET}${HOT_PATH}`;
  for (let attempt = 1; attempt <= 10; attempt++) {
    const res = http.get(url, { tags: { phase: 'warm-up' } });
    if (res.status !== 200) fail(`warm-up GET ${url}: status ${res.status} (is the edge up? TARGET=${TARGET})`);
    if (isEdgeHit(res)) return { url };
  }
  return fail(`warm-up GET ${url}: never became an edge hit; last Cache-Status did not say hit`);
}

export default function (data: { url: string }): void {
  const res = http.get(data.url);
  check(res, {
    'status 200': (r) => r.status === 200,
    'edge hit': (r) => isEdgeHit(r),
    'Cache-Status present': (r) => edgeCacheStatus(r) !== '',
  });
}
