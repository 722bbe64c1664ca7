import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { pino } from 'pino';
import { MemoryThrottleStore, Throttle, FINGERPRINTS_KEPT } from '../../src/auth/throttle.js';
import type { FailurePolicy, LoginAttempt, SubjectLimit, SubjectState, ThrottleStore } from '../../src/auth/throttle.js';
import { THROTTLE_DEFAULTS, readThrottleConfig } from '../../src/auth/throttle-config.js';
import type { ThrottleConfig } from '../../src/auth/throttle-config.js';
import { IssueList } from '../../src/config/validate.js';
import { refusingPort } from '../integration/servers/index.js';

const CONFIG: ThrottleConfig = {
  enabled: true,
  baseDelayMs: 1_000,
  maxDelayMs: 8_000,
  failuresPerUser: 5,
  failuresPerAddress: 8,
  failureWindowMs: 60_000,
  refusalMs: 30_000,
  maxTrackedSubjects: 1_000,
};

function setup(config: Partial<ThrottleConfig> = {}): { throttle: Throttle; store: MemoryThrottleStore; clock: { now: number }; lines: Record<string, unknown>[] } {
  const merged = { ...CONFIG, ...config };
  const clock = { now: 1_000_000 };
  const policy: FailurePolicy = { failureWindowMs: merged.failureWindowMs, refusalMs: merged.refusalMs, fingerprintsKept: FINGERPRINTS_KEPT };
  const store = new MemoryThrottleStore(policy, merged.maxTrackedSubjects, () => clock.now);
  const lines: Record<string, unknown>[] = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
  return { throttle: new Throttle(merged, store, { log }), store, clock, lines };
}

// A real collection before each heap reading, even without --expose-gc on the command line.
setFlagsFromString('--expose-gc');
const collect = runInNewContext('gc') as () => void;

const from = (user: string | null, address = '192.0.2.10', trusted = false): LoginAttempt => ({ user, address, trusted });

test('each distinct wrong password doubles the penalty, up to the cap', async () => {
  const { throttle } = setup();
  assert.deepEqual(await throttle.check(from('alice')), { refused: false, refusedForMs: 0, delayMs: 0 });
  const delays: number[] = [];
  for (let i = 1; i <= 4; i++) delays.push((await throttle.recordFailure(from('alice'), `wrong-${i}`)).delayMs);
  assert.deepEqual(delays, [1_000, 2_000, 4_000, 8_000]);
  assert.equal((await throttle.check(from('alice'))).delayMs, 8_000, 'check reports the penalty earned so far');
  assert.equal(throttle.delayFor(1_000), 8_000, 'no overflow for huge counts');
  assert.equal(throttle.delayFor(0), 0);
});

test('the same wrong password tried again does not grow the penalty or the count', async () => {
  const { throttle } = setup();
  for (let i = 0; i < 20; i++) {
    const verdict = await throttle.recordFailure(from('alice'), 'stale-password');
    assert.equal(verdict.delayMs, 1_000);
    assert.equal(verdict.refused, false);
  }
  assert.equal((await throttle.recordFailure(from('alice'), 'another')).delayMs, 2_000);
  // Still remembered after another one came in between (a client cycling two stale passwords).
  assert.equal((await throttle.recordFailure(from('alice'), 'stale-password')).delayMs, 2_000);
});

test('the limit per user refuses logins for the refusal time, also from other addresses', async () => {
  const { throttle, clock, lines } = setup();
  for (let i = 1; i < CONFIG.failuresPerUser; i++) {
    assert.equal((await throttle.recordFailure(from('alice', `198.51.100.${i}`), `guess-${i}`)).refused, false);
  }
  const last = await throttle.recordFailure(from('alice', '198.51.100.99'), 'guess-last');
  assert.equal(last.refused, true);
  assert.equal(last.refusedBy, 'user');
  assert.equal(last.refusedForMs, CONFIG.refusalMs);
  const fromElsewhere = await throttle.check(from('alice', '203.0.113.5'));
  assert.equal(fromElsewhere.refused, true);
  assert.equal(fromElsewhere.refusedBy, 'user');
  assert.equal((await throttle.check(from('bob', '203.0.113.5'))).refused, false, 'other users are not affected');
  const logged = lines.find((l) => l['event'] === 'throttle.refusing');
  assert.equal(logged?.['by'], 'user');
  assert.equal(logged?.['user'], 'alice');
  assert.ok(!JSON.stringify(lines).includes('guess-'), 'no password in the log');

  clock.now += CONFIG.refusalMs - 1;
  assert.equal((await throttle.check(from('alice'))).refused, true);
  clock.now += 1;
  const after = await throttle.check(from('alice'));
  assert.equal(after.refused, false, 'the refusal ends');
  assert.equal(after.delayMs, CONFIG.maxDelayMs, 'the count is still remembered within the window');
  // One more distinct failure within the window refuses again at once.
  assert.equal((await throttle.recordFailure(from('alice'), 'guess-again')).refused, true);
});

