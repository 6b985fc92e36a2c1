/**
 * Vary (RFC 9111 §4.1): which request fields select a stored variant, and the variant key that
 * encodes their normalised values. Field values are normalised before matching: whitespace
 * around list commas collapsed, and lower-cased where the field is case-insensitive.
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
  const text = (Array.isArray(value) ? value.join(',') : value)
    .split(',')
    .map((part) => part.trim().replace(/\s+/g, ' '))
    .join(',');
  return CASE_INSENSITIVE.has(name) ? text.toLowerCase() : text;
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
