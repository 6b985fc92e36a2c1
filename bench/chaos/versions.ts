/**
 * The current version of every key, shared by the driver and the origins through one small file
 * (a little-endian uint32 per key): the driver bumps a key before purging it, every origin reads
 * it per request. A file rather than a control endpoint, so that an origin under SIGSTOP needs no
 * message it could miss: it sees the new version the moment it resumes, and the three origins
 * never disagree.
 */
import { closeSync, openSync, readSync, writeSync } from 'node:fs';

export class VersionFile {
  private readonly fd: number;
  private readonly word = Buffer.alloc(4);

  private constructor(path: string, flags: string, keys?: number) {
    this.fd = openSync(path, flags);
    if (keys !== undefined) {
      const initial = Buffer.alloc(keys * 4);
      for (let k = 0; k < keys; k++) initial.writeUInt32LE(1, k * 4);
      writeSync(this.fd, initial, 0, initial.length, 0);
    }
  }

  /** Creates the file with every key at version 1 (the driver). */
  static create(path: string, keys: number): VersionFile {
    return new VersionFile(path, 'w+', keys);
  }

  /** Opens it read-only (an origin). */
  static open(path: string): VersionFile {
    return new VersionFile(path, 'r');
  }

  read(key: number): number {
    const n = readSync(this.fd, this.word, 0, 4, key * 4);
    return n === 4 ? this.word.readUInt32LE(0) : 0;
  }

  write(key: number, version: number): void {
    const word = Buffer.alloc(4);
    word.writeUInt32LE(version, 0);
    writeSync(this.fd, word, 0, 4, key * 4);
  }

  close(): void {
    closeSync(this.fd);
  }
}