test('failures are forgotten a window after the last counted one', async () => {
  const { throttle, clock } = setup();
  await throttle.recordFailure(from('alice'), 'one');
  clock.now += CONFIG.failureWindowMs - 1_000;
  await throttle.recordFailure(from('alice'), 'two');
  clock.now += CONFIG.failureWindowMs - 1_000;
  assert.equal((await throttle.check(from('alice'))).delayMs, 2_000, 'the window restarted with the second failure');
  clock.now += 2_000;
  assert.equal((await throttle.check(from('alice'))).delayMs, 0);
});

test('the limit per address refuses every login from it; spraying one password over many users counts per user', async () => {
  const { throttle } = setup();
  let verdict = await throttle.check(from('x'));
  for (let i = 1; i <= CONFIG.failuresPerAddress; i++) verdict = await throttle.recordFailure(from(`user${i}`, '192.0.2.66'), 'Summer2024!');
  assert.equal(verdict.refused, true);
  assert.equal(verdict.refusedBy, 'address');
  const next = await throttle.check(from('someone-else', '192.0.2.66'));
  assert.equal(next.refused, true);
  assert.equal(next.refusedBy, 'address');
  assert.equal((await throttle.check(from('someone-else', '192.0.2.67'))).refused, false);
  assert.equal((await throttle.check(from('user1', '192.0.2.67'))).refused, false, 'one failure for user1 is far from its limit');
});

test('an IPv4-mapped address is the same address; an IPv6 /56 is one address (throttle.ipv6_prefix_bits)', async () => {
  const { throttle } = setup();
  for (let i = 1; i <= CONFIG.failuresPerAddress; i++) {
    const address = i % 2 === 0 ? '192.0.2.77' : '::ffff:192.0.2.77';
    await throttle.recordFailure(from(`u${i}`, address), 'pw');
  }
  assert.equal((await throttle.check(from('z', '192.0.2.77'))).refused, true);
  for (let i = 1; i <= CONFIG.failuresPerAddress; i++) await throttle.recordFailure(from(`v${i}`, `2001:db8:5:6::${i.toString(16)}`), 'pw');
  assert.equal((await throttle.check(from('z', '2001:db8:5:6:ffff::1'))).refused, true, 'the same /64');
  assert.equal((await throttle.check(from('z', '2001:db8:5:7::1'))).refused, true, 'the next /64, of the same /56 (a home line)');
  assert.equal((await throttle.check(from('z', '2001:db8:5:100::1'))).refused, false, 'the next /56');
  const { throttle: per64 } = setup({ ipv6PrefixBits: 64 });
  for (let i = 1; i <= CONFIG.failuresPerAddress; i++) await per64.recordFailure(from(`v${i}`, `2001:db8:5:6::${i.toString(16)}`), 'pw');
  assert.equal((await per64.check(from('z', '2001:db8:5:6:ffff::1'))).refused, true, 'the same /64');
  assert.equal((await per64.check(from('z', '2001:db8:5:7::1'))).refused, false, 'ipv6_prefix_bits 64: the next /64');
});

test('behind a translator (64:ff9b::/96) each IPv4 client is its own address: one attacker refused does not refuse the others', async () => {
  const { throttle } = setup();
  for (let i = 1; i <= CONFIG.failuresPerAddress; i++) await throttle.recordFailure(from(`w${i}`, '64:ff9b::c633:6401'), 'pw');
  const attacker = await throttle.check(from('z', '64:ff9b::198.51.100.1'));
  assert.equal(attacker.refused, true);
  assert.equal(attacker.refusedBy, 'address');
  assert.equal((await throttle.check(from('z', '198.51.100.1'))).refused, true, 'the same IPv4 client over IPv4');
  assert.equal((await throttle.check(from('z', '64:ff9b::cb00:7101'))).refused, false, 'another IPv4 client behind the same translator (the same /64)');
});

