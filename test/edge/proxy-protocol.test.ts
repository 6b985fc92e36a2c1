/**
 * PROXY protocol v1/v2 reader (HAProxy proxy-protocol.txt): section 2.1 human-readable format,
 * 2.2 binary format, detection of a connection without a header, and reading over a real socket.
 * Headers are built byte by byte here, never by the code under test.
 */
import test, { type ExecutionContext } from 'ava';
import { once } from 'node:events';
import { createServer as createHttpServer, request as httpRequest } from 'node:http';
import { createServer as createNetServer, connect, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer, connect as tlsConnect } from 'node:tls';
import { setTimeout as delay } from 'node:timers/promises';
import { generate } from 'selfsigned';
import {
  parseProxyHeader,
  ProxyProtocolError,
  readProxyHeader,
  V1_MAX_BYTES,
  V2_MAX_BYTES,
  type ProxyHeader,
} from '../../edge/proxy-protocol.js';

// ---------- building headers ----------

const ascii = (s: string) => Buffer.from(s, 'latin1');
const SIGNATURE = Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a]);

function port(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
}

/** A v2 header: signature, version/command, family/protocol, length (the body's unless given), body. */
function v2(versionCommand: number, family: number, body: Buffer, declared = body.length): Buffer {
  const length = Buffer.alloc(2);
  length.writeUInt16BE(declared);
  return Buffer.concat([SIGNATURE, Buffer.from([versionCommand, family]), length, body]);
}

const IPV4_BLOCK = Buffer.concat([Buffer.from([192, 0, 2, 1]), Buffer.from([198, 51, 100, 7]), port(56324), port(443)]);
const IPV6_SRC = Buffer.from([0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x01]);
const IPV6_DST = Buffer.from([0x20, 0x01, 0x0d, 0xb8, 0, 0x01, 0, 0, 0, 0, 0, 0, 0, 0x0a, 0, 0]);
const IPV6_BLOCK = Buffer.concat([IPV6_SRC, IPV6_DST, port(40000), port(8443)]);
const IPV4_HEADER: ProxyHeader = {
  version: 2,
  command: 'proxy',
  source: { address: '192.0.2.1', port: 56324 },
  destination: { address: '198.51.100.7', port: 443 },
};

/** A TLV: type, 2-byte length, value. */
function tlv(type: number, value: Buffer): Buffer {
  return Buffer.concat([Buffer.from([type]), port(value.length), value]);
}

function throwsCode(t: ExecutionContext, data: Buffer, code: ProxyProtocolError['code'], message?: string) {
  const err = t.throws(() => parseProxyHeader(data), { instanceOf: ProxyProtocolError }, message);
  t.is(err?.code, code, message ?? data.toString('latin1'));
}

// ---------- 2.1 human-readable format ----------

test('2.1 human-readable format: a TCP4 line gives source and destination, and its length stops at the CRLF', (t) => {
  const line = ascii('PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n');
  const parsed = parseProxyHeader(Buffer.concat([line, ascii('GET / HTTP/1.1\r\n')]));
  t.deepEqual(parsed, {
    header: { version: 1, command: 'proxy', source: { address: '192.0.2.1', port: 56324 }, destination: { address: '198.51.100.7', port: 443 } },
    length: line.length,
  });
});

test('2.1 human-readable format: a TCP6 line gives IPv6 addresses in the compressed form node uses for remoteAddress', (t) => {
  const parsed = parseProxyHeader(ascii('PROXY TCP6 2001:0DB8:0000:0000:0000:0000:0000:0001 2001:db8:1::a:0 40000 8443\r\n'));
  t.deepEqual(parsed?.header, {
    version: 1,
    command: 'proxy',
    source: { address: '2001:db8::1', port: 40000 },
    destination: { address: '2001:db8:1::a:0', port: 8443 },
  });
});

test('2.1 human-readable format: an IPv4-mapped address in a TCP6 line stays in its IPv6 form', (t) => {
  const parsed = parseProxyHeader(ascii('PROXY TCP6 ::ffff:192.0.2.1 ::FFFF:c633:6407 1 2\r\n'));
  t.is(parsed?.header.source?.address, '::ffff:192.0.2.1');
  t.is(parsed?.header.destination?.address, '::ffff:198.51.100.7');
});

