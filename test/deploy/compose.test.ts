/**
 * Static test of the container deployment (no Docker engine needed): docker-compose.yml,
 * Dockerfile and .dockerignore. Every outpost command and OUTPOST_* variable in the compose file
 * goes through the real CLI flag parser and config loader, so a renamed flag or a bad value
 * fails here instead of in a crash-looping container.
 */
import test from 'ava';
import { execFile, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createServer, type Server } from 'node:http';
import { BlockList, isIP, type AddressInfo } from 'node:net';
import { dirname, join, posix } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';
import { parseFlags } from '../../cli/main.js';
import { ConfigError, loadConfig, type Config, type Role } from '../../config/config.js';
import { createDemoOrigin } from '../../demo-origin/demo-origin.js';

// ---- locating and reading the files -----------------------------------------------------------

function findRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'docker-compose.yml'))) return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error('no directory above this test holds package.json and docker-compose.yml');
    dir = up;
  }
}

const ROOT = findRoot();
const COMPOSE_TEXT = readFileSync(join(ROOT, 'docker-compose.yml'), 'utf8');

type StringMap = Record<string, string>;
interface Healthcheck {
  test?: string | string[];
  interval?: string;
  timeout?: string;
  retries?: number;
}
interface Service {
  image?: string;
  build?: string | { context?: string; dockerfile?: string };
  command?: string | string[];
  environment?: StringMap | string[];
  ports?: Array<string | { target?: number; published?: string | number; host_ip?: string }>;
  volumes?: Array<string | { type?: string; source?: string; target?: string }>;
  networks?: string[] | Record<string, unknown>;
  network_mode?: string;
  restart?: string;
  healthcheck?: Healthcheck;
  depends_on?: string[] | Record<string, { condition?: string }>;
  profiles?: string[];
}
interface Compose {
  services: Record<string, Service>;
  volumes?: Record<string, unknown>;
  networks?: Record<string, { internal?: boolean; ipam?: { config?: Array<{ subnet?: string }> } } | null>;
}

// Compose follows YAML 1.1 merge keys (`<<: *outpost`).
const compose = parse(COMPOSE_TEXT, { merge: true }) as Compose;
const services = Object.entries(compose.services);

const OUTPOST_IMAGE_ENV = dockerfileEnv();

