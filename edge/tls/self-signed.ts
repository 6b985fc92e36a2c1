/**
 * A certificate for `npm start` with no --tls-cert: a self-signed `localhost` pair kept in the
 * data directory, so a local HTTPS listener works out of the box and keeps the same certificate
 * across restarts (a browser exception or a pinned `--cacert` stays valid). Not for production:
 * nothing trusts it.
 */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { chmod, mkdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { Logger } from 'pino';
import type { CertificatePair } from './certificates.js';

const DAY_MS = 24 * 60 * 60 * 1000;
/** Regenerated this long before it expires, so a long-running node does not start serving an expired one. */
const RENEW_BEFORE_MS = 7 * DAY_MS;
const LIFETIME_MS = 365 * DAY_MS;

/**
 * Call it from one process (the primary), before workers start: two processes regenerating at
 * once could interleave their writes and leave a key that does not match the certificate.
 */
export async function ensureSelfSigned(dataDir: string, logger: Logger): Promise<CertificatePair> {
  const dir = join(dataDir, 'tls');
  const pair: CertificatePair = { certFile: join(dir, 'localhost.crt'), keyFile: join(dir, 'localhost.key') };

  const unusable = await check(pair);
  if (unusable === undefined) {
    logger.debug({ certFile: pair.certFile }, 'reusing the self-signed localhost certificate');
    return pair;
  }

  const started = performance.now();
  const notBeforeDate = new Date(Date.now() - 60_000); // a minute of slack for clients whose clock lags
  // Loaded only when a certificate is made: with @peculiar/x509 it was ~30 % of every process's start-up.
  const { generate } = await import('selfsigned');
  const generated = await generate([{ name: 'commonName', value: 'localhost' }], {
    keyType: 'ec',
    curve: 'P-256',
    algorithm: 'sha256',
    notBeforeDate,
    notAfterDate: new Date(notBeforeDate.getTime() + LIFETIME_MS),
    extensions: [
      { name: 'basicConstraints', cA: false, critical: true },
      // OpenSSL accepts a self-signed leaf as its own trust anchor (curl --cacert, ca: [cert]) without
      // keyCertSign, which RFC 5280 reserves for cA certificates anyway.
      { name: 'keyUsage', digitalSignature: true, critical: true },
      { name: 'extKeyUsage', serverAuth: true },
      {
        name: 'subjectAltName',
        altNames: [
          { type: 2, value: 'localhost' },
          { type: 7, ip: '127.0.0.1' },
          { type: 7, ip: '::1' },
        ],
      },
    ],
  });

  await mkdir(dir, { recursive: true, mode: 0o700 });
  // Key first, each through a temporary file and a rename: a watcher on this directory never
  // reads a half-written file, and the cert it then sees has its key already in place.
  await replace(pair.keyFile, generated.private, 0o600);
  await replace(pair.certFile, withNewline(generated.cert), 0o644);
  logger.info(
    { certFile: pair.certFile, reason: unusable, ms: Math.round(performance.now() - started) },
    `generated a self-signed certificate for localhost (${unusable}); clients must be told to trust ${pair.certFile}`,
  );
  return pair;
}

/** Why the existing pair cannot be reused, or undefined when it can. */
async function check(pair: CertificatePair): Promise<string | undefined> {
  let cert: Buffer;
  let key: Buffer;
  try {
    [cert, key] = await Promise.all([readFile(pair.certFile), readFile(pair.keyFile)]);
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'none yet' : `unreadable: ${(error as Error).message}`;
  }
  try {
    const certificate = new X509Certificate(cert);
    if (!certificate.checkPrivateKey(createPrivateKey(key))) return 'key does not match';
    if (!/(?:^|, )DNS:localhost(?:,|$)/.test(certificate.subjectAltName ?? '')) return 'not for localhost';
    const expires = Date.parse(certificate.validTo);
    if (!(expires - Date.now() > RENEW_BEFORE_MS)) return `expires ${certificate.validTo}`;
    return undefined;
  } catch (error) {
    return `invalid: ${(error as Error).message}`;
  }
}

async function replace(file: string, content: string, mode: number): Promise<void> {
  const temporary = `${file}.${process.pid}.tmp`;
  try {
    await writeFile(temporary, content, { mode });
    // writeFile's mode is only used when it creates the file, and umask may narrow it.
    await chmod(temporary, mode);
    await rename(temporary, file);
  } catch (error) {
    await rm(temporary, { force: true });
    throw error;
  }
}

function withNewline(pem: string): string {
  return pem.endsWith('\n') ? pem : `${pem}\n`;
}
