/**
 * Passive outlier detection (Envoy's outlier_detection with split local/external errors):
 * real traffic's results eject a member after `consecutive5xx` 5xx responses in a row, or
 * `consecutiveConnectFailures` local failures in a row (refused, reset, timeout). An ejection
 * lasts baseEjectionMs × (times ejected), capped at maxEjectionMs; the multiplier decays by one
 * for every `multiplierDecayMs` a member stays in service, so a member that failed once last week
 * does not start at a long ejection.
 *
 * max ejection percent follows Envoy: a member is ejected only while
 * (ejected + 1) / members ≤ maxEjectionPercent, EXCEPT that one member may always be ejected when
 * none is (Envoy: "will eject at least one host regardless of the value"). So a pool of 2 with
 * the default 10 % can lose one member, never both.
 *
 * Time is read lazily from `now()` (no timers): members return on the first query after their
 * ejection ends. Counters reset on any success, on the other failure kind where it proves the
 * member reachable (a 5xx resets the connect streak), and on return from ejection.
 */
import { EventEmitter } from 'node:events';

export type OutlierFailure = '5xx' | 'connect';

export interface OutlierDetectorOptions {
  /** Consecutive 5xx responses that eject a member (Envoy consecutive_5xx). Default 5. */
  consecutive5xx?: number;
  /** Consecutive connect failures/resets/timeouts that eject (Envoy consecutive_local_origin_failure). Default 5. */
  consecutiveConnectFailures?: number;
  /** First ejection length; the nth ejection lasts n × this. Default 30000. */
  baseEjectionMs?: number;
  /** Cap on one ejection's length. Default 300000. */
  maxEjectionMs?: number;
  /** Most of the pool that may be ejected at once, in percent (one member always may). Default 10. */
  maxEjectionPercent?: number;
  /** Time in service that takes one step off the ejection multiplier (Envoy's interval). Default 10000. */
  multiplierDecayMs?: number;
  /** Clock in ms; inject for tests. Default Date.now. */
  now?: () => number;
}

export const OUTLIER_DETECTOR_DEFAULTS = {
  consecutive5xx: 5,
  consecutiveConnectFailures: 5,
  baseEjectionMs: 30_000,
  maxEjectionMs: 300_000,
  maxEjectionPercent: 10,
  multiplierDecayMs: 10_000,
} as const;

export interface EjectionEvent {
  id: string;
  reason: OutlierFailure;
  /** When the member returns (ms since epoch, from `now`). */
  until: number;
  durationMs: number;
  /** Times this member has been ejected, including this one. */
  ejections: number;
  at: number;
}

export interface ReturnEvent {
  id: string;
  at: number;
}

export interface OutlierState {
  id: string;
  ejected: boolean;
  /** End of the current ejection, or null. */
  ejectedUntil: number | null;
  /** Total ejections over the member's life. */
  ejections: number;
  consecutive5xx: number;
  consecutiveConnectFailures: number;
}

interface MemberState {
  consecutive5xx: number;
  consecutiveConnectFailures: number;
  ejectedUntil: number | null;
  ejections: number;
  /** Current ejection multiplier (ejections not yet decayed). */
  multiplier: number;
  /** When the multiplier was last stepped, or the member last returned. */
  decayFrom: number;
}

export interface OutlierDetector {
  on(event: 'eject', listener: (event: EjectionEvent) => void): this;
  on(event: 'return', listener: (event: ReturnEvent) => void): this;
  once(event: 'eject', listener: (event: EjectionEvent) => void): this;
  once(event: 'return', listener: (event: ReturnEvent) => void): this;
}

export class OutlierDetector extends EventEmitter {
  private readonly options: Required<Omit<OutlierDetectorOptions, 'now'>>;
  private readonly now: () => number;
  private readonly members = new Map<string, MemberState>();
  private ejectedCount = 0;
  /** Ejections over the detector's life, for metrics. */
  ejectionsTotal = 0;
  /** Ejections refused by the max-ejection-percent cap. */
  ejectionsSkipped = 0;

  constructor(ids: readonly string[] = [], options: OutlierDetectorOptions = {}) {
    super();
    this.options = {
      consecutive5xx: options.consecutive5xx ?? OUTLIER_DETECTOR_DEFAULTS.consecutive5xx,
      consecutiveConnectFailures: options.consecutiveConnectFailures ?? OUTLIER_DETECTOR_DEFAULTS.consecutiveConnectFailures,
      baseEjectionMs: options.baseEjectionMs ?? OUTLIER_DETECTOR_DEFAULTS.baseEjectionMs,
      maxEjectionMs: options.maxEjectionMs ?? OUTLIER_DETECTOR_DEFAULTS.maxEjectionMs,
      maxEjectionPercent: options.maxEjectionPercent ?? OUTLIER_DETECTOR_DEFAULTS.maxEjectionPercent,
      multiplierDecayMs: options.multiplierDecayMs ?? OUTLIER_DETECTOR_DEFAULTS.multiplierDecayMs,
    };
    this.now = options.now ?? Date.now;
    for (const id of ids) this.add(id);
  }