/** ENV lines of the Dockerfile's last stage: the environment every outpost container starts with. */
function dockerfileEnv(): StringMap {
  const env: StringMap = {};
  const stages = dockerfileStages();
  for (const { cmd, args } of stages[stages.length - 1]!.instructions) {
    if (cmd !== 'ENV') continue;
    for (const match of args.matchAll(/([A-Za-z_][A-Za-z0-9_]*)=("[^"]*"|\S*)/g)) env[match[1]!] = match[2]!.replace(/^"|"$/g, '');
  }
  return env;
}

function commandOf(service: Service): string[] {
  if (Array.isArray(service.command)) return service.command.map(String);
  if (typeof service.command === 'string') return service.command.split(/\s+/).filter(Boolean);
  return [];
}

function environmentOf(service: Service): StringMap {
  if (!service.environment) return {};
  if (Array.isArray(service.environment)) {
    return Object.fromEntries(service.environment.map((line) => [line.slice(0, line.indexOf('=')), line.slice(line.indexOf('=') + 1)]));
  }
  return Object.fromEntries(Object.entries(service.environment).map(([k, v]) => [k, String(v)]));
}

function networksOf(service: Service): string[] {
  if (service.network_mode === 'none') return [];
  if (!service.networks) return ['default'];
  return Array.isArray(service.networks) ? service.networks : Object.keys(service.networks);
}

function dependsOn(service: Service): Record<string, { condition?: string }> {
  const deps = service.depends_on ?? {};
  return Array.isArray(deps) ? Object.fromEntries(deps.map((name) => [name, {}])) : deps;
}

function healthcheckText(service: Service): string {
  const t = service.healthcheck?.test;
  return Array.isArray(t) ? t.join(' ') : (t ?? '');
}

interface Volume {
  source: string;
  target: string;
  bind: boolean;
}
function volumesOf(service: Service): Volume[] {
  return (service.volumes ?? []).map((v) => {
    if (typeof v === 'string') {
      const [source = '', target = ''] = v.split(':');
      return { source, target, bind: source.startsWith('.') || source.startsWith('/') || source.startsWith('~') };
    }
    return { source: v.source ?? '', target: v.target ?? '', bind: v.type === 'bind' };
  });
}

// ---- outpost services through the real CLI ---------------------------------------------------

const isOutpost = (service: Service): boolean => service.build !== undefined || (service.image ?? '').startsWith('outpost');

interface OutpostNode {
  name: string;
  role: Role | 'origin';
  config?: Readonly<Config>;
  listen: { host: string; port: number };
}

/** The demo origin has its own tiny parser (cli/main.ts runOrigin): only --listen HOST:PORT. */
function parseOriginArgs(argv: readonly string[]): { host: string; port: number } {
  let listen = '127.0.0.1:7001';
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (arg === '--listen' && argv[i + 1]) listen = argv[++i]!;
    else if (arg.startsWith('--listen=')) listen = arg.slice('--listen='.length);
    else throw new Error(`outpost origin accepts only --listen, got ${JSON.stringify(arg)}`);
  }
  const match = /^(.+):(\d{1,5})$/.exec(listen);
  if (!match) throw new Error(`--listen must be host:port, got ${JSON.stringify(listen)}`);
  return { host: match[1]!, port: Number(match[2]) };
}

function outpostNode(name: string, service: Service): OutpostNode {
  const [role, ...argv] = commandOf(service);
  if (role === 'origin') return { name, role, listen: parseOriginArgs(argv) };
  if (role !== 'edge' && role !== 'shield') throw new Error(`service ${name}: command must start with edge, shield or origin, got ${JSON.stringify(role)}`);
  const parsed = parseFlags(role, argv);
  if (parsed.help) throw new Error(`service ${name}: --help would print usage and exit`);
  const file = parsed.config === undefined ? undefined : configFileOnHost(name, service, parsed.config);
  const config = loadConfig(role, { flags: parsed.flags, env: { ...OUTPOST_IMAGE_ENV, ...environmentOf(service) }, file });
  return { name, role, config, listen: config.listen };
}

/** A --config path inside the container, mapped back through a bind mount to the host file. */
function configFileOnHost(name: string, service: Service, path: string): string {
  for (const v of volumesOf(service)) {
    if (v.bind && (path === v.target || path.startsWith(`${v.target}/`))) return join(ROOT, v.source, posix.relative(v.target, path));
  }
  throw new Error(`service ${name}: --config ${path} is not inside a bind mount`);
}

const nodes = new Map<string, OutpostNode>();
/** Services whose command or environment the CLI rejects: reported by one test, not at import. */
const rejected = new Map<string, string>();
/** One-shot outpost commands (the certs service): not nodes, run for real by their own test. */
const isOneShot = (service: Service): boolean => commandOf(service)[0] === 'cert';
for (const [name, service] of services) {
  if (!isOutpost(service) || isOneShot(service)) continue;
  try {
    nodes.set(name, outpostNode(name, service));
  } catch (error) {
    rejected.set(name, `${(error as Error).name}: ${(error as Error).message}`);
  }
}
const byRole = (role: OutpostNode['role']) => [...nodes.values()].filter((n) => n.role === role);

// ---- services, images, commands ---------------------------------------------------------------

test('the deployment has two origins, two shields and two edges, plus k6', (t) => {
  t.deepEqual(byRole('origin').map((n) => n.name).sort(), ['origin', 'origin-2']);
  t.deepEqual(byRole('shield').map((n) => n.name).sort(), ['shield-1', 'shield-2']);
  t.deepEqual(byRole('edge').map((n) => n.name).sort(), ['edge-1', 'edge-2']);
  t.truthy(compose.services.k6);
});

test('every service has an image or a build, and outpost builds come from this Dockerfile', (t) => {
  for (const [name, service] of services) {
    t.true(Boolean(service.image) || Boolean(service.build), `${name} has neither image nor build`);
    if (!service.build) continue;
    const build = typeof service.build === 'string' ? { context: service.build } : service.build;
    const context = join(ROOT, build.context ?? '.');
    t.true(existsSync(join(context, build.dockerfile ?? 'Dockerfile')), `${name}: the Dockerfile of its build exists`);
  }
});

test('every outpost command and OUTPOST_* variable is accepted by the real CLI parser and config loader', (t) => {
  t.deepEqual(Object.fromEntries(rejected), {}, 'services the CLI rejects');
  t.is(nodes.size, 6);
  for (const node of nodes.values()) {
    if (node.role === 'edge') t.true(node.config!.upstreams.length >= 1, `${node.name}: the edge needs an --upstream`);
    if (node.role === 'shield') t.true(node.config!.origins.length >= 1, `${node.name}: the shield needs an --origin`);
  }
  // Spelling of the OUTPOST_* names: loadConfig ignores unknown variables, so check them here.
  const seen = new Set<string>();
  for (const [name, service] of services) {
    if (!isOutpost(service)) continue;
    const role = commandOf(service)[0] as Role | 'origin';
    if (isOneShot(service)) continue;
    for (const key of Object.keys(environmentOf(service))) {
      if (!key.startsWith('OUTPOST_')) continue;
      t.not(role, 'origin', `${name}: the demo origin reads no OUTPOST_* variables (${key})`);
      const field = key.slice('OUTPOST_'.length).toLowerCase().replace(/_([a-z])/g, (_m, c: string) => c.toUpperCase());
      t.true(field in nodes.get(name)!.config!, `${name}: ${key} names no option of outpost ${role}`);
      seen.add(key);
    }
  }
  for (const key of Object.keys(OUTPOST_IMAGE_ENV)) {
    if (!key.startsWith('OUTPOST_')) continue;
    const field = key.slice('OUTPOST_'.length).toLowerCase().replace(/_([a-z])/g, (_m, c: string) => c.toUpperCase());
    t.true(field in loadConfig('edge') && field in loadConfig('shield'), `Dockerfile ENV ${key} is an option of both roles`);
  }
  t.true(seen.has('OUTPOST_TRUST_FORWARDED_FROM'));
});

test('the check itself rejects a misspelt flag and a bad value (the parser is really used)', (t) => {
  t.throws(() => parseFlags('edge', ['--upstreams', 'http://shield-1:9000']), { message: /unknown flag --upstreams/ });
  t.throws(() => parseFlags('edge', ['--origin', 'http://origin:7001']), { message: /not an option of `outpost edge`/ });
  const flags = parseFlags('shield', ['--balance', 'random']).flags;
  t.throws(() => loadConfig('shield', { flags }), { instanceOf: ConfigError });
  t.throws(() => loadConfig('edge', { env: { OUTPOST_MEMORY_SIZE: 'lots' } }), { instanceOf: ConfigError });
});

test('nodes listen on all interfaces, so other containers can reach them', (t) => {
  for (const node of nodes.values()) t.is(node.listen.host, '0.0.0.0', `${node.name} listens on ${node.listen.host}`);
});

test('every --upstream and --origin URL names a service of the right tier, on its port, on a shared network', (t) => {
  const links: Array<[OutpostNode, string, OutpostNode['role']]> = [];
  for (const edge of byRole('edge')) for (const url of edge.config!.upstreams) links.push([edge, url, 'shield']);
  for (const shield of byRole('shield')) for (const url of shield.config!.origins) links.push([shield, url, 'origin']);
  t.true(links.length >= 8);
  for (const [from, url, wantedRole] of links) {
    const { hostname, port, protocol } = new URL(url);
    t.is(protocol, 'http:');
    const target = nodes.get(hostname);
    t.truthy(target, `${from.name}: ${url} — ${hostname} is not a service in docker-compose.yml`);
    if (!target) continue;
    t.is(target.role, wantedRole, `${from.name} → ${hostname}`);
    t.is(Number(port || 80), target.listen.port, `${from.name} → ${url}: ${hostname} listens on ${target.listen.port}`);
    const shared = networksOf(compose.services[from.name]!).filter((n) => networksOf(compose.services[hostname]!).includes(n));
    t.true(shared.length > 0, `${from.name} and ${hostname} share no network`);
  }
  // Both edges list the same shields in the same order: the same key maps to the same shield.
  const [a, b] = byRole('edge');
  t.deepEqual(a!.config!.upstreams, b!.config!.upstreams);
});

test('each edge and shield keeps its cache in its own named volume at its --data-dir', (t) => {
  const seen = new Set<string>();
  for (const node of nodes.values()) {
    if (node.role === 'origin') continue;
    const mount = volumesOf(compose.services[node.name]!).find((v) => v.target === node.config!.dataDir);
    t.truthy(mount, `${node.name}: --data-dir ${node.config!.dataDir} is not a mounted volume (the cache would die with the container)`);
    if (!mount) continue;
    t.false(mount.bind, `${node.name}: data dir is a named volume`);
    t.false(seen.has(mount.source), `${node.name}: volume ${mount.source} is shared (LevelDB allows one process per folder)`);
    seen.add(mount.source);
  }
  t.is(seen.size, 4);
});

test('shields trust X-Forwarded-* from exactly the network they share with the edges; edges trust nobody', (t) => {
  for (const edge of byRole('edge')) t.deepEqual(edge.config!.trustForwardedFrom, [], `${edge.name} faces clients and must trust no one`);
  const edgeNames = new Set(byRole('edge').map((n) => n.name));
  for (const shield of byRole('shield')) {
    const trusted = shield.config!.trustForwardedFrom;
    t.true(trusted.length > 0, `${shield.name} sets OUTPOST_TRUST_FORWARDED_FROM`);
    // The same parse the pipeline does at start-up (pipeline/cache-pipeline.ts buildBlockList).
    const list = new BlockList();
    for (const entry of trusted) {
      const [address = '', prefix] = entry.split('/');
      t.not(isIP(address), 0, `${shield.name}: ${entry} is not an address or CIDR`);
      if (prefix === undefined) list.addAddress(address);
      else list.addSubnet(address, Number(prefix), isIP(address) === 6 ? 'ipv6' : 'ipv4');
    }
    for (const edgeName of edgeNames) {
      const shared = networksOf(compose.services[edgeName]!).filter((n) => networksOf(compose.services[shield.name]!).includes(n));
      t.is(shared.length, 1, `${edgeName} reaches ${shield.name} over exactly one network`);
      const network = compose.networks?.[shared[0]!];
      const subnet = network?.ipam?.config?.[0]?.subnet;
      t.truthy(subnet, `network ${shared[0]} has a fixed subnet (the trust list names it)`);
      if (!subnet) continue;
      const [first, last] = ipv4Range(subnet);
      t.true(list.check(first) && list.check(last), `${shield.name} trusts all of ${subnet}`);
      // Whoever else can connect from that network would be trusted too: only edges and shields.
      for (const [name, service] of services) {
        if (!networksOf(service).includes(shared[0]!)) continue;
        t.true(edgeNames.has(name) || nodes.get(name)?.role === 'shield', `${name} is on the trusted network ${shared[0]}`);
      }
    }
  }
});

function ipv4Range(cidr: string): [string, string] {
  const [address = '', prefix = '32'] = cidr.split('/');
  const n = address.split('.').reduce((acc, octet) => acc * 256 + Number(octet), 0);
  const size = 2 ** (32 - Number(prefix));
  const base = n - (n % size);
  const text = (v: number) => [24, 16, 8, 0].map((s) => Math.floor(v / 2 ** s) % 256).join('.');
  return [text(base), text(base + size - 1)];
}

// ---- volumes, mounts, networks, ports ---------------------------------------------------------

test('every named volume mounted is declared, every declared one is used, every bind-mounted path exists', (t) => {
  const declared = new Set(Object.keys(compose.volumes ?? {}));
  const used = new Set<string>();
  for (const [name, service] of services) {
    for (const v of volumesOf(service)) {
      t.true(v.target.startsWith('/'), `${name}: mount target ${v.target} is absolute`);
      if (v.bind) {
        t.true(existsSync(join(ROOT, v.source)), `${name}: host path ${v.source} exists`);
      } else {
        t.true(declared.has(v.source), `${name}: volume ${v.source} is declared under volumes:`);
        used.add(v.source);
      }
    }
  }
  t.deepEqual([...declared].sort(), [...used].sort());
});

test('every network used is declared and every declared network is used', (t) => {
  const declared = new Set(Object.keys(compose.networks ?? {}));
  const used = new Set<string>();
  for (const [name, service] of services) {
    for (const network of networksOf(service)) {
      t.true(declared.has(network), `${name}: network ${network} is declared`);
      used.add(network);
    }
  }
  t.deepEqual([...declared].sort(), [...used].sort());
});

test('published ports bind 127.0.0.1 and map to the ports the edge listens on (HTTP and HTTPS)', (t) => {
  let published = 0;
  for (const [name, service] of services) {
    for (const port of service.ports ?? []) {
      published++;
      if (typeof port === 'string') {
        const parts = port.split(':');
        t.is(parts.length, 3, `${name}: "${port}" names the host address`);
        t.is(parts[0], '127.0.0.1', `${name}: "${port}" binds 127.0.0.1`);
        t.true([nodes.get(name)?.listen.port, nodes.get(name)?.config?.listenTls?.port].includes(Number(parts[2])), `${name}: "${port}" targets the listen or listen-tls port`);
      } else {
        t.is(port.host_ip, '127.0.0.1', `${name}: port binds 127.0.0.1`);
        t.is(port.target, nodes.get(name)?.listen.port ?? -1);
      }
    }
  }
  t.deepEqual(
    services.filter(([, s]) => (s.ports ?? []).length > 0).map(([name]) => name).sort(),
    ['edge-1', 'edge-2'],
    'only the edges are published',
  );
  t.is(published, 4, 'HTTP and HTTPS of each edge');
});

test('no value relies on ${…} interpolation that compose would substitute silently', (t) => {
  t.notRegex(COMPOSE_TEXT.replace(/\$\$/g, ''), /\$/);
});

// ---- health checks and start order ------------------------------------------------------------

test('health checks run node (curl is not in the image) against the node’s health path on its listen port', (t) => {
  for (const node of nodes.values()) {
    const text = healthcheckText(compose.services[node.name]!);
    const test0 = compose.services[node.name]!.healthcheck?.test;
    t.true(Array.isArray(test0) && test0[0] === 'CMD' && test0[1] === 'node', `${node.name}: healthcheck is ["CMD", "node", …]`);
    const path = node.role === 'origin' ? '/healthz' : '/__outpost/health';
    t.true(text.includes(`http://127.0.0.1:${node.listen.port}${path}`), `${node.name}: healthcheck probes ${path} on port ${node.listen.port}`);
  }
});

/** Runs a compose healthcheck's `node -e` script with its URL pointed at `port`; resolves to the exit code. */
function runHealthcheck(service: Service, port: number): Promise<number> {
  const cmd = service.healthcheck!.test as string[];
  const args = cmd.slice(2).map((a) => a.replace(/127\.0\.0\.1:\d+/, `127.0.0.1:${port}`));
  return new Promise((resolve) => {
    execFile(process.execPath, args, { timeout: 10_000 }, (error) => resolve(error ? (typeof error.code === 'number' ? error.code : 1) : 0));
  });
}

async function listen(server: Server): Promise<number> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  return (server.address() as AddressInfo).port;
}

