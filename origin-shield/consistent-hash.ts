/**
 * Consistent-hash balancer: the key's owner on a hash ring, or the next member clockwise that is
 * not excluded. The same key keeps reaching the same origin (good for origin-side caches), and
 * when a member is excluded only its keys move.
 */
import type { Balancer, Member } from './balancer.js';
import { HashRing, type HashRingOptions } from './hash-ring.js';

export interface ConsistentHashOptions extends HashRingOptions {}

export class ConsistentHashBalancer implements Balancer {
  private readonly options: HashRingOptions;
  private ring: HashRing<Member> | undefined;
  private built: Member[] = [];
  private builtWeights: number[] = [];

  constructor(options: ConsistentHashOptions = {}) {
    this.options = { ...options };
  }

  pick(members: readonly Member[], key: string, exclude?: ReadonlySet<Member>): Member | undefined {
    const ring = this.ringOf(members);
    for (const member of ring.walk(key)) {
      if (!exclude?.has(member)) return member;
    }
    return undefined;
  }

  /**
   * The ring is rebuilt only when the member list changes (another member, or another weight),
   * not on every pick; the check is a reference comparison per member, no allocation.
   */
  private ringOf(members: readonly Member[]): HashRing<Member> {
    if (this.ring !== undefined && this.sameMembers(members)) return this.ring;
    this.ring = new HashRing(members, this.options);
    this.built = members.slice();
    this.builtWeights = members.map((m) => m.weight);
    return this.ring;
  }

  private sameMembers(members: readonly Member[]): boolean {
    if (members.length !== this.built.length) return false;
    for (let i = 0; i < members.length; i++) {
      if (members[i] !== this.built[i] || members[i]!.weight !== this.builtWeights[i]) return false;
    }
    return true;
  }
}