test('trusted networks are not counted per address, but still per user', async () => {
  const { throttle } = setup();
  for (let i = 1; i <= 3 * CONFIG.failuresPerAddress; i++) {
    const verdict = await throttle.recordFailure(from(`webmail-user${i}`, '10.0.0.5', true), `pw${i}`);
    assert.equal(verdict.refused, false);
  }
  assert.equal((await throttle.check(from('fresh', '10.0.0.5', true))).refused, false);
  for (let i = 1; i <= CONFIG.failuresPerUser; i++) await throttle.recordFailure(from('carol', '10.0.0.5', true), `guess${i}`);
  const carol = await throttle.check(from('carol', '10.0.0.5', true));
  assert.equal(carol.refused, true);
  assert.equal(carol.refusedBy, 'user');
});

test('a success forgets the user\'s failures from its own address, never the address\'s', async () => {
  const { throttle } = setup();
  for (let i = 1; i < CONFIG.failuresPerUser; i++) await throttle.recordFailure(from('dave', '192.0.2.1'), `typo${i}`);
  for (let i = 1; i < CONFIG.failuresPerAddress - 1; i++) await throttle.recordFailure(from(`other${i}`, '192.0.2.1'), 'x');
  await throttle.recordSuccess(from('dave', '192.0.2.1'));
  assert.equal((await throttle.recordFailure(from('dave', '192.0.2.2'), 'typo-again')).delayMs, 1_000, 'dave\'s typos from 192.0.2.1 forgotten');
  // An attacker owning one mailbox cannot clear his address by logging in to it.
  await throttle.recordSuccess(from('attackers-own', '192.0.2.1'));
  const verdict = await throttle.recordFailure(from('victim', '192.0.2.1'), 'guess');
  assert.equal(verdict.refused, true);
  assert.equal(verdict.refusedBy, 'address');
});

test('an unusable user name still counts against the address', async () => {
  const { throttle } = setup();
  let verdict = await throttle.check(from(null));
  for (let i = 1; i <= CONFIG.failuresPerAddress; i++) verdict = await throttle.recordFailure(from(null, '192.0.2.200'), `p${i}`);
  assert.equal(verdict.refused, true);
});

test('disabled: never refuses, never delays, stores nothing', async () => {
  const { throttle, store } = setup({ enabled: false });
  for (let i = 0; i < 50; i++) assert.deepEqual(await throttle.recordFailure(from('alice'), `p${i}`), { refused: false, refusedForMs: 0, delayMs: 0 });
  assert.equal((await throttle.check(from('alice'))).refused, false);
  assert.equal(store.size, 0);
});

test('the store sees only a fixed-length keyed fingerprint, never the password', async () => {
  const seen: string[] = [];
  const spy: ThrottleStore = {
    read: (keys) => Promise.resolve(keys.map((): SubjectState => ({ failures: 0, refusedForMs: 0 }))),
    addFailure: (subjects: readonly SubjectLimit[], fingerprint: string) => {
      seen.push(fingerprint, ...subjects.map((s) => s.key));
      return Promise.resolve(subjects.map(() => ({ failures: 1, refusedForMs: 0 })));
    },
    clear: () => Promise.resolve(),
    forgetSource: () => Promise.resolve(),
    close: () => Promise.resolve(),
  };
  const a = new Throttle(CONFIG, spy);
  const b = new Throttle(CONFIG, spy);
  const password = 'Correct-Horse-Battery';
  await a.recordFailure(from('alice'), password);
  await a.recordFailure(from('alice'), password);
  await a.recordFailure(from('bob'), password);
  await b.recordFailure(from('alice'), password);
  const [fp1, , , fp2, , , fp3, , , fp4] = seen;
  assert.equal(fp1, fp2, 'stable within a process');
  assert.notEqual(fp1, fp3, 'the user is part of it: one password over many users counts per user');
  assert.notEqual(fp1, fp4, 'keyed per process');
  for (const fp of [fp1, fp3, fp4]) assert.match(fp ?? '', /^[A-Za-z0-9_-]{16}$/);
  assert.ok(!seen.some((s) => s.includes(password) || s.includes(Buffer.from(password).toString('base64'))));
  const shared = new Uint8Array(32).fill(7);
  seen.length = 0;
  await new Throttle(CONFIG, spy, { fingerprintKey: shared }).recordFailure(from('alice'), password);
  await new Throttle(CONFIG, spy, { fingerprintKey: shared }).recordFailure(from('alice'), password);
  assert.equal(seen[0], seen[3], 'a shared key gives the same fingerprint on every instance');
});