test('the health check commands really pass against a healthy node and fail against a dead one', async (t) => {
  t.timeout(120_000); // a dozen short node processes
  // Edge/shield stand-in: 200 "ok" on the health path only, like pipeline/health-filter.ts.
  const node = createServer((req, res) => {
    res.writeHead(req.url === '/__outpost/health' ? 200 : 404);
    res.end('ok\n');
  });
  const origin = createDemoOrigin();
  const nodePort = await listen(node);
  const originPort = await listen(origin);
  t.teardown(() => {
    node.close();
    origin.close();
  });
  for (const [name, service] of services) {
    // Other images (Redis) bring their own client for their own check.
    if (!service.healthcheck || !nodes.has(name)) continue;
    const role = nodes.get(name)?.role;
    t.is(await runHealthcheck(service, role === 'origin' ? originPort : nodePort), 0, `${name}: healthcheck passes against a healthy ${role}`);
    // The edge stand-in answers 404 elsewhere: an origin check pointed at it must fail, and vice versa.
    t.not(await runHealthcheck(service, role === 'origin' ? nodePort : originPort), 0, `${name}: healthcheck fails on the wrong path`);
  }
  const closed = createServer();
  const closedPort = await listen(closed);
  await new Promise<void>((resolve) => closed.close(() => resolve()));
  t.not(await runHealthcheck(compose.services['edge-1']!, closedPort), 0, 'healthcheck fails when nothing listens');
});

