/**
 * The operator's WAF rules (config `waf.rules`), compiled once per config into plain test
 * functions. Every field of a rule must match (and); within a field, any of its matches. Path,
 * query, header, cookie and body values are tried in each of their decoded forms, so a rule on
 * `/wp-admin` also stops `/wp%2Dadmin` and `/WP-ADMIN` with `ignoreCase`.
 */
import type { BlockList } from 'node:net';
import type { MatchSpec, WafAction, WafRuleSpec } from '../../config/request-rules.js';
import { buildBlockList, inAddressList } from '../../pipeline/address-list.js';
import { compileMatch, type StringTest } from '../string-match.js';
import type { WafView } from './waf-view.js';

export interface CompiledRule {
  readonly id: string;
  readonly message: string;
  readonly phase: 'request' | 'body';
  readonly action: WafAction;
  /** The part that matched (`path=/wp-admin`), or undefined when the rule does not apply. */
  test(view: WafView): string | undefined;
}

/** A field test: the matched part's description, or undefined. */
type FieldTest = (view: WafView) => string | undefined;

export function compileRules(specs: readonly WafRuleSpec[]): CompiledRule[] {
  return specs.map(compileRule);
}

function compileRule(spec: WafRuleSpec): CompiledRule {
  const tests: FieldTest[] = [];
  if (spec.method) {
    const test = anyOf(spec.method);
    tests.push((v) => (test(v.method) ? `method=${v.method}` : undefined));
  }
  if (spec.clientAddress) {
    const list: BlockList = buildBlockList(spec.clientAddress);
    tests.push((v) => (inAddressList(list, v.clientAddress) ? `clientAddress=${v.clientAddress}` : undefined));
  }
  if (spec.host) {
    const test = anyOf(spec.host);
    tests.push((v) => (test(v.host) ? `host=${v.host}` : undefined));
  }
  if (spec.path) tests.push(decodedField('path', anyOf(spec.path), (v) => v.path));
  if (spec.query) tests.push(decodedField('query', anyOf(spec.query), (v) => v.query, () => true));
  for (const [name, matches] of Object.entries(spec.headers ?? {})) tests.push(namedField(`header:${name}`, matches, (v) => v.header(name)));
  for (const [name, matches] of Object.entries(spec.cookies ?? {})) tests.push(namedField(`cookie:${name}`, matches, (v) => v.cookie(name)));
  if (spec.body) tests.push(decodedField('body', anyOf(spec.body), (v) => v.bodyText(), (v) => v.formBody()));
  return {
    id: spec.id,
    message: spec.message,
    phase: spec.phase,
    action: spec.action,
    test(view) {
      let part: string | undefined;
      for (const test of tests) {
        const matched = test(view);
        if (matched === undefined) return undefined;
        part ??= matched;
      }
      return part;
    },
  };
}

/** A value tried raw and in each decoded form; `plus`: whether its '+' is a space. */
function decodedField(part: string, test: StringTest, read: (v: WafView) => string | undefined, plus: (v: WafView) => boolean = () => false): FieldTest {
  return (v) => {
    const value = read(v);
    if (value === undefined) return undefined;
    for (const form of v.forms(value, plus(v))) if (test(form)) return `${part}=${form}`;
    return undefined;
  };
}

/** A header or cookie: `{ "present": true|false }`, or matches on its value. */
function namedField(part: string, matches: readonly MatchSpec[], read: (v: WafView) => string | undefined): FieldTest {
  const presence = matches.find((m) => m.kind === 'present');
  if (presence !== undefined) return (v) => ((read(v) !== undefined) === presence.value ? part : undefined);
  return decodedField(part, anyOf(matches), read);
}

function anyOf(matches: readonly MatchSpec[]): StringTest {
  const tests = matches.map(compileMatch);
  if (tests.length === 1) return tests[0]!;
  return (value) => tests.some((test) => test(value));
}
