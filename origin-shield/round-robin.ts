/**
 * Smooth weighted round-robin, as in nginx (ngx_http_upstream_get_peer): every pick adds each
 * candidate's weight to its running score, takes the highest, and subtracts the total from the
 * winner. Over a cycle of sum(weights) picks each member is chosen exactly `weight` times, and a
 * heavy member's picks are interleaved with the others instead of arriving in a burst.
 */
import type { Balancer, Member } from './balancer.js';

export class RoundRobinBalancer implements Balancer {
  /** Running score per member id; ids survive list rebuilds so a new array does not reset the cycle. */
  private readonly current = new Map<string, number>();

  pick(members: readonly Member[], _key: string, exclude?: ReadonlySet<Member>): Member | undefined {
    let best: Member | undefined;
    let bestScore = 0;
    let total = 0;
    for (const member of members) {
      if (member.weight <= 0 || exclude?.has(member)) continue;
      const score = (this.current.get(member.id) ?? 0) + member.weight;
      this.current.set(member.id, score);
      total += member.weight;
      // Strictly greater: ties go to the earlier member, which makes the order predictable.
      if (best === undefined || score > bestScore) {
        best = member;
        bestScore = score;
      }
    }
    if (best === undefined) return undefined;
    this.current.set(best.id, bestScore - total);
    // Forget members that have left the list, so churn cannot grow the map without bound.
    if (this.current.size > members.length * 2 + 8) this.prune(members);
    return best;
  }

  private prune(members: readonly Member[]): void {
    const live = new Set(members.map((m) => m.id));
    for (const id of this.current.keys()) if (!live.has(id)) this.current.delete(id);
  }
}
