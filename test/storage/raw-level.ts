/** The disk tier's folder read or altered with a plain LevelDB handle (the store must be closed). */
import { Level } from 'level';

export async function withRaw<T>(dir: string, fn: (db: Level<Buffer, Buffer>) => Promise<T>): Promise<T> {
  const db = new Level<Buffer, Buffer>(dir, { keyEncoding: 'buffer', valueEncoding: 'buffer' });
  await db.open();
  try {
    return await fn(db);
  } finally {
    await db.close();
  }
}

/** The keys of the rows under `prefix` (e.g. 'o1/b/'). */
export function rawKeys(dir: string, prefix: string): Promise<Buffer[]> {
  return withRaw(dir, (db) => db.keys({ gte: Buffer.from(prefix), lt: Buffer.from(prefix.slice(0, -1) + '0') }).all());
}

/** Rows holding body bytes: chunk rows (o1/b/) and one-chunk bodies' body rows (o1/f/). */
export async function bodyRows(dir: string): Promise<number> {
  return (await rawKeys(dir, 'o1/b/')).length + (await rawKeys(dir, 'o1/f/')).length;
}
