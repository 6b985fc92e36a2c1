/** A config string match (config/request-rules.ts MatchSpec) as a test function, for WAF rules and rate-limit path groups. */
import { compileRegex, type MatchSpec } from '../config/request-rules.js';

export type StringTest = (value: string) => boolean;

export function compileMatch(spec: MatchSpec): StringTest {
  switch (spec.kind) {
    case 'equals': {
      const expected = spec.ignoreCase ? spec.value.toLowerCase() : spec.value;
      return spec.ignoreCase ? (value) => value.toLowerCase() === expected : (value) => value === expected;
    }
    case 'prefix': {
      const expected = spec.ignoreCase ? spec.value.toLowerCase() : spec.value;
      return spec.ignoreCase ? (value) => value.toLowerCase().startsWith(expected) : (value) => value.startsWith(expected);
    }
    case 'regex': {
      const re = compileRegex(spec.value, spec.ignoreCase);
      return (value) => re.test(value);
    }
    case 'present':
      return () => spec.value;
  }
}
