/**
 * The per-request state every phase reads and writes (DESIGN.md request flow), and the small
 * helpers the phases share for talking upstream on a request's behalf.
 */
import { STATUS_CODES, type IncomingMessage, type OutgoingHttpHeaders, type ServerResponse } from 'node:http';
import type { Readable } from 'node:stream';
import type { CachedEntry } from '../storage/cache-store.js';
import type { Directives } from './cache-control.js';
import { appendVia, setForwarded, withoutHopByHop } from './forward-headers.js';
import type { InternalHop } from './owner-hop.js';
import type { VaryRecord } from './stored-response.js';
import { UpstreamError, type HeaderMap } from './upstream.js';

/** How the cache handled a request; the same words appear in logs and metrics. */
export const CACHE_OUTCOMES = ['hit', 'stale', 'miss', 'revalidated', 'bypass', 'pass', 'error', 'synthetic'] as const;
export type CacheOutcome = (typeof CACHE_OUTCOMES)[number];

/** Per-request state carried through the phases. */
export interface Exchange {
  readonly req: IncomingMessage;
  readonly res: ServerResponse;
  readonly id: string;
  readonly startedAt: number;
  readonly method: string;
  /** The client's HTTP version (Via, interim responses, Host rules). */
  readonly httpVersion: string;
  /**
   * The client, as `identify` settled it: the connection's peer, or with a trusted peer the
   * right-most untrusted X-Forwarded-For hop. Logged, rate-limited and matched by WAF rules.
   */
  readonly clientAddress: string;
  /** The address of the connection itself (appended to X-Forwarded-For). */
  readonly peerAddress: string;
  readonly peerTrusted: boolean;
  readonly proto: 'http' | 'https';
  readonly host: string;
  /** Request target in origin form (path and query), as sent upstream. */
  readonly path: string;
  url: string;
  directives: Directives;
  outcome: CacheOutcome;
  detail: string | undefined;
  bytes: number;
  /** The request body to forward when a filter has read its first bytes (else `req` itself). */
  body?: Readable;
  /** Set when another worker of this node sent the request to this one, the key's owner (issue 9). */
  readonly internal?: InternalHop;
}

/**
 * A request filter (WAF, rate limit, IP policy) runs before the cache key is computed. Returning
 * true (or a promise of true) means it answered the request itself and the pipeline stops. A
 * filter that can decide at once returns a boolean, so a hit stays synchronous.
 */
export type RequestFilter = (exchange: Exchange) => boolean | Promise<boolean>;

/** One slice of a large object: its index, in slices of `size` bytes. */
export interface SliceId {
  index: number;
  size: number;
}

/** What the lookup phase found for a request. */
export interface Lookup {
  entry: CachedEntry | undefined;
  /** Variant key of this request ('' when the URL has no Vary record). */
  variant: string;
  /** The Vary record found for the URL, if any. */
  vary: VaryRecord | undefined;
  /** Set for one slice of a large object (slices.ts): `variant` then ends with the slice's size and index. */
  slice?: SliceId;
}

export const NOTHING_FOUND: Lookup = Object.freeze({ entry: undefined, variant: '', vary: undefined });

/**
 * Whether the client sends a body (RFC 9112 §6.3: Content-Length other than 0, or
 * Transfer-Encoding; HTTP/2, RFC 9113 §8.1: a HEADERS frame that did not end the stream).
 */
export function hasRequestBody(req: IncomingMessage): boolean {
  const length = req.headers['content-length'];
  if (req.httpVersionMajor === 2) return length !== '0' && (req as unknown as { stream: { endAfterHeaders: boolean } }).stream.endAfterHeaders === false;
  return length !== undefined ? length !== '0' : req.headers['transfer-encoding'] !== undefined;
}

/** Request fields a cache fetch drops: it asks for the full representation, with our own validators. */
export const CLIENT_CONDITIONALS: ReadonlySet<string> = new Set(['if-none-match', 'if-modified-since', 'if-match', 'if-unmodified-since', 'if-range', 'range']);

export function hasConditional(headers: IncomingMessage['headers']): boolean {
  for (const name of CLIENT_CONDITIONALS) if (headers[name] !== undefined) return true;
  return false;
}

/** Request headers for upstream: hop-by-hop removed (and `drop`), Via and X-Forwarded-* set. */
export function upstreamHeaders(x: Exchange, nodeName: string, drop: ReadonlySet<string> | undefined): HeaderMap {
  const headers = withoutHopByHop(x.req.headers, drop);
  delete headers['expect'];
  if (x.host !== '') headers['host'] = x.host;
  headers['via'] = appendVia(headers['via'], x.httpVersion, nodeName);
  setForwarded(headers, { peerAddress: x.peerAddress, peerTrusted: x.peerTrusted, proto: x.proto, host: x.host });
  // The request id travels with the request, so every tier logs it under the same id.
  headers['x-request-id'] = x.id;
  return headers;
}

