/**
 * Least outstanding requests with the power of two choices (Mitzenmacher; Envoy's LEAST_REQUEST):
 * draw two distinct candidates at random and take the one with fewer requests in flight. Nearly as
 * good as scanning for the global minimum, without every balancer herding onto the same member.
 */
import type { Balancer, Member } from './balancer.js';

export interface LeastRequestOptions {
  /** Uniform random number in [0, 1); inject a seeded one for deterministic tests. Default Math.random. */
  random?: () => number;
}

export class LeastRequestBalancer implements Balancer {
  private readonly random: () => number;

  constructor(options: LeastRequestOptions = {}) {
    this.random = options.random ?? Math.random;
  }

  pick(members: readonly Member[], _key: string, exclude?: ReadonlySet<Member>): Member | undefined {
    const candidates = exclude === undefined || exclude.size === 0
      ? members.filter((m) => m.weight > 0)
      : members.filter((m) => m.weight > 0 && !exclude.has(m));
    const n = candidates.length;
    if (n === 0) return undefined;
    if (n === 1) return candidates[0];
    const i = Math.min(n - 1, Math.floor(this.random() * n));
    let j = Math.min(n - 2, Math.floor(this.random() * (n - 1)));
    if (j >= i) j += 1; // distinct second choice
    const a = candidates[i]!;
    const b = candidates[j]!;
    // Load relative to weight: a member with twice the weight may carry twice the requests.
    // (pending + 1) so that idle members still compare by weight.
    return (b.pending + 1) / b.weight < (a.pending + 1) / a.weight ? b : a;
  }
}
