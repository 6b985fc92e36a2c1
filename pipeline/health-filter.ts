/**
 * Answers the node's own liveness path before the cache sees the request, so edges (and load
 * balancers) can probe a shield without the probe reaching an origin.
 */
import type { RequestFilter } from './cache-pipeline.js';

export const HEALTH_PATH = '/__outpost/health';

export const healthFilter: RequestFilter = (x) => {
  if (x.req.url !== HEALTH_PATH) return false;
  x.outcome = 'synthetic';
  x.res.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'no-store', 'content-length': 3 });
  x.res.end(x.method === 'HEAD' ? undefined : 'ok\n');
  return true;
};
