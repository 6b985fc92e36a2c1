/**
 * One upstream server (an origin or a shield) behind an undici connection pool.
 * Maps undici's failures to UpstreamError codes so every caller answers 502/503/504 the same way,
 * and makes a body that runs past its framing (more bytes than its Content-Length, or anything
 * after the last chunk) fail instead of ending, as the `UpstreamResponse` contract says.
 */
import { Client, Pool, errors, type buildConnector } from 'undici';
import type { Socket } from 'node:net';
import { Transform, pipeline, type Readable } from 'node:stream';
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
    const carrier = new Carrier();
    try {
      const response = await this.pool.request({
        method: request.method as 'GET',
        path: request.path,
        headers: request.headers,
        body: request.body ?? undefined,
        signal: request.signal,
        opaque: carrier,
        onInfo: request.onInterim && (({ statusCode, headers }) => request.onInterim!(statusCode, headers as HeaderMap)),
      });
      const headers = response.headers as HeaderMap;
      return {
        statusCode: response.statusCode,
        headers,
        body: checkedBody(response.body as unknown as Readable, declaredLength(request.method, response.statusCode, headers), carrier, this.url),
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

/**
 * Passed as undici's `opaque`: learns, on dispatch, the connection of the client that took the
 * request, and, as the response completes, whether that connection then carried bytes past it.
 */
class Carrier {
  socket: (() => Socket | undefined) | undefined;
  /** Set a microtask after undici completed the response: before it can send the next request on the connection. */
  verdict: { failure: Error | null | undefined } | undefined;
}

/** A Client that tells each request's Carrier how to find its connection (pipelining 1: one request per connection). */
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
    // The options pool.request() was given, `opaque` included.
    const carrier = (options as { opaque?: unknown }).opaque;
    if (carrier instanceof Carrier) {
      carrier.socket = () => current;
      // llhttp reads what follows the message in the same parse: an error it raises is on the
      // socket a microtask after completion. Judged then, not when the body's reader gets to
      // its end, by which time the connection may carry the next request's response.
      const complete = (handler as { onComplete?: (...args: unknown[]) => unknown }).onComplete;
      if (typeof complete === 'function') {
        (handler as { onComplete?: (...args: unknown[]) => unknown }).onComplete = function (this: unknown, ...args: unknown[]) {
          const socket = current;
          queueMicrotask(() => (carrier.verdict = { failure: socket?.errored }));
          return complete.apply(this, args);
        };
      }
    }
    return dispatch(options, handler);
  };
  return client;
}

/** The body length the head declares, where the body is delimited by it (RFC 9112 §6.3). */
function declaredLength(method: string, status: number, headers: HeaderMap): number | undefined {
  if (method === 'HEAD' || status === 204 || status === 304 || headers['transfer-encoding'] !== undefined) return undefined;
  const value = Number(headers['content-length']);
  return Number.isSafeInteger(value) && value >= 0 ? value : undefined;
}

/**
 * undici's body, made to fail when the connection carried bytes past its end. undici stops a
 * body at its Content-Length (or last chunk) and reports what follows only as an error on the
 * socket, after the body has ended: so the end is passed on one turn of the event loop later,
 * and only if the socket has no such error by then; otherwise the body errors and is never
 * stored. The chunk that completes a Content-Length is held until then too, so that a tier
 * below (an edge reading this shield) never receives a complete-looking body it would store.
 * Bytes that arrive on a later read than the body's last ones are not seen.
 */
function checkedBody(source: Readable, declared: number | undefined, carrier: Carrier, member: string): Readable {
  let received = 0;
  let held: Buffer | undefined;
  const body = new Transform({
    transform(chunk: Buffer, _encoding, callback) {
      received += chunk.length;
      if (declared !== undefined && received >= declared) {
        held = chunk;
        callback();
      } else {
        callback(null, chunk);
      }
    },
    flush(callback) {
      setImmediate(() => {
        const failure = carrier.verdict !== undefined ? carrier.verdict.failure : carrier.socket?.()?.errored;
        if (bytesPastTheEnd(failure)) {
          callback(new UpstreamError('UPSTREAM_PROTOCOL', `${member} sent bytes past the end of the body: ${failure.message}`, { cause: failure, member, retryable: false }));
        } else {
          callback(null, held);
        }
      });
    },
  });
  // Destroying the body (a client went away) destroys undici's, which aborts the request.
  pipeline(source, body, () => undefined);
  return body;
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
