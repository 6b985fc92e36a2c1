/**
 * The edge's certificates: one or more cert/key pairs, chosen per handshake by SNI, re-read when
 * their files change so a renewed certificate (certbot, cert-manager, a Kubernetes secret) is
 * served without a restart. A renewal that lands half-written or broken never takes a name
 * offline: the pair keeps its last good context until its files load again.
 */
import { X509Certificate, createPrivateKey } from 'node:crypto';
import { readFileSync, unwatchFile, watchFile, type Stats } from 'node:fs';
import { resolve } from 'node:path';
import { isIP } from 'node:net';
import { createSecureContext, type SecureContext, type SecureContextOptions } from 'node:tls';
import type { Logger } from 'pino';
import type { Config } from '../../config/config.js';
import { ConfigError } from '../../config/config-error.js';
import { SERVER_TLS_POLICY } from './tls-policy.js';

export interface CertificatePair {
  certFile: string;
  keyFile: string;
}

export interface CertificateStoreOptions {
  logger: Logger;
  /** Re-read the pairs when their files change; default true. */
  watch?: boolean;
  /**
   * After a reload changed anything. Clients without SNI get the server's own context, so call
   * server.setSecureContext(store.defaultOptions()) here, and put the ticket keys back
   * (server.setTicketKeys(keys saved before)): node 20 gives the new context random ones, which
   * would break resumption shared across workers. Contexts chosen by SNI use the server's keys.
   */
  onReload?: () => void;
}

interface LoadedPair {
  cert: Buffer;
  key: Buffer;
  names: string[];
  context: SecureContext;
}

/** A load failure, already phrased as `<file>: <reason>`. */
class PairError extends Error {}

/** Changes seen within this window are one: a renewal writes two files, often in several writes. */
const DEBOUNCE_MS = 250;

/** How often each certificate and key file is stat'ed for a change. */
const POLL_MS = 1_000;

export class CertificateStore {
  private readonly pairs: readonly CertificatePair[];
  private readonly loaded: LoadedPair[];
  private readonly logger: Logger;
  private readonly onReload: (() => void) | undefined;
  private exact = new Map<string, SecureContext>();
  /** Keyed by the suffix after `*.`: a name's parent domain looks it up directly. */
  private wildcard = new Map<string, SecureContext>();
  /** Stops polling one file. */
  private readonly watchers: Array<() => void> = [];
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  readonly sniCallback = (servername: string, callback: (error: Error | null, context?: SecureContext) => void): void => {
    callback(null, this.select(servername));
  };

  constructor(pairs: readonly CertificatePair[], options: CertificateStoreOptions) {
    if (pairs.length === 0) throw new ConfigError('tlsCert', 'config', 'no certificate given');
    this.pairs = pairs.map((pair) => ({ ...pair }));
    this.logger = options.logger;
    this.onReload = options.onReload;
    this.loaded = this.pairs.map((pair) => {
      try {
        return this.load(pair);
      } catch (error) {
        if (error instanceof PairError) throw new ConfigError('tlsCert', 'config', error.message);
        throw error;
      }
    });
    this.index();
    if (options.watch !== false) this.watch();
  }

  defaultOptions(): SecureContextOptions {
    const first = this.loaded[0]!;
    return { ...SERVER_TLS_POLICY, cert: first.cert, key: first.key };
  }

  select(servername: string | undefined): SecureContext {
    if (servername) {
      // Most clients send the name in lower case already: try it as is before normalising.
      let context = this.lookup(servername);
      if (context === undefined) {
        const normal = normalise(servername);
        if (normal !== servername) context = this.lookup(normal);
      }
      if (context !== undefined) return context;
    }
    return this.loaded[0]!.context;
  }

