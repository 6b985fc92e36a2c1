/**
 * PROXY protocol v1 and v2 reader (HAProxy, https://www.haproxy.org/download/2.9/doc/proxy-protocol.txt),
 * for an edge behind a TCP load balancer: the balancer's header carries the real client address,
 * which the socket cannot. Written against the spec rather than taken from proxy-protocol-js
 * because we need framing over a stream (the header may arrive in pieces and be followed by the
 * HTTP or TLS bytes in the same packet), a size cap, a timeout, and strict validation: the address
 * it yields is the one we log, rate-limit and run the WAF on, so a header we only half understand
 * is refused rather than guessed at.
 */
import { isIP, SocketAddress, type Socket } from 'node:net';

export interface ProxyAddress {
  address: string;
  port: number;
}

export interface ProxyHeader {
  version: 1 | 2;
  /** 'local': a health check from the balancer itself (v2 LOCAL, v1 UNKNOWN): use the socket's own addresses. */
  command: 'proxy' | 'local';
  /** Client (source) and the address it connected to (destination); absent for 'local'. */
  source?: ProxyAddress;
  destination?: ProxyAddress;
}

export type ProxyProtocolErrorCode = 'PROXY_MISSING' | 'PROXY_INVALID' | 'PROXY_TIMEOUT' | 'PROXY_CLOSED';

export class ProxyProtocolError extends Error {
  override readonly name = 'ProxyProtocolError';

  constructor(
    readonly code: ProxyProtocolErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** §2.1: "PROXY UNKNOWN" with two full-length IPv6 addresses and ports, CRLF included. */
export const V1_MAX_BYTES = 107;
/**
 * §2.2 allows 16 + 65535 bytes; a balancer sends the address block plus a few TLVs, so anything
 * past this is refused before we buffer it.
 */
export const V2_MAX_BYTES = 4096;

const V1_PREFIX = Buffer.from('PROXY ', 'latin1');
const V2_SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);
const V2_FIXED_BYTES = 16;
const CR = 0x0d;
const LF = 0x0a;

const missing = (why: string) => new ProxyProtocolError('PROXY_MISSING', `no PROXY protocol header: ${why}`);
const invalid = (why: string) => new ProxyProtocolError('PROXY_INVALID', `invalid PROXY protocol header: ${why}`);

/**
 * Parses a header at the start of `data`. Returns the header and its length in bytes,
 * undefined when `data` is a valid but incomplete prefix (wait for more bytes), or throws
 * ProxyProtocolError (PROXY_MISSING when the bytes cannot be the start of any PROXY header,
 * PROXY_INVALID when they are a malformed one).
 */
export function parseProxyHeader(data: Buffer): { header: ProxyHeader; length: number } | undefined {
  if (data.length === 0) return undefined;
  // The first byte tells the versions apart: 'P' or CR.
  const magic = data[0] === V1_PREFIX[0] ? V1_PREFIX : V2_SIGNATURE;
  const n = Math.min(data.length, magic.length);
  for (let i = 0; i < n; i++) {
    if (data[i] !== magic[i]) throw missing(`byte ${i} is 0x${data[i]!.toString(16).padStart(2, '0')}`);
  }
  if (data.length < magic.length) return undefined;
  return magic === V1_PREFIX ? parseV1(data) : parseV2(data);
}

// ---- §2.1 human-readable format ----

const V1_PROTOCOLS = ['TCP4', 'TCP6', 'UNKNOWN'];
const PORT = /^(?:0|[1-9]\d{0,4})$/;
const OCTET = /^(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]\d|\d)$/;
const PARTIAL_OCTET = /^(?:0|[1-9]\d{0,2})?$/;
const PARTIAL_IPV6 = /^[0-9a-fA-F:.]{0,45}$/;

function parseV1(data: Buffer): { header: ProxyHeader; length: number } | undefined {
  const window = data.subarray(0, V1_MAX_BYTES);
  const cr = window.indexOf(CR);
  if (cr === -1 || cr + 1 === data.length) {
    // Not terminated yet: refuse a line that can no longer become valid instead of waiting for it.
    checkV1Fields(window.subarray(0, cr === -1 ? window.length : cr).toString('latin1'), false);
    if (cr === -1 ? window.length >= V1_MAX_BYTES - 1 : cr + 2 > V1_MAX_BYTES) {
      throw invalid(`no CRLF within ${V1_MAX_BYTES} bytes`);
    }
    return undefined;
  }
  if (data[cr + 1] !== LF) throw invalid('CR not followed by LF');
  if (cr + 2 > V1_MAX_BYTES) throw invalid(`no CRLF within ${V1_MAX_BYTES} bytes`);
  return { header: checkV1Fields(window.subarray(0, cr).toString('latin1'), true)!, length: cr + 2 };
}

