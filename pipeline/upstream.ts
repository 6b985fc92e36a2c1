/**
 * What sits behind the cache pipeline. The edge's upstream is a ring of shields; the shield's
 * is an origin pool; both are an `Upstream`. The pipeline never knows which.
 */
import type { Readable } from 'node:stream';

export type HeaderMap = Record<string, string | string[]>;

export interface UpstreamRequest {
  method: string;
  /** Path and query, as sent upstream. */
  path: string;
  /** Request headers, hop-by-hop fields already removed; includes host. */
  headers: HeaderMap;
  /** Request body, or null when there is none. */
  body: Readable | null;
  /** The cache key (primary key); upstreams that hash (shield ring, consistent-hash balancer) use it. */
  cacheKey: string;
  /** Safe to retry on another member after a connect failure or reset (GET, HEAD, OPTIONS, PUT, DELETE...). */
  idempotent: boolean;
  /** Aborts the upstream request (the client went away). */
  signal?: AbortSignal;
  /** Called for each interim (1xx) response before the final one (103 Early Hints, 102). */
  onInterim?: (status: number, headers: HeaderMap) => void;
}

export interface UpstreamResponse {
  statusCode: number;
  headers: HeaderMap;
  /** Errors when the body is cut short or longer than its Content-Length. */
  body: Readable;
  /** Which member answered (origin or shield address), for logs and Cache-Status. */
  member: string;
}

export interface Upstream {
  request(request: UpstreamRequest): Promise<UpstreamResponse>;
  close(): Promise<void>;
}

export type UpstreamErrorCode =
  /** Could not connect, or the connection was refused or reset before a response: 502. */
  | 'UPSTREAM_CONNECT'
  /** No response headers (or no body bytes) within the timeout: 504. */
  | 'UPSTREAM_TIMEOUT'
  /** Circuit breaker open: too many concurrent requests to the member(s): 503. */
  | 'UPSTREAM_OVERLOADED'
  /** The response was malformed or otherwise unusable: 502. */
  | 'UPSTREAM_PROTOCOL';

/** Errors from an upstream carry a stable code, the status to answer with, and whether a retry may help. */
export class UpstreamError extends Error {
  readonly code: UpstreamErrorCode;
  readonly status: number;
  readonly retryable: boolean;
  readonly member: string | undefined;
  /** Refused before any byte left this process (an invalid request): says nothing about the member's health. */
  readonly local: boolean;
  /**
   * The request provably never reached the member: no connection was made (refused, connect
   * timeout, DNS failure). Repeating it elsewhere cannot repeat its effect, so retries of it are
   * not rationed by the retry budget. False whenever request bytes may have left.
   */
  readonly neverSent: boolean;
  constructor(code: UpstreamErrorCode, message: string, options?: { cause?: unknown; member?: string; retryable?: boolean; local?: boolean; neverSent?: boolean }) {
    super(message, { cause: options?.cause });
    this.name = 'UpstreamError';
    this.code = code;
    this.status = code === 'UPSTREAM_TIMEOUT' ? 504 : code === 'UPSTREAM_OVERLOADED' ? 503 : 502;
    this.retryable = options?.retryable ?? code === 'UPSTREAM_CONNECT';
    this.member = options?.member;
    this.local = options?.local ?? false;
    this.neverSent = options?.neverSent ?? false;
  }
}

/** Methods whose requests may be repeated without changing the outcome (RFC 9110 §9.2.2). */
const IDEMPOTENT_METHODS = new Set(['GET', 'HEAD', 'OPTIONS', 'TRACE', 'PUT', 'DELETE']);

export function isIdempotent(method: string): boolean {
  return IDEMPOTENT_METHODS.has(method);
}
