import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { LevelStore } from '../../storage/level-store.js';
import { runStoreContract } from './contract.js';

runStoreContract('level', async () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'outpost-'));
  const store = await LevelStore.open({ location: dir, maxBytes: 256 * 1024 * 1024 });
  return {
    store,
    async cleanup() {
      await store.close();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
});
