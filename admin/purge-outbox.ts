/**
 * Purge fan-out to the other nodes' admin APIs ("purge peers") with a persistent outbox: a peer
 * that does not answer (refused, timeout, 5xx) gets the purge stored in LevelDB and retried with
 * backoff until `retrySec` after it was accepted, so a short outage or a restart of this node
 * loses nothing. A peer answering 4xx refused the purge itself (bad token, bad body): retrying
 * would not help, so that is logged and not queued. Tokens are never logged nor stored.
 */
import { Level } from 'level';
import type { Logger } from 'pino';
import { describePurge, type PurgeRequest } from '../pipeline/purge.js';

/**
 * Set on purges a node forwards to its peers: a peer applies them but does not forward them again
 * (peers may list each other). `repeat` marks the confirming second pass (admin-server.ts): applied, not counted.
 */
export const FORWARDED_PURGE_HEADER = 'x-outpost-purge-forwarded';

/** Another node's admin API; `token` is sent as `Authorization: Bearer`, omitted when undefined. */
export interface PurgePeer { url: string; token: string | undefined }

/** What happened to one peer's copy of a purge (the admin API reports these to the operator). */
export type PeerResult =
  | { peer: string; result: 'ok' }
  | { peer: string; result: 'queued'; error: string }
  | { peer: string; result: 'rejected'; status: number; error: string };

export interface PurgeOutboxOptions {
  /** LevelDB folder (created if missing). */
  location: string;
  peers: readonly PurgePeer[];
  /** How long a queued purge is retried, from when it was accepted. */
  retrySec: number;
  logger: Logger;
  /** Per-attempt timeout (default 5000 ms). */
  timeoutMs?: number;
  /** First retry delay (default 1000 ms); tests set it small. */
  initialBackoffMs?: number;
  /** Longest retry delay (default 60000 ms). */
  maxBackoffMs?: number;
  now?: () => number;
}

/** One stored record. No token: the current peer list supplies it, so a reload fixes a bad one. */
interface QueuedItem { peer: string; request: PurgeRequest; acceptedAt: number; attempts: number }

/** One peer's state; `chain` runs its sends one at a time so purges arrive in the order given. */
interface PeerState {
  peer: PurgePeer;
  queue: { key: string; item: QueuedItem }[];
  chain: Promise<unknown>;
  timer: NodeJS.Timeout | undefined;
  backoffMs: number;
  removed: boolean;
}

type Outcome = { kind: 'ok' } | { kind: 'rejected'; status: number; error: string } | { kind: 'failed'; error: string };

/** Keys are `q/{encoded peer URL}/{16-digit sequence}`: LevelDB's key order is the queue order. */
const keyPrefix = (peerUrl: string): string => `q/${encodeURIComponent(peerUrl)}/`;

export class PurgeOutbox {
  /** For metrics; `delivered` counts immediate and retried successes. */
  readonly counts = { delivered: 0, queued: 0, rejected: 0, expired: 0 };
  private readonly states = new Map<string, PeerState>();
  private readonly cleanups = new Set<Promise<void>>();
  /** Aborts sends in flight on close, so close does not wait for a slow peer. */
  private readonly stop = new AbortController();
  private readonly logger: Logger;
  private readonly now: () => number;
  private seq = 0;
  private closing: Promise<void> | undefined;

  private constructor(private readonly db: Level<string, QueuedItem>, private readonly options: PurgeOutboxOptions) {
    this.logger = options.logger;
    this.now = options.now ?? Date.now;
    this.setPeers(options.peers);
  }

  /** Opens (or creates) the outbox and resumes retrying what is stored at once. */
  static async open(options: PurgeOutboxOptions): Promise<PurgeOutbox> {
    const db = new Level<string, QueuedItem>(options.location, { valueEncoding: 'json' });
    await db.open();
    const outbox = new PurgeOutbox(db, options);
    try {
      await outbox.load();
    } catch (error) {
      await db.close().catch(() => undefined);
      throw error;
    }
    return outbox;
  }

  /** Sends to every peer (or those in `only`; `repeat`: the confirming pass) in parallel; each that does not answer gets the purge stored and retried. Resolves when every peer answered or its purge is stored (durably: the put has resolved). */
  async forward(request: PurgeRequest, only?: ReadonlySet<string>, repeat = false): Promise<PeerResult[]> {
    if (this.closing) throw new Error('the purge outbox is closed');
    const states = [...this.states.values()].filter((state) => only === undefined || only.has(state.peer.url));
    return Promise.all(states.map((state) => this.run(state, () => this.forwardTo(state, request, repeat))));
  }

