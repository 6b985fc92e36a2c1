/**
 * Server-side request forgery (CRS 934): cloud metadata endpoints anywhere, schemes only a
 * server-side fetcher honours (gopher, dict, file, ldap …), and URLs whose host is the
 * loopback, unspecified or link-local address in any spelling (`127.1`, `2130706433`,
 * `0x7f000001`, `0177.0.0.1`, `[::1]`, `[::ffff:127.0.0.1]`, `localhost`, `*.nip.io` …).
 * Private ranges count from paranoia 2.
 */
import { ALL, ARG, BODY, COOKIE, PATH, custom, regex, type Signature } from './signature.js';

type HostClass = 'loopback' | 'unspecified' | 'link-local' | 'metadata' | 'private' | undefined;

/** WHATWG-style IPv4 parse (1-4 parts, decimal/octal/hex); undefined when not an address. */
export function parseIPv4(host: string): number | undefined {
  const parts = host.split('.');
  if (parts[parts.length - 1] === '' && parts.length > 1) parts.pop();
  if (parts.length === 0 || parts.length > 4) return undefined;
  const nums: number[] = [];
  for (const p of parts) {
    if (p === '' || p.length > 34) return undefined;
    let v: number;
    if (/^0x[0-9a-f]*$/i.test(p)) v = p.length === 2 ? 0 : parseInt(p.slice(2), 16);
    else if (/^0[0-7]+$/.test(p)) v = parseInt(p.slice(1), 8);
    else if (/^\d+$/.test(p)) v = parseInt(p, 10);
    else return undefined;
    if (!Number.isFinite(v)) return undefined;
    nums.push(v);
  }
  const last = nums.pop()!;
  for (const n of nums) if (n > 255) return undefined;
  if (last >= 256 ** (4 - nums.length)) return undefined;
  let ip = 0;
  for (let i = 0; i < nums.length; i++) ip += nums[i]! * 256 ** (3 - i);
  return ip + last;
}

function classifyIPv4(ip: number): HostClass {
  const a = Math.floor(ip / 16777216);
  const b = Math.floor(ip / 65536) % 256;
  if (a === 127) return 'loopback';
  if (a === 0) return 'unspecified';
  if (ip === 0xa9fea9fe || ip === 0x646464c8 || ip === 0xa9feaa02) return 'metadata';
  if (a === 169 && b === 254) return 'link-local';
  if (a === 10 || (a === 172 && b >= 16 && b <= 31) || (a === 192 && b === 168) || (a === 100 && b >= 64 && b <= 127)) return 'private';
  return undefined;
}

/** IPv6 literal (without brackets) to 8 groups; undefined when not one. */
function parseIPv6(text: string): number[] | undefined {
  let s = text;
  const zone = s.indexOf('%');
  if (zone !== -1) s = s.slice(0, zone);
  if (!/^[0-9a-f:.]{2,45}$/i.test(s)) return undefined;
  const lastColon = s.lastIndexOf(':');
  if (lastColon === -1) return undefined;
  const tail: number[] = [];
  if (s.indexOf('.', lastColon) !== -1) {
    const v4 = parseIPv4(s.slice(lastColon + 1));
    if (v4 === undefined) return undefined;
    tail.push(Math.floor(v4 / 65536), v4 % 65536);
    s = s.slice(0, lastColon + 1);
    if (!s.endsWith('::')) s = s.slice(0, -1);
  }
  const halves = s.split('::');
  if (halves.length > 2) return undefined;
  const groupsOf = (h: string) => (h === '' ? [] : h.split(':').map((g) => (/^[0-9a-f]{1,4}$/i.test(g) ? parseInt(g, 16) : NaN)));
  const head = groupsOf(halves[0]!);
  let groups: number[];
  if (halves.length === 2) {
    const rest = groupsOf(halves[1]!);
    const fill = 8 - head.length - rest.length - tail.length;
    if (fill < 0) return undefined;
    groups = [...head, ...new Array<number>(fill).fill(0), ...rest, ...tail];
  } else {
    groups = [...head, ...tail];
  }
  if (groups.length !== 8 || groups.some((g) => Number.isNaN(g))) return undefined;
  return groups;
}

function classifyIPv6(g: number[]): HostClass {
  const zeros = g.slice(0, 5).every((x) => x === 0);
  if (zeros && (g[5] === 0xffff || g[5] === 0)) {
    if (g[5] === 0 && g[6] === 0 && g[7] === 0) return 'unspecified';
    if (g[5] === 0 && g[6] === 0 && g[7] === 1) return 'loopback';
    return classifyIPv4(g[6]! * 65536 + g[7]!);
  }
  if (g[0] === 0xfd00 && g[1] === 0xec2 && g[7] === 0x254) return 'metadata';
  if ((g[0]! & 0xffc0) === 0xfe80) return 'link-local';
  if ((g[0]! & 0xfe00) === 0xfc00) return 'private';
  return undefined;
}

