/**
 * The admin API (issue 10), on its own listener, never on a public one: purge, inspect, stats,
 * Prometheus metrics, health and readiness. It runs in the primary of a multi-worker node (or
 * beside the node in one process) and every answer covers the whole node. Every call but
 * /healthz and /readyz carries the admin token when one is configured; config refuses an admin
 * listener beyond loopback without one.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { AggregatorRegistry, Counter, Gauge, Registry } from 'prom-client';
import type { Config } from '../config/config.js';
import { cacheKey } from '../pipeline/cache-key.js';
import type { NodeSnapshot } from '../pipeline/node-server.js';
import { describePurge, purgeKind, type PurgeRequest } from '../pipeline/purge.js';
import type { HttpRecord } from '../pipeline/stored-response.js';
import type { DiskReport } from '../storage/tiered-store.js';
import { variantOfKey } from '../storage/keys.js';
import type { InspectedVariant, NodeControl, WorkerState } from './node-control.js';
import { FORWARDED_PURGE_HEADER, type PeerResult, type PurgeOutbox } from './purge-outbox.js';

const MAX_BODY_BYTES = 1024 * 1024;
const PURGE_FIELDS = new Set(['url', 'prefix', 'tags', 'all', 'soft']);

export class BadRequest extends Error {}

/** Validates a purge body: exactly one of url, prefix, tags, all; soft optional. */
export function parsePurgeRequest(body: unknown): PurgeRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new BadRequest('the body must be a JSON object');
  const fields = body as Record<string, unknown>;
  for (const name of Object.keys(fields)) if (!PURGE_FIELDS.has(name)) throw new BadRequest(`unknown field ${JSON.stringify(name)}`);
  const kinds = ['url', 'prefix', 'tags', 'all'].filter((name) => fields[name] !== undefined);
  if (kinds.length !== 1) throw new BadRequest(`give exactly one of url, prefix, tags, all (got ${kinds.length === 0 ? 'none' : kinds.join(' and ')})`);
  if (fields.soft !== undefined && typeof fields.soft !== 'boolean') throw new BadRequest('soft must be true or false');
  const soft = fields.soft === true ? { soft: true } : {};
  for (const name of ['url', 'prefix'] as const) {
    const value = fields[name];
    if (value === undefined) continue;
    if (typeof value !== 'string') throw new BadRequest(`${name} must be a string`);
    splitUrl(value, name);
    return { [name]: value, ...soft };
  }
  if (fields.tags !== undefined) {
    const tags = fields.tags;
    if (!Array.isArray(tags) || tags.length === 0 || !tags.every((tag) => typeof tag === 'string' && tag !== '')) throw new BadRequest('tags must be a non-empty list of non-empty strings');
    return { tags: tags as string[], ...soft };
  }
  if (fields.all !== true) throw new BadRequest('all must be true');
  return { all: true, ...soft };
}

/**
 * Scheme, authority and the rest of an absolute http(s) URL, as the client sent them: the cache
 * key is built from the raw target (no dot-segment or percent normalisation), so this is too.
 */
