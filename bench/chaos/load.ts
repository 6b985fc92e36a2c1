/**
 * The chaos run's load: `concurrency` loops, each sending one request at a time through undici
 * Pools to a random edge. A loop's operation is a purge (`purgeShare`: the key's version is
 * bumped in the versions file first, then POST /purge to a live edge, which forwards it to its
 * purge peers) or a GET of a Zipf-chosen key (s = 1), sometimes a Range, verified against the oracle.
 */
import { Pool } from 'undici';
import { mulberry32, zipfSampler } from '../random.js';
import { bodySize, expectedBody, keyPath } from './body.js';
import { cacheOutcome, Tally, Timeline } from './record.js';
import type { OutpostNode } from './topology.js';
import { errorCause, readAndCheck, rightlyUnsatisfiable, type AskedRange, type Checked } from './verify.js';
import type { VersionFile } from './versions.js';

export interface LoadOptions {
  edges: OutpostNode[];
  keys: number;
  concurrency: number;
  purgeShare: number;
  rangeShare: number;
  seed: number;
  /** Host header: one cache key per path on every node, and the host of purge URLs. */
  host: string;
  versions: VersionFile;
  tally: Tally;
  timeline: Timeline;
}

export class LoadGenerator {
  private readonly pools: Pool[];
  private readonly random: () => number;
  private readonly pickKey: () => number;
  /** The version the driver last set per key (the origins' truth). */
  private readonly current: Uint32Array;
  /** Keys fetched successfully since their last purge: a stale copy may exist. */
  private readonly fetched: Uint8Array;
  /** Version and time (ms of the run) of the last purge that replied, per key. */
  private readonly purgedVersion: Uint32Array;
  private readonly purgedAt: Float64Array;
  private running = false;
  private loops: Promise<void>[] = [];

  constructor(private readonly o: LoadOptions) {
    this.pools = o.edges.map((edge) => new Pool(edge.url, { connections: o.concurrency, headersTimeout: 15_000, bodyTimeout: 10_000, connectTimeout: 2000, keepAliveTimeout: 4000 }));
    this.random = mulberry32(o.seed);
    this.pickKey = zipfSampler(o.keys, 1, this.random);
    this.current = new Uint32Array(o.keys).fill(1);
    this.fetched = new Uint8Array(o.keys);
    this.purgedVersion = new Uint32Array(o.keys);
    this.purgedAt = new Float64Array(o.keys);
  }

  start(): void {
    this.running = true;
    for (let i = 0; i < this.o.concurrency; i++) this.loops.push(this.loop());
  }

  /** Stops issuing requests; resolves once those in flight have finished (they have timeouts). */
  async stop(): Promise<void> {
    this.running = false;
    await Promise.all(this.loops);
    await Promise.all(this.pools.map((pool) => pool.destroy().catch(() => undefined)));
  }

  private async loop(): Promise<void> {
    while (this.running) {
      if (this.random() < this.o.purgeShare) await this.purge(this.pickKey());
      // A client that failed waits a little before its next request, as a real one would.
      else if (!(await this.get(this.pickKey()))) await sleep(100);
    }
  }

  private async purge(key: number): Promise<void> {
    const { tally, edges, versions, host, timeline } = this.o;
    const version = this.current[key]! + 1;
    this.current[key] = version;
    versions.write(key, version);
    tally.purges.sent++;
    // A live edge first; the other if that fails. Each forwards to its purge peers (the other edge, both shields).
    const first = Math.floor(this.random() * edges.length);
    const order = [0, 1].map((i) => edges[(first + i) % edges.length]!).sort((a, b) => Number(b.up) - Number(a.up));
    let cause = '';
    for (const edge of order) {
      try {
        const reply = await edge.purge({ url: `http://${host}${keyPath(key)}` });
        if (reply.status === 200) {
          const peers = (JSON.parse(reply.text) as { peers?: Array<{ result: string }> }).peers ?? [];
          tally.purges.ok++;
          this.fetched[key] = 0; // the copies are gone (where the purge reached)
          tally.purges.peersQueued += peers.filter((p) => p.result === 'queued').length;
          tally.purges.peersRejected += peers.filter((p) => p.result === 'rejected').length;
          if (version > this.purgedVersion[key]!) {
            this.purgedVersion[key] = version;
            this.purgedAt[key] = timeline.now();
          }
          return;
        }
        cause = `status ${reply.status}`;
      } catch (error) {
        cause = errorCause(error);
      }
    }
    tally.purgeFailed(cause);
  }

