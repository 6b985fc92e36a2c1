/**
 * The rate limits of the requestFilter phase: `--rate-limit` (per client address, named
 * `default`) and the config's named limits. Every limit that applies to a request takes one
 * token from its bucket; the first that is out answers 429 with Retry-After and the RateLimit
 * fields of the IETF httpapi draft (draft-ietf-httpapi-ratelimit-headers-10):
 *   RateLimit-Policy: "api";q=100;w=1     (q requests per w seconds)
 *   RateLimit: "api";r=0;t=1               (r left now, t seconds until the bucket is full)
 * Hits are limited like misses: a cache does not make a flood free.
 */
import { createHash } from 'node:crypto';
import type { Config } from '../../config/config.js';
import type { RateLimitSpec } from '../../config/request-rules.js';
import { answerFromFilter, type Exchange, type RequestFilter } from '../../pipeline/exchange.js';
import { hostName } from '../../pipeline/address-list.js';
import { headerText } from '../../pipeline/response-policy.js';
import type { Metrics } from '../../pipeline/metrics.js';
import { compileMatch } from '../string-match.js';
import type { Decision, Rate } from './gcra.js';
import type { Limiter } from './limiter.js';

interface CompiledLimit {
  readonly name: string;
  readonly rate: Rate;
  /** The RateLimit-Policy item. */
  readonly policy: string;
  readonly headers: boolean;
  /** The bucket key of this request, or undefined when the limit does not apply to it. */
  key(x: Exchange): string | undefined;
}

/** Longer key values (a header) are hashed: a bucket key costs at most this much memory. */
const MAX_KEY_PART = 128;

export class RateLimits {
  readonly limits: readonly CompiledLimit[];

  constructor(
    config: Readonly<Config>,
    private readonly limiter: Limiter,
    private readonly metrics: Metrics,
  ) {
    const specs: RateLimitSpec[] = [...config.rateLimits];
    if (config.rateLimit !== undefined) specs.unshift({ name: 'default', rate: config.rateLimit, burst: config.rateLimitBurst, key: ['clientAddress'], headers: config.rateLimitHeaders });
    this.limits = specs.map(compileLimit);
  }

  readonly filter: RequestFilter = (x) => {
    let waiting = false;
    let decisions: Array<Decision | Promise<Decision>> | undefined;
    const limits = this.limits;
    for (let i = 0; i < limits.length; i++) {
      const limit = limits[i]!;
      const key = limit.key(x);
      if (key === undefined) continue;
      const decision = this.limiter.take(limit.name, key, limit.rate);
      if (decision instanceof Promise) waiting = true;
      else if (!decision.allowed) return this.deny(x, limit, decision);
      if (limit.headers || decision instanceof Promise) (decisions ??= Array(limits.length))[i] = decision;
    }
    if (!waiting) {
      if (decisions !== undefined) this.setHeaders(x, decisions as Decision[]);
      return false;
    }
    return Promise.all(decisions!).then((settled) => {
      for (let i = 0; i < limits.length; i++) {
        const decision = settled[i];
        if (decision !== undefined && !decision.allowed) return this.deny(x, limits[i]!, decision);
      }
      this.setHeaders(x, settled);
      return false;
    });
  };

  private deny(x: Exchange, limit: CompiledLimit, decision: Decision): true {
    this.metrics.inc('rate_limited_total', 'requests answered 429 by a rate limit', { limit: limit.name });
    return answerFromFilter(x, 429, `rate-limit:${limit.name}`, `rate limit "${limit.name}" exceeded`, {
      'retry-after': String(Math.max(1, Math.ceil(decision.retryAfterMs / 1000))),
      'ratelimit-policy': limit.policy,
      ratelimit: rateLimitItem(limit, decision),
    });
  }

