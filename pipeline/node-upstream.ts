/**
 * The node's upstream as the pipeline holds it: the configured shield ring or origin pool,
 * replaced in place when SIGHUP brings new upstreams (requests in flight finish on the old one),
 * and timed for the upstream latency histogram.
 */
import type { Metrics } from './metrics.js';
import type { Upstream, UpstreamRequest, UpstreamResponse } from './upstream.js';

/** A member's health as the balancer sees it (active checks, ejection, passive down time). */
export interface MemberHealth {
  member: string;
  healthy: boolean;
}

/** Upstreams that track their members' health say so (shield ring, origin pool, routes). */
export interface HealthReporting {
  memberHealth(): MemberHealth[];
}

export class NodeUpstream implements Upstream, HealthReporting {
  private readonly retired = new Set<Promise<void>>();

  constructor(
    private current: Upstream,
    private readonly metrics: Metrics,
  ) {}

  async request(request: UpstreamRequest): Promise<UpstreamResponse> {
    if (!this.metrics.detailed) return this.current.request(request);
    const started = performance.now();
    const response = await this.current.request(request);
    this.metrics.upstreamResponded((performance.now() - started) / 1000);
    return response;
  }

  /** Every member and whether it takes requests; an upstream with no health tracking is one healthy member. */
  memberHealth(): MemberHealth[] {
    const reporting = this.current as Partial<HealthReporting>;
    return typeof reporting.memberHealth === 'function' ? reporting.memberHealth() : [{ member: 'upstream', healthy: true }];
  }

  /** New requests go to `next`; the old upstream closes once its requests in flight are done. */
  replace(next: Upstream): void {
    const old = this.current;
    this.current = next;
    // A retired pool that fails to close has nothing left to serve: its error is dropped, not thrown later.
    const closing: Promise<void> = old
      .close()
      .catch(() => undefined)
      .finally(() => this.retired.delete(closing));
    this.retired.add(closing);
  }

  async close(): Promise<void> {
    await Promise.all([...this.retired, this.current.close()]);
  }
}
