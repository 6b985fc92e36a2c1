/**
 * The config schema of the requestFilter phase (issue 11): WAF rules (`waf.rules`) and named rate
 * limits (`rateLimits`). Validated here, when the config loads, with the rule and field named;
 * compiled into matchers by edge/waf and edge/rate-limit. Plain JSON, so a config crosses to the
 * workers as it is.
 */
import { isIP } from 'node:net';
import { createRequire } from 'node:module';
import type { RE2 } from 're2-wasm';
import { ConfigError } from './config-error.js';

/** A string match: `equals`, `prefix` or `regex` (RE2 syntax: linear time), or a field's presence. */
export type MatchSpec = { kind: 'equals' | 'prefix' | 'regex'; value: string; ignoreCase: boolean } | { kind: 'present'; value: boolean; ignoreCase: false };

export type WafMode = 'off' | 'detect' | 'block';
export type WafAction = 'block' | 'log' | 'allow';

export interface WafRuleSpec {
  id: string;
  message: string;
  /** `request`: on the request head; `body`: once the first bytes of the body are read. */
  phase: 'request' | 'body';
  action: WafAction;
  method?: MatchSpec[];
  host?: MatchSpec[];
  path?: MatchSpec[];
  query?: MatchSpec[];
  /** Lower-case field name → matches on its value. */
  headers?: Record<string, MatchSpec[]>;
  cookies?: Record<string, MatchSpec[]>;
  /** Addresses and CIDRs. */
  clientAddress?: string[];
  body?: MatchSpec[];
}

export interface WafSettings {
  mode: WafMode;
  rules: WafRuleSpec[];
}

/** `100/s`: `requests` per `periodMs`. */
export interface RateSpec {
  requests: number;
  periodMs: number;
  text: string;
}

/** What a limit's bucket is keyed by; `header:NAME` keys by that field's value. */
export type LimitKeyPart = 'clientAddress' | 'host' | 'path' | `header:${string}`;

export interface RateLimitSpec {
  name: string;
  rate: RateSpec;
  /** Requests admitted at once from rest; 0: one period's worth of the rate. */
  burst: number;
  key: LimitKeyPart[];
  /** Path groups the limit applies to (any); with `path` in the key, each group has its own buckets. */
  paths?: MatchSpec[];
  methods?: string[];
  /** Send RateLimit-Policy and RateLimit on admitted requests too (429s always carry them). */
  headers: boolean;
}

const WAF_MODES: readonly WafMode[] = ['off', 'detect', 'block'];
const RULE_FIELDS = ['id', 'message', 'phase', 'action', 'method', 'host', 'path', 'query', 'headers', 'cookies', 'clientAddress', 'body'];
const LIMIT_FIELDS = ['name', 'rate', 'burst', 'key', 'paths', 'methods', 'headers'];
const PERIODS: Record<string, number> = { s: 1_000, m: 60_000, h: 3_600_000 };
/** Rule ids and limit names appear in metrics labels, logs and response bodies. */
const NAME = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$/;

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

/** `--waf off|detect|block`, or the config file's `waf` object `{ "mode", "rules" }`. */
export function parseWaf(raw: unknown, source: string, current: WafSettings): WafSettings {
  if (typeof raw === 'string') return { ...current, mode: parseMode(raw, 'waf', source) };
  if (!isObject(raw)) throw new ConfigError('waf', source, 'must be off, detect, block or { "mode", "rules" }');
  for (const key of Object.keys(raw)) if (key !== 'mode' && key !== 'rules') throw new ConfigError(`waf.${key}`, source, 'unknown field');
  const mode = raw.mode === undefined ? current.mode : parseMode(raw.mode, 'waf.mode', source);
  if (raw.rules !== undefined && !Array.isArray(raw.rules)) throw new ConfigError('waf.rules', source, 'must be a list of rules');
  const rules = raw.rules === undefined ? current.rules : (raw.rules as unknown[]).map((rule, i) => parseRule(rule, i, source));
  const seen = new Set<string>();
  for (const rule of rules) {
    if (seen.has(rule.id)) throw new ConfigError(`waf.rules[${rule.id}].id`, source, 'duplicate rule id');
    seen.add(rule.id);
  }
  return { mode, rules };
}

