/**
 * Certificates for TLS tests, made on the fly with selfsigned: EC P-256 keys take tens of
 * milliseconds where RSA takes hundreds, so each test can make its own.
 */
import { writeFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { generate } from 'selfsigned';
import type { CertificatePair } from '../../edge/tls/certificates.js';

export interface PemPair {
  cert: string;
  key: string;
}

export interface CertificateOptions {
  /** Signs with this CA; default: self-signed. */
  ca?: PemPair;
  /** The subject CN (default: the first name). */
  cn?: string;
  /** Leave out the subjectAltName extension: the CN alone names the certificate. */
  noSubjectAltName?: boolean;
  notBefore?: Date;
  notAfter?: Date;
}

/** `options.ca`: makes an intermediate signed by that CA instead of a self-signed root. */
export async function makeCa(name = 'Outpost Test CA', options: { ca?: PemPair } = {}): Promise<PemPair> {
  const notBeforeDate = new Date(Date.now() - 60_000);
  const generated = await generate([{ name: 'commonName', value: name }], {
    keyType: 'ec',
    curve: 'P-256',
    algorithm: 'sha256',
    notBeforeDate,
    notAfterDate: new Date(notBeforeDate.getTime() + 365 * 24 * 3600_000),
    ...(options.ca === undefined ? {} : { ca: options.ca }),
    extensions: [
      { name: 'basicConstraints', cA: true, critical: true },
      { name: 'keyUsage', keyCertSign: true, cRLSign: true, digitalSignature: true, critical: true },
    ],
  });
  return { cert: withNewline(generated.cert), key: generated.private };
}

/** `names`: host names and IP addresses, the first also the subject CN. */
export async function makeCertificate(names: string[], options: CertificateOptions = {}): Promise<PemPair> {
  if (names.length === 0) throw new Error('makeCertificate needs at least one name');
  // A minute back: a certificate "valid from now" can look not yet valid to a peer a tick behind.
  const notBeforeDate = options.notBefore ?? new Date(Date.now() - 60_000);
  const generated = await generate([{ name: 'commonName', value: options.cn ?? names[0]! }], {
    keyType: 'ec',
    curve: 'P-256',
    algorithm: 'sha256',
    notBeforeDate,
    notAfterDate: options.notAfter ?? new Date(notBeforeDate.getTime() + 90 * 24 * 3600_000),
    ...(options.ca === undefined ? {} : { ca: options.ca }),
    extensions: [
      { name: 'basicConstraints', cA: false, critical: true },
      { name: 'keyUsage', digitalSignature: true, critical: true },
      { name: 'extKeyUsage', serverAuth: true, clientAuth: true },
      ...(options.noSubjectAltName
        ? []
        : [{ name: 'subjectAltName' as const, altNames: names.map((name) => (isIP(name) === 0 ? { type: 2 as const, value: name } : { type: 7 as const, ip: name })) }]),
    ],
  });
  // selfsigned's PEM has no final newline: concatenating a chain would glue two armour lines.
  return { cert: withNewline(generated.cert), key: generated.private };
}

export function writePair(dir: string, name: string, pair: PemPair): CertificatePair {
  const certFile = join(dir, `${name}.crt`);
  const keyFile = join(dir, `${name}.key`);
  writeFileSync(certFile, pair.cert);
  writeFileSync(keyFile, pair.key, { mode: 0o600 });
  return { certFile, keyFile };
}

function withNewline(pem: string): string {
  return pem.endsWith('\n') ? pem : `${pem}\n`;
}
