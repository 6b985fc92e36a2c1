/**
 * The access log: one JSON line per request, in pino's line format, written to the pino
 * logger's own destination. Lines are built by hand and handed to the destination in batches:
 * pino's generic serialiser, and sonic-boom's per-write byte counting of its whole pending
 * buffer, were the largest costs on the hit path we control (--cpu-prof under wrk).
 * A batch goes out at 16 KiB or after FLUSH_MS, whichever comes first, and on shutdown.
 */
import { pino, type Logger } from 'pino';

interface Destination {
  write(line: string): unknown;
}

const BATCH_CHARS = 16 * 1024;
const FLUSH_MS = 250;

const NEEDS_ESCAPE = /["\\\u0000-\u001f\u007f-\uffff]/;

function quote(value: string): string {
  return NEEDS_ESCAPE.test(value) ? JSON.stringify(value) : `"${value}"`;
}

export interface AccessLine {
  id: string;
  /** identify's client address: the PROXY header's or a trusted X-Forwarded-For hop's when there is one. */
  client: string;
  method: string;
  host: string;
  path: string;
  status: number;
  bytes: number;
  ms: number;
  cache: string;
  detail: string | undefined;
  complete: boolean;
}

export class AccessLog {
  readonly enabled: boolean;
  private readonly destination: Destination | undefined;
  private readonly head: string;
  /** Lines waiting for the next batch; joined once (a flat string) rather than grown as a rope. */
  private pending: string[] = [];
  private pendingChars = 0;
  private timer: NodeJS.Timeout | undefined;

  constructor(logger: Logger, name: string) {
    const stream = (logger as unknown as Record<symbol, unknown>)[pino.symbols.streamSym] as Destination | undefined;
    this.enabled = logger.isLevelEnabled('info') && typeof stream?.write === 'function';
    this.destination = stream;
    this.head = `,"pid":${process.pid},"name":${quote(name)},"id":`;
    // Runs before the destination's own exit flush (registered when the logger was made).
    if (this.enabled) process.prependOnceListener('exit', () => this.flush());
  }

  write(line: AccessLine): void {
    const text = `{"level":30,"time":${Date.now()}${this.head}${quote(line.id)},"client":${quote(line.client)},"method":${quote(line.method)},"host":${quote(line.host)},"path":${quote(line.path)},"status":${line.status},"bytes":${line.bytes},"ms":${line.ms},"cache":"${line.cache}"${line.detail === undefined ? '' : `,"detail":${quote(line.detail)}`},"complete":${line.complete},"msg":"request"}\n`;
    this.pending.push(text);
    this.pendingChars += text.length;
    if (this.pendingChars >= BATCH_CHARS) this.flush();
    else if (this.timer === undefined) {
      this.timer = setTimeout(() => this.flush(), FLUSH_MS);
      this.timer.unref();
    }
  }

  /** Hands buffered lines to the destination (also called on shutdown and at exit). */
  flush(): void {
    if (this.timer !== undefined) {
      clearTimeout(this.timer);
      this.timer = undefined;
    }
    if (this.pending.length === 0) return;
    const batch = this.pending.join('');
    this.pending = [];
    this.pendingChars = 0;
    this.destination!.write(batch);
  }
}
