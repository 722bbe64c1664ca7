// A slot probe's latency runs on the monotonic clock: a step of the wall clock during the probe
// made latencyMs negative (back) or an hour (forward). checkedAt stays the time of day.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { SlotHealthMonitor } from '../../src/backend/health.js';
import type { StoreMap } from '../../src/routing/storemap.js';
import { createLogger } from '../../src/log.js';

const HOUR_MS = 3_600_000;
const realNow = Date.now;
let stepMs = 0;
Date.now = () => realNow.call(Date) + stepMs;
after(() => {
  Date.now = realNow;
});

for (const step of [-HOUR_MS, HOUR_MS]) {
  test(`the wall clock stepped ${step < 0 ? 'back' : 'forward'} an hour during a probe: latencyMs is the probe's time, checkedAt the (stepped) time of day`, async () => {
    stepMs = 0;
    const map = { stores: new Map([['s', { slots: new Map([['a', { name: 'a', store: 's' }]]) }]]) } as unknown as StoreMap;
    const monitor = new SlotHealthMonitor(
      () => map,
      async () => {
        await new Promise((resolve) => setTimeout(resolve, 100));
        stepMs = step;
        await new Promise((resolve) => setTimeout(resolve, 100));
      },
      60_000,
      5_000,
      createLogger('silent'),
    );
    const began = performance.now();
    await monitor.probeAll();
    const took = performance.now() - began;
    const health = monitor.get('a');
    assert.equal(health?.up, true);
    assert.ok(health.latencyMs >= 150 && health.latencyMs <= took + 1, `latencyMs ${health.latencyMs} for a probe of ${Math.round(took)} ms`);
    assert.ok(Math.abs(health.checkedAt - Date.now()) < 5_000, 'checkedAt is the wall clock\'s time of day');
    monitor.stop();
    stepMs = 0;
  });
}
