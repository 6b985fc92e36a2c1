/**
 * The accept phase (DESIGN.md): the listeners a node serves clients on. Plain HTTP/1.1, and
 * HTTPS with HTTP/2 and HTTP/1.1 chosen by ALPN. Each listener is a net.Server in front of its
 * protocol server. The front applies the connection limits and, when on, reads the PROXY
 * protocol header before the HTTP or TLS server sees a byte; it then hands the socket over
 * with `emit('connection')`. Both protocols reach the same request handler, so HTTP/2 and
 * HTTP/1.1 clients get the same cache.
 */
import { createServer as createHttpServer, Server as HttpServerClass, type IncomingMessage, type Server as HttpServer, type ServerResponse } from 'node:http';
import { constants as h2constants, createSecureServer, type Http2SecureServer, type Http2ServerRequest, type Http2ServerResponse, type ServerHttp2Session } from 'node:http2';
import { createServer as createNetServer, type AddressInfo, type BlockList, type Server as NetServer, type Socket } from 'node:net';
import { randomBytes } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import type { Logger } from 'pino';
import type { Config } from '../config/config.js';
import type { CertificateStore } from '../edge/tls/certificates.js';
import { ProxyProtocolError, readProxyHeader } from '../edge/proxy-protocol.js';
import { buildBlockList, inAddressList } from './address-list.js';
import { HEALTH_PATH } from './health-filter.js';
import type { Metrics } from './metrics.js';

/** A balancer that connected sends its PROXY header at once; one that does not within this is not one. */
export const PROXY_HEADER_TIMEOUT_MS = 5_000;

/** How often node:http checks header and request timeouts (its default, 30 s, lets a slowloris hold sockets far past them). */
const TIMEOUT_CHECK_INTERVAL_MS = 1_000;

export type RequestHandler = (req: IncomingMessage, res: ServerResponse) => void;

export interface ListenerOptions {
  config: Readonly<Config>;
  logger: Logger;
  metrics: Metrics;
  handle: RequestHandler;
  /** The HTTPS listener's certificates (required when config.listenTls is set). */
  certificates?: CertificateStore;
  /** Session ticket keys shared by every worker of the node (else this process makes its own). */
  ticketKeys?: Buffer;
}

interface Listener {
  readonly front: NetServer;
  readonly scheme: 'http' | 'https';
  url: string;
}

export class Listeners {
  readonly plain: Listener;
  readonly tls: Listener | undefined;
  /** The protocol servers; they never listen themselves: their fronts hand them sockets. */
  readonly http: HttpServer;
  readonly secure: Http2SecureServer | undefined;
  /** Every client connection still open (shutdown reaches each one). */
  readonly sockets = new Set<Socket>();
  /** The TLS sockets on top of some of them: an HTTP/1.1 response in progress is found on these. */
  private readonly tlsSockets = new Set<TLSSocket>();
  private readonly sessions = new Set<ServerHttp2Session>();
  private readonly perClient = new Map<string, number>();
  private config: Readonly<Config>;
  private trustedProxies: BlockList;
  private exempt: BlockList;
  private readonly metrics: Metrics;
  private readonly logger: Logger;
  private readonly certificates: CertificateStore | undefined;
  private ticketTimer: NodeJS.Timeout | undefined;

