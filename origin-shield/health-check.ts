/**
 * Active health checking: an HTTP probe per target every `intervalMs`. A target changes state only
 * after `healthyThreshold` consecutive passes or `unhealthyThreshold` consecutive failures, so one
 * lost probe does not flap it. Knows nothing of balancing; callers read `isHealthy` or listen for
 * 'change'.
 */
import { EventEmitter } from 'node:events';
import http from 'node:http';
import https from 'node:https';
import type { UpstreamTls } from '../pipeline/http-upstream.js';

export interface HealthCheckOptions {
  /** Path probed with GET. Default '/healthz'. */
  path?: string;
  /** Time between the end of one probe and the start of the next, per target. Default 5000. */
  intervalMs?: number;
  /** A probe with no complete response within this time fails. Default 2000. */
  timeoutMs?: number;
  /** A passing status, or an inclusive [min, max] range. Default [200, 399]. */
  expectedStatus?: number | readonly [number, number];
  /** Consecutive passes before an unhealthy target is healthy again. Default 2. */
  healthyThreshold?: number;
  /** Consecutive failures before a healthy target is unhealthy. Default 3. */
  unhealthyThreshold?: number;
  /**
   * State of a target before its first verdict. Default true: a restart does not blackhole traffic
   * while the first probes run (passive outlier detection covers the gap).
   */
  initiallyHealthy?: boolean;
  /** Host header sent with probes (default: the target's host:port). */
  host?: string;
  /** For https:// targets: verified like the requests they stand for. */
  tls?: UpstreamTls;
}

export const HEALTH_CHECK_DEFAULTS = {
  path: '/healthz',
  intervalMs: 5_000,
  timeoutMs: 2_000,
  expectedStatus: [200, 399] as readonly [number, number],
  healthyThreshold: 2,
  unhealthyThreshold: 3,
  initiallyHealthy: true,
} as const;

export interface HealthChange {
  url: string;
  healthy: boolean;
  /** Why the last probe failed (status or error), when it did. */
  reason?: string;
}

export interface TargetHealth {
  url: string;
  healthy: boolean;
  consecutivePasses: number;
  consecutiveFailures: number;
  lastReason: string | undefined;
}

interface Target extends TargetHealth {
  timer: NodeJS.Timeout | undefined;
  probing: Promise<void> | undefined;
  removed: boolean;
}

export interface HealthChecker {
  on(event: 'change', listener: (change: HealthChange) => void): this;
  once(event: 'change', listener: (change: HealthChange) => void): this;
  off(event: 'change', listener: (change: HealthChange) => void): this;
}

export class HealthChecker extends EventEmitter {
  private readonly options: Required<Omit<HealthCheckOptions, 'host' | 'tls'>> & { host: string | undefined; tls: UpstreamTls | undefined };
  private readonly targets = new Map<string, Target>();
  private running = false;

  constructor(urls: readonly string[] = [], options: HealthCheckOptions = {}) {
    super();
    this.options = {
      path: options.path ?? HEALTH_CHECK_DEFAULTS.path,
      intervalMs: options.intervalMs ?? HEALTH_CHECK_DEFAULTS.intervalMs,
      timeoutMs: options.timeoutMs ?? HEALTH_CHECK_DEFAULTS.timeoutMs,
      expectedStatus: options.expectedStatus ?? HEALTH_CHECK_DEFAULTS.expectedStatus,
      healthyThreshold: options.healthyThreshold ?? HEALTH_CHECK_DEFAULTS.healthyThreshold,
      unhealthyThreshold: options.unhealthyThreshold ?? HEALTH_CHECK_DEFAULTS.unhealthyThreshold,
      initiallyHealthy: options.initiallyHealthy ?? HEALTH_CHECK_DEFAULTS.initiallyHealthy,
      host: options.host,
      tls: options.tls,
    };
    for (const [name, value] of Object.entries({
      intervalMs: this.options.intervalMs,
      timeoutMs: this.options.timeoutMs,
      healthyThreshold: this.options.healthyThreshold,
      unhealthyThreshold: this.options.unhealthyThreshold,
    })) {
      if (!(value > 0)) throw new RangeError(`health check ${name} must be > 0, got ${value}`);
    }
    for (const url of urls) this.add(url);
  }

  /** Starts probing every target now, then every intervalMs. */
  start(): void {
    if (this.running) return;
    this.running = true;
    for (const target of this.targets.values()) this.schedule(target, 0);
  }

  /** Stops all timers; a probe in flight finishes but schedules nothing. */
  stop(): void {
    this.running = false;
    for (const target of this.targets.values()) {
      clearTimeout(target.timer);
      target.timer = undefined;
    }
  }