test('depends_on waits for healthy services, follows the tiers and has no cycle', (t) => {
  for (const [name, service] of services) {
    for (const [dep, spec] of Object.entries(dependsOn(service))) {
      t.truthy(compose.services[dep], `${name} depends on unknown service ${dep}`);
      // A one-shot service is waited for until it has finished, a server until it is healthy.
      if (isOneShot(compose.services[dep]!)) {
        t.is(spec.condition, 'service_completed_successfully', `${name} → ${dep}`);
        continue;
      }
      t.is(spec.condition, 'service_healthy', `${name} → ${dep}`);
      t.truthy(compose.services[dep]?.healthcheck, `${dep} has a healthcheck for ${name} to wait on`);
    }
  }
  for (const edge of byRole('edge')) {
    for (const url of edge.config!.upstreams) t.truthy(dependsOn(compose.services[edge.name]!)[new URL(url).hostname], `${edge.name} waits for ${url}`);
  }
  for (const shield of byRole('shield')) {
    for (const url of shield.config!.origins) t.truthy(dependsOn(compose.services[shield.name]!)[new URL(url).hostname], `${shield.name} waits for ${url}`);
  }
  const visiting = new Set<string>();
  const done = new Set<string>();
  const visit = (name: string): void => {
    if (done.has(name)) return;
    if (visiting.has(name)) throw new Error(`depends_on cycle through ${name}`);
    visiting.add(name);
    for (const dep of Object.keys(dependsOn(compose.services[name] ?? {}))) visit(dep);
    visiting.delete(name);
    done.add(name);
  };
  t.notThrows(() => {
    for (const [name] of services) visit(name);
  });
});

