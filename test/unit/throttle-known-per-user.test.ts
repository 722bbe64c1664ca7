/**
 * The known addresses kept in memory (no throttle.redis) are kept per user, up to
 * KNOWN_ADDRESSES_PER_USER each, bounded by max_tracked users: another user's successes from many
 * addresses take one entry, and do not push a user's own known address out (the rv-throttle
 * review's R3: with one LRU of max_tracked (user, address) pairs, 100 successes of one mailbox
 * from 100 addresses did, and three guesses then locked the user out at home).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { pino } from 'pino';
import { FINGERPRINTS_KEPT, KNOWN_ADDRESSES_PER_USER, MemoryThrottleStore, Throttle } from '../../src/auth/throttle.js';
import type { LoginAttempt } from '../../src/auth/throttle.js';
import type { ThrottleConfig } from '../../src/auth/throttle-config.js';

const CONFIG: ThrottleConfig = {
  enabled: true,
  baseDelayMs: 0,
  maxDelayMs: 0,
  failuresPerUser: 3,
  failuresPerAddress: 12,
  failureWindowMs: 60_000,
  refusalMs: 60_000,
  maxTrackedSubjects: 100,
};

function throttle(): Throttle {
  const store = new MemoryThrottleStore({ failureWindowMs: CONFIG.failureWindowMs, refusalMs: CONFIG.refusalMs, fingerprintsKept: FINGERPRINTS_KEPT }, CONFIG.maxTrackedSubjects);
  return new Throttle(CONFIG, store, { log: pino({ level: 'silent' }) });
}

const from = (user: string, address: string): LoginAttempt => ({ user, address, trusted: false });

async function succeed(t: Throttle, attempt: LoginAttempt): Promise<void> {
  const verdict = await t.check(attempt);
  assert.equal(verdict.refused, false, `${attempt.user} from ${attempt.address}`);
  await t.recordSuccess(attempt);
}

async function lockOut(t: Throttle, user: string): Promise<void> {
  for (let i = 0; i < CONFIG.failuresPerUser; i++) await t.recordFailure(from(user, `198.51.100.${i + 1}`), `guess-${i}`);
  assert.equal((await t.check(from(user, '198.51.100.200'))).refusedBy, 'user', 'the guesses refuse the user elsewhere');
}

test("another user's successes from max_tracked addresses leave a user's known address known", async () => {
  const t = throttle();
  await succeed(t, from('victim', '192.0.2.20'));
  for (let i = 1; i <= CONFIG.maxTrackedSubjects; i++) await succeed(t, from('mallory', `203.0.113.${i}`));
  await lockOut(t, 'victim');
  const home = await t.check(from('victim', '192.0.2.20'));
  assert.equal(home.refused, false, 'the victim at home is not refused');
  assert.equal(home.knownAddress, true);
});

test('a user keeps the latest KNOWN_ADDRESSES_PER_USER addresses', async () => {
  const t = throttle();
  for (let i = 1; i <= KNOWN_ADDRESSES_PER_USER + 1; i++) await succeed(t, from('alice', `192.0.2.${i}`));
  await lockOut(t, 'alice');
  assert.equal((await t.check(from('alice', '192.0.2.1'))).refusedBy, 'user', 'the least recent address is forgotten');
  for (let i = 2; i <= KNOWN_ADDRESSES_PER_USER + 1; i++) assert.equal((await t.check(from('alice', `192.0.2.${i}`))).knownAddress, true, `192.0.2.${i}`);
});

test('at most max_tracked users are kept: the least recently seen is forgotten', async () => {
  const t = throttle();
  await succeed(t, from('first', '192.0.2.1'));
  for (let i = 1; i <= CONFIG.maxTrackedSubjects; i++) await succeed(t, from(`user${i}`, '192.0.2.2'));
  await lockOut(t, 'first');
  assert.equal((await t.check(from('first', '192.0.2.1'))).refusedBy, 'user');
});
