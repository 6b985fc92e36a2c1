/**
 * Header rewriting at the proxy boundary (RFC 9110 §7.6): hop-by-hop fields removed in both
 * directions, Via added, X-Forwarded-* set from what this node saw.
 */
import type { HeaderMap } from './upstream.js';

/** Hop-by-hop fields (RFC 9110 §7.6.1) and legacy ones no proxy forwards. */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
  'proxy-authorization',
  'proxy-authenticate',
  'http2-settings',
]);

/** Copies `headers` without hop-by-hop fields, including every field Connection names. */
export function withoutHopByHop(headers: Record<string, string | string[] | undefined>, drop?: ReadonlySet<string>): HeaderMap {
  const connection = headers['connection'];
  let named: Set<string> | undefined;
  if (connection !== undefined) {
    named = new Set(
      (Array.isArray(connection) ? connection.join(',') : connection)
        .split(',')
        .map((n) => n.trim().toLowerCase())
        .filter(Boolean),
    );
  }
  const out: HeaderMap = {};
  for (const name in headers) {
    const value = headers[name];
    if (value === undefined || HOP_BY_HOP.has(name) || named?.has(name) || drop?.has(name)) continue;
    out[name] = value;
  }
  return out;
}

/** Appends this node to Via (RFC 9110 §7.6.3). */
export function appendVia(existing: string | string[] | undefined, httpVersion: string, nodeName: string): string {
  const hop = `${httpVersion === '2.0' ? '2' : httpVersion} ${nodeName}`;
  if (existing === undefined) return hop;
  return `${Array.isArray(existing) ? existing.join(', ') : existing}, ${hop}`;
}

export interface ForwardedContext {
  /** The connection's peer: the hop this node appends to X-Forwarded-For. */
  peerAddress: string;
  /** Whether the peer is a trusted hop whose X-Forwarded-* may be kept. */
  peerTrusted: boolean;
  proto: 'http' | 'https';
  host: string | undefined;
}

/** Sets X-Forwarded-For/-Proto/-Host. A client's own X-Forwarded-* is kept only from trusted hops. */
export function setForwarded(headers: HeaderMap, ctx: ForwardedContext): void {
  const priorFor = ctx.peerTrusted ? headers['x-forwarded-for'] : undefined;
  const prior = priorFor === undefined ? '' : `${Array.isArray(priorFor) ? priorFor.join(', ') : priorFor}, `;
  headers['x-forwarded-for'] = prior + ctx.peerAddress;
  if (!ctx.peerTrusted || headers['x-forwarded-proto'] === undefined) headers['x-forwarded-proto'] = ctx.proto;
  if (!ctx.peerTrusted || headers['x-forwarded-host'] === undefined) {
    if (ctx.host !== undefined) headers['x-forwarded-host'] = ctx.host;
    else delete headers['x-forwarded-host'];
  }
}
