/**
 * One upstream body streamed to many readers as it arrives (request collapsing): every
 * subscriber reads from the start at its own pace, none waits for the whole body.
 * Chunks are kept until the broadcast itself is dropped, so late subscribers still get all bytes.
 */
import type { Writable } from 'node:stream';

export class BodyBroadcast {
  private readonly chunks: Buffer[] = [];
  private listeners: Array<() => void> = [];
  private finished = false;
  private failure: Error | undefined;
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

  /** The upstream body failed: every reader errors, so its client sees a truncated response. */
  fail(error: Error): void {
    this.failure = error;
    this.notify();
  }

  get done(): boolean {
    return this.finished;
  }

  /**
   * Writes the body (or an inclusive byte range) straight to a response as it arrives, without a
   * stream per reader: cheap when a thousand collapsed requests share one fill. Backpressure is
   * not awaited because every chunk is held here anyway; the socket only queues references.
   */
  pipeTo(out: Writable, range: { start: number; end: number } | undefined, onBytes: (n: number) => void): void {
    let index = 0;
    let position = 0;
    const start = range?.start ?? 0;
    const end = range ? range.end + 1 : Infinity;
    const step = (): void => {
      if (out.destroyed) return;
      while (index < this.chunks.length) {
        const chunk = this.chunks[index]!;
        const chunkStart = position;
        index++;
        position += chunk.length;
        if (position <= start) continue;
        const slice = chunk.subarray(Math.max(0, start - chunkStart), Math.min(chunk.length, end - chunkStart));
        if (slice.length > 0) {
          onBytes(slice.length);
          out.write(slice);
        }
        if (position >= end) {
          out.end();
          return;
        }
      }
      if (this.failure) out.destroy(this.failure);
      else if (this.finished) out.end();
      else this.listeners.push(step);
    };
    step();
  }

  private notify(): void {
    if (this.listeners.length === 0) return;
    const listeners = this.listeners;
    this.listeners = [];
    for (const listener of listeners) listener();
  }
}