test('2.1 human-readable format: ports 0 and 65535 are the bounds', (t) => {
  const parsed = parseProxyHeader(ascii('PROXY TCP4 192.0.2.1 198.51.100.7 0 65535\r\n'));
  t.is(parsed?.header.source?.port, 0);
  t.is(parsed?.header.destination?.port, 65535);
});

test('2.1 human-readable format: UNKNOWN is a local connection and anything after it up to the CRLF is ignored', (t) => {
  t.deepEqual(parseProxyHeader(ascii('PROXY UNKNOWN\r\n')), { header: { version: 1, command: 'local' }, length: 15 });
  const withJunk = ascii('PROXY UNKNOWN whatever \x01 the balancer\tsent\n here\r\n');
  t.deepEqual(parseProxyHeader(withJunk), { header: { version: 1, command: 'local' }, length: withJunk.length });
});

test('2.1 human-readable format: the worst-case 107-byte line (UNKNOWN, two full IPv6 addresses) is accepted', (t) => {
  const full = 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff';
  const line = ascii(`PROXY UNKNOWN ${full} ${full} 65535 65535\r\n`);
  t.is(line.length, V1_MAX_BYTES);
  t.is(V1_MAX_BYTES, 107);
  t.is(parseProxyHeader(line)?.length, 107);
});

test('2.1 human-readable format: no CRLF within 107 bytes is invalid, even before more bytes arrive', (t) => {
  const full = 'ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff';
  // 108 bytes with the CRLF at the end.
  throwsCode(t, ascii(`PROXY UNKNOWN ${full} ${full} 65535 655355\r\n`), 'PROXY_INVALID');
  // 107 bytes, no CR at all: the line can no longer end in time.
  throwsCode(t, ascii(`PROXY UNKNOWN ${'x'.repeat(101)}`), 'PROXY_INVALID');
  // 106 bytes without a CR: the CR would be the 107th byte, leaving no room for the LF.
  throwsCode(t, ascii(`PROXY UNKNOWN ${'x'.repeat(92)}`), 'PROXY_INVALID');
  // 105 bytes without a CR is still a valid prefix.
  t.is(parseProxyHeader(ascii(`PROXY UNKNOWN ${'x'.repeat(91)}`)), undefined);
  // A CR as the 107th byte.
  throwsCode(t, ascii(`PROXY UNKNOWN ${'x'.repeat(92)}\r`), 'PROXY_INVALID');
});

test('2.1 human-readable format: the line must end in CRLF; a CR not followed by LF or a bare LF is invalid', (t) => {
  throwsCode(t, ascii('PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\rX'), 'PROXY_INVALID');
  throwsCode(t, ascii('PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\r\n'), 'PROXY_INVALID');
  throwsCode(t, ascii('PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\n'), 'PROXY_INVALID');
  throwsCode(t, ascii('PROXY UNKNOWN\rX'), 'PROXY_INVALID');
});

test('2.1 human-readable format: an address must be valid and of the family TCP4/TCP6 names', (t) => {
  for (const bad of [
    'PROXY TCP4 2001:db8::1 198.51.100.7 1 2\r\n',
    'PROXY TCP4 192.0.2.1 ::1 1 2\r\n',
    'PROXY TCP6 192.0.2.1 2001:db8::1 1 2\r\n',
    'PROXY TCP6 2001:db8::1 198.51.100.7 1 2\r\n',
    'PROXY TCP4 256.0.2.1 198.51.100.7 1 2\r\n',
    'PROXY TCP4 192.0.02.1 198.51.100.7 1 2\r\n',
    'PROXY TCP4 192.0.2 198.51.100.7 1 2\r\n',
    'PROXY TCP4 localhost 198.51.100.7 1 2\r\n',
    'PROXY TCP6 fe80::1%eth0 2001:db8::1 1 2\r\n',
    'PROXY TCP6 2001:db8:::1 2001:db8::1 1 2\r\n',
  ]) {
    throwsCode(t, ascii(bad), 'PROXY_INVALID', bad);
  }
});

