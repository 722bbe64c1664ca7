/**
 * The throttle's Redis named by Redis Sentinel (throttle.redis.sentinel): a primary, its replica
 * and one sentinel (quorum 1) on loopback ports. Two mailfront instances share counters through
 * the primary the sentinel names; after a failover (SENTINEL FAILOVER) both write to the new
 * primary within seconds, and mailfront_throttle_redis_up is 1 again, also when the primary is
 * killed (the sentinel names the dead one until its failover); with no sentinel answering
 * at start an instance counts alone, as with Redis down, until one does. Against a scripted
 * sentinel (failure injection: it names what the case says, and refuses SUBSCRIBE, so that no
 * +switch-master is heard): a replica named is not used (ROLE), and a primary turned replica
 * under a live connection (READONLY) sends the throttle to the sentinels again. Against a primary,
 * a replica and a sentinel of their own: a primary user without ROLE is told so; a failover is
 * followed within seconds after the sentinel restarted (the listener opened again) and with a
 * sentinel user refused SUBSCRIBE (the sentinels asked every retry interval).
 */
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import type { AddressInfo, Server, Socket } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { createClient } from '@redis/client';
import { pino } from 'pino';
import { Throttle } from '../../src/auth/throttle.js';
import type { LoginAttempt, RedisState } from '../../src/auth/throttle.js';
import type { ThrottleConfig, ThrottleRedisConfig } from '../../src/auth/throttle-config.js';
import { LineClient, startDovecot, startRedis, startSentinel, startSlapd } from './servers/index.js';
import type { Dovecot, Redis, Sentinel, Slapd } from './servers/index.js';
import { registerPasswords, startFront, waitForLog } from './front.js';
import type { Front } from './front.js';

const PASSWORD = 'Sentinel-pw-5d1a';
const MASTER = 'mf-throttle';
const USERS = ['sam', 'sue', 'sid', 'sol', 'sky'];
const THROTTLE = { enabled: true, base_delay_ms: 0, max_delay_ms: 0, failures_per_user: 4, failures_per_address: 1_000, refusal_ms: 60_000 };
/** A failover, seen from mailfront: the sentinel's own work, then a reconnection (a retry interval, doubled after a flap). */
const FAILOVER_FOLLOWED_MS = 10_000;
/**
 * How long a state the throttle reaches on its own next retry (every 200 ms in the scripted tests)
 * may take before a test gives up: generous, for a CI machine loaded by the rest of the suite (3 s
 * was missed once with other suites running beside it). What is asserted is that it is reached.
 */
const EVENTUALLY_MS = 10_000;

let slapd: Slapd;
let dovecot: Dovecot;
let primary: Redis;
let replica: Redis;
let sentinel: Sentinel;
const fronts: Front[] = [];

const stores = () => ({ alpha: { currentMaster: 's1', slots: { s1: { imapPort: dovecot.imapPort, pop3Port: dovecot.pop3Port } } } });

