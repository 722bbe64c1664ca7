/**
 * Measuring in rounds, the modes in turn, and combining a mode's rounds into one figure.
 */
import { median, type LoginLoopResult } from './load.js';
import type { LoginFigure } from './report.js';

/**
 * The order of the modes in round `round` (1-based): as given in odd rounds, reversed in even
 * ones (A B C, C B A, A B C, …). With a fixed order, a mode measured later in every round carries
 * whatever drift the round saw before it: a VM slowing by 10 % over a step made identical modes
 * read 0.97 to 1.01 of each other. Alternating, the positions even out over each pair of rounds,
 * and a steady drift cancels exactly in an even number of rounds.
 */
export function roundOrder<T>(modes: readonly T[], round: number): T[] {
  return round % 2 === 1 ? [...modes] : [...modes].reverse();
}

/**
 * Measures in rounds, the modes in turn (roundOrder): the VM's speed drifts by tens of per cent
 * within minutes, and a figure taken after another in one block would carry the drift into their
 * ratio. Returns each mode's rounds in order; `taken` hears of each as it is taken.
 */
export async function inTurn<K extends string, T>(modes: ReadonlyArray<readonly [K, () => Promise<T>]>, rounds: number, taken: (mode: K, round: number, value: T) => void): Promise<Map<K, T[]>> {
  const all = new Map<K, T[]>(modes.map(([k]) => [k, []]));
  for (let round = 1; round <= rounds; round++) {
    for (const [mode, measure] of roundOrder(modes, round)) {
      const value = await measure();
      all.get(mode)!.push(value);
      taken(mode, round, value);
    }
  }
  return all;
}

/**
 * The ratio a ÷ b of each round (the i-th round of two modes measured in turn), and their median:
 * a drift between rounds cancels in each pair. NaN when the rounds do not pair up.
 */
export function pairedRatios(a: readonly number[] | undefined, b: readonly number[] | undefined): number[] {
  if (a === undefined || b === undefined || a.length === 0 || a.length !== b.length) return [];
  return a.map((x, i) => x / b[i]!);
}

export function medianPairedRatio(a: readonly number[] | undefined, b: readonly number[] | undefined): number {
  return median(pairedRatios(a, b));
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
