/**
 * A node's metrics, exposed in the Prometheus format through prom-client. Counters are plain
 * numbers that prom-client reads when it is scraped (`collect`), and the latency histograms
 * count into arrays (`LatencyHistogram`), so the request path pays a few array increments and no
 * label hashing or allocation.
 * A multi-worker node sums its workers' registries with prom-client's cluster aggregator.
 */
import { Counter, Gauge, Registry, type Aggregator, type Metric, type MetricObjectWithValues, type MetricValue } from 'prom-client';
import { CACHE_OUTCOMES as OUTCOMES, type CacheOutcome as Outcome } from './exchange.js';

/** An outcome's row in the tallies: a property read on the request path, not a search. */
const OUTCOME_INDEX = Object.fromEntries(OUTCOMES.map((outcome, i) => [outcome, i])) as Record<Outcome, number>;
const STATUS_CLASSES = ['1xx', '2xx', '3xx', '4xx', '5xx'] as const;

/** Seconds; a memory hit takes well under a millisecond, a miss through two tiers tens of them. */
const LATENCY_BUCKETS = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

/** The plain data a registry exports (it crosses the cluster IPC channel). */
export type MetricsJson = MetricObjectWithValues<MetricValue<string>>[];

type Labels = Record<string, string>;

export class Metrics {
  readonly registry = new Registry();
  /** False: only the counts /stats needs are kept on the request path (the benchmark baseline). */
  readonly detailed: boolean;
  /** requests[outcome][status class]. */
  private readonly requests = OUTCOMES.map(() => new Float64Array(STATUS_CLASSES.length));
  private readonly ownerRequests = new Float64Array(OUTCOMES.length);
  private bytesServed = 0;
  private collapsed = 0;
  private readonly latency: LatencyHistogram;
  private readonly upstreamLatency: LatencyHistogram;
  /** Counters for rarer events, created on first use: name → label text → value. */
  private readonly events = new Map<string, Map<string, { labels: Labels; value: number }>>();

  constructor(options: { detailed?: boolean; labels?: Labels } = {}) {
    this.detailed = options.detailed ?? true;
    if (options.labels) this.registry.setDefaultLabels(options.labels);
    // Read when scraped; zero series are left out.
    this.counterFrom('requests_total', 'client requests by cache outcome and status class', ['outcome', 'status_class'], () =>
      OUTCOMES.flatMap((outcome, i) => STATUS_CLASSES.map((status_class, c): [Labels, number] => [{ outcome, status_class }, this.requests[i]![c]!])),
    );
    this.counterFrom('owner_requests_total', "requests answered for another worker of the node, as the key's owner", ['outcome'], () =>
      OUTCOMES.map((outcome, i): [Labels, number] => [{ outcome }, this.ownerRequests[i]!]),
    );
    this.counterFrom('response_body_bytes_total', 'body bytes sent to clients', [], () => [[{}, this.bytesServed]]);
    this.counterFrom('collapsed_requests_total', 'requests that waited for another request’s fill instead of fetching (single-flight)', [], () => [[{}, this.collapsed]]);
    this.latency = new LatencyHistogram('outpost_request_duration_seconds', 'from request headers received to the response end', this.registry);
    this.upstreamLatency = new LatencyHistogram('outpost_upstream_duration_seconds', 'from an upstream request sent to its response headers', this.registry);
  }

  /** Called once per client request, when its response is done. */
  request(outcome: Outcome, status: number, bytes: number, seconds: number, collapsed: boolean): void {
    const statusClass = status >= 100 && status < 600 ? Math.floor(status / 100) - 1 : 4;
    this.requests[OUTCOME_INDEX[outcome]]![statusClass]!++;
    if (collapsed) this.collapsed++;
    if (!this.detailed) return;
    this.bytesServed += bytes;
    this.latency.observe(seconds);
  }

  /** A request answered for another worker (counted as a client request where the client is). */
  ownerRequest(outcome: Outcome): void {
    this.ownerRequests[OUTCOME_INDEX[outcome]]!++;
  }

  upstreamResponded(seconds: number): void {
    if (this.detailed) this.upstreamLatency.observe(seconds);
  }

