/**
 * The server's TLS policy: Mozilla "intermediate" (ssl-config.mozilla.org, guidelines v5.7).
 * It keeps TLS 1.2 for older clients but only with forward-secret AEAD suites; everything else
 * (RC4, CBC, static RSA key exchange, TLS 1.0/1.1) is refused at the handshake.
 */
import { DEFAULT_CIPHERS, type SecureContextOptions } from 'node:tls';

const TLS12_CIPHERS = [
  'ECDHE-ECDSA-AES128-GCM-SHA256',
  'ECDHE-RSA-AES128-GCM-SHA256',
  'ECDHE-ECDSA-AES256-GCM-SHA384',
  'ECDHE-RSA-AES256-GCM-SHA384',
  'ECDHE-ECDSA-CHACHA20-POLY1305',
  'ECDHE-RSA-CHACHA20-POLY1305',
  'DHE-RSA-AES128-GCM-SHA256',
  'DHE-RSA-AES256-GCM-SHA384',
  'DHE-RSA-CHACHA20-POLY1305',
];

/**
 * Node's own TLS 1.3 suites, named explicitly: node splits `ciphers` into TLS 1.3 suites (the
 * `TLS_` names) and a TLS 1.2 list, and a list without `TLS_` names silently falls back to
 * OpenSSL's built-in suites rather than node's (`--tls-cipher-list` would then be ignored).
 */
const TLS13_SUITES = DEFAULT_CIPHERS.split(':').filter((name) => name.startsWith('TLS_'));

export const SERVER_TLS_POLICY = Object.freeze({
  minVersion: 'TLSv1.2',
  maxVersion: 'TLSv1.3',
  ciphers: [...TLS13_SUITES, ...TLS12_CIPHERS].join(':'),
  ecdhCurve: 'X25519:prime256v1:secp384r1',
  // Clients pick: with only strong suites on offer, a phone without AES hardware can take ChaCha20.
  honorCipherOrder: false,
  // Without DH parameters the DHE-RSA suites above could never be chosen; 'auto' uses the
  // RFC 7919 groups sized to the key, as Mozilla recommends (ffdhe2048 for 2048-bit RSA).
  dhparam: 'auto',
} as const satisfies SecureContextOptions);