  add(id: string): void {
    if (this.members.has(id)) return;
    this.members.set(id, {
      consecutive5xx: 0, consecutiveConnectFailures: 0, ejectedUntil: null, ejections: 0, multiplier: 0, decayFrom: this.now(),
    });
  }

  remove(id: string): void {
    const state = this.members.get(id);
    if (state === undefined) return;
    if (state.ejectedUntil !== null) this.ejectedCount--;
    this.members.delete(id);
  }

  /** A response below 500 (or any response, for the connect streak). */
  recordSuccess(id: string): void {
    const state = this.members.get(id);
    if (state === undefined) return;
    state.consecutive5xx = 0;
    state.consecutiveConnectFailures = 0;
  }

  recordFailure(id: string, kind: OutlierFailure): void {
    const state = this.members.get(id);
    if (state === undefined) return;
    const now = this.now();
    this.refresh(id, state, now);
    // Results of requests that were in flight when the member was ejected do not extend its ejection.
    if (state.ejectedUntil !== null) return;
    let tripped: boolean;
    if (kind === '5xx') {
      // The member answered, so it is reachable: the connect streak ends.
      state.consecutiveConnectFailures = 0;
      state.consecutive5xx++;
      tripped = state.consecutive5xx >= this.options.consecutive5xx;
    } else {
      state.consecutiveConnectFailures++;
      tripped = state.consecutiveConnectFailures >= this.options.consecutiveConnectFailures;
    }
    if (tripped) this.eject(id, state, kind, now);
  }

  isEjected(id: string): boolean {
    const state = this.members.get(id);
    if (state === undefined) return false;
    this.refresh(id, state, this.now());
    return state.ejectedUntil !== null;
  }

  /** End of the member's current ejection, or null. */
  ejectedUntil(id: string): number | null {
    const state = this.members.get(id);
    if (state === undefined) return null;
    this.refresh(id, state, this.now());
    return state.ejectedUntil;
  }

  /** Members ejected right now. */
  get ejected(): number {
    this.refreshAll();
    return this.ejectedCount;
  }

  state(): OutlierState[] {
    this.refreshAll();
    return [...this.members].map(([id, s]) => ({
      id,
      ejected: s.ejectedUntil !== null,
      ejectedUntil: s.ejectedUntil,
      ejections: s.ejections,
      consecutive5xx: s.consecutive5xx,
      consecutiveConnectFailures: s.consecutiveConnectFailures,
    }));
  }

  private eject(id: string, state: MemberState, reason: OutlierFailure, now: number): void {
    this.refreshAll();
    const size = this.members.size;
    const allowed = this.ejectedCount === 0 || (100 * (this.ejectedCount + 1)) / size <= this.options.maxEjectionPercent;
    if (!allowed) {
      // Envoy keeps the streak, so the member is ejected as soon as room frees up and it fails again.
      this.ejectionsSkipped++;
      return;
    }
    this.decay(state, now);
    state.multiplier++;
    state.ejections++;
    const durationMs = Math.min(this.options.baseEjectionMs * state.multiplier, this.options.maxEjectionMs);
    state.ejectedUntil = now + durationMs;
    this.ejectedCount++;
    this.ejectionsTotal++;
    this.emit('eject', { id, reason, until: state.ejectedUntil, durationMs, ejections: state.ejections, at: now } satisfies EjectionEvent);
  }

  private refreshAll(): void {
    const now = this.now();
    for (const [id, state] of this.members) this.refresh(id, state, now);
  }

  /** Returns the member to service once its ejection has run out. */
  private refresh(id: string, state: MemberState, now: number): void {
    if (state.ejectedUntil === null || now < state.ejectedUntil) return;
    state.ejectedUntil = null;
    state.consecutive5xx = 0;
    state.consecutiveConnectFailures = 0;
    state.decayFrom = now;
    this.ejectedCount--;
    this.emit('return', { id, at: now } satisfies ReturnEvent);
  }

  /** One multiplier step off per multiplierDecayMs spent in service since the last step. */
  private decay(state: MemberState, now: number): void {
    if (state.multiplier === 0) return;
    const steps = Math.floor((now - state.decayFrom) / this.options.multiplierDecayMs);
    if (steps <= 0) return;
    state.multiplier = Math.max(0, state.multiplier - steps);
    state.decayFrom += steps * this.options.multiplierDecayMs;
  }
}
