/**
 * Selection, kept apart from discovery and health (Pingora's split): a balancer only picks one
 * member out of the candidates it is handed. Health, ejection, circuit breaking and retries
 * decide what goes into `exclude`; the balancer never tracks them itself.
 */
import { RoundRobinBalancer } from './round-robin.js';
import { LeastRequestBalancer, type LeastRequestOptions } from './least-request.js';
import { ConsistentHashBalancer, type ConsistentHashOptions } from './consistent-hash.js';

export interface Member {
  /** Stable identity (the member's base URL); hashing and per-member state key on it. */
  readonly id: string;
  /** Relative share of traffic; 0 takes none (except through consistent-hash fallbacks, which skip it too). */
  readonly weight: number;
  /** Requests in flight to this member right now. */
  readonly pending: number;
}

export interface Balancer {
  /**
   * Picks one of `members` that is not in `exclude`, or undefined when none is left.
   * `key` is the request's cache key; only the consistent-hash balancer uses it.
   * Callers should pass the same `members` array each time (it is cached by identity).
   */
  pick(members: readonly Member[], key: string, exclude?: ReadonlySet<Member>): Member | undefined;
}

export type BalancerName = 'round-robin' | 'least-request' | 'consistent-hash';

export const BALANCER_NAMES: readonly BalancerName[] = ['round-robin', 'least-request', 'consistent-hash'];

export interface BalancerOptions extends LeastRequestOptions, ConsistentHashOptions {}

export function createBalancer(name: BalancerName, options: BalancerOptions = {}): Balancer {
  switch (name) {
    case 'round-robin':
      return new RoundRobinBalancer();
    case 'least-request':
      return new LeastRequestBalancer(options);
    case 'consistent-hash':
      return new ConsistentHashBalancer(options);
    default:
      throw new TypeError(`unknown balancer "${String(name)}" (expected one of ${BALANCER_NAMES.join(', ')})`);
  }
}
