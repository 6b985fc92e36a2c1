/**
 * Entry keys: primary key (URL) and Vary variant joined so that
 * - every variant of a URL shares the prefix `url + SEPARATOR` (purge by URL is a prefix match),
 * - a prefix of a URL is a prefix of its entry keys (purge by prefix is a range scan),
 * - any bytes are allowed in the URL: NUL and \u0001 in it are escaped so they cannot fake the separator.
 */
const SEPARATOR = '\u0000';
const ESCAPE = '\u0001';

function escapeUrl(url: string): string {
  if (url.indexOf(SEPARATOR) === -1 && url.indexOf(ESCAPE) === -1) return url;
  return url.replace(/[\u0000\u0001]/g, (c) => (c === ESCAPE ? '\u0001\u0002' : '\u0001\u0001'));
}

/** The store key for one variant of one URL. `variant` is '' when the response has no Vary. */
export function entryKey(url: string, variant: string): string {
  return escapeUrl(url) + SEPARATOR + variant;
}

/**
 * The variant part of the key of one slice of a large object (pipeline/slices.ts): the object's
 * variant, the separator, the slice size and the slice's index. Request field values hold no NUL,
 * so no Vary variant can look like a slice, and a URL purge (its key prefix) covers every slice.
 * The size is part of the key: slices cut to another size (the option changed) are never joined.
 */
export function sliceVariant(variant: string, size: number, index: number): string {
  return `${variant}${SEPARATOR}${size}:${index}`;
}

/** The object variant, slice size and slice index of a slice's entry key; undefined for any other key. */
export function sliceOfKey(key: string): { variant: string; size: number; index: number } | undefined {
  const variant = variantOfKey(key);
  const at = variant.lastIndexOf(SEPARATOR);
  if (at === -1) return undefined;
  const match = /^(\d+):(\d+)$/.exec(variant.slice(at + 1));
  if (match === null) return undefined;
  return { variant: variant.slice(0, at), size: Number(match[1]), index: Number(match[2]) };
}

/** The Vary variant part of an entry key ('' when the response has no Vary). */
export function variantOfKey(key: string): string {
  // An escaped URL holds no raw separator, so the first one ends it.
  return key.slice(key.indexOf(SEPARATOR) + 1);
}

/** Every entry key of `url` (all variants) starts with this. */
export function urlKeyPrefix(url: string): string {
  return escapeUrl(url) + SEPARATOR;
}

/** Every entry key whose URL starts with `prefix` starts with this. */
export function primaryKeyPrefix(prefix: string): string {
  return escapeUrl(prefix);
}