  /** Admitted: the RateLimit fields of the limits configured to send them. */
  private setHeaders(x: Exchange, decisions: ReadonlyArray<Decision | undefined>): void {
    let policy = '';
    let current = '';
    for (let i = 0; i < this.limits.length; i++) {
      const limit = this.limits[i]!;
      const decision = decisions[i];
      if (!limit.headers || decision === undefined) continue;
      policy += (policy ? ', ' : '') + limit.policy;
      current += (current ? ', ' : '') + rateLimitItem(limit, decision);
    }
    if (policy === '') return;
    x.res.setHeader('ratelimit-policy', policy);
    x.res.setHeader('ratelimit', current);
  }
}

/**
 * q requests per w seconds: the rate as given when the burst is at most one period of it (the
 * default is one period), else the burst and the time it takes to refill (so `r` never exceeds `q`).
 */
function policyItem(name: string, requests: number, periodMs: number, burst: number, intervalMs: number): string {
  // A burst smaller than the rate refills within one period: the rate is what a client may pace to.
  if (burst <= requests) return `"${name}";q=${requests};w=${periodMs / 1000}`;
  return `"${name}";q=${burst};w=${Math.max(1, Math.round((burst * intervalMs) / 1000))}`;
}

function rateLimitItem(limit: CompiledLimit, decision: Decision): string {
  return `"${limit.name}";r=${decision.remaining};t=${Math.ceil(decision.resetMs / 1000)}`;
}

function compileLimit(spec: RateLimitSpec): CompiledLimit {
  const intervalMs = spec.rate.periodMs / spec.rate.requests;
  const burst = spec.burst > 0 ? spec.burst : spec.rate.requests;
  const methods = spec.methods ? new Set(spec.methods) : undefined;
  const groups = spec.paths?.map(compileMatch);
  const parts = spec.key.map(compileKeyPart);
  return {
    name: spec.name,
    rate: { intervalMs, burst },
    policy: policyItem(spec.name, spec.rate.requests, spec.rate.periodMs, burst, intervalMs),
    headers: spec.headers,
    key(x) {
      if (methods !== undefined && !methods.has(x.method)) return undefined;
      let group = '';
      if (groups !== undefined) {
        const path = pathOf(x);
        const index = groups.findIndex((test) => test(path));
        if (index === -1) return undefined;
        group = String(index);
      }
      if (parts.length === 1) return parts[0]!(x, group);
      let key = '';
      for (const part of parts) {
        const value = part(x, group);
        if (value === undefined) return undefined;
        key += `${value}\u0000`;
      }
      return key;
    },
  };
}

type KeyPart = (x: Exchange, group: string) => string | undefined;

function compileKeyPart(part: RateLimitSpec['key'][number]): KeyPart {
  if (part === 'clientAddress') return (x) => clientBucket(x.clientAddress);
  if (part === 'host') return (x) => bounded(hostName(x.host));
  if (part === 'path') return (_x, group) => group;
  const name = part.slice('header:'.length);
  // A request without the field is not under this limit (as an Envoy descriptor that cannot be built).
  return (x) => {
    const value = headerText(x.req.headers[name]);
    return value === undefined ? undefined : bounded(value);
  };
}

/**
 * IPv4 addresses are limited one by one; IPv6 ones by /64, the smallest block a site is given
 * (a client rotating through its /64 stays in one bucket). IPv4-mapped IPv6 is IPv4.
 */
export function clientBucket(address: string): string {
  if (!address.includes(':')) return address;
  if (address.startsWith('::ffff:') && address.includes('.')) return address.slice(7);
  const [head = '', tail] = address.split('::');
  const left = head === '' ? [] : head.split(':');
  const right = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups = tail === undefined ? left : [...left, ...Array<string>(Math.max(0, 8 - left.length - right.length)).fill('0'), ...right];
  return `${groups.slice(0, 4).map((g) => g.replace(/^0+(?=.)/, '').toLowerCase()).join(':')}::/64`;
}

function bounded(value: string): string {
  return value.length <= MAX_KEY_PART ? value : createHash('sha256').update(value).digest('base64');
}

function pathOf(x: Exchange): string {
  const q = x.path.indexOf('?');
  return q === -1 ? x.path : x.path.slice(0, q);
}