test('the certs service really makes the certificate the edges read, in the volume they mount, as the node user', (t) => {
  const certs = compose.services['certs']!;
  t.is(certs.restart, 'no', 'made once, not restarted');
  const [mount] = volumesOf(certs);
  t.is(mount?.target, '/data', 'the image’s /data is the node user’s, so a new volume there is too');
  const dir = mkdtempSync(join(tmpdir(), 'outpost-certs-'));
  t.teardown(() => rmSync(dir, { recursive: true, force: true }));
  const [command, ...args] = commandOf(certs);
  const run = spawnSync(process.execPath, [join(ROOT, 'bin', 'outpost'), command!, ...args.map((a) => (a === mount!.target ? dir : a))], { encoding: 'utf8' });
  t.is(run.status, 0, run.stderr);
  for (const edge of byRole('edge')) {
    t.truthy(edge.config!.listenTls, `${edge.name} listens for TLS`);
    const certMount = volumesOf(compose.services[edge.name]!).find((v) => v.source === mount!.source);
    t.truthy(certMount, `${edge.name} mounts the certs volume`);
    t.is(dependsOn(compose.services[edge.name]!)['certs']?.condition, 'service_completed_successfully', `${edge.name} starts once the certificate exists`);
    for (const file of [...edge.config!.tlsCert, ...edge.config!.tlsKey]) {
      t.true(file.startsWith(`${certMount!.target}/`), `${edge.name}: ${file} is in the certs volume`);
      t.true(existsSync(join(dir, posix.relative(certMount!.target, file))), `${edge.name}: the certs service writes ${file}`);
    }
  }
});