test('2.1 human-readable format: a port is decimal 0-65535 without leading zeros', (t) => {
  for (const bad of ['080', '00', '65536', '99999', '123456', '-1', '+80', '0x50', '8 0', '']) {
    const line = `PROXY TCP4 192.0.2.1 198.51.100.7 ${bad} 443\r\n`;
    throwsCode(t, ascii(line), 'PROXY_INVALID', line);
    const last = `PROXY TCP4 192.0.2.1 198.51.100.7 443 ${bad}\r\n`;
    throwsCode(t, ascii(last), 'PROXY_INVALID', last);
  }
});

test('2.1 human-readable format: fields are separated by exactly one space, no more, no fewer', (t) => {
  for (const bad of [
    'PROXY TCP4  192.0.2.1 198.51.100.7 56324 443\r\n',
    'PROXY  TCP4 192.0.2.1 198.51.100.7 56324 443\r\n',
    'PROXY TCP4 192.0.2.1 198.51.100.7 56324 443 \r\n',
    'PROXY TCP4 192.0.2.1\t198.51.100.7 56324 443\r\n',
    'PROXY TCP4 192.0.2.1 198.51.100.7 56324\r\n',
    'PROXY TCP4 192.0.2.1 198.51.100.7 56324 443 1\r\n',
    'PROXY TCP4\r\n',
    'PROXY \r\n',
  ]) {
    throwsCode(t, ascii(bad), 'PROXY_INVALID', JSON.stringify(bad));
  }
});

test('2.1 human-readable format: only TCP4, TCP6 and UNKNOWN are protocols, in upper case', (t) => {
  for (const bad of ['PROXY UDP4 192.0.2.1 198.51.100.7 1 2\r\n', 'PROXY tcp4 192.0.2.1 198.51.100.7 1 2\r\n', 'PROXY UNKNOWNX\r\n', 'PROXY TCP\r\n']) {
    throwsCode(t, ascii(bad), 'PROXY_INVALID', bad);
  }
  // The signature itself is case-sensitive: a lower-case "proxy" is not a PROXY header at all.
  throwsCode(t, ascii('proxy TCP4 192.0.2.1 198.51.100.7 1 2\r\n'), 'PROXY_MISSING');
});

test('2.1 human-readable format: every proper prefix of a valid line is incomplete (undefined), never an error', (t) => {
  for (const text of [
    'PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n',
    'PROXY TCP6 2001:db8::1 ::ffff:198.51.100.7 0 65535\r\n',
    'PROXY UNKNOWN\r\n',
    'PROXY UNKNOWN 1.2.3.4 5.6.7.8 1 2\r\n',
  ]) {
    const line = ascii(text);
    for (let n = 0; n < line.length; n++) t.is(parseProxyHeader(line.subarray(0, n)), undefined, `${n} bytes of ${JSON.stringify(text)}`);
    t.is(parseProxyHeader(line)?.length, line.length);
  }
});

test('2.1 human-readable format: a line that can no longer become valid is refused before its CRLF arrives', (t) => {
  for (const partial of [
    'PROXY TCP5',
    'PROXY TCP4  ',
    'PROXY TCP4 192.0.2.1  ',
    'PROXY TCP4 300',
    'PROXY TCP4 192.0.2.1.',
    'PROXY TCP4 ::1',
    'PROXY TCP4 192.0.2.1 198.51.100.7 08',
    'PROXY TCP4 192.0.2.1 198.51.100.7 65536',
    'PROXY TCP4 192.0.2.1 198.51.100.7 1 2 ',
    'PROXY TCP6 2001:db8::g',
  ]) {
    throwsCode(t, ascii(partial), 'PROXY_INVALID', partial);
  }
});

// ---------- 2.2 binary format ----------

test('2.2 binary format: PROXY over TCP/IPv4 gives the addresses and ports, and the length stops at the header', (t) => {
  const header = v2(0x21, 0x11, IPV4_BLOCK);
  t.is(header.length, 16 + 12);
  const parsed = parseProxyHeader(Buffer.concat([header, ascii('GET / HTTP/1.1\r\n')]));
  t.deepEqual(parsed, { header: IPV4_HEADER, length: 28 });
});

