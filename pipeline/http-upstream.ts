/**
 * One upstream server (an origin or a shield) behind an undici connection pool.
 * Maps undici's failures to UpstreamError codes so every caller answers 502/503/504 the same way,
 * and makes a body that runs past its framing (more bytes than its Content-Length, or anything
 * after the last chunk) fail instead of ending, as the `UpstreamResponse` contract says.
 */
import { Client, Pool, errors, type buildConnector } from 'undici';
import type { Socket } from 'node:net';
import type { Readable } from 'node:stream';
import { UpstreamError, type HeaderMap, type Upstream, type UpstreamRequest, type UpstreamResponse } from './upstream.js';

export interface HttpUpstreamOptions {
  /** Base URL, e.g. http://127.0.0.1:7001 (no path). */
  url: string;
  /** Concurrent connections (and so requests) to this server. */
  connections?: number;
  connectTimeoutMs?: number;
  /** Time to the response headers. */
  headersTimeoutMs?: number;
  /** Longest pause between body bytes. */
  bodyTimeoutMs?: number;
  keepAliveTimeoutMs?: number;
  /** Connect to this Unix socket instead of the URL's host and port (the hop between workers). */
  socketPath?: string;
  /** Largest response header section accepted (bytes). */
  maxHeaderSize?: number;
  /** For https:// servers: the CAs to verify against, a client certificate, or no verification. */
  tls?: UpstreamTls;
}

/** TLS towards https:// upstreams (re-encryption). SNI is the upstream's host name (undici sets it). */
export interface UpstreamTls {
  /** PEM CAs replacing the system ones. */
  ca?: string;
  /** Client certificate and key (PEM) for upstreams that require mTLS. */
  cert?: string;
  key?: string;
  rejectUnauthorized: boolean;
}

export const HTTP_UPSTREAM_DEFAULTS = {
  connections: 256,
  connectTimeoutMs: 5_000,
  headersTimeoutMs: 30_000,
  bodyTimeoutMs: 30_000,
  keepAliveTimeoutMs: 4_000,
  maxHeaderSize: 16 * 1024,
} as const;

