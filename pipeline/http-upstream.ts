/**
 * One upstream server (an origin or a shield) behind an undici connection pool.
 * Maps undici's failures to UpstreamError codes so every caller answers 502/503/504 the same way.
 */
import { Pool } from 'undici';
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

/** Turns whatever undici threw into an UpstreamError; `sent` tells whether request bytes may have left. */
export function toUpstreamError(error: unknown, member: string, idempotent: boolean): UpstreamError {
  if (error instanceof UpstreamError) return error;
  const code = (error as { code?: string } | undefined)?.code ?? '';
  const message = (error as Error | undefined)?.message ?? String(error);
  if (code === 'UND_ERR_INVALID_ARG' || code === 'UND_ERR_NOT_SUPPORTED') {
    return new UpstreamError('UPSTREAM_PROTOCOL', `request not sendable to ${member}: ${message}`, { cause: error, member, retryable: false, local: true });
  }
  if (CONNECT_FAILURES.has(code)) {
    return new UpstreamError('UPSTREAM_CONNECT', `cannot connect to ${member}: ${code}`, { cause: error, member, retryable: true });
  }
  if (code === 'UND_ERR_CONNECT_TIMEOUT') {
    return new UpstreamError('UPSTREAM_TIMEOUT', `connect to ${member} timed out`, { cause: error, member, retryable: true });
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

export class HttpUpstream implements Upstream {
  readonly url: string;
  private readonly pool: Pool;
  private readonly options: Required<Omit<HttpUpstreamOptions, 'url' | 'socketPath' | 'tls'>>;

  constructor(options: HttpUpstreamOptions) {
    const parsed = new URL(options.url);
    this.url = parsed.origin;
    this.options = { ...HTTP_UPSTREAM_DEFAULTS, ...stripUndefined(options) };
    this.pool = new Pool(this.url, {
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

function stripUndefined<T extends object>(value: T): Partial<T> {
  return Object.fromEntries(Object.entries(value).filter(([, v]) => v !== undefined)) as Partial<T>;
}
