/**
 * Single-flight per cache key (DESIGN.md phase "fetch"): the first request for a key leads a
 * fetch, the others wait for its outcome. Explicit outcomes, as Pingora's cache lock: the
 * leader settles with a result, a waiter may time out (lockWaitMs) and fetch on its own.
 * Keys whose responses turned out unshareable are marked hit-for-miss for a while so later
 * requests do not queue behind a fetch that will never be shared (Varnish).
 */

export type Joined<R> =
  | {
      leader: true;
      /**
       * Hands the result to every waiter. With `openUntil`, requests that join before it settles
       * get the same result at once (a body still streaming in is shared, not fetched again).
       */
      settle: (result: R, openUntil?: Promise<unknown>) => void;
    }
  | { leader: false; result: Promise<R | undefined> };

interface Flight<R> {
  waiters: Array<(result: R | undefined) => void>;
  settled?: { result: R };
  /** Started because nothing was stored: a request for this key may skip its store lookup. */
  missFill: boolean;
}

export class SingleFlight<R> {
  private readonly flights = new Map<string, Flight<R>>();
  private readonly hitForMiss = new Map<string, number>();

  constructor(private readonly now: () => number = Date.now) {}

  /** Becomes the leader for `key`, or a waiter that gets the leader's result (undefined after `waitMs`). */
  join(key: string, waitMs: number, missFill = false): Joined<R> {
    const flight = this.flights.get(key);
    if (flight?.settled) return { leader: false, result: Promise.resolve(flight.settled.result) };
    if (flight === undefined) {
      const created: Flight<R> = { waiters: [], missFill };
      this.flights.set(key, created);
      const close = () => {
        if (this.flights.get(key) === created) this.flights.delete(key);
      };
      return {
        leader: true,
        settle: (result: R, openUntil?: Promise<unknown>) => {
          if (created.settled) return;
          created.settled = { result };
          for (const waiter of created.waiters) waiter(result);
          created.waiters.length = 0;
          if (openUntil) openUntil.then(close, close);
          else close();
        },
      };
    }
    const result = new Promise<R | undefined>((resolve) => {
      let timer: NodeJS.Timeout | undefined;
      const waiter = (value: R | undefined) => {
        if (timer) clearTimeout(timer);
        resolve(value);
      };
      flight.waiters.push(waiter);
      timer = setTimeout(() => {
        const at = flight.waiters.indexOf(waiter);
        if (at !== -1) flight.waiters.splice(at, 1);
        resolve(undefined);
      }, waitMs);
      timer.unref();
    });
    return { leader: false, result };
  }

  /** True while a fill started by a miss runs for `key` (nothing was stored when it began). */
  isMissFill(key: string): boolean {
    return this.flights.get(key)?.missFill === true;
  }

  /** Number of keys with a fetch in flight. */
  get inFlight(): number {
    return this.flights.size;
  }

  markHitForMiss(key: string, forMs: number): void {
    this.hitForMiss.set(key, this.now() + forMs);
    if (this.hitForMiss.size > 100_000) this.pruneHitForMiss();
  }

  clearHitForMiss(key: string): void {
    this.hitForMiss.delete(key);
  }

  isHitForMiss(key: string): boolean {
    const until = this.hitForMiss.get(key);
    if (until === undefined) return false;
    if (until > this.now()) return true;
    this.hitForMiss.delete(key);
    return false;
  }

  private pruneHitForMiss(): void {
    const now = this.now();
    for (const [key, until] of this.hitForMiss) if (until <= now) this.hitForMiss.delete(key);
  }
}