test('a store that throws lets logins through rather than locking everyone out', async () => {
  const broken: ThrottleStore = {
    read: () => Promise.reject(new Error('boom')),
    addFailure: () => Promise.reject(new Error('boom')),
    clear: () => Promise.reject(new Error('boom')),
    forgetSource: () => Promise.reject(new Error('boom')),
    close: () => Promise.resolve(),
  };
  const throttle = new Throttle(CONFIG, broken);
  assert.equal((await throttle.check(from('alice'))).refused, false);
  assert.equal((await throttle.recordFailure(from('alice'), 'x')).refused, false);
  await throttle.recordSuccess(from('alice'));
});

test('memory stays bounded while user names are sprayed: least recently used subjects go first', async (t) => {
  const { throttle, store } = setup({ maxTrackedSubjects: 1_000, failuresPerAddress: 1_000_000 });
  for (let i = 0; i < 20_000; i++) await throttle.recordFailure(from(`spray${i}`, '203.0.113.1'), 'pw');
  assert.ok(store.size <= 1_000, `tracked ${store.size}`);
  // The sprayer's own address is used all the time, so it stays tracked and keeps counting.
  const verdict = await throttle.check(from('anyone', '203.0.113.1'));
  assert.equal(verdict.delayMs, CONFIG.maxDelayMs);

  // What a full default-sized table costs.
  const big = setup({ maxTrackedSubjects: THROTTLE_DEFAULTS.maxTrackedSubjects, failuresPerAddress: 1_000_000 });
  collect();
  const before = process.memoryUsage().heapUsed;
  for (let i = 0; i < THROTTLE_DEFAULTS.maxTrackedSubjects; i++) {
    await big.throttle.recordFailure(from(`someone.with.a.long.name.${i}@example.org`, '10.0.0.1', true), `pw${i % 3}`);
  }
  collect();
  const perSubject = (process.memoryUsage().heapUsed - before) / big.store.size;
  t.diagnostic(`memory throttle store: ${big.store.size} subjects, about ${Math.round(perSubject)} bytes each (${Math.round((perSubject * big.store.size) / 1_048_576)} MiB)`);
  assert.ok(perSubject < 1_024, `${perSubject} bytes per tracked subject`);
});

test('reconfigure: new limits and delays apply to the counts in force; a new window or refusal time to what is counted from then on', async () => {
  const { throttle, clock } = setup();
  for (let i = 1; i <= 3; i++) await throttle.recordFailure(from('alice'), `wrong-${i}`);
  assert.deepEqual(throttle.reconfigure({ ...CONFIG, baseDelayMs: 500, failuresPerUser: 4, failureWindowMs: 120_000, refusalMs: 90_000 }), {
    changed: ['base_delay_ms', 'failures_per_user', 'failure_window_ms', 'refusal_ms'],
    counters: 'kept',
  });
  assert.equal((await throttle.check(from('alice'))).delayMs, 2_000, 'three failures kept, the new base delay');
  const fourth = await throttle.recordFailure(from('alice'), 'wrong-4');
  assert.equal(fourth.refused, true, 'the fourth failure reaches the new limit');
  assert.equal(fourth.refusedForMs, 90_000, 'a refusal started now lasts the new refusal time');
  // bob's failure before the reload keeps its window (60 s); carol's after it gets the new one (120 s).
  const other = setup();
  await other.throttle.recordFailure(from('bob', '192.0.2.20'), 'x');
  other.throttle.reconfigure({ ...CONFIG, failureWindowMs: 120_000 });
  await other.throttle.recordFailure(from('carol', '192.0.2.21'), 'x');
  other.clock.now += 61_000;
  assert.equal((await other.throttle.check(from('bob', '192.0.2.20'))).delayMs, 0, 'counted before the reload: its old window');
  assert.equal((await other.throttle.check(from('carol', '192.0.2.21'))).delayMs, 1_000, 'counted after it: the new window');
  clock.now += 90_001;
  assert.equal((await throttle.check(from('alice'))).refused, false);
});

