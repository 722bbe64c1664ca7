// The slot health monitor's loop: new timings mid-round leave one loop, not two.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { SlotHealthMonitor } from '../../src/backend/health.js';
import type { StoreMap } from '../../src/routing/storemap.js';
import { createLogger } from '../../src/log.js';

test('new timings while a round of probes runs leave exactly one probe loop', async () => {
  let probes = 0;
  const map = { stores: new Map([['s', { slots: new Map([['a', { name: 'a', store: 's' }]]) }]]) } as unknown as StoreMap;
  const monitor = new SlotHealthMonitor(
    () => map,
    async () => {
      probes++;
      await new Promise((resolve) => setTimeout(resolve, 50));
    },
    200,
    1_000,
    createLogger('silent'),
  );
  monitor.start();
  // Mid-round: the first probe is still running.
  setTimeout(() => monitor.setTiming(100, 1_000), 10);
  await new Promise((resolve) => setTimeout(resolve, 1_000));
  monitor.stop();
  // One loop: the first probe, then one every 50 + 100 ms from 10 ms on (7 in the second); two loops made about 14.
  assert.ok(probes >= 6 && probes <= 9, `${probes} probes in 1 s`);
  const after = probes;
  await new Promise((resolve) => setTimeout(resolve, 300));
  assert.equal(probes, after, 'stop() ended every loop');
});

test('a slot dropped from the map while it is probed reports nothing: no result, no metric series brought back', async () => {
  const slot = { name: 'b', store: 's' };
  let map = { stores: new Map([['s', { slots: new Map([['b', slot]]) }]]) } as unknown as StoreMap;
  const reported: string[] = [];
  const monitor = new SlotHealthMonitor(
    () => map,
    async () => {
      // The map drops the slot while the probe runs (a store-map reload); then the probe fails.
      map = { stores: new Map([['s', { slots: new Map() }]]) } as unknown as StoreMap;
      throw new Error('no answer');
    },
    60_000,
    1_000,
    createLogger('silent'),
    (s) => reported.push(s.name),
  );
  await monitor.probeAll();
  assert.deepEqual(reported, []);
  assert.equal(monitor.get('b'), undefined);
});
