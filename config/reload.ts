/**
 * SIGHUP re-reads the config. Most options apply to requests that start afterwards; these take
 * effect only at start, because they shape listeners, processes or the stores' budgets. A reload
 * keeps their old values and says which changed.
 */
import type { Config } from './config.js';

export const RESTART_ONLY = [
  'listen',
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
] as const satisfies ReadonlyArray<keyof Config>;

/** The config to run after a reload, and the restart-only options that changed (not applied). */
export function liveConfig(current: Readonly<Config>, next: Readonly<Config>): { config: Readonly<Config>; needRestart: string[] } {
  const needRestart = RESTART_ONLY.filter((name) => JSON.stringify(current[name]) !== JSON.stringify(next[name]));
  const kept = Object.fromEntries(RESTART_ONLY.map((name) => [name, current[name]]));
  return { config: Object.freeze({ ...next, ...kept }), needRestart };
}
