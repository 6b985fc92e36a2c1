/**
 * One upstream body streamed to many readers as it arrives (request collapsing): every
 * subscriber reads from the start at its own pace, none waits for the whole body.
 * Chunks are kept until the broadcast itself is dropped, so late subscribers still get all bytes.
 */
import { Readable } from 'node:stream';

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

  /** A reader of the whole body, or of the inclusive byte range `start..end`. */
  subscribe(range?: { start: number; end: number }): Readable {
    let index = 0;
    let position = 0; // byte offset of chunks[index]
    const start = range?.start ?? 0;
    const end = range ? range.end + 1 : Infinity;
    let waiting = false;
    const readable = new Readable({
      read: () => pump(),
    });
    const pump = (): void => {
      while (index < this.chunks.length) {
        const chunk = this.chunks[index]!;
        const chunkStart = position;
        index++;
        position += chunk.length;
        if (position <= start) continue;
        const slice = chunk.subarray(Math.max(0, start - chunkStart), Math.min(chunk.length, end - chunkStart));
        if (position >= end) {
          if (slice.length > 0) readable.push(slice);
          readable.push(null);
          return;
        }
        if (slice.length > 0 && !readable.push(slice)) return;
      }
      if (this.failure) {
        readable.destroy(this.failure);
        return;
      }
      if (this.finished) {
        readable.push(null);
        return;
      }
      if (!waiting) {
        waiting = true;
        this.listeners.push(() => {
          waiting = false;
          if (!readable.destroyed) pump();
        });
      }
    };
    return readable;
  }

  private notify(): void {
    if (this.listeners.length === 0) return;
    const listeners = this.listeners;
    this.listeners = [];
    for (const listener of listeners) listener();
  }
}
