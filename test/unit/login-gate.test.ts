// The login gate: a few turns per key, the rest waiting in order; a cancelled wait leaves no
// trace; every key is forgotten once its turns are left.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LoginGate } from '../../src/auth/login-gate.js';
import { Canceller } from '../../src/cancel.js';

test('two turns per key: the third waits and gets the first turn left, in order; other keys pass', async () => {
  const gate = new LoginGate(2);
  const a1 = gate.tryEnter('ann')!;
  const a2 = gate.tryEnter('ann')!;
  assert.equal(gate.tryEnter('ann'), null);
  assert.ok(gate.tryEnter('bob'), 'another user has turns of its own');
  const order: string[] = [];
  const third = gate.enter('ann', new Canceller()).then((leave) => (order.push('third'), leave));
  const fourth = gate.enter('ann', new Canceller()).then((leave) => (order.push('fourth'), leave));
  await new Promise((resolve) => setImmediate(resolve));
  assert.deepEqual(order, []);
  a1();
  a1(); // twice: nothing more
  const leave3 = await third;
  assert.deepEqual(order, ['third']);
  a2();
  const leave4 = await fourth;
  assert.deepEqual(order, ['third', 'fourth']);
  leave3();
  leave4();
  assert.equal(gate.size, 1, 'only bob is still in');
});

test('a cancelled wait rejects at once and takes no turn; nothing is left once every turn is left', async () => {
  const gate = new LoginGate(1);
  const first = gate.tryEnter('ann')!;
  const canceller = new Canceller();
  const waiting = gate.enter('ann', canceller);
  canceller.abort();
  await assert.rejects(waiting, (error: Error & { code?: string }) => error.code === 'ABORTED');
  const after = gate.enter('ann', new Canceller());
  first();
  (await after)();
  assert.equal(gate.size, 0);
  const cancelled = new Canceller();
  cancelled.abort();
  const holder = gate.tryEnter('ann')!;
  await assert.rejects(gate.enter('ann', cancelled), (error: Error & { code?: string }) => error.code === 'ABORTED');
  holder();
  assert.equal(gate.size, 0);
});
