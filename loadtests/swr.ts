/**
 * Stale-while-revalidate under steady load: `/time` is `max-age=5, stale-while-revalidate=30`.
 * Every 5 s the object goes stale; the first request after that must still be answered at once
 * from the stale copy while one background fetch refreshes it. No request should wait for the
 * origin, and the content should never be much older than the freshness lifetime.
 *
 *   k6 run -e TARGET=http://127.0.0.1:8081 loadtests/swr.ts
 *   docker compose --profile loadtest run --rm k6 run /scripts/swr.ts
 *
 * Knobs: RATE (200/s), DURATION (60s: twelve expiries), SWR_PATH (/time), MAX_MS (250: the
 * slowest answer allowed), MAX_CONTENT_AGE_MS (15000: two cache tiers, each up to 5 s fresh plus
 * a refresh).
 */
import { check } from 'k6';
import http from 'k6/http';
import { Rate, Trend } from 'k6/metrics';
import type { Options } from 'k6/options';
import { TARGET, edgeForward, envNumber, envString, isEdgeHit, isEdgeStaleWhileRevalidate } from './lib/common.ts';

const RATE = envNumber('RATE', 200);
const PATH = envString('SWR_PATH', '/time');
const MAX_MS = envNumber('MAX_MS', 250);
const MAX_CONTENT_AGE_MS = envNumber('MAX_CONTENT_AGE_MS', 15_000);

/** How old the origin's clock in the body is when the client receives it. */
const contentAge = new Trend('swr_content_age_ms', true);
/** Answers that had to wait for an upstream fetch after warm-up (should be none). */
const blocking = new Rate('swr_blocking_fetch');
const staleServed = new Rate('swr_stale_served');

export const options: Options = {
  scenarios: {
    steady: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: envString('DURATION', '60s'),
      preAllocatedVUs: Math.max(10, Math.ceil(RATE / 20)),
      maxVUs: Math.max(50, RATE),
      tags: { phase: 'steady' },
    },
  },
  thresholds: {
    'http_req_duration{phase:steady}': [`max<${MAX_MS}`, 'p(99)<50'],
    'http_req_failed{phase:steady}': ['rate==0'],
    swr_blocking_fetch: ['rate==0'],
    swr_content_age_ms: [`max<${MAX_CONTENT_AGE_MS}`],
    // Over 60 s the object expires about twelve times: some stale answers must have been served.
    swr_stale_served: ['rate>0'],
    checks: ['rate==1'],
  },
};

export function setup(): { url: string } {
  const url = `${TARGET}${PATH}`;
  // Fill both tiers; the first request may be a miss that waits for the origin.
  http.get(url, { tags: { phase: 'warm-up' } });
  return { url };
}

/** "origin time 2026-11-27T21:10:59.123Z" → epoch ms, or NaN. */
function originTime(body: unknown): number {
  if (typeof body !== 'string') return Number.NaN;
  const match = /origin time (\S+)/.exec(body);
  return match ? Date.parse(match[1]!) : Number.NaN;
}

export default function (data: { url: string }): void {
  const res = http.get(data.url);
  const hit = isEdgeHit(res);
  const swr = isEdgeStaleWhileRevalidate(res);
  // Anything else (fwd=stale; fwd-status=304, fwd=uri-miss) waited for an upstream fetch.
  const waited = !hit && !swr;
  blocking.add(waited, { fwd: edgeForward(res) || 'hit' });
  staleServed.add(swr);
  const born = originTime(res.body);
  if (Number.isFinite(born)) contentAge.add(Date.now() - born);
  check(res, {
    'status 200': (r) => r.status === 200,
    'hit or stale-while-revalidate': () => hit || swr,
    'body has the origin time': () => Number.isFinite(born),
  });
}
