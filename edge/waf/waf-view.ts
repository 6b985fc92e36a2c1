/**
 * What the WAF reads of one request, worked out once and only when a rule asks: path and query
 * split, cookies parsed, decoded forms of each value cached, the body's first bytes as text.
 */
import { hostName } from '../../pipeline/address-list.js';
import { headerText } from '../../pipeline/response-policy.js';
import { decodedForms } from './decode.js';
import type { WafRequest } from './builtin/index.js';
import type { Exchange } from '../../pipeline/exchange.js';

export class WafView implements WafRequest {
  readonly method: string;
  readonly headers: Exchange['req']['headers'];
  readonly rawHeaders: readonly string[];
  readonly clientAddress: string;
  /** Raw path, without the query. */
  readonly path: string;
  /** Raw query, without '?' ('' when none). */
  readonly query: string;
  body: Buffer | undefined;
  private cookies: Map<string, string> | undefined;
  private decoded: Map<string, string[]> | undefined;
  private decodedPlus: Map<string, string[]> | undefined;
  private text: string | undefined;
  private readonly rawHost: string;
  private name: string | undefined;

  constructor(x: Exchange) {
    this.method = x.method;
    this.headers = x.req.headers;
    this.rawHeaders = x.req.rawHeaders;
    this.rawHost = x.host;
    this.clientAddress = x.clientAddress;
    const q = x.path.indexOf('?');
    this.path = q === -1 ? x.path : x.path.slice(0, q);
    this.query = q === -1 ? '' : x.path.slice(q + 1);
  }

  /** The name, as host rules give it: without the port or a final dot. Only host rules ask. */
  get host(): string {
    return (this.name ??= hostName(this.rawHost));
  }

  header(name: string): string | undefined {
    return headerText(this.headers[name]);
  }

  cookie(name: string): string | undefined {
    return (this.cookies ??= parseCookies(this.header('cookie'))).get(name);
  }

  bodyText(): string | undefined {
    if (this.body === undefined) return undefined;
    return (this.text ??= this.body.toString('utf8'));
  }

  /**
   * The value and its decoded forms (decoded once per request). `plus`: '+' is a space, as in a
   * query or a form body (application/x-www-form-urlencoded), not in a path or a header.
   */
  forms(value: string, plus = false): readonly string[] {
    const cache = plus ? (this.decodedPlus ??= new Map()) : (this.decoded ??= new Map());
    let forms = cache.get(value);
    if (forms === undefined) cache.set(value, (forms = decodedForms(value, plus)));
    return forms;
  }

  /** Whether the body is a form, whose '+' is a space. */
  formBody(): boolean {
    return (this.header('content-type') ?? '').toLowerCase().startsWith('application/x-www-form-urlencoded');
  }

}

function parseCookies(header: string | undefined): Map<string, string> {
  const cookies = new Map<string, string>();
  if (header === undefined) return cookies;
  for (const pair of header.split(';')) {
    const eq = pair.indexOf('=');
    if (eq === -1) continue;
    const name = pair.slice(0, eq).trim();
    if (name !== '' && !cookies.has(name)) cookies.set(name, pair.slice(eq + 1).trim());
  }
  return cookies;
}