  constructor(options: ListenerOptions) {
    const { config, handle } = options;
    this.config = config;
    this.metrics = options.metrics;
    this.logger = options.logger;
    this.certificates = options.certificates;
    this.trustedProxies = buildBlockList(config.trustedProxies);
    this.exempt = buildBlockList([...config.trustedProxies, ...config.trustForwardedFrom]);
    this.http = createHttpServer(
      { maxHeaderSize: config.clientHeaderMaxBytes, connectionsCheckingInterval: TIMEOUT_CHECK_INTERVAL_MS },
      (req, res) => {
        if (this.tooManyHeaders(req, res)) return;
        if (this.config.redirectHttp && req.url !== HEALTH_PATH) return this.redirect(req, res);
        handle(req, res);
      },
    );
    this.plain = this.front(this.http, 'http');
    if (config.listenTls !== undefined) {
      if (!this.certificates) throw new Error('an HTTPS listener needs certificates');
      const secure = createSecureServer(
        {
          ...this.certificates.defaultOptions(),
          SNICallback: this.certificates.sniCallback,
          allowHTTP1: true,
          ...(options.ticketKeys ? { ticketKeys: options.ticketKeys } : {}),
          handshakeTimeout: config.clientHeaderTimeoutMs,
          maxHeaderListPairs: config.clientMaxHeaders + 4,
          maxSessionRejectedStreams: 100,
          maxSessionInvalidFrames: 100,
          // Rapid reset (CVE-2023-44487): node releases after 20 apply these in nghttp2; trackSession enforces them on every release.
          ...({ streamResetBurst: config.h2ResetBurst, streamResetRate: config.h2ResetRate } as object),
          settings: { maxConcurrentStreams: config.h2MaxConcurrentStreams, maxHeaderListSize: config.clientHeaderMaxBytes, enablePush: false },
        },
        (req: Http2ServerRequest, res: Http2ServerResponse) => {
          const request = req as unknown as IncomingMessage;
          const response = res as unknown as ServerResponse;
          if (req.httpVersionMajor === 2 ? !asHttp1Request(req, res) : this.tooManyHeaders(request, response)) return;
          if (this.config.hsts !== '') res.setHeader('strict-transport-security', this.config.hsts);
          handle(request, response);
        },
      );
      this.secure = secure;
      secure.on('secureConnection', (socket: TLSSocket) => {
        carryProxiedAddress(socket);
        this.tlsSockets.add(socket);
        socket.once('close', () => this.tlsSockets.delete(socket));
      });
      secure.on('session', (session: ServerHttp2Session) => this.trackSession(session));
      secure.on('tlsClientError', (error: NodeJS.ErrnoException) => this.metrics.inc('tls_handshake_errors_total', 'TLS handshakes that failed', { code: error.code ?? 'unknown' }));
      if (!options.ticketKeys) this.rotateTicketKeys(config.tlsTicketRotateSec);
      this.tls = this.front(secure, 'https');
    }
    this.applyTimeouts();
    if (this.secure) {
      // Its HTTP/1.1 connections read these from the server as node:http's own do; unset, they
      // are node's defaults (16 KiB heads; timeout checks every 30 s).
      const h1 = this.secure as unknown as { maxHeaderSize: number; connectionsCheckingInterval: number };
      h1.maxHeaderSize = config.clientHeaderMaxBytes;
      h1.connectionsCheckingInterval = TIMEOUT_CHECK_INTERVAL_MS;
    }
    // node:http sets up its header and request timeout checks when a server starts listening;
    // these never do (their fronts listen), so they are told they are.
    this.http.emit('listening');
    this.secure?.emit('listening');
  }

  async listen(): Promise<void> {
    await listenOn(this.plain, this.config.listen);
    if (this.tls) await listenOn(this.tls, this.config.listenTls!);
  }

  /** SIGHUP: timeouts, limits, trusted proxies, HSTS and redirect apply to connections from now on. */
  reconfigure(config: Readonly<Config>): void {
    this.config = config;
    this.trustedProxies = buildBlockList(config.trustedProxies);
    this.exempt = buildBlockList([...config.trustedProxies, ...config.trustForwardedFrom]);
    this.applyTimeouts();
  }

  /**
   * The certificates were re-read: clients that send no SNI get the server's own context, so it
   * is replaced too. setSecureContext also replaces the session ticket key, which the node's
   * workers share: it is put back.
   */
  refreshCertificates(): void {
    if (!this.secure || !this.certificates) return;
    const ticketKeys = this.secure.getTicketKeys();
    this.secure.setSecureContext(this.certificates.defaultOptions());
    this.secure.setTicketKeys(ticketKeys);
  }

  /** A new session ticket key from the primary: every worker resumes every other's sessions. */
  setTicketKeys(keys: Buffer): void {
    this.secure?.setTicketKeys(keys);
  }

  /** Stops accepting; connections already open stay until shutdown closes them. */
  stopAccepting(): Promise<void> {
    clearInterval(this.ticketTimer);
    const fronts = [this.plain.front, ...(this.tls ? [this.tls.front] : [])];
    return Promise.all(fronts.map((front) => new Promise<void>((resolve) => front.close(() => resolve())))).then(() => undefined);
  }

  /** Shutdown: idle HTTP/1.1 connections close now, busy ones once their response is out; HTTP/2 sessions get GOAWAY. */
  closeIdle(): void {
    for (const server of [this.http, this.secure as unknown as HttpServer | undefined]) {
      if (!server) continue;
      server.keepAliveTimeout = 1;
      // The secure server is not an http.Server, but with allowHTTP1 node:http tracks its
      // HTTP/1.1 connections the same way (see the constructor), so the same method applies.
      HttpServerClass.prototype.closeIdleConnections.call(server);
    }
    for (const socket of [...this.sockets, ...this.tlsSockets]) {
      const res = (socket as Socket & { _httpMessage?: ServerResponse | null })._httpMessage;
      if (res && !res.headersSent) res.shouldKeepAlive = false;
    }
    for (const session of this.sessions) session.close();
  }

  /** Shutdown timeout: whatever is still open is cut. */
  closeAll(): void {
    for (const socket of this.sockets) socket.destroy();
    for (const session of this.sessions) session.destroy();
  }

