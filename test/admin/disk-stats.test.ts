/** The node's disk tiers combined for /stats and /readyz: sums, and which workers are degraded since when. */
import test from 'ava';
import { diskStats, readinessDetail } from '../../admin/admin-server.js';
import type { NodeSnapshot } from '../../pipeline/node-server.js';
import type { DiskReport } from '../../storage/tiered-store.js';

function report(overrides: Partial<DiskReport>): DiskReport {
  return {
    state: 'ok',
    degradedEntered: 0,
    recoveries: 0,
    failedAttempts: 0,
    degradedMs: 0,
    pendingWrites: 0,
    pendingBytes: 0,
    skippedBehind: 0,
    skippedDegraded: 0,
    memorySkippedBusy: 0,
    memoryAdmissionsRefused: 0,
    memoryPendingBytes: 0,
    writeErrors: 0,
    owed: 0,
    ...overrides,
  };
}

const snapshot = (disk: DiskReport | undefined): NodeSnapshot => ({ disk }) as unknown as NodeSnapshot;

test('two workers, one degraded: the sums, the degraded count, its start and error; readiness names one of two', (t) => {
  const since = Date.UTC(2026, 11, 7, 1, 0, 0);
  const snapshots = [
    snapshot(report({ skippedBehind: 3, pendingBytes: 100, memorySkippedBusy: 1, memoryAdmissionsRefused: 5, degradedMs: 1500 })),
    snapshot(report({ state: 'degraded', since, lastError: 'ENOSPC', skippedDegraded: 7, pendingBytes: 50, degradedEntered: 2, degradedMs: 2500 })),
    // The primary, which has no disk tier.
    snapshot(undefined),
  ];
  t.like(diskStats(snapshots), {
    state: 'degraded',
    degradedWorkers: 1,
    since: new Date(since).toISOString(),
    lastError: 'ENOSPC',
    skippedBehind: 3,
    skippedDegraded: 7,
    memorySkippedBusy: 1,
    memoryAdmissionsRefused: 5,
    pendingBytes: 150,
    degradedEntered: 2,
    degradedSeconds: 4,
  });
  t.deepEqual(readinessDetail(snapshots), { disk: `degraded on 1 of 2 workers since ${new Date(since).toISOString()}: ENOSPC` });
});

test('two degraded workers: the earlier start, both errors; nothing degraded is no readiness detail; no disk tier is no disk stats', (t) => {
  const snapshots = [snapshot(report({ state: 'degraded', since: 2_000, lastError: 'EIO' })), snapshot(report({ state: 'degraded', since: 1_000, lastError: 'ENOSPC' }))];
  t.like(diskStats(snapshots), { degradedWorkers: 2, since: new Date(1_000).toISOString(), lastError: 'EIO; ENOSPC' });
  t.is(readinessDetail([snapshot(report({}))]), undefined);
  t.is(diskStats([snapshot(undefined)]), undefined);
});
