/**
 * The admin API, served by the primary of a node (never on a public listener): node-wide stats,
 * Prometheus metrics and purges (issue 9). Every answer covers the whole node: the primary asks
 * every worker before it replies. Authentication comes with the admin issue (10); until then
 * config accepts loopback addresses only.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import type { NodeControl } from '../cluster/primary.js';
import type { PurgeRequest } from '../pipeline/purge.js';

const MAX_BODY_BYTES = 1024 * 1024;
const PURGE_FIELDS = new Set(['url', 'prefix', 'tags', 'all', 'soft']);

export class BadRequest extends Error {}

/** Validates a purge body: exactly one of url, prefix, tags, all; soft optional. */
export function parsePurgeRequest(body: unknown): PurgeRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new BadRequest('the body must be a JSON object');
  const fields = body as Record<string, unknown>;
  for (const name of Object.keys(fields)) if (!PURGE_FIELDS.has(name)) throw new BadRequest(`unknown field ${JSON.stringify(name)}`);
  const kinds = ['url', 'prefix', 'tags', 'all'].filter((name) => fields[name] !== undefined);
  if (kinds.length !== 1) throw new BadRequest(`give exactly one of url, prefix, tags, all (got ${kinds.length === 0 ? 'none' : kinds.join(' and ')})`);
  if (fields.soft !== undefined && typeof fields.soft !== 'boolean') throw new BadRequest('soft must be true or false');
  const soft = fields.soft === true ? { soft: true } : {};
  for (const name of ['url', 'prefix'] as const) {
    const value = fields[name];
    if (value === undefined) continue;
    if (typeof value !== 'string') throw new BadRequest(`${name} must be a string`);
    let parsed: URL;
    try {
      parsed = new URL(value);
    } catch {
      throw new BadRequest(`${name} must be an absolute http:// or https:// URL`);
    }
    if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:') throw new BadRequest(`${name} must be an http:// or https:// URL`);
    return { [name]: value, ...soft };
  }
  if (fields.tags !== undefined) {
    const tags = fields.tags;
    if (!Array.isArray(tags) || tags.length === 0 || !tags.every((tag) => typeof tag === 'string' && tag !== '')) throw new BadRequest('tags must be a non-empty list of non-empty strings');
    return { tags: tags as string[], ...soft };
  }
  if (fields.all !== true) throw new BadRequest('all must be true');
  return { all: true, ...soft };
}

export interface AdminServer {
  server: Server;
  url: string;
  close(): Promise<void>;
}

export async function startAdmin(listen: { host: string; port: number }, control: NodeControl, logger: Logger): Promise<AdminServer> {
  const server = createServer((req, res) => {
    route(req, res, control).catch((error: unknown) => {
      const status = error instanceof BadRequest ? 400 : 500;
      if (status === 500) logger.error({ err: (error as Error).message, path: req.url }, 'admin request failed');
      reply(res, status, { error: (error as Error).message });
    });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(listen.port, listen.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const address = server.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  return {
    server,
    url: `http://${host}:${address.port}`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

async function route(req: IncomingMessage, res: ServerResponse, control: NodeControl): Promise<void> {
  const path = (req.url ?? '/').split('?')[0];
  const method = req.method ?? 'GET';
  if (path === '/healthz' && (method === 'GET' || method === 'HEAD')) return reply(res, 200, { ok: true });
  if (path === '/stats' && method === 'GET') return reply(res, 200, await control.stats());
  if (path === '/metrics' && method === 'GET') {
    const text = await control.metricsText();
    res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4', 'content-length': Buffer.byteLength(text) });
    res.end(text);
    return;
  }
  if (path === '/purge') {
    if (method !== 'POST') return reply(res, 405, { error: 'use POST' }, { allow: 'POST' });
    const request = parsePurgeRequest(await readJson(req));
    const affected = await control.purge(request);
    return reply(res, 200, { affected });
  }
  reply(res, 404, { error: `no admin endpoint ${method} ${path}` });
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  const chunks: Buffer[] = [];
  let length = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    length += chunk.length;
    if (length > MAX_BODY_BYTES) throw new BadRequest('the body is over 1 MiB');
    chunks.push(chunk);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch (error) {
    throw new BadRequest(`malformed JSON: ${(error as Error).message}`);
  }
}

function reply(res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = `${JSON.stringify(body)}\n`;
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store', ...headers });
  res.end(text);
}
