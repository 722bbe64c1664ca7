// Health probes turned off by a reload (health.interval_ms: 0): no result stays behind, not even
// one of a probe in flight at the time; a result no probe renews would be shown and alerted on for ever.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SlotHealthMonitor } from '../../src/backend/health.js';
import type { StoreMap } from '../../src/routing/storemap.js';
import { createLogger } from '../../src/log.js';

test('an interval of 0 forgets every result and says so; a probe in flight then reports nothing', async () => {
  const map = { stores: new Map([['s', { slots: new Map([['a', { name: 'a', store: 's' }], ['b', { name: 'b', store: 's' }]]) }]]) } as unknown as StoreMap;
  let hold: ((fail: boolean) => void) | undefined;
  let holding = false;
  const reported: string[] = [];
  let cleared = 0;
  const monitor = new SlotHealthMonitor(
    () => map,
    (slot) => {
      if (!holding || slot.name !== 'b') return Promise.reject(new Error('connection refused'));
      return new Promise<void>((resolve, reject) => (hold = (fail) => (fail ? reject(new Error('connection refused')) : resolve())));
    },
    60_000,
    5_000,
    createLogger('silent'),
    (slot) => reported.push(slot.name),
    () => cleared++,
  );
  await monitor.probeAll();
  assert.equal(monitor.get('a')?.up, false);
  assert.equal(monitor.get('b')?.up, false);
  // A round whose probe of b is still under way when probing is turned off.
  holding = true;
  reported.length = 0;
  const round = monitor.probeAll();
  for (let i = 0; i < 100 && hold === undefined; i++) await new Promise((r) => setTimeout(r, 5));
  assert.ok(hold !== undefined, 'the probe of b is under way');
  monitor.setTiming(0, 5_000);
  assert.equal(cleared, 1, 'told that the results were forgotten');
  assert.equal(monitor.get('a'), undefined);
  assert.equal(monitor.get('b'), undefined);
  hold(true);
  await round;
  assert.equal(monitor.get('b'), undefined, 'the probe in flight left no result');
  assert.deepEqual(reported, [], 'nor reported one (neither did the probe of a, which failed as the round began)');
  monitor.stop();
});
