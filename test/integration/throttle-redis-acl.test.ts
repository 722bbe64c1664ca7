/**
 * The throttle against a real redis-server whose throttle user has an ACL: the one the README
 * listed before the known addresses (EVALSHA, EVAL, TIME, HMGET, HSET, PEXPIRE, DEL, and PING),
 * and the one it lists now. With the old one a success's HLEN was refused after its HSET and
 * before its PEXPIRE (the rv-throttle review's R1): `k:<user>` never expired nor was trimmed, each
 * success turned Redis to read-only (the gauge at 0, MailfrontThrottleRedisDown), and a known
 * address's HGET too. Now the key expires whatever is refused, the failures stay shared, and
 * each refused command is logged once at error with the ACL to grant.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { createClient } from '@redis/client';
import { pino } from 'pino';
import { Throttle } from '../../src/auth/throttle.js';
import type { LoginAttempt, RedisState } from '../../src/auth/throttle.js';
import type { ThrottleConfig } from '../../src/auth/throttle-config.js';
import { startRedis } from './servers/index.js';
import type { Redis } from './servers/index.js';

const OLD_ACL = ['+evalsha', '+eval', '+time', '+hmget', '+hset', '+pexpire', '+del', '+ping'];
// The README's list (throttle.redis.url's row), as an operator would copy it.
const README_ACL = ['+evalsha', '+eval', '+time', '+hmget', '+hset', '+pexpire', '+del', '+hlen', '+hgetall', '+hdel', '+hget', '+ping'];
const KNOWN_MS = 3_600_000;
const PASSWORD = 'acl-pw-5e1d';

let redis: Redis;
let admin: ReturnType<typeof createClient>;
const open: Throttle[] = [];

before(async () => {
  redis = await startRedis();
  admin = createClient({ url: redis.url });
  await admin.connect();
});

after(async () => {
  await Promise.all(open.map((t) => t.close()));
  await admin?.quit();
  await redis?.stop();
});

interface Instance {
  readonly throttle: Throttle;
  readonly lines: Record<string, unknown>[];
  readonly states: RedisState[];
}

async function instance(user: string, acl: readonly string[]): Promise<Instance> {
  await admin.sendCommand(['ACL', 'SETUSER', user, 'reset', 'on', `>${PASSWORD}`, `~${user}:*`, '-@all', ...acl]);
  const config: ThrottleConfig = {
    enabled: true,
    baseDelayMs: 0,
    maxDelayMs: 0,
    failuresPerUser: 3,
    failuresPerAddress: 12,
    failureWindowMs: 60_000,
    refusalMs: 60_000,
    maxTrackedSubjects: 1_000,
    knownAddressMs: KNOWN_MS,
    redis: { url: redis.url, username: user, password: PASSWORD, keyPrefix: `${user}:`, timeoutMs: 500 },
  };
  const lines: Record<string, unknown>[] = [];
  const states: RedisState[] = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
  const throttle = Throttle.fromConfig(config, log, { onRedisState: (s) => states.push(s), retryIntervalMs: 100 });
  open.push(throttle);
  await throttle.ready();
  assert.equal(throttle.sharing, 'up', `the ACL user ${user} connects`);
  return { throttle, lines, states };
}

const from = (user: string, address: string): LoginAttempt => ({ user, address, trusted: false });

async function succeed(t: Throttle, attempt: LoginAttempt): Promise<void> {
  const verdict = await t.check(attempt);
  assert.equal(verdict.refused, false, `${attempt.user} from ${attempt.address}`);
  await t.recordSuccess(attempt);
}

const refusedCommands = (lines: readonly Record<string, unknown>[]): unknown[] => lines.filter((l) => l['event'] === 'throttle.redis_command_refused').map((l) => l['command']);

test("the ACL of before: a success's key expires, Redis stays shared, and HLEN and HGET are named once at error", async () => {
  const a = await instance('old', OLD_ACL);
  for (let i = 1; i <= 10; i++) {
    await succeed(a.throttle, from('victim', `192.0.2.${i}`));
    // The probe's interval: a read-only state would have had time to come back up in between.
    await new Promise((r) => setTimeout(r, 150));
  }
  const ttl = await admin.pTTL('old:k:victim');
  assert.ok(ttl > 0 && ttl <= KNOWN_MS, `old:k:victim expires (PTTL ${ttl})`);
  assert.deepEqual(a.states, ['up'], 'never taken as refusing writes');
  assert.equal(a.throttle.sharing, 'up');
  assert.deepEqual(refusedCommands(a.lines), ['HLEN']);
  const line = a.lines.find((l) => l['event'] === 'throttle.redis_command_refused')!;
  assert.equal(line['level'], 50, 'at error');
  assert.match(String(line['acl']), /\+hlen\b.*\+hget\b/);

  // Another instance sharing this Redis: the user locked out, and the address known only in Redis.
  const b = await instance('old', OLD_ACL);
  for (let i = 0; i < 3; i++) await b.throttle.recordFailure(from('victim', `198.51.100.${i + 1}`), `guess-${i}`);
  assert.equal((await b.throttle.check(from('victim', '198.51.100.9'))).refusedBy, 'user', 'the failures are shared through Redis');
  for (let i = 0; i < 3; i++) assert.equal((await b.throttle.check(from('victim', '192.0.2.10'))).refusedBy, 'user', 'Redis refused to say the address is known');
  assert.deepEqual(refusedCommands(b.lines), ['HGET'], 'logged once');
  assert.deepEqual(b.states, ['up']);
  assert.equal(b.throttle.sharing, 'up');
});

test("the README's ACL: a success's key expires and keeps 8 addresses, another instance knows them, nothing is refused", async () => {
  const a = await instance('now', README_ACL);
  for (let i = 1; i <= 10; i++) await succeed(a.throttle, from('victim', `192.0.2.${i}`));
  const ttl = await admin.pTTL('now:k:victim');
  assert.ok(ttl > 0 && ttl <= KNOWN_MS, `now:k:victim expires (PTTL ${ttl})`);
  assert.equal(await admin.hLen('now:k:victim'), 8);
  const b = await instance('now', README_ACL);
  for (let i = 0; i < 3; i++) await b.throttle.recordFailure(from('victim', `198.51.100.${i + 1}`), `guess-${i}`);
  assert.equal((await b.throttle.check(from('victim', '192.0.2.10'))).knownAddress, true);
  assert.equal((await b.throttle.check(from('victim', '192.0.2.1'))).refusedBy, 'user', 'trimmed');
  for (const x of [a, b]) {
    assert.deepEqual(refusedCommands(x.lines), []);
    assert.deepEqual(x.states, ['up']);
  }
});
