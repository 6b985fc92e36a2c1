/**
 * A realistic mix: mostly popular cacheable objects, a long tail of cold ones, Vary variants,
 * slow origin responses, uncacheable (private, no-store) pages and some 404s, ramping up and
 * down. Besides latency it checks correctness under load: private and no-store answers never
 * come from the cache, every response carries Cache-Status, the error rate stays low.
 *
 *   k6 run -e TARGET=http://127.0.0.1:8081 loadtests/mixed.ts
 *   docker compose --profile loadtest run --rm k6 run /scripts/mixed.ts
 *
 * Knobs: PEAK_RATE (1000/s), STAGE (30s: each ramp/plateau stage), TAIL (10000 distinct
 * long-tail keys), P95_MS (100).
 */
import { check } from 'k6';
import http from 'k6/http';
import { Rate } from 'k6/metrics';
import type { Options } from 'k6/options';
import { TARGET, edgeCacheStatus, envNumber, envString, isEdgeHit } from './lib/common.ts';

const PEAK = envNumber('PEAK_RATE', 1000);
const STAGE = envString('STAGE', '30s');
const TAIL = envNumber('TAIL', 10_000);
const P95_MS = envNumber('P95_MS', 100);

// 404s are an expected answer here, not a failure.
http.setResponseCallback(http.expectedStatuses({ min: 200, max: 399 }, 404));

const hitRatio = new Rate('edge_hit_ratio');
const privateLeak = new Rate('uncacheable_served_from_cache');

interface Request {
  kind: string;
  method: 'GET' | 'HEAD';
  path: string;
  headers?: Record<string, string>;
  status: number;
  /** Must never be an edge hit (private, no-store). */
  neverHit?: boolean;
}

const LANGUAGES = ['en', 'fr', 'de', 'en-US,en;q=0.8', 'ja'];
const SIZES = [512, 4096, 16_384, 65_536, 1_048_576];

function pick<T>(items: readonly T[]): T {
  return items[Math.floor(Math.random() * items.length)]!;
}

/** Weighted picks; the weights add up to 100. */
const MIX: Array<[number, () => Request]> = [
  [35, () => ({ kind: 'popular', method: 'GET', path: '/hello', status: 200 })],
  [10, () => ({ kind: 'swr', method: 'GET', path: '/time', status: 200 })],
  [10, () => ({ kind: 'vary', method: 'GET', path: '/lang', headers: { 'Accept-Language': pick(LANGUAGES) }, status: 200 })],
  [10, () => ({ kind: 'bytes', method: 'GET', path: `/bytes/${pick(SIZES)}`, status: 200 })],
  [12, () => ({ kind: 'long-tail', method: 'GET', path: `/bytes/2048?item=${Math.floor(Math.random() * TAIL)}`, status: 200 })],
  [4, () => ({ kind: 'slow', method: 'GET', path: '/slow', status: 200 })],
  [5, () => ({ kind: 'private', method: 'GET', path: '/private', status: 200, neverHit: true })],
  [5, () => ({ kind: 'no-store', method: 'GET', path: '/no-store', status: 200, neverHit: true })],
  [4, () => ({ kind: 'not-found', method: 'GET', path: `/missing/${Math.floor(Math.random() * 100)}`, status: 404 })],
  [3, () => ({ kind: 'head', method: 'HEAD', path: '/hello', status: 200 })],
  [2, () => ({ kind: 'revalidate', method: 'GET', path: '/hello', headers: { 'Cache-Control': 'max-age=0' }, status: 200 })],
];

function nextRequest(): Request {
  let roll = Math.random() * 100;
  for (const [weight, make] of MIX) {
    if (roll < weight) return make();
    roll -= weight;
  }
  return MIX[0]![1]();
}

export const options: Options = {
  scenarios: {
    mixed: {
      executor: 'ramping-arrival-rate',
      startRate: Math.ceil(PEAK / 10),
      timeUnit: '1s',
      preAllocatedVUs: Math.max(20, Math.ceil(PEAK / 20)),
      maxVUs: Math.max(100, Math.ceil(PEAK / 2)),
      stages: [
        { target: PEAK, duration: STAGE },
        { target: PEAK, duration: STAGE },
        { target: Math.ceil(PEAK / 10), duration: STAGE },
      ],
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.001'],
    // /slow takes 500 ms at the origin on a miss: keep it out of the latency budget of the rest.
    'http_req_duration{kind:popular}': [`p(95)<${P95_MS}`],
    'http_req_duration{kind:bytes}': [`p(95)<${P95_MS * 2}`],
    'http_req_duration{kind:slow}': ['p(95)<1500'],
    uncacheable_served_from_cache: ['rate==0'],
    // Popular objects dominate: most answers should be edge hits once warm.
    'edge_hit_ratio{kind:popular}': ['rate>0.95'],
    checks: ['rate>0.999'],
  },
};

export default function (): void {
  const req = nextRequest();
  const res = http.request(req.method, `${TARGET}${req.path}`, null, {
    headers: req.headers ?? {},
    tags: { kind: req.kind, name: req.kind },
  });
  const hit = isEdgeHit(res);
  hitRatio.add(hit, { kind: req.kind });
  if (req.neverHit) privateLeak.add(hit, { kind: req.kind });
  check(res, {
    'expected status': (r) => r.status === req.status,
    'Cache-Status present': (r) => edgeCacheStatus(r) !== '',
  });
}