test('2.2 binary format: PROXY over TCP/IPv6 gives addresses in the compressed form node uses', (t) => {
  const parsed = parseProxyHeader(v2(0x21, 0x21, IPV6_BLOCK));
  t.deepEqual(parsed, {
    header: { version: 2, command: 'proxy', source: { address: '2001:db8::1', port: 40000 }, destination: { address: '2001:db8:1::a:0', port: 8443 } },
    length: 16 + 36,
  });
});

test('2.2 binary format: an IPv4-mapped IPv6 source keeps its IPv6 form (::ffff:a.b.c.d), as node shows it', (t) => {
  const mapped = Buffer.from([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 0, 2, 1]);
  const parsed = parseProxyHeader(v2(0x21, 0x21, Buffer.concat([mapped, IPV6_DST, port(1), port(2)])));
  t.is(parsed?.header.source?.address, '::ffff:192.0.2.1');
});

test('2.2 binary format: TLVs after the address block are skipped and counted in the header length', (t) => {
  const tlvs = Buffer.concat([tlv(0x01, ascii('h2')), tlv(0x02, ascii('www.example.com')), tlv(0x04, Buffer.alloc(3)), tlv(0x20, Buffer.from([0x07, 0, 0, 0, 0]))]);
  const v4 = v2(0x21, 0x11, Buffer.concat([IPV4_BLOCK, tlvs]));
  const trailing = ascii('\x16\x03\x01');
  t.deepEqual(parseProxyHeader(Buffer.concat([v4, trailing])), { header: IPV4_HEADER, length: 16 + 12 + tlvs.length });
  const v6 = v2(0x21, 0x21, Buffer.concat([IPV6_BLOCK, tlvs]));
  t.is(parseProxyHeader(v6)?.header.source?.address, '2001:db8::1');
  t.is(parseProxyHeader(v6)?.length, 16 + 36 + tlvs.length);
  // Incomplete until the last TLV byte is in.
  t.is(parseProxyHeader(v4.subarray(0, v4.length - 1)), undefined);
});

test('2.2 binary format: LOCAL is a local connection whatever the family, and its block is skipped', (t) => {
  t.deepEqual(parseProxyHeader(v2(0x20, 0x00, Buffer.alloc(0))), { header: { version: 2, command: 'local' }, length: 16 });
  t.deepEqual(parseProxyHeader(v2(0x20, 0x11, IPV4_BLOCK)), { header: { version: 2, command: 'local' }, length: 28 });
  t.deepEqual(parseProxyHeader(v2(0x20, 0x21, IPV6_BLOCK)), { header: { version: 2, command: 'local' }, length: 52 });
  // The spec says LOCAL discards the protocol block including the family: neither is checked.
  t.deepEqual(parseProxyHeader(v2(0x20, 0x11, Buffer.alloc(0))), { header: { version: 2, command: 'local' }, length: 16 });
  t.deepEqual(parseProxyHeader(v2(0x20, 0x99, Buffer.alloc(4))), { header: { version: 2, command: 'local' }, length: 20 });
});

test('2.2 binary format: PROXY with AF_UNSPEC or AF_UNIX carries no usable IP and is treated as local', (t) => {
  t.deepEqual(parseProxyHeader(v2(0x21, 0x00, Buffer.alloc(0))), { header: { version: 2, command: 'local' }, length: 16 });
  t.deepEqual(parseProxyHeader(v2(0x21, 0x00, Buffer.alloc(7))), { header: { version: 2, command: 'local' }, length: 23 });
  const unix = Buffer.concat([Buffer.alloc(108, 0), Buffer.alloc(108, 0)]);
  ascii('/run/lb.sock').copy(unix, 0);
  t.deepEqual(parseProxyHeader(v2(0x21, 0x31, unix)), { header: { version: 2, command: 'local' }, length: 16 + 216 });
  t.deepEqual(parseProxyHeader(v2(0x21, 0x32, unix)), { header: { version: 2, command: 'local' }, length: 16 + 216 });
});

test('2.2 binary format: PROXY over UDP (0x12, 0x22) still gives the addresses', (t) => {
  t.deepEqual(parseProxyHeader(v2(0x21, 0x12, IPV4_BLOCK))?.header, IPV4_HEADER);
  t.is(parseProxyHeader(v2(0x21, 0x22, IPV6_BLOCK))?.header.source?.address, '2001:db8::1');
});