  /** Resolves once every client connection has closed. */
  async drained(): Promise<void> {
    while (this.sockets.size > 0) await new Promise<void>((resolve) => [...this.sockets][0]!.once('close', () => resolve()));
    // node:http's timeout checks run until their servers close.
    this.http.close();
    this.secure?.close();
  }

  private front(server: HttpServer | Http2SecureServer, scheme: 'http' | 'https'): Listener {
    const front = createNetServer({ noDelay: true }, (socket) => this.accept(socket, server));
    front.maxConnections = this.config.maxConnections;
    front.on('drop', () => this.refuse('max-connections'));
    return { front, scheme, url: '' };
  }

  private accept(socket: Socket, server: HttpServer | Http2SecureServer): void {
    this.sockets.add(socket);
    socket.once('close', () => this.sockets.delete(socket));
    if (!this.config.proxyProtocol) return this.admit(socket, socket.remoteAddress ?? '', server);
    // Only a balancer may say who the client is; anyone else connecting is cut at once.
    if (!inAddressList(this.trustedProxies, socket.remoteAddress ?? '')) {
      this.refuse('proxy-untrusted');
      socket.destroy();
      return;
    }
    readProxyHeader(socket, PROXY_HEADER_TIMEOUT_MS).then(
      (header) => {
        if (socket.destroyed) return;
        if (header.command === 'proxy' && header.source) {
          // identify reads the client from the socket: from here on it is the one the balancer named.
          Object.defineProperty(socket, 'remoteAddress', { value: header.source.address, configurable: true });
          Object.defineProperty(socket, 'remotePort', { value: header.source.port, configurable: true });
        }
        this.admit(socket, socket.remoteAddress ?? '', server);
      },
      (error: unknown) => {
        const code = error instanceof ProxyProtocolError ? error.code.slice('PROXY_'.length).toLowerCase() : 'error';
        this.refuse(`proxy-${code}`);
        this.logger.debug({ peer: socket.remoteAddress, err: (error as Error).message }, 'connection closed: no valid PROXY header');
        socket.destroy();
      },
    );
  }

  /** Per-client connection limit (the PROXY header's address when there is one), then the protocol server. */
  private admit(socket: Socket, address: string, server: HttpServer | Http2SecureServer): void {
    const limit = this.config.maxConnectionsPerClient;
    if (limit > 0 && !inAddressList(this.exempt, address)) {
      const open = this.perClient.get(address) ?? 0;
      if (open >= limit) {
        this.refuse('per-client');
        socket.destroy();
        return;
      }
      this.perClient.set(address, open + 1);
      socket.once('close', () => {
        const left = this.perClient.get(address)! - 1;
        if (left === 0) this.perClient.delete(address);
        else this.perClient.set(address, left);
      });
    }
    server.emit('connection', socket);
  }

  private refuse(reason: string): void {
    this.metrics.inc('client_connections_refused_total', 'client connections closed at accept, by reason', { reason });
  }

  private applyTimeouts(): void {
    const c = this.config;
    for (const server of [this.http, this.secure as unknown as HttpServer | undefined]) {
      if (!server) continue;
      server.headersTimeout = c.clientHeaderTimeoutMs;
      server.requestTimeout = Math.max(c.clientRequestTimeoutMs, c.clientHeaderTimeoutMs);
      server.keepAliveTimeout = c.clientKeepAliveTimeoutMs;
      server.maxHeadersCount = c.clientMaxHeaders + 1;
    }
    this.plain.front.maxConnections = c.maxConnections;
    if (this.tls) this.tls.front.maxConnections = c.maxConnections;
  }

  /** node:http keeps the first maxHeadersCount fields and drops the rest; a request with more is refused instead. */
  private tooManyHeaders(req: IncomingMessage, res: ServerResponse): boolean {
    if (req.rawHeaders.length / 2 <= this.config.clientMaxHeaders) return false;
    this.metrics.inc('client_errors_total', 'malformed requests answered with a 4xx', { code: 'TOO_MANY_HEADERS' });
    res.shouldKeepAlive = false;
    answerPlain(res, 431, `431 Request Header Fields Too Large: more than ${this.config.clientMaxHeaders} header fields\n`);
    return true;
  }

  /** --redirect-http: the same URL on the HTTPS listener (its port unless 443). */
  private redirect(req: IncomingMessage, res: ServerResponse): void {
    const host = (req.headers.host ?? '').replace(/:\d+$/, '');
    const port = (this.tls!.front.address() as AddressInfo).port;
    if (host === '' || !/^[a-z0-9.\-[\]:]+$/i.test(host)) {
      answerPlain(res, 400, '400 Bad Request: no valid Host\n');
      return;
    }
    const location = `https://${host}${port === 443 ? '' : `:${port}`}${req.url ?? '/'}`;
    res.writeHead(308, { location, 'content-length': 0, 'cache-control': 'no-store' });
    res.end();
  }

