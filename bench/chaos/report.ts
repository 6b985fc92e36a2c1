/** The chaos run's summary: events, request counts, failures, version checks, evidence. */
import { label, type Tally, type Timeline } from './record.js';

const pct = (n: number, of: number) => (of > 0 ? `${((100 * n) / of).toFixed(2)} %` : '—');
const sec = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

function top(map: Map<string, number>, limit = 12): string[] {
  return [...map.entries()]
    .sort((a, b) => b[1] - a[1])
    .slice(0, limit)
    .map(([name, n]) => `    ${String(n).padStart(7)}  ${name}`);
}

export interface RunInfo {
  seconds: number;
  concurrency: number;
  keys: number;
  topology: string;
  diskNode: string;
  crashes: string[];
  driverCpu: string;
  nodeNotes: string[];
  logs: string;
}

export function report(info: RunInfo, tally: Tally, timeline: Timeline): string {
  const lines: string[] = [];
  const out = (line = '') => lines.push(line);
  out(`== outpost chaos run: ${info.seconds} s, ${info.topology}, ${info.concurrency} clients, ${info.keys} keys (Zipf s=1), bodies 1 KiB–5 MiB`);
  out(`chaos events: ${timeline.events.length} (failed: ${timeline.events.filter((e) => e.failed).length})`);
  for (const e of timeline.events) out(`    ${sec(e.start).padStart(7)} → ${e.end === undefined ? '?' : sec(e.end)}  ${label(e)}${e.failed ? '  FAILED' : ''}: ${e.notes.join('; ')}`);
  out(`disk fill: ${info.diskNode}`);
  if (info.crashes.length > 0) {
    out(`unexpected exits: ${info.crashes.length}`);
    for (const c of info.crashes) out(`    ${c}`);
  }
  out();
  const answered = tally.ok + tally.okPartial;
  out(`requests sent: ${tally.sent} (${tally.rangeSent} with Range), ${(tally.sent / info.seconds).toFixed(0)}/s, ${(tally.bytes / 1048576).toFixed(0)} MiB verified`);
  out(`requests ok: ${answered} (${tally.ok} full, ${tally.okPartial} partial)`);
  out(`requests failed: ${tally.failed} (${pct(tally.failed, tally.sent)}; stale copy available: ${tally.failedStaleAvailable}; no stale copy: ${tally.failedNoStale})`);
  if (tally.failed > 0) {
    out('  by cause:');
    lines.push(...top(tally.failureCauses));
    out('  by chaos event under way:');
    lines.push(...top(tally.failureEvents));
    if (tally.failureSamples.length > 0) out('  failures while the edge asked was up (first ones):');
    for (const s of tally.failureSamples) out(`    ${s}`);
  }
  out(`purges: ${tally.purges.sent} sent, ${tally.purges.ok} ok, ${tally.purges.failed} failed; peers queued in an outbox: ${tally.purges.peersQueued}, rejected: ${tally.purges.peersRejected}`);
  if (tally.purges.failed > 0) lines.push(...top(tally.purgeFailures));
  out(`older versions served (allowed, cached): ${tally.olderVersion} (${pct(tally.olderVersion, answered)})`);
  out(`stale after a purge had replied: ${tally.staleAfterPurge}`);
  if (tally.staleAfterPurge > 0) {
    lines.push(...top(tally.staleAfterPurgeEvents, 6));
    for (const s of tally.staleAfterPurgeSamples) out(`    e.g. ${s}`);
  }
  out(`versions ahead of the origin: ${tally.versionsAhead}`);
  out(`inconsistent headers (ETag / x-checksum of another version): ${tally.inconsistentHeaders}`);
  for (const s of tally.inconsistentSamples) out(`    ${s}`);
  out('cache outcomes (Cache-Status per tier):');
  lines.push(...top(tally.cacheStatus, 10));
  out(`driver CPU (load generation and verification): ${info.driverCpu}`);
  if (info.nodeNotes.length > 0) {
    out('nodes at the end:');
    for (const n of info.nodeNotes) out(`    ${n}`);
  }
  if (tally.wrongBodies > 0) {
    out();
    out(`WRONG BODIES (first ${tally.wrong.length}):`);
    for (const w of tally.wrong) {
      out(`  at ${sec(w.at)} key ${w.key} via ${w.edge}: status ${w.status}, ${w.reason}`);
      out(`    x-version ${w.versionClaimed} (driver's current v${w.versionCurrent}); expected ${w.expectedBytes} bytes, got ${w.gotBytes}; first difference at ${w.firstDiff} ${w.diffHex}`);
      out(`    the body has ${w.bodyOfVersion}; chaos under way: ${w.events}`);
      out(`    headers: ${JSON.stringify(w.headers)}`);
    }
    out(`node logs kept in ${info.logs}`);
  }
  out();
  out(`wrong bodies: ${tally.wrongBodies}`);
  return lines.join('\n');
}