// ---- k6 -------------------------------------------------------------------------------------

test('k6 runs under the loadtest profile with the official image, against an edge it can reach', (t) => {
  const k6 = compose.services.k6!;
  t.regex(k6.image ?? '', /^grafana\/k6(:|$)/);
  t.deepEqual(k6.profiles, ['loadtest']);
  const target = new URL(environmentOf(k6).TARGET ?? '');
  t.is(target.hostname, 'edge-1');
  t.is(nodes.get(target.hostname)?.role, 'edge');
  t.is(Number(target.port), nodes.get(target.hostname)?.listen.port ?? -1);
  t.true(networksOf(k6).some((n) => networksOf(compose.services[target.hostname]!).includes(n)), 'k6 shares a network with its target');
  t.truthy(dependsOn(k6)[target.hostname]);
  t.true(volumesOf(k6).some((v) => v.bind && v.source === './loadtests'), 'k6 mounts ./loadtests');
});

/** Maps a path inside the k6 container back to the host through its bind mounts. */
function k6HostPath(containerPath: string): string | undefined {
  for (const v of volumesOf(compose.services.k6!)) {
    if (v.bind && containerPath.startsWith(`${v.target}/`)) return join(ROOT, v.source, posix.relative(v.target, containerPath));
  }
  return undefined;
}

