/**
 * `outpost purge`: the command-line client of the admin API's POST /purge. Prints the node's
 * JSON reply (objects affected, each peer's result) and exits non-zero when the purge failed.
 */
import { readFileSync } from 'node:fs';

const USAGE = `Usage: outpost purge --admin URL [--token TOKEN | --token-file FILE] (--url URL | --prefix URL | --tag TAG [--tag TAG…] | --all) [--soft]

  --admin URL       the node's admin API, e.g. http://127.0.0.1:8081 (or OUTPOST_ADMIN_URL)
  --token TOKEN     its admin token (or OUTPOST_ADMIN_TOKEN); --token-file FILE reads it from a file
  --url URL         every variant of one URL
  --prefix URL      every URL starting with this
  --tag TAG         objects carrying this surrogate key (Surrogate-Key, Cache-Tag); repeat for several
  --all             everything
  --soft            mark stale instead of removing: the next request is served stale while one revalidation runs
`;

export class PurgeUsageError extends Error {}

export interface PurgeCommand {
  admin: string;
  token: string | undefined;
  body: Record<string, unknown>;
}

/** Parses the command line into the admin URL, token and the JSON body of the purge. */
export function parsePurgeArgs(argv: readonly string[], env: Record<string, string | undefined> = process.env): PurgeCommand | undefined {
  let admin = env.OUTPOST_ADMIN_URL;
  let token = env.OUTPOST_ADMIN_TOKEN;
  const body: Record<string, unknown> = {};
  const tags: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const eq = arg.indexOf('=');
    const flag = eq === -1 ? arg : arg.slice(0, eq);
    const value = (): string => {
      if (eq !== -1) return arg.slice(eq + 1);
      const next = argv[++i];
      if (next === undefined || next.startsWith('--')) throw new PurgeUsageError(`${flag} needs a value`);
      return next;
    };
    switch (flag) {
      case '--help':
      case '-h':
        process.stdout.write(USAGE);
        return undefined;
      case '--admin':
        admin = value();
        break;
      case '--token':
        token = value();
        break;
      case '--token-file':
        token = readFileSync(value(), 'utf8').trim();
        break;
      case '--url':
        body.url = value();
        break;
      case '--prefix':
        body.prefix = value();
        break;
      case '--tag':
        tags.push(value());
        break;
      case '--all':
        body.all = true;
        break;
      case '--soft':
        body.soft = true;
        break;
      default:
        throw new PurgeUsageError(`unknown flag ${flag}`);
    }
  }
  if (tags.length > 0) body.tags = tags;
  if (admin === undefined) throw new PurgeUsageError('--admin URL is required (the node’s admin API)');
  // The node names a missing or double purge kind itself (400); only a missing one is caught here.
  if (!['url', 'prefix', 'tags', 'all'].some((kind) => kind in body)) throw new PurgeUsageError('say what to purge: --url, --prefix, --tag or --all');
  return { admin: admin.replace(/\/+$/, ''), token: token || undefined, body };
}

export async function runPurgeClient(argv: readonly string[]): Promise<void> {
  let command: PurgeCommand | undefined;
  try {
    command = parsePurgeArgs(argv);
  } catch (error) {
    process.stderr.write(`outpost purge: ${(error as Error).message}\n\n${USAGE}`);
    process.exit(2);
  }
  if (command === undefined) return;
  let response: Response;
  try {
    response = await fetch(`${command.admin}/purge`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', ...(command.token ? { authorization: `Bearer ${command.token}` } : {}) },
      body: JSON.stringify(command.body),
      signal: AbortSignal.timeout(120_000),
    });
  } catch (error) {
    process.stderr.write(`outpost purge: cannot reach ${command.admin}: ${(error as Error).cause ?? (error as Error).message}\n`);
    process.exit(1);
  }
  const text = await response.text();
  if (!response.ok) {
    process.stderr.write(`outpost purge: ${response.status} ${text}`);
    process.exit(1);
  }
  process.stdout.write(text);
}
