// DrainSchedule: each session closed once at its moment, in the order of the moments, a bounded
// batch per turn of the event loop; deleted and cleared sessions are not closed.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { DrainSchedule } from '../../src/proxy/drain-schedule.js';

test('sessions close in the order of their moments, each once, and idle() resolves after the last', async () => {
  const closed: string[] = [];
  const schedule = new DrainSchedule<string>((s) => closed.push(s));
  schedule.add('c', 60);
  schedule.add('a', 0);
  schedule.add('b', 30);
  schedule.add('a2', 0);
  // A later moment for a session pending already replaces its first.
  schedule.add('d', 0);
  schedule.add('d', 90);
  assert.equal(schedule.size, 5);
  assert.equal(schedule.has('b'), true);
  await schedule.idle();
  assert.deepEqual(closed, ['a', 'a2', 'b', 'c', 'd']);
  assert.equal(schedule.size, 0);
  assert.equal(schedule.has('b'), false);
});

test('the sessions due close a batch per turn, other work running between batches', async () => {
  const events: string[] = [];
  let closes = 0;
  const schedule = new DrainSchedule<number>(() => {
    closes += 1;
    events.push('close');
    if (closes === 1) setImmediate(() => events.push('turn'));
  }, 4);
  for (let i = 0; i < 10; i++) schedule.add(i, 0);
  await schedule.idle();
  assert.equal(closes, 10);
  // Four, then the turn asked for at the first close, then the rest.
  assert.equal(events.indexOf('turn'), 4);
});

test('a deleted or cleared session is not closed; one added while a batch runs is', async () => {
  const closed: number[] = [];
  const schedule = new DrainSchedule<number>((n) => {
    closed.push(n);
    if (n === 1) schedule.add(100, 0);
  }, 2);
  for (let i = 0; i < 5; i++) schedule.add(i, 0);
  assert.equal(schedule.delete(3), true);
  assert.equal(schedule.delete(3), false);
  await schedule.idle();
  assert.deepEqual(closed, [0, 1, 2, 4, 100]);

  closed.length = 0;
  for (let i = 0; i < 5; i++) schedule.add(i, 20);
  const idle = schedule.idle();
  schedule.clear();
  await idle;
  await sleep(60);
  assert.deepEqual(closed, []);
  // Deleting the last one pending lets idle() go too.
  schedule.add(7, 20);
  const idleAgain = schedule.idle();
  schedule.delete(7);
  await idleAgain;
  await sleep(40);
  assert.deepEqual(closed, []);
});

test('no session closes before its moment', async () => {
  const started = performance.now();
  const at: number[] = [];
  const schedule = new DrainSchedule<number>(() => at.push(performance.now() - started));
  for (let i = 0; i < 20; i++) schedule.add(i, 40 + i * 5);
  await schedule.idle();
  // A timer can fire up to a millisecond before its time on performance.now()'s clock (the loop's clock).
  at.forEach((t, i) => assert.ok(t >= 40 + i * 5 - 2, `session ${i} closed at ${t.toFixed(1)} ms, before ${40 + i * 5}`));
});