test('each k6 script named by the compose file and the load-test README exists', (t) => {
  const command = commandOf(compose.services.k6!);
  t.is(command[0], 'run');
  const scripts = new Set<string>([command[command.length - 1]!]);
  const readme = readFileSync(join(ROOT, 'loadtests', 'README.md'), 'utf8');
  for (const text of [COMPOSE_TEXT, readme]) for (const match of text.matchAll(/\/scripts\/[\w./-]+\.(?:ts|js)/g)) scripts.add(match[0]);
  t.true(scripts.size >= 4, [...scripts].join(', '));
  for (const script of scripts) {
    const host = k6HostPath(script);
    t.truthy(host, `${script} is inside a k6 mount`);
    t.true(host !== undefined && existsSync(host) && statSync(host).isFile(), `${script} → ${host} exists`);
  }
  for (const required of ['hot-hits', 'stampede', 'swr', 'mixed']) {
    t.true(existsSync(join(ROOT, 'loadtests', `${required}.ts`)) || existsSync(join(ROOT, 'loadtests', `${required}.js`)), `loadtests/${required} exists`);
    t.true(readme.includes(`${required}.`), `the README explains ${required}`);
  }
});

// ---- Dockerfile --------------------------------------------------------------------------------

interface Instruction {
  cmd: string;
  args: string;
}
interface Stage {
  from: string;
  name: string | undefined;
  instructions: Instruction[];
}

