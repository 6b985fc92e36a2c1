/*
 * Not rate-limiter-flexible (evaluated): its Redis and memory limiters are fixed-window counters, not
 * GCRA/token bucket; its memory limiter keeps a timer per key rather than a bounded LRU; and its
 * cluster limiter asks the primary for every decision.
 */
import { createRequire } from 'node:module';
import type { Redis } from 'ioredis';
import type { Logger } from 'pino';
import { checkRate, intervalMicros, type Decision, type Rate } from './gcra.js';

export type RedisFailMode = 'open' | 'local';

export interface RedisLimiterOptions {
  url: string; // redis://host:port[/db]
  logger: Logger;
  /** Longest wait for Redis before deciding locally (default 50 ms). */
  timeoutMs?: number;
  /** 'local': decide with the local limiter while Redis is slow or down; 'open': admit. Default 'local'. */
  failMode?: RedisFailMode;
  /** Key prefix in Redis (default 'outpost:rl:'). */
  prefix?: string;
}

/**
 * GCRA in one atomic script, the same integer-µs arithmetic as GcraTable.take (want; no `returned`).
 * KEYS[1]: the bucket. ARGV: interval µs, burst, want, now µs ('' = Redis TIME, so every edge shares
 * one clock; tests pass a fixed now). The TAT expires when the bucket is back at rest (a missing key
 * is a rested bucket; +1 ms covers Redis' ms expiry clock), so Redis memory stays bounded. Integers
 * stay below 2^53: exact in Lua's doubles. Returns {granted, remaining, reset µs, retry-after µs, now µs}.
 */
export const GCRA_LUA = `
local interval = tonumber(ARGV[1])
local limit = tonumber(ARGV[2]) * interval
local want = tonumber(ARGV[3])
local now
if ARGV[4] ~= nil and ARGV[4] ~= '' then
  now = tonumber(ARGV[4])
else
  local time = redis.call('TIME')
  now = tonumber(time[1]) * 1000000 + tonumber(time[2])
end
local tat = tonumber(redis.call('GET', KEYS[1]))
if tat == nil or tat < now then tat = now end
local free = math.floor((limit - (tat - now)) / interval)
if free >= 1 then
  local granted = free
  if want < free then granted = want end
  tat = tat + granted * interval
  redis.call('SET', KEYS[1], string.format('%.17g', tat), 'PX', math.ceil((tat - now) / 1000) + 1)
  return {granted, free - granted, tat - now, 0, now}
end
return {0, 0, tat - now, tat - now + interval - limit, now}
`;

type GcraReply = [granted: number, remaining: number, resetUs: number, retryAfterUs: number, nowUs: number];
/**
 * ioredis, loaded when the first Redis limiter is made: most nodes have none, and loading it took
 * ~8 % of each process's start-up (issue 14: time to the first hit after a restart).
 */
function loadIoredis(): typeof Redis {
  return (createRequire(import.meta.url)('ioredis') as { Redis: typeof Redis }).Redis;
}

type GcraRedis = Redis & {
  outpostGcra(key: string, intervalUs: number, burst: number, want: number, nowUs: string): Promise<GcraReply>;
};

/** While Redis is down: how often to check whether it answers again. */
const PROBE_INTERVAL_MS = 250;
/** A probe unanswered this long means a hung (half-open) connection: drop it and reconnect. */
const STUCK_PROBE_MS = 5000;

export class RedisLimiter {
  /** Counters for metrics: decisions made by Redis, by the fallback, and the number of times Redis was lost. */
  readonly counts = { redis: 0, fallback: 0, outages: 0 };
  readonly #redis: GcraRedis;
  readonly #logger: Logger;
  readonly #timeoutMs: number;
  readonly #failMode: RedisFailMode;
  readonly #prefix: string;
  #healthy = false;
  #everHealthy = false;
  /** Before the first connection and its first answer or failure: decisions wait for it (within timeoutMs). */
  #starting = true;
  readonly #started: Promise<void>;
  #resolveStarted!: () => void;
  /** A warn was logged for the current outage; the next success logs the info. */
  #down = false;
  #closed = false;
  #localFailed = false;
  #probeTimer: NodeJS.Timeout | undefined;
  /** When the pending probe was sent (Date.now()), 0 when none is pending. */
  #probeSince = 0;