function parseMode(raw: unknown, field: string, source: string): WafMode {
  if (typeof raw !== 'string' || !WAF_MODES.includes(raw as WafMode)) throw new ConfigError(field, source, `must be one of ${WAF_MODES.join(', ')}, got ${JSON.stringify(raw)}`);
  return raw as WafMode;
}

function parseRule(raw: unknown, index: number, source: string): WafRuleSpec {
  if (!isObject(raw)) throw new ConfigError(`waf.rules[${index}]`, source, 'must be an object');
  if (typeof raw.id !== 'string' || !NAME.test(raw.id)) throw new ConfigError(`waf.rules[${index}].id`, source, 'must be a name of letters, digits and _.:- (up to 64)');
  const id = raw.id;
  const field = (name: string): string => `waf.rules[${id}].${name}`;
  for (const key of Object.keys(raw)) if (!RULE_FIELDS.includes(key)) throw new ConfigError(field(key), source, 'unknown field');
  if (raw.message !== undefined && typeof raw.message !== 'string') throw new ConfigError(field('message'), source, 'must be a string');
  const action = raw.action ?? 'block';
  if (action !== 'block' && action !== 'log' && action !== 'allow') throw new ConfigError(field('action'), source, `must be block, log or allow, got ${JSON.stringify(action)}`);
  const phase = raw.phase ?? (raw.body !== undefined ? 'body' : 'request');
  if (phase !== 'request' && phase !== 'body') throw new ConfigError(field('phase'), source, `must be request or body, got ${JSON.stringify(phase)}`);
  if (phase === 'request' && raw.body !== undefined) throw new ConfigError(field('body'), source, 'a body match needs phase "body"');
  const rule: WafRuleSpec = { id, message: (raw.message as string | undefined) ?? id, phase, action };
  for (const name of ['method', 'host', 'path', 'query', 'body'] as const) {
    if (raw[name] === undefined) continue;
    const matches = parseMatches(raw[name], field(name), source, false);
    // Methods are case-sensitive tokens but always written in capitals; hosts are case-insensitive.
    rule[name] = name === 'method' || name === 'host' ? matches.map((m) => ({ ...m, ignoreCase: true }) as MatchSpec) : matches;
  }
  for (const name of ['headers', 'cookies'] as const) {
    if (raw[name] === undefined) continue;
    if (!isObject(raw[name])) throw new ConfigError(field(name), source, 'must be an object of name → match');
    const table: Record<string, MatchSpec[]> = {};
    for (const [key, value] of Object.entries(raw[name] as Record<string, unknown>)) {
      if (key === '') throw new ConfigError(field(name), source, 'names must not be empty');
      table[name === 'headers' ? key.toLowerCase() : key] = parseMatches(value, `${field(name)}.${key}`, source, true);
    }
    rule[name] = table;
  }
  if (raw.clientAddress !== undefined) rule.clientAddress = parseCidrs(raw.clientAddress, field('clientAddress'), source);
  if (Object.keys(rule).length === 4) throw new ConfigError(`waf.rules[${id}]`, source, 'matches nothing: give at least one of method, host, path, query, headers, cookies, clientAddress, body');
  return rule;
}

/** One match, or a list of them (any may match). A plain string is `equals`. */
function parseMatches(raw: unknown, field: string, source: string, presence: boolean): MatchSpec[] {
  const list = Array.isArray(raw) ? raw : [raw];
  if (list.length === 0) throw new ConfigError(field, source, 'must not be an empty list');
  const matches = list.map((item) => parseMatch(item, field, source, presence));
  if (matches.length > 1 && matches.some((m) => m.kind === 'present')) throw new ConfigError(field, source, '{ "present" } stands alone, not in a list');
  return matches;
}

