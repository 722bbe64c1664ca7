/**
 * A success forgets only the user's failures counted from the login's own address (the user's
 * typos there), not a guesser's from elsewhere (the fx-success31 brief): before, a success
 * started the user's whole count over, so a guesser got failures_per_user - 1 guesses, waited for
 * the user's phone to log in, and started again, without end. The local counters here; Redis in
 * test/integration/throttle-success-source.test.ts.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { pino } from 'pino';
import { FINGERPRINTS_KEPT, MemoryThrottleStore, Throttle, sourceTag } from '../../src/auth/throttle.js';
import type { FailurePolicy, LoginAttempt } from '../../src/auth/throttle.js';
import type { ThrottleConfig } from '../../src/auth/throttle-config.js';

const CONFIG: ThrottleConfig = {
  enabled: true,
  baseDelayMs: 100,
  maxDelayMs: 100_000,
  failuresPerUser: 5,
  failuresPerAddress: 30,
  failureWindowMs: 60_000,
  refusalMs: 30_000,
  maxTrackedSubjects: 1_000,
};
const POLICY: FailurePolicy = { failureWindowMs: CONFIG.failureWindowMs, refusalMs: CONFIG.refusalMs, fingerprintsKept: FINGERPRINTS_KEPT };

function setup(config: Partial<ThrottleConfig> = {}): Throttle {
  return new Throttle({ ...CONFIG, ...config }, new MemoryThrottleStore(POLICY, CONFIG.maxTrackedSubjects), { log: pino({ level: 'silent' }) });
}

const from = (user: string, address: string, trusted = false): LoginAttempt => ({ user, address, trusted });

/** A login that the check lets through and that succeeds, as a session records it. */
async function succeed(t: Throttle, attempt: LoginAttempt): Promise<void> {
  const verdict = await t.check(attempt);
  assert.equal(verdict.refused, false, `${attempt.user ?? ''} from ${attempt.address} let through`);
  await t.recordSuccess(attempt);
}

test("a guesser's failures from another address outlive the user's success: his next guess reaches the limit, and the user is refused there and anywhere new, not at home", async () => {
  const t = setup();
  const home = from('alice', '192.0.2.10');
  for (let i = 0; i < CONFIG.failuresPerUser - 1; i++) assert.equal((await t.recordFailure(from('alice', '198.51.100.7'), `guess-${i}`)).refused, false);
  await succeed(t, home);
  const next = await t.recordFailure(from('alice', '198.51.100.7'), 'guess-last');
  assert.equal(next.refused, true, "the guesser's fifth guess reaches the limit of five");
  assert.equal(next.refusedBy, 'user');
  for (const address of ['198.51.100.7', '203.0.113.99']) {
    const verdict = await t.check(from('alice', address));
    assert.equal(verdict.refused, true, `alice from ${address}`);
    assert.equal(verdict.refusedBy, 'user');
  }
  const atHome = await t.check(home);
  assert.equal(atHome.refused, false, 'alice at home, a known address');
  assert.equal(atHome.knownAddress, true);
});

test("the user's own typos are forgotten by the user's success from the same address: the count is back to what other addresses left", async () => {
  const t = setup();
  const home = from('bob', '192.0.2.11');
  // Read from an address with nothing counted: the delay is the user's count's alone.
  const elsewhere = from('bob', '203.0.113.50');
  for (let i = 0; i < 2; i++) await t.recordFailure(from('bob', '198.51.100.8'), `guess-${i}`);
  for (let i = 0; i < 2; i++) await t.recordFailure(home, `typo-${i}`);
  assert.equal((await t.check(elsewhere)).delayMs, 800, 'four failures');
  await succeed(t, home);
  assert.equal((await t.check(elsewhere)).delayMs, 200, "the guesser's two are left");
  // The same typo again counts again for the user: it was forgotten with its fingerprint.
  await t.recordFailure(home, 'typo-0');
  assert.equal((await t.check(elsewhere)).delayMs, 400);
  // A success from the guesser's address (the user's own login there, say from a hotel) forgets the failures from there.
  await succeed(t, from('bob', '198.51.100.8'));
  assert.equal((await t.check(elsewhere)).delayMs, 100, 'only the typo since is left');
  await succeed(t, home);
  assert.equal((await t.check(elsewhere)).delayMs, 0, 'nothing left');
});

test('an IPv6 client is its network of ipv6_prefix_bits, a nat64 one its IPv4 address, a trusted webmail its forwarded address (or its own): each forgets what was counted under the same key', async () => {
  const t = setup();
  await t.recordFailure(from('carol', '2001:db8:1:2::5'), 'typo-v6');
  await t.recordFailure(from('carol', '64:ff9b::c000:20c'), 'typo-nat64');
  await t.recordFailure(from('carol', '198.51.100.9'), 'guess');
  await t.recordFailure(from('carol', '10.0.0.5', true), 'typo-webmail');
  assert.equal((await t.check(from('carol', '192.0.2.99'))).delayMs, 800);
  await succeed(t, from('carol', '2001:db8:1:ff::1'));
  assert.equal((await t.check(from('carol', '192.0.2.99'))).delayMs, 400, 'the same /56');
  await succeed(t, from('carol', '192.0.2.12'));
  assert.equal((await t.check(from('carol', '192.0.2.99'))).delayMs, 200, 'the IPv4 client behind the translator');
  await succeed(t, from('carol', '10.0.0.5', true));
  assert.equal((await t.check(from('carol', '192.0.2.99'))).delayMs, 100, "the webmail's own address, not counted per address, is still the source");
});

