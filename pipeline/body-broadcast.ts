/**
 * One upstream body streamed to many responses as it arrives (request collapsing): every reader
 * starts at the first byte and goes at its own pace; none waits for the whole body.
 *
 * Chunks are kept so that late readers still get every byte — until `stopRetaining()` (the body
 * will not be stored, and no reader may join any more): from then on, chunks every reader has
 * passed are dropped, so an unstorable large body is not held in memory whole.
 */
import type { Writable } from 'node:stream';

interface Reader {
  /** Absolute index of the next chunk this reader writes. */
  index: number;
}

export class BodyBroadcast {
  private readonly chunks: Buffer[] = [];
  /** Chunks dropped from the front (absolute index of chunks[0]). */
  private dropped = 0;
  private readonly readers = new Set<Reader>();
  private listeners: Array<() => void> = [];
  private finished = false;
  private failure: Error | undefined;
  private retaining = true;
  /** Bytes received so far. */
  length = 0;

  push(chunk: Buffer): void {
    this.chunks.push(chunk);
    this.length += chunk.length;
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

  /** False once chunks were dropped: a new reader could not start at the first byte. */
  get acceptsReaders(): boolean {
    return this.retaining || this.dropped === 0;
  }

  /**
   * No reader will join from now on: drop chunks as soon as every current reader has written
   * them. Takes effect on the next turn of the event loop, so readers already handed this
   * broadcast (the leader and collapsed waiters resolve in microtasks) register first.
   */
  stopRetaining(): Promise<void> {
    return new Promise((resolve) =>
      setImmediate(() => {
        this.retaining = false;
        this.trim();
        resolve();
      }),
    );
  }

  /**
   * Writes the body (or an inclusive byte range) straight to a response as it arrives, without a
   * stream per reader: cheap when a thousand collapsed requests share one fill. Backpressure is
   * not awaited because the chunks are held here anyway; the socket only queues references.
   */
  pipeTo(out: Writable, range: { start: number; end: number } | undefined, onBytes: (n: number) => void): void {
    if (!this.acceptsReaders) {
      out.destroy(new Error('the body is no longer held for new readers'));
      return;
    }
    const reader: Reader = { index: 0 };
    this.readers.add(reader);
    let position = 0;
    const start = range?.start ?? 0;
    const end = range ? range.end + 1 : Infinity;
    const finish = (): void => {
      this.readers.delete(reader);
      this.trim();
    };
    const step = (): void => {
      if (out.destroyed) return finish();
      while (reader.index - this.dropped < this.chunks.length) {
        const chunk = this.chunks[reader.index - this.dropped]!;
        const chunkStart = position;
        reader.index++;
        position += chunk.length;
        if (position <= start) continue;
        const slice = chunk.subarray(Math.max(0, start - chunkStart), Math.min(chunk.length, end - chunkStart));
        if (slice.length > 0) {
          onBytes(slice.length);
          out.write(slice);
        }
        if (position >= end) {
          out.end();
          return finish();
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

  private trim(): void {
    if (this.retaining || this.chunks.length === 0) return;
    let lowest = this.dropped + this.chunks.length;
    for (const reader of this.readers) lowest = Math.min(lowest, reader.index);
    const drop = lowest - this.dropped;
    if (drop <= 0) return;
    this.chunks.splice(0, drop);
    this.dropped += drop;
  }

  private notify(): void {
    if (this.listeners.length === 0) return;
    const listeners = this.listeners;
    this.listeners = [];
    for (const listener of listeners) listener();
  }
}
