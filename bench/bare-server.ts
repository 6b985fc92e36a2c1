/**
 * The "bare" baseline: a node:http server that answers every request with one captured response
 * (status, headers exactly as the edge sent them, body), held in memory. bench/run.ts captures the
 * edge's hit response with one request and starts this as a child process:
 *
 *   node dist/bench/bare-server.js RESPONSE.json      prints {"port":N} on stdout once listening
 *
 * RESPONSE.json: {"status": 200, "rawHeaders": ["Name", "value", …], "body": "<base64>"}.
 * The headers are replayed as a flat [name, value, …] list, so names, order, Date, Age and
 * Cache-Status are byte-for-byte the captured ones (node adds none of its own, since Date,
 * Connection and Keep-Alive are already in the list).
 */
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

interface Captured {
  status: number;
  rawHeaders: string[];
  body: string;
}

const captured = JSON.parse(readFileSync(process.argv[2]!, 'utf8')) as Captured;
const body = Buffer.from(captured.body, 'base64');
const headers = captured.rawHeaders;
const status = captured.status;

const server = createServer((_req, res) => {
  res.writeHead(status, headers);
  res.end(body);
});
// Same server timeouts as the edge's node:http server (pipeline/node-server.ts).
server.keepAliveTimeout = 5_000;
server.listen(0, '127.0.0.1', () => {
  process.stdout.write(`${JSON.stringify({ port: (server.address() as AddressInfo).port })}\n`);
});
process.on('SIGTERM', () => process.exit(0));