  /** Adds `by` to counter `outpost_{name}` with the given labels (the same label names every time). */
  inc(name: string, help: string, labels: Labels = {}, by = 1): void {
    let values = this.events.get(name);
    if (values === undefined) {
      const series = (values = new Map());
      this.events.set(name, series);
      new Counter({
        name: `outpost_${name}`,
        help,
        labelNames: Object.keys(labels),
        registers: [this.registry],
        collect() {
          this.reset();
          for (const { labels: l, value } of series.values()) this.inc(l, value);
        },
      });
    }
    const key = JSON.stringify(labels);
    const entry = values.get(key);
    if (entry) entry.value += by;
    else values.set(key, { labels, value: by });
  }

  get(name: string, labels: Labels = {}): number {
    return this.events.get(name)?.get(JSON.stringify(labels))?.value ?? 0;
  }

  /** Requests by outcome, all status classes summed (for /stats). */
  requestsByOutcome(): Record<Outcome, number> {
    return Object.fromEntries(OUTCOMES.map((outcome, i) => [outcome, this.requests[i]!.reduce((a, b) => a + b, 0)])) as Record<Outcome, number>;
  }

  collapsedRequests(): number {
    return this.collapsed;
  }

  /**
   * A gauge read when scraped. `aggregator` says how a multi-worker node combines the workers'
   * values: summed (sizes, counts) or averaged (a member's health as each worker sees it).
   */
  gauge(name: string, help: string, labelNames: readonly string[], read: () => Array<[Labels, number]>, aggregator: Aggregator = 'sum'): void {
    new Gauge({
      name: `outpost_${name}`,
      help,
      labelNames,
      aggregator,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const [labels, value] of read()) this.set(labels, value);
      },
    });
  }

  /** A counter whose totals are kept elsewhere (our tallies, a store's eviction count), read when scraped; zero series are left out. */
  counterFrom(name: string, help: string, labelNames: readonly string[], read: () => Array<[Labels, number]>): void {
    new Counter({
      name: `outpost_${name}`,
      help,
      labelNames,
      registers: [this.registry],
      collect() {
        this.reset();
        for (const [labels, value] of read()) if (value > 0) this.inc(labels, value);
      },
    });
  }

  json(): Promise<MetricsJson> {
    return this.registry.getMetricsAsJSON() as Promise<MetricsJson>;
  }
}

/**
 * A histogram whose observe() is one bucket increment. prom-client's own Histogram allocates and
 * hashes a label set on every observation, which cost hot hits 5 % (BENCHMARKS.md, issue 10);
 * prom-client still renders and aggregates this one through the same `get()` its metrics have.
 */
class LatencyHistogram {
  /** Observations per bucket, not cumulative; the last slot is above the largest bound. */
  private readonly counts = new Float64Array(LATENCY_BUCKETS.length + 1);
  private sum = 0;
  private count = 0;

  constructor(
    readonly name: string,
    readonly help: string,
    registry: Registry,
  ) {
    registry.registerMetric(this as unknown as Metric);
  }

  observe(seconds: number): void {
    let i = 0;
    while (i < LATENCY_BUCKETS.length && seconds > LATENCY_BUCKETS[i]!) i++;
    this.counts[i]!++;
    this.sum += seconds;
    this.count++;
  }

  /** prom-client's histogram export: cumulative `_bucket` series by `le`, then `_sum` and `_count`. */
  async get() {
    const bucket = `${this.name}_bucket`;
    let cumulative = 0;
    const values: Array<MetricValue<string> & { metricName: string }> = LATENCY_BUCKETS.map((le, i) => {
      cumulative += this.counts[i]!;
      return { labels: { le }, value: cumulative, metricName: bucket };
    });
    values.push(
      { labels: { le: '+Inf' }, value: this.count, metricName: bucket },
      { labels: {}, value: this.sum, metricName: `${this.name}_sum` },
      { labels: {}, value: this.count, metricName: `${this.name}_count` },
    );
    return { name: this.name, help: this.help, type: 'histogram', values, aggregator: 'sum' };
  }
}
