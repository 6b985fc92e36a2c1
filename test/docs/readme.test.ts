/** README.md stays true: every option is documented with its flag and environment variable. */
import test from 'ava';
import { readFileSync } from 'node:fs';
import { OPTIONS, envName, flagName, type OptionName } from '../../config/config.js';

const readme = readFileSync(new URL('../../../README.md', import.meta.url), 'utf8');

test('every configuration option appears in README with its flag and environment variable', (t) => {
  for (const name of Object.keys(OPTIONS) as OptionName[]) {
    t.true(readme.includes(`| \`${name}\` | \`--${flagName(name)}\` | \`${envName(name)}\``), `README lacks a row for ${name}`);
  }
});

test('README gives the two commands', (t) => {
  t.true(readme.includes('npm ci && npm start'));
  t.true(readme.includes('npm test'));
});