function parseMatch(raw: unknown, field: string, source: string, presence: boolean): MatchSpec {
  if (typeof raw === 'string') return { kind: 'equals', value: raw, ignoreCase: false };
  if (!isObject(raw)) throw new ConfigError(field, source, 'must be a string or { "equals" | "prefix" | "regex": … }');
  const kinds = Object.keys(raw).filter((k) => k !== 'ignoreCase');
  if (kinds.length !== 1) throw new ConfigError(field, source, `needs exactly one of equals, prefix, regex${presence ? ', present' : ''}`);
  const kind = kinds[0]!;
  const value = raw[kind];
  if (raw.ignoreCase !== undefined && typeof raw.ignoreCase !== 'boolean') throw new ConfigError(`${field}.ignoreCase`, source, 'must be true or false');
  const ignoreCase = raw.ignoreCase === true;
  if (kind === 'present' && presence) {
    if (typeof value !== 'boolean') throw new ConfigError(`${field}.present`, source, 'must be true or false');
    return { kind: 'present', value, ignoreCase: false };
  }
  if (kind !== 'equals' && kind !== 'prefix' && kind !== 'regex') throw new ConfigError(`${field}.${kind}`, source, 'unknown match');
  if (typeof value !== 'string') throw new ConfigError(`${field}.${kind}`, source, 'must be a string');
  if (kind === 'regex') checkRegex(value, ignoreCase, `${field}.regex`, source);
  return { kind, value, ignoreCase };
}

/** Compiled patterns, shared by validation and every compile of every reload (see compileRegex). */
const compiled = new Map<string, RE2>();

/**
 * re2-wasm, loaded with the first operator regex: it compiles its WebAssembly and takes a 16 MiB
 * heap when loaded, ~11 % of every process's start-up and 16 MB of RSS on a node without regex rules.
 */
let re2: typeof RE2 | undefined;
const loadRe2 = (): typeof RE2 => (re2 ??= (createRequire(import.meta.url)('re2-wasm') as { RE2: typeof RE2 }).RE2);

/**
 * Regular expressions run on RE2 (re2-wasm), whose time is linear in the input: a pattern that
 * would backtrack catastrophically in JavaScript cannot hang the node. RE2 has no lookaround or
 * backreferences; such a pattern is rejected here with RE2's reason.
 * re2-wasm's heap is fixed (16 MiB) and an RE2 object is freed only by hand: each distinct
 * pattern is compiled once per process and reused, so reloads do not exhaust it.
 */
export function compileRegex(pattern: string, ignoreCase: boolean): RE2 {
  const flags = ignoreCase ? 'iu' : 'u';
  const id = `${flags}/${pattern}`;
  let re = compiled.get(id);
  if (re === undefined) compiled.set(id, (re = new (loadRe2())(pattern, flags)));
  return re;
}

function checkRegex(pattern: string, ignoreCase: boolean, field: string, source: string): void {
  try {
    compileRegex(pattern, ignoreCase);
  } catch (error) {
    throw new ConfigError(field, source, `not a valid RE2 regular expression: ${(error as Error).message}`);
  }
}

/** A list option's value: a list as given (config file), or a comma-separated string (environment, flags). */
export function asList(raw: unknown): unknown[] | undefined {
  if (Array.isArray(raw)) return raw;
  return typeof raw === 'string' ? raw.split(',').map((item) => item.trim()).filter(Boolean) : undefined;
}

export function parseCidrs(raw: unknown, field: string, source: string): string[] {
  const list = asList(raw);
  if (list === undefined) throw new ConfigError(field, source, 'must be a list of addresses or CIDRs');
  for (const item of list) {
    if (typeof item !== 'string') throw new ConfigError(field, source, 'must be a list of addresses or CIDRs');
    const [address, prefix, ...rest] = item.split('/');
    const family = isIP(address!);
    const bits = family === 6 ? 128 : 32;
    if (family === 0 || rest.length > 0 || (prefix !== undefined && !(/^\d+$/.test(prefix) && Number(prefix) <= bits))) {
      throw new ConfigError(field, source, `not an IP address or CIDR: ${JSON.stringify(item)}`);
    }
  }
  return list as string[];
}