test('2.2 binary format: a wrong byte anywhere in the 12-byte signature means no header (PROXY_MISSING), at once', (t) => {
  const good = v2(0x21, 0x11, IPV4_BLOCK);
  for (let i = 0; i < 12; i++) {
    const bad = Buffer.from(good);
    bad[i] ^= 0x20;
    throwsCode(t, bad, 'PROXY_MISSING', `byte ${i}`);
    throwsCode(t, bad.subarray(0, i + 1), 'PROXY_MISSING', `byte ${i}, nothing after it`);
  }
});

test('2.2 binary format: the version nibble must be 2, checked as soon as its byte arrives', (t) => {
  for (const versionCommand of [0x01, 0x11, 0x31, 0xf1]) {
    const header = v2(versionCommand, 0x11, IPV4_BLOCK);
    throwsCode(t, header, 'PROXY_INVALID', `0x${versionCommand.toString(16)}`);
    throwsCode(t, header.subarray(0, 13), 'PROXY_INVALID', `0x${versionCommand.toString(16)} alone`);
  }
});

test('2.2 binary format: the command nibble must be LOCAL (0) or PROXY (1)', (t) => {
  for (const versionCommand of [0x22, 0x2f]) {
    throwsCode(t, v2(versionCommand, 0x11, IPV4_BLOCK), 'PROXY_INVALID');
    throwsCode(t, v2(versionCommand, 0x11, IPV4_BLOCK).subarray(0, 13), 'PROXY_INVALID');
  }
});

test('2.2 binary format: with PROXY, a family/protocol byte outside the defined values is invalid', (t) => {
  for (const family of [0x01, 0x10, 0x13, 0x20, 0x23, 0x30, 0x41, 0xff]) {
    throwsCode(t, v2(0x21, family, IPV6_BLOCK), 'PROXY_INVALID', `0x${family.toString(16)}`);
    throwsCode(t, v2(0x21, family, IPV6_BLOCK).subarray(0, 14), 'PROXY_INVALID', `0x${family.toString(16)} alone`);
  }
});

test('2.2 binary format: a declared length shorter than the address block is invalid, before the block arrives', (t) => {
  for (const [family, block] of [
    [0x11, 12],
    [0x12, 12],
    [0x21, 36],
    [0x22, 36],
    [0x31, 216],
  ] as const) {
    const header = v2(0x21, family, Buffer.alloc(block), block - 1);
    throwsCode(t, header, 'PROXY_INVALID', `0x${family.toString(16)} declaring ${block - 1}`);
    throwsCode(t, header.subarray(0, 16), 'PROXY_INVALID', `0x${family.toString(16)}, fixed part only`);
  }
  throwsCode(t, v2(0x21, 0x11, Buffer.alloc(0)), 'PROXY_INVALID');
});

test('2.2 binary format: a header longer than V2_MAX_BYTES (4096) in total is refused as soon as its length is read', (t) => {
  t.is(V2_MAX_BYTES, 4096);
  const fits = v2(0x21, 0x11, Buffer.concat([IPV4_BLOCK, tlv(0x04, Buffer.alloc(V2_MAX_BYTES - 16 - 12 - 3))]));
  t.is(fits.length, V2_MAX_BYTES);
  t.deepEqual(parseProxyHeader(fits), { header: IPV4_HEADER, length: V2_MAX_BYTES });
  throwsCode(t, v2(0x21, 0x11, IPV4_BLOCK, V2_MAX_BYTES - 16 + 1).subarray(0, 16), 'PROXY_INVALID');
  throwsCode(t, v2(0x21, 0x11, IPV4_BLOCK, 0xffff).subarray(0, 16), 'PROXY_INVALID');
  throwsCode(t, v2(0x20, 0x00, Buffer.alloc(0), 0xffff), 'PROXY_INVALID', 'LOCAL is capped too');
});

test('2.2 binary format: every proper prefix of a valid header is incomplete (undefined), never an error', (t) => {
  for (const header of [v2(0x21, 0x11, IPV4_BLOCK), v2(0x21, 0x21, Buffer.concat([IPV6_BLOCK, tlv(0x01, ascii('h2'))])), v2(0x20, 0x00, Buffer.alloc(0))]) {
    for (let n = 0; n < header.length; n++) t.is(parseProxyHeader(header.subarray(0, n)), undefined, `${n} of ${header.length} bytes`);
    t.is(parseProxyHeader(header)?.length, header.length);
  }
});