/**
 * Validates the line before its CR. When `complete` is false the line is what has arrived so
 * far: every field followed by a space must be valid, and the last one must be able to become so.
 */
function checkV1Fields(line: string, complete: boolean): ProxyHeader | undefined {
  const fields = line.split(' ').slice(1);
  const protocol = fields[0]!;
  if (!complete && fields.length === 1) {
    if (!V1_PROTOCOLS.some((p) => p.startsWith(protocol))) throw invalid(`unknown protocol ${JSON.stringify(protocol)}`);
    return undefined;
  }
  // The spec tells receivers to ignore whatever follows UNKNOWN, addresses or not.
  if (protocol === 'UNKNOWN') return complete ? { version: 1, command: 'local' } : undefined;
  if (protocol !== 'TCP4' && protocol !== 'TCP6') throw invalid(`unknown protocol ${JSON.stringify(protocol)}`);
  const family = protocol === 'TCP4' ? 4 : 6;
  const rest = fields.slice(1);
  if (rest.length > 4 || (complete && rest.length < 4)) throw invalid(`expected 4 fields after ${protocol}, got ${rest.length}`);
  const last = complete ? rest.length : rest.length - 1;
  for (let i = 0; i < rest.length; i++) {
    const value = rest[i]!;
    const isAddress = i < 2;
    if (i < last) {
      if (isAddress ? !isAddressOf(value, family) : !isPort(value)) {
        throw invalid(`bad ${isAddress ? `IPv${family} address` : 'port'} ${JSON.stringify(value)}`);
      }
    } else if (!(isAddress ? couldBeAddressOf(value, family) : couldBePort(value))) {
      throw invalid(`bad ${isAddress ? `IPv${family} address` : 'port'} ${JSON.stringify(value)}`);
    }
  }
  if (!complete) return undefined;
  const [src, dst, sport, dport] = rest as [string, string, string, string];
  return {
    version: 1,
    command: 'proxy',
    source: { address: normalize(src, family), port: Number(sport) },
    destination: { address: normalize(dst, family), port: Number(dport) },
  };
}

function isAddressOf(value: string, family: 4 | 6): boolean {
  // isIP accepts an IPv6 zone ("fe80::1%eth0"), which no balancer sends and §2.1 does not allow.
  return isIP(value) === family && !value.includes('%');
}

function couldBeAddressOf(value: string, family: 4 | 6): boolean {
  if (family === 6) return PARTIAL_IPV6.test(value);
  const octets = value.split('.');
  if (octets.length > 4) return false;
  const last = octets.pop()!;
  return octets.every((o) => OCTET.test(o)) && PARTIAL_OCTET.test(last) && Number(last) <= 255;
}

function isPort(value: string): boolean {
  return PORT.test(value) && Number(value) <= 65535;
}

function couldBePort(value: string): boolean {
  return value === '' || isPort(value);
}

/** The form node gives remoteAddress, so the header's address and a direct client's compare equal. */
function normalize(address: string, family: 4 | 6): string {
  return family === 4 ? address : new SocketAddress({ address, family: 'ipv6' }).address;
}

// ---- §2.2 binary format ----

const V2_COMMAND_LOCAL = 0x0;
const V2_COMMAND_PROXY = 0x1;
/** Address block sizes by the family/protocol byte; null: no usable IP (AF_UNSPEC, AF_UNIX). */
const V2_FAMILIES = new Map<number, { family: 4 | 6; size: number } | { family: null; size: number }>([
  [0x00, { family: null, size: 0 }],
  [0x11, { family: 4, size: 12 }],
  [0x12, { family: 4, size: 12 }],
  [0x21, { family: 6, size: 36 }],
  [0x22, { family: 6, size: 36 }],
  [0x31, { family: null, size: 216 }],
  [0x32, { family: null, size: 216 }],
]);

