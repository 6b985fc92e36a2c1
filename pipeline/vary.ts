/**
 * Vary (RFC 9111 §4.1): which request fields select a stored variant, and the variant key that
 * encodes their normalised values. Field values are normalised before matching: whitespace
 * around list commas collapsed, lower-cased where the field is case-insensitive, and weighted
 * lists (Accept-Language, Accept-Encoding) put in a canonical order.
 */

/** Fields whose values compare case-insensitively. */
const CASE_INSENSITIVE = new Set(['accept', 'accept-encoding', 'accept-language', 'accept-charset', 'origin']);

/** Lower-cased, sorted, de-duplicated field names of a Vary value; ['*'] when it contains *. */
export function parseVary(field: string | string[] | undefined): string[] {
  if (field === undefined) return [];
  const text = Array.isArray(field) ? field.join(',') : field;
  const names = new Set<string>();
  for (const part of text.split(',')) {
    const name = part.trim().toLowerCase();
    if (name === '*') return ['*'];
    if (name.length > 0) names.add(name);
  }
  return [...names].sort();
}

export function normaliseFieldValue(name: string, value: string | string[] | undefined): string | undefined {
  if (value === undefined) return undefined;
  const joined = Array.isArray(value) ? value.join(',') : value;
  if (WEIGHTED_LISTS.has(name)) return normaliseWeightedList(joined);
  const text = joined
    .split(',')
    .map((part) => part.trim().replace(/\s+/g, ' '))
    .join(',');
  return CASE_INSENSITIVE.has(name) ? text.toLowerCase() : text;
}

/**
 * Lists of weighted tokens whose order among equal weights means nothing (RFC 9110 §12.4.2,
 * §12.5.3, §12.5.4): `de-DE, fr;q=0.5` and `fr;q=0.50,de-de` select the same variant.
 */
const WEIGHTED_LISTS = new Set(['accept-language', 'accept-encoding']);

/**
 * Each member lower-cased with whitespace removed, its weight normalised (q=1 implied, trailing
 * zeros dropped), duplicates removed; members sorted by weight, highest first, then by name.
 */
function normaliseWeightedList(text: string): string {
  const members = new Map<string, number>();
  for (const part of text.toLowerCase().split(',')) {
    const [token, ...params] = part.split(';').map((p) => p.trim());
    if (!token) continue;
    let weight = 1;
    const rest: string[] = [];
    for (const param of params) {
      const eq = param.indexOf('=');
      const key = (eq === -1 ? param : param.slice(0, eq)).trim();
      const val = eq === -1 ? '' : param.slice(eq + 1).trim();
      if (key === 'q' && /^(?:0(?:\.\d{0,3})?|1(?:\.0{0,3})?)$/.test(val)) weight = Number(val);
      else if (key) rest.push(val ? `${key}=${val}` : key);
    }
    const member = [token, ...rest.sort()].join(';');
    if (!members.has(member)) members.set(member, weight);
  }
  return [...members]
    .sort(([a, wa], [b, wb]) => wb - wa || (a < b ? -1 : a > b ? 1 : 0))
    .map(([member, weight]) => (weight === 1 ? member : `${member};q=${weight}`))
    .join(',');
}

/**
 * The variant key of a request for the given Vary fields. An absent field is encoded apart from
 * an empty one: absent only matches absent (§4.1).
 */
export function variantKey(fields: readonly string[], headers: Record<string, string | string[] | undefined>): string {
  let key = '';
  for (const name of fields) {
    const value = normaliseFieldValue(name, headers[name]);
    key += value === undefined ? `${name}\n` : `${name}=${value}\n`;
  }
  return key;
}
