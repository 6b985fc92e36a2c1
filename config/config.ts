/**
 * One configuration schema for every role: defaults in one place; each option settable from the
 * config file (camelCase field), an OUTPOST_* environment variable and a --kebab-case flag
 * (file < environment < flags). Validated once at start-up with the failing field named, then frozen.
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { availableParallelism } from 'node:os';
import { ConfigError } from './config-error.js';
import { asList, parseCidrs, parseRate, parseRateLimits, parseWaf, type RateLimitSpec, type RateSpec, type WafSettings } from './request-rules.js';

export { ConfigError };

export type Role = 'edge' | 'shield';

type Kind = 'waf' | 'rate' | 'rate-limits' | 'purge-peers' | 'workers' | 'optional-listen' | 'string' | 'int' | 'number' | 'bool' | 'bytes' | 'url-list' | 'string-list' | 'address-list' | 'status-list' | 'listen' | 'enum' | 'routes';

interface OptionSpec {
  kind: Kind;
  /** Default value; a function picks it per role. */
  default: unknown | ((role: Role) => unknown);
  help: string;
  /** Roles that accept the option (default: both). */
  roles?: readonly Role[];
  /** For enum options. */
  choices?: readonly string[];
  min?: number;
  max?: number;
  /** A value that turns the option off and is allowed below `min`. */
  off?: number;
  /** Flag name if it differs from the kebab-case field (e.g. --upstream for upstreams). */
  flag?: string;
}

const ms = (help: string, value: number, min = 1): OptionSpec => ({ kind: 'int', default: value, help, min });