// ---------- detection ----------

test('detection: an HTTP request line is PROXY_MISSING from its first byte, without waiting for more', (t) => {
  throwsCode(t, ascii('GET / HTTP/1.1\r\nHost: example.com\r\n\r\n'), 'PROXY_MISSING');
  throwsCode(t, ascii('G'), 'PROXY_MISSING');
  // Shares "P" with the v1 signature, then differs.
  throwsCode(t, ascii('POST / HTTP/1.1\r\n'), 'PROXY_MISSING');
  throwsCode(t, ascii('PUT'), 'PROXY_MISSING');
  throwsCode(t, ascii('PROXY\r\n'), 'PROXY_MISSING');
});

test('detection: a TLS ClientHello (first byte 0x16) is PROXY_MISSING at once', (t) => {
  throwsCode(t, Buffer.from([0x16]), 'PROXY_MISSING');
  throwsCode(t, Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01]), 'PROXY_MISSING');
});

test('detection: no bytes yet is an incomplete prefix', (t) => {
  t.is(parseProxyHeader(Buffer.alloc(0)), undefined);
  t.is(parseProxyHeader(ascii('PROXY')), undefined);
  t.is(parseProxyHeader(SIGNATURE.subarray(0, 5)), undefined);
});

// ---------- reading from a real socket ----------

const WATCHED = ['data', 'readable', 'end', 'close', 'error'] as const;
const listenerCounts = (socket: Socket) => Object.fromEntries(WATCHED.map((e) => [e, socket.listenerCount(e)]));

/** A listening server on 127.0.0.1 handing out its accepted sockets, and a client connected to it. */
async function pair(t: ExecutionContext): Promise<{ client: Socket; server: Socket }> {
  const listener: Server = createNetServer();
  listener.listen(0, '127.0.0.1');
  await once(listener, 'listening');
  const { port: listening } = listener.address() as { port: number };
  const accepted = once(listener, 'connection') as Promise<[Socket]>;
  const client = connect(listening, '127.0.0.1');
  client.on('error', () => {});
  const [server] = await accepted;
  t.teardown(() => {
    client.destroy();
    server.destroy();
    listener.close();
  });
  return { client, server };
}

/** Runs readProxyHeader and checks that it left no listener behind, whatever the outcome. */
async function readChecked(t: ExecutionContext, server: Socket, timeoutMs: number): Promise<ProxyHeader> {
  const before = listenerCounts(server);
  try {
    return await readProxyHeader(server, timeoutMs);
  } finally {
    t.deepEqual(listenerCounts(server), before, 'listeners left behind');
  }
}

async function rejectsCode(t: ExecutionContext, promise: Promise<unknown>, code: ProxyProtocolError['code']): Promise<ProxyProtocolError> {
  const err = await t.throwsAsync(promise, { instanceOf: ProxyProtocolError });
  t.is(err?.code, code);
  return err!;
}

/** Fails instead of hanging to the ava timeout when bytes we expect never come. */
async function within<T>(promise: Promise<T>, what: string, ms = 3_000): Promise<T> {
  const timeout = new AbortController();
  try {
    return await Promise.race([promise, delay(ms, undefined, { signal: timeout.signal }).then(() => Promise.reject(new Error(`${what}: nothing after ${ms} ms`)))]);
  } finally {
    timeout.abort();
  }
}

/** Everything the socket yields from now until `bytes` bytes have arrived. */
async function readBytes(socket: Socket, bytes: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  const read = (async () => {
    for await (const chunk of socket) {
      chunks.push(chunk as Buffer);
      total += (chunk as Buffer).length;
      if (total >= bytes) break;
    }
    return Buffer.concat(chunks);
  })();
  return within(read, `waiting for ${bytes} bytes (got ${total})`);
}

