/**
 * A file of zeros kept in the disk tier's LevelDB folder, given back when the disk is full.
 *
 * Measured on tmpfs (issue 13): once a LevelDB write fails for lack of space, nothing inside
 * LevelDB can free any. Reopening replays the log into a new table (up to its 4 MiB write
 * buffer); deletes free space only once a compaction has written new tables; and LevelDB starts
 * compacting as soon as it opens. All of that needs free space first. Deleting this file provides
 * it, so the store can reopen, evict and compact; the file is written again once there is room.
 */
import { open, rm, statfs } from 'node:fs/promises';

/** Zeros written per call: the reserve (up to 64 MiB) never sits in memory whole. */
const ZEROS = Buffer.alloc(1024 * 1024);

export class SpaceReserve {
  constructor(
    readonly path: string,
    readonly bytes: number,
  ) {}

  /** Writes the file if it is missing or short. False when the disk has no room for it (then no file is left). */
  async ensure(): Promise<boolean> {
    if (this.bytes <= 0) return false;
    let file;
    try {
      file = await open(this.path, 'a+');
      const { size } = await file.stat();
      if (size >= this.bytes) return true;
      // Zeros written for real (not a sparse truncate), so the blocks are taken now.
      // No fsync: the file system counts the blocks as used from the write on.
      for (let at = size; at < this.bytes; ) {
        const { bytesWritten } = await file.write(ZEROS, 0, Math.min(ZEROS.length, this.bytes - at), at);
        if (bytesWritten === 0) throw new Error('no bytes written');
        at += bytesWritten;
      }
      return true;
    } catch {
      await file?.close().catch(() => undefined);
      file = undefined;
      await this.release();
      return false;
    } finally {
      await file?.close().catch(() => undefined);
    }
  }

  /** Deletes the file. True when there was one to delete. */
  async release(): Promise<boolean> {
    try {
      await rm(this.path);
      return true;
    } catch {
      return false;
    }
  }
}

/** Bytes free for this process on the file system holding `path`; undefined when unknown. */
export async function freeBytes(path: string): Promise<number | undefined> {
  try {
    const stats = await statfs(path);
    return stats.bavail * stats.bsize;
  } catch {
    return undefined;
  }
}
