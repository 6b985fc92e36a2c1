/**
 * `outpost` command line: `edge`, `shield`, `origin` (the demo origin) and `start` (the whole
 * chain on one machine). Flags, OUTPOST_* variables and a JSON config file feed one schema
 * (config/config.ts); a bad flag or value is named and the process exits non-zero.
 */
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import cluster from 'node:cluster';
import type { Logger } from 'pino';
import { ConfigError, OPTIONS, envName, flagName, loadConfig, optionsFor, optionSpec, type Config, type OptionName, type Role } from '../config/config.js';
import { CertificateStore, certificatePairs, type CertificatePair } from '../edge/tls/certificates.js';
import { upstreamTls } from '../edge/upstream-tls.js';
import { ensureSelfSigned } from '../edge/tls/self-signed.js';
import type { RunningNode } from '../pipeline/node-server.js';
import { Primary } from '../cluster/primary.js';
import type { AdminServer } from '../admin/admin-server.js';
import type { LocalControl, NodeControl } from '../admin/node-control.js';
import type { PurgeOutbox } from '../admin/purge-outbox.js';
import { WORKER_ENV } from '../cluster/messages.js';
import type { Starter } from '../cluster/worker.js';
import { createLogger, silentLogger } from '../pipeline/logger.js';

// The request path (edge, shield, pipeline, undici), the admin API, the demo origin and the
// purge client are imported where they are used: a primary forks its workers before it loads
// any of them, so a restarted node answers sooner (issue 14: time to the first hit).
const startEdge: Starter = async (config, options) => (await import('../edge/edge.js')).startEdge(config, options);
const startShield: Starter = async (config, options) => (await import('../origin-shield/shield.js')).startShield(config, options);

const USAGE = `outpost — a caching edge node (CDN point of presence) with an origin-shield tier

Usage:
  outpost start  [--origin URL] [--listen HOST:PORT]   edge → shield → origin on this machine (demo origin when no --origin)
  outpost edge   --upstream URL [--upstream URL…] [options]
  outpost shield --origin URL [--origin URL…] [options]
  outpost origin [--listen HOST:PORT]                  the demo origin alone
  outpost purge  --admin URL [--token T] (--url U | --prefix P | --tag T… | --all) [--soft]
                                                       purge through a node's admin API
  outpost cert   --data-dir DIR                        a self-signed certificate for localhost in DIR/tls
                                                       (made once, reused until 7 days before it expires)
  outpost COMMAND --help                               options of a command

Every option is also a config-file field (--config FILE, JSON) and an OUTPOST_* environment variable.
`;

class UsageError extends Error {}

interface Parsed {
  flags: Partial<Record<OptionName, string[]>>;
  config: string | undefined;
  help: boolean;
}

/** Parses --name value / --name=value / --flag (booleans). Unknown flags are errors. */
export function parseFlags(role: Role, argv: readonly string[], extra: Record<string, 'value'> = {}): Parsed & { extra: Record<string, string> } {
  const byFlag = new Map<string, OptionName>();
  for (const name of optionsFor(role)) byFlag.set(flagName(name), name);
  const parsed: Parsed & { extra: Record<string, string> } = { flags: {}, config: undefined, help: false, extra: {} };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--help' || arg === '-h') {
      parsed.help = true;
      continue;
    }
    if (!arg.startsWith('--')) throw new UsageError(`unexpected argument ${JSON.stringify(arg)}`);
    const eq = arg.indexOf('=');
    const flag = arg.slice(2, eq === -1 ? undefined : eq);
    const inline = eq === -1 ? undefined : arg.slice(eq + 1);
    const takeValue = (): string => {
      if (inline !== undefined) return inline;
      const next = argv[i + 1];
      if (next === undefined || next.startsWith('--')) throw new UsageError(`--${flag} needs a value`);
      i++;
      return next;
    };
    if (flag === 'config') {
      parsed.config = takeValue();
      continue;
    }
    if (extra[flag]) {
      parsed.extra[flag] = takeValue();
      continue;
    }
    const name = byFlag.get(flag);
    if (name === undefined) {
      const other = (Object.keys(OPTIONS) as OptionName[]).some((n) => flagName(n) === flag);
      throw new UsageError(other ? `--${flag} is not an option of \`outpost ${role}\`` : `unknown flag --${flag}`);
    }
    const value = optionSpec(name).kind === 'bool' && inline === undefined && (argv[i + 1] === undefined || argv[i + 1]!.startsWith('--')) ? 'true' : takeValue();
    (parsed.flags[name] ??= []).push(value);
  }
  return parsed;
}