/** One per request however many fetches it makes (a sliced object makes one per slice). */
const clientCloseSignals = new WeakMap<Exchange, AbortSignal>();

/** An abort signal that fires when the client goes away before its response is complete. */
export function abortOnClientClose(x: Exchange): AbortSignal {
  const known = clientCloseSignals.get(x);
  if (known !== undefined) return known;
  const controller = new AbortController();
  clientCloseSignals.set(x, controller.signal);
  // A client that left while its request waited on another's fill sends nothing upstream.
  if (x.res.destroyed || x.res.closed) controller.abort();
  else {
    x.res.once('close', () => {
      if (!x.res.writableFinished) controller.abort();
    });
  }
  return controller.signal;
}

/**
 * Forwards an interim (1xx) response from upstream to the client before its final response
 * (RFC 9110 §15.2): 103 Early Hints and 102 Processing, through node:http's own writers. Never
 * to an HTTP/1.0 client (§15.2), never 100 (this node answers Expect itself) or 101. Best effort:
 * a hint node:http will not write is dropped, and nothing here can fail the fetch.
 */
export function forwardInterim(x: Exchange, status: number, headers: HeaderMap): void {
  const { res } = x;
  if (res.headersSent || res.destroyed || x.httpVersion === '1.0') return;
  try {
    if (status === 103) {
      const hints = withoutHopByHop(headers);
      const links = linkMembers(hints['link']);
      if (links.length === 0) return;
      res.writeEarlyHints({ ...(hints as Record<string, string | string[]>), link: links });
    } else if (status === 102) {
      res.writeProcessing();
    }
  } catch {
    // node:http validates each link strictly (RFC 8288); an odd one costs the hints, not the response.
  }
}

/** The members of a Link field (RFC 8288): split on commas outside <…> and quoted strings. */
function linkMembers(field: string | string[] | undefined): string[] {
  if (field === undefined) return [];
  const members: string[] = [];
  for (const line of Array.isArray(field) ? field : [field]) {
    let start = 0;
    let angle = false;
    let quoted = false;
    for (let i = 0; i <= line.length; i++) {
      const c = line[i];
      if (c === '\\' && quoted) i++;
      else if (c === '"' && !angle) quoted = !quoted;
      else if (c === '<' && !quoted) angle = true;
      else if (c === '>' && !quoted) angle = false;
      else if ((c === ',' && !angle && !quoted) || i === line.length) {
        const member = line.slice(start, i).trim();
        if (member) members.push(member);
        start = i + 1;
      }
    }
  }
  return members;
}

/** Releases a body nobody will read; its abort error is expected and ignored. */
export function discard(body: Readable): void {
  body.on('error', () => undefined);
  body.destroy();
}

export function asUpstreamError(error: unknown): UpstreamError {
  if (error instanceof UpstreamError) return error;
  return new UpstreamError('UPSTREAM_PROTOCOL', (error as Error)?.message ?? String(error), { cause: error });
}

/**
 * A short plain-text answer the node writes itself (an error, a filter's refusal): the status,
 * the reason and the request id; never stored. A HEAD gets the headers only.
 */
export function writeTextAnswer(x: Exchange, status: number, message: string, headers: OutgoingHttpHeaders = {}): void {
  const body = `${status} ${STATUS_CODES[status] ?? 'Error'}: ${message}\nrequest id: ${x.id}\n`;
  x.res.writeHead(status, {
    ...headers,
    'content-type': 'text/plain; charset=utf-8',
    'content-length': Buffer.byteLength(body),
    'cache-control': 'no-store',
    'x-request-id': x.id,
  });
  x.bytes = x.method === 'HEAD' ? 0 : Buffer.byteLength(body);
  x.res.end(x.method === 'HEAD' ? undefined : body);
}

/**
 * A request filter's own answer (403 from the WAF, 429 from a limit). The body of the request,
 * if any, is not read.
 */
export function answerFromFilter(x: Exchange, status: number, detail: string, message: string, headers: OutgoingHttpHeaders = {}): true {
  x.outcome = 'synthetic';
  x.detail = detail;
  if (x.body !== undefined && !x.req.complete) {
    // The rest of a body paused after its first bytes were inspected is not worth receiving:
    // discard what arrives and close the connection after this answer. (An unread body that was
    // never paused, node:http discards by itself.)
    x.res.shouldKeepAlive = false;
    x.req.resume();
  }
  writeTextAnswer(x, status, message, headers);
  return true;
}
