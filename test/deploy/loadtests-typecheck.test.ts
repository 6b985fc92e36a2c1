/**
 * The k6 scripts in loadtests/ are not part of the main build (k6 runs them, not Node), so this
 * test type-checks them against @types/k6 with loadtests/tsconfig.json.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';

function findRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'loadtests', 'tsconfig.json'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error('loadtests/tsconfig.json not found above this test');
    dir = up;
  }
  return dir;
}

const ROOT = findRoot();

function npx(args: string[]): Promise<{ code: number; output: string }> {
  return new Promise((resolve) => {
    execFile('npx', ['--no-install', ...args], { cwd: ROOT, timeout: 120_000, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
      const code = error ? (typeof error.code === 'number' ? error.code : 1) : 0;
      resolve({ code, output: `${stdout}${stderr}` });
    });
  });
}

test('the k6 scripts type-check against @types/k6', async (t) => {
  t.timeout(180_000);
  const { code, output } = await npx(['tsc', '-p', 'loadtests/tsconfig.json']);
  t.is(code, 0, output);
});

test('the type-check covers every script in loadtests/', async (t) => {
  t.timeout(180_000);
  const { code, output } = await npx(['tsc', '-p', 'loadtests/tsconfig.json', '--listFilesOnly']);
  t.is(code, 0, output);
  const checked = new Set(
    output
      .split('\n')
      .map((line) => line.trim())
      .filter((line) => line && !line.includes('node_modules'))
      .map((line) => relative(ROOT, line)),
  );
  const scripts = readdirSync(join(ROOT, 'loadtests')).filter((f) => f.endsWith('.ts'));
  t.true(scripts.length >= 4);
  for (const script of scripts) t.true(checked.has(join('loadtests', script)), `${script} is type-checked`);
  t.true(checked.has(join('loadtests', 'lib', 'common.ts')));
});