function help(role: Role): string {
  const lines = optionsFor(role).map((name) => {
    const spec = optionSpec(name);
    const def = typeof spec.default === 'function' ? (spec.default as (r: Role) => unknown)(role) : spec.default;
    return `  --${flagName(name).padEnd(36)} ${spec.help} [${envName(name)}; default ${JSON.stringify(def)}]`;
  });
  return `Usage: outpost ${role} [options]\n\nOptions:\n  --config FILE                          JSON config file (fields are the camelCase option names)\n${lines.join('\n')}\n`;
}

/** The config loader of a role's command line: called at start, and again on SIGHUP. */
function configLoader(role: Role, argv: readonly string[]): (() => Readonly<Config>) | undefined {
  const parsed = parseFlags(role, argv);
  if (parsed.help) {
    process.stdout.write(help(role));
    return undefined;
  }
  return () => loadConfig(role, { flags: parsed.flags, env: process.env, file: parsed.config });
}

function onSignals(nodes: RunningNode[], extra: Array<() => Promise<void>> = [], control?: LocalControl): void {
  let stopping = false;
  const stop = async (signal: string) => {
    if (stopping) return;
    stopping = true;
    control?.drain();
    process.stderr.write(`outpost: ${signal}, finishing requests in flight\n`);
    for (const node of nodes) await node.close();
    for (const close of extra) await close();
    process.exit(0);
  };
  process.once('SIGTERM', () => void stop('SIGTERM'));
  process.once('SIGINT', () => void stop('SIGINT'));
  // `npm start` has no config file of its own to re-read: SIGHUP must not kill it.
  process.on('SIGHUP', () => process.stderr.write('outpost: SIGHUP ignored by `outpost start` (no config file to re-read)\n'));
}

async function runStart(argv: readonly string[]): Promise<void> {
  const parsed = parseFlags('edge', argv, { origin: 'value', 'shield-listen': 'value' });
  if (parsed.help) {
    process.stdout.write(
      `Usage: outpost start [--origin URL] [--listen HOST:PORT] [--shield-listen HOST:PORT] [edge options]\n\nRuns edge → shield → origin on this machine. Without --origin (or OUTPOST_ORIGIN) it starts the demo origin.\nData lives in ./.outpost-data unless --data-dir is given.\n`,
    );
    return;
  }
  const baseDir = parsed.flags.dataDir?.[0] ?? process.env.OUTPOST_DATA_DIR ?? '.outpost-data';
  let originUrl = parsed.extra.origin ?? process.env.OUTPOST_ORIGIN;
  const closers: Array<() => Promise<void>> = [];
  const { startDemoOrigin, demoIndex } = await import('../demo-origin/demo-origin.js');
  if (!originUrl) {
    const demo = await startDemoOrigin('127.0.0.1', 0);
    originUrl = demo.url;
    closers.push(() => new Promise((resolve) => demo.server.close(() => resolve())));
  }
  mkdirSync(baseDir, { recursive: true });
  const shieldConfig = loadConfig('shield', {
    fileContents: { listen: parsed.extra['shield-listen'] ?? '127.0.0.1:0', origins: [originUrl], dataDir: join(baseDir, 'shield') },
  });
  const shield = await startShield(shieldConfig, {});
  const { dataDir: _ignored, ...edgeFlags } = parsed.flags;
  // HTTPS too: with no certificate given, a self-signed one for localhost in the data folder.
  const edgeDefaults: Record<string, unknown> = { upstreams: [shield.url], dataDir: join(baseDir, 'edge'), trustForwardedFrom: [], adminListen: '127.0.0.1:8081', listenTls: '127.0.0.1:8443' };
  const loadEdge = () => loadConfig('edge', { fileContents: edgeDefaults, flags: edgeFlags, env: process.env, file: parsed.config });
  let edgeConfig = loadEdge();
  let selfSigned: CertificatePair | undefined;
  if (edgeConfig.listenTls !== undefined && edgeConfig.tlsCert.length === 0) {
    selfSigned = await ensureSelfSigned(baseDir, createLogger(edgeConfig.logLevel, edgeConfig.nodeName));
    edgeDefaults.tlsCert = [selfSigned.certFile];
    edgeDefaults.tlsKey = [selfSigned.keyFile];
    edgeConfig = loadEdge();
  }
  const edge = await startEdge(edgeConfig, {});
  // One admin API for the chain: it reports on the edge, and its purges reach the shield too.
  const { LocalControl } = await import('../admin/node-control.js');
  const control = new LocalControl([edge, shield]);
  const logger = createLogger(edgeConfig.logLevel, edgeConfig.nodeName, { buffered: false }).child({ admin: true });
  const admin = await openAdmin(edgeConfig, control, logger);
  if (admin) closers.unshift(admin.close);
  onSignals([edge, shield], closers, control);
  process.stderr.write(
    `\nOutpost is running:\n  edge    ${edge.url}\n  shield  ${shield.url}\n  origin  ${originUrl}${parsed.extra.origin || process.env.OUTPOST_ORIGIN ? '' : ' (demo origin)'}\n` +
      (admin ? `  admin   ${admin.url}\n` : '') +
      (edge.tlsUrl ? `  https   ${edge.tlsUrl.replace('127.0.0.1', 'localhost')}${selfSigned ? ` (self-signed: ${selfSigned.certFile})` : ''}\n` : '') +
      `  data    ${baseDir}/\n\n` +
      (parsed.extra.origin || process.env.OUTPOST_ORIGIN ? '' : `Demo paths:\n${demoIndex().replace(/^/gm, '  ')}\n\n`) +
      `Try:\n  curl -si ${edge.url}/hello    # twice: the second answer is a hit (see Cache-Status and Age)\n` +
      (edge.tlsUrl ? `  curl -si ${selfSigned ? `--cacert ${selfSigned.certFile} ` : ''}${edge.tlsUrl.replace('127.0.0.1', 'localhost')}/hello    # the same cache over HTTPS (HTTP/2 with --http2)\n` : '') +
      (admin ? `  curl -s ${admin.url}/stats\n  curl -s -X POST ${admin.url}/purge -d '{"url": "${edge.url}/hello"}'\n` : '') +
      `\nCtrl-C stops everything.\n\n`,
  );
}