test('socket: a v1 header written one byte at a time, with delays, is reassembled', async (t) => {
  const { client, server } = await pair(t);
  server.setNoDelay(true);
  client.setNoDelay(true);
  const reading = readChecked(t, server, 5_000);
  for (const byte of ascii('PROXY TCP6 2001:db8::1 2001:db8::2 1234 443\r\n')) {
    client.write(Buffer.from([byte]));
    await delay(2);
  }
  t.deepEqual(await reading, { version: 1, command: 'proxy', source: { address: '2001:db8::1', port: 1234 }, destination: { address: '2001:db8::2', port: 443 } });
});

test('socket: a v2 header with TLVs written one byte at a time, with delays, is reassembled, and what follows is kept', async (t) => {
  const { client, server } = await pair(t);
  client.setNoDelay(true);
  const reading = readChecked(t, server, 5_000);
  const header = v2(0x21, 0x11, Buffer.concat([IPV4_BLOCK, tlv(0x01, ascii('http/1.1'))]));
  for (const byte of header) {
    client.write(Buffer.from([byte]));
    await delay(1);
  }
  t.deepEqual(await reading, IPV4_HEADER);
  client.write('after');
  t.is((await readBytes(server, 5)).toString(), 'after');
});

test('socket: bytes after the header in the same chunk are put back intact and in order, before later ones', async (t) => {
  const { client, server } = await pair(t);
  const trailing = Buffer.from(Array.from({ length: 3000 }, (_, i) => i % 251));
  client.write(Buffer.concat([v2(0x21, 0x21, IPV6_BLOCK), trailing]));
  // Let everything land in the socket's buffer first, so it is read in one chunk with the header.
  await delay(50);
  t.is((await readChecked(t, server, 5_000)).source?.address, '2001:db8::1');
  client.write('later');
  t.deepEqual(await readBytes(server, trailing.length + 5), Buffer.concat([trailing, ascii('later')]));
});

test('socket: an http.Server fed with emit("connection") answers a request sent with the header in one packet, and a later one', async (t) => {
  const http = createHttpServer((req, res) => res.end(`${req.method} ${req.url}`));
  t.teardown(() => http.close());
  const { client, server } = await pair(t);
  const responses: Buffer[] = [];
  client.on('data', (chunk: Buffer) => responses.push(chunk));
  const answered = (text: string) =>
    within(
      (async () => {
        while (!Buffer.concat(responses).toString().includes(text)) await delay(5);
      })(),
      `response to ${text}`,
    );
  client.write(Buffer.concat([ascii('PROXY TCP4 192.0.2.1 198.51.100.7 56324 80\r\n'), ascii('GET /first HTTP/1.1\r\nHost: a\r\n\r\n')]));
  await delay(20);
  const header = await readChecked(t, server, 5_000);
  t.is(header.source?.address, '192.0.2.1');
  // A caller that hands the socket over a while later (the next test hands it over at once).
  await delay(20);
  http.emit('connection', server);
  await answered('GET /first');
  client.write('GET /second HTTP/1.1\r\nHost: a\r\n\r\n');
  await answered('GET /second');
  t.regex(Buffer.concat(responses).toString(), /^HTTP\/1\.1 200 OK[\s\S]*GET \/first[\s\S]*HTTP\/1\.1 200 OK[\s\S]*GET \/second$/);
});

test('socket: an http.Server fed with emit("connection") right after the promise settles (no tick in between) still sees the request', async (t) => {
  const http = createHttpServer((req, res) => res.end(`seen ${req.url}`));
  t.teardown(() => http.close());
  const listener = createNetServer((socket) => {
    readProxyHeader(socket, 5_000).then(
      () => http.emit('connection', socket),
      () => socket.destroy(),
    );
  });
  listener.listen(0, '127.0.0.1');
  await once(listener, 'listening');
  t.teardown(() => listener.close());
  const { port: listening } = listener.address() as { port: number };
  const response = new Promise<string>((resolve, reject) => {
    const req = httpRequest({
      host: '127.0.0.1',
      port: listening,
      path: '/same-packet',
      createConnection: (options, callback) => {
        const socket = connect(options.port as number, options.host as string);
        // Written before the connection is up, so it leaves in one writev with the request.
        socket.write(ascii('PROXY TCP4 192.0.2.1 198.51.100.7 56324 80\r\n'));
        callback(null, socket);
        return socket;
      },
    });
    req.on('response', (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (text += d));
      res.on('end', () => resolve(text));
    });
    req.on('error', reject);
    req.end();
  });
  t.is(await within(response, 'response'), 'seen /same-packet');
});

