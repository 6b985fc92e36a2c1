/** Builds the configured store: memory tier over the LevelDB disk tier. */
import type { Config } from '../config/config.js';
import type { CacheStore } from './cache-store.js';
import { openTieredStore } from './tiered-store.js';

export function openStore(config: Readonly<Config>): Promise<CacheStore> {
  return openTieredStore({
    dataDir: config.dataDir,
    memoryBytes: config.memorySize,
    diskBytes: config.diskSize,
    memoryMaxEntryBytes: config.memoryMaxObjectSize,
    memoryAdmission: config.memoryAdmission === 'tinylfu',
  });
}