test('reconfigure of a throttle built from its config: counters kept, copied at a new max_tracked (least recently used left out), dropped when turned off', async () => {
  const log = pino({ level: 'silent' });
  const throttle = Throttle.fromConfig({ ...CONFIG, maxTrackedSubjects: 100 }, log);
  // Trusted: users only, 100 subjects.
  for (let i = 0; i < 100; i++) await throttle.recordFailure(from(`user${i}`, '10.0.0.1', true), 'x');
  for (let i = 1; i <= CONFIG.failuresPerUser; i++) await throttle.recordFailure(from('user0', '10.0.0.1', true), `again-${i}`);
  const refusal = (await throttle.check(from('user0', '10.0.0.1', true))).refusedForMs;
  assert.ok(refusal > 0);
  assert.deepEqual(throttle.reconfigure({ ...CONFIG, maxTrackedSubjects: 100, failuresPerUser: 3 }), { changed: ['failures_per_user'], counters: 'kept' });
  assert.deepEqual(throttle.reconfigure({ ...CONFIG, maxTrackedSubjects: 60, failuresPerUser: 3 }), { changed: ['max_tracked'], counters: 'copied', forgotten: 40 });
  const verdict = await throttle.check(from('user0', '10.0.0.1', true));
  assert.ok(verdict.refused && verdict.refusedForMs <= refusal && verdict.refusedForMs > refusal - 1_000, 'the refusal keeps the time it had left');
  for (let i = 1; i < 100; i++) {
    const counted = (await throttle.check(from(`user${i}`, '10.0.0.1', true))).delayMs > 0;
    assert.equal(counted, i >= 41, `user${i}: the most recently used are kept`);
  }
  assert.deepEqual(throttle.reconfigure({ ...CONFIG, enabled: false }), { changed: ['enabled', 'failures_per_user', 'max_tracked'], counters: 'dropped' });
  assert.equal((await throttle.recordFailure(from('user0'), 'y')).refused, false);
  assert.deepEqual(throttle.reconfigure({ ...CONFIG, enabled: false, baseDelayMs: 2_000 }), { changed: ['base_delay_ms'], counters: 'none' });
  assert.deepEqual(throttle.reconfigure(CONFIG), { changed: ['enabled', 'base_delay_ms'], counters: 'new' });
  assert.equal((await throttle.check(from('user0'))).refused, false, 'turned on again: empty counters');
  assert.equal((await throttle.recordFailure(from('user0'), 'z')).delayMs, CONFIG.baseDelayMs);
  await throttle.close();
});

test('a throttle built turned off allocates no counters', () => {
  const before = process.memoryUsage().arrayBuffers;
  const throttle = Throttle.fromConfig({ ...CONFIG, enabled: false, maxTrackedSubjects: 2_000_000 }, pino({ level: 'silent' }));
  // An lru-cache of 2,000,000 with a TTL allocates about 48 MB of typed arrays when it is made.
  assert.ok(process.memoryUsage().arrayBuffers - before < 4_000_000, `${process.memoryUsage().arrayBuffers - before} bytes`);
  assert.equal(throttle.sharing, 'memory');
});

