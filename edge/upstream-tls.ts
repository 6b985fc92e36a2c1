/**
 * The TLS options for upstream connections, read from the files the config names. Its own module
 * so the primary can check them at start-up without loading the request path.
 */
import { readFileSync } from 'node:fs';
import type { Config } from '../config/config.js';
import { ConfigError } from '../config/config-error.js';
import type { UpstreamTls } from '../pipeline/http-upstream.js';

/** --upstream-ca, --upstream-cert/--upstream-key and --upstream-insecure, read from their files. */
export function upstreamTls(config: Readonly<Config>): UpstreamTls {
  const read = (field: 'upstreamCa' | 'upstreamCert' | 'upstreamKey'): string | undefined => {
    const file = config[field];
    if (file === '') return undefined;
    try {
      return readFileSync(file, 'utf8');
    } catch (error) {
      throw new ConfigError(field, 'config', `cannot read ${file}: ${(error as Error).message}`);
    }
  };
  const ca = read('upstreamCa');
  const cert = read('upstreamCert');
  const key = read('upstreamKey');
  return { ...(ca ? { ca } : {}), ...(cert ? { cert } : {}), ...(key ? { key } : {}), rejectUnauthorized: !config.upstreamInsecure };
}