/** Polls `probe` every 100 ms until it is true, for at most `ms`; false when it never was. */
async function until(probe: () => Promise<boolean>, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  for (;;) {
    if (await probe().catch(() => false)) return true;
    if (Date.now() > deadline) return false;
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Runs one command against a server on 127.0.0.1:`port` with a short-lived client. */
async function command(port: number, args: string[]): Promise<unknown> {
  const client = createClient({ socket: { host: '127.0.0.1', port, reconnectStrategy: false }, RESP: 2 });
  client.on('error', () => undefined);
  await client.connect();
  try {
    return await client.sendCommand(args);
  } finally {
    client.destroy();
  }
}

/** The primary's port as the sentinel names it. */
async function namedPrimaryPort(): Promise<number> {
  const reply = (await command(sentinel.port, ['SENTINEL', 'GET-MASTER-ADDR-BY-NAME', MASTER])) as string[];
  return Number(reply[1]);
}

async function redisUp(front: Front): Promise<string | undefined> {
  const { port } = front.mailfront.httpAddress()!;
  return (await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()).match(/^mailfront_throttle_redis_up .*$/m)?.[0];
}

async function imapLogin(front: Front, user: string, password: string): Promise<string> {
  registerPasswords(password);
  const raw = await LineClient.connect(front.imapTrustedPort);
  try {
    await raw.readLine();
    raw.send(`t1 LOGIN ${user} ${password}`);
    return await raw.readLine(10_000);
  } finally {
    raw.close();
  }
}

/**
 * The throttle's deadline for a Redis call here. A call past it is Redis down: the instance counts
 * alone until its next retry, and two instances' counters are not shared. 200 ms was missed on a
 * machine running two suites at once (an instance let a fifth login through), so it is well above
 * what a loaded loopback takes; no case here waits on a call that never answers.
 */
const REDIS_TIMEOUT_MS = 2_000;

async function startInstance(): Promise<Front> {
  const throttle = { ...THROTTLE, redis: { sentinel: { master_name: MASTER, nodes: [sentinel.node] }, timeout_ms: REDIS_TIMEOUT_MS } };
  const front = await startFront({ slapd, stores: stores(), throttle, session: { auth_failure_delay_ms: 50 } });
  fronts.push(front);
  return front;
}

/** Waits until `redis` is a replica in sync with its primary and the sentinel (`watching`) knows it as one it may promote. */
async function replicaReady(redis: Redis, watching: Sentinel = sentinel): Promise<void> {
  const ready = await until(async () => {
    const info = String(await command(redis.port, ['INFO', 'replication']));
    const replicas = (await command(watching.port, ['SENTINEL', 'REPLICAS', MASTER])) as string[][];
    const known = replicas.some((fields) => fields.includes(String(redis.port)) && /^slave$/.test(fields[fields.indexOf('flags') + 1] ?? ''));
    return /role:slave/.test(info) && /master_link_status:up/.test(info) && known;
  }, 15_000);
  assert.ok(ready, `${redis.port} is not a replica in sync, or the sentinel does not know it: ${watching.readLog()}`);
}

/** A scripted sentinel: answers GET-MASTER-ADDR-BY-NAME with `named` (null: no such master), refuses SUBSCRIBE, says OK to the rest. */
interface FakeSentinel {
  readonly port: number;
  named: Redis | null;
  close(): Promise<void>;
}

async function startFakeSentinel(): Promise<FakeSentinel> {
  const sockets = new Set<Socket>();
  const fake = { named: null as Redis | null };
  const bulk = (s: string): string => `$${Buffer.byteLength(s)}\r\n${s}\r\n`;
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    let pending = '';
    socket.on('data', (chunk: Buffer) => {
      pending += chunk.toString('latin1');
      // RESP arrays of bulk strings, as clients send commands; answered once whole.
      for (;;) {
        const m = /^\*(\d+)\r\n/.exec(pending);
        if (m === null) return;
        let at = m[0].length;
        const args: string[] = [];
        for (let i = 0; i < Number(m[1]); i++) {
          const len = /^\$(\d+)\r\n/.exec(pending.slice(at));
          if (len === null || pending.length < at + len[0].length + Number(len[1]) + 2) return;
          args.push(pending.slice(at + len[0].length, at + len[0].length + Number(len[1])));
          at += len[0].length + Number(len[1]) + 2;
        }
        pending = pending.slice(at);
        const name = args.map((a) => a.toUpperCase());
        if (name[0] === 'SENTINEL' && name[1] === 'GET-MASTER-ADDR-BY-NAME') socket.write(fake.named === null ? '*-1\r\n' : `*2\r\n${bulk(fake.named.host)}${bulk(String(fake.named.port))}`);
        else if (name[0] === 'SUBSCRIBE') socket.write('-ERR unknown command (scripted sentinel)\r\n');
        else socket.write('+OK\r\n');
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return Object.assign(fake, {
    port: (server.address() as AddressInfo).port,
    close: async (): Promise<void> => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  });
}

/**
 * A primary `a`, its replica `b` and a sentinel `s` of their own, started in the calling
 * describe's before() and stopped in its after(), and what its cases use: a throttle on `s`, the
 * roles `s` names, a failover. Each describe that fails over has its own: a sentinel takes a
 * failover of a master only 4 s after its last, and knows a demoted primary as a replica it may
 * promote only after its next look at it (INFO every 10 s), so a second failover on one sentinel
 * waits some 13 s for it.
 */
function ownSentinel() {
  const own = { a: undefined as unknown as Redis, b: undefined as unknown as Redis, s: undefined as unknown as Sentinel };
  const open: Throttle[] = [];
  before(async () => {
    own.a = await startRedis();
    own.b = await startRedis({ replicaOf: own.a });
    own.s = await startSentinel({ masterName: MASTER, primary: own.a, failoverTimeoutMs: 2_000 });
    await replicaReady(own.b, own.s);
  });
  after(async () => {
    await Promise.all(open.map((t) => t.close()));
    await Promise.all([own.s?.stop(), own.b?.stop(), own.a?.stop()]);
  });

  /** A throttle on `s` (retry interval 1 s, the default), its log lines, and the primary it is up on (from its state lines). */
  function throttleOn(keyPrefix: string, extra: Partial<ThrottleRedisConfig> = {}, sentinelUser: { username?: string; password?: string } = {}) {
    const config: ThrottleConfig = {
      enabled: true,
      baseDelayMs: 0,
      maxDelayMs: 0,
      failuresPerUser: 1_000,
      failuresPerAddress: 100_000,
      failureWindowMs: 600_000,
      refusalMs: 30_000,
      maxTrackedSubjects: 100_000,
      redis: { sentinel: { masterName: MASTER, nodes: [{ host: '127.0.0.1', port: own.s.port }], ...sentinelUser }, keyPrefix, timeoutMs: REDIS_TIMEOUT_MS, ...extra },
    };
    const lines: Record<string, unknown>[] = [];
    const log = pino({ level: 'debug' }, { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
    const throttle = Throttle.fromConfig(config, log);
    open.push(throttle);
    const upOn = (redis: Redis): boolean => throttle.sharing === 'up' && lines.filter((l) => l['event'] === 'throttle.redis_state').at(-1)?.['primary'] === `127.0.0.1:${redis.port}`;
    return { throttle, lines, upOn };
  }

  /** The primary `s` names now, and the other. */
  async function roles(): Promise<{ primary: Redis; replica: Redis }> {
    const port = Number(((await command(own.s.port, ['SENTINEL', 'GET-MASTER-ADDR-BY-NAME', MASTER])) as string[])[1]);
    return port === own.a.port ? { primary: own.a, replica: own.b } : { primary: own.b, replica: own.a };
  }

  /** SENTINEL FAILOVER once the sentinel takes it (NOGOODSLAVE while it settles its view of the replica; 4 s after the last failover of the same master); when it did (Date.now()). */
  async function failover(): Promise<number> {
    const { replica } = await roles();
    await replicaReady(replica, own.s);
    assert.ok(await until(async () => (await command(own.s.port, ['SENTINEL', 'FAILOVER', MASTER])) === 'OK', 15_000), 'SENTINEL FAILOVER taken');
    return Date.now();
  }

  return Object.assign(own, { throttleOn, roles, failover });
}

// The four groups run at once: each has servers of its own (the first a Redis pair, a sentinel,
// slapd and Dovecot for its mailfront instances; the others a Redis pair and a sentinel, or a
// scripted one), and they share only the master's name, which each sentinel knows on its own.
// A group's cases run one after another (concurrency: false; a suite's cases would inherit true):
// they fail over its sentinel in turn.
describe('the throttle\'s Redis named by Redis Sentinel', { concurrency: true }, () => {
  describe('throttle counters shared through the primary Redis Sentinel names', { concurrency: false }, () => {
    let one: Front;
    let two: Front;
    before(async () => {
      slapd = await startSlapd({ users: USERS.map((uid) => ({ uid, password: PASSWORD, store: 'alpha' })) });
      dovecot = await startDovecot({ name: 'sentinel', users: USERS.map((name) => ({ name, password: PASSWORD })) });
      primary = await startRedis();
      replica = await startRedis({ replicaOf: primary });
      // A failover-timeout of 2 s: the sentinel fails the same master over again 4 s after the last.
      sentinel = await startSentinel({ masterName: MASTER, primary, failoverTimeoutMs: 2_000 });
      await replicaReady(replica);
      one = await startInstance();
      two = await startInstance();
    });
    after(async () => {
      await Promise.all(fronts.map((f) => f.stop()));
      await Promise.all([slapd?.stop(), dovecot?.stop(), sentinel?.stop(), replica?.stop(), primary?.stop()]);
    });

    test('two instances share counters through the primary the sentinel names', async () => {
      for (const front of [one, two]) assert.ok(await until(async () => (await redisUp(front)) === 'mailfront_throttle_redis_up 1', 5_000), `throttle Redis up: ${await redisUp(front)}`);
      for (const i of [1, 2]) await imapLogin(one, 'sam', `sam-wrong-${i}-8e1f`);
      for (const i of [3, 4]) await imapLogin(two, 'sam', `sam-wrong-${i}-8e1f`);
      assert.match(await imapLogin(one, 'sam', PASSWORD), /^t1 NO \[LIMIT\] /);
      assert.match(await imapLogin(two, 'sam', PASSWORD), /^t1 NO \[LIMIT\] /);
      assert.equal(await command(primary.port, ['HGET', 'mailfront:throttle:u:sam', 'n']), '4', 'the failures are in the primary');
      const line = await waitForLog(one, (l) => l['event'] === 'throttle.redis_state' && l['state'] === 'up');
      assert.equal(line['sentinel'], MASTER);
      assert.equal(line['primary'], `127.0.0.1:${primary.port}`);
    });

    test('SENTINEL FAILOVER: within seconds both instances share counters on the new primary, and mailfront_throttle_redis_up is 1 again', async () => {
      const started = Date.now();
      // The sentinel may still be settling its view of the replica: NOGOODSLAVE until it has.
      assert.ok(await until(async () => (await command(sentinel.port, ['SENTINEL', 'FAILOVER', MASTER])) === 'OK', 10_000), 'SENTINEL FAILOVER taken');
      assert.ok(await until(async () => (await namedPrimaryPort()) === replica.port, 10_000), 'the sentinel names the replica as the primary');
      for (const front of [one, two]) {
        assert.ok(
          await until(async () => front.logs.some((l) => l['event'] === 'throttle.redis_state' && l['state'] === 'up' && l['primary'] === `127.0.0.1:${replica.port}`) && (await redisUp(front)) === 'mailfront_throttle_redis_up 1', FAILOVER_FOLLOWED_MS),
          `the instance writes to the new primary: ${JSON.stringify(front.logs.filter((l) => l['event'] === 'throttle.redis_state'))}`,
        );
      }
      const followedMs = Date.now() - started;
      assert.ok(followedMs < FAILOVER_FOLLOWED_MS, `followed in ${followedMs} ms`);
      for (const i of [1, 2]) await imapLogin(two, 'sue', `sue-wrong-${i}-2b7c`);
      for (const i of [3, 4]) await imapLogin(one, 'sue', `sue-wrong-${i}-2b7c`);
      assert.match(await imapLogin(two, 'sue', PASSWORD), /^t1 NO \[LIMIT\] /);
      assert.match(await imapLogin(one, 'sue', PASSWORD), /^t1 NO \[LIMIT\] /);
      assert.equal(await command(replica.port, ['HGET', 'mailfront:throttle:u:sue', 'n']), '4', 'the failures are in the new primary');
      assert.equal(((await command(replica.port, ['ROLE'])) as unknown[])[0], 'master');
    });

    test('the primary killed: the sentinel names the dead one until its failover; within seconds both instances share counters on the new primary', async () => {
      // The old primary as the new one's replica, in sync: the sentinel would make it one at its
      // next look (INFO every 10 s), told at once here.
      await command(primary.port, ['REPLICAOF', '127.0.0.1', String(replica.port)]);
      await replicaReady(primary);
      const killed = replica;
      await killed.stopOnly();
      try {
        // Its down-after-milliseconds (1 s), then the failover.
        assert.ok(await until(async () => (await namedPrimaryPort()) === primary.port, 10_000), 'the sentinel names the old primary again');
        const started = Date.now();
        // The state lines are few by now (three a minute while it changes): the gauge says it.
        for (const front of [one, two]) assert.ok(await until(async () => (await redisUp(front)) === 'mailfront_throttle_redis_up 1', FAILOVER_FOLLOWED_MS), `throttle Redis up: ${await redisUp(front)}`);
        const followedMs = Date.now() - started;
        assert.ok(followedMs < FAILOVER_FOLLOWED_MS, `followed in ${followedMs} ms`);
        for (const i of [1, 2]) await imapLogin(one, 'sky', `sky-wrong-${i}-0f9b`);
        for (const i of [3, 4]) await imapLogin(two, 'sky', `sky-wrong-${i}-0f9b`);
        assert.match(await imapLogin(one, 'sky', PASSWORD), /^t1 NO \[LIMIT\] /);
        assert.match(await imapLogin(two, 'sky', PASSWORD), /^t1 NO \[LIMIT\] /);
        assert.equal(await command(primary.port, ['HGET', 'mailfront:throttle:u:sky', 'n']), '4', 'the failures are in the new primary');
      } finally {
        // Back as a replica of the primary it was started with, the new primary again.
        await killed.startAgain();
      }
    });

    test('no sentinel answering at start: local counters, as Redis down (mailfront_throttle_redis_up 0); shared once one answers', async () => {
      await sentinel.stopOnly();
      let alone: Front;
      try {
        alone = await startInstance();
        const down = await waitForLog(alone, (l) => l['event'] === 'throttle.redis_state' && l['state'] === 'down', 5_000);
        assert.match(String(down['reason']), new RegExp(`no sentinel named the primary of ${MASTER} \\(${sentinel.node}: `));
        assert.equal(await redisUp(alone), 'mailfront_throttle_redis_up 0');
        // Counted here alone: refused here at the limit, and the primary has none of them.
        for (const i of [1, 2, 3, 4]) await imapLogin(alone, 'sid', `sid-wrong-${i}-4a0e`);
        assert.match(await imapLogin(alone, 'sid', PASSWORD), /^t1 NO \[LIMIT\] /);
        assert.match(await imapLogin(one, 'sid', PASSWORD), /^t1 OK /, 'the other instances never saw them');
      } finally {
        await sentinel.startAgain();
      }
      assert.ok(await until(async () => (await redisUp(alone)) === 'mailfront_throttle_redis_up 1', 5_000), 'up once the sentinel answers');
      for (const i of [1, 2, 3, 4]) await imapLogin(alone, 'sol', `sol-wrong-${i}-6c3d`);
      assert.match(await imapLogin(two, 'sol', PASSWORD), /^t1 NO \[LIMIT\] /);
    });
  });

  describe('the primary a scripted sentinel names', { concurrency: false }, () => {
    let a: Redis;
    let b: Redis;
    let fake: FakeSentinel;
    const open: Throttle[] = [];
    before(async () => {
      a = await startRedis();
      b = await startRedis({ replicaOf: a });
      fake = await startFakeSentinel();
    });
    after(async () => {
      await Promise.all(open.map((t) => t.close()));
      await fake?.close();
      await Promise.all([a?.stop(), b?.stop()]);
    });

    test('a replica named is not used (ROLE); a primary turned replica under a live connection (READONLY) sends the throttle to the sentinels again, and the failure it refused is written to the new primary', async () => {
      const config: ThrottleConfig = {
        enabled: true,
        baseDelayMs: 0,
        maxDelayMs: 0,
        failuresPerUser: 3,
        failuresPerAddress: 1_000,
        failureWindowMs: 60_000,
        refusalMs: 30_000,
        maxTrackedSubjects: 1_000,
        redis: { sentinel: { masterName: MASTER, nodes: [{ host: '127.0.0.1', port: fake.port }] }, keyPrefix: 'fake:', timeoutMs: REDIS_TIMEOUT_MS },
      };
      const lines: Record<string, unknown>[] = [];
      const states: RedisState[] = [];
      const log = pino({ level: 'debug' }, { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
      const throttle = Throttle.fromConfig(config, log, { retryIntervalMs: 200, onRedisState: (state) => states.push(state) });
      open.push(throttle);
      const from: LoginAttempt = { user: 'kit', address: '192.0.2.7', trusted: false };

      fake.named = null;
      await throttle.ready();
      assert.equal(throttle.sharing, 'down');
      assert.match(String(lines.find((l) => l['state'] === 'down')?.['reason']), new RegExp(`no sentinel named the primary of ${MASTER} \\(127\\.0\\.0\\.1:${fake.port}: knows no master named ${MASTER}\\)`));

      fake.named = b;
      // A retry that fails another way while down is not logged again: b's own count of ROLE says it was asked.
      assert.ok(await until(async () => /cmdstat_role:calls=[1-9]/.test(String(await command(b.port, ['INFO', 'commandstats']))), EVENTUALLY_MS), 'b asked for its role');
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(throttle.sharing, 'down', 'a replica is not used');
      assert.deepEqual(states, ['down']);

      fake.named = a;
      assert.ok(await until(() => Promise.resolve(throttle.sharing === 'up'), EVENTUALLY_MS), 'up on the primary');
      await throttle.recordFailure(from, 'Wrong-1');
      assert.equal(await command(a.port, ['HGET', 'fake:u:kit', 'n']), '1');
      assert.equal(await command(a.port, ['WAIT', '1', '5000']), 1, 'b has it too');

      // A failover the throttle hears nothing of: b the primary, a its replica; connections to a stay open.
      await command(b.port, ['REPLICAOF', 'NO', 'ONE']);
      await command(a.port, ['REPLICAOF', '127.0.0.1', String(b.port)]);
      assert.ok(await until(async () => /master_link_status:up/.test(String(await command(a.port, ['INFO', 'replication']))), 10_000), 'a in sync with b');
      // The sentinel names a still (the instance asks it every retry interval without a listener): READONLY alone tells.
      assert.equal(throttle.sharing, 'up', 'nothing said so yet');
      await throttle.recordFailure(from, 'Wrong-2');
      assert.notEqual(throttle.sharing, 'up', 'READONLY: the sentinels are asked again');
      fake.named = b;
      assert.ok(await until(() => Promise.resolve(throttle.sharing === 'up'), EVENTUALLY_MS), 'up on the new primary');
      // The failure a refused is written to b once it takes writes, with the one b has from a.
      assert.ok(await until(async () => (await command(b.port, ['HGET', 'fake:u:kit', 'n'])) === '2', EVENTUALLY_MS), 'both failures in the new primary');
      await throttle.recordFailure(from, 'Wrong-3');
      assert.equal((await throttle.check(from)).refused, true);
      assert.equal(await command(b.port, ['HGET', 'fake:u:kit', 'n']), '3');
      assert.deepEqual(
        lines.filter((l) => l['event'] === 'throttle.redis_state').map((l) => [l['state'], l['primary']]),
        [
          ['down', undefined],
          ['up', `127.0.0.1:${a.port}`],
          ['down', `127.0.0.1:${a.port}`],
        ],
        'the state lines (the third change waits: three lines a minute while it changes)',
      );
      assert.deepEqual(states, ['down', 'up', 'down', 'up']);
    });
  });

  describe('following a failover without the +switch-master listener, and the failures written around it', { concurrency: false }, () => {
    const own = ownSentinel();

    test('a primary user without ROLE: throttle.redis_command_refused names ROLE and the ACL with +role, not only "unreachable"', async () => {
      for (const redis of [own.a, own.b]) await command(redis.port, ['ACL', 'SETUSER', 'norole', 'on', '>No-role-pw-1', '~*', '-@all', '+evalsha', '+eval', '+time', '+hmget', '+hset', '+pexpire', '+del', '+hlen', '+hgetall', '+hdel', '+hget', '+ping']);
      const { throttle, lines } = own.throttleOn('norole:', { username: 'norole', password: 'No-role-pw-1' });
      await throttle.ready();
      assert.equal(throttle.sharing, 'down', 'a primary not proven one is not used');
      const refused = lines.filter((l) => l['event'] === 'throttle.redis_command_refused');
      assert.equal(refused.length, 1, JSON.stringify(lines));
      assert.equal(refused[0]?.['command'], 'ROLE');
      assert.match(String(refused[0]?.['acl']), / \+role$/);
      assert.match(String(refused[0]?.['reason']), /NOPERM/);
      await throttle.close();
    });

    test('the sentinel restarted (the listener lost), then SENTINEL FAILOVER: followed within 4 s', async () => {
      const { throttle, upOn } = own.throttleOn('restart:');
      await throttle.ready();
      const { primary, replica } = await own.roles();
      assert.ok(upOn(primary));
      await own.s.stopOnly();
      await own.s.startAgain();
      await replicaReady(replica, own.s);
      const started = await own.failover();
      // Before, nothing listened any more: followed only when the sentinel closed the old primary's connections, about 11 s.
      assert.ok(await until(() => Promise.resolve(upOn(replica)), 8_000), 'up on the new primary');
      const followedMs = Date.now() - started;
      assert.ok(followedMs < 4_000, `followed in ${followedMs} ms`);
      await throttle.close();
    });
  });

  describe('following a failover when the sentinel user may not subscribe', { concurrency: false }, () => {
    const own = ownSentinel();

    test('a sentinel user without +subscribe: one warning naming +subscribe &+switch-master; a failover is followed all the same within 8 s', async () => {
      await command(own.s.port, ['ACL', 'SETUSER', 'nosub', 'on', '>No-sub-pw-1', '-@all', '+sentinel|get-master-addr-by-name']);
      const { throttle, lines, upOn } = own.throttleOn('nosub:', {}, { username: 'nosub', password: 'No-sub-pw-1' });
      await throttle.ready();
      const { primary, replica } = await own.roles();
      assert.ok(upOn(primary));
      assert.ok(await until(() => Promise.resolve(lines.some((l) => l['event'] === 'throttle.redis_sentinel_listener')), EVENTUALLY_MS), 'the listener refused is logged');
      const warned = lines.filter((l) => l['event'] === 'throttle.redis_sentinel_listener');
      assert.equal(warned.length, 1);
      assert.equal(warned[0]?.['level'], 40);
      assert.equal(warned[0]?.['state'], 'refused');
      assert.equal(warned[0]?.['acl'], '+subscribe &+switch-master');
      const started = await own.failover();
      assert.ok(await until(() => Promise.resolve(upOn(replica)), 10_000), 'up on the new primary');
      const followedMs = Date.now() - started;
      // About 3 s here: the sentinel's own second, a retry interval of asking, then one of
      // reconnecting (before: about 11 s). Two suites at once on two cores made it 5.5 s.
      assert.ok(followedMs < 8_000, `followed in ${followedMs} ms`);
      assert.equal(lines.filter((l) => l['event'] === 'throttle.redis_sentinel_listener').length, 1, 'logged once');
      await throttle.close();
    });
  });
});
