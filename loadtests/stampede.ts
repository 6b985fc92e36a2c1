/**
 * Stampede: many VUs request one cold URL at the same instant. The edge should collapse them
 * onto one fetch (and the shield again onto one origin fetch); nobody waits for a queue of
 * origin fetches, and everybody gets the same response.
 *
 * The URL is `/time?stampede=<run id>`: cold on every run, and its body is the origin's clock,
 * so two origin fetches give two different bodies. After the burst each VU fetches the URL
 * again (now cached) and checks its own burst body is the stored one: one origin fetch served
 * everybody.
 *
 *   k6 run -e TARGET=http://127.0.0.1:8081 loadtests/stampede.ts
 *   docker compose --profile loadtest run --rm k6 run /scripts/stampede.ts
 *
 * Knobs: VUS (500), STAMPEDE_PATH (/time; /slow takes 500 ms at the origin but always has the
 * same body), MAX_MS (2000: the slowest answer of the burst).
 */
import { check, sleep } from 'k6';
import http from 'k6/http';
import { Rate } from 'k6/metrics';
import type { Options } from 'k6/options';
import { TARGET, edgeCacheStatus, edgeForward, envNumber, envString, isEdgeHit, runId } from './lib/common.ts';

const VUS = envNumber('VUS', 500);
const PATH = envString('STAMPEDE_PATH', '/time');
const MAX_MS = envNumber('MAX_MS', 2000);

/** Share of VUs whose burst answer is the body the cache kept (1 when one origin fetch served all). */
const sameBody = new Rate('stampede_same_body');
/** Share of burst answers the edge served without fetching on the client's own behalf. */
const collapsed = new Rate('stampede_collapsed_or_hit');

export const options: Options = {
  scenarios: {
    burst: {
      // Every VU is initialised before the scenario starts, then all run their one iteration at once.
      executor: 'per-vu-iterations',
      vus: VUS,
      iterations: 1,
      maxDuration: '1m',
    },
  },
  thresholds: {
    'http_req_duration{phase:burst}': [`max<${MAX_MS}`],
    'http_req_failed{phase:burst}': ['rate==0'],
    stampede_same_body: ['rate==1'],
    stampede_collapsed_or_hit: ['rate==1'],
    checks: ['rate==1'],
  },
};

export function setup(): { url: string } {
  // Unique per run: a cold key on the edge and on the shields, even when they are warm.
  return { url: `${TARGET}${PATH}?stampede=${runId()}` };
}

export default function (data: { url: string }): void {
  const burst = http.get(data.url, { tags: { phase: 'burst' } });
  const fwd = edgeForward(burst);
  check(burst, {
    'burst: status 200': (r) => r.status === 200,
    // A cold miss (the leader and the requests collapsed onto it) or a hit once it is stored.
    // Not: detail=lock-timeout (waited too long), hit-for-miss / bypass (not collapsible).
    'burst: miss or hit': (r) => isEdgeHit(r) || (fwd === 'uri-miss' && !edgeCacheStatus(r).includes('detail=')),
  });
  collapsed.add(isEdgeHit(burst) || (fwd === 'uri-miss' && !edgeCacheStatus(burst).includes('detail=')));

  // Let every VU finish its burst request, then read the object back from the cache.
  sleep(1);
  const after = http.get(data.url, { tags: { phase: 'after' } });
  check(after, {
    'after: status 200': (r) => r.status === 200,
    'after: edge hit or stale-while-revalidate': (r) => isEdgeHit(r) || edgeForward(r) === 'stale',
  });
  sameBody.add(typeof burst.body === 'string' && burst.body === after.body);
}