  /** New peer list (config reload). Queued items for a peer URL no longer listed are dropped (logged); a listed peer's token is updated. */
  setPeers(peers: readonly PurgePeer[]): void {
    const listed = new Set(peers.map((peer) => peer.url));
    for (const [url, state] of this.states) {
      if (listed.has(url)) continue;
      state.removed = true;
      clearTimeout(state.timer);
      this.states.delete(url);
      // After a send in flight for it, so what that send queues is dropped too.
      const cleanup: Promise<void> = state.chain
        .then(() => {
          for (const { item } of state.queue) this.logger.error({ peer: url, purge: describePurge(item.request) }, 'peer no longer listed: queued purge dropped');
          return this.db.batch(state.queue.map(({ key }) => ({ type: 'del' as const, key })));
        })
        .catch((error: unknown) => this.logger.error({ peer: url, err: message(error) }, 'could not remove the queued purges of a removed peer'))
        .finally(() => this.cleanups.delete(cleanup));
      this.cleanups.add(cleanup);
    }
    for (const peer of peers) {
      const state = this.states.get(peer.url);
      if (state) state.peer = { ...peer };
      else this.states.set(peer.url, { peer: { ...peer }, queue: [], chain: Promise.resolve(), timer: undefined, backoffMs: this.options.initialBackoffMs ?? 1000, removed: false });
    }
  }

  /** Queued purges per peer URL (for /stats); peers with nothing queued are left out. */
  pending(): Record<string, number> {
    const out: Record<string, number> = {};
    for (const [url, state] of this.states) if (state.queue.length > 0) out[url] = state.queue.length;
    return out;
  }

  /** Stops the retry timers and closes the database. Queued items stay stored. */
  close(): Promise<void> {
    this.closing ??= (async () => {
      this.stop.abort();
      for (const state of this.states.values()) clearTimeout(state.timer);
      await Promise.all([...[...this.states.values()].map((state) => state.chain), ...this.cleanups]);
      await this.db.close();
    })();
    return this.closing;
  }

  private async load(): Promise<void> {
    const dropped: string[] = [];
    for await (const [key, item] of this.db.iterator({ gte: 'q/', lt: 'q0' })) {
      const seq = Number(key.slice(key.lastIndexOf('/') + 1));
      if (Number.isSafeInteger(seq)) this.seq = Math.max(this.seq, seq + 1);
      const valid = typeof item === 'object' && item !== null && typeof item.peer === 'string' && typeof item.acceptedAt === 'number' && key.startsWith(keyPrefix(item.peer));
      const state = valid ? this.states.get(item.peer) : undefined;
      if (state) state.queue.push({ key, item });
      else {
        dropped.push(key);
        this.logger.error({ key, purge: valid ? describePurge(item.request) : undefined }, valid ? 'peer no longer listed: queued purge dropped' : 'unreadable outbox record dropped');
      }
    }
    await this.db.batch(dropped.map((key) => ({ type: 'del' as const, key })));
    for (const state of this.states.values()) this.schedule(state, 0);
  }

  /** Runs `task` after everything before it for this peer; the chain never holds a rejection. */
  private run<T>(state: PeerState, task: () => Promise<T>): Promise<T> {
    const result = state.chain.then(task);
    state.chain = result.catch(() => undefined);
    return result;
  }

  private async forwardTo(state: PeerState, request: PurgeRequest, repeat: boolean): Promise<PeerResult> {
    const peer = state.peer.url;
    let error = `${state.queue.length} earlier purge(s) still queued for this peer`;
    if (state.queue.length === 0) {
      const outcome = await this.send(state.peer, request, repeat);
      if (outcome.kind === 'ok') {
        this.counts.delivered++;
        return { peer, result: 'ok' };
      }
      if (outcome.kind === 'rejected') {
        this.rejected(peer, request, outcome);
        return { peer, result: 'rejected', status: outcome.status, error: outcome.error };
      }
      error = outcome.error;
    }
    const item: QueuedItem = { peer, request, acceptedAt: this.now(), attempts: state.queue.length === 0 ? 1 : 0 };
    const key = keyPrefix(peer) + String(this.seq++).padStart(16, '0');
    try {
      await this.db.put(key, item, { sync: true });
    } catch (storeError) {
      // Still retried from memory; only a restart would lose it.
      error += `; kept in memory only, storing failed: ${message(storeError)}`;
    }
    state.queue.push({ key, item });
    this.counts.queued++;
    this.logger.warn({ peer, purge: describePurge(request), error }, 'purge queued for peer');
    this.retryLater(state);
    return { peer, result: 'queued', error };
  }