const LOOPBACK_NAMES = /^(?:localhost|localhost\.localdomain|ip6-localhost|ip6-loopback|localtest\.me|lvh\.me|vcap\.me|lacolhost\.com)$|\.(?:localhost|localtest\.me|lvh\.me)$|(?:^|[.-])(?:127|0)[.-]\d{1,3}[.-]\d{1,3}[.-]\d{1,3}[.-](?:nip|sslip|xip)\.io$/;
const METADATA_NAMES = /^(?:metadata|metadata\.google\.internal|metadata\.azure\.com|instance-data|instance-data\.ec2\.internal|metadata\.packet\.net|metadata\.tencentyun\.com)$/;

export function classifyHost(raw: string): HostClass {
  let host = raw.toLowerCase();
  if (host.endsWith('.')) host = host.slice(0, -1);
  if (host.startsWith('[')) {
    const g = parseIPv6(host.slice(1, host.endsWith(']') ? -1 : undefined));
    return g === undefined ? undefined : classifyIPv6(g);
  }
  if (LOOPBACK_NAMES.test(host)) return 'loopback';
  if (METADATA_NAMES.test(host)) return 'metadata';
  const v4 = parseIPv4(host);
  return v4 === undefined ? undefined : classifyIPv4(v4);
}

/** The host of the URL authority starting at `i`: userinfo, port and path cut off. */
function hostAt(s: string, i: number): string {
  const end = Math.min(s.length, i + 256);
  let j = i;
  while (j < end) {
    const c = s.charCodeAt(j);
    if (c === 47 || c === 63 || c === 35 || c === 92 || c <= 32) break;
    j++;
  }
  let auth = s.slice(i, j);
  const at = auth.lastIndexOf('@');
  if (at !== -1) auth = auth.slice(at + 1);
  if (auth.startsWith('[')) {
    const close = auth.indexOf(']');
    return close === -1 ? auth : auth.slice(0, close + 1);
  }
  const colon = auth.indexOf(':');
  return colon === -1 ? auth : auth.slice(0, colon);
}

const MAX_URLS = 8;

/** The first URL in `form` (after `://`, or `//` at its start) whose host is internal at this level. */
function internalUrl(form: string, privateToo: boolean): string | undefined {
  let from = 0;
  const starts: number[] = [];
  if (form.startsWith('//')) starts.push(2);
  for (let k = 0; k < MAX_URLS; k++) {
    const at = form.indexOf('://', from);
    if (at === -1) break;
    starts.push(at + 3);
    from = at + 3;
  }
  for (const start of starts) {
    const host = hostAt(form, start);
    if (host === '') continue;
    const cls = classifyHost(host);
    if (cls !== undefined && (cls !== 'private' || privateToo)) return form.slice(Math.max(0, start - 12), start + host.length + 8);
  }
  return undefined;
}

const URL_SCOPE = PATH | ARG | COOKIE | BODY;

export const ssrfSignatures: readonly Signature[] = [
  regex('ssrf-metadata-host', 'ssrf', 1, ALL, 'cloud metadata address', /\b169\.254\.169\.254\b|\b169\.254\.170\.2\b|\bmetadata\.google\.internal\b|\bmetadata\.(?:azure|tencentyun)\.com\b|\b100\.100\.100\.200\b|\bfd00:ec2::254\b|\binstance-data\.ec2\.internal\b/i),
  regex('ssrf-metadata-path', 'ssrf', 1, ARG | COOKIE | BODY, 'cloud metadata path', /\/latest\/(?:meta-data|user-data|dynamic\/instance-identity|api\/token)\b|\/computeMetadata\/v1\b|\/metadata\/(?:instance|identity\/oauth2)\b|\/openstack\/latest\/meta_data/i),
  regex('ssrf-scheme', 'ssrf', 1, URL_SCOPE | PATH, 'server-side URL scheme', /\b(?:gopher|dict|ldaps?|tftp|jar|netdoc)\s{0,4}:\/\/|\bfile:(?:\/|\\\\)|\bjar:(?:https?|file|ftp):/i),
  custom('ssrf-internal-url', 'ssrf', 1, URL_SCOPE, 'URL to a loopback or link-local host', (form) => (form.includes('//') ? internalUrl(form, false) : undefined)),
  custom('ssrf-private-url', 'ssrf', 2, URL_SCOPE, 'URL to a private address', (form) => (form.includes('//') ? internalUrl(form, true) : undefined)),
];
