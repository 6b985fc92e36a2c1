/**
 * The hop from a worker to the key's owner worker (issue 9), over the owner's Unix socket in
 * plain HTTP/1.1. A worker answers memory hits for any key itself; for anything else on a key it
 * does not own, it sends the client's request to the owner, which runs the whole pipeline for it
 * (disk lookup, single-flight fill, revalidation) as if the client had connected to it.
 *
 * What crosses the hop, beyond the client's own request:
 * - request: the client identity this worker settled on (`identify`), the request id, and
 *   `want-entry`: when the owner answers from its cache (stored, or a fill streaming in), it sends
 *   the full stored response with its entry meta, so this worker keeps an exact memory copy (the
 *   same storedAt, freshness and headers) and answers the client's conditionals and ranges itself;
 * - response: the owner's outcome and Cache-Status member, so the client sees one node.
 */
import type { IncomingMessage } from 'node:http';
import type { EntryMeta } from '../storage/cache-store.js';
import { urlKeyPrefix } from '../storage/keys.js';
import { CACHE_OUTCOMES, type CacheOutcome, type Exchange } from './exchange.js';
import { withoutHopByHop } from './forward-headers.js';
import type { HeaderMap } from './upstream.js';

/** Request fields of the hop (set by the sending worker, read and removed by the owner). */
const CLIENT = 'x-outpost-client';
const PEER = 'x-outpost-peer';
const TRUSTED = 'x-outpost-trusted';
const PROTO = 'x-outpost-proto';
const REQUEST_ID = 'x-outpost-request-id';
const HTTP_VERSION = 'x-outpost-http-version';
const WANT_ENTRY = 'x-outpost-want-entry';
const HOP_REQUEST_FIELDS = [CLIENT, PEER, TRUSTED, PROTO, REQUEST_ID, HTTP_VERSION, WANT_ENTRY];

/** Response fields of the hop (set by the owner, removed before anything reaches a client). */
export const ENTRY_FIELD = 'x-outpost-entry';
export const MEMBER_FIELD = 'x-outpost-member';
export const OUTCOME_FIELD = 'x-outpost-outcome';
/** Never stored, never delivered: an upstream that sends them does not speak for this node. */
export const HOP_RESPONSE_FIELDS: ReadonlySet<string> = new Set([ENTRY_FIELD, MEMBER_FIELD, OUTCOME_FIELD]);

/** What the owner learns about a request that came over the hop. */
export interface InternalHop {
  clientAddress: string;
  peerAddress: string;
  peerTrusted: boolean;
  proto: 'http' | 'https';
  id: string | undefined;
  httpVersion: string;
  /** Answer from the cache with the full stored response and its entry meta. */
  wantEntry: boolean;
}

/** The request headers for the owner: the client's own (hop-by-hop and `drop` removed) and the hop fields. */
export function ownerRequestHeaders(x: Exchange, drop: ReadonlySet<string> | undefined): HeaderMap {
  const headers = withoutHopByHop(x.req.headers, drop);
  for (const name of HOP_REQUEST_FIELDS) delete headers[name];
  delete headers['expect'];
  if (x.host !== '') headers['host'] = x.host;
  headers[CLIENT] = x.clientAddress;
  headers[PEER] = x.peerAddress;
  headers[TRUSTED] = x.peerTrusted ? '1' : '0';
  headers[PROTO] = x.proto;
  headers[REQUEST_ID] = x.id;
  headers[HTTP_VERSION] = x.httpVersion;
  headers[WANT_ENTRY] = '1';
  return headers;
}

/** The owner's side: reads the hop fields and removes them, so they never travel further. */
export function readInternalHop(req: IncomingMessage): InternalHop {
  const text = (name: string): string | undefined => {
    const value = req.headers[name];
    delete req.headers[name];
    return typeof value === 'string' ? value : undefined;
  };
  const proto = text(PROTO);
  return {
    clientAddress: text(CLIENT) ?? '',
    peerAddress: text(PEER) ?? '',
    peerTrusted: text(TRUSTED) === '1',
    proto: proto === 'https' ? 'https' : 'http',
    id: text(REQUEST_ID),
    httpVersion: text(HTTP_VERSION) ?? req.httpVersion,
    wantEntry: text(WANT_ENTRY) === '1',
  };
}

/** The entry meta as one header value (base64 JSON: stored headers may hold any byte). */
export function encodeEntry(key: string, meta: EntryMeta): string {
  return Buffer.from(JSON.stringify({ key, meta })).toString('base64');
}

/**
 * The owner's entry, if it is one this request may keep: well-formed, a response record, and
 * stored under this request's own URL (a copy never lands under another key).
 */
export function decodeEntry(value: string | string[] | undefined, url: string): { key: string; meta: EntryMeta } | undefined {
  if (typeof value !== 'string') return undefined;
  try {
    const parsed = JSON.parse(Buffer.from(value, 'base64').toString()) as { key?: unknown; meta?: EntryMeta };
    const { key, meta } = parsed;
    if (typeof key !== 'string' || !key.startsWith(urlKeyPrefix(url))) return undefined;
    if (typeof meta !== 'object' || meta === null || (meta.http as { kind?: unknown })?.kind !== 'response') return undefined;
    if (!Number.isFinite(meta.size) || !Number.isFinite(meta.storedAt) || !Number.isFinite(meta.deleteAt) || !Array.isArray(meta.tags)) return undefined;
    return { key, meta };
  } catch {
    return undefined;
  }
}

const OUTCOMES: ReadonlySet<string> = new Set(CACHE_OUTCOMES);

/** `outcome` or `outcome;detail`, as the owner logged the request. */
export function encodeOutcome(x: Exchange): string {
  return x.detail === undefined ? x.outcome : `${x.outcome};${x.detail}`;
}

export function decodeOutcome(value: string | string[] | undefined): { outcome: CacheOutcome; detail: string | undefined } | undefined {
  if (typeof value !== 'string') return undefined;
  const semi = value.indexOf(';');
  const outcome = (semi === -1 ? value : value.slice(0, semi)) as CacheOutcome;
  if (!OUTCOMES.has(outcome)) return undefined;
  return { outcome, detail: semi === -1 ? undefined : value.slice(semi + 1) };
}
