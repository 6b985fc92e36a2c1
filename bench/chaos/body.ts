/**
 * The chaos run's correctness oracle, shared by bench/chaos-origin.ts and the load generator:
 * the body of key K at version V is a deterministic slice of one seeded byte pattern, so the
 * client recomputes what the origin sent for the version a response claims (x-version) and
 * compares byte for byte, without either side keeping bodies.
 */
import { crc32 } from 'node:zlib';
import { fmix32 } from '../../origin-shield/hash-ring.js';

export const MIN_BODY = 1024;
export const MAX_BODY = 5 * 1024 * 1024;
const PATTERN_BYTES = MAX_BODY + 1024 * 1024;

let pattern: Buffer | undefined;
function bytes(): Buffer {
  if (pattern) return pattern;
  const words = new Uint32Array(PATTERN_BYTES / 4);
  let state = 0x2545f491;
  for (let i = 0; i < words.length; i++) {
    // xorshift32
    state ^= state << 13;
    state ^= state >>> 17;
    state ^= state << 5;
    words[i] = state >>> 0;
  }
  pattern = Buffer.from(words.buffer);
  return pattern;
}

/** Body length of key K at version V: log-uniform over [MIN_BODY, MAX_BODY], so it changes with the version too. */
export function bodySize(key: number, version: number): number {
  const u = fmix32(Math.imul(key + 1, 0x9e3779b1) ^ Math.imul(version, 0x27d4eb2f)) / 4294967296;
  return Math.round(MIN_BODY * Math.pow(MAX_BODY / MIN_BODY, u));
}

/** The exact body the origin sends for (key, version): a view of the pattern, never copied. */
export function expectedBody(key: number, version: number): Buffer {
  const size = bodySize(key, version);
  const offset = fmix32(Math.imul(key + 7, 0x85ebca77) ^ Math.imul(version + 3, 0xc2b2ae3d)) % (PATTERN_BYTES - size + 1);
  return bytes().subarray(offset, offset + size);
}

export const etagOf = (key: number, version: number) => `"k${key}-v${version}"`;
export const checksumOf = (body: Buffer) => crc32(body).toString(16).padStart(8, '0');
export const keyPath = (key: number) => `/k/${key}`;
export function keyOfPath(path: string): number | undefined {
  const match = /^\/k\/(\d+)$/.exec(path);
  return match ? Number(match[1]) : undefined;
}