function dockerfileStages(): Stage[] {
  const text = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
  const logical = text
    .split('\n')
    .filter((line) => !/^\s*#/.test(line))
    .join('\n')
    .replace(/\\\n/g, ' ')
    .split('\n')
    .map((line) => line.trim())
    .filter(Boolean);
  const args: StringMap = {};
  const stages: Stage[] = [];
  for (const line of logical) {
    const space = line.search(/\s/);
    const cmd = line.slice(0, space).toUpperCase();
    const rest = line.slice(space + 1).trim();
    if (cmd === 'ARG' && stages.length === 0) {
      const [k = '', v = ''] = rest.split('=');
      args[k] = v;
      continue;
    }
    if (cmd === 'FROM') {
      const [image = '', as, name] = rest.split(/\s+/);
      const from = image.replace(/\$\{(\w+)\}|\$(\w+)/g, (_m, a?: string, b?: string) => args[(a ?? b)!] ?? '');
      stages.push({ from, name: as?.toUpperCase() === 'AS' ? name : undefined, instructions: [] });
      continue;
    }
    stages[stages.length - 1]?.instructions.push({ cmd, args: rest });
  }
  return stages;
}

test('the Dockerfile builds in one stage (npm ci, build, prune) and runs in another', (t) => {
  const stages = dockerfileStages();
  t.true(stages.length >= 2);
  const build = stages[0]!;
  const runtime = stages[stages.length - 1]!;
  for (const stage of [build, runtime]) t.regex(stage.from, /^node:(20|22)-bookworm-slim$/);
  const runs = build.instructions.filter((i) => i.cmd === 'RUN').map((i) => i.args).join(' && ');
  t.regex(runs, /\bnpm ci\b/);
  const buildAt = Math.max(runs.search(/npm run build|\btsc\b/), -1);
  const pruneAt = runs.indexOf('npm prune --omit=dev');
  t.true(buildAt >= 0, 'the build stage compiles');
  t.true(pruneAt > buildAt, 'dev dependencies are pruned after the build');
  // The runtime stage takes the pruned node_modules, the compiled dist/ and the launcher.
  const copies = runtime.instructions.filter((i) => i.cmd === 'COPY').map((i) => i.args);
  for (const path of ['package.json', 'node_modules', 'dist', 'bin']) {
    t.true(copies.some((c) => c.startsWith(`--from=${build.name}`) && c.split(/\s+/)[1] === `/app/${path}`), `runtime copies ${path} from the build stage`);
  }
  t.false(runtime.instructions.some((i) => i.cmd === 'RUN' && /npm (ci|install)/.test(i.args)), 'no install in the runtime stage');
});

test('the image runs bin/outpost as the node user with a /data volume', (t) => {
  const runtime = dockerfileStages().at(-1)!;
  const entrypoint = runtime.instructions.filter((i) => i.cmd === 'ENTRYPOINT').at(-1);
  t.deepEqual(JSON.parse(entrypoint?.args ?? 'null'), ['node', 'bin/outpost']);
  t.is(runtime.instructions.filter((i) => i.cmd === 'USER').at(-1)?.args, 'node');
  const volume = runtime.instructions.find((i) => i.cmd === 'VOLUME');
  t.truthy(volume);
  const dataDirs = JSON.parse(volume!.args) as string[];
  t.deepEqual(dataDirs, ['/data']);
  t.true(runtime.instructions.some((i) => i.cmd === 'RUN' && /chown node(:node)? \/data/.test(i.args)), '/data is writable by node');
  // Every edge and shield in the compose file stores its cache in that volume path.
  for (const node of nodes.values()) if (node.config) t.is(node.config.dataDir, '/data', node.name);
  // bin/outpost loads the compiled CLI from dist/ and package.json makes it ESM: both are copied.
  t.regex(readFileSync(join(ROOT, 'bin', 'outpost'), 'utf8'), /import\(['"]\.\.\/dist\/cli\/main\.js['"]\)/);
  t.is((JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as { type?: string }).type, 'module');
});

test('the build stage copies every source folder tsconfig.json compiles, none of them ignored', (t) => {
  const build = dockerfileStages()[0]!;
  const sources = build.instructions
    .filter((i) => i.cmd === 'COPY' && !i.args.startsWith('--from'))
    .flatMap((i) => {
      const parts = i.args.split(/\s+/).filter((p) => !p.startsWith('--'));
      return parts.slice(0, -1);
    });
  for (const source of sources) t.true(existsSync(join(ROOT, source)), `COPY source ${source} exists`);
  const tsconfig = JSON.parse(readFileSync(join(ROOT, 'tsconfig.json'), 'utf8')) as { include: string[] };
  for (const dir of tsconfig.include) t.true(sources.includes(dir), `tsconfig.json compiles ${dir}/ and the Dockerfile copies it`);
  for (const file of ['package.json', 'package-lock.json', 'tsconfig.json', 'bin']) t.true(sources.includes(file), `copies ${file}`);

  const ignored = readFileSync(join(ROOT, '.dockerignore'), 'utf8')
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
  for (const entry of ['node_modules', 'dist', 'data', '.git', '.outpost-data']) t.true(ignored.includes(entry), `.dockerignore has ${entry}`);
  for (const source of sources) t.false(ignored.includes(source), `${source} is copied but .dockerignore drops it`);
});

test('the PoP’s edges share one Redis for rate limits, on a network of their own, unpublished', (t) => {
  const redis = compose.services['redis'];
  t.truthy(redis, 'a redis service');
  t.regex(redis!.image ?? '', /^redis:\d/);
  t.deepEqual(redis!.healthcheck?.test, ['CMD', 'redis-cli', 'ping']);
  t.is((redis!.ports ?? []).length, 0);
  for (const edge of byRole('edge')) {
    const store = edge.config!.rateLimitStore;
    t.is(store, 'redis://redis:6379', `${edge.name} shares the PoP's counters`);
    const shared = networksOf(compose.services[edge.name]!).filter((n) => networksOf(redis!).includes(n));
    t.true(shared.length > 0, `${edge.name} can reach redis`);
    t.truthy(compose.services[edge.name]!.depends_on && JSON.stringify(compose.services[edge.name]!.depends_on).includes('redis'), `${edge.name} waits for redis`);
  }
  for (const [name, service] of services) {
    if (name !== 'redis' && !byRole('edge').some((e) => e.name === name)) t.false(networksOf(service).some((n) => networksOf(redis!).includes(n)), `${name} is not on the PoP's Redis network`);
  }
});