/** The schema: every option Outpost reads. README's configuration table is this list. */
export const OPTIONS = {
  listen: { kind: 'listen', default: (r: Role) => (r === 'edge' ? '127.0.0.1:8080' : '127.0.0.1:9000'), help: 'address:port to accept HTTP on' },
  listenTls: { kind: 'optional-listen', default: '', help: 'address:port to accept HTTPS on, HTTP/2 and HTTP/1.1 by ALPN (empty: off)' },
  tlsCert: {
    kind: 'string-list',
    default: [],
    help: 'certificate file (PEM, leaf then chain); repeat with --tls-key for more names, chosen by SNI; the first is the default. Re-read when the files change',
  },
  tlsKey: { kind: 'string-list', default: [], help: 'private key file of the --tls-cert at the same position' },
  tlsTicketRotateSec: { kind: 'int', default: 3600, min: 60, help: 'TLS session ticket key lifetime: resumption across every worker, a new key on this schedule' },
  hsts: { kind: 'string', default: '', help: 'Strict-Transport-Security value sent over HTTPS, e.g. max-age=31536000 (empty: none)' },
  redirectHttp: { kind: 'bool', default: false, help: 'answer plain-HTTP requests with 308 to https:// (the health path excepted); needs --listen-tls' },
  proxyProtocol: { kind: 'bool', default: false, help: 'public listeners expect a PROXY protocol v1/v2 header from an L4 balancer in --trusted-proxy' },
  trustedProxies: { kind: 'address-list', default: [], flag: 'trusted-proxy', help: 'addresses/CIDRs of the balancers allowed to send a PROXY header; repeat or comma-separate' },
  upstreams: { kind: 'url-list', default: [], flag: 'upstream', roles: ['edge'], help: 'shield or origin URL; repeat for a consistent-hash ring of shields' },
  origins: { kind: 'url-list', default: [], flag: 'origin', roles: ['shield'], help: 'origin URL; repeat for a load-balanced pool' },
  balance: { kind: 'enum', default: 'round-robin', choices: ['round-robin', 'least-request', 'consistent-hash'], roles: ['shield'], help: 'origin load-balancing algorithm' },
  routes: { kind: 'routes', default: [], roles: ['shield'], help: 'config file only: [{ "host": "a.example", "pathPrefix": "/api", "origins": ["http://…"] }] routes to other pools' },
  workers: { kind: 'workers', default: 'auto', help: 'worker processes under one supervising primary; auto: one per core (os.availableParallelism)' },
  workerScheduling: {
    kind: 'enum',
    default: 'kernel',
    choices: ['round-robin', 'kernel'],
    help: 'how workers share new connections: the primary hands them out in turn, or every worker accepts and the kernel picks',
  },
  dataDir: { kind: 'string', default: (r: Role) => `./data/${r}`, help: 'folder for the disk cache (LevelDB); each worker keeps its shard in worker-K inside it' },
  memorySize: { kind: 'bytes', default: 256 * 1024 ** 2, min: 1024 * 1024, help: 'memory tier budget (e.g. 256MB)' },
  diskSize: { kind: 'bytes', default: 10 * 1024 ** 3, min: 1024 * 1024, help: 'disk tier budget (e.g. 10GB)' },
  memoryMaxObjectSize: { kind: 'bytes', default: 8 * 1024 ** 2, min: 0, help: 'larger bodies live on disk only' },
  memoryAdmission: {
    kind: 'enum',
    default: 'tinylfu',
    choices: ['tinylfu', 'lru'],
    help: 'which objects the memory tier takes when full: tinylfu, only those asked for more often lately than what they would evict (the rest stay on disk); lru, every one',
  },
  maxObjectSize: { kind: 'bytes', default: 1024 ** 3, min: 0, help: 'larger responses are not stored' },
  fillBufferSize: { kind: 'bytes', default: 2 * 1024 ** 2, min: 64 * 1024, help: 'bytes of a body held per fill: larger bodies keep a window of this size, and readers further behind continue from the store' },
  sliceSize: {
    kind: 'bytes',
    default: 8 * 1024 ** 2,
    // A slice smaller than a disk chunk would cost a fetch and an entry per few bytes.
    min: 64 * 1024,
    off: 0,
    help: 'larger objects are fetched and stored in ranges of this size (as nginx slice), at least 64KB; a Range request fetches only the slices it covers. 0: off',
  },
  nodeName: { kind: 'string', default: (r: Role) => `outpost-${r}`, help: 'name in Via and Cache-Status' },
  logLevel: { kind: 'enum', default: 'info', choices: ['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent'], help: 'pino log level' },
  accessLog: { kind: 'bool', default: true, help: 'one JSON line per request' },
  sortQuery: { kind: 'bool', default: false, help: 'sort query parameters in the cache key' },
  dropQueryParams: { kind: 'string-list', default: [], help: 'query parameters left out of the cache key (comma-separated)' },
  heuristicFraction: { kind: 'number', default: 0.1, min: 0, max: 1, help: 'heuristic freshness as a share of (Date − Last-Modified)' },
  heuristicMaxSec: { kind: 'int', default: 86_400, min: 0, help: 'cap on heuristic freshness' },
  defaultTtlSec: { kind: 'int', default: 0, min: 0, help: 'freshness for cacheable responses with no freshness information' },
  defaultGraceSec: { kind: 'int', default: 0, min: 0, help: 'stale-while-revalidate window when the origin sends none' },
  defaultStaleIfErrorSec: { kind: 'int', default: 0, min: 0, help: 'stale-if-error window when the origin sends none' },
  keepSec: { kind: 'int', default: 3600, min: 0, help: 'keep stale entries this long past their stale windows (conditional revalidation, max-stale)' },
  lockWaitMs: ms('longest a collapsed request waits for the leader before fetching on its own', 10_000),
  hitForMissSec: { kind: 'int', default: 30, min: 0, help: 'how long an uncacheable key skips request collapsing' },
  storeStatuses: {
    kind: 'status-list',
    default: [],
    help: 'statuses that may be stored, e.g. 200,301,404 (empty: every final status RFC 9111 allows, 4xx and 5xx with explicit freshness included)',
  },
  maxVariantsPerUrl: { kind: 'int', default: 32, min: 1, help: 'cap on Vary variants stored per URL' },
  cacheSetCookiePaths: { kind: 'string-list', default: [], help: 'path prefixes whose Set-Cookie responses may be stored (the cookie is never served from cache)' },
  trustForwardedFrom: { kind: 'address-list', default: [], help: 'peer addresses/CIDRs whose X-Forwarded-* headers are trusted' },
  cacheStatusKey: { kind: 'bool', default: false, help: 'debug: add key= to Cache-Status' },
  servedBy: { kind: 'bool', default: false, help: 'debug: add X-Served-By: <node-name>/worker-K, the worker that answered' },
  adminListen: {
    kind: 'optional-listen',
    default: '',
    help: 'address:port of the admin API (purge, inspect, stats, metrics, health); empty: off. Beyond loopback it needs an admin token',
  },
  adminToken: { kind: 'string', default: '', help: 'bearer token every admin call but /healthz and /readyz must carry (prefer --admin-token-file)' },
  adminTokenFile: { kind: 'string', default: '', help: 'file holding the admin token (read at start and on SIGHUP)' },
  purgePeers: {
    kind: 'purge-peers',
    default: [],
    flag: 'purge-peer',
    help: 'admin URL of another node (edges of the PoP, shields) that gets every purge; repeat. Config file: [{ "url": "http://…", "token": "…" }] for a peer with its own token',
  },
  purgeRetrySec: { kind: 'int', default: 600, min: 1, help: 'how long a purge a peer did not take is kept in the outbox and retried' },
  waf: {
    kind: 'waf',
    default: { mode: 'detect', rules: [] },
    roles: ['edge'],
    help: 'built-in rule set: off, detect (log only) or block. Config file: { "mode": …, "rules": [{ "id", "message", "action", "path": { "prefix": "/wp-admin" } … }] }',
  },
  wafParanoia: { kind: 'int', default: 1, min: 1, max: 3, roles: ['edge'], help: 'built-in rule set strictness, 1-3 as in the OWASP Core Rule Set' },
  wafBodyLimit: { kind: 'bytes', default: 64 * 1024, min: 0, max: 1024 ** 2, roles: ['edge'], help: 'first body bytes the WAF reads (POST, PUT, PATCH …); 0: bodies are not inspected' },
  rateLimit: { kind: 'rate', default: '', roles: ['edge'], help: 'default limit per client address, e.g. 100/s, 600/m, 10000/h (empty: none)' },
  rateLimitBurst: { kind: 'int', default: 0, min: 0, max: 1_000_000, roles: ['edge'], help: 'requests the default limit admits at once (0: one period of the rate)' },
  rateLimits: {
    kind: 'rate-limits',
    default: [],
    roles: ['edge'],
    help: 'config file only: named limits [{ "name", "rate": "10/s", "burst", "key": ["clientAddress" | "host" | "path" | "header:NAME"], "paths": [match…], "methods", "headers": true }]',
  },
  rateLimitHeaders: { kind: 'bool', default: false, roles: ['edge'], help: 'send RateLimit-Policy and RateLimit on admitted requests of the default limit too' },
  rateLimitKeys: { kind: 'int', default: 100_000, min: 1, max: 10_000_000, roles: ['edge'], help: 'buckets kept per limit in each process (least recently used dropped first)' },
  rateLimitStore: { kind: 'string', default: '', roles: ['edge'], help: 'redis://host:port shared by the edges of a PoP (empty: limits are per node)' },
  rateLimitRedisTimeoutMs: { kind: 'int', default: 50, min: 1, max: 10_000, roles: ['edge'], help: 'longest wait for a Redis decision before the fallback decides' },
  rateLimitRedisFail: { kind: 'enum', default: 'local', choices: ['local', 'open'], roles: ['edge'], help: 'while Redis is slow or down: decide with the node-local limiter, or admit' },
  clientHeaderTimeoutMs: ms('time a client has to send its request headers', 10_000),
  clientRequestTimeoutMs: ms('time a client has to send its whole request, body included', 120_000),
  clientKeepAliveTimeoutMs: ms('idle time before a client connection is closed (HTTP/1.1 keep-alive, HTTP/2 session)', 5_000),
  clientHeaderMaxBytes: { kind: 'bytes', default: 16 * 1024, min: 1024, max: 1024 ** 2, help: 'request head size (431 beyond it; over HTTP/2 the stream is reset)' },
  clientMaxHeaders: { kind: 'int', default: 100, min: 8, max: 10_000, help: 'request header fields (431 beyond it; over HTTP/2 the stream is reset)' },
  maxConnections: { kind: 'int', default: 16_384, min: 1, help: 'open client connections per listener in each worker; more are closed at once' },
  maxConnectionsPerClient: {
    kind: 'int',
    default: 1024,
    min: 0,
    help: 'open connections per client address in each worker (0: no limit); trusted proxies and balancers are exempt',
  },
  h2MaxConcurrentStreams: { kind: 'int', default: 128, min: 1, max: 10_000, help: 'HTTP/2 streams a client may have open at once' },
  h2ResetBurst: { kind: 'int', default: 1000, min: 1, help: 'HTTP/2 stream resets a client may send at once (CVE-2023-44487 rapid reset) before its session is closed' },
  h2ResetRate: { kind: 'int', default: 33, min: 1, help: 'HTTP/2 stream resets per second a client may send after the burst' },
  upstreamCa: { kind: 'string', default: '', help: 'CA file (PEM) that https:// upstreams are verified against (empty: the system CAs)' },
  upstreamCert: { kind: 'string', default: '', help: 'client certificate (PEM) for https:// upstreams that require mTLS' },
  upstreamKey: { kind: 'string', default: '', help: 'private key of --upstream-cert' },
  upstreamInsecure: { kind: 'bool', default: false, help: 'do not verify https:// upstream certificates (logged as a warning at start)' },
  metrics: { kind: 'bool', default: true, help: 'latency histograms and byte counts on the request path (off only to measure their cost)' },
  upstreamConnections: { kind: 'int', default: 256, min: 1, help: 'connection pool size per upstream server' },
  connectTimeoutMs: ms('upstream connect timeout', 5_000),
  firstByteTimeoutMs: ms('time to upstream response headers', 30_000),
  idleBodyTimeoutMs: ms('longest pause between upstream body bytes', 30_000),
  shutdownTimeoutMs: ms('on SIGTERM, longest wait for requests in flight', 10_000),
  maxRequestsPerOrigin: { kind: 'int', default: 1024, min: 1, roles: ['shield'], help: 'circuit breaker: concurrent requests per origin' },
  maxAttempts: { kind: 'int', default: 2, min: 1, max: 10, roles: ['shield'], help: 'tries per idempotent request across origins' },
  retryBudgetPercent: { kind: 'number', default: 20, min: 0, max: 100, roles: ['shield'], help: 'retries in flight as a share of requests in flight' },
  healthCheckPath: { kind: 'string', default: '', roles: ['shield'], help: 'active health-check path (empty: off)' },
  healthCheckIntervalMs: { kind: 'int', default: 5_000, min: 10, roles: ['shield'], help: 'between health probes' },
  healthCheckTimeoutMs: { kind: 'int', default: 2_000, min: 1, roles: ['shield'], help: 'health probe timeout' },
  healthyThreshold: { kind: 'int', default: 2, min: 1, roles: ['shield'], help: 'consecutive passing probes to mark healthy' },
  unhealthyThreshold: { kind: 'int', default: 3, min: 1, roles: ['shield'], help: 'consecutive failing probes to mark unhealthy' },
  outlierConsecutive5xx: { kind: 'int', default: 5, min: 1, roles: ['shield'], help: 'consecutive 5xx responses that eject an origin' },
  outlierConsecutiveConnectFailures: { kind: 'int', default: 3, min: 1, roles: ['shield'], help: 'consecutive connect failures that eject an origin' },
  outlierBaseEjectionMs: { kind: 'int', default: 30_000, min: 1, roles: ['shield'], help: 'ejection time, multiplied by the number of ejections' },
  outlierMaxEjectionPercent: { kind: 'number', default: 50, min: 0, max: 100, roles: ['shield'], help: 'never eject more than this share of a pool' },
} satisfies Record<string, OptionSpec>;

