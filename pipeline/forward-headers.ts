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
  /** The connection's peer (or the PROXY header's client): the hop this node appends to X-Forwarded-For. */
  peerAddress: string;
  /** Whether the peer is a trusted hop whose X-Forwarded-*, Forwarded and X-Request-Id may be kept. */
  peerTrusted: boolean;
  proto: 'http' | 'https';
  /** The host in the cache key: the one the origin is told, whatever else the client sent. */
  host: string;
}

/**
 * Sets X-Forwarded-For/-Proto/-Host and Forwarded (RFC 7239). What a client sent is kept only
 * from a trusted hop (X-Forwarded-For and Forwarded extended, its X-Forwarded-Proto kept).
 * X-Forwarded-Host is always the cache key's host: an origin that builds links from it must
 * never fill the cache for one host with links to another the client named (cache poisoning).
 */
export function setForwarded(headers: HeaderMap, ctx: ForwardedContext): void {
  const priorFor = ctx.peerTrusted ? headers['x-forwarded-for'] : undefined;
  const prior = priorFor === undefined ? '' : `${Array.isArray(priorFor) ? priorFor.join(', ') : priorFor}, `;
  headers['x-forwarded-for'] = prior + ctx.peerAddress;
  if (!ctx.peerTrusted || headers['x-forwarded-proto'] === undefined) headers['x-forwarded-proto'] = ctx.proto;
  if (ctx.host !== '') headers['x-forwarded-host'] = ctx.host;
  else delete headers['x-forwarded-host'];
  const priorForwarded = ctx.peerTrusted ? headers['forwarded'] : undefined;
  const element = forwardedElement(ctx);
  headers['forwarded'] = priorForwarded === undefined ? element : `${Array.isArray(priorForwarded) ? priorForwarded.join(', ') : priorForwarded}, ${element}`;
}

/** This hop's Forwarded element (RFC 7239 §4): an IPv6 node is bracketed and quoted (§6), a host with a port quoted. */
function forwardedElement(ctx: ForwardedContext): string {
  const node = ctx.peerAddress.includes(':') ? `"[${ctx.peerAddress}]"` : ctx.peerAddress || 'unknown';
  const host = ctx.host === '' ? '' : `;host=${/^[a-z0-9.\-]+$/i.test(ctx.host) ? ctx.host : `"${ctx.host.replace(/["\\]/g, '')}"`}`;
  return `for=${node}${host};proto=${ctx.proto}`;
}
