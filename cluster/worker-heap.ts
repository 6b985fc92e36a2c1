/**
 * The V8 heap limit each worker starts with (issue 13).
 *
 * Besides a ceiling, V8's old-space limit sets how far the heap may grow past its live size before
 * a major collection: the growing factor is 4 for limits of 2 GB and more, and falls towards 1.3
 * for small ones. Node's default limit follows the machine's memory (about 4 GB on a 24 GiB box),
 * so a worker churning its memory tier kept up to three times its live heap resident. Measured
 * (BENCHMARKS.md, "Issue 13: the worker heap limit"): one worker filling distinct 1 KiB objects
 * into a 256MB tier held 804 MB after 90 s with the default limit, 612 MB with 1024 MB and 599 MB
 * with 768 MB, at the same fill rate.
 *
 * The limit is the worker's share of the memory tier (its entries' objects live on the heap; their
 * bodies do not) plus HEADROOM_MB for everything else: connections, requests and fills in flight.
 * An operator's own --max-old-space-size (node flags or NODE_OPTIONS) is kept as given.
 */

const MB = 1024 * 1024;
/** Heap for what is not the memory tier: at ~20 KB of objects per connection, 10,000 connections. */
export const HEADROOM_MB = 512;
const LIMIT_FLAG = /^--max[-_]old[-_]space[-_]size(=|$)/;

/** The old-space limit, in MB, for a worker holding `memoryBytes` of the memory tier. */
export function workerHeapLimitMb(memoryBytes: number): number {
  return Math.ceil(memoryBytes / MB) + HEADROOM_MB;
}

/** True when the operator set the limit: in node's own flags, or in NODE_OPTIONS. */
export function heapLimitGiven(execArgv: readonly string[], nodeOptions: string | undefined): boolean {
  return execArgv.some((flag) => LIMIT_FLAG.test(flag)) || (nodeOptions ?? '').split(/\s+/).some((flag) => LIMIT_FLAG.test(flag));
}

/** The flags a worker starts with: the primary's, plus the heap limit unless the operator gave one. */
export function workerExecArgv(execArgv: readonly string[], nodeOptions: string | undefined, memoryBytes: number): string[] {
  if (heapLimitGiven(execArgv, nodeOptions)) return [...execArgv];
  return [...execArgv, `--max-old-space-size=${workerHeapLimitMb(memoryBytes)}`];
}
