/**
 * One upstream body streamed to many responses as it arrives (request collapsing): every reader
 * starts at the first byte and goes at its own pace; none waits for the whole body.
 *
 * Memory is bounded by what the body costs anyway, plus a window:
 * - Every reader honours its socket's backpressure: a slow client holds no more than its socket
 *   buffer, never a copy of the body (TLS and HTTP/2 copy what they are given).
 * - A body the memory tier will hold whole (`window` undefined) is kept whole while it may be
 *   stored: the same buffers, not a second copy.
 * - A larger body that is being stored (on disk) keeps only the last `window` bytes. The fill never
 *   waits for a reader: one that falls behind the window continues from the store once the entry
 *   is committed (`fallback`), or is cut if it never is.
 * - A body that will not be stored (`stopRetaining`) keeps only chunks some reader still needs,
 *   and the fill waits (`room()`) while they exceed the window: nobody else could serve those
 *   readers, so the upstream goes at the pace of the slowest one, as a plain proxy's does.
 */
import type { Readable, Writable } from 'node:stream';

interface Reader {
  /** Absolute index of the next chunk this reader writes. */
  index: number;
}

export interface BroadcastOptions {
  /** Bytes kept behind the newest chunk. Undefined: the whole body (it is held whole anyway). */
  window?: number;
  /**
   * The stored entry's body from byte `start` to `end` (inclusive), once committed; rejects when
   * it never will be. Lets a reader that lost its place in the window carry on.
   */
  fallback?: (start: number, end: number | undefined) => Promise<Readable>;
}

export class BodyBroadcast {
  private readonly chunks: Buffer[] = [];
  /** Chunks dropped from the front (absolute index of chunks[0]). */
  private dropped = 0;
  /** Bytes in `chunks`. */
  private heldBytes = 0;
  private readonly readers = new Set<Reader>();
  private listeners: Array<() => void> = [];
  private roomWaiters: Array<() => void> = [];
  private finished = false;
  private failure: Error | undefined;
  /** The body may still be stored: chunks are dropped only by the window, never for readers. */
  private retaining = true;
  private readonly window: number | undefined;
  private fallback: BroadcastOptions['fallback'];
  /** Bytes received so far. */
  length = 0;
  /** True while notify() runs the readers' steps. */
  private notifying = false;

