/**
 * Shared helpers for the Outpost k6 scripts. Types only on top of plain JavaScript, so k6
 * (>= 0.57, TypeScript on by default) runs the .ts files as they are; no bundling.
 */
import type { RefinedResponse, ResponseType } from 'k6/http';

/** Base URL of the edge under test: `-e TARGET=http://edge-1:8080`, default a local edge. */
export const TARGET: string = (__ENV.TARGET || 'http://127.0.0.1:8080').replace(/\/+$/, '');

/** A number from the environment (`-e NAME=value`), or the default. */
export function envNumber(name: string, fallback: number): number {
  const raw = __ENV[name];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isFinite(value)) throw new Error(`${name} must be a number, got ${JSON.stringify(raw)}`);
  return value;
}

export function envString(name: string, fallback: string): string {
  const raw = __ENV[name];
  return raw === undefined || raw === '' ? fallback : raw;
}

type AnyResponse = RefinedResponse<ResponseType | undefined>;

/** A response header by (case-insensitive) name; k6 canonicalises names, but be lenient. */
export function header(res: AnyResponse, name: string): string {
  const wanted = name.toLowerCase();
  for (const key of Object.keys(res.headers)) if (key.toLowerCase() === wanted) return res.headers[key] ?? '';
  return '';
}

/**
 * The member of Cache-Status (RFC 9211) that the node answering us added: the last one. Earlier
 * members are the shield's ("shield-1; hit, edge-1; fwd=uri-miss; …" is an edge miss that the
 * shield answered from its cache).
 */
export function edgeCacheStatus(res: AnyResponse): string {
  const members = header(res, 'Cache-Status').split(',');
  return (members[members.length - 1] ?? '').trim();
}

/** Parameters of one Cache-Status member: "edge-1; hit; ttl=58" → ["edge-1", "hit", "ttl=58"]. */
function params(member: string): string[] {
  return member.split(';').map((p) => p.trim());
}

/** The edge served the response from its cache, fresh. */
export function isEdgeHit(res: AnyResponse): boolean {
  return params(edgeCacheStatus(res)).includes('hit');
}

/** The edge served a stale copy and refreshed it in the background (stale-while-revalidate). */
export function isEdgeStaleWhileRevalidate(res: AnyResponse): boolean {
  const p = params(edgeCacheStatus(res));
  return p.includes('fwd=stale') && p.includes('detail=background-revalidate');
}

/** The `fwd=` parameter of the edge's member ("uri-miss", "stale", "bypass", …), or "" on a hit. */
export function edgeForward(res: AnyResponse): string {
  const fwd = params(edgeCacheStatus(res)).find((p) => p.startsWith('fwd='));
  return fwd === undefined ? '' : fwd.slice('fwd='.length);
}

/** A query value unique to this test run, so a "cold" URL really is cold on a warm cache. */
export function runId(): string {
  return `${Date.now().toString(36)}-${Math.floor(Math.random() * 1e9).toString(36)}`;
}