function splitUrl(value: string, name: string): { scheme: 'http' | 'https'; host: string; path: string } {
  const match = /^([a-z][a-z0-9+.-]*):\/\/([^/?#\s]+)([^#\s]*)$/i.exec(value);
  if (match === null) throw new BadRequest(`${name} must be an absolute http:// or https:// URL, got ${JSON.stringify(value)}`);
  const scheme = match[1]!.toLowerCase();
  if (scheme !== 'http' && scheme !== 'https') throw new BadRequest(`${name} must be an http:// or https:// URL, got ${JSON.stringify(value)}`);
  const path = match[3] === '' ? '/' : match[3]!;
  if (!path.startsWith('/') && !path.startsWith('?')) throw new BadRequest(`${name} has a malformed path: ${JSON.stringify(value)}`);
  return { scheme, host: match[2]!, path: path.startsWith('?') ? `/${path}` : path };
}

/** A URL as the cache keys it (same query options as the pipeline); a prefix only has its scheme and host lower-cased. */
export function keyOf(value: string, name: 'url' | 'prefix', config: Readonly<Config>): string {
  const { scheme, host, path } = splitUrl(value, name);
  if (name === 'prefix') return `${scheme}://${host.toLowerCase()}${path}`;
  return cacheKey(scheme, host, path, { sortQuery: config.sortQuery, dropQueryParams: config.dropQueryParams });
}

/** GET /stats: the whole node, summed over its workers. */
export interface AdminStats {
  role: string;
  node: string;
  /** Multi-worker nodes: the worker processes and their restarts. */
  workers?: { count: number; ready: number; restarts: number; list: WorkerState[] };
  tiers: Record<'memory' | 'disk', { entries: number; bytes: number; evictions: number }>;
  /** The disk tier's state: degraded mode (after a failed write) and writes that skipped it. Counts summed over workers. */
  disk?: DiskStats;
  /** Client requests by cache outcome. */
  requests: Record<string, number>;
  /** (hit + stale) / (hit + stale + revalidated + miss); bypassed and passed requests are not lookups. null before any. */
  hitRatio: number | null;
  fillsInFlight: number;
  collapsedRequests: number;
  purges: { accepted: number; objects: number };
  purgePeers: { pending: Record<string, number>; delivered?: number; queued?: number; rejected?: number; expired?: number };
  /** Each upstream member: how many of the workers that report it see it healthy. */
  upstreams: Array<{ member: string; healthy: number; of: number }>;
}

export interface DiskStats {
  /** 'degraded' when any worker's disk tier is (writes go to memory only while it is reopened and probed). */
  state: 'ok' | 'degraded';
  /** Multi-worker nodes: how many workers' disk tiers are degraded. */
  degradedWorkers?: number;
  /** When the earliest current degraded period began. */
  since?: string;
  lastError?: string;
  degradedEntered: number;
  recoveries: number;
  degradedSeconds: number;
  /** Writes that went to memory only: the disk was behind (backpressure), or degraded. */
  skippedBehind: number;
  skippedDegraded: number;
  /** Writes that skipped memory (to disk only) while memory writes in flight held their bound (32 MiB). */
  memorySkippedBusy: number;
  /** Fills and disk hits the memory tier's admission (TinyLFU) kept out of memory: they stay on disk. */
  memoryAdmissionsRefused: number;
  memoryPendingBytes: number;
  writeErrors: number;
  /** Disk writes in flight, and the body bytes they hold. */
  pendingWrites: number;
  pendingBytes: number;
  /** Deletes and purges waiting for a degraded disk. */
  owed: number;
}

/** The disk tiers of the node's processes, combined (undefined when its store has no disk tier). */
export function diskStats(snapshots: readonly NodeSnapshot[]): DiskStats | undefined {
  const disks = snapshots.flatMap((s) => (s.disk ? [s.disk] : []));
  if (disks.length === 0) return undefined;
  const sum = (pick: (d: DiskReport) => number) => disks.reduce((total, d) => total + pick(d), 0);
  const degraded = disks.filter((d) => d.state === 'degraded');
  const since = degraded.length > 0 ? Math.min(...degraded.map((d) => d.since ?? Date.now())) : undefined;
  const errors = [...new Set(degraded.map((d) => d.lastError ?? 'unknown error'))];
  return {
    state: degraded.length > 0 ? 'degraded' : 'ok',
    ...(disks.length > 1 ? { degradedWorkers: degraded.length } : {}),
    ...(since !== undefined ? { since: new Date(since).toISOString(), lastError: errors.join('; ') } : {}),
    degradedEntered: sum((d) => d.degradedEntered),
    recoveries: sum((d) => d.recoveries),
    degradedSeconds: Math.round(sum((d) => d.degradedMs)) / 1000,
    skippedBehind: sum((d) => d.skippedBehind),
    skippedDegraded: sum((d) => d.skippedDegraded),
    memorySkippedBusy: sum((d) => d.memorySkippedBusy),
    memoryAdmissionsRefused: sum((d) => d.memoryAdmissionsRefused),
    memoryPendingBytes: sum((d) => d.memoryPendingBytes),
    writeErrors: sum((d) => d.writeErrors),
    pendingWrites: sum((d) => d.pendingWrites),
    pendingBytes: sum((d) => d.pendingBytes),
    owed: sum((d) => d.owed),
  };
}

/** /readyz detail: what is degraded without making the node unready (memory keeps serving). Undefined when nothing is. */
export function readinessDetail(snapshots: readonly NodeSnapshot[]): { disk: string } | undefined {
  const disk = diskStats(snapshots);
  if (disk?.state !== 'degraded') return undefined;
  const withDisk = snapshots.filter((s) => s.disk !== undefined).length;
  const where = disk.degradedWorkers !== undefined ? ` on ${disk.degradedWorkers} of ${withDisk} workers` : '';
  return { disk: `degraded${where} since ${disk.since}: ${disk.lastError}` };
}

export interface AdminOptions {
  listen: { host: string; port: number };
  control: NodeControl;
  logger: Logger;
  /** The node's current config (it changes on SIGHUP): token, key options, role. */
  config: () => Readonly<Config>;
  /** Forwards purges to the purge peers; undefined when none are configured at start. */
  outbox?: PurgeOutbox;
}

export interface AdminServer {
  server: Server;
  url: string;
  close(): Promise<void>;
}

export async function startAdmin(options: AdminOptions): Promise<AdminServer> {
  const admin = new AdminApi(options);
  const server = createServer((req, res) => {
    admin.route(req, res).catch((error: unknown) => {
      const status = error instanceof BadRequest ? 400 : 500;
      if (status === 500) options.logger.error({ err: (error as Error).message, path: req.url }, 'admin request failed');
      reply(res, status, { error: (error as Error).message });
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.listen.port, options.listen.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return {
    server,
    url: `http://${host}:${address.port}`,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
      }),
  };
}

class AdminApi {
  /** The admin API's own metrics (purges, peers, workers), merged into /metrics. */
  private readonly registry = new Registry();
  private readonly purges: Counter;
  private readonly purgedObjects: Counter;
  private readonly peerResults: Counter;
  private readonly authFailures: Counter;
  private purgeCounts = { accepted: 0, objects: 0 };

  constructor(private readonly options: AdminOptions) {
    const registers = [this.registry];
    this.purges = new Counter({ name: 'outpost_purges_total', help: 'purges applied through the admin API, by kind', labelNames: ['kind', 'soft'], registers });
    this.purgedObjects = new Counter({ name: 'outpost_purged_objects_total', help: 'objects removed or marked stale by purges (memory and disk tiers)', registers });
    this.peerResults = new Counter({ name: 'outpost_purge_peer_results_total', help: 'purges forwarded to peers, by first result', labelNames: ['result'], registers });
    this.authFailures = new Counter({ name: 'outpost_admin_unauthorized_total', help: 'admin calls refused for a missing or wrong token', registers });
    const { control, outbox } = options;
    new Gauge({
      name: 'outpost_purge_outbox_pending',
      help: 'purges waiting in the outbox for a peer that did not take them',
      registers,
      collect() {
        this.set(Object.values(outbox?.pending() ?? {}).reduce((a, b) => a + b, 0));
      },
    });
    new Gauge({
      name: 'outpost_workers_ready',
      help: 'worker processes serving requests',
      registers,
      collect() {
        this.set(control.workers()?.list.filter((w) => w.state === 'ready').length ?? 1);
      },
    });
    new Gauge({
      name: 'outpost_worker_restarts',
      help: 'workers restarted after dying, since start',
      registers,
      collect() {
        this.set(control.workers()?.restarts ?? 0);
      },
    });
  }

  async route(req: IncomingMessage, res: ServerResponse): Promise<void> {
    if (this.options.control.draining() && req.url?.startsWith('/purge')) {
      // A purge now could miss a worker that already left: the caller (or a peer's outbox) retries elsewhere or later.
      return reply(res, 503, { error: 'the node is shutting down' }, { 'retry-after': '5', connection: 'close' });
    }
    const url = new URL(req.url ?? '/', 'http://admin');
    const method = req.method ?? 'GET';
    const read = method === 'GET' || method === 'HEAD';
    if (url.pathname === '/healthz' && read) return reply(res, 200, { ok: true });
    if (url.pathname === '/readyz' && read) return this.readyz(res);
    if (!this.authorized(req)) {
      this.authFailures.inc();
      this.options.logger.warn({ path: url.pathname, method, from: req.socket.remoteAddress, token: req.headers.authorization === undefined ? 'missing' : 'wrong' }, 'admin call refused');
      return reply(res, 401, { error: 'a valid admin token is required (Authorization: Bearer TOKEN)' }, { 'www-authenticate': 'Bearer realm="outpost-admin"' });
    }
    switch (url.pathname) {
      case '/stats':
        if (!read) return methodNotAllowed(res, 'GET');
        return reply(res, 200, await this.stats());
      case '/metrics':
        if (!read) return methodNotAllowed(res, 'GET');
        return this.metrics(res);
      case '/cache':
        if (!read) return methodNotAllowed(res, 'GET');
        return this.inspect(res, url.searchParams.get('url'));
      case '/purge':
        if (method !== 'POST') return methodNotAllowed(res, 'POST');
        return this.purge(req, res);
      default:
        return reply(res, 404, { error: `no admin endpoint ${method} ${url.pathname}` });
    }
  }

  /** Bearer token compared in constant time (hashes of equal length, so the length leaks nothing either). */
  private authorized(req: IncomingMessage): boolean {
    const token = this.options.config().adminToken;
    if (token === '') return true;
    const match = /^Bearer +(\S+) *$/i.exec(req.headers.authorization ?? '');
    const given = createHash('sha256').update(match?.[1] ?? '').digest();
    return timingSafeEqual(given, createHash('sha256').update(token).digest()) && match !== null;
  }

  private async purge(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const request = parsePurgeRequest(await readJson(req));
    const config = this.options.config();
    const local: PurgeRequest = { ...request };
    if (request.url !== undefined) local.url = keyOf(request.url, 'url', config);
    if (request.prefix !== undefined) local.prefix = keyOf(request.prefix, 'prefix', config);
    // Peers first, then this node, then the peers that took it once more. A miss here between this
    // node's purge and a peer's would refill from that peer's old copy (a shield's, say), and a
    // peer edge could refill from a shield purged after it. Peers that queued it get it later, in order.
    const forwarded = req.headers[FORWARDED_PURGE_HEADER];
    const outbox = forwarded !== undefined ? undefined : this.options.outbox;
    const peers: PeerResult[] = outbox === undefined ? [] : await outbox.forward(request);
    const affected = await this.options.control.purge(local);
    const took = new Set(peers.filter((p) => p.result === 'ok').map((p) => p.peer));
    if (outbox !== undefined && took.size > 0) await outbox.forward(request, took, true);
    if (forwarded === 'repeat') return reply(res, 200, { affected, peers });
    this.purges.inc({ kind: purgeKind(request), soft: String(request.soft === true) });
    this.purgedObjects.inc(affected);
    this.purgeCounts.accepted++;
    this.purgeCounts.objects += affected;
    for (const peer of peers) this.peerResults.inc({ result: peer.result });
    this.options.logger.info({ purge: describePurge(local), affected, peers, forwarded: forwarded !== undefined }, 'admin purge');
    reply(res, 200, { affected, peers });
  }

  private async readyz(res: ServerResponse): Promise<void> {
    const reasons: string[] = [];
    const { control } = this.options;
    let detail: Record<string, string> | undefined;
    if (control.draining()) reasons.push('draining');
    else if (!control.started()) reasons.push('starting');
    else {
      const snapshots = await control.snapshots();
      if (snapshots.length === 0) reasons.push('no worker is serving');
      else if (!snapshots.some((s) => s.upstreams.some((u) => u.healthy))) reasons.push('no upstream member is healthy');
      detail = readinessDetail(snapshots);
    }
    reply(res, reasons.length === 0 ? 200 : 503, { ready: reasons.length === 0, ...(reasons.length > 0 ? { reasons } : {}), ...(detail ? { detail } : {}) });
  }

  private async metrics(res: ServerResponse): Promise<void> {
    const workers = AggregatorRegistry.aggregate(await this.options.control.metrics());
    const text = await Registry.merge([workers as Registry, this.registry]).metrics();
    res.writeHead(200, { 'content-type': this.registry.contentType, 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
    res.end(text);
  }

  private async stats(): Promise<AdminStats> {
    const { control, outbox } = this.options;
    const snapshots = await control.snapshots();
    const sum = (pick: (s: NodeSnapshot) => number) => snapshots.reduce((total, s) => total + pick(s), 0);
    const tier = (name: 'memory' | 'disk') => ({ entries: sum((s) => s.tiers[name].entries), bytes: sum((s) => s.tiers[name].bytes), evictions: sum((s) => s.tiers[name].evictions) });
    const requests: Record<string, number> = {};
    for (const s of snapshots) for (const [outcome, n] of Object.entries(s.requests)) requests[outcome] = (requests[outcome] ?? 0) + n;
    const hits = (requests.hit ?? 0) + (requests.stale ?? 0);
    const lookups = hits + (requests.revalidated ?? 0) + (requests.miss ?? 0);
    const upstreams = new Map<string, { member: string; healthy: number; of: number }>();
    for (const s of snapshots) {
      for (const u of s.upstreams) {
        const seen = upstreams.get(u.member) ?? { member: u.member, healthy: 0, of: 0 };
        seen.of++;
        if (u.healthy) seen.healthy++;
        upstreams.set(u.member, seen);
      }
    }
    const workers = control.workers();
    const config = this.options.config();
    const disk = diskStats(snapshots);
    return {
      role: config.role,
      node: config.nodeName,
      ...(workers ? { workers: { count: workers.list.length, ready: workers.list.filter((w) => w.state === 'ready').length, restarts: workers.restarts, list: workers.list } } : {}),
      tiers: { memory: tier('memory'), disk: tier('disk') },
      ...(disk ? { disk } : {}),
      requests,
      hitRatio: lookups === 0 ? null : Math.round((hits / lookups) * 10_000) / 10_000,
      fillsInFlight: sum((s) => s.fillsInFlight),
      collapsedRequests: sum((s) => s.collapsed),
      purges: { ...this.purgeCounts },
      purgePeers: { pending: outbox?.pending() ?? {}, ...(outbox?.counts ?? {}) },
      upstreams: [...upstreams.values()],
    };
  }

  private async inspect(res: ServerResponse, url: string | null): Promise<void> {
    if (url === null || url === '') throw new BadRequest('give the URL to inspect: GET /cache?url=https://host/path');
    const key = keyOf(url, 'url', this.options.config());
    const variants = await this.options.control.inspect(key);
    reply(res, 200, { url: key, variants: variants.map(describeVariant).sort((a, b) => (a.variant < b.variant ? -1 : a.variant > b.variant ? 1 : (a.worker ?? 0) - (b.worker ?? 0))) });
  }
}

/** A stored variant as an operator reads it: what selects it, what it answers with, how long it lives, where it is. */
function describeVariant(v: InspectedVariant) {
  const record = v.meta.http as unknown as HttpRecord;
  const variant = variantOfKey(v.key);
  const time = (ms: number) => new Date(ms).toISOString();
  const common = { variant: variant.replace(/\n$/, '').replace(/\n/g, '; '), tiers: v.tiers, ...(v.worker !== undefined ? { worker: v.worker } : {}) };
  if (record.kind === 'vary') return { ...common, kind: 'vary', varyOn: record.fields, variantsStored: record.variants.length };
  const headers: Array<[string, string]> = [];
  for (let i = 0; i < record.headers.length; i += 2) headers.push([record.headers[i]!, record.headers[i + 1]!]);
  return {
    ...common,
    kind: 'response',
    status: record.status,
    headers,
    storedAt: time(v.meta.storedAt),
    staleAt: time(v.meta.staleAt),
    graceUntil: time(v.meta.graceUntil),
    deleteAt: time(v.meta.deleteAt),
    size: v.meta.size,
    tags: v.meta.tags,
  };
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let length = 0;
  // Past the limit the rest is read and dropped, so the client gets the 400 rather than a reset.
  for await (const chunk of req as AsyncIterable<Buffer>) {
    length += chunk.length;
    if (length <= MAX_BODY_BYTES) chunks.push(chunk);
  }
  if (length > MAX_BODY_BYTES) throw new BadRequest('the body is over 1 MiB');
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch (error) {
    throw new BadRequest(`malformed JSON: ${(error as Error).message}`);
  }
}

function methodNotAllowed(res: ServerResponse, allow: string): void {
  reply(res, 405, { error: `use ${allow}` }, { allow });
}

function reply(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = `${JSON.stringify(body, null, 2)}\n`;
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store', ...headers });
  res.end(text);
}
