/**
 * The throttle's Redis log lines are spaced on the monotonic clock: a step of the wall clock back
 * an hour kept `throttle.redis_refused` and the `throttle.redis_state` lines past the first three
 * quiet for that hour (and a step back of more than 24.8 days gave the deferred state line a
 * timer delay past 2^31 ms, which node cuts to 1 ms). Date.now is stepped here as NTP would, and
 * performance.now moved on as the minute passing; a real redis-server answers.
 */
import assert from 'node:assert/strict';
import { after, afterEach, before, test } from 'node:test';
import { createClient } from '@redis/client';
import { pino } from 'pino';
import { Throttle } from '../../src/auth/throttle.js';
import type { ThrottleConfig } from '../../src/auth/throttle-config.js';
import { registerPasswords } from './front.js';
import { startRedis } from './servers/index.js';
import type { Redis } from './servers/index.js';

const WRONG_PASSWORDS = Array.from({ length: 4 }, (_, i) => `Clock-wrong-pw-${i}-77c2`);
registerPasswords(...WRONG_PASSWORDS);
const HOUR_MS = 3_600_000;
/** A minute and a second: past the throttle's one-line-a-minute spacing. */
const MINUTE_PASSED_MS = 61_000;

const realDateNow = Date.now;
const realPerformanceNow = performance.now.bind(performance);
let wallStepMs = 0;
let passedMs = 0;
// Time passing moves both clocks; a step moves the wall clock only.
Date.now = () => realDateNow.call(Date) + passedMs + wallStepMs;
performance.now = () => realPerformanceNow() + passedMs;
afterEach(() => {
  wallStepMs = 0;
  passedMs = 0;
});

let redis: Redis;
const open: Throttle[] = [];
before(async () => {
  redis = await startRedis();
});
after(async () => {
  await Promise.all(open.map((t) => t.close()));
  await redis?.stop();
  Date.now = realDateNow;
  delete (performance as { now?: unknown }).now;
});

async function until(what: string, predicate: () => boolean, timeoutMs = 10_000): Promise<void> {
  for (let waited = 0; !predicate(); waited += 20) {
    if (waited > timeoutMs) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function instance(prefix: string): Promise<{ throttle: Throttle; lines: Array<Record<string, unknown>> }> {
  const config: ThrottleConfig = {
    enabled: true,
    baseDelayMs: 100,
    maxDelayMs: 1_600,
    failuresPerUser: 50,
    failuresPerAddress: 50,
    failureWindowMs: 600_000,
    refusalMs: 30_000,
    maxTrackedSubjects: 1_000,
    redis: { url: redis.url, keyPrefix: prefix, timeoutMs: 400 },
  };
  const lines: Array<Record<string, unknown>> = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
  const throttle = Throttle.fromConfig(config, log, { retryIntervalMs: 200 });
  open.push(throttle);
  await throttle.ready();
  await until('the first connection to Redis', () => throttle.sharing === 'up');
  return { throttle, lines };
}

const from = (user: string): { user: string; address: string; trusted: boolean } => ({ user, address: '192.0.2.40', trusted: false });

test('the wall clock set back an hour: Redis refusing a key is logged again once a minute has passed', async () => {
  const a = await instance('c1:');
  const raw = createClient({ url: redis.url });
  raw.on('error', () => undefined);
  await raw.connect();
  try {
    await raw.sendCommand(['SET', 'c1:u:ivy', 'not a hash']);
  } finally {
    raw.destroy();
  }
  const refusals = (): number => a.lines.filter((l) => l['event'] === 'throttle.redis_refused').length;
  await a.throttle.recordFailure(from('ivy'), WRONG_PASSWORDS[0] ?? '');
  await a.throttle.recordFailure(from('ivy'), WRONG_PASSWORDS[1] ?? '');
  assert.equal(refusals(), 1, 'one line a minute');
  wallStepMs = -HOUR_MS;
  passedMs = MINUTE_PASSED_MS;
  await a.throttle.recordFailure(from('ivy'), WRONG_PASSWORDS[2] ?? '');
  assert.equal(refusals(), 2, 'a minute later, the next refusal is logged');
});

test('the wall clock set back an hour: once the state has stayed a minute, its next change is logged at once', async () => {
  const a = await instance('c2:');
  const states = (): string[] => a.lines.filter((l) => l['event'] === 'throttle.redis_state').map((l) => String(l['state']));
  // Three lines within the minute: up, down, up.
  await redis.stopOnly();
  try {
    await until('Redis seen down', () => a.throttle.sharing === 'down');
  } finally {
    await redis.startAgain();
  }
  await until('Redis seen up again', () => a.throttle.sharing === 'up');
  assert.deepEqual(states(), ['up', 'down', 'up']);
  wallStepMs = -HOUR_MS;
  passedMs = MINUTE_PASSED_MS;
  await redis.stopOnly();
  try {
    await until('Redis seen down', () => a.throttle.sharing === 'down');
    await until('the down line', () => states().length === 4, 3_000).catch(() => undefined);
    assert.deepEqual(states(), ['up', 'down', 'up', 'down'], 'the change was held back for the hour the wall clock went back');
  } finally {
    await redis.startAgain();
  }
});