/**
 * An edge or a shield: a primary that supervises `workers` worker processes (cluster/), or, in a
 * worker, that worker. Both re-read the same flags, environment and config file.
 */
async function runNode(load: () => Readonly<Config>, start: Starter, upstreams: (config: Readonly<Config>) => string): Promise<void> {
  // A worker runs the config the primary validated (the file may have changed since).
  if (cluster.isWorker) return (await import('../cluster/worker.js')).runWorker(JSON.parse(process.env[WORKER_ENV.config]!) as Config, start);
  let config = load();
  mkdirSync(config.dataDir, { recursive: true });
  const logger = createLogger(config.logLevel, config.nodeName, { buffered: false }).child({ primary: true });
  // Opened once the workers are forked; SIGHUP and SIGTERM reach it through these closures.
  let admin: Awaited<ReturnType<typeof openAdmin>>;
  const primary = new Primary({
    config,
    count: config.workers,
    logger,
    onReady: (url, tlsUrl) =>
      process.stderr.write(`outpost ${config.role} listening on ${url}${tlsUrl ? ` and ${tlsUrl}` : ''}, ${upstreams(config)}; ${config.workers} worker${config.workers === 1 ? '' : 's'} (${config.workerScheduling})\n`),
    reloadConfig: () => checkNode(load()),
    onReload: (next) => {
      config = next;
      logger.level = next.logLevel;
      admin?.outbox.setPeers(peersOf(next));
    },
    onStop: async () => admin?.close(),
  });
  primary.start();
  admin = await openAdmin(config, primary, logger, () => config);
  if (admin) process.stderr.write(`outpost ${config.role} admin API on ${admin.url}\n`);
}

/** Purge peers with their tokens: a peer without its own gets this node's. */
function peersOf(config: Readonly<Config>) {
  return config.purgePeers.map((peer) => ({ url: peer.url, token: peer.token ?? (config.adminToken || undefined) }));
}

/** The admin API when --admin-listen is set, with the purge outbox in the node's data folder. */
async function openAdmin(config: Readonly<Config>, control: NodeControl, logger: Logger, current: () => Readonly<Config> = () => config): Promise<(AdminServer & { outbox: PurgeOutbox }) | undefined> {
  if (config.adminListen === undefined) return undefined;
  if (config.adminToken === '') logger.warn('the admin API has no token: anyone who can reach its loopback address can purge');
  const [{ PurgeOutbox }, { startAdmin }] = await Promise.all([import('../admin/purge-outbox.js'), import('../admin/admin-server.js')]);
  const outbox = await PurgeOutbox.open({ location: join(config.dataDir, 'purge-outbox'), peers: peersOf(config), retrySec: config.purgeRetrySec, logger });
  const admin = await startAdmin({ listen: config.adminListen, control, logger, config: current, outbox });
  return {
    ...admin,
    outbox,
    close: async () => {
      await admin.close();
      await outbox.close();
    },
  };
}

