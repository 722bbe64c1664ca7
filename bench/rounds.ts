/**
 * Measuring in rounds, the modes in turn, and combining a mode's rounds into one figure.
 */
import { median, type LoginLoopResult } from './load.js';
import { seededRandom } from '../test/seeded-random.js';
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

/**
 * A 95 % interval for the median of `xs` by the percentile bootstrap: `resamples` draws with
 * replacement, the 2.5th and 97.5th percentiles of their medians. The draws come from a fixed
 * seed, so the same rounds print the same interval. With few rounds (12 by default in
 * bench:compare) it is rough; the min–max beside it is the plainer spread.
 */
export function bootstrapMedianInterval(xs: readonly number[], resamples = 2000, seed = 1): readonly [number, number] {
  if (xs.length === 0) return [NaN, NaN];
  const random = seededRandom(seed);
  const medians: number[] = [];
  for (let i = 0; i < resamples; i++) medians.push(median(xs.map(() => xs[Math.floor(random() * xs.length)]!)));
  medians.sort((a, b) => a - b);
  const at = (q: number): number => medians[Math.min(medians.length - 1, Math.max(0, Math.round(q * (medians.length - 1))))]!;
  return [at(0.025), at(0.975)];
}

/** The rounds' ratios as bench:compare prints them: their median, their range and the median's bootstrap interval. */
export function describeRoundRatios(ratios: readonly number[]): string {
  if (ratios.length === 0) return 'no rounds';
  const [low, high] = bootstrapMedianInterval(ratios);
  return `median of the rounds' ratios ${median(ratios).toFixed(3)}, rounds from ${Math.min(...ratios).toFixed(3)} to ${Math.max(...ratios).toFixed(3)}, 95 % bootstrap interval of the median ${low.toFixed(3)} to ${high.toFixed(3)} (rounds: ${ratios.map((r) => r.toFixed(2)).join(', ')})`;
}
