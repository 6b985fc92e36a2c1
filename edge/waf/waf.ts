/**
 * The WAF of the requestFilter phase: the operator's rules (config `waf.rules`, in order), then
 * the built-in rule set (`--waf off|detect|block`, `--waf-paranoia`). Compiled once per config
 * and swapped whole on SIGHUP.
 *
 * Order: request-phase rules on the request head; then, for a request with a body, its first
 * `wafBodyLimit` bytes are read and the body-phase rules run; then the built-in set sees the
 * whole request. `block` answers 403 naming the rule and the request id; `log` counts, logs and
 * goes on; `allow` skips every remaining rule, built-in ones included.
 */
import type { Logger } from 'pino';
import type { Config } from '../../config/config.js';
import type { WafMode } from '../../config/request-rules.js';
import { answerFromFilter, type Exchange } from '../../pipeline/exchange.js';
import type { Metrics } from '../../pipeline/metrics.js';
import { carriesBody, readBodyPrefix } from './body-prefix.js';
import { compileBuiltinRules, type BuiltinRuleSet, type Paranoia } from './builtin/index.js';
import { compileRules, type CompiledRule } from './user-rules.js';
import type { WafView } from './waf-view.js';

/** Matched text in logs: enough to see the attack, not a log line per kilobyte of payload. */
const LOGGED_CHARS = 200;

export class Waf {
  private readonly requestRules: CompiledRule[];
  private readonly bodyRules: CompiledRule[];
  private readonly builtin: BuiltinRuleSet | undefined;
  private readonly mode: WafMode;
  private readonly bodyLimit: number;

  constructor(
    config: Readonly<Config>,
    private readonly logger: Logger,
    private readonly metrics: Metrics,
  ) {
    const rules = compileRules(config.waf.rules);
    this.requestRules = rules.filter((r) => r.phase === 'request');
    this.bodyRules = rules.filter((r) => r.phase === 'body');
    this.mode = config.waf.mode;
    this.builtin = config.waf.mode === 'off' ? undefined : compileBuiltinRules(config.wafParanoia as Paranoia);
    this.bodyLimit = config.wafBodyLimit;
  }

  /** False when there is nothing to run (no rules, built-in set off). */
  get active(): boolean {
    return this.builtin !== undefined || this.requestRules.length > 0 || this.bodyRules.length > 0;
  }

  /**
   * The request head: the operator's request rules, then the built-in set unless a body is to be
   * read. True: answered (403); false: let through, nothing more to check; undefined: the body
   * phase decides (`body`), after the rate limits have counted the request.
   */
  head(x: Exchange, view: WafView): boolean | undefined {
    for (const rule of this.requestRules) {
      const verdict = this.apply(x, rule, view);
      if (verdict !== undefined) return verdict;
    }
    const wantsBody = this.bodyLimit > 0 && (this.builtin !== undefined || this.bodyRules.length > 0) && carriesBody(x);
    return wantsBody ? undefined : this.inspect(x, view);
  }

  /** The body phase: reads the first `wafBodyLimit` bytes, runs the body rules, then the built-in set on the whole request. */
  async body(x: Exchange, view: WafView): Promise<boolean> {
    view.body = await readBodyPrefix(x, this.bodyLimit);
    for (const rule of this.bodyRules) {
      const verdict = this.apply(x, rule, view);
      if (verdict !== undefined) return verdict;
    }
    return this.inspect(x, view);
  }

  /** One operator rule: true when it answered (block), false to stop checking (allow), undefined to go on. */
  private apply(x: Exchange, rule: CompiledRule, view: WafView): boolean | undefined {
    const part = rule.test(view);
    if (part === undefined) return undefined;
    this.matched(x, rule.id, rule.action, part);
    if (rule.action === 'block') return this.block(x, rule.id);
    if (rule.action === 'allow') return false;
    return undefined;
  }

  private inspect(x: Exchange, view: WafView): boolean {
    if (this.builtin === undefined) return false;
    const match = this.builtin.inspect(view);
    if (match === undefined) return false;
    const action = this.mode === 'block' ? 'block' : 'detect';
    this.matched(x, match.ruleId, action, `${match.part}=${match.matched}`);
    return action === 'block' ? this.block(x, match.ruleId) : false;
  }

  private matched(x: Exchange, rule: string, action: string, part: string): void {
    this.metrics.inc('waf_matches_total', 'requests a WAF rule matched, by rule and the action taken', { rule, action });
    const matched = part.length > LOGGED_CHARS ? `${part.slice(0, LOGGED_CHARS)}…` : part;
    this.logger[action === 'block' ? 'warn' : 'info']({ id: x.id, rule, action, matched, client: x.clientAddress, method: x.method, path: x.path.slice(0, LOGGED_CHARS) }, 'waf match');
  }

  private block(x: Exchange, rule: string): true {
    return answerFromFilter(x, 403, `waf:${rule}`, `blocked by rule ${rule}`);
  }
}
