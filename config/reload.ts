/**
 * SIGHUP re-reads the config. Most options apply to requests that start afterwards; these take
 * effect only at start, because they shape listeners, processes or the stores' budgets. A reload
 * keeps their old values and says which changed.
 */
import { checkAdminExposure, type Config } from './config.js';

export const RESTART_ONLY = [
  'listen',
  'listenTls',
  'tlsCert',
  'tlsKey',
  'tlsTicketRotateSec',
  'proxyProtocol',
  'clientHeaderMaxBytes',
  'h2MaxConcurrentStreams',
  'h2ResetBurst',
  'h2ResetRate',
  'workers',
  'workerScheduling',
  'dataDir',
  'memorySize',
  'diskSize',
  'memoryMaxObjectSize',
  'nodeName',
  'servedBy',
  'metrics',
  'adminListen',
  'purgeRetrySec',
  'rateLimitStore',
  'rateLimitRedisTimeoutMs',
  'rateLimitKeys',
] as const satisfies ReadonlyArray<keyof Config>;

/**
 * The config to run after a reload, and the restart-only options that changed (not applied).
 * Throws ConfigError when the result would expose the running admin listener without a token.
 */
export function liveConfig(current: Readonly<Config>, next: Readonly<Config>): { config: Readonly<Config>; needRestart: string[] } {
  const needRestart = RESTART_ONLY.filter((name) => JSON.stringify(current[name]) !== JSON.stringify(next[name]));
  const kept = Object.fromEntries(RESTART_ONLY.map((name) => [name, current[name]]));
  const config: Readonly<Config> = Object.freeze({ ...next, ...kept });
  checkAdminExposure(config, 'reload');
  return { config, needRestart };
}

/** What a worker is given: no admin or peer tokens (the primary alone talks to the admin API and peers). */
export function workerConfig(config: Readonly<Config>): Config {
  return { ...config, adminToken: '', adminTokenFile: '', purgePeers: [] };
}
