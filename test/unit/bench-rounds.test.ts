import assert from 'node:assert/strict';
import { test } from 'node:test';
import { median } from '../../bench/load.js';
import { bootstrapMedianInterval, describeRoundRatios, inTurn, medianPairedRatio, pairedRatios } from '../../bench/rounds.js';

const MODES = ['direct', 'mailfront', 'mailfront-nocache', 'nginx', 'floor'] as const;

/** The modes measured in turn while the machine slows down steadily (10 % over the step); every mode's true rate is 400/s. */
async function drifting(rounds: number): Promise<{ order: string[]; taken: Map<(typeof MODES)[number], number[]> }> {
  const order: string[] = [];
  let t = 0;
  const blocks = MODES.length * rounds;
  const taken = await inTurn(
    MODES.map((m) => [m, async () => 400 * (1 - (0.1 * (t++ + 0.5)) / blocks)] as const),
    rounds,
    (mode) => order.push(mode),
  );
  return { order, taken };
}

test('the modes take turns in an order reversed every other round', async () => {
  const { order } = await drifting(4);
  const forward = [...MODES];
  const backward = [...MODES].reverse();
  assert.deepEqual(order, [...forward, ...backward, ...forward, ...backward]);
});

test('a steady drift cancels between identical modes over an even number of rounds', async () => {
  const { taken } = await drifting(4);
  const m = (k: (typeof MODES)[number]): number => median(taken.get(k)!);
  // With the order fixed, these were 0.993, 1.014 and 0.972 (3 rounds).
  for (const k of MODES) assert.ok(Math.abs(m(k) / m('direct') - 1) < 1e-9, `${k} ÷ direct = ${m(k) / m('direct')}`);
  // The rounds' own ratios: each a little above or below 1 by the modes' places in its round,
  // evened out in the median to within a second-order term.
  for (const k of MODES) {
    const p = medianPairedRatio(taken.get(k), taken.get('direct'));
    assert.ok(Math.abs(p - 1) < 1e-3, `${k} ÷ direct, median of the rounds' ratios = ${p}`);
  }
});

test('rounds pair up only when both modes have the same number of them', () => {
  assert.deepEqual(pairedRatios([2, 3], [1, 2]), [2, 1.5]);
  assert.deepEqual(pairedRatios([2, 3], [1]), []);
  assert.ok(Number.isNaN(medianPairedRatio(undefined, [1])));
});

test('bench:compare prints the spread of the rounds\' ratios: their range and a bootstrap interval of their median', () => {
  const ratios = [0.96, 1.02, 0.99, 1.05, 1.0, 0.98, 1.01, 1.03, 0.97, 1.0, 1.04, 0.99];
  const text = describeRoundRatios(ratios);
  assert.match(text, /^median of the rounds' ratios 1\.000, rounds from 0\.960 to 1\.050, 95 % bootstrap interval of the median (\d\.\d{3}) to (\d\.\d{3}) \(rounds: 0\.96, 1\.02,/);
  const [low, high] = bootstrapMedianInterval(ratios);
  assert.ok(low >= 0.96 && low <= 1.0 && high >= 1.0 && high <= 1.05, `${low} to ${high}: inside the range, around the median`);
  assert.ok(high > low, 'rounds that differ give an interval, not a point');
  assert.deepEqual(bootstrapMedianInterval(ratios), [low, high], 'the same rounds, the same interval');
  assert.deepEqual(bootstrapMedianInterval([1.01, 1.01, 1.01]), [1.01, 1.01]);
});