  constructor(options: RedisLimiterOptions) {
    this.#logger = options.logger;
    this.#timeoutMs = options.timeoutMs ?? 50;
    this.#failMode = options.failMode ?? 'local';
    this.#prefix = options.prefix ?? 'outpost:rl:';
    if (!(this.#timeoutMs > 0)) throw new RangeError(`timeoutMs must be > 0, got ${options.timeoutMs}`);
    if (this.#failMode !== 'open' && this.#failMode !== 'local') throw new RangeError(`failMode must be open or local, got ${String(options.failMode)}`);
    this.#redis = new (loadIoredis())(options.url, {
      // Never queue while disconnected: a queued decision would come back long after we fell back.
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      // Replaying a take after a reconnect would spend a token for a request already decided.
      autoResendUnfulfilledCommands: false,
      retryStrategy: (times) => Math.min(50 * 2 ** Math.min(times, 5), 1000),
      connectTimeout: Math.max(1000, this.#timeoutMs),
      // Nothing to flush on close: do not wait on a hung server.
      disconnectTimeout: 100,
    }) as GcraRedis;
    this.#started = new Promise((resolve) => (this.#resolveStarted = resolve));
    // EVALSHA after the first EVAL on each connection; ioredis re-sends the text on NOSCRIPT.
    this.#redis.defineCommand('outpostGcra', { numberOfKeys: 1, lua: GCRA_LUA });
    this.#redis.on('error', (error: Error) => this.#lost(error));
    this.#redis.on('close', () => this.#lost(new Error('connection closed')));
    this.#redis.on('ready', () => this.#probe());
    this.#startProbing();
  }

  /** True while decisions go to Redis. */
  get healthy(): boolean {
    return this.#healthy;
  }

  /**
   * One atomic Lua script per decision (GCRA, same semantics as GcraTable, clock from Redis TIME so every edge agrees).
   * While Redis is slow or down: `local()` (failMode 'local') or an admitted decision (failMode 'open'), within `timeoutMs`.
   * A timeout or error marks Redis unhealthy: later calls go straight to the fallback until a background probe
   * sees Redis answering. Never rejects on Redis trouble; rejects with RangeError only on an invalid rate.
   */
  async take(key: string, rate: Rate, local: () => Decision | Promise<Decision>): Promise<Decision> {
    checkRate(rate);
    let budget = this.#timeoutMs;
    if (this.#starting) {
      const started = performance.now();
      await this.#waitStart();
      budget -= performance.now() - started;
    }
    if (this.#healthy) {
      try {
        const [granted, remaining, resetUs, retryAfterUs] = await this.#gcra(this.#prefix + key, rate, Math.max(1, budget));
        this.counts.redis++;
        return { allowed: granted > 0, remaining, resetMs: resetUs / 1000, retryAfterMs: retryAfterUs / 1000 };
      } catch (error) {
        this.#lost(error);
      }
    }
    return this.#fallback(rate, local);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#healthy = false;
    this.#endStart();
    clearInterval(this.#probeTimer);
    if (this.#redis.status === 'end') return;
    const ended = new Promise<void>((resolve) => this.#redis.once('end', () => resolve()));
    this.#redis.disconnect();
    // 'end' may not come when closed while waiting to reconnect: do not wait for it long.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([ended, new Promise<void>((resolve) => (timer = setTimeout(resolve, 500)))]);
    clearTimeout(timer);
  }

  /** The first decisions wait for the first connection, so an edge that just started decides in Redis. */
  async #waitStart(): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    const timedOut = await Promise.race([
      this.#started.then(() => false),
      new Promise<boolean>((resolve) => (timer = setTimeout(resolve, this.#timeoutMs, true))),
    ]);
    clearTimeout(timer);
    if (timedOut) this.#lost(new Error(`no connection within ${this.#timeoutMs} ms`));
  }

  #gcra(key: string, rate: Rate, timeoutMs: number): Promise<GcraReply> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`Redis did not answer within ${this.#timeoutMs} ms`)), timeoutMs);
      this.#redis.outpostGcra(key, intervalMicros(rate), Math.floor(rate.burst), 1, '').then(
        (reply) => {
          clearTimeout(timer);
          resolve(reply);
        },
        (error: unknown) => {
          clearTimeout(timer);
          reject(error);
        },
      );
    });
  }

  async #fallback(rate: Rate, local: () => Decision | Promise<Decision>): Promise<Decision> {
    this.counts.fallback++;
    if (this.#failMode === 'local') {
      try {
        return await local();
      } catch (error) {
        if (!this.#localFailed) this.#logger.error({ err: error }, 'rate-limit local fallback failed; admitting');
        this.#localFailed = true;
      }
    }
    return { allowed: true, remaining: Math.max(0, Math.floor(rate.burst) - 1), resetMs: 0, retryAfterMs: 0 };
  }

  #lost(error: unknown): void {
    if (this.#closed) return;
    this.#healthy = false;
    this.#endStart();
    if (this.#down) {
      this.#logger.debug({ reason: error instanceof Error ? error.message : String(error) }, 'rate-limit Redis still down');
    } else {
      this.#down = true;
      this.counts.outages++;
      const reason = error instanceof Error ? error.message : String(error);
      const msg = this.#everHealthy ? 'rate-limit Redis lost; deciding locally' : 'rate-limit Redis unavailable; deciding locally';
      this.#logger.warn({ reason, failMode: this.#failMode, timeoutMs: this.#timeoutMs }, msg);
    }
    this.#startProbing();
  }

  #back(): void {
    if (this.#closed || this.#healthy) return;
    this.#healthy = true;
    clearInterval(this.#probeTimer);
    this.#probeTimer = undefined;
    if (this.#down) this.#logger.info({ outages: this.counts.outages }, 'rate-limit Redis back; deciding in Redis');
    else if (!this.#everHealthy) this.#logger.info('rate-limit Redis connected');
    this.#down = false;
    this.#everHealthy = true;
    this.#endStart();
  }

  #endStart(): void {
    if (!this.#starting) return;
    this.#starting = false;
    this.#resolveStarted();
  }

  #startProbing(): void {
    if (this.#probeTimer !== undefined || this.#closed) return;
    this.#probeTimer = setInterval(() => this.#probe(), PROBE_INTERVAL_MS);
    this.#probeTimer.unref();
  }

  /** The script itself on a throwaway key: Redis is back when decisions would succeed, not just PING. */
  #probe(): void {
    if (this.#closed || this.#healthy) return;
    if (this.#probeSince !== 0) {
      if (Date.now() - this.#probeSince >= STUCK_PROBE_MS) {
        this.#logger.debug(`rate-limit Redis probe unanswered for ${STUCK_PROBE_MS} ms; reconnecting`);
        this.#probeSince = Date.now();
        this.#redis.disconnect(true); // rejects the pending probe, then reconnects
      }
      return;
    }
    if (this.#redis.status !== 'ready') return;
    this.#probeSince = Date.now();
    this.#redis.outpostGcra(`${this.#prefix}\0probe`, 1, 1, 1, '').then(
      () => {
        this.#probeSince = 0;
        this.#back();
      },
      () => {
        this.#probeSince = 0;
      },
    );
  }
}