  /** HTTP/2 sessions idle past the keep-alive timeout (no stream open) are closed, like idle HTTP/1.1 connections. */
  private trackSession(session: ServerHttp2Session): void {
    this.sessions.add(session);
    let open = 0;
    // Rapid reset (CVE-2023-44487): a bucket of h2ResetBurst stream resets per session, refilled at
    // h2ResetRate a second. node 20's http2 has no such option (later releases take
    // streamResetBurst/Rate), and nghttp2's own limit is fixed.
    let resets = this.config.h2ResetBurst;
    let refilledAt = performance.now();
    session.on('stream', (stream) => {
      open++;
      stream.once('close', () => {
        open--;
        if (!stream.rstCode || session.destroyed) return;
        const { h2ResetBurst, h2ResetRate } = this.config;
        const now = performance.now();
        resets = Math.min(h2ResetBurst, resets + ((now - refilledAt) / 1000) * h2ResetRate);
        refilledAt = now;
        if (--resets < 0) {
          this.metrics.inc('h2_sessions_closed_total', 'HTTP/2 sessions the node closed, by reason', { reason: 'rapid-reset' });
          session.goaway(h2constants.NGHTTP2_ENHANCE_YOUR_CALM);
          session.destroy();
        }
      });
    });
    session.setTimeout(this.config.clientKeepAliveTimeoutMs, () => {
      if (open === 0) session.close();
    });
    session.once('close', () => this.sessions.delete(session));
  }

  /** A single process rotates its own ticket key; the workers of a node get theirs from the primary. */
  private rotateTicketKeys(everySec: number): void {
    this.secure!.setTicketKeys(randomBytes(48));
    this.ticketTimer = setInterval(() => this.secure!.setTicketKeys(randomBytes(48)), everySec * 1000);
    this.ticketTimer.unref();
  }
}

function answerPlain(res: ServerResponse, status: number, text: string): void {
  res.writeHead(status, { 'content-type': 'text/plain', 'content-length': Buffer.byteLength(text), 'cache-control': 'no-store' });
  res.end(text);
}

async function listenOn(listener: Listener, at: { host: string; port: number }): Promise<void> {
  const { front } = listener;
  await new Promise<void>((resolve, reject) => {
    front.once('error', reject);
    front.listen(at.port, at.host, () => {
      front.off('error', reject);
      resolve();
    });
  });
  const address = front.address() as AddressInfo;
  const host = address.family === 'IPv6' ? `[${address.address}]` : address.address;
  listener.url = `${listener.scheme}://${host}:${address.port}`;
}

/**
 * The TLS socket wraps the front's socket, whose address the PROXY header may have replaced:
 * the TLS socket reports the same one. (`_parent` is how node's TLSSocket names the socket it wraps.)
 */
function carryProxiedAddress(socket: TLSSocket): void {
  const parent = (socket as TLSSocket & { _parent?: Socket })._parent;
  if (parent === undefined || !Object.hasOwn(parent, 'remoteAddress')) return;
  Object.defineProperty(socket, 'remoteAddress', { value: parent.remoteAddress, configurable: true });
  Object.defineProperty(socket, 'remotePort', { value: parent.remotePort, configurable: true });
}

/**
 * An HTTP/2 request in the shape the pipeline reads (HTTP/1.1's): the authority becomes Host
 * and the pseudo-header fields leave the header list, so they are neither forwarded nor
 * inspected as fields. A Host that names another authority than :authority makes the request
 * malformed (RFC 9113 §8.3.1): 400. Returns false when it answered.
 */
function asHttp1Request(req: Http2ServerRequest, res: Http2ServerResponse): boolean {
  const headers = req.headers;
  const authority = headers[':authority'];
  if (authority !== undefined && headers.host !== undefined && headers.host.toLowerCase() !== authority.toLowerCase()) {
    answerPlain(res as unknown as ServerResponse, 400, '400 Bad Request: Host differs from :authority\n');
    return false;
  }
  // node:http2 reads url and method from the pseudo-header fields: they become the request's own.
  Object.defineProperty(req, 'url', { value: headers[':path'], writable: true });
  Object.defineProperty(req, 'method', { value: headers[':method'], writable: true });
  for (const name of [':authority', ':method', ':path', ':scheme', ':protocol']) delete headers[name];
  const raw = req.rawHeaders;
  let kept = 0;
  for (let i = 0; i < raw.length; i += 2) {
    if (raw[i]!.charCodeAt(0) === 0x3a /* : */) continue;
    raw[kept++] = raw[i]!;
    raw[kept++] = raw[i + 1]!;
  }
  raw.length = kept;
  if (authority !== undefined && headers.host === undefined) {
    headers.host = authority;
    raw.unshift('host', authority);
  }
  return true;
}
