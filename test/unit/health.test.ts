// The slot health monitor's loop: new timings mid-round leave one loop, not two.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
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
  // One loop: the first probe, then a round every 100 ms from 10 ms on (10 in the second); two loops made about 15.
  assert.ok(probes >= 8 && probes <= 12, `${probes} probes in 1 s`);
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

test('a probe past its deadline is down, saying so; one in flight at stop() reports nothing', async () => {
  const map = { stores: new Map([['s', { slots: new Map([['c', { name: 'c', store: 's' }]]) }]]) } as unknown as StoreMap;
  const probe = (_slot: unknown, signal: { addEventListener(type: 'abort', listener: () => void): void }): Promise<void> =>
    new Promise((_resolve, reject) => signal.addEventListener('abort', () => reject(new Error('the session ended during greeting'))));
  const monitor = new SlotHealthMonitor(() => map, probe, 60_000, 50, createLogger('silent'));
  await monitor.probeAll();
  assert.equal(monitor.get('c')?.up, false);
  assert.match(monitor.get('c')?.error ?? '', /^no answer within 50 ms/);
  const other = new SlotHealthMonitor(() => map, probe, 60_000, 60_000, createLogger('silent'));
  const round = other.probeAll();
  other.stop();
  await round;
  assert.equal(other.get('c'), undefined);
});

test('probing leaves nothing behind: the heap after 100,000 probes is what it was', async () => {
  // On Node 20, AbortSignal.any() over a signal of the monitor's kept about 70 bytes per probe
  // for the life of the process (40 slots at the default interval: about 50 MB a day).
  setFlagsFromString('--expose-gc');
  const collect = runInNewContext('gc') as () => void;
  const slots = new Map(Array.from({ length: 100 }, (_, i) => [`s${i}`, { name: `s${i}`, store: 's' }]));
  const map = { stores: new Map([['s', { slots }]]) } as unknown as StoreMap;
  const monitor = new SlotHealthMonitor(() => map, async () => undefined, 60_000, 60_000, createLogger('silent'));
  const heap = async (): Promise<number> => {
    await new Promise((resolve) => setImmediate(resolve));
    collect();
    collect();
    return process.memoryUsage().heapUsed;
  };
  for (let i = 0; i < 100; i++) await monitor.probeAll();
  const before = await heap();
  for (let i = 0; i < 1_000; i++) await monitor.probeAll();
  const grown = (await heap()) - before;
  monitor.stop();
  assert.ok(grown < 2 * 1024 * 1024, `the heap grew by ${(grown / 1024 / 1024).toFixed(1)} MB over 100,000 probes`);
});