  add(url: string): void {
    const key = new URL(url).origin;
    if (this.targets.has(key)) return;
    const target: Target = {
      url: key,
      healthy: this.options.initiallyHealthy,
      consecutivePasses: 0,
      consecutiveFailures: 0,
      lastReason: undefined,
      timer: undefined,
      probing: undefined,
      removed: false,
    };
    this.targets.set(key, target);
    if (this.running) this.schedule(target, 0);
  }

  remove(url: string): void {
    const key = new URL(url).origin;
    const target = this.targets.get(key);
    if (target === undefined) return;
    target.removed = true;
    clearTimeout(target.timer);
    this.targets.delete(key);
  }

  /** Unknown targets count as healthy: health checking only ever takes members away. */
  isHealthy(url: string): boolean {
    return this.targets.get(url)?.healthy ?? this.targets.get(safeOrigin(url))?.healthy ?? true;
  }

  status(): TargetHealth[] {
    return [...this.targets.values()].map(({ url, healthy, consecutivePasses, consecutiveFailures, lastReason }) => ({
      url, healthy, consecutivePasses, consecutiveFailures, lastReason,
    }));
  }

  /** Probes every target once (in parallel) and applies the results; for tests and admin "check now". */
  async checkNow(): Promise<void> {
    await Promise.all([...this.targets.values()].map((target) => this.runProbe(target)));
  }

  private schedule(target: Target, delayMs: number): void {
    clearTimeout(target.timer);
    target.timer = setTimeout(() => {
      target.timer = undefined;
      void this.runProbe(target).then(() => {
        if (this.running && !target.removed && target.timer === undefined) this.schedule(target, this.options.intervalMs);
      });
    }, delayMs);
    target.timer.unref();
  }

  private runProbe(target: Target): Promise<void> {
    // One probe per target at a time: a slow probe is not stacked on by the next tick.
    target.probing ??= this.probe(target.url).then((failure) => {
      target.probing = undefined;
      if (!target.removed) this.apply(target, failure);
    });
    return target.probing;
  }

  private apply(target: Target, failure: string | undefined): void {
    target.lastReason = failure;
    if (failure === undefined) {
      target.consecutiveFailures = 0;
      target.consecutivePasses++;
      if (!target.healthy && target.consecutivePasses >= this.options.healthyThreshold) {
        target.healthy = true;
        this.emit('change', { url: target.url, healthy: true } satisfies HealthChange);
      }
    } else {
      target.consecutivePasses = 0;
      target.consecutiveFailures++;
      if (target.healthy && target.consecutiveFailures >= this.options.unhealthyThreshold) {
        target.healthy = false;
        this.emit('change', { url: target.url, healthy: false, reason: failure } satisfies HealthChange);
      }
    }
  }

  /** Resolves undefined when the probe passes, else a short reason. Never rejects. */
  private probe(url: string): Promise<string | undefined> {
    const { path, timeoutMs, expectedStatus, host, tls } = this.options;
    const [min, max] = typeof expectedStatus === 'number' ? [expectedStatus, expectedStatus] : expectedStatus;
    return new Promise((resolve) => {
      let settled = false;
      const finish = (failure: string | undefined) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        resolve(failure);
      };
      let req: http.ClientRequest;
      try {
        const target = new URL(path, url);
        const client = target.protocol === 'https:' ? https : http;
        // agent: false + Connection: close: probes hold no pooled sockets that could keep a process alive
        // or hide a server that stopped accepting new connections.
        req = client.request(target, {
          method: 'GET',
          agent: false,
          ...(target.protocol === 'https:' ? tls : {}),
          headers: { connection: 'close', 'user-agent': 'outpost-health-check', ...(host ? { host } : {}) },
        });
      } catch (error) {
        // An unsendable probe (bad URL or header) is a failed probe, never a stopped checker.
        resolve(String((error as NodeJS.ErrnoException).code ?? (error as Error).message));
        return;
      }
      const timer = setTimeout(() => {
        finish(`timeout after ${timeoutMs} ms`);
        req.destroy();
      }, timeoutMs);
      timer.unref();
      req.on('error', (error: NodeJS.ErrnoException) => finish(error.code ?? error.message));
      req.on('response', (res) => {
        const status = res.statusCode ?? 0;
        res.on('error', () => finish('response error'));
        // Wait for the body so a server that sends headers then dies is not counted healthy.
        res.on('end', () => finish(status >= min && status <= max ? undefined : `status ${status}`));
        res.resume();
      });
      req.end();
    });
  }
}

function safeOrigin(url: string): string {
  try {
    return new URL(url).origin;
  } catch {
    return url;
  }
}
