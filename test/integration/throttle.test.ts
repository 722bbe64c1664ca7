/**
 * The throttle against a real redis-server: two instances sharing Redis see each other's
 * failures; Redis stopped or hung → local counters, one warning, a state callback, and every
 * call within its deadline; Redis back → shared again; Redis refusing writes → an instance adds
 * the failures Redis refused to Redis's counts, and writes them to Redis once it takes writes
 * again (each wrong password then counts once, whatever Redis ran late); Redis slow or flapping → few
 * state changes and lines. Also what Redis holds: no passwords, and every key expires.
 */
import assert from 'node:assert/strict';
import { createServer, connect } from 'node:net';
import type { AddressInfo, Socket } from 'node:net';
import { after, describe, test } from 'node:test';
import { createClient } from '@redis/client';
import { pino } from 'pino';
import { Throttle } from '../../src/auth/throttle.js';
import type { LoginAttempt, RedisState } from '../../src/auth/throttle.js';
import type { ThrottleConfig } from '../../src/auth/throttle-config.js';
import { startRedis } from './servers/index.js';
import type { Redis } from './servers/index.js';

// Generous for a loaded CI machine; a hung Redis still shows as calls returning in this time.
const TIMEOUT_MS = 400;
const RETRY_MS = 200;
const WRONG_PASSWORDS = Array.from({ length: 12 }, (_, i) => `Wrong-pw-${i}-a81f`);

interface Instance {
  readonly throttle: Throttle;
  readonly lines: Record<string, unknown>[];
  readonly states: RedisState[];
}

/** Every throttle the cases made, with the Redis URL it was given: closed with that Redis (withOwnRedis), or after the file. */
const open = new Map<Throttle, string>();

/**
 * A case run against a redis-server of its own, started for it and stopped after it, with the
 * throttles made for it: left open, each would try to reconnect every RETRY_MS meanwhile.
 */
function withOwnRedis(body: (redis: Redis) => Promise<void>): () => Promise<void> {
  return async () => {
    const redis = await startRedis();
    try {
      await body(redis);
    } finally {
      const mine = [...open].filter(([, url]) => url === redis.url).map(([throttle]) => throttle);
      for (const throttle of mine) open.delete(throttle);
      await Promise.all(mine.map((throttle) => throttle.close()));
      await redis.stop();
    }
  };
}