  reload(): string[] {
    const errors: string[] = [];
    let changed = false;
    for (let i = 0; i < this.pairs.length; i++) {
      const pair = this.pairs[i]!;
      try {
        const next = this.load(pair, this.loaded[i]);
        if (next !== this.loaded[i]) {
          this.loaded[i] = next;
          changed = true;
          this.logger.info({ certFile: pair.certFile, names: next.names }, 'TLS certificate reloaded');
        }
      } catch (error) {
        if (!(error instanceof PairError)) throw error;
        errors.push(error.message);
        this.logger.error({ certFile: pair.certFile, keyFile: pair.keyFile, reason: error.message }, `TLS certificate not reloaded, keeping the previous one: ${error.message}`);
      }
    }
    if (changed) {
      this.index();
      this.onReload?.();
    }
    return errors;
  }

  names(): string[][] {
    return this.loaded.map((pair) => [...pair.names]);
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    for (const unwatch of this.watchers) unwatch();
    this.watchers.length = 0;
  }

  private lookup(name: string): SecureContext | undefined {
    const context = this.exact.get(name);
    if (context !== undefined) return context;
    const dot = name.indexOf('.');
    return dot > 0 ? this.wildcard.get(name.slice(dot + 1)) : undefined;
  }

  /** Earlier pairs win a name two pairs share, so the order of --tls-cert decides, as for the default. */
  private index(): void {
    const exact = new Map<string, SecureContext>();
    const wildcard = new Map<string, SecureContext>();
    for (const pair of this.loaded) {
      for (const name of pair.names) {
        const map = name.startsWith('*.') ? wildcard : exact;
        const key = name.startsWith('*.') ? name.slice(2) : name;
        if (!map.has(key)) map.set(key, pair.context);
      }
    }
    // Swapped whole: a handshake in between sees either the old or the new tables.
    this.exact = exact;
    this.wildcard = wildcard;
  }

  /** Returns `previous` itself when the files are unchanged, so a no-op reload rebuilds nothing. */
  private load(pair: CertificatePair, previous?: LoadedPair): LoadedPair {
    const cert = readPem(pair.certFile);
    const key = readPem(pair.keyFile);
    if (previous !== undefined && cert.equals(previous.cert) && key.equals(previous.key)) return previous;

    if (!cert.includes('-----BEGIN CERTIFICATE-----')) throw new PairError(`${pair.certFile}: not a PEM certificate`);
    if (!/-----BEGIN [A-Z ]*PRIVATE KEY-----/.test(key.toString('latin1'))) throw new PairError(`${pair.keyFile}: not a PEM private key`);
    let leaf: X509Certificate;
    try {
      // The first certificate in the file is the leaf; the rest is its chain.
      leaf = new X509Certificate(cert);
    } catch (error) {
      throw new PairError(`${pair.certFile}: invalid certificate (${reason(error)})`);
    }
    let privateKey;
    try {
      privateKey = createPrivateKey(key);
    } catch (error) {
      throw new PairError(`${pair.keyFile}: invalid private key (${reason(error)})`);
    }
    if (!leaf.checkPrivateKey(privateKey)) throw new PairError(`${pair.keyFile}: private key does not match the certificate in ${pair.certFile}`);
    const names = certificateNames(leaf);
    if (names.length === 0) throw new PairError(`${pair.certFile}: no usable name (no DNS subjectAltName and no host name as subject CN)`);
    let context: SecureContext;
    try {
      context = createSecureContext({ ...SERVER_TLS_POLICY, cert, key });
    } catch (error) {
      // e.g. a malformed intermediate after the leaf
      throw new PairError(`${pair.certFile}: unusable certificate chain (${reason(error)})`);
    }

    const expires = Date.parse(leaf.validTo);
    if (expires < Date.now()) {
      this.logger.warn({ certFile: pair.certFile, names, validTo: leaf.validTo }, `TLS certificate ${pair.certFile} expired on ${leaf.validTo}; serving it anyway`);
    } else if (Date.parse(leaf.validFrom) > Date.now()) {
      this.logger.warn({ certFile: pair.certFile, names, validFrom: leaf.validFrom }, `TLS certificate ${pair.certFile} is not valid before ${leaf.validFrom}`);
    }
    return { cert, key, names, context };
  }

