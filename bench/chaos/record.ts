/**
 * What the chaos run counts: the chaos events on a timeline, and a tally of requests, failures
 * (split by whether a stale copy existed, by cause and by the event under way), version checks,
 * Cache-Status outcomes, purges, and the evidence for every wrong body.
 */

export interface ChaosEvent {
  kind: string;
  target: string;
  /** ms since the run began */
  start: number;
  end: number | undefined;
  notes: string[];
  failed: boolean;
}

export class Timeline {
  readonly events: ChaosEvent[] = [];
  constructor(readonly t0: number) {}

  now(): number {
    return Date.now() - this.t0;
  }

  begin(kind: string, target: string): ChaosEvent {
    const event: ChaosEvent = { kind, target, start: this.now(), end: undefined, notes: [], failed: false };
    this.events.push(event);
    return event;
  }

  finish(event: ChaosEvent): void {
    event.end = this.now();
  }

  /** The events under way at some time in [from, to], counting an event until `graceMs` after it ended. */
  activeDuring(from: number, to: number, graceMs = 2000): string {
    const names = this.events.filter((e) => e.start <= to && (e.end === undefined || from <= e.end + graceMs)).map(label);
    return names.length > 0 ? names.join(' + ') : 'none';
  }
}

export const label = (e: ChaosEvent) => `${e.kind} ${e.target}`;

/** One response that broke the oracle, with what is needed to chase it. */
export interface WrongBody {
  at: number;
  key: number;
  edge: string;
  status: number;
  reason: string;
  versionClaimed: number;
  versionCurrent: number;
  expectedBytes: number;
  gotBytes: number;
  firstDiff: number;
  diffHex: string;
  /** Another version of the key whose body this one is, if any. */
  bodyOfVersion: string;
  headers: Record<string, string>;
  events: string;
}

const bump = (map: Map<string, number>, key: string, n = 1) => map.set(key, (map.get(key) ?? 0) + n);

export class Tally {
  sent = 0;
  rangeSent = 0;
  ok = 0;
  okPartial = 0;
  bytes = 0;
  failedStaleAvailable = 0;
  failedNoStale = 0;
  readonly failureCauses = new Map<string, number>();
  readonly failureEvents = new Map<string, number>();
  wrongBodies = 0;
  readonly wrong: WrongBody[] = [];
  /** ETag or checksum header of another version than x-version, body right. */
  inconsistentHeaders = 0;
  readonly inconsistentSamples: string[] = [];
  /** x-version above any version the driver ever set: impossible. */
  versionsAhead = 0;
  /** x-version below the key's version when the request started (allowed: caching). */
  olderVersion = 0;
  /** x-version below the version of a purge that had replied before the request started. */
  staleAfterPurge = 0;
  readonly staleAfterPurgeEvents = new Map<string, number>();
  readonly staleAfterPurgeSamples: string[] = [];
  readonly cacheStatus = new Map<string, number>();
  purges = { sent: 0, ok: 0, failed: 0, peersQueued: 0, peersRejected: 0 };
  readonly purgeFailures = new Map<string, number>();

  /** Failures no dead edge explains (the client's own PoP was up), for a closer look. */
  readonly failureSamples: string[] = [];

  failure(staleAvailable: boolean, cause: string, events: string, sample: string): void {
    if (!/kill -9 edge/.test(events) && this.failureSamples.length < 12) this.failureSamples.push(`${sample}: ${cause}; chaos: ${events}`);
    if (staleAvailable) this.failedStaleAvailable++;
    else this.failedNoStale++;
    bump(this.failureCauses, `${cause}${staleAvailable ? ' (stale copy existed)' : ''}`);
    bump(this.failureEvents, events);
  }

  wrongBody(evidence: WrongBody): void {
    this.wrongBodies++;
    if (this.wrong.length < 20) this.wrong.push(evidence);
  }

  inconsistent(sample: string): void {
    this.inconsistentHeaders++;
    if (this.inconsistentSamples.length < 10) this.inconsistentSamples.push(sample);
  }

  stalePurged(events: string, sample: string): void {
    this.staleAfterPurge++;
    bump(this.staleAfterPurgeEvents, events);
    if (this.staleAfterPurgeSamples.length < 5) this.staleAfterPurgeSamples.push(sample);
  }

  outcome(cacheStatus: string): void {
    bump(this.cacheStatus, cacheStatus);
  }

  purgeFailed(cause: string): void {
    this.purges.failed++;
    bump(this.purgeFailures, cause);
  }

  get failed(): number {
    return this.failedStaleAvailable + this.failedNoStale;
  }
}

/** Cache-Status, shortened to an outcome per tier: "shield:fwd=uri-miss edge:hit". */
export function cacheOutcome(header: string | undefined): string {
  if (!header) return '(no Cache-Status)';
  return header
    .split(',')
    .map((member) => {
      const parts = member.trim().split(';').map((p) => p.trim());
      const name = (parts[0] ?? '').replace(/^outpost-/, '').replace(/^"|"$/g, '');
      const outcome = parts.find((p) => p === 'hit' || p.startsWith('fwd=')) ?? '?';
      const detail = parts.find((p) => p.startsWith('detail='));
      return `${name.replace(/-\d+$/, '')}:${outcome}${detail ? `(${detail.slice(7)})` : ''}`;
    })
    .join(' ');
}
