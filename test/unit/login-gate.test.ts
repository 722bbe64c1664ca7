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

/** A throttle's address count for the gate's address turns: `failures` of `limit`, refused from the limit on. */
function addressThrottle(limit: number): { failures: number; checks: number; check: () => Promise<{ refused: boolean; addressLeft: number }> } {
  const t = {
    failures: 0,
    checks: 0,
    check: async () => {
      t.checks++;
      await new Promise((resolve) => setImmediate(resolve));
      return { refused: t.failures >= limit, addressLeft: limit - t.failures };
    },
  };
  return t;
}

const settle = async (): Promise<void> => {
  for (let i = 0; i < 20; i++) await new Promise((resolve) => setImmediate(resolve));
};

test('an address gets as many turns at a time as it has failures left; a burst of wrong passwords gets the limit through, then one at a time', async () => {
  const gate = new LoginGate();
  const throttle = addressThrottle(3);
  const through: Array<() => void> = [];
  let refused = 0;
  // Ten logins at once, each failing once it has its turn (counted, then the turn left).
  const logins = Array.from({ length: 10 }, async () => {
    const { verdict, leave } = await gate.checkAddress('192.0.2.1', throttle.check, new Canceller());
    if (verdict.refused) {
      assert.equal(leave, undefined, 'a refused login takes no turn');
      refused++;
      return;
    }
    through.push(() => {
      throttle.failures++;
      leave!();
    });
  });
  await settle();
  assert.equal(through.length, 3, 'three failures left: three turns');
  through.shift()!();
  await settle();
  assert.equal(through.length, 2, 'two failures left and two running: the next waits');
  through.shift()!();
  through.shift()!();
  await Promise.all(logins);
  assert.equal(refused, 7);
  assert.equal(gate.size, 0);
  // The refusal has run out, the failures are remembered: one at a time, and its failure refuses.
  const ended = async (): Promise<{ refused: boolean; addressLeft: number }> => ({ refused: false, addressLeft: 0 });
  const first = await gate.checkAddress('192.0.2.1', ended, new Canceller());
  assert.ok(first.leave);
  let second = false;
  const waiting = gate.checkAddress('192.0.2.1', ended, new Canceller()).then((r) => ((second = true), r));
  await settle();
  assert.equal(second, false, 'the second waits for the first');
  first.leave();
  (await waiting).leave?.();
  assert.equal(gate.size, 0);
});

test('an address without failures (a NAT) has its limit of turns at once; other addresses, and IPv6 addresses outside its /64, have their own', async () => {
  const gate = new LoginGate();
  const throttle = addressThrottle(30);
  const turns = await Promise.all(Array.from({ length: 30 }, () => gate.checkAddress('2001:db8:1:2::5', throttle.check, new Canceller())));
  assert.ok(turns.every((t) => t.leave !== undefined));
  let more = false;
  const next = gate.checkAddress('2001:db8:1:2::6', throttle.check, new Canceller()).then((r) => ((more = true), r));
  const other = await gate.checkAddress('2001:db8:1:3::5', throttle.check, new Canceller());
  assert.ok(other.leave, 'another /64');
  await settle();
  assert.equal(more, false, 'the same /64: the 31st waits');
  turns[0]!.leave!();
  (await next).leave!();
  other.leave!();
  for (const t of turns) t.leave!();
  assert.equal(gate.size, 0);
});

test('an address not counted (trusted, throttle off) takes no turn; a waiting check cancelled rejects ABORTED and leaves nothing behind; the turn left passes on', async () => {
  const gate = new LoginGate();
  const exempt = await gate.checkAddress('192.0.2.9', async () => ({ refused: false }), new Canceller());
  assert.equal(exempt.leave, undefined);
  assert.equal(gate.size, 0);
  const throttle = addressThrottle(1);
  const first = await gate.checkAddress('192.0.2.2', throttle.check, new Canceller());
  const canceller = new Canceller();
  const cancelled = gate.checkAddress('192.0.2.2', throttle.check, canceller);
  const behind = gate.checkAddress('192.0.2.2', throttle.check, new Canceller());
  await settle();
  canceller.abort();
  await assert.rejects(cancelled, (error: Error & { code?: string }) => error.code === 'ABORTED');
  const checks = throttle.checks;
  first.leave!();
  first.leave!(); // twice: nothing more
  const third = await behind;
  assert.equal(throttle.checks, checks + 1, 'the one behind asked the throttle again once it was woken');
  third.leave!();
  assert.equal(gate.size, 0);
  const gone = new Canceller();
  gone.abort();
  const holder = await gate.checkAddress('192.0.2.2', throttle.check, new Canceller());
  await assert.rejects(gate.checkAddress('192.0.2.2', throttle.check, gone), (error: Error & { code?: string }) => error.code === 'ABORTED');
  holder.leave!();
  assert.equal(gate.size, 0);
});

