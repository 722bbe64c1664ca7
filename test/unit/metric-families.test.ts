import { describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { Counter, Histogram, Registry } from 'prom-client';
import { CounterFamily, HistogramFamily } from '../../src/metric-families.js';

/** Exposition lines with each line's labels in name order, so that label order does not matter. */
function canonical(text: string): string[] {
  return text
    .trimEnd()
    .split('\n')
    .map((line) => {
      const m = /^([^{\s]+)\{(.*)\} (\S+)$/.exec(line);
      if (m === null) return line;
      const labels = (m[2] as string).match(/\w+="(?:[^"\\]|\\.)*"/g) ?? [];
      return `${m[1]}{${[...labels].sort().join(',')}} ${m[3]}`;
    });
}

const BOUNDS = [0.001, 0.01, 0.1, 1];
const OBSERVATIONS: [string, string, number][] = [
  ['a', 'success', 0.0005],
  ['a', 'success', 0.001], // on a bound: that bucket (le is "less than or equal")
  ['a', 'success', 0.05],
  ['b', 'timeout', 5], // above every bound: only +Inf
  ['a', 'error', 0],
  ['b', 'success', 0.0100001],
  ['a "quoted"\\', 'success', 0.2], // label values are escaped as prom-client escapes them
];

describe('metric families', () => {
  it('expose a histogram exactly as prom-client does for the same observations', async () => {
    const ours = new Registry();
    const theirs = new Registry();
    const family = new HistogramFamily('x_seconds', 'Help text.', ['store', 'result'], BOUNDS).registerOn(ours);
    const reference = new Histogram({ name: 'x_seconds', help: 'Help text.', labelNames: ['store', 'result'], buckets: BOUNDS, registers: [theirs] });
    for (const [store, result, value] of OBSERVATIONS) {
      family.observe({ store, result }, value);
      reference.observe({ store, result }, value);
    }
    assert.deepEqual(canonical(await ours.metrics()), canonical(await theirs.metrics()));
    // The JSON form too (the unit tests of metrics.ts read it).
    assert.deepEqual((await ours.getMetricsAsJSON())[0]?.values.length, (await theirs.getMetricsAsJSON())[0]?.values.length);
  });

  it('expose a counter exactly as prom-client does, zero series included', async () => {
    const ours = new Registry();
    const theirs = new Registry();
    const family = new CounterFamily('y_total', 'Help.', ['protocol', 'result']).registerOn(ours);
    const reference = new Counter({ name: 'y_total', help: 'Help.', labelNames: ['protocol', 'result'], registers: [theirs] });
    const calls: [string, string, number | undefined][] = [['imap', 'success', 0], ['imap', 'success', undefined], ['pop3', 'auth-failed', 3], ['imap', 'success', 2.5]];
    for (const [protocol, result, by] of calls) {
      family.inc({ protocol, result }, by);
      reference.inc({ protocol, result }, by);
    }
    assert.deepEqual(canonical(await ours.metrics()), canonical(await theirs.metrics()));
  });

  it('keep series apart when one label value is a prefix of another, and reset to none', async () => {
    const registry = new Registry();
    const family = new CounterFamily('z_total', 'Help.', ['a', 'b']).registerOn(registry);
    family.inc({ a: 'x', b: 'yz' });
    family.inc({ a: 'xy', b: 'z' });
    const text = await registry.metrics();
    assert.match(text, /^z_total\{a="x",b="yz"\} 1$/m);
    assert.match(text, /^z_total\{a="xy",b="z"\} 1$/m);
    registry.resetMetrics();
    assert.doesNotMatch(await registry.metrics(), /^z_total\{/m);
  });

  it('refuse bucket bounds that are not ascending', () => {
    assert.throws(() => new HistogramFamily('w', 'h', ['a'], [1, 1]), /ascending/);
    assert.throws(() => new HistogramFamily('w', 'h', ['a'], [1, Infinity]), /finite/);
  });
});