  constructor(options: BroadcastOptions = {}) {
    this.window = options.window;
    this.fallback = options.fallback;
  }

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.length += chunk.length;
    this.heldBytes += chunk.length;
    if (this.retaining) this.slideWindow();
    else this.trim();
    this.notify();
  }

  end(): void {
    this.finished = true;
    this.notify();
  }

  /** The upstream body failed: every reader's response is destroyed, so its client sees truncation. */
  fail(error: Error): void {
    this.failure = error;
    this.notify();
    this.releaseRoom();
  }

  get done(): boolean {
    return this.finished;
  }

  get failed(): boolean {
    return this.failure !== undefined;
  }

  /** Chunks held right now (for tests and metrics). */
  get heldChunks(): number {
    return this.chunks.length;
  }

  /** Bytes held right now (for tests and metrics). */
  get held(): number {
    return this.heldBytes;
  }

  /** False once a new reader could not get the first byte: from the window, or from the store. */
  get acceptsReaders(): boolean {
    return this.dropped === 0 || (this.retaining && this.fallback !== undefined);
  }

  /**
   * Nothing will be stored, and no reader may join from now on: drop chunks as soon as every
   * current reader has written them. Takes effect on the next turn of the event loop, so readers
   * already handed this broadcast (the leader and collapsed waiters resolve in microtasks)
   * register first. Readers that lost their place in the window will get no stored entry: they
   * are cut.
   */
  stopRetaining(): Promise<void> {
    return new Promise((resolve) =>
      setImmediate(() => {
        this.retaining = false;
        this.fallback = undefined;
        this.trim();
        this.notify();
        resolve();
      }),
    );
  }

  /**
   * For a body that is not stored: resolves once the chunks readers still need fit the window,
   * so the fill reads on. Undefined when there is room already (the common case costs no promise).
   */
  room(): Promise<void> | undefined {
    if (this.retaining || this.window === undefined || this.heldBytes <= this.window || this.failure) return undefined;
    return new Promise((resolve) => this.roomWaiters.push(resolve));
  }

  /**
   * Writes the body (or an inclusive byte range) to a response as it arrives, without a stream
   * per reader: cheap when a thousand collapsed requests share one fill. Writes stop while the
   * response's buffer is full and go on at 'drain'.
   */
  pipeTo(out: Writable, range: { start: number; end: number } | undefined, onBytes: (n: number) => void): void {
    if (!this.acceptsReaders) {
      out.destroy(new Error('the body is no longer held for new readers'));
      return;
    }
    const reader: Reader = { index: 0 };
    this.readers.add(reader);
    let position = 0;
    let finished = false;
    const start = range?.start ?? 0;
    const end = range ? range.end + 1 : Infinity;
    const finish = (): void => {
      if (finished) return;
      finished = true;
      this.readers.delete(reader);
      this.trim();
    };
    // A client that leaves while its buffer is full never drains: it must not hold chunks.
    out.once('close', finish);
    const step = (): void => {
      if (finished) return;
      if (out.destroyed) return finish();
      while (reader.index - this.dropped < this.chunks.length) {
        if (reader.index < this.dropped) {
          finish();
          return this.continueFromStore(out, Math.max(position, start), end, onBytes);
        }
        const chunk = this.chunks[reader.index - this.dropped]!;
        const chunkStart = position;
        reader.index++;
        position += chunk.length;
        if (position <= start) continue;
        const slice = chunk.subarray(Math.max(0, start - chunkStart), Math.min(chunk.length, end - chunkStart));
        let flowing = true;
        if (slice.length > 0) {
          onBytes(slice.length);
          flowing = out.write(slice);
        }
        if (position >= end) {
          out.end();
          return finish();
        }
        if (!flowing) {
          this.trim();
          out.once('drain', step);
          return;
        }
      }
      if (this.failure) {
        out.destroy(this.failure);
        return finish();
      }
      if (this.finished) {
        out.end();
        return finish();
      }
      this.listeners.push(step);
      this.trim();
    };
    step();
  }

  /** A reader behind the window: the rest of its bytes come from the committed entry. */
  private continueFromStore(out: Writable, from: number, end: number, onBytes: (n: number) => void): void {
    const fallback = this.fallback;
    if (fallback === undefined || this.failure) {
      out.destroy(this.failure ?? new Error('fell behind a body that is not stored'));
      return;
    }
    fallback(from, end === Infinity ? undefined : end - 1).then(
      (body) => {
        if (out.destroyed) {
          body.destroy();
          return;
        }
        body.on('data', (chunk: Buffer) => onBytes(chunk.length));
        body.once('error', (error) => out.destroy(error));
        out.once('close', () => body.destroy());
        body.pipe(out);
      },
      (error: Error) => out.destroy(error),
    );
  }

  /** Storing a body held in part: keep the last `window` bytes, whoever still reads them. */
  private slideWindow(): void {
    if (this.window === undefined || this.fallback === undefined) return;
    let drop = 0;
    let bytes = this.heldBytes;
    // The newest chunk always stays, so a reader at the head can take it.
    while (drop < this.chunks.length - 1 && bytes > this.window) bytes -= this.chunks[drop++]!.length;
    if (drop > 0) this.dropFront(drop);
  }

  /** Not storing: drop what every reader has written. */
  private trim(): void {
    // Each reader a notify() wakes would walk every reader: one walk after they have all run.
    if (this.notifying) return;
    if (this.retaining || this.chunks.length === 0) return;
    let lowest = this.dropped + this.chunks.length;
    for (const reader of this.readers) lowest = Math.min(lowest, reader.index);
    const drop = lowest - this.dropped;
    if (drop > 0) this.dropFront(drop);
    if (this.window === undefined || this.heldBytes <= this.window) this.releaseRoom();
  }

  private dropFront(count: number): void {
    for (let i = 0; i < count; i++) this.heldBytes -= this.chunks[i]!.length;
    this.chunks.splice(0, count);
    this.dropped += count;
  }

  private releaseRoom(): void {
    if (this.roomWaiters.length === 0) return;
    const waiters = this.roomWaiters;
    this.roomWaiters = [];
    for (const resolve of waiters) resolve();
  }

  private notify(): void {
    if (this.listeners.length === 0) return;
    const listeners = this.listeners;
    this.listeners = [];
    this.notifying = true;
    try {
      for (const listener of listeners) listener();
    } finally {
      this.notifying = false;
    }
    this.trim();
  }
}