export type OptionName = keyof typeof OPTIONS;

/** A node that gets this node's purges; `token` undefined: this node's own admin token. */
export interface PurgePeer {
  url: string;
  token?: string;
}

export interface Route {
  host?: string;
  pathPrefix?: string;
  origins: string[];
}

export interface Config {
  role: Role;
  listen: { host: string; port: number };
  listenTls: { host: string; port: number } | undefined;
  tlsCert: string[];
  tlsKey: string[];
  tlsTicketRotateSec: number;
  hsts: string;
  redirectHttp: boolean;
  proxyProtocol: boolean;
  trustedProxies: string[];
  upstreams: string[];
  origins: string[];
  balance: 'round-robin' | 'least-request' | 'consistent-hash';
  routes: Route[];
  workers: number;
  workerScheduling: 'round-robin' | 'kernel';
  dataDir: string;
  memorySize: number;
  diskSize: number;
  memoryMaxObjectSize: number;
  memoryAdmission: 'tinylfu' | 'lru';
  maxObjectSize: number;
  fillBufferSize: number;
  sliceSize: number;
  nodeName: string;
  logLevel: string;
  accessLog: boolean;
  sortQuery: boolean;
  dropQueryParams: string[];
  heuristicFraction: number;
  heuristicMaxSec: number;
  defaultTtlSec: number;
  defaultGraceSec: number;
  defaultStaleIfErrorSec: number;
  keepSec: number;
  lockWaitMs: number;
  hitForMissSec: number;
  storeStatuses: number[];
  maxVariantsPerUrl: number;
  cacheSetCookiePaths: string[];
  trustForwardedFrom: string[];
  cacheStatusKey: boolean;
  servedBy: boolean;
  adminListen: { host: string; port: number } | undefined;
  /** The admin token: --admin-token, or the contents of --admin-token-file; '' when none. */
  adminToken: string;
  adminTokenFile: string;
  purgePeers: PurgePeer[];
  purgeRetrySec: number;
  waf: WafSettings;
  wafParanoia: number;
  wafBodyLimit: number;
  rateLimit: RateSpec | undefined;
  rateLimitBurst: number;
  rateLimits: RateLimitSpec[];
  rateLimitHeaders: boolean;
  rateLimitKeys: number;
  rateLimitStore: string;
  rateLimitRedisTimeoutMs: number;
  rateLimitRedisFail: 'local' | 'open';
  clientHeaderTimeoutMs: number;
  clientRequestTimeoutMs: number;
  clientKeepAliveTimeoutMs: number;
  clientHeaderMaxBytes: number;
  clientMaxHeaders: number;
  maxConnections: number;
  maxConnectionsPerClient: number;
  h2MaxConcurrentStreams: number;
  h2ResetBurst: number;
  h2ResetRate: number;
  upstreamCa: string;
  upstreamCert: string;
  upstreamKey: string;
  upstreamInsecure: boolean;
  metrics: boolean;
  upstreamConnections: number;
  connectTimeoutMs: number;
  firstByteTimeoutMs: number;
  idleBodyTimeoutMs: number;
  shutdownTimeoutMs: number;
  maxRequestsPerOrigin: number;
  maxAttempts: number;
  retryBudgetPercent: number;
  healthCheckPath: string;
  healthCheckIntervalMs: number;
  healthCheckTimeoutMs: number;
  healthyThreshold: number;
  unhealthyThreshold: number;
  outlierConsecutive5xx: number;
  outlierConsecutiveConnectFailures: number;
  outlierBaseEjectionMs: number;
  outlierMaxEjectionPercent: number;
}