async function instance(prefix: string, fingerprintKey: Uint8Array | undefined, url: string, overrides: Partial<ThrottleConfig> = {}, retryIntervalMs = RETRY_MS): Promise<Instance> {
  const config: ThrottleConfig = {
    enabled: true,
    baseDelayMs: 100,
    maxDelayMs: 1_600,
    failuresPerUser: 5,
    failuresPerAddress: 8,
    failureWindowMs: 60_000,
    refusalMs: 30_000,
    maxTrackedSubjects: 10_000,
    redis: { url, keyPrefix: prefix, timeoutMs: TIMEOUT_MS },
    ...overrides,
  };
  const lines: Record<string, unknown>[] = [];
  const states: RedisState[] = [];
  const log = pino({ level: 'debug' }, { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
  const throttle = Throttle.fromConfig(config, log, { onRedisState: (s) => states.push(s), retryIntervalMs, ...(fingerprintKey ? { fingerprintKey } : {}) });
  open.set(throttle, url);
  await throttle.ready();
  await until('the first connection to Redis', () => throttle.sharing === 'up');
  return { throttle, lines, states };
}

after(async () => {
  await Promise.all([...open.keys()].map((t) => t.close()));
});

const from = (user: string, address: string): LoginAttempt => ({ user, address, trusted: false });

async function until(what: string, predicate: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** As until(), for a predicate that asks the throttle. */
async function eventually(what: string, predicate: () => Promise<boolean>, timeoutMs = 5_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

interface SlowProxy {
  /** redis://127.0.0.1:PORT of the proxy. */
  readonly url: string;
  /** While true, replies are held (see slowProxy()); false passes them on at once. */
  slow: boolean;
  /** Connections whose first PONG went out at once while slow. */
  readonly inTime: number;
  close(): Promise<void>;
}

/**
 * A TCP proxy in front of Redis on `port` that, while slow, holds every reply for `holdMs` before
 * passing it on, except a connection's first PONG: a Redis that answers a new connection's first
 * PING in time, as if by luck, and nothing else. Replies keep their order.
 */
async function slowProxy(port: number, holdMs: number): Promise<SlowProxy> {
  const sockets = new Set<Socket>();
  const proxy = {
    url: '',
    slow: false,
    inTime: 0,
    close: async (): Promise<void> => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
  const server = createServer((client) => {
    const upstream = connect(port, '127.0.0.1');
    for (const socket of [client, upstream]) {
      sockets.add(socket);
      socket.on('error', () => undefined);
      socket.once('close', () => {
        sockets.delete(socket);
        client.destroy();
        upstream.destroy();
      });
    }
    client.on('data', (bytes: Buffer) => upstream.write(bytes));
    let ponged = false;
    let sent = Promise.resolve();
    upstream.on('data', (bytes: Buffer) => {
      const pong = bytes.toString('latin1') === '+PONG\r\n';
      const lucky = pong && !ponged;
      ponged ||= pong;
      if (proxy.slow && lucky) proxy.inTime++;
      const due = performance.now() + (proxy.slow && !lucky ? holdMs : 0);
      sent = sent.then(async () => {
        const wait = due - performance.now();
        if (wait > 0) await new Promise((r) => setTimeout(r, wait));
        if (!client.destroyed) client.write(bytes);
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  proxy.url = `redis://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return proxy;
}

function redisStateLines(lines: readonly Record<string, unknown>[]): string[] {
  return lines.filter((l) => l['event'] === 'throttle.redis_state').map((l) => `${String(l['level'])} ${String(l['state'])}`);
}

// Four cases at a time, each against a redis-server of its own (withOwnRedis): they stop, hang
// and make Redis refuse writes, which would reach any case sharing it. Not all at once: the cases
// time Redis calls against TIMEOUT_MS, which a busier event loop makes them miss.
describe('throttle counters shared through Redis', { concurrency: 4 }, () => {
  test('two instances see each other\'s failures, per user and per address', withOwnRedis(async (redis) => {
    const a = await instance('t1:', undefined, redis.url);
    const b = await instance('t1:', undefined, redis.url);
    assert.equal(a.throttle.sharing, 'up');
    for (let i = 0; i < 4; i++) await a.throttle.recordFailure(from('alice', '192.0.2.1'), WRONG_PASSWORDS[i] ?? '');
    const seenByB = await b.throttle.check(from('alice', '198.51.100.1'));
    assert.equal(seenByB.refused, false);
    assert.equal(seenByB.delayMs, 800, 'B sees the four failures A counted');
    const fifth = await b.throttle.recordFailure(from('alice', '198.51.100.1'), WRONG_PASSWORDS[4] ?? '');
    assert.equal(fifth.refused, true);
    assert.equal(fifth.refusedBy, 'user');
    assert.equal((await a.throttle.check(from('alice', '203.0.113.1'))).refused, true, 'A refuses alice too');

    for (let i = 0; i < 8; i++) await b.throttle.recordFailure(from(`sprayed${i}`, '192.0.2.50'), 'Spring2025!');
    const address = await a.throttle.check(from('bob', '192.0.2.50'));
    assert.equal(address.refused, true);
    assert.equal(address.refusedBy, 'address');
    assert.deepEqual(redisStateLines(a.lines), ['30 up'], 'one info line when Redis was reached');
  }));

  test('with a fleet-wide fingerprint key, one wrong password counts once across instances', withOwnRedis(async (redis) => {
    const key = new Uint8Array(32).fill(3);
    const a = await instance('t2:', key, redis.url);
    const b = await instance('t2:', key, redis.url);
    await a.throttle.recordFailure(from('carol', '192.0.2.2'), 'stale-password');
    const again = await b.throttle.recordFailure(from('carol', '192.0.2.3'), 'stale-password');
    assert.equal(again.delayMs, 100, 'still one failure');
    const other = await instance('t2:', undefined, redis.url);
    assert.equal((await other.throttle.recordFailure(from('carol', '192.0.2.3'), 'stale-password')).delayMs, 200, 'a per-process key counts it again, once per instance');
  }));

  test('Redis holds no password, and every key it holds expires', withOwnRedis(async (redis) => {
    const a = await instance('t3:', undefined, redis.url);
    await a.throttle.recordFailure(from('dave', '2001:db8:7:7::1'), WRONG_PASSWORDS[7] ?? '');
    // A success makes its address known to the user (throttle.known_address_ms, a day by default).
    await a.throttle.recordSuccess(from('erin', '2001:db8:8:8::1'));
    const raw = createClient({ url: redis.url });
    raw.on('error', () => undefined);
    await raw.connect();
    try {
      const keys = (await raw.sendCommand(['KEYS', 't3:*'])) as string[];
      assert.deepEqual([...keys].sort(), ['t3:a:2001:db8:7:0::/56', 't3:k:erin', 't3:u:dave']);
      for (const key of keys) {
        const ttl = Number(await raw.sendCommand(['PTTL', key]));
        assert.ok(ttl > 0 && ttl <= (key === 't3:k:erin' ? 24 * 3_600_000 : 60_000), `${key} expires (PTTL ${ttl})`);
        const text = JSON.stringify(await raw.sendCommand(['HGETALL', key]));
        assert.ok(!WRONG_PASSWORDS.some((pw) => text.includes(pw) || text.includes(Buffer.from(pw).toString('base64'))), `a password in ${key}: ${text}`);
      }
    } finally {
      raw.destroy();
    }
  }));

  test('Redis answering with an error: local counters answer, the connection stays, one warning', withOwnRedis(async (redis) => {
    const a = await instance('t6:', undefined, redis.url);
    const raw = createClient({ url: redis.url });
    raw.on('error', () => undefined);
    await raw.connect();
    try {
      await raw.sendCommand(['SET', 't6:u:henry', 'not a hash']);
    } finally {
      raw.destroy();
    }
    for (let i = 0; i < 5; i++) await a.throttle.recordFailure(from('henry', '192.0.2.20'), WRONG_PASSWORDS[i] ?? '');
    assert.equal((await a.throttle.check(from('henry', '192.0.2.20'))).refused, true, 'counted locally');
    assert.equal(a.throttle.sharing, 'up');
    assert.equal(a.lines.filter((l) => l['event'] === 'throttle.redis_refused').length, 1);
    assert.match(String(a.lines.find((l) => l['event'] === 'throttle.redis_refused')?.['reason']), /WRONGTYPE/);
  }));

  for (const [mode, refuse, restore, reason] of [
    ['out of memory', ['CONFIG', 'SET', 'maxmemory', '1'], ['CONFIG', 'SET', 'maxmemory', '0'], /^OOM/],
    ['a read-only replica', ['REPLICAOF', '127.0.0.1', '1'], ['REPLICAOF', 'NO', 'ONE'], /^READONLY/],
  ] as const) {
    test(`Redis refusing writes (${mode}): an instance adds the failures Redis refused to Redis's count and refuses at the limit, also after a write by someone else is taken; state read-only until then`, withOwnRedis(async (redis) => {
      const prefix = `t7${mode.length}:`;
      const a = await instance(prefix, undefined, redis.url);
      const b = await instance(prefix, undefined, redis.url);
      const raw = createClient({ url: redis.url });
      raw.on('error', () => undefined);
      await raw.connect();
      try {
        await a.throttle.recordFailure(from('ivan', '192.0.2.30'), WRONG_PASSWORDS[0] ?? '');
        await b.throttle.recordFailure(from('ivan', '192.0.2.31'), WRONG_PASSWORDS[1] ?? '');
        assert.equal((await a.throttle.check(from('ivan', '192.0.2.30'))).delayMs, 200, 'two failures in Redis, not counted twice with the local one');
        await raw.sendCommand([...refuse]);
        // Two wrong passwords are in Redis, A's next three only in A's own counts.
        for (let i = 2; i < 5; i++) {
          const before = await a.throttle.check(from('ivan', '192.0.2.30'));
          assert.equal(before.refused, false, `A's wrong password ${i} is let through`);
          assert.equal(before.delayMs, 100 * 2 ** (i - 1), `Redis's ${2} failures and the ${i - 2} A counted since`);
          await a.throttle.recordFailure(from('ivan', '192.0.2.30'), WRONG_PASSWORDS[i] ?? '');
        }
        const refused = await a.throttle.check(from('ivan', '192.0.2.30'));
        assert.equal(refused.refused, true, 'the fifth distinct wrong password, two of them in Redis, reached the limit of five');
        assert.equal(refused.refusedBy, 'user');
        assert.equal(a.throttle.sharing, 'read-only');
        assert.deepEqual(a.states, ['up', 'read-only']);
        const warning = a.lines.find((l) => l['event'] === 'throttle.redis_state' && l['state'] === 'read-only');
        assert.equal(warning?.['level'], 40);
        assert.match(String(warning?.['reason']), reason);
        // A password already in Redis writes nothing: not a write taken. One Redis refused before
        // is not counted again.
        await a.throttle.recordFailure(from('ivan', '192.0.2.30'), WRONG_PASSWORDS[0] ?? '');
        assert.equal(a.throttle.sharing, 'read-only');
        assert.equal((await a.throttle.recordFailure(from('ivan', '192.0.2.30'), WRONG_PASSWORDS[4] ?? '')).delayMs, 1_600);
        assert.equal((await a.throttle.check(from('nina', '192.0.2.30'))).delayMs, 800, 'the address: one failure in Redis, three A counted');
        assert.equal((await a.throttle.check(from('ivan', '192.0.2.30'))).refused, true);
        assert.equal((await b.throttle.check(from('ivan', '192.0.2.31'))).refused, false, 'B has not seen A\'s local failures');
        assert.equal(a.lines.filter((l) => l['event'] === 'throttle.redis_refused').length, 0, 'the state line says it, not a refusal line per call');
      } finally {
        await raw.sendCommand([...restore]);
        raw.destroy();
      }
      await a.throttle.recordFailure(from('judy', '192.0.2.32'), WRONG_PASSWORDS[0] ?? '');
      assert.equal(a.throttle.sharing, 'up', 'a write taken: shared again');
      assert.deepEqual(a.states, ['up', 'read-only', 'up']);
      assert.deepEqual(redisStateLines(a.lines), ['30 up', '40 read-only', '30 up']);
      // A writes its three to Redis now; they count once, and its refusal lasts its time.
      const after = await a.throttle.check(from('ivan', '192.0.2.30'));
      assert.equal(after.refused, true, 'the refusal A earned while Redis refused writes outlasts a write taken for someone else');
      assert.equal(after.refusedBy, 'user');
      assert.equal((await a.throttle.check(from('nina', '192.0.2.30'))).delayMs, 800, 'the address\'s failures A counted still count');
      await a.throttle.recordFailure(from('ivan', '192.0.2.33'), WRONG_PASSWORDS[6] ?? '');
      assert.equal((await a.throttle.check(from('ivan', '192.0.2.33'))).refused, true, 'and after a write taken for ivan himself');
      await eventually('B sees the three A counted apart, written to Redis once it took writes', async () => (await b.throttle.check(from('ivan', '192.0.2.31'))).refused);
    }));
  }

  test('Redis refusing writes: a refusal earned meanwhile lasts its time once Redis takes writes again, whoever\'s failure it took first', withOwnRedis(async (redis) => {
    const a = await instance('t11:', undefined, redis.url);
    const raw = createClient({ url: redis.url });
    raw.on('error', () => undefined);
    await raw.connect();
    try {
      await raw.sendCommand(['CONFIG', 'SET', 'maxmemory', '1']);
      for (let i = 0; i < 5; i++) await a.throttle.recordFailure(from('ivan', '192.0.2.34'), WRONG_PASSWORDS[i] ?? '');
      assert.equal((await a.throttle.check(from('ivan', '192.0.2.34'))).refused, true);
      assert.equal(a.throttle.sharing, 'read-only');
    } finally {
      await raw.sendCommand(['CONFIG', 'SET', 'maxmemory', '0']);
      raw.destroy();
    }
    await a.throttle.recordFailure(from('judy', '198.51.100.7'), WRONG_PASSWORDS[0] ?? '');
    assert.equal(a.throttle.sharing, 'up');
    const user = await a.throttle.check(from('ivan', '203.0.113.34'));
    assert.equal(user.refused, true, 'ivan, refused by A\'s own counts, is still refused');
    assert.equal(user.refusedBy, 'user');
    const address = await a.throttle.check(from('kate', '192.0.2.34'));
    assert.equal(address.refused, false);
    assert.equal(address.delayMs, 1_600, 'the address\'s five failures still count');
  }));

  test('Redis refusing writes, then taking them again: an instance with no failed login since is up again by itself', withOwnRedis(async (redis) => {
    const a = await instance('t12:', undefined, redis.url);
    const raw = createClient({ url: redis.url });
    raw.on('error', () => undefined);
    await raw.connect();
    try {
      await raw.sendCommand(['CONFIG', 'SET', 'maxmemory', '1']);
      try {
        await a.throttle.recordFailure(from('mona', '192.0.2.36'), WRONG_PASSWORDS[0] ?? '');
        assert.equal(a.throttle.sharing, 'read-only');
        // Several probes, each refused: the state stays, and nothing more is logged.
        await new Promise((r) => setTimeout(r, 4 * RETRY_MS));
        assert.equal(a.throttle.sharing, 'read-only');
      } finally {
        await raw.sendCommand(['CONFIG', 'SET', 'maxmemory', '0']);
      }
      await until('A up again without a failed login', () => a.throttle.sharing === 'up');
      assert.deepEqual(a.states, ['up', 'read-only', 'up']);
      assert.deepEqual(redisStateLines(a.lines), ['30 up', '40 read-only', '30 up']);
      assert.equal(a.lines.filter((l) => l['event'] === 'throttle.redis_refused').length, 0);
      const keys = (await raw.sendCommand(['KEYS', 't12:*'])) as string[];
      for (const key of keys) {
        const ttl = Number(await raw.sendCommand(['PTTL', key]));
        assert.ok(ttl > 0 && ttl <= (key === 't12:probe' ? 1_000 : 60_000), `${key} expires (PTTL ${ttl})`);
      }
    } finally {
      raw.destroy();
    }
  }));

  test('Redis out of memory: a success still forgets its own address\'s failures in Redis and makes the address known to the fleet (Redis takes an HSET in a script after its first write, as it took it after the DEL before sources)', withOwnRedis(async (redis) => {
    const a = await instance('t20:', undefined, redis.url);
    const b = await instance('t20:', undefined, redis.url);
    const off = await instance('t20:', undefined, redis.url, { knownAddressMs: 0 });
    const raw = createClient({ url: redis.url });
    raw.on('error', () => undefined);
    await raw.connect();
    const home = from('ann', '192.0.2.90');
    const guesser = from('ann', '198.51.100.90');
    const failures = async (user: string): Promise<number | undefined> => (await b.throttle.inspect([{ user }]))?.[0]?.failures;
    try {
      for (let i = 0; i < 2; i++) await b.throttle.recordFailure(guesser, WRONG_PASSWORDS[i] ?? '');
      for (let i = 2; i < 4; i++) await b.throttle.recordFailure(home, WRONG_PASSWORDS[i] ?? '');
      const pia = from('pia', '192.0.2.91');
      await b.throttle.recordFailure(pia, WRONG_PASSWORDS[0] ?? '');
      await b.throttle.recordFailure(from('pia', '198.51.100.91'), WRONG_PASSWORDS[1] ?? '');
      await raw.sendCommand(['CONFIG', 'SET', 'maxmemory', '1']);

      await a.throttle.recordSuccess(home);
      assert.equal(a.throttle.sharing, 'up', 'the success written: not taken for Redis refusing writes');
      assert.equal(String(await raw.sendCommand(['HGET', 't20:u:ann', 'n'])), '2', 'her two typos at home forgotten, the guesser\'s two left');
      assert.ok(Number(await raw.sendCommand(['PTTL', 't20:u:ann'])) > 0, 'the count still expires');
      assert.equal(await failures('ann'), 2, 'B sees the two left');
      assert.deepEqual(Object.keys(await raw.hGetAll('t20:k:ann')), ['192.0.2.90'], 'her address known in Redis');
      const known = Number(await raw.sendCommand(['PTTL', 't20:k:ann']));
      assert.ok(known > 0 && known <= 86_400_000, `the known addresses expire (PTTL ${known})`);

      // A user with no failures: nothing to forget, the address's write comes first.
      await a.throttle.recordSuccess(from('bo', '192.0.2.92'));
      assert.deepEqual(Object.keys(await raw.hGetAll('t20:k:bo')), ['192.0.2.92']);
      assert.ok(Number(await raw.sendCommand(['PTTL', 't20:k:bo'])) > 0);
      assert.equal(a.throttle.sharing, 'up');

      // Known addresses off: the forgetting alone.
      await off.throttle.recordSuccess(pia);
      assert.equal(off.throttle.sharing, 'up');
      assert.equal(String(await raw.sendCommand(['HGET', 't20:u:pia', 'n'])), '1', 'the failure from elsewhere left');
      assert.ok(Number(await raw.sendCommand(['PTTL', 't20:u:pia'])) > 0);

      // The guesser brings ann to the limit through B (which counts them apart: Redis refuses
      // them): she is refused elsewhere, not at home, which B learns from Redis.
      for (let i = 4; i < 7; i++) await b.throttle.recordFailure(guesser, WRONG_PASSWORDS[i] ?? '');
      assert.equal(b.throttle.sharing, 'read-only');
      assert.equal((await b.throttle.check(from('ann', '203.0.113.90'))).refused, true, 'five from elsewhere');
      const atHome = await b.throttle.check(home);
      assert.equal(atHome.refused, false, 'ann at home, known through Redis');
      assert.equal(atHome.knownAddress, true);
    } finally {
      await raw.sendCommand(['CONFIG', 'SET', 'maxmemory', '0']);
      raw.destroy();
    }
  }));

  test('Redis refusing writes: failures counted through another instance before and through this one since add up to the limit', withOwnRedis(async (redis) => {
    const a = await instance('t10:', undefined, redis.url);
    const b = await instance('t10:', undefined, redis.url);
    const raw = createClient({ url: redis.url });
    raw.on('error', () => undefined);
    await raw.connect();
    let tried = 0;
    try {
      for (; tried < 4; tried++) await b.throttle.recordFailure(from('olga', '192.0.2.40'), WRONG_PASSWORDS[tried] ?? '');
      assert.equal((await a.throttle.check(from('olga', '192.0.2.41'))).delayMs, 800, 'A sees the four B counted');
      await raw.sendCommand(['CONFIG', 'SET', 'maxmemory', '1']);
      for (; tried < WRONG_PASSWORDS.length; tried++) {
        if ((await a.throttle.check(from('olga', '192.0.2.41'))).refused) break;
        await a.throttle.recordFailure(from('olga', '192.0.2.41'), WRONG_PASSWORDS[tried] ?? '');
      }
      assert.equal(a.throttle.sharing, 'read-only');
    } finally {
      await raw.sendCommand(['CONFIG', 'SET', 'maxmemory', '0']);
      raw.destroy();
    }
    assert.equal(tried, 5, 'distinct wrong passwords tried before A refused, with a limit of five');
  }));

  test('Redis refusing writes, then taking them: failures through another instance since reach the limit with the ones this instance counted apart; a check refuses, and so does a password Redis held already, for the refusal\'s time, not again at every check', withOwnRedis(async (redis) => {
    const key = new Uint8Array(32).fill(7);
    // A probes Redis for writes only every 10 s: it stays read-only, its failure apart, while B
    // writes (a probe taken sooner would replay it into Redis before B's four are in).
    const a = await instance('t16:', key, redis.url, { refusalMs: 1_500 }, 10_000);
    const b = await instance('t16:', key, redis.url, { refusalMs: 1_500 });
    const raw = createClient({ url: redis.url });
    raw.on('error', () => undefined);
    await raw.connect();
    try {
      await raw.sendCommand(['CONFIG', 'SET', 'maxmemory', '1']);
      await a.throttle.recordFailure(from('pia', '192.0.2.80'), WRONG_PASSWORDS[0] ?? '');
      await a.throttle.recordFailure(from('quin', '192.0.2.80'), WRONG_PASSWORDS[0] ?? '');
      assert.equal(a.throttle.sharing, 'read-only');
    } finally {
      await raw.sendCommand(['CONFIG', 'SET', 'maxmemory', '0']);
      raw.destroy();
    }
    for (let i = 1; i < 5; i++) {
      await b.throttle.recordFailure(from('pia', '192.0.2.81'), WRONG_PASSWORDS[i] ?? '');
      await b.throttle.recordFailure(from('quin', '192.0.2.82'), WRONG_PASSWORDS[i] ?? '');
    }
    assert.equal((await b.throttle.check(from('pia', '192.0.2.81'))).refused, false, 'Redis holds four');
    const pia = await a.throttle.check(from('pia', '192.0.2.80'));
    assert.equal(pia.refused, true, 'Redis\'s four and the one A counted apart reach the limit of five');
    assert.equal(pia.refusedBy, 'user');
    // B's last password, which Redis holds already (the same fingerprint key): nothing written.
    const quin = await a.throttle.recordFailure(from('quin', '192.0.2.80'), WRONG_PASSWORDS[4] ?? '');
    assert.equal(quin.refused, true, 'five with the one A counted apart, seen by a failure Redis held already');
    assert.equal(quin.refusedBy, 'user');
    // No failure since: once the refusal has run its time, a check does not start it again.
    await new Promise((r) => setTimeout(r, 1_600));
    const later = await a.throttle.check(from('pia', '192.0.2.80'));
    assert.equal(later.refused, false, 'the refusal lasted refusal_ms, not as long as the failures are remembered');
    assert.equal(later.delayMs, 1_600, 'the five failures still count');
  }));

  test('Redis stopped: local counters answer at once, one warning; Redis back: shared again, one info line', withOwnRedis(async (redis) => {
    const a = await instance('t4:', undefined, redis.url);
    const b = await instance('t4:', undefined, redis.url);
    await redis.stopOnly();
    try {
      const started = Date.now();
      for (let i = 0; i < 5; i++) await a.throttle.recordFailure(from('erin', '192.0.2.9'), WRONG_PASSWORDS[i] ?? '');
      const local = await a.throttle.check(from('erin', '192.0.2.9'));
      assert.ok(Date.now() - started < 10 * TIMEOUT_MS, 'no call waits for the dead Redis');
      assert.equal(local.refused, true, 'A keeps throttling with its own counters');
      assert.equal(a.throttle.sharing, 'down');
      assert.equal((await b.throttle.check(from('erin', '192.0.2.9'))).refused, false, 'B has not seen A\'s local failures');
      await new Promise((r) => setTimeout(r, 3 * RETRY_MS));
      for (let i = 0; i < 20; i++) await a.throttle.check(from('erin', '192.0.2.9'));
      assert.deepEqual(redisStateLines(a.lines), ['30 up', '40 down'], 'one warning, however many calls and retries');
      assert.deepEqual(a.states, ['up', 'down']);
    } finally {
      await redis.startAgain();
    }
    await until('A back on Redis', () => a.throttle.sharing === 'up');
    await until('B back on Redis', () => b.throttle.sharing === 'up');
    assert.deepEqual(redisStateLines(a.lines), ['30 up', '40 down', '30 up']);
    assert.match(String(a.lines.find((l) => l['event'] === 'throttle.redis_state' && l['state'] === 'up' && l['before'] === 'down')?.['msg']), /back/);
    // What A counted while Redis was down is not forgotten now that Redis answers: its refusal
    // of erin goes on (Redis never saw those failures).
    assert.equal((await a.throttle.check(from('erin', '192.0.2.9'))).refused, true, 'the refusal A earned while Redis was down lasts');
    for (let i = 0; i < 5; i++) await a.throttle.recordFailure(from('frank', '192.0.2.10'), WRONG_PASSWORDS[i] ?? '');
    assert.equal((await b.throttle.check(from('frank', '192.0.2.11'))).refused, true, 'shared again');
  }));

  test('Redis down, then back: a wrong password counted meanwhile and retried once Redis is back counts once, not once in Redis and once apart', withOwnRedis(async (redis) => {
    // Two stale passwords (a phone and a laptop), each retried, with a limit of three.
    const a = await instance('t13:', undefined, redis.url, { failuresPerUser: 3 });
    const bob = from('bob', '192.0.2.70');
    const cleo = from('cleo', '192.0.2.69');
    await a.throttle.recordFailure(bob, WRONG_PASSWORDS[1] ?? '');
    for (let i = 0; i < 2; i++) await a.throttle.recordFailure(cleo, WRONG_PASSWORDS[i] ?? '');
    await redis.stopOnly();
    try {
      await until('A sees Redis down', () => a.throttle.sharing === 'down');
      await a.throttle.recordFailure(bob, WRONG_PASSWORDS[3] ?? '');
      assert.equal((await a.throttle.recordFailure(bob, WRONG_PASSWORDS[3] ?? '')).delayMs, 200, 'the local counters: two failures');
      assert.equal((await a.throttle.recordFailure(cleo, WRONG_PASSWORDS[2] ?? '')).refused, true, 'cleo\'s third, refused by the local counters');
    } finally {
      // Nothing saved: Redis comes back empty.
      await redis.startAgain();
    }
    await until('A back on Redis', () => a.throttle.sharing === 'up');
    assert.equal((await a.throttle.check(bob)).delayMs, 100, 'Redis holds nothing; A adds the failure it counted while Redis was down');
    await a.throttle.recordFailure(bob, WRONG_PASSWORDS[1] ?? '');
    const retried = await a.throttle.recordFailure(bob, WRONG_PASSWORDS[3] ?? '');
    assert.equal(retried.refused, false, 'two distinct wrong passwords, with a limit of three');
    assert.equal(retried.delayMs, 200, 'Redis holds both now; the one A counted apart is not added to them');
    const after = await a.throttle.check(bob);
    assert.equal(after.refused, false);
    assert.equal(after.delayMs, 200);
    // Redis took cleo's third at its retry (and lost the two before with its restart): the
    // refusal it started while Redis was down runs on.
    await a.throttle.recordFailure(cleo, WRONG_PASSWORDS[2] ?? '');
    assert.equal((await a.throttle.check(cleo)).refused, true, 'cleo is still refused');
  }));

  test('Redis hung, then back: a password sent in a call that timed out and retried while Redis was down is not counted apart (Redis ran the call)', withOwnRedis(async (redis) => {
    const a = await instance('t14:', undefined, redis.url);
    const carl = from('carl', '192.0.2.71');
    await a.throttle.recordFailure(carl, WRONG_PASSWORDS[1] ?? '');
    await redis.pause();
    try {
      assert.equal((await a.throttle.recordFailure(carl, WRONG_PASSWORDS[2] ?? '')).delayMs, 200, 'sent, no answer in time: the local counters count it');
      await until('A sees Redis down', () => a.throttle.sharing === 'down');
      assert.equal((await a.throttle.recordFailure(carl, WRONG_PASSWORDS[2] ?? '')).delayMs, 200, 'the same password again');
    } finally {
      redis.resume();
    }
    await until('A back on Redis', () => a.throttle.sharing === 'up');
    assert.equal((await a.throttle.check(carl)).delayMs, 200, 'the two wrong passwords Redis holds, the second from the call that timed out; not a third');
    assert.equal((await a.throttle.recordFailure(carl, WRONG_PASSWORDS[2] ?? '')).delayMs, 200);
  }));

  test('Redis refusing writes, then hung as the password it refused is retried, then back: Redis, which ran that call late, and the failures A counted apart hold it once; two distinct wrong passwords stay below a limit of three', withOwnRedis(async (redis) => {
    const a = await instance('t17:', undefined, redis.url, { failuresPerUser: 3 });
    const dan = from('dan', '192.0.2.74');
    const raw = createClient({ url: redis.url });
    raw.on('error', () => undefined);
    await raw.connect();
    try {
      try {
        await raw.sendCommand(['CONFIG', 'SET', 'maxmemory', '1']);
        await a.throttle.recordFailure(dan, WRONG_PASSWORDS[0] ?? '');
        assert.equal(a.throttle.sharing, 'read-only', 'the first wrong password, counted apart');
      } finally {
        await raw.sendCommand(['CONFIG', 'SET', 'maxmemory', '0']);
      }
      await redis.pause();
      try {
        // The client retries it just as Redis hangs: sent, no answer in time.
        await a.throttle.recordFailure(dan, WRONG_PASSWORDS[0] ?? '');
        await until('A sees Redis down', () => a.throttle.sharing === 'down');
        await a.throttle.recordFailure(dan, WRONG_PASSWORDS[1] ?? '');
      } finally {
        redis.resume();
      }
      await until('A back on Redis', () => a.throttle.sharing === 'up');
      await eventually('A counting each wrong password once', async () => (await a.throttle.check(dan)).delayMs === 200);
      assert.equal(await raw.sendCommand(['HGET', 't17:u:dan', 'n']), '2', 'Redis holds both, the second written by A once Redis was back');
      const back = await a.throttle.check(dan);
      assert.equal(back.refused, false, 'two distinct wrong passwords, with a limit of three');
      for (const i of [0, 1]) {
        const retried = await a.throttle.recordFailure(dan, WRONG_PASSWORDS[i] ?? '');
        assert.equal(retried.refused, false, `wrong password ${i} retried`);
        assert.equal(retried.delayMs, 200);
      }
      assert.equal((await a.throttle.check(dan)).refused, false);
      assert.equal((await a.throttle.recordFailure(dan, WRONG_PASSWORDS[2] ?? '')).refused, true, 'the third distinct wrong password reaches the limit');
    } finally {
      raw.destroy();
    }
  }));

  test('Redis hung twice: a password counted apart in the first outage and retried as Redis hangs again counts once once Redis is back (Redis ran the retry late); two distinct wrong passwords stay below a limit of three', withOwnRedis(async (redis) => {
    const a = await instance('t18:', undefined, redis.url, { failuresPerUser: 3 });
    const fay = from('fay', '192.0.2.76');
    await redis.pause();
    try {
      // Someone else's call finds Redis hung; fay's password is then not sent: counted apart.
      await a.throttle.recordFailure(from('gus', '192.0.2.77'), WRONG_PASSWORDS[0] ?? '');
      await until('A sees Redis down', () => a.throttle.sharing === 'down');
      await a.throttle.recordFailure(fay, WRONG_PASSWORDS[1] ?? '');
    } finally {
      redis.resume();
    }
    await until('A back on Redis', () => a.throttle.sharing === 'up');
    await redis.pause();
    try {
      await a.throttle.recordFailure(fay, WRONG_PASSWORDS[1] ?? '');
      await until('A sees Redis down again', () => a.throttle.sharing === 'down');
    } finally {
      redis.resume();
    }
    await until('A back on Redis again', () => a.throttle.sharing === 'up');
    await eventually('A counting the wrong password once', async () => (await a.throttle.check(fay)).delayMs === 100);
    const second = await a.throttle.recordFailure(fay, WRONG_PASSWORDS[2] ?? '');
    assert.equal(second.refused, false, 'two distinct wrong passwords, with a limit of three');
    assert.equal(second.delayMs, 200);
    assert.equal((await a.throttle.check(fay)).refused, false);
    assert.equal((await a.throttle.recordFailure(fay, WRONG_PASSWORDS[3] ?? '')).refused, true, 'the third distinct wrong password reaches the limit');
  }));

  test('Redis up, refusing writes, hung, down, and back: wrong passwords guessed after a check each are refused from the limit on', withOwnRedis(async (redis) => {
    const a = await instance('t19:', undefined, redis.url, { failuresPerUser: 3 });
    const hal = from('hal', '192.0.2.78');
    const raw = createClient({ url: redis.url });
    raw.on('error', () => undefined);
    await raw.connect();
    let guessed = 0;
    const guess = async (): Promise<boolean> => {
      if ((await a.throttle.check(hal)).refused) return false;
      await a.throttle.recordFailure(hal, WRONG_PASSWORDS[guessed++] ?? '');
      return true;
    };
    try {
      assert.ok(await guess(), 'up');
      try {
        await raw.sendCommand(['CONFIG', 'SET', 'maxmemory', '1']);
        assert.ok(await guess(), 'Redis refusing writes');
        assert.equal(a.throttle.sharing, 'read-only');
      } finally {
        await raw.sendCommand(['CONFIG', 'SET', 'maxmemory', '0']);
      }
      await redis.pause();
      try {
        assert.ok(await guess(), 'Redis hung: sent, no answer in time');
        await until('A sees Redis down', () => a.throttle.sharing === 'down');
        assert.equal(await guess(), false, 'Redis down: the local counters hold three');
      } finally {
        redis.resume();
      }
      await until('A back on Redis', () => a.throttle.sharing === 'up');
      for (let i = 0; i < 5; i++) assert.equal(await guess(), false, 'back on Redis: still refused');
      assert.equal(guessed, 3);
      await eventually('Redis holding the three', async () => String(await raw.sendCommand(['HGET', 't19:u:hal', 'n'])) === '3');
    } finally {
      raw.destroy();
    }
  }));

  test('Redis refusing writes, then taking them: a failure missed meanwhile that Redis holds since, through another instance with the same fingerprint key, stops counting apart at its retry', withOwnRedis(async (redis) => {
    const key = new Uint8Array(32).fill(5);
    const a = await instance('t15:', key, redis.url);
    const b = await instance('t15:', key, redis.url);
    const raw = createClient({ url: redis.url });
    raw.on('error', () => undefined);
    await raw.connect();
    try {
      await raw.sendCommand(['CONFIG', 'SET', 'maxmemory', '1']);
      await a.throttle.recordFailure(from('dora', '192.0.2.72'), 'stale-password');
      assert.equal(a.throttle.sharing, 'read-only');
    } finally {
      await raw.sendCommand(['CONFIG', 'SET', 'maxmemory', '0']);
      raw.destroy();
    }
    assert.equal((await b.throttle.recordFailure(from('dora', '192.0.2.73'), 'stale-password')).delayMs, 100, 'B writes it to Redis');
    // A cannot know yet that Redis holds the one it counted apart; its retry tells.
    assert.equal((await a.throttle.recordFailure(from('dora', '192.0.2.72'), 'stale-password')).delayMs, 100, 'Redis held it already: one failure');
    assert.equal((await a.throttle.check(from('dora', '192.0.2.72'))).delayMs, 100);
  }));

  test('Redis hung (SIGSTOP): every call returns within its deadline on local counters; resumed: shared again', withOwnRedis(async (redis) => {
    const a = await instance('t5:', undefined, redis.url);
    await a.throttle.recordFailure(from('gina', '192.0.2.12'), WRONG_PASSWORDS[0] ?? '');
    await redis.pause();
    try {
      const started = Date.now();
      const first = await a.throttle.recordFailure(from('gina', '192.0.2.12'), WRONG_PASSWORDS[1] ?? '');
      const firstMs = Date.now() - started;
      // Redis never answers: any bound shows the call did not wait for it (a bound near
      // TIMEOUT_MS failed on a loaded machine).
      assert.ok(firstMs < 2_000, `the first call after the hang took ${firstMs} ms (its deadline: ${TIMEOUT_MS} ms)`);
      assert.equal(first.delayMs, 200, 'the local counters had both failures');
      const more = Date.now();
      for (let i = 0; i < 20; i++) await a.throttle.check(from('gina', '192.0.2.12'));
      // Each would take TIMEOUT_MS if it waited: 8 s in all.
      assert.ok(Date.now() - more < 2_000, `once Redis is known down, calls do not wait for it at all (20 took ${Date.now() - more} ms)`);
      assert.equal(a.throttle.sharing, 'down');
      // Reconnection attempts time out too, and stay quiet.
      await new Promise((r) => setTimeout(r, 3 * (RETRY_MS + TIMEOUT_MS)));
      assert.deepEqual(redisStateLines(a.lines), ['30 up', '40 down']);
    } finally {
      redis.resume();
    }
    await until('A back on Redis', () => a.throttle.sharing === 'up');
    assert.deepEqual(a.states, ['up', 'down', 'up']);
  }));

  test('Redis slow (a new connection\'s first PING answered in time, everything else after timeout_ms, within the connection deadline): the state does not flap up and down, and its lines stay few', withOwnRedis(async (redis) => {
    const proxy = await slowProxy(redis.port, 1.5 * TIMEOUT_MS);
    try {
      const a = await instance('t8:', undefined, proxy.url);
      proxy.slow = true;
      const end = Date.now() + 4_000;
      for (let n = 0; Date.now() < end; n++) {
        await a.throttle.check(from(`slow${n}`, '192.0.2.60'));
        await a.throttle.recordFailure(from(`slow${n}`, '192.0.2.60'), WRONG_PASSWORDS[0] ?? '');
        await new Promise((r) => setTimeout(r, 20));
      }
      // Reconnections were tried (every 0.4 s after the flap, each then waiting 0.6 s for its
      // handshake), and one PING answered in time did not make Redis up.
      assert.ok(proxy.inTime >= 1, `reconnections whose first PING was answered in time: ${proxy.inTime}`);
      assert.deepEqual(redisStateLines(a.lines), ['30 up', '40 down']);
      assert.deepEqual(a.states, ['up', 'down']);
      proxy.slow = false;
      await until('A back on Redis once it is fast again', () => a.throttle.sharing === 'up', 15_000);
    } finally {
      await proxy.close();
    }
  }));

  test('Redis going down and coming back again and again: every change reaches the state callback, the first three are logged, the rest wait for the minute\'s line', withOwnRedis(async (redis) => {
    const a = await instance('t9:', undefined, redis.url);
    for (let i = 0; i < 3; i++) {
      await redis.stopOnly();
      try {
        await until('A sees Redis down', () => a.throttle.sharing === 'down');
      } finally {
        await redis.startAgain();
      }
      // Each flap in a row doubles the wait before the next attempt: 0.4, 0.8, 1.6 s here.
      await until('A back on Redis', () => a.throttle.sharing === 'up', 10_000);
    }
    assert.deepEqual(a.states, ['up', 'down', 'up', 'down', 'up', 'down', 'up']);
    assert.deepEqual(redisStateLines(a.lines), ['30 up', '40 down', '30 up']);
  }));
  test('a refusal Redis\'s count and a failure counted apart started together runs its time after the replay, even once Redis\'s failures have expired', withOwnRedis(async (redis) => {
    // Redis's two failures expire (window 1.5 s) during the refusal; the replay then writes A's
    // one into a fresh key, and 1 < 3 is no sign of a password counted twice.
    const overrides = { failuresPerUser: 3, failuresPerAddress: 100, failureWindowMs: 1_500, refusalMs: 20_000 };
    const a = await instance('t20:', undefined, redis.url, overrides);
    const b = await instance('t20:', undefined, redis.url, overrides);
    const raw = createClient({ url: redis.url });
    raw.on('error', () => undefined);
    await raw.connect();
    try {
      await b.throttle.recordFailure(from('eve', '192.0.2.1'), WRONG_PASSWORDS[0] ?? '');
      await b.throttle.recordFailure(from('eve', '192.0.2.2'), WRONG_PASSWORDS[1] ?? '');
      await raw.sendCommand(['CONFIG', 'SET', 'maxmemory', '1']);
      const third = await a.throttle.recordFailure(from('eve', '192.0.2.3'), WRONG_PASSWORDS[2] ?? '');
      assert.equal(third.refused, true, 'Redis\'s two and A\'s one reach the limit');
      await new Promise((r) => setTimeout(r, 1_800));
    } finally {
      await raw.sendCommand(['CONFIG', 'SET', 'maxmemory', '0']);
    }
    try {
      await until('A up again', () => a.throttle.sharing === 'up');
      for (let i = 0; Number(await raw.sendCommand(['HGET', 't20:u:eve', 'n'])) !== 1; i++) {
        assert.ok(i < 250, 'A\'s failure was not written to Redis');
        await new Promise((r) => setTimeout(r, 20));
      }
      const check = await a.throttle.check(from('eve', '192.0.2.4'));
      assert.equal(check.refused, true, `the refusal ended after ${overrides.failureWindowMs + 300} ms of its 20 s`);
    } finally {
      raw.destroy();
    }
  }));
});

describe('Redis set up otherwise: without HELLO, with an ACL, and what its errors show', () => {
  const PASSWORD = 'Redis-secret-pw-5c1e';

  test('a Redis without HELLO (before 6, or HELLO renamed away) that asks for a password: the throttle connects (RESP2, AUTH) and shares counters; no log line holds the password', async () => {
    const old = await startRedis({ args: ['--requirepass', PASSWORD, '--rename-command', 'HELLO', ''] });
    try {
      const redisConfig = { url: old.url, password: PASSWORD, keyPrefix: 'h1:', timeoutMs: TIMEOUT_MS };
      const a = await instance('h1:', undefined, old.url, { redis: redisConfig });
      const b = await instance('h1:', undefined, old.url, { redis: redisConfig });
      for (let i = 0; i < 5; i++) await a.throttle.recordFailure(from('hilda', '192.0.2.90'), WRONG_PASSWORDS[i] ?? '');
      assert.equal((await b.throttle.check(from('hilda', '192.0.2.91'))).refusedBy, 'user', 'B sees A\'s five through Redis');
      assert.deepEqual(redisStateLines(a.lines), ['30 up']);
      assert.ok(!JSON.stringify(a.lines).includes(PASSWORD));
    } finally {
      await old.stop();
    }
  });

  test('Redis answering the login with an error that quotes its arguments (AUTH renamed away): the state line gives the reason without the password, also a long one Redis cut short', async () => {
    const long = `${PASSWORD}-${'x'.repeat(150)}`;
    const noAuth = await startRedis({ args: ['--rename-command', 'AUTH', ''] });
    try {
      for (const password of [PASSWORD, long]) {
        const lines: Record<string, unknown>[] = [];
        const log = pino({ level: 'debug' }, { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
        const config: ThrottleConfig = { enabled: true, baseDelayMs: 100, maxDelayMs: 1_600, failuresPerUser: 5, failuresPerAddress: 8, failureWindowMs: 60_000, refusalMs: 30_000, maxTrackedSubjects: 100, redis: { url: noAuth.url, password, keyPrefix: 'h2:', timeoutMs: TIMEOUT_MS } };
        const throttle = Throttle.fromConfig(config, log, { retryIntervalMs: RETRY_MS });
        open.set(throttle, noAuth.url);
        await throttle.ready();
        assert.equal(throttle.sharing, 'down');
        const warning = lines.find((l) => l['event'] === 'throttle.redis_state' && l['state'] === 'down');
        assert.match(String(warning?.['reason']), /unknown command 'AUTH'/);
        const text = JSON.stringify(lines);
        assert.ok(!text.includes(PASSWORD.slice(0, 12)), `the password, or its start, in the log: ${text}`);
        await throttle.close();
      }
    } finally {
      await noAuth.stop();
    }
  });

  test('Redis answering every call with an error (an ACL without a command the scripts call): nothing shared, so read-only, not up, and local counters answer; once the ACL has it, up again by the probe, and the failures counted meanwhile are in Redis', async () => {
    const acl = await startRedis({ args: ['--user', 'mf', 'on', `>${PASSWORD}`, '~a1:*', '+evalsha', '+eval', '+ping', '+hmget', '+pexpire', '+time', '+del'] });
    const raw = createClient({ url: acl.url });
    raw.on('error', () => undefined);
    try {
      await raw.connect();
      const redisConfig = { url: acl.url, username: 'mf', password: PASSWORD, keyPrefix: 'a1:', timeoutMs: TIMEOUT_MS };
      const a = await instance('a1:', undefined, acl.url, { redis: redisConfig });
      const b = await instance('a1:', undefined, acl.url, { redis: redisConfig });
      for (let i = 0; i < 5; i++) await a.throttle.recordFailure(from('abe', '192.0.2.95'), WRONG_PASSWORDS[i] ?? '');
      assert.equal(a.throttle.sharing, 'read-only', 'Redis refused every failure: nothing is shared');
      assert.deepEqual(a.states, ['up', 'read-only']);
      assert.deepEqual(redisStateLines(a.lines), ['30 up', '40 read-only']);
      assert.equal((await a.throttle.check(from('abe', '192.0.2.96'))).refusedBy, 'user', 'A\'s own five');
      assert.equal((await b.throttle.check(from('abe', '192.0.2.96'))).refused, false, 'B has not seen them');
      // Several probes, each refused: the state stays, and nothing more is logged.
      await new Promise((r) => setTimeout(r, 4 * RETRY_MS));
      assert.equal(a.throttle.sharing, 'read-only');
      assert.equal(a.lines.filter((l) => l['event'] === 'throttle.redis_refused').length, 0);
      await raw.sendCommand(['ACL', 'SETUSER', 'mf', '+hset']);
      await until('A up again without a failed login', () => a.throttle.sharing === 'up');
      assert.deepEqual(a.states, ['up', 'read-only', 'up']);
      await eventually('B sees the five A counted, written to Redis once it took them', async () => (await b.throttle.check(from('abe', '192.0.2.97'))).refused);
    } finally {
      raw.destroy();
      await acl.stop();
    }
  });

  test('a success while Redis is hung or refuses writes forgets the failures from its own address in Redis too, once it takes writes again: one typo later is not refused', withOwnRedis(async (redis) => {
    const a = await instance('s1:', undefined, redis.url);
    const b = await instance('s1:', undefined, redis.url);
    const raw = createClient({ url: redis.url });
    raw.on('error', () => undefined);
    await raw.connect();
    try {
      const sue = from('sue', '192.0.2.85');
      for (let i = 0; i < 4; i++) await a.throttle.recordFailure(sue, WRONG_PASSWORDS[i] ?? '');
      await redis.pause();
      try {
        await a.throttle.check(sue);
        await until('A sees Redis down', () => a.throttle.sharing === 'down');
        await a.throttle.recordSuccess(sue);
      } finally {
        redis.resume();
      }
      await until('A back on Redis', () => a.throttle.sharing === 'up');
      await eventually('Redis no longer holding sue\'s count', async () => Number(await raw.sendCommand(['EXISTS', 's1:u:sue'])) === 0);
      assert.equal((await b.throttle.check(from('sue', '192.0.2.86'))).delayMs, 0, 'B sees sue\'s failures from her address forgotten');
      const typo = await a.throttle.recordFailure(from('sue', '192.0.2.86'), WRONG_PASSWORDS[9] ?? '');
      assert.equal(typo.refused, false, 'one typo after the success');
      assert.equal(typo.delayMs, 100);

      const rob = from('rob', '192.0.2.87');
      for (let i = 0; i < 4; i++) await a.throttle.recordFailure(rob, WRONG_PASSWORDS[i] ?? '');
      await raw.sendCommand(['REPLICAOF', '127.0.0.1', '1']);
      try {
        await a.throttle.recordSuccess(rob);
        assert.equal(a.throttle.sharing, 'read-only', 'the forgetting refused (READONLY), as a refused write');
        assert.deepEqual(a.states, ['up', 'down', 'up', 'read-only']);
        assert.equal((await a.throttle.check(from('rob', '192.0.2.88'))).delayMs, 0, 'Redis\'s count, from before the success, is not rob\'s');
        assert.equal((await a.throttle.recordFailure(from('rob', '192.0.2.88'), WRONG_PASSWORDS[9] ?? '')).delayMs, 100, 'nor with a failure Redis refused to write');
      } finally {
        await raw.sendCommand(['REPLICAOF', 'NO', 'ONE']);
      }
      await until('A up again', () => a.throttle.sharing === 'up');
      await eventually('Redis holding rob\'s one failure since the success, not the four before', async () => String(await raw.sendCommand(['HGET', 's1:u:rob', 'n'])) === '1');
      const again = await a.throttle.recordFailure(from('rob', '192.0.2.88'), WRONG_PASSWORDS[10] ?? '');
      assert.equal(again.refused, false);
      assert.equal(again.delayMs, 200);
    } finally {
      raw.destroy();
    }
  }));
});