test('config: defaults, every key, and every mistake reported with its path', () => {
  const issues = new IssueList();
  const defaults = readThrottleConfig(undefined, 'throttle', issues);
  assert.deepEqual(issues.issues, []);
  assert.equal(defaults.enabled, true);
  assert.equal(defaults.failuresPerUser, THROTTLE_DEFAULTS.failuresPerUser);
  assert.equal(defaults.redis, undefined);

  const full = readThrottleConfig(
    {
      enabled: true,
      base_delay_ms: 500,
      max_delay_ms: 4000,
      failures_per_user: 3,
      failures_per_address: 7,
      failure_window_ms: 120000,
      refusal_ms: 60000,
      max_tracked: 5000,
      exempt_networks: ['100.64.0.0/10'],
      ipv6_prefix_bits: 48,
      known_address_ms: 0,
      redis: { url: 'redis://127.0.0.1:6379/2', username: 'mf', auth_password: 's3cret', key_prefix: 'mf:', timeout_ms: 100 },
    },
    'throttle',
    issues,
  );
  assert.deepEqual(issues.issues, []);
  assert.deepEqual(full, {
    enabled: true,
    baseDelayMs: 500,
    maxDelayMs: 4000,
    failuresPerUser: 3,
    failuresPerAddress: 7,
    failureWindowMs: 120000,
    refusalMs: 60000,
    maxTrackedSubjects: 5000,
    exemptNetworks: ['100.64.0.0/10'],
    ipv6PrefixBits: 48,
    knownAddressMs: 0,
    redis: { url: 'redis://127.0.0.1:6379/2', username: 'mf', password: 's3cret', keyPrefix: 'mf:', timeoutMs: 100 },
  });

  const bad = new IssueList();
  readThrottleConfig(
    {
      base_delay_ms: 5000,
      max_delay_ms: 1000,
      failures_per_user: 0,
      exempt_networks: ['100.64.0.1/10'],
      ipv6_prefix_bits: 128,
      known_address_ms: 5,
      colour: 'red',
      redis: { url: 'redis://:hunter2@127.0.0.1:6379', timeout_ms: 0 },
    },
    'throttle',
    bad,
  );
  const paths = bad.issues.map((i) => i.path).sort();
  assert.deepEqual(paths, [
    'throttle.colour',
    'throttle.exempt_networks[0]',
    'throttle.failures_per_user',
    'throttle.ipv6_prefix_bits',
    'throttle.known_address_ms',
    'throttle.max_delay_ms',
    'throttle.redis.timeout_ms',
    'throttle.redis.url',
  ]);
  assert.ok(!JSON.stringify(bad.issues).includes('hunter2'), 'the password in the URL is not echoed');
  const notRedis = new IssueList();
  readThrottleConfig({ redis: { url: 'http://127.0.0.1' } }, 'throttle', notRedis);
  assert.deepEqual(notRedis.issues.map((i) => i.path), ['throttle.redis.url']);
  // Nor in a URL that does not parse or has the wrong scheme.
  for (const url of ['redis://:hunter2@127.0.0.1:99999', 'http://:hunter2@127.0.0.1', 'rediss//:hunter2@127.0.0.1']) {
    const issues = new IssueList();
    readThrottleConfig({ redis: { url } }, 'throttle', issues);
    assert.deepEqual(issues.issues.map((i) => i.path), ['throttle.redis.url'], url);
    assert.ok(!JSON.stringify(issues.issues).includes('hunter2'), `${url}: the password is not echoed`);
    assert.match(JSON.stringify(issues.issues), /\[credentials hidden\]@127\.0\.0\.1/);
  }
  // The path is a database number or nothing: the client library throws on anything else.
  for (const [url, ok] of [['redis://h/abc', false], ['redis://h/0/', false], ['redis://h/%30', false], ['redis://h:6379/15', true], ['redis://h', true], ['rediss://h/', true]] as const) {
    const issues = new IssueList();
    readThrottleConfig({ redis: { url } }, 'throttle', issues);
    assert.equal(issues.issues.length === 0, ok, `${url}: ${JSON.stringify(issues.issues)}`);
  }
});