  /** Delivers the queue oldest first; stops at the first failure so order is kept. */
  private async round(state: PeerState): Promise<void> {
    while (state.queue.length > 0 && !state.removed && !this.closing) {
      const { key, item } = state.queue[0]!;
      const peer = state.peer.url;
      if (this.now() >= item.acceptedAt + this.options.retrySec * 1000) {
        state.queue.shift();
        this.counts.expired++;
        this.logger.error({ peer, purge: describePurge(item.request), attempts: item.attempts, acceptedAt: new Date(item.acceptedAt).toISOString() }, 'queued purge expired undelivered: dropped');
        await this.remove(key);
        continue;
      }
      item.attempts++;
      const outcome = await this.send(state.peer, item.request);
      if (outcome.kind === 'failed') {
        await this.db.put(key, item).catch(() => undefined); // the attempt count is for logs only
        this.logger.warn({ peer, error: outcome.error, attempts: item.attempts }, 'queued purge retry failed');
        this.retryLater(state);
        return;
      }
      state.queue.shift();
      if (outcome.kind === 'ok') {
        this.counts.delivered++;
        this.logger.info({ peer, purge: describePurge(item.request), attempts: item.attempts }, 'queued purge delivered');
      } else this.rejected(peer, item.request, outcome);
      await this.remove(key);
    }
    state.backoffMs = this.options.initialBackoffMs ?? 1000;
  }

  /** Schedules the next round after the current backoff (with ±10% jitter), then doubles it. */
  private retryLater(state: PeerState): void {
    if (state.timer || state.queue.length === 0) return;
    const max = this.options.maxBackoffMs ?? 60_000;
    const delay = Math.min(state.backoffMs, max) * (0.9 + 0.2 * Math.random());
    state.backoffMs = Math.min(state.backoffMs * 2, max);
    // Not later than the oldest item's expiry, so that is logged on time.
    const expiresIn = state.queue[0]!.item.acceptedAt + this.options.retrySec * 1000 - this.now();
    this.schedule(state, Math.max(0, Math.min(delay, expiresIn)));
  }

  private schedule(state: PeerState, delayMs: number): void {
    if (state.timer || state.removed || this.closing || state.queue.length === 0) return;
    state.timer = setTimeout(() => {
      state.timer = undefined;
      this.run(state, () => this.round(state)).catch((error: unknown) => this.logger.error({ peer: state.peer.url, err: message(error) }, 'purge retry round failed'));
    }, delayMs);
    state.timer.unref();
  }

  private async send(peer: PurgePeer, request: PurgeRequest, repeat = false): Promise<Outcome> {
    const timeoutMs = this.options.timeoutMs ?? 5000;
    const headers: Record<string, string> = { 'content-type': 'application/json', [FORWARDED_PURGE_HEADER]: repeat ? 'repeat' : '1' };
    if (peer.token !== undefined) headers.authorization = `Bearer ${peer.token}`;
    try {
      const res = await fetch(`${peer.url.replace(/\/+$/, '')}/purge`, {
        method: 'POST',
        headers,
        body: JSON.stringify(request),
        redirect: 'manual', // a redirect is a misconfigured peer URL: reported, not followed
        signal: AbortSignal.any([AbortSignal.timeout(timeoutMs), this.stop.signal]),
      });
      const text = await res.text().catch(() => '');
      if (res.ok) return { kind: 'ok' };
      const error = peerError(res.status, text);
      // 408 and 429 say "later", like 5xx; every other answer is final.
      if (res.status >= 500 || res.status === 408 || res.status === 429) return { kind: 'failed', error: `HTTP ${res.status}: ${error}` };
      return { kind: 'rejected', status: res.status, error };
    } catch (error) {
      const name = (error as { name?: string }).name;
      if (name === 'TimeoutError') return { kind: 'failed', error: `no answer within ${timeoutMs} ms` };
      if (name === 'AbortError') return { kind: 'failed', error: 'outbox closing' };
      const cause = (error as { cause?: { code?: string; message?: string } }).cause;
      return { kind: 'failed', error: cause?.code ?? cause?.message ?? message(error) };
    }
  }

  private rejected(peer: string, request: PurgeRequest, outcome: { status: number; error: string }): void {
    this.counts.rejected++;
    this.logger.error({ peer, purge: describePurge(request), status: outcome.status, error: outcome.error }, 'peer rejected purge: not retried');
  }

  private async remove(key: string): Promise<void> {
    await this.db.del(key).catch((error: unknown) => this.logger.error({ key, err: message(error) }, 'could not remove a finished purge from the outbox: it may be sent again after a restart'));
  }
}

/** The peer's error text: the admin API's `{ "error": ... }`, else the body, shortened. */
function peerError(status: number, text: string): string {
  try {
    const error = (JSON.parse(text) as { error?: unknown } | null)?.error;
    if (typeof error === 'string') return error.slice(0, 300);
  } catch {
    // not JSON
  }
  return text.trim().slice(0, 300) || `HTTP ${status}`;
}

function message(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