function parseV2(data: Buffer): { header: ProxyHeader; length: number } | undefined {
  // Each byte is checked as soon as it arrives so a bad header fails without waiting for the rest.
  const versionCommand = data[12];
  if (versionCommand === undefined) return undefined;
  if (versionCommand >> 4 !== 2) throw invalid(`version ${versionCommand >> 4}, expected 2`);
  const command = versionCommand & 0x0f;
  if (command !== V2_COMMAND_LOCAL && command !== V2_COMMAND_PROXY) throw invalid(`unassigned command 0x${command.toString(16)}`);

  const familyByte = data[13];
  if (familyByte === undefined) return undefined;
  // LOCAL: the spec says the address block, family included, is discarded, so it is not checked.
  const family = command === V2_COMMAND_PROXY ? V2_FAMILIES.get(familyByte) : undefined;
  if (command === V2_COMMAND_PROXY && family === undefined) throw invalid(`unassigned family/protocol 0x${familyByte.toString(16).padStart(2, '0')}`);

  if (data.length < V2_FIXED_BYTES) return undefined;
  const declared = data.readUInt16BE(14);
  const length = V2_FIXED_BYTES + declared;
  if (length > V2_MAX_BYTES) throw invalid(`${length} bytes, more than the ${V2_MAX_BYTES} accepted`);
  if (family !== undefined && declared < family.size) throw invalid(`length ${declared} does not cover the ${family.size}-byte address block`);
  if (data.length < length) return undefined;

  // TLVs after the address block are skipped: nothing we use is carried there.
  if (family === undefined || family.family === null) return { header: { version: 2, command: 'local' }, length };
  const block = data.subarray(V2_FIXED_BYTES, V2_FIXED_BYTES + family.size);
  const addressBytes = family.family === 4 ? 4 : 16;
  const address = (offset: number) => (family.family === 4 ? formatIPv4(block, offset) : formatIPv6(block, offset));
  return {
    header: {
      version: 2,
      command: 'proxy',
      source: { address: address(0), port: block.readUInt16BE(2 * addressBytes) },
      destination: { address: address(addressBytes), port: block.readUInt16BE(2 * addressBytes + 2) },
    },
    length,
  };
}

function formatIPv4(block: Buffer, offset: number): string {
  return `${block[offset]}.${block[offset + 1]}.${block[offset + 2]}.${block[offset + 3]}`;
}

function formatIPv6(block: Buffer, offset: number): string {
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(block.readUInt16BE(offset + i).toString(16));
  return normalize(groups.join(':'), 6);
}

// ---- reading from a socket ----

/**
 * Reads the header from a socket that has just connected (nothing else has read from it):
 * resolves with the header once it is complete, after putting any bytes that followed it back
 * with socket.unshift() so the HTTP or TLS server that gets the socket next sees them; rejects
 * with ProxyProtocolError on missing/invalid header, on timeout (no complete header within
 * timeoutMs: PROXY_TIMEOUT), or when the socket ends/closes/errors first (PROXY_CLOSED). It never destroys the
 * socket itself (the caller does) and removes every listener and timer it added in every outcome.
 * On PROXY_MISSING, PROXY_INVALID and PROXY_TIMEOUT the bytes read are put back too, so the socket
 * is left as it was found (a caller may still answer a plain HTTP client with a 400).
 */
export function readProxyHeader(socket: Socket, timeoutMs: number): Promise<ProxyHeader> {
  return new Promise<ProxyHeader>((resolve, reject) => {
    if (socket.destroyed || socket.readableEnded) {
      reject(new ProxyProtocolError('PROXY_CLOSED', 'connection closed before a PROXY protocol header'));
      return;
    }
    let received: Buffer = Buffer.alloc(0);

    const finish = (putBack: Buffer | undefined, settle: () => void) => {
      clearTimeout(timer);
      socket.off('readable', onReadable);
      socket.off('end', onClosed);
      socket.off('close', onClosed);
      socket.off('error', onError);
      // Removing the last 'readable' listener lets the stream return to its initial (null)
      // flowing state on the next tick, so the next owner's 'data' listener starts the flow.
      if (putBack !== undefined && putBack.length > 0) socket.unshift(putBack);
      settle();
    };

    // 'readable' + read(), not 'data': in paused mode nothing is emitted to nobody between the
    // header's end and the next owner attaching, and unshift() puts bytes back in order.
    const onReadable = () => {
      let chunk: Buffer | null;
      while ((chunk = socket.read() as Buffer | null) !== null) {
        received = received.length === 0 ? chunk : Buffer.concat([received, chunk]);
        let parsed: ReturnType<typeof parseProxyHeader>;
        try {
          parsed = parseProxyHeader(received);
        } catch (err) {
          finish(received, () => reject(err));
          return;
        }
        if (parsed !== undefined) {
          const { header, length } = parsed;
          finish(received.subarray(length), () => resolve(header));
          return;
        }
      }
    };
    const onClosed = () => finish(undefined, () => reject(new ProxyProtocolError('PROXY_CLOSED', 'connection closed before a complete PROXY protocol header')));
    const onError = (err: Error) => finish(undefined, () => reject(new ProxyProtocolError('PROXY_CLOSED', `connection failed before a complete PROXY protocol header: ${err.message}`, { cause: err })));
    const timer = setTimeout(
      () => finish(received, () => reject(new ProxyProtocolError('PROXY_TIMEOUT', `no complete PROXY protocol header within ${timeoutMs} ms`))),
      timeoutMs,
    );

    socket.on('readable', onReadable);
    socket.on('end', onClosed);
    socket.on('close', onClosed);
    socket.on('error', onError);
  });
}