test('config: throttle.redis.ca_file, cert_file and key_file, resolved against the config\'s folder; with redis://, one without the other, or relative without a folder: reported', () => {
  const resolve = (p: string): string => (p.startsWith('/') ? p : `/etc/mailfront/${p}`);
  const issues = new IssueList();
  const tls = readThrottleConfig({ redis: { url: 'rediss://redis.example:6380', ca_file: 'redis-ca.pem', cert_file: '/etc/ssl/mf.crt', key_file: 'mf.key' } }, 'throttle', issues, resolve);
  assert.deepEqual(issues.issues, []);
  assert.deepEqual(tls.redis, { url: 'rediss://redis.example:6380', keyPrefix: THROTTLE_DEFAULTS.redisKeyPrefix, timeoutMs: THROTTLE_DEFAULTS.redisTimeoutMs, caFile: '/etc/mailfront/redis-ca.pem', certFile: '/etc/ssl/mf.crt', keyFile: '/etc/mailfront/mf.key' });

  const plain = new IssueList();
  readThrottleConfig({ redis: { url: 'redis://redis.example', ca_file: '/etc/ssl/ca.pem' } }, 'throttle', plain, resolve);
  assert.deepEqual(plain.issues, [{ path: 'throttle.redis.ca_file', expected: 'a rediss:// url (the file is for TLS, which a redis:// url does not use)', found: 'a redis:// url' }]);

  for (const [given, missing] of [['cert_file', 'key_file'], ['key_file', 'cert_file']] as const) {
    const half = new IssueList();
    readThrottleConfig({ redis: { url: 'rediss://redis.example', [given]: '/etc/ssl/x.pem' } }, 'throttle', half, resolve);
    assert.deepEqual(half.issues.map((i) => i.path), [`throttle.redis.${missing}`], given);
  }

  const noFolder = new IssueList();
  const absolute = readThrottleConfig({ redis: { url: 'rediss://redis.example', ca_file: '/etc/ssl/ca.pem', cert_file: 'mf.crt', key_file: '' } }, 'throttle', noFolder);
  assert.deepEqual(noFolder.issues, [
    { path: 'throttle.redis.cert_file', expected: 'an absolute file name', found: '"mf.crt"' },
    { path: 'throttle.redis.key_file', expected: 'a non-empty string', found: '""' },
  ]);
  assert.equal(absolute.redis?.caFile, '/etc/ssl/ca.pem');
});

test('a Redis URL the client library refuses leaves the throttle on local counters, and the process up', async () => {
  // Past the config check (a Throttle made in code): the library throws in createClient.
  const states: string[] = [];
  const throttle = Throttle.fromConfig({ ...CONFIG, redis: { url: 'redis://127.0.0.1/abc', keyPrefix: 'mf:', timeoutMs: 100 } }, pino({ level: 'silent' }), { onRedisState: (state) => states.push(state) });
  try {
    for (let i = 0; i < 50 && !states.includes('down'); i++) await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(states, ['down']);
    assert.equal((await throttle.check({ user: 'u', address: '192.0.2.1', trusted: false })).refused, false, 'local counters answer');
  } finally {
    await throttle.close();
  }
});

test('the Redis URL in the throttle\'s log lines hides a secret written into its query (the client ignores a query), and is as written without one', async () => {
  const port = await refusingPort();
  const secret = 'Redis-query-pw-81d0';
  const logged = async (url: string): Promise<Record<string, unknown>[]> => {
    const lines: Record<string, unknown>[] = [];
    const log = pino({ level: 'debug' }, { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
    const states: string[] = [];
    const throttle = Throttle.fromConfig({ ...CONFIG, redis: { url, keyPrefix: 'mf:', timeoutMs: 100 } }, log, { onRedisState: (state) => states.push(state) });
    try {
      for (let i = 0; i < 100 && !states.includes('down'); i++) await new Promise((r) => setTimeout(r, 20));
      assert.ok(states.includes('down'), states.join());
    } finally {
      await throttle.close();
    }
    return lines.filter((l) => l['event'] === 'throttle.redis_state');
  };
  const hidden = await logged(`redis://127.0.0.1:${port}/0?password=${secret}`);
  assert.ok(hidden.length > 0);
  for (const line of hidden) assert.equal(line['url'], `redis://127.0.0.1:${port}/0?password=[hidden]`);
  assert.ok(!JSON.stringify(hidden).includes(secret), JSON.stringify(hidden));
  const plain = await logged(`redis://127.0.0.1:${port}/0`);
  assert.ok(plain.length > 0);
  for (const line of plain) assert.equal(line['url'], `redis://127.0.0.1:${port}/0`);
});

test('a process without throttle.redis never loads the Redis client library', () => {
  // A fresh process: this one's module cache holds whatever other tests loaded. @redis/client is
  // CommonJS, so once imported it is in the CommonJS cache.
  const main = new URL('../../src/main.js', import.meta.url).href;
  const script = `import ${JSON.stringify(main)};
import { createRequire } from 'node:module';
const loaded = Object.keys(createRequire(import.meta.url).cache);
process.stdout.write(JSON.stringify({ modules: loaded.length, redis: loaded.filter((k) => k.includes('@redis')).length }));`;
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
  const { modules, redis } = JSON.parse(out) as { modules: number; redis: number };
  assert.ok(modules > 0, 'the CommonJS cache is where the check looks (pino, at least, is there)');
  assert.equal(redis, 0);
});