test('socket: a tls.Server fed with emit("connection") completes the handshake when the ClientHello was read with the header', async (t) => {
  const pems = await generate([{ name: 'commonName', value: 'localhost' }], { keySize: 2048 });
  const tls = createTlsServer({ key: pems.private, cert: pems.cert }, (secure) => secure.end('hello over tls'));
  t.teardown(() => tls.close());
  const { client, server } = await pair(t);
  client.write(ascii('PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\n'));
  const secure = tlsConnect({ socket: client, rejectUnauthorized: false, servername: 'localhost' });
  secure.on('error', () => {});
  // Wait for the ClientHello to be buffered behind the header on the server side.
  await delay(100);
  t.true(server.readableLength > 45, `${server.readableLength} bytes buffered`);
  const header = await readChecked(t, server, 5_000);
  t.is(header.source?.port, 56324);
  tls.emit('connection', server);
  const text = (async () => {
    let received = '';
    for await (const chunk of secure) received += String(chunk);
    return received;
  })();
  t.is(await within(text, 'TLS answer'), 'hello over tls');
});

test('socket: no complete header within timeoutMs rejects with PROXY_TIMEOUT and puts the partial bytes back', async (t) => {
  const { client, server } = await pair(t);
  client.write('PROXY TCP4 192.0.2.1 ');
  const started = Date.now();
  await rejectsCode(t, readChecked(t, server, 200), 'PROXY_TIMEOUT');
  const elapsed = Date.now() - started;
  t.true(elapsed >= 190 && elapsed < 2_000, `${elapsed} ms`);
  t.false(server.destroyed, 'the caller destroys the socket, not the reader');
  t.is((await readBytes(server, 21)).toString(), 'PROXY TCP4 192.0.2.1 ');
});

test('socket: an HTTP request instead of a header rejects with PROXY_MISSING at once, not at the timeout, and is put back', async (t) => {
  const { client, server } = await pair(t);
  const request = 'GET / HTTP/1.1\r\nHost: a\r\n\r\n';
  client.write(request);
  const started = Date.now();
  await rejectsCode(t, readChecked(t, server, 10_000), 'PROXY_MISSING');
  t.true(Date.now() - started < 2_000);
  t.false(server.destroyed);
  t.is((await readBytes(server, request.length)).toString(), request);
});

test('socket: a malformed header rejects with PROXY_INVALID as soon as it is seen', async (t) => {
  const { client, server } = await pair(t);
  client.write(v2(0x21, 0x11, IPV4_BLOCK, V2_MAX_BYTES).subarray(0, 16));
  await rejectsCode(t, readChecked(t, server, 10_000), 'PROXY_INVALID');
});

test('socket: the peer ending the connection before the header is complete rejects with PROXY_CLOSED', async (t) => {
  const { client, server } = await pair(t);
  const reading = readChecked(t, server, 5_000);
  client.end('PROXY TCP4 192.0.2.1');
  await rejectsCode(t, reading, 'PROXY_CLOSED');
});

test('socket: the peer resetting the connection rejects with PROXY_CLOSED', async (t) => {
  const { client, server } = await pair(t);
  server.on('error', () => {});
  const reading = readChecked(t, server, 5_000);
  client.write(SIGNATURE.subarray(0, 4));
  await delay(20);
  client.resetAndDestroy();
  await rejectsCode(t, reading, 'PROXY_CLOSED');
});

test('socket: a socket already destroyed rejects with PROXY_CLOSED', async (t) => {
  const { server } = await pair(t);
  server.destroy();
  await rejectsCode(t, readChecked(t, server, 5_000), 'PROXY_CLOSED');
});

test.serial('socket: no timer is left behind once the header is read', async (t) => {
  const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
  const { client, server } = await pair(t);
  const before = timers();
  const reading = readProxyHeader(server, 60_000);
  t.is(timers(), before + 1);
  client.write(ascii('PROXY UNKNOWN\r\n'));
  t.deepEqual(await reading, { version: 1, command: 'local' });
  t.is(timers(), before);
});
