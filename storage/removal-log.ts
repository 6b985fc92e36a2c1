/**
 * Hard purges and deletes recently run by a store, so that a write begun before one of them
 * is not committed after it: otherwise a fill already in flight would bring back content that
 * was just purged (RFC 9111 §4.4 invalidation, surrogate-key purges).
 */
import { primaryKeyPrefix, urlKeyPrefix } from './keys.js';

type Removal = { seq: number; matches: (key: string, tags: readonly string[]) => boolean };

/** Removals remembered; a writer older than all of them is refused (conservatively) if any ran. */
const KEEP = 10_000;

export class RemovalLog {
  private seq = 0;
  private readonly log: Removal[] = [];

  /** A position to hand to `removedSince` when a write begins. */
  mark(): number {
    return this.seq;
  }

  deleted(key: string): void {
    this.add((k) => k === key);
  }

  purgedUrl(url: string): void {
    const prefix = urlKeyPrefix(url);
    this.add((k) => k.startsWith(prefix));
  }

  purgedPrefix(prefix: string): void {
    const start = primaryKeyPrefix(prefix);
    this.add((k) => k.startsWith(start));
  }

  purgedTag(tag: string): void {
    this.add((_k, tags) => tags.includes(tag));
  }

  /** True when a removal matching this entry ran after `mark`. */
  removedSince(mark: number, key: string, tags: readonly string[]): boolean {
    if (mark === this.seq) return false;
    const oldest = this.log[0];
    if (oldest === undefined || oldest.seq > mark + 1) return true;
    for (let i = this.log.length - 1; i >= 0 && this.log[i]!.seq > mark; i--) if (this.log[i]!.matches(key, tags)) return true;
    return false;
  }

  private add(matches: Removal['matches']): void {
    this.log.push({ seq: ++this.seq, matches });
    if (this.log.length > KEEP) this.log.splice(0, this.log.length - KEEP);
  }
}