export function kebab(name: string): string {
  return name.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);
}

export function envName(name: string): string {
  return `OUTPOST_${kebab(name).replace(/-/g, '_').toUpperCase()}`;
}

export function flagName(name: OptionName): string {
  const spec: OptionSpec = OPTIONS[name];
  return spec.flag ?? kebab(name);
}

const UNITS: Record<string, number> = { '': 1, b: 1, kb: 1024, k: 1024, mb: 1024 ** 2, m: 1024 ** 2, gb: 1024 ** 3, g: 1024 ** 3, tb: 1024 ** 4, t: 1024 ** 4, kib: 1024, mib: 1024 ** 2, gib: 1024 ** 3, tib: 1024 ** 4 };

export function parseBytes(text: string): number | undefined {
  const match = /^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$/i.exec(text);
  if (!match) return undefined;
  const unit = UNITS[match[2]!.toLowerCase()];
  if (unit === undefined) return undefined;
  return Math.floor(Number(match[1]) * unit);
}

/** Converts one raw value (string from env/flags, or JSON from the file) to the option's type. */
function convert(name: OptionName, raw: unknown, source: string, current?: unknown): unknown {
  const spec: OptionSpec = OPTIONS[name];
  const fail = (message: string): never => {
    throw new ConfigError(name, source, message);
  };
  const range = (n: number): number => {
    if (spec.off !== undefined && n === spec.off) return n;
    if (spec.min !== undefined && n < spec.min) fail(`must be ${spec.off !== undefined ? `${spec.off} (off) or ` : ''}at least ${spec.min}, got ${n}`);
    if (spec.max !== undefined && n > spec.max) fail(`must be at most ${spec.max}, got ${n}`);
    return n;
  };
  switch (spec.kind) {
    case 'workers': {
      if (raw === 'auto') return availableParallelism();
      const n = typeof raw === 'number' ? raw : typeof raw === 'string' && /^\d+$/.test(raw.trim()) ? Number(raw) : Number.NaN;
      if (!Number.isInteger(n) || n < 1 || n > 1024) return fail(`must be auto or a whole number from 1 to 1024, got ${JSON.stringify(raw)}`);
      return n;
    }
    case 'string':
      if (typeof raw !== 'string') fail('must be a string');
      return raw;
    case 'int':
    case 'number': {
      const n = typeof raw === 'number' ? raw : typeof raw === 'string' && raw.trim() !== '' ? Number(raw) : Number.NaN;
      if (!Number.isFinite(n)) fail(`must be a number, got ${JSON.stringify(raw)}`);
      if (spec.kind === 'int' && !Number.isInteger(n)) fail(`must be a whole number, got ${JSON.stringify(raw)}`);
      return range(n);
    }
    case 'bool':
      if (typeof raw === 'boolean') return raw;
      if (raw === 'true' || raw === '1' || raw === 'yes') return true;
      if (raw === 'false' || raw === '0' || raw === 'no') return false;
      return fail(`must be true or false, got ${JSON.stringify(raw)}`);
    case 'bytes': {
      const n = typeof raw === 'number' ? raw : typeof raw === 'string' ? parseBytes(raw) : undefined;
      if (n === undefined || !Number.isFinite(n)) return fail(`must be a size such as 256MB, got ${JSON.stringify(raw)}`);
      return range(n);
    }
    case 'enum':
      if (typeof raw !== 'string' || !spec.choices!.includes(raw)) fail(`must be one of ${spec.choices!.join(', ')}, got ${JSON.stringify(raw)}`);
      return raw;
    case 'optional-listen':
    case 'listen': {
      if (spec.kind === 'optional-listen' && raw === '') return undefined;
      if (typeof raw !== 'string') return fail('must be host:port');
      const match = /^(?:\[([0-9a-fA-F:.]+)\]|([^:\s]+)):(\d{1,5})$/.exec(raw) ?? /^()()(\d{1,5})$/.exec(raw);
      const port = match ? Number(match[3]) : Number.NaN;
      if (!match || port > 65535) return fail(`must be host:port (port 0-65535), got ${JSON.stringify(raw)}`);
      const host = match[1] || match[2] || '127.0.0.1';
      return { host, port };
    }
    case 'string-list': {
      const list = asList(raw) ?? fail('must be a list');
      if (!list.every((item) => typeof item === 'string')) fail('must be a list of strings');
      return list;
    }
    case 'address-list':
      return parseCidrs(raw, name, source);
    case 'status-list': {
      const list = asList(raw) ?? fail('must be a list of status codes');
      return list.map((item) => {
        const code = typeof item === 'number' ? item : typeof item === 'string' && /^\d{3}$/.test(item) ? Number(item) : Number.NaN;
        if (!Number.isInteger(code) || code < 200 || code > 599) fail(`not a final status code (200-599): ${JSON.stringify(item)}`);
        return code;
      });
    }
    case 'url-list': {
      const list = asList(raw) ?? fail('must be a list of URLs');
      return list.map((item) => checkUrl(item, name, source));
    }
    case 'routes':
      return parseRoutes(raw, source);
    case 'purge-peers':
      return parsePurgePeers(raw, source);
    case 'waf':
      // --waf block changes the mode and keeps the file's rules.
      return parseWaf(raw, source, current as WafSettings);
    case 'rate':
      return parseRate(raw, name, source);
    case 'rate-limits':
      return parseRateLimits(raw, source);
  }
}

