/**
 * Memory per idle spliced session: the order of the RSS samples, the forced GC and the sessions
 * opened and closed. The process, its sessions and its GC come from the caller (bench/main.ts),
 * so the sequence can be checked with stand-ins.
 */
import { setTimeout as sleep } from 'node:timers/promises';
import type { IdleSessions } from './load.js';
import type { IdleFigure } from './report.js';

export interface IdleMeasure {
  readonly count: number;
  readonly label: string;
  /** The process's RSS now (the process tree's for nginx). */
  readonly rss: () => number;
  /** Its open descriptors, to wait for sessions to open and close; absent for a process tree. */
  readonly openFiles?: () => number;
  /** Opens `count` idle sessions (LOGIN, SELECT, IDLE) within `maxSeconds`. */
  readonly open: (count: number, maxSeconds: number) => Promise<IdleSessions>;
  /** Bound on opening the measured sessions. */
  readonly maxSeconds: number;
  /** Forces a full GC in the process (mailfront with an inspector). */
  readonly gc?: () => Promise<void>;
  readonly say: (text: string) => void;
  /** Waits; the real clock unless a test says otherwise. */
  readonly pause?: (ms: number) => Promise<void>;
}

/** Median of `n` RSS samples taken `gapMs` apart. */
async function settledRss(read: () => number, pause: (ms: number) => Promise<void>, n = 5, gapMs = 300): Promise<number> {
  const samples: number[] = [];
  for (let i = 0; i < n; i++) {
    samples.push(read());
    await pause(gapMs);
  }
  samples.sort((a, b) => a - b);
  return samples[Math.floor(samples.length / 2)] ?? 0;
}

/** Waits (bounded: at most timeoutMs / 100 checks) until at most / at least `target` files are open. */
async function waitOpenFiles(openFiles: () => number, target: number, direction: 'down' | 'up', timeoutMs: number, pause: (ms: number) => Promise<void>): Promise<void> {
  for (let waited = 0; waited < timeoutMs; waited += 100) {
    const n = openFiles();
    if (direction === 'down' ? n <= target : n >= target) return;
    await pause(100);
  }
}

/**
 * RSS before and after opening `count` sessions that LOGIN, SELECT and IDLE, after a warm-up of
 * 200 opened and closed sessions. Both figures start from the RSS after the forced GC (when there
 * is one): "after a GC" is what the sessions keep alive, "as found" the same plus the garbage
 * their logins left. An "as found" figure that started from the RSS before the GC would have had
 * the warm-up's garbage taken out between its two samples, and read low by that much.
 */
export async function measureIdle(m: IdleMeasure): Promise<IdleFigure> {
  const pause = m.pause ?? ((ms: number) => sleep(ms));
  const fds = m.openFiles;
  const fd0 = fds?.() ?? 0;
  const warm = await m.open(200, 30);
  warm.closeAll();
  if (fds) await waitOpenFiles(fds, fd0 + 5, 'down', 10_000, pause);
  await pause(1000);
  const uncollected = await settledRss(m.rss, pause);
  await m.gc?.();
  const before = m.gc ? await settledRss(m.rss, pause) : uncollected;
  m.say(`  ${m.label}: RSS ${(before / 1048576).toFixed(1)} MiB before${m.gc ? ` (after a full GC; ${(uncollected / 1048576).toFixed(1)} MiB before it)` : ''}; opening ${m.count} sessions (LOGIN, SELECT, IDLE)`);
  const sessions = await m.open(m.count, m.maxSeconds);
  const opened = sessions.clients.length;
  if (sessions.errors > 0) m.say(`  ${sessions.errors} sessions failed; first: ${sessions.firstError ?? ''}`);
  if (fds) await waitOpenFiles(fds, fd0 + 2 * opened, 'up', 5_000, pause);
  await pause(2000);
  const after = await settledRss(m.rss, pause);
  await m.gc?.();
  const afterGc = m.gc ? await settledRss(m.rss, pause) : after;
  const openFilesAfter = fds?.() ?? 0;
  const kib = (a: number, b: number): string => ((a - b) / Math.max(1, opened) / 1024).toFixed(2);
  m.say(`  ${m.label}: ${opened} sessions open in ${sessions.seconds.toFixed(1)} s; RSS ${(after / 1048576).toFixed(1)} MiB: ${kib(after, before)} KiB per session${m.gc ? `; after a full GC ${(afterGc / 1048576).toFixed(1)} MiB: ${kib(afterGc, before)} KiB per session` : ''}`);
  sessions.closeAll();
  if (fds) await waitOpenFiles(fds, fd0 + 5, 'down', 30_000, pause);
  else await pause(2000);
  return {
    sessions: opened,
    errors: sessions.errors,
    ...(sessions.firstError !== undefined ? { firstError: sessions.firstError } : {}),
    openSeconds: sessions.seconds,
    rssUncollectedBytes: uncollected,
    rssBeforeBytes: before,
    rssAfterBytes: after,
    bytesPerSession: (after - before) / Math.max(1, opened),
    rssBeforeGcBytes: before,
    rssAfterGcBytes: afterGc,
    bytesPerSessionAfterGc: (afterGc - before) / Math.max(1, opened),
    forcedGc: m.gc !== undefined,
    openFilesAfter,
  };
}