// ENOENT: a worker's Unix socket is gone while it restarts.
const CONNECT_FAILURES = new Set(['ENOENT', 'ECONNREFUSED', 'EHOSTUNREACH', 'ENETUNREACH', 'ENOTFOUND', 'EAI_AGAIN', 'EADDRNOTAVAIL']);
const RESETS = new Set(['ECONNRESET', 'EPIPE', 'UND_ERR_SOCKET', 'UND_ERR_CLOSED']);
const TIMEOUTS = new Set(['UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'ETIMEDOUT']);

/**
 * Turns whatever undici threw into an UpstreamError. `idempotent` decides whether a failure after
 * request bytes may have left is retryable; `neverSent` marks the failures where none can have left.
 */
export function toUpstreamError(error: unknown, member: string, idempotent: boolean): UpstreamError {
  if (error instanceof UpstreamError) return error;
  const code = (error as { code?: string } | undefined)?.code ?? '';
  const message = (error as Error | undefined)?.message ?? String(error);
  if (code === 'UND_ERR_INVALID_ARG' || code === 'UND_ERR_NOT_SUPPORTED') {
    return new UpstreamError('UPSTREAM_PROTOCOL', `request not sendable to ${member}: ${message}`, { cause: error, member, retryable: false, local: true });
  }
  if (code === 'UND_ERR_CONNECT_TIMEOUT') {
    // undici writes a request only once its connection (TLS included) is up.
    return new UpstreamError('UPSTREAM_TIMEOUT', `connect to ${member} timed out`, { cause: error, member, retryable: true, neverSent: true });
  }
  if (CONNECT_FAILURES.has(code)) {
    // EHOSTUNREACH and the like can also hit an established socket, after the request was written:
    // only an error from connect() or the DNS lookup proves nothing was sent.
    const neverSent = failedBeforeConnecting(error);
    const text = neverSent ? `cannot connect to ${member}: ${code}` : `connection to ${member} failed: ${code}`;
    return new UpstreamError('UPSTREAM_CONNECT', text, { cause: error, member, retryable: neverSent || idempotent, neverSent });
  }
  if (TIMEOUTS.has(code)) {
    return new UpstreamError('UPSTREAM_TIMEOUT', `${member} timed out (${code})`, { cause: error, member, retryable: false });
  }
  if (RESETS.has(code)) {
    // The request may have reached the server: only an idempotent one may be repeated.
    return new UpstreamError('UPSTREAM_CONNECT', `${member} closed the connection: ${message}`, { cause: error, member, retryable: idempotent });
  }
  return new UpstreamError('UPSTREAM_PROTOCOL', `${member} failed: ${message}`, { cause: error, member, retryable: false });
}

/** Node's own errors from connect(2) or getaddrinfo; Happy Eyeballs reports them as an AggregateError of one per address. */
function failedBeforeConnecting(error: unknown): boolean {
  const list = error instanceof AggregateError ? (error.errors as unknown[]) : [error];
  return list.length > 0 && list.every((e) => {
    const syscall = (e as { syscall?: string } | undefined)?.syscall;
    return syscall === 'connect' || syscall === 'getaddrinfo';
  });
}

export class HttpUpstream implements Upstream {
  readonly url: string;
  private readonly pool: Pool;
  private readonly options: Required<Omit<HttpUpstreamOptions, 'url' | 'socketPath' | 'tls'>>;

  constructor(options: HttpUpstreamOptions) {
    const parsed = new URL(options.url);
    this.url = parsed.origin;
    this.options = { ...HTTP_UPSTREAM_DEFAULTS, ...stripUndefined(options) };
    this.pool = new Pool(this.url, {
      factory: (origin, opts) => trackingClient(origin, opts as Client.Options),
      connections: this.options.connections,
      pipelining: 1,
      connect: { timeout: this.options.connectTimeoutMs, ...options.tls },
      headersTimeout: this.options.headersTimeoutMs,
      bodyTimeout: this.options.bodyTimeoutMs,
      keepAliveTimeout: this.options.keepAliveTimeoutMs,
      maxHeaderSize: this.options.maxHeaderSize,
      ...(options.socketPath !== undefined ? { socketPath: options.socketPath } : {}),
    });
  }

  async request(request: UpstreamRequest): Promise<UpstreamResponse> {
    try {
      const response = await this.pool.request({
        method: request.method as 'GET',
        path: request.path,
        headers: request.headers,
        body: request.body ?? undefined,
        signal: request.signal,
        onInfo: request.onInterim && (({ statusCode, headers }) => request.onInterim!(statusCode, headers as HeaderMap)),
      });
      return {
        statusCode: response.statusCode,
        headers: response.headers as HeaderMap,
        body: response.body as unknown as Readable,
        member: this.url,
      };
    } catch (error) {
      throw toUpstreamError(error, this.url, request.idempotent);
    }
  }

  /** Requests now in flight or queued on this server (for least-request balancing and circuit breaking). */
  get pending(): number {
    const stats = this.pool.stats;
    return stats.pending + stats.running;
  }

  async close(): Promise<void> {
    await this.pool.close();
  }
}

/** undici's handler interface as Client.dispatch sees pool.request's handler. */
interface ResponseHandler {
  onHeaders(status: number, raw: Buffer[], resume: () => void, statusText: string): boolean;
  onData(chunk: Buffer): boolean;
  onComplete(trailers: Buffer[] | null): void;
  onError(error: Error): void;
}

/** A Client whose requests get `checkFraming` (pipelining 1: one request per connection, the one `current` names). */
function trackingClient(origin: URL, opts: Client.Options): Client {
  const connect = opts.connect as buildConnector.connector;
  let current: Socket | undefined;
  const client = new Client(origin, {
    ...opts,
    connect: (options, callback) =>
      connect(options, (...args: Parameters<buildConnector.Callback>) => {
        if (args[1]) current = args[1];
        callback(...args);
      }),
  });
  const dispatch = client.dispatch.bind(client);
  client.dispatch = (options, handler) => {
    checkFraming(handler as unknown as ResponseHandler, options.method, () => current, origin.origin);
    return dispatch(options, handler);
  };
  return client;
}

/**
 * Makes a body that runs past its framing fail instead of ending. undici stops a body at its
 * Content-Length (or last chunk) and reports what follows only as an error on the socket: llhttp
 * reads it in the same parse, so the error is there a microtask after the response completes
 * (judged then, not when the body's reader gets to its end, by which time the connection may
 * carry the next request's response). So completion is passed on a microtask later, or turned
 * into an error. The chunk that completes a Content-Length is held until then too, so that a tier
 * below (an edge reading this shield) never receives a complete-looking body it would store. Done
 * on undici's handler, with no stream of its own: a stream per response cost ~16 KB per miss.
 * Bytes that arrive on a later read than the body's last ones are not seen.
 */
function checkFraming(handler: ResponseHandler, method: string, socket: () => Socket | undefined, member: string): void {
  const { onHeaders, onData, onComplete } = handler;
  if (typeof onHeaders !== 'function' || typeof onData !== 'function' || typeof onComplete !== 'function') {
    throw new Error('undici passed a handler without onHeaders/onData/onComplete: bodies could not be checked against their framing');
  }
  let declared: number | undefined;
  let received = 0;
  let held: Buffer | undefined;
  handler.onHeaders = function (this: ResponseHandler, status, raw, resume, statusText) {
    declared = method === 'HEAD' || status === 204 || status === 304 ? undefined : contentLength(raw);
    return onHeaders.call(this, status, raw, resume, statusText);
  };
  handler.onData = function (this: ResponseHandler, chunk) {
    received += chunk.length;
    if (declared === undefined || received < declared) return onData.call(this, chunk);
    held = chunk;
    return true;
  };
  handler.onComplete = function (this: ResponseHandler, trailers) {
    const connection = socket();
    queueMicrotask(() => {
      const failure = connection?.errored;
      if (bytesPastTheEnd(failure)) {
        this.onError(new UpstreamError('UPSTREAM_PROTOCOL', `${member} sent bytes past the end of the body: ${failure.message}`, { cause: failure, member, retryable: false }));
        return;
      }
      if (held !== undefined) onData.call(this, held);
      onComplete.call(this, trailers);
    });
  };
}

/** The Content-Length of a raw header list, where it delimits the body (not with Transfer-Encoding, RFC 9112 §6.3). */
function contentLength(raw: Buffer[]): number | undefined {
  let length: number | undefined;
  for (let i = 0; i < raw.length; i += 2) {
    // Only names of those two lengths are decoded.
    if (raw[i]!.length !== 14 && raw[i]!.length !== 17) continue;
    const name = raw[i]!.toString('latin1').toLowerCase();
    if (name === 'transfer-encoding') return undefined;
    if (name === 'content-length') length = Number(raw[i + 1]!.toString('latin1'));
  }
  return length !== undefined && Number.isSafeInteger(length) && length >= 0 ? length : undefined;
}

/**
 * How undici ends a connection that carries bytes no request asked for: "bad response" when they
 * start a message while no request is running, a parse error otherwise. (A close or a reset
 * after a complete body says nothing against the body.)
 */
function bytesPastTheEnd(error: Error | null | undefined): error is Error {
  return error instanceof errors.HTTPParserError || (error instanceof errors.SocketError && error.message === 'bad response');
}

function stripUndefined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}