function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || (isIP(host) === 4 && host.startsWith('127.'));
}

function checkUrl(item: unknown, field: string, source: string): string {
  if (typeof item !== 'string') throw new ConfigError(field, source, 'must be a list of URLs');
  let url: URL;
  try {
    url = new URL(item);
  } catch {
    throw new ConfigError(field, source, `not a URL: ${JSON.stringify(item)}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new ConfigError(field, source, `must be http:// or https://, got ${JSON.stringify(item)}`);
  if (url.pathname !== '/' || url.search !== '') throw new ConfigError(field, source, `must have no path or query, got ${JSON.stringify(item)}`);
  return url.origin;
}

function parsePurgePeers(raw: unknown, source: string): PurgePeer[] {
  const list = asList(raw);
  if (list === undefined) throw new ConfigError('purgePeers', source, 'must be a list of admin URLs or { "url", "token" } objects');
  return list.map((item: unknown, i) => {
    const field = `purgePeers[${i}]`;
    const peer = typeof item === 'string' ? { url: item } : item;
    if (typeof peer !== 'object' || peer === null || Array.isArray(peer)) throw new ConfigError(field, source, 'must be an admin URL or { "url", "token" }');
    const p = peer as Record<string, unknown>;
    for (const key of Object.keys(p)) if (key !== 'url' && key !== 'token') throw new ConfigError(`${field}.${key}`, source, 'unknown field');
    if (p.token !== undefined && (typeof p.token !== 'string' || p.token === '')) throw new ConfigError(`${field}.token`, source, 'must be a non-empty string');
    // An admin API answers at its root, like an upstream: scheme, host and port only.
    return { url: checkUrl(p.url, `${field}.url`, source), ...(p.token !== undefined ? { token: p.token as string } : {}) };
  });
}

function parseRoutes(raw: unknown, source: string): Route[] {
  if (!Array.isArray(raw)) throw new ConfigError('routes', source, 'must be a list');
  return raw.map((route, i) => {
    const field = `routes[${i}]`;
    if (typeof route !== 'object' || route === null) throw new ConfigError(field, source, 'must be an object');
    const r = route as Record<string, unknown>;
    for (const key of Object.keys(r)) if (!['host', 'pathPrefix', 'origins'].includes(key)) throw new ConfigError(`${field}.${key}`, source, 'unknown field');
    if (r.host !== undefined && typeof r.host !== 'string') throw new ConfigError(`${field}.host`, source, 'must be a string');
    if (r.pathPrefix !== undefined && (typeof r.pathPrefix !== 'string' || !r.pathPrefix.startsWith('/'))) {
      throw new ConfigError(`${field}.pathPrefix`, source, 'must be a string starting with /');
    }
    if (!Array.isArray(r.origins) || r.origins.length === 0) throw new ConfigError(`${field}.origins`, source, 'must be a non-empty list of URLs');
    return {
      ...(r.host !== undefined ? { host: (r.host as string).toLowerCase() } : {}),
      ...(r.pathPrefix !== undefined ? { pathPrefix: r.pathPrefix as string } : {}),
      origins: r.origins.map((o) => checkUrl(o, `${field}.origins`, source)),
    };
  });
}

export interface ConfigSources {
  /** Parsed flags: option name → raw values in the order given. */
  flags?: Partial<Record<OptionName, string[]>>;
  env?: Record<string, string | undefined>;
  /** Path of a JSON config file. */
  file?: string;
  /** Already-parsed file contents (tests, embedding). */
  fileContents?: Record<string, unknown>;
}

/** Builds a frozen, validated Config for `role`. Throws ConfigError naming the bad field. */
export function loadConfig(role: Role, sources: ConfigSources = {}): Readonly<Config> {
  const values: Record<string, unknown> = { role };
  for (const [name, spec] of Object.entries(OPTIONS) as [OptionName, OptionSpec][]) {
    values[name] = typeof spec.default === 'function' ? (spec.default as (r: Role) => unknown)(role) : spec.default;
    if (spec.kind === 'listen' || spec.kind === 'optional-listen' || spec.kind === 'workers' || spec.kind === 'rate') values[name] = convert(name, values[name], 'default');
  }
  const accepts = (name: OptionName): boolean => {
    const roles = (OPTIONS[name] as OptionSpec).roles;
    return roles === undefined || roles.includes(role);
  };

  let file = sources.fileContents;
  const fileSource = sources.file ? `config file ${sources.file}` : 'config';
  if (sources.file) file = readConfigFile(sources.file);
  if (file) {
    for (const [key, raw] of Object.entries(file)) {
      if (!(key in OPTIONS)) throw new ConfigError(key, fileSource, 'unknown field');
      if (!accepts(key as OptionName)) throw new ConfigError(key, fileSource, `not an option of the ${role}`);
      values[key] = convert(key as OptionName, raw, fileSource, values[key]);
    }
  }
  const env = sources.env ?? {};
  for (const name of Object.keys(OPTIONS) as OptionName[]) {
    const raw = env[envName(name)];
    if (raw === undefined || raw === '' || !accepts(name)) continue;
    values[name] = convert(name, raw, `environment ${envName(name)}`, values[name]);
  }
  for (const [name, raws] of Object.entries(sources.flags ?? {}) as [OptionName, string[]][]) {
    if (!accepts(name)) throw new ConfigError(name, `flag --${flagName(name)}`, `not an option of the ${role}`);
    const spec: OptionSpec = OPTIONS[name];
    const list = spec.kind === 'url-list' || spec.kind === 'string-list' || spec.kind === 'address-list' || spec.kind === 'status-list' || spec.kind === 'purge-peers';
    // A list flag may be repeated and each value comma-separated, as in the environment (convert splits it).
    const given = list ? raws.join(',') : raws[raws.length - 1];
    values[name] = convert(name, given, `flag --${flagName(name)}`, values[name]);
  }
  checkAdmin(values as unknown as Config, sources.file ? fileSource : 'config');
  checkRateLimitStore(values as unknown as Config);
  checkWafBody(values as unknown as Config);
  checkTls(values as unknown as Config);
  return Object.freeze(values as unknown as Config);
}

/** The admin token comes from a file when one is named; an admin API beyond loopback needs one. */
function checkAdmin(config: Config, source: string): void {
  if (config.adminTokenFile !== '') {
    let token: string;
    try {
      token = readFileSync(config.adminTokenFile, 'utf8').trim();
    } catch (error) {
      throw new ConfigError('adminTokenFile', source, `cannot read ${config.adminTokenFile}: ${(error as Error).message}`);
    }
    if (token === '') throw new ConfigError('adminTokenFile', source, `${config.adminTokenFile} is empty`);
    config.adminToken = token;
  }
  checkAdminExposure(config, source);
}

/** An admin API beyond loopback needs a token (checked again on SIGHUP, against the listener that keeps running). */
export function checkAdminExposure(config: Readonly<Config>, source: string): void {
  const listen = config.adminListen;
  if (listen !== undefined && !isLoopback(listen.host) && config.adminToken === '') {
    throw new ConfigError('adminToken', source, `the admin API listens on ${listen.host}, beyond loopback: give --admin-token or --admin-token-file`);
  }
}

/** Certificates pair up with keys; TLS options need a TLS listener; a client certificate needs its key. */
function checkTls(config: Config): void {
  if (config.tlsCert.length !== config.tlsKey.length) {
    throw new ConfigError('tlsKey', 'config', `${config.tlsCert.length} --tls-cert but ${config.tlsKey.length} --tls-key: give one key per certificate, in the same order`);
  }
  if (config.redirectHttp && config.listenTls === undefined) throw new ConfigError('redirectHttp', 'config', 'needs --listen-tls: there is no HTTPS listener to redirect to');
  if (config.listenTls === undefined && config.tlsCert.length > 0) throw new ConfigError('tlsCert', 'config', 'certificates given but no --listen-tls');
  if ((config.upstreamCert === '') !== (config.upstreamKey === '')) throw new ConfigError(config.upstreamCert === '' ? 'upstreamCert' : 'upstreamKey', 'config', 'give --upstream-cert and --upstream-key together');
  if (config.trustedProxies.length > 0 && !config.proxyProtocol) throw new ConfigError('trustedProxies', 'config', 'only means something with --proxy-protocol');
  if (config.proxyProtocol && config.trustedProxies.length === 0) throw new ConfigError('trustedProxies', 'config', '--proxy-protocol needs the balancers allowed to send the header: give --trusted-proxy');
}

function checkWafBody(config: Config): void {
  const rule = config.waf.rules.find((r) => r.phase === 'body');
  if (rule !== undefined && config.wafBodyLimit === 0) throw new ConfigError('wafBodyLimit', 'config', `is 0, so body rule ${rule.id} would never run`);
}

function checkRateLimitStore(config: Config): void {
  if (config.rateLimitStore === '') return;
  let url: URL | undefined;
  try {
    url = new URL(config.rateLimitStore);
  } catch {
    url = undefined;
  }
  if (url === undefined || (url.protocol !== 'redis:' && url.protocol !== 'rediss:') || url.hostname === '') {
    throw new ConfigError('rateLimitStore', 'config', `must be redis://host:port, got ${JSON.stringify(config.rateLimitStore)}`);
  }
}

function readConfigFile(path: string): Record<string, unknown> {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (error) {
    throw new ConfigError('config', path, `cannot read: ${(error as Error).message}`);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new ConfigError('config', path, `not valid JSON: ${(error as Error).message}`);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) throw new ConfigError('config', path, 'must be a JSON object');
  return parsed as Record<string, unknown>;
}

/** Option names for a role, for --help and the README table. */
export function optionsFor(role: Role): OptionName[] {
  return (Object.keys(OPTIONS) as OptionName[]).filter((name) => {
    const roles = (OPTIONS[name] as OptionSpec).roles;
    return roles === undefined || roles.includes(role);
  });
}

export function optionSpec(name: OptionName): Readonly<OptionSpec> {
  return OPTIONS[name];
}
