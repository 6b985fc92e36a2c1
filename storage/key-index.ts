/**
 * Names (a URL, a surrogate key) → the entry keys filed under them. Most names have one key: it
 * is kept as the string itself, and a Set is made only for a second one, so an index of a
 * million single-key names costs a map entry each, not a map entry and a Set.
 */
export class KeyIndex {
  private readonly map = new Map<string, string | Set<string>>();

  add(name: string, key: string): void {
    const held = this.map.get(name);
    if (held === undefined) this.map.set(name, key);
    else if (typeof held === 'string') {
      if (held !== key) this.map.set(name, new Set([held, key]));
    } else held.add(key);
  }

  remove(name: string, key: string): void {
    const held = this.map.get(name);
    if (held === undefined) return;
    if (typeof held === 'string') {
      if (held === key) this.map.delete(name);
      return;
    }
    held.delete(key);
    if (held.size === 1) this.map.set(name, held.values().next().value!);
  }

  /** The keys filed under `name` (a copy: callers may remove while they go). */
  keys(name: string): string[] {
    const held = this.map.get(name);
    if (held === undefined) return [];
    return typeof held === 'string' ? [held] : [...held];
  }

  /** The keys filed under every name that starts with `start`. */
  keysUnder(start: string): string[] {
    const out: string[] = [];
    for (const [name, held] of this.map) {
      if (!name.startsWith(start)) continue;
      if (typeof held === 'string') out.push(held);
      else out.push(...held);
    }
    return out;
  }
}