test('a check during which a turn was left is asked again: it may not have seen that turn\'s failure', async () => {
  const gate = new LoginGate();
  // One failure counted already: one left before the limit of 2.
  let failures = 1;
  let checks = 0;
  let release: (() => void) | undefined;
  const first = await gate.checkAddress('192.0.2.3', async () => ({ refused: false, addressLeft: 2 - failures }), new Canceller());
  // The second's throttle read answers "one left" (failures 1 then); the first's failure, the
  // one that reaches the limit, is counted and its turn left before that answer arrives.
  const slow = gate.checkAddress(
    '192.0.2.3',
    async () => {
      checks++;
      const seen = failures;
      if (checks === 1) await new Promise<void>((resolve) => (release = resolve));
      return { refused: seen >= 2, addressLeft: 2 - seen };
    },
    new Canceller(),
  );
  await settle();
  failures = 2;
  first.leave!();
  release!();
  const second = await slow;
  assert.equal(checks, 2);
  assert.equal(second.verdict.refused, true, 'asked again, it sees the limit reached');
  assert.equal(gate.size, 0);
});

test('a check during which turns were left stands while the address has room even if they were failures: a busy NAT is not asked twice', async () => {
  const gate = new LoginGate();
  let checks = 0;
  let release: (() => void) | undefined;
  const first = await gate.checkAddress('192.0.2.4', async () => ({ refused: false, addressLeft: 30 }), new Canceller());
  const slow = gate.checkAddress(
    '192.0.2.4',
    async () => {
      checks++;
      if (checks === 1) await new Promise<void>((resolve) => (release = resolve));
      return { refused: false, addressLeft: 30 };
    },
    new Canceller(),
  );
  await settle();
  first.leave!();
  release!();
  const second = await slow;
  assert.equal(checks, 1);
  assert.equal(second.verdict.refused, false);
  second.leave!();
  assert.equal(gate.size, 0);
});

test('a turn left by a success (no failure counted for the address) does not make a check under way ask the throttle again', async () => {
  const gate = new LoginGate();
  let checks = 0;
  let release: (() => void) | undefined;
  // One failure left before the limit: one check at a time.
  const first = await gate.checkAddress('192.0.2.5', async () => ({ refused: false, addressLeft: 1 }), new Canceller());
  const slow = gate.checkAddress(
    '192.0.2.5',
    async () => {
      checks++;
      if (checks === 1) await new Promise<void>((resolve) => (release = resolve));
      return { refused: false, addressLeft: 1 };
    },
    new Canceller(),
  );
  await settle();
  first.leave!(false);
  release!();
  const second = await slow;
  assert.equal(checks, 1);
  assert.ok(second.leave);
  second.leave!(true);
  assert.equal(gate.size, 0);
});

/** The fast way of a login: begin a check of the address, read the throttle (here: `addressLeft`), try for a turn. */
function quickTurn(gate: LoginGate, address: string, addressLeft: number, during?: () => void): ReturnType<LoginGate['tryAddressTurn']> {
  const check = gate.beginAddressCheck(address);
  const mark = check.failures;
  during?.();
  return gate.tryAddressTurn(check, addressLeft, mark);
}

test('tryAddressTurn: a turn at once while the address has room; none past its budget or behind waiters; asked again when its own failures may have made the answer stale, not for other addresses\' failures', async () => {
  const gate = new LoginGate();
  // Two failures left: two turns at once, not a third.
  const one = quickTurn(gate, '192.0.2.7', 2);
  const two = quickTurn(gate, '192.0.2.7', 2);
  assert.equal(typeof one, 'function');
  assert.equal(typeof two, 'function');
  assert.equal(quickTurn(gate, '192.0.2.7', 2), 'wait');
  // The slow way waits behind them, and a newcomer's quick try does not jump ahead of it.
  let waited = false;
  const waiting = gate.checkAddress('192.0.2.7', async () => ({ refused: false, addressLeft: 2 }), new Canceller(), true).then((r) => ((waited = true), r));
  await settle();
  assert.equal(waited, false);
  assert.equal(quickTurn(gate, '192.0.2.7', 5), 'wait');
  // A turn left by a failure: the waiter goes.
  (one as (failed?: boolean) => void)(true);
  const third = await waiting;
  assert.ok(third.leave);
  (two as (failed?: boolean) => void)(false);
  third.leave!(false);
  assert.equal(gate.size, 0);
  // The address's own failure during the read: with one left by the answer, ask again.
  const holder = quickTurn(gate, '192.0.2.9', 2) as (failed?: boolean) => void;
  assert.equal(quickTurn(gate, '192.0.2.9', 1, () => holder(true)), 'ask');
  // Another address's failures during the read change nothing for this one.
  const elsewhere = quickTurn(gate, '192.0.2.10', 5) as (failed?: boolean) => void;
  const mine = quickTurn(gate, '192.0.2.9', 1, () => elsewhere(true));
  assert.equal(typeof mine, 'function');
  (mine as (failed?: boolean) => void)(false);
  // A check that takes no turn (refused, or not counted) leaves nothing behind.
  gate.endAddressCheck(gate.beginAddressCheck('192.0.2.11'));
  assert.equal(gate.size, 0);
});

test('checkAddress: a login whose client left is not asked again, and leaves nothing behind', async () => {
  const gate = new LoginGate();
  const holder = quickTurn(gate, '192.0.2.12', 2) as (failed?: boolean) => void;
  const canceller = new Canceller();
  let checks = 0;
  const gone = gate.checkAddress(
    '192.0.2.12',
    async () => {
      checks++;
      // The address's own failure during the read, and the client hangs up: stale, and not asked again.
      holder(true);
      canceller.abort();
      return { refused: false, addressLeft: 1 };
    },
    canceller,
  );
  await assert.rejects(gone, (error: Error & { code?: string }) => error.code === 'ABORTED');
  assert.equal(checks, 1);
  assert.equal(gate.size, 0);
});
