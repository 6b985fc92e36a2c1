/**
 * Counters for the cache pipeline, rendered in the Prometheus text format. Labels are the same
 * small enums that appear in Cache-Status and logs.
 */

export type MetricsSnapshot = Record<string, { help: string; values: Record<string, number> }>;

export class Metrics {
  private readonly counters = new Map<string, { help: string; values: Map<string, number> }>();

  constructor(private readonly prefix = 'outpost') {}

  /** Adds `by` to counter `name` with the given label set. */
  inc(name: string, help: string, labels: Record<string, string> = {}, by = 1): void {
    let counter = this.counters.get(name);
    if (!counter) this.counters.set(name, (counter = { help, values: new Map() }));
    const key = labelText(labels);
    counter.values.set(key, (counter.values.get(key) ?? 0) + by);
  }

  /** A pre-bound counter for hot paths: `inc()` is one Map update, no label formatting. */
  bound(name: string, help: string, labels: Record<string, string> = {}): { inc(by?: number): void } {
    let counter = this.counters.get(name);
    if (!counter) this.counters.set(name, (counter = { help, values: new Map() }));
    const values = counter.values;
    const key = labelText(labels);
    if (!values.has(key)) values.set(key, 0);
    return { inc: (by = 1) => values.set(key, values.get(key)! + by) };
  }

  get(name: string, labels: Record<string, string> = {}): number {
    return this.counters.get(name)?.values.get(labelText(labels)) ?? 0;
  }

  /** Every counter's values, for summing over workers (plain data: it crosses IPC). */
  snapshot(): MetricsSnapshot {
    const out: MetricsSnapshot = {};
    for (const [name, counter] of this.counters) out[name] = { help: counter.help, values: Object.fromEntries(counter.values) };
    return out;
  }

  /** Adds a snapshot's values to this set (the primary sums its workers' counters). */
  absorb(snapshot: MetricsSnapshot): void {
    for (const [name, { help, values }] of Object.entries(snapshot)) {
      let counter = this.counters.get(name);
      if (!counter) this.counters.set(name, (counter = { help, values: new Map() }));
      for (const [labels, value] of Object.entries(values)) counter.values.set(labels, (counter.values.get(labels) ?? 0) + value);
    }
  }

  /** Prometheus exposition text; `gauges` adds point-in-time values (store size, in-flight fetches). */
  render(gauges: Record<string, { help: string; value: number }> = {}): string {
    let out = '';
    for (const [name, counter] of this.counters) {
      out += `# HELP ${this.prefix}_${name} ${counter.help}\n# TYPE ${this.prefix}_${name} counter\n`;
      for (const [labels, value] of counter.values) out += `${this.prefix}_${name}${labels} ${value}\n`;
    }
    for (const [name, gauge] of Object.entries(gauges)) {
      out += `# HELP ${this.prefix}_${name} ${gauge.help}\n# TYPE ${this.prefix}_${name} gauge\n${this.prefix}_${name} ${gauge.value}\n`;
    }
    return out;
  }
}

function labelText(labels: Record<string, string>): string {
  const entries = Object.entries(labels);
  if (entries.length === 0) return '';
  return `{${entries.map(([k, v]) => `${k}="${v.replace(/["\\\n]/g, (c) => (c === '\n' ? '\\n' : `\\${c}`))}"`).join(',')}}`;
}
