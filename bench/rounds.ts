/**
 * Measuring in rounds, the modes in turn, and combining a mode's rounds into one figure.
 */
import { median, type LoginLoopResult } from './load.js';
import type { LoginFigure } from './report.js';

/**
 * Measures in rounds, the modes in turn (A B C, A B C, …): the VM's speed drifts by tens of per
 * cent within minutes, and a figure taken after another in one block would carry the drift into
 * their ratio. Returns each mode's rounds in order; `taken` hears of each as it is taken.
 */
export async function inTurn<K extends string, T>(modes: ReadonlyArray<readonly [K, () => Promise<T>]>, rounds: number, taken: (mode: K, round: number, value: T) => void): Promise<Map<K, T[]>> {
  const all = new Map<K, T[]>(modes.map(([k]) => [k, []]));
  for (let round = 1; round <= rounds; round++) {
    for (const [mode, measure] of modes) {
      const value = await measure();
      all.get(mode)!.push(value);
      taken(mode, round, value);
    }
  }
  return all;
}

export function combineRounds(figures: readonly LoginFigure[]): LoginFigure {
  const mid = (f: (x: LoginFigure) => number): number => median(figures.map(f));
  const pct = (f: (x: LoginFigure) => LoginLoopResult['loginMs']): LoginLoopResult['loginMs'] => ({
    p50: mid((x) => f(x).p50),
    p99: mid((x) => f(x).p99),
    mean: mid((x) => f(x).mean),
    max: Math.max(...figures.map((x) => f(x).max)),
    n: figures.reduce((n, x) => n + f(x).n, 0),
  });
  const firstError = figures.find((x) => x.loop.firstError !== undefined)?.loop.firstError;
  const groups = [...new Set(figures.flatMap((x) => Object.keys(x.cpuPer1000)))];
  return {
    loop: {
      logins: figures.reduce((n, x) => n + x.loop.logins, 0),
      errors: figures.reduce((n, x) => n + x.loop.errors, 0),
      ...(firstError !== undefined ? { firstError } : {}),
      seconds: figures.reduce((n, x) => n + x.loop.seconds, 0),
      perSecond: mid((x) => x.loop.perSecond),
      loginMs: pct((x) => x.loop.loginMs),
      sessionMs: pct((x) => x.loop.sessionMs),
      loadCpuShare: mid((x) => x.loop.loadCpuShare),
    },
    rounds: figures.map((x) => ({ perSecond: x.loop.perSecond, cpuPer1000: x.cpuPer1000 })),
    cpuPer1000: Object.fromEntries(groups.map((g) => [g, mid((x) => x.cpuPer1000[g] ?? NaN)])),
    machineBusy: mid((x) => x.machineBusy),
    foreignCores: mid((x) => x.foreignCores),
  };
}