/** `100/s`, `20/m`, `1000/h`; '' is off. */
export function parseRate(raw: unknown, field: string, source: string): RateSpec | undefined {
  if (raw === '' || raw === undefined || raw === null) return undefined;
  const match = typeof raw === 'string' ? /^\s*(\d+)\s*\/\s*([smh])\s*$/.exec(raw) : null;
  const requests = match ? Number(match[1]) : 0;
  if (!match || requests < 1) throw new ConfigError(field, source, `must be a rate such as 100/s, 20/m or 1000/h, got ${JSON.stringify(raw)}`);
  const periodMs = PERIODS[match[2]!]!;
  // The buckets count in microseconds.
  if (periodMs / requests < 0.001) throw new ConfigError(field, source, `at most 1000000/s, got ${JSON.stringify(raw)}`);
  return { requests, periodMs, text: `${requests}/${match[2]}` };
}

export function parseRateLimits(raw: unknown, source: string): RateLimitSpec[] {
  if (!Array.isArray(raw)) throw new ConfigError('rateLimits', source, 'must be a list of limits');
  const limits = raw.map((item, i) => parseLimit(item, i, source));
  const seen = new Set<string>(['default']);
  for (const limit of limits) {
    if (seen.has(limit.name)) throw new ConfigError(`rateLimits[${limit.name}].name`, source, limit.name === 'default' ? '"default" is the --rate-limit limit' : 'duplicate limit name');
    seen.add(limit.name);
  }
  return limits;
}

function parseLimit(raw: unknown, index: number, source: string): RateLimitSpec {
  if (!isObject(raw)) throw new ConfigError(`rateLimits[${index}]`, source, 'must be an object');
  if (typeof raw.name !== 'string' || !NAME.test(raw.name)) throw new ConfigError(`rateLimits[${index}].name`, source, 'must be a name of letters, digits and _.:- (up to 64)');
  const name = raw.name;
  const field = (f: string): string => `rateLimits[${name}].${f}`;
  for (const key of Object.keys(raw)) if (!LIMIT_FIELDS.includes(key)) throw new ConfigError(field(key), source, 'unknown field');
  const rate = parseRate(raw.rate, field('rate'), source);
  if (rate === undefined) throw new ConfigError(field('rate'), source, 'is required, e.g. "100/s"');
  const burst = raw.burst ?? 0;
  if (typeof burst !== 'number' || !Number.isInteger(burst) || burst < 0 || burst > 1_000_000) throw new ConfigError(field('burst'), source, 'must be a whole number up to 1000000 (0: one period of the rate)');
  const key = raw.key ?? ['clientAddress'];
  if (!Array.isArray(key)) throw new ConfigError(field('key'), source, 'must be a list such as ["clientAddress", "header:x-api-key", "path"]');
  for (const part of key) {
    const ok = part === 'clientAddress' || part === 'host' || part === 'path' || (typeof part === 'string' && /^header:[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(part));
    if (!ok) throw new ConfigError(field('key'), source, `unknown key part ${JSON.stringify(part)}: clientAddress, host, path or header:NAME`);
  }
  if (key.includes('path') && raw.paths === undefined) throw new ConfigError(field('key'), source, 'a "path" key part needs "paths" (the path groups)');
  if (raw.headers !== undefined && typeof raw.headers !== 'boolean') throw new ConfigError(field('headers'), source, 'must be true or false');
  let methods: string[] | undefined;
  if (raw.methods !== undefined) {
    if (!Array.isArray(raw.methods) || raw.methods.length === 0 || !raw.methods.every((m) => typeof m === 'string' && /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/.test(m))) {
      throw new ConfigError(field('methods'), source, 'must be a list of methods');
    }
    methods = (raw.methods as string[]).map((m) => m.toUpperCase());
  }
  return {
    name,
    rate,
    burst,
    key: (key as string[]).map((part) => (part.startsWith('header:') ? `header:${part.slice(7).toLowerCase()}` : part)) as LimitKeyPart[],
    ...(raw.paths !== undefined ? { paths: parseMatches(raw.paths, field('paths'), source, false) } : {}),
    ...(methods ? { methods } : {}),
    headers: raw.headers === true,
  };
}