  /** One verified GET; false when it failed. */
  private async get(key: number): Promise<boolean> {
    const { tally, timeline, edges } = this.o;
    const e = Math.floor(this.random() * edges.length);
    const headers: Record<string, string> = { host: this.o.host };
    let asked: AskedRange | undefined;
    if (this.random() < this.o.rangeShare) {
      // Anywhere in the current version's body, up to 1.5 MiB long: across slice boundaries too.
      const first = Math.floor(this.random() * bodySize(key, this.current[key]!));
      asked = { first, last: first + Math.floor(this.random() * 1.5 * 1024 * 1024) };
      headers.range = `bytes=${asked.first}-${asked.last}`;
      tally.rangeSent++;
    }
    const started = timeline.now();
    const versionAtStart = this.current[key]!;
    const staleAvailable = this.fetched[key] === 1;
    tally.sent++;
    let status = 0;
    let replyHeaders: Record<string, string | string[] | undefined> = {};
    let checked: Checked;
    try {
      const reply = await this.pools[e]!.request({ method: 'GET', path: keyPath(key), headers });
      status = reply.statusCode;
      replyHeaders = reply.headers;
      if (status === 416 && asked !== undefined && rightlyUnsatisfiable(key, header(reply.headers['content-range']), asked, this.current[key]!)) {
        // The cache holds an older, shorter version: no byte of the range is in it.
        await reply.body.dump().catch(() => undefined);
        tally.okPartial++;
        return true;
      }
      if (status !== 200 && status !== 206) {
        await reply.body.dump().catch(() => undefined);
        tally.failure(staleAvailable, `status ${status}`, timeline.activeDuring(started, timeline.now()), this.describe(started, key, e, replyHeaders));
        return false;
      }
      checked = await readAndCheck(key, status, reply.headers, reply.body, asked);
    } catch (error) {
      tally.failure(staleAvailable, errorCause(error), timeline.activeDuring(started, timeline.now()), this.describe(started, key, e, replyHeaders));
      return false;
    }
    const events = timeline.activeDuring(started, timeline.now());
    if (checked.kind === 'cut') {
      tally.failure(staleAvailable, `cut mid-body after ${checked.bytes} of ${checked.expectedBytes} bytes: ${checked.reason}`, events, this.describe(started, key, e, replyHeaders));
      return false;
    }
    tally.outcome(cacheOutcome(header(replyHeaders['cache-status'])));
    if (checked.kind === 'wrong') {
      tally.wrongBody({
        at: started,
        key,
        edge: edges[e]!.name,
        status,
        reason: checked.reason,
        versionClaimed: checked.version,
        versionCurrent: this.current[key]!,
        expectedBytes: checked.expectedBytes,
        gotBytes: checked.bytes,
        firstDiff: checked.firstDiff,
        diffHex: checked.diffHex,
        bodyOfVersion: status === 200 ? this.whichVersion(key, checked) : '(206)',
        headers: pick(replyHeaders, ['cache-status', 'x-served-by', 'age', 'etag', 'x-version', 'x-checksum', 'content-length', 'content-range', 'via']),
        events,
      });
      return true;
    }
    if (checked.inconsistent) tally.inconsistent(`key ${key} via ${edges[e]!.name}: ${checked.inconsistent}; Cache-Status: ${header(replyHeaders['cache-status'])}`);
    this.fetched[key] = 1;
    if (status === 206) tally.okPartial++;
    else tally.ok++;
    tally.bytes += checked.bytes;
    const version = checked.version;
    if (version > this.current[key]!) tally.versionsAhead++;
    if (version < versionAtStart) tally.olderVersion++;
    if (this.purgedAt[key]! > 0 && this.purgedAt[key]! < started && version < this.purgedVersion[key]!) {
      tally.stalePurged(events, `key ${key} v${version} (purged to v${this.purgedVersion[key]} at ${(this.purgedAt[key]! / 1000).toFixed(1)} s, asked at ${(started / 1000).toFixed(1)} s) via ${edges[e]!.name}; Cache-Status: ${header(replyHeaders['cache-status'])}; Age: ${header(replyHeaders.age)}`);
    }
    return true;
  }

  private describe(started: number, key: number, edge: number, headers: Record<string, string | string[] | undefined>): string {
    const status = headers['cache-status'] === undefined ? '' : `, Cache-Status: ${header(headers['cache-status'])}, X-Served-By: ${header(headers['x-served-by'])}`;
    return `${(started / 1000).toFixed(1)} s key ${key} via ${this.o.edges[edge]!.name}${status}`;
  }

  /** Which version's body a wrong body is, by its first 64 bytes and length. */
  private whichVersion(key: number, checked: Checked): string {
    for (let v = 1; v <= this.current[key]! + 1; v++) {
      const body = expectedBody(key, v);
      if (body.length === checked.bytes && body.subarray(0, checked.head.length).equals(checked.head)) return `v${v}'s length and first bytes`;
      if (body.subarray(0, checked.head.length).equals(checked.head)) return `v${v}'s first bytes (v${v} has ${body.length})`;
    }
    return `none of v1..v${this.current[key]! + 1} by its first bytes`;
  }
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

function header(value: string | string[] | undefined): string {
  return Array.isArray(value) ? value.join(', ') : (value ?? '');
}

function pick(headers: Record<string, string | string[] | undefined>, names: string[]): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of names) if (headers[name] !== undefined) out[name] = header(headers[name]);
  return out;
}
