// A round of slot probes is spread over the interval, and only MAX_PROBES_IN_FLIGHT are in flight
// at once: 1,500 slots probed at the same instant froze the event loop up to 207 ms per round,
// 15,000 up to 2 s (other sessions' commands waited as long, and probes timed out into false
// "slot is down"), and at the open-files limit the probes over it failed with EMFILE. Timings
// are asserted loosely: the machine running the tests is shared.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { MAX_PROBES_IN_FLIGHT, SlotHealthMonitor } from '../../src/backend/health.js';
import type { StoreMap } from '../../src/routing/storemap.js';
import { createLogger } from '../../src/log.js';

/** A map of `stores` stores with `slots` slots each (what the monitor reads of one). */
function storeMap(stores: number, slots: number, first = 0): StoreMap {
  return {
    stores: new Map(
      Array.from({ length: stores }, (_, s) => [
        `st${first + s}`,
        { slots: new Map(Array.from({ length: slots }, (_, j) => [`sl${first + s}x${j}`, { name: `sl${first + s}x${j}`, store: `st${first + s}` }])) },
      ]),
    ),
  } as unknown as StoreMap;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

test(`a round of 300 slots has at most ${MAX_PROBES_IN_FLIGHT} probes in flight, and each slot is probed once`, async () => {
  const map = storeMap(100, 3);
  let inFlight = 0;
  let most = 0;
  const probed = new Map<string, number>();
  const monitor = new SlotHealthMonitor(
    () => map,
    async (slot) => {
      probed.set(slot.name, (probed.get(slot.name) ?? 0) + 1);
      most = Math.max(most, ++inFlight);
      await sleep(50);
      inFlight--;
    },
    60_000,
    1_000,
    createLogger('silent'),
  );
  await monitor.probeAll();
  monitor.stop();
  assert.ok(most <= MAX_PROBES_IN_FLIGHT, `${most} probes in flight at once`);
  assert.equal(probed.size, 300);
  assert.ok([...probed.values()].every((n) => n === 1), 'a slot was probed twice in one round');
  assert.equal(monitor.get('sl99x2')?.up, true);
});

test('the probes of a round are spread over the interval, the first round at start-up too', async () => {
  const map = storeMap(100, 3);
  const started: number[] = [];
  let inFlight = 0;
  let most = 0;
  const monitor = new SlotHealthMonitor(
    () => map,
    async () => {
      started.push(performance.now());
      most = Math.max(most, ++inFlight);
      await sleep(5);
      inFlight--;
    },
    1_000,
    1_000,
    createLogger('silent'),
  );
  const began = performance.now();
  monitor.start();
  await sleep(600);
  const firstPart = started.length;
  await sleep(700);
  monitor.stop();
  // Probed all at once, the 300 started within a few milliseconds of start(), each with every other in flight.
  assert.ok(firstPart >= 60 && firstPart <= 250, `${firstPart} of 300 probes started in the first 600 ms of a 1 s round`);
  assert.ok(most < 150, `${most} probes in flight at once`);
  const round = started.slice(0, 300);
  assert.equal(round.length, 300, `${started.length} probes in 1.3 s`);
  assert.ok(round[299]! - began >= 700, `the round's last probe started ${Math.round(round[299]! - began)} ms in`);
});

test('slots that left the map lose their results at the next round; the others keep theirs', async () => {
  let map = storeMap(3, 2);
  let up = true;
  const monitor = new SlotHealthMonitor(
    () => map,
    async () => {
      if (!up) throw new Error('no answer');
    },
    60_000,
    1_000,
    createLogger('silent'),
  );
  await monitor.probeAll();
  assert.equal(monitor.get('sl0x0')?.up, true);
  // st0 leaves, st3 comes; the probes fail from now on.
  map = { stores: new Map([...storeMap(2, 2, 1).stores, ...storeMap(1, 2, 3).stores]) } as unknown as StoreMap;
  up = false;
  await monitor.probeAll();
  monitor.stop();
  assert.equal(monitor.get('sl0x0'), undefined);
  assert.equal(monitor.get('sl0x1'), undefined);
  for (const slot of ['sl1x0', 'sl1x1', 'sl2x0', 'sl2x1']) assert.equal(monitor.get(slot)?.failures, 1, slot);
  for (const slot of ['sl3x0', 'sl3x1']) assert.equal(monitor.get(slot)?.up, false, slot);
});

test('a round of 30,000 slots keeps the event loop turning: no block near a second', async () => {
  const map = storeMap(10_000, 3);
  const monitor = new SlotHealthMonitor(() => map, async () => undefined, 60_000, 1_000, createLogger('silent'));
  await monitor.probeAll();
  // Measured with a ticker: the most CPU time the process spent between two of its turns while a
  // round runs, a block's own cost. The wall-clock time between them is the block stretched by
  // whatever else the machine runs (2.1 s once, two suites at once on two cores). The results of
  // the first round are in, so the round prunes 30,000 of them: in O(slots²), 3.7 s.
  const cpuMs = (): number => {
    const { user, system } = process.cpuUsage();
    return (user + system) / 1000;
  };
  let last = { cpu: cpuMs(), wall: performance.now() };
  let longest = { cpu: 0, wall: 0 };
  const ticker = setInterval(() => {
    const now = { cpu: cpuMs(), wall: performance.now() };
    if (now.cpu - last.cpu > longest.cpu) longest = { cpu: now.cpu - last.cpu, wall: now.wall - last.wall };
    last = now;
  }, 1);
  await sleep(5);
  longest = { cpu: 0, wall: 0 };
  last = { cpu: cpuMs(), wall: performance.now() };
  await monitor.probeAll(2_000);
  // The ticker's turn after the round's last block.
  await sleep(5);
  clearInterval(ticker);
  monitor.stop();
  assert.ok(longest.cpu < 1_000, `the event loop was blocked for ${Math.round(longest.cpu)} ms of CPU (${Math.round(longest.wall)} ms)`);
});
