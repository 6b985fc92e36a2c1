/**
 * A purge request as it travels through a node: from an invalidation (§4.4) or the admin API,
 * through the primary, to every worker (issue 9). Exactly one kind: a URL (every variant), a URL
 * prefix, surrogate keys, or everything. `soft` marks matches stale instead of removing them.
 */
import type { CacheStore } from '../storage/cache-store.js';

export interface PurgeRequest {
  url?: string;
  prefix?: string;
  tags?: string[];
  all?: boolean;
  soft?: boolean;
}

export function purgeKind(p: PurgeRequest): 'url' | 'prefix' | 'tags' | 'all' {
  return p.url !== undefined ? 'url' : p.prefix !== undefined ? 'prefix' : p.tags !== undefined ? 'tags' : 'all';
}

export function describePurge(p: PurgeRequest): string {
  const kind = purgeKind(p);
  const what = kind === 'url' ? `url ${p.url}` : kind === 'prefix' ? `prefix ${p.prefix}` : kind === 'tags' ? `tags ${p.tags!.join(',')}` : 'all';
  return p.soft ? `soft ${what}` : what;
}

/** Runs a purge on one store; returns the entries affected. */
export async function purgeStore(store: CacheStore, p: PurgeRequest): Promise<number> {
  const options = p.soft ? { soft: true } : undefined;
  if (p.url !== undefined) return store.purgeUrl(p.url, options);
  if (p.tags !== undefined) {
    let affected = 0;
    for (const tag of p.tags) affected += await store.purgeTag(tag, options);
    return affected;
  }
  if (p.prefix === undefined && p.all !== true) throw new Error('a purge needs a url, prefix, tags or all');
  return store.purgePrefix(p.prefix ?? '', options);
}
