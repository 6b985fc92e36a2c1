/**
 * The primary cache key: scheme, host and path with the query (DESIGN.md phase "cacheKey").
 * Options sort query parameters and drop named ones (tracking parameters). Vary decides the
 * variant; nothing else may add to the key.
 */

export interface CacheKeyOptions {
  /** Sort query parameters so ?a=1&b=2 and ?b=2&a=1 share an entry. */
  sortQuery: boolean;
  /** Query parameter names removed from the key (e.g. utm_source). */
  dropQueryParams: readonly string[];
}

export function cacheKey(scheme: string, host: string, pathAndQuery: string, options: CacheKeyOptions): string {
  const base = `${scheme}://${host.toLowerCase()}`;
  const q = pathAndQuery.indexOf('?');
  if (q === -1 || (!options.sortQuery && options.dropQueryParams.length === 0)) return base + pathAndQuery;
  const path = pathAndQuery.slice(0, q);
  let params = pathAndQuery
    .slice(q + 1)
    .split('&')
    .filter((p) => p.length > 0);
  if (options.dropQueryParams.length > 0) {
    const drop = new Set(options.dropQueryParams);
    params = params.filter((p) => !drop.has(decodeName(p)));
  }
  if (options.sortQuery) params.sort();
  return params.length > 0 ? `${base}${path}?${params.join('&')}` : base + path;
}

function decodeName(param: string): string {
  const eq = param.indexOf('=');
  const name = eq === -1 ? param : param.slice(0, eq);
  try {
    return decodeURIComponent(name.replace(/\+/g, ' '));
  } catch {
    return name;
  }
}
