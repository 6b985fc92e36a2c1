/**
 * What the pipeline keeps in `EntryMeta.http`: a response record (status, the headers as they
 * will be delivered, the time model) or a Vary record that names the fields selecting variants.
 */
import type { Freshness } from './response-policy.js';
import { headerText } from './response-policy.js';
import { withoutHopByHop } from './forward-headers.js';
import { HOP_RESPONSE_FIELDS } from './owner-hop.js';
import type { HeaderMap } from './upstream.js';

export interface ResponseRecord {
  kind: 'response';
  status: number;
  /** Flat [name, value, name, value…] as delivered; no Content-Length, Age or Cache-Status (added per delivery). */
  headers: string[];
  /** Cache-Status members of caches before this one (e.g. the shield), kept in front of ours (RFC 9211 §2). */
  upstreamCacheStatus: string | undefined;
  lifetimeSec: number;
  initialAgeSec: number;
  swrUntil: number;
  sieUntil: number;
  noStale: boolean;
  etag: string | undefined;
  lastModified: string | undefined;
  /** Vary field names (lower case, sorted). */
  vary: string[];
}

export interface VaryRecord {
  kind: 'vary';
  /** Vary field names (lower case, sorted) of the responses stored for this URL. */
  fields: string[];
  /** Variant keys stored so far (for the per-URL variant cap). */
  variants: string[];
}

export type HttpRecord = ResponseRecord | VaryRecord;

/** Fields never stored: per-hop, per-delivery, per-client, or this node's own between workers. */
const NOT_STORED = new Set(['content-length', 'age', 'cache-status', 'set-cookie', 'date-received', ...HOP_RESPONSE_FIELDS]);
/** Fields for this cache only, removed before delivery at the edge. */
export const SURROGATE_FIELDS = new Set(['surrogate-control', 'surrogate-key']);

export interface RecordInput {
  status: number;
  headers: HeaderMap;
  freshness: Freshness;
  vary: string[];
  /** Remove Surrogate-Control / Surrogate-Key (the edge; the shield passes them on). */
  stripSurrogate: boolean;
  /** Via to store in place of the upstream's (the upstream's with this node appended). */
  via?: string;
}

/**
 * Header values shared between stored records: most responses of a site repeat the same
 * Content-Type, Cache-Control, Via and, within a second, Date, so a million entries need not
 * hold a million copies of each. Bounded: a full table starts over. Validators and cookies are
 * unique per response and would only churn it.
 */
const SHARED_VALUES_MAX = 4096;
const NOT_SHARED = new Set(['etag', 'set-cookie', 'content-md5', 'digest', 'x-request-id']);
let sharedValues = new Map<string, string>();

function shared(name: string, value: string): string {
  if (value.length > 128 || NOT_SHARED.has(name)) return value;
  const known = sharedValues.get(value);
  if (known !== undefined) return known;
  if (sharedValues.size >= SHARED_VALUES_MAX) sharedValues = new Map();
  sharedValues.set(value, value);
  return value;
}

function sharedText(name: string, value: string | undefined): string | undefined {
  return value === undefined ? undefined : shared(name, value);
}

const NO_VARY: string[] = Object.freeze([]) as unknown as string[];

export function makeResponseRecord(input: RecordInput): ResponseRecord {
  const kept = withoutHopByHop(input.headers);
  const flat: string[] = [];
  for (const name in kept) {
    if (NOT_STORED.has(name) || (input.stripSurrogate && SURROGATE_FIELDS.has(name))) continue;
    if ((name === 'via' && input.via !== undefined) || name === 'accept-ranges') continue;
    const value = kept[name]!;
    if (Array.isArray(value)) for (const v of value) flat.push(name, shared(name, v));
    else flat.push(name, shared(name, value));
  }
  if (input.via !== undefined) flat.push('via', shared('via', input.via));
  // Ranges are served from the stored copy, whatever the upstream supports.
  flat.push('accept-ranges', 'bytes');
  const f = input.freshness;
  return {
    kind: 'response',
    status: input.status,
    // An exact-size copy: a grown array keeps spare slots for every entry stored.
    headers: flat.slice(),
    upstreamCacheStatus: headerText(input.headers['cache-status']),
    lifetimeSec: f.lifetimeSec,
    initialAgeSec: f.initialAgeSec,
    swrUntil: f.swrUntil,
    sieUntil: f.sieUntil,
    noStale: f.noStale,
    etag: headerText(input.headers['etag']),
    lastModified: sharedText('last-modified', headerText(input.headers['last-modified'])),
    vary: input.vary.length > 0 ? input.vary : NO_VARY,
  };
}

/** The first value of a field in a flat [name, value…] header list (names in lower case). */
export function fieldOf(flat: readonly string[], name: string): string | undefined {
  for (let i = 0; i < flat.length; i += 2) if (flat[i] === name) return flat[i + 1];
  return undefined;
}

/** A flat [name, value…] header list without the fields named. */
export function withoutFields(flat: readonly string[], names: ReadonlySet<string>): string[] {
  const kept: string[] = [];
  for (let i = 0; i < flat.length; i += 2) if (!names.has(flat[i]!)) kept.push(flat[i]!, flat[i + 1]!);
  return kept;
}

/** The stored headers as a map (for policy recomputation after a 304). */
export function recordHeaders(record: ResponseRecord): HeaderMap {
  const map: HeaderMap = {};
  for (let i = 0; i < record.headers.length; i += 2) {
    const name = record.headers[i]!;
    const value = record.headers[i + 1]!;
    const existing = map[name];
    map[name] = existing === undefined ? value : Array.isArray(existing) ? [...existing, value] : [existing, value];
  }
  if (record.upstreamCacheStatus !== undefined) map['cache-status'] = record.upstreamCacheStatus;
  return map;
}

/**
 * Fields a 304 must not change in the stored response (RFC 9111 §3.2): Content-Length, and the
 * fields the stored body depends on (its coding and range).
 */
const NOT_UPDATED_BY_304 = new Set(['content-length', 'content-encoding', 'content-range', 'transfer-encoding']);

/** §4.3.4: the stored headers updated with those of a 304. */
export function mergeNotModified(stored: ResponseRecord, notModified: HeaderMap): HeaderMap {
  const merged = recordHeaders(stored);
  for (const [name, value] of Object.entries(withoutHopByHop(notModified))) {
    if (NOT_UPDATED_BY_304.has(name)) continue;
    merged[name] = value;
  }
  return merged;
}