/** Checks a role needs beyond the schema: an edge needs upstreams, a shield origins. */
function checkNode(config: Readonly<Config>): Readonly<Config> {
  if (config.role === 'edge' && config.upstreams.length === 0) throw new ConfigError('upstreams', 'flag --upstream', 'the edge needs at least one --upstream URL');
  if (config.role === 'shield' && config.origins.length === 0 && config.routes.length === 0) throw new ConfigError('origins', 'flag --origin', 'the shield needs at least one --origin URL');
  if (config.listenTls !== undefined && config.tlsCert.length === 0) throw new ConfigError('tlsCert', 'flag --tls-cert', '--listen-tls needs a --tls-cert and --tls-key');
  // Certificate and upstream TLS files are read now, so a bad one stops the node before any worker forks.
  if (config.listenTls !== undefined) new CertificateStore(certificatePairs(config), { logger: silentLogger(), watch: false }).close();
  upstreamTls(config);
  return config;
}

/** `outpost cert`: the self-signed certificate `npm start` uses, for containers that want HTTPS without one of their own. */
async function runCert(argv: readonly string[]): Promise<void> {
  const at = argv.indexOf('--data-dir');
  const dir = at !== -1 ? argv[at + 1] : undefined;
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write('Usage: outpost cert --data-dir DIR\n\nWrites DIR/tls/localhost.crt and DIR/tls/localhost.key (self-signed for localhost, 127.0.0.1 and ::1).\n');
    return;
  }
  if (dir === undefined || dir.startsWith('--') || argv.length !== 2) throw new UsageError('outpost cert needs --data-dir DIR and nothing else');
  const pair = await ensureSelfSigned(dir, createLogger('warn', 'outpost-cert'));
  process.stdout.write(`${pair.certFile}\n${pair.keyFile}\n`);
}

async function runOrigin(argv: readonly string[]): Promise<void> {
  let listen = '127.0.0.1:7001';
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--help' || arg === '-h') {
      process.stdout.write('Usage: outpost origin [--listen HOST:PORT]\n\nThe demo origin alone.\n');
      return;
    }
    if (arg === '--listen' && argv[i + 1]) listen = argv[++i]!;
    else if (arg.startsWith('--listen=')) listen = arg.slice('--listen='.length);
    else throw new UsageError(`unknown flag ${arg}`);
  }
  const match = /^(.+):(\d{1,5})$/.exec(listen);
  if (!match) throw new ConfigError('listen', 'flag --listen', `must be host:port, got ${JSON.stringify(listen)}`);
  const { startDemoOrigin } = await import('../demo-origin/demo-origin.js');
  const demo = await startDemoOrigin(match[1]!, Number(match[2]));
  process.stderr.write(`demo origin on ${demo.url}\n`);
  process.once('SIGTERM', () => demo.server.close(() => process.exit(0)));
  process.once('SIGINT', () => demo.server.close(() => process.exit(0)));
}

export async function main(argv: readonly string[]): Promise<void> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case 'edge':
      case 'shield': {
        const load = configLoader(command, rest);
        if (!load) return;
        const checked = () => checkNode(load());
        const describe = (config: Readonly<Config>) => (command === 'edge' ? `upstream ${config.upstreams.join(', ')}` : `origins ${config.origins.join(', ')}`);
        return await runNode(checked, command === 'edge' ? startEdge : startShield, describe);
      }
      case 'purge':
        return await (await import('./purge-client.js')).runPurgeClient(rest);
      case 'start':
        return await runStart(rest);
      case 'origin':
        return await runOrigin(rest);
      case 'cert':
        return await runCert(rest);
      case undefined:
      case '--help':
      case '-h':
      case 'help':
        process.stdout.write(USAGE);
        return;
      default:
        throw new UsageError(`unknown command ${JSON.stringify(command)}`);
    }
  } catch (error) {
    if (error instanceof UsageError || error instanceof ConfigError) {
      process.stderr.write(`outpost: ${error.message}\n${error instanceof UsageError ? 'Run `outpost --help` for usage.\n' : ''}`);
      process.exit(2);
    }
    const code = (error as { code?: string }).code;
    process.stderr.write(`outpost: ${code ? `${code}: ` : ''}${(error as Error).message}\n`);
    process.exit(1);
  }
}