test('a success the known address spared forgets the failures from there too: the refusal ends when those from elsewhere are below the limit by themselves, and runs on when they reach it', async () => {
  const t = setup();
  // The refusal is the user's own typos at home: his right password there ends it, and his phone elsewhere gets in.
  const home = from('dave', '192.0.2.13');
  const phone = from('dave', '203.0.113.13');
  await succeed(t, home);
  for (let i = 0; i < CONFIG.failuresPerUser; i++) await t.recordFailure(home, `typo-${i}`);
  assert.equal((await t.check(phone)).refused, true, 'his typos reached the limit');
  const spared = await t.check(home);
  assert.equal(spared.refused, false);
  assert.equal(spared.knownAddress, true);
  await t.recordSuccess(home);
  const after = await t.check(phone);
  assert.equal(after.refused, false, 'his phone elsewhere gets in');
  assert.equal(after.delayMs, 0, 'nothing left');
  // A guesser's failures from elsewhere reach the limit by themselves: the refusal runs on.
  const office = from('erin', '192.0.2.15');
  await succeed(t, office);
  await t.recordFailure(office, 'typo');
  for (let i = 0; i < CONFIG.failuresPerUser; i++) await t.recordFailure(from('erin', '198.51.100.10'), `guess-${i}`);
  assert.equal((await t.check(office)).knownAddress, true);
  await t.recordSuccess(office);
  assert.equal((await t.check(from('erin', '203.0.113.1'))).refused, true, 'still refused elsewhere');
  const left = await t.check(office);
  assert.equal(left.knownAddress, true, 'and spared at the office');
  assert.equal(left.delayMs, 1_600, "the guesser's five left, her typo forgotten");
});

test('the store: failures by source, a wrong password counted once per user whatever its source, the refusal ended only below the limit, and failures without a source kept', async () => {
  const store = new MemoryThrottleStore(POLICY, 100, () => 1_000_000);
  const a = sourceTag('192.0.2.1');
  const b = sourceTag('198.51.100.1');
  assert.match(a, /^[A-Za-z0-9_-]{8}$/);
  assert.notEqual(a, b);
  const user = (source?: string) => [{ key: 'u:eve', limit: 4, ...(source === undefined ? {} : { source }) }];
  await store.addFailure(user(a), 'fp-x');
  await store.addFailure(user(b), 'fp-y');
  assert.equal((await store.addFailure(user(b), 'fp-x'))[0]?.failures, 2, 'fp-x again, from b: counted once, still a\'s');
  await store.addFailure(user(), 'fp-z');
  await store.forgetSource('u:eve', a, 4);
  assert.deepEqual(store.readNow(['u:eve']), [{ failures: 2, refusedForMs: 0 }], 'fp-y (b) and fp-z (no source) left');
  assert.equal(store.holds('u:eve', 'fp-x'), false);
  assert.equal((await store.addFailure(user(b), 'fp-x'))[0]?.failures, 3, 'fp-x from b now counts, as b\'s');
  await store.forgetSource('u:eve', sourceTag('203.0.113.1'), 4);
  assert.equal(store.readNow(['u:eve'])[0]?.failures, 3, 'a source with nothing counted forgets nothing');
  // The limit reached with a's failure: forgetting a's ends the refusal; b's alone would not.
  assert.equal((await store.addFailure(user(a), 'fp-w'))[0]?.refusedForMs, POLICY.refusalMs);
  await store.forgetSource('u:eve', a, 4);
  assert.deepEqual(store.readNow(['u:eve']), [{ failures: 3, refusedForMs: 0 }], 'below the limit: the refusal ended');
  await store.addFailure(user(b), 'fp-v');
  assert.equal(store.readNow(['u:eve'])[0]?.refusedForMs, POLICY.refusalMs);
  await store.forgetSource('u:eve', a, 4);
  assert.equal(store.readNow(['u:eve'])[0]?.refusedForMs, POLICY.refusalMs, "b's four still reach the limit: the refusal runs on");
  await store.forgetSource('u:eve', b, 4);
  assert.deepEqual(store.readNow(['u:eve']), [{ failures: 1, refusedForMs: 0 }], 'fp-z, without a source, is left');
  await store.clear(['u:eve']);
  assert.equal(store.size, 0);
  // Past the fingerprints kept (a refusal off: a limit of 1,000,000), the oldest failures are no longer known by source: they stay.
  const many = [{ key: 'u:frank', limit: 1_000_000, source: a }];
  for (let i = 0; i < 70; i++) await store.addFailure(many, `fp-${i}`);
  await store.forgetSource('u:frank', a, 1_000_000);
  assert.equal(store.readNow(['u:frank'])[0]?.failures, 6, '70 failures, the 64 fingerprints kept forgotten');
});

test('a reload keeps the failures and their sources', async () => {
  const t = setup();
  await t.recordFailure(from('gina', '198.51.100.11'), 'guess');
  await t.recordFailure(from('gina', '192.0.2.14'), 'typo');
  t.reconfigure({ ...CONFIG, failuresPerUser: 6, refusalMs: 20_000 });
  await succeed(t, from('gina', '192.0.2.14'));
  assert.equal((await t.check(from('gina', '203.0.113.14'))).delayMs, 100, "the guesser's one is left");
});