  /**
   * Polls each file's stat (path followed, symlinks included) rather than watching its folder:
   * a renewal that renames a new file over the old one, or a Kubernetes secret volume swapping
   * its `..data` link, changes the inode or mtime the path leads to, and a folder watch would
   * wake this process on every write to every other file there (a busy log beside the
   * certificate cost the bench's idle edge 0.4 of a core). Renewals need no sub-second pickup.
   */
  private watch(): void {
    const files = new Set(this.pairs.flatMap((pair) => [resolve(pair.certFile), resolve(pair.keyFile)]));
    for (const file of files) {
      const listener = (now: Stats, before: Stats): void => {
        if (now.ino !== before.ino || now.mtimeMs !== before.mtimeMs || now.ctimeMs !== before.ctimeMs || now.size !== before.size) this.schedule();
      };
      watchFile(file, { persistent: false, interval: POLL_MS }, listener);
      this.watchers.push(() => unwatchFile(file, listener));
    }
  }

  /**
   * Trailing debounce: every event restarts the wait, and reload() reads the files
   * synchronously, so the last event of a burst (say, the key written after its cert) is always
   * followed by a reload that sees it.
   */
  private schedule(): void {
    if (this.closed) return;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (!this.closed) this.reload();
    }, DEBOUNCE_MS);
    this.timer.unref();
  }
}

/** The DNS names a certificate serves, lower case: its DNS subjectAltNames, else its subject CN. */
function certificateNames(certificate: X509Certificate): string[] {
  const names: string[] = [];
  for (const [type, value] of altNames(certificate.subjectAltName ?? '')) {
    if (type === 'DNS') addName(names, value);
  }
  if (names.length === 0) {
    for (const line of certificate.subject.split('\n')) {
      if (line.startsWith('CN=')) addName(names, line.slice(3));
    }
  }
  return names;
}

function addName(names: string[], raw: string): void {
  const name = normalise(raw);
  // Only whole-label wildcards can be matched; `a*.example` or `*.*.example` would never be chosen.
  const host = name.startsWith('*.') ? name.slice(2) : name;
  if (host === '' || host.includes('*') || isIP(host) !== 0 || !/^[a-z0-9_.-]+$/.test(host) || host.startsWith('.') || host.includes('..')) return;
  if (!names.includes(name)) names.push(name);
}

/**
 * Parses node's subjectAltName text, `DNS:a.example, IP Address:127.0.0.1`. Node writes a value
 * holding a comma, quote or other awkward character as a JSON string (`DNS:"a\u002cb"`), so a
 * plain split on ", " would misread it.
 */
function altNames(text: string): Array<[string, string]> {
  const entries: Array<[string, string]> = [];
  const pattern = /(?:^|, )([A-Za-z ]+):("(?:[^"\\]|\\.)*"|[^,]*)/g;
  let match: RegExpExecArray | null;
  while ((match = pattern.exec(text)) !== null) {
    let value = match[2]!;
    if (value.startsWith('"')) {
      try {
        value = JSON.parse(value) as string;
      } catch {
        continue;
      }
    }
    entries.push([match[1]!, value]);
  }
  return entries;
}

function normalise(name: string): string {
  const lower = name.toLowerCase();
  return lower.endsWith('.') ? lower.slice(0, -1) : lower;
}

function readPem(file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new PairError(`${file}: cannot read (${code ?? reason(error)})`);
  }
}

function reason(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** The certificate and key files the config names: --tls-cert and --tls-key pair up by position (config.ts checks the counts match). */
export function certificatePairs(config: Readonly<Config>): CertificatePair[] {
  return config.tlsCert.map((certFile, i) => ({ certFile, keyFile: config.tlsKey[i]! }));
}
