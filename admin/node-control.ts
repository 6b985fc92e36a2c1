/**
 * What the admin API operates on: a node, whether one process (`npm start`, embedding) or a
 * primary with workers (cluster/primary.ts). Every answer covers the whole node.
 */
import type { MetricsJson } from '../pipeline/metrics.js';
import type { NodeSnapshot, RunningNode } from '../pipeline/node-server.js';
import type { PurgeRequest } from '../pipeline/purge.js';
import type { StoredVariant } from '../storage/cache-store.js';

export interface WorkerState {
  index: number;
  pid: number | undefined;
  state: 'starting' | 'open' | 'ready' | 'dead';
}

export interface InspectedVariant extends StoredVariant {
  /** The worker whose tiers hold it (multi-worker nodes). */
  worker?: number;
}

export interface NodeControl {
  /** Applies a purge to every tier and every fill in flight of the node; resolves once it holds. */
  purge(request: PurgeRequest): Promise<number>;
  /** Each serving process's snapshot, for /stats and /readyz. */
  snapshots(): Promise<NodeSnapshot[]>;
  /** Metrics of every process, combined by the admin server. */
  metrics(): Promise<MetricsJson[]>;
  /** A URL's (cache key's) stored variants in every tier. */
  inspect(url: string): Promise<InspectedVariant[]>;
  /** Serving: every process has its store open and listens. */
  started(): boolean;
  /** Shutting down: readiness is false from the signal on. */
  draining(): boolean;
  /** Worker processes and restarts; undefined for a single-process node. */
  workers(): { list: WorkerState[]; restarts: number } | undefined;
}

/**
 * A node running in this process. `nodes[0]` is the one reported on (the edge of `npm start`),
 * the others the tiers behind it, in order; purges and metrics cover them all.
 */
export class LocalControl implements NodeControl {
  private stopping = false;

  constructor(private readonly nodes: readonly RunningNode[]) {}

  /** The tier nearest the origin first: a miss at the edge meanwhile must not refill from a shield not yet purged. */
  async purge(request: PurgeRequest): Promise<number> {
    let affected = 0;
    for (const node of [...this.nodes].reverse()) affected += await node.pipeline.purgeHere(request);
    return affected;
  }

  async snapshots(): Promise<NodeSnapshot[]> {
    return [await this.nodes[0]!.snapshot()];
  }

  metrics(): Promise<MetricsJson[]> {
    return Promise.all(this.nodes.map((node) => node.metrics.json()));
  }

  inspect(url: string): Promise<InspectedVariant[]> {
    return this.nodes[0]!.inspect(url);
  }

  started(): boolean {
    return true;
  }

  draining(): boolean {
    return this.stopping;
  }

  /** Called on SIGTERM, before the nodes close. */
  drain(): void {
    this.stopping = true;
  }

  workers(): undefined {
    return undefined;
  }
}
