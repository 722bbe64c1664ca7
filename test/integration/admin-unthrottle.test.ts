/**
 * A user or a client address locked out by the throttle, with real slapd, Dovecot and
 * redis-server: whereis shows the user's counts and refusal, and unthrottle releases the user or
 * the address, on an instance's own counters (no Redis), and through Redis on both of two
 * instances sharing it (an IPv6 address by its /64, a nat64 one by the IPv4 address it embeds, as
 * they are counted); with Redis down, on the instance asked, which says so. A subject with nothing
 * counted, and a request naming no subject, are answered for what they are.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { createClient } from '@redis/client';
import { LineClient, repoRoot, startDovecot, startRedis, startSlapd } from './servers/index.js';
import type { Dovecot, Redis, Slapd } from './servers/index.js';
import { ADMIN_TOKEN, registerPasswords, startFront, waitForLog } from './front.js';
import type { Front } from './front.js';

const run = promisify(execFile);
const PASSWORD = 'Unthrottle-pw-51c7e';
const WRONG = ['Unthrottle-wrong-1a', 'Unthrottle-wrong-2b', 'Unthrottle-wrong-3c', 'Unthrottle-wrong-4d', 'Unthrottle-wrong-5e'] as const;
const KEY_PREFIX = 'mf-unthrottle:';
const USERS = ['frank', 'gina', 'hank', 'ivy', 'judy'] as const;
/** An alias of judy's that the user filter matches. */
const ALIAS = 'j.doe@example.com';
const FAILURES_PER_USER = 3;
const FAILURES_PER_ADDRESS = 5;
const THROTTLE = {
  enabled: true,
  base_delay_ms: 10,
  max_delay_ms: 20,
  failures_per_user: FAILURES_PER_USER,
  failures_per_address: FAILURES_PER_ADDRESS,
  failure_window_ms: 120_000,
  refusal_ms: 600_000,
};
const LIMIT = /^NO \[LIMIT\]/;

let slapd: Slapd;
let dovecot: Dovecot;
let redis: Redis;
/** Counters of its own (no throttle.redis). */
let alone: Front;
/** Two instances sharing Redis. */
let shared: [Front, Front];

before(async () => {
  registerPasswords(PASSWORD, ...WRONG);
  [slapd, dovecot, redis] = await Promise.all([
    startSlapd({ users: USERS.map((uid) => ({ uid, password: PASSWORD, store: 'alpha', ...(uid === 'judy' ? { mail: ALIAS } : {}) })) }),
    startDovecot({ name: 'unthrottle', users: USERS.map((name) => ({ name, password: PASSWORD })) }),
    startRedis(),
  ]);
  const options = (throttle: Record<string, unknown>) =>
    ({
      slapd,
      stores: { alpha: { currentMaster: 'a1', slots: { a1: { imapPort: dovecot.imapPort } } } },
      directory: { user_filter: '(&(objectClass=inetOrgPerson)(|(uid={user})(mail={user})))', login_attribute: 'uid' },
      // The test's own connections (127.0.0.1) are a webmail server: not counted per address, and their ID x-originating-ip is believed.
      trustedNetworks: ['127.0.0.1/32'],
      throttle,
    }) as const;
  const withRedis = { ...THROTTLE, redis: { url: redis.url, key_prefix: KEY_PREFIX, timeout_ms: 500 } };
  [alone, ...shared] = await Promise.all([startFront(options(THROTTLE)), startFront(options(withRedis)), startFront(options(withRedis))]);
  for (const front of shared) await waitForLog(front, (l) => l['event'] === 'throttle.redis_state' && l['state'] === 'up', 10_000);
});

after(async () => {
  await Promise.all([alone, ...(shared ?? [])].map((front) => front?.stop()));
  await Promise.all([slapd?.stop(), dovecot?.stop(), redis?.stop()]);
});

/** An IMAP LOGIN through `front`: the tagged answer. `from`: the local address to connect from; `claim`: the client address sent with ID (the test's webmail server's). */
async function login(front: Front, user: string, password: string, options: { from?: string; claim?: string } = {}): Promise<{ line: string }> {
  const client = await LineClient.connect(front.imapTrustedPort, options.from !== undefined ? { localAddress: options.from } : {});
  try {
    await client.readLine();
    if (options.claim !== undefined) await client.imap(`ID ("x-originating-ip" "${options.claim}")`);
    const result = await client.imap(`LOGIN "${user}" "${password}"`);
    return { line: `${result.status} ${result.text}` };
  } finally {
    client.close();
  }
}

/** Fails `count` distinct wrong passwords of `user` (each counted once). */
async function fail(front: Front, user: string, count: number, options: { from?: string; claim?: string } = {}): Promise<void> {
  for (let i = 0; i < count; i++) assert.match((await login(front, user, WRONG[i]!, options)).line, /^NO /);
}

/** Runs `mailfront ARGS` against `front`'s admin API. */
async function cli(front: Front, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const { port } = front.mailfront.httpAddress()!;
  try {
    const { stdout, stderr } = await run(process.execPath, [join(repoRoot(), 'dist/src/cli/main.js'), ...args, '--url', `http://127.0.0.1:${port}`, '--token', ADMIN_TOKEN]);
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

async function api(front: Front, method: 'GET' | 'POST', path: string, body?: unknown): Promise<{ status: number; json: Record<string, any> }> {
  const { port } = front.mailfront.httpAddress()!;
  const response = await fetch(`http://127.0.0.1:${port}${path}`, { method, headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
  return { status: response.status, json: (await response.json()) as Record<string, any> };
}

// Two rounds of cases at once, each case on users, addresses and counters no other touches; an
// unthrottle on `alone` in the first round is only frank's, whose case counts the lines it logs.
describe('a user or an address locked out by the throttle', { concurrency: true }, () => {
  test('on an instance counting alone: whereis shows the refusal, unthrottle releases the user and logs admin.unthrottled', async () => {
    await fail(alone, 'frank', FAILURES_PER_USER);
    assert.match((await login(alone, 'frank', PASSWORD)).line, LIMIT);

    const whereis = await cli(alone, 'whereis', 'frank');
    assert.equal(whereis.code, 0, whereis.stderr);
    assert.match(whereis.stdout, /^throttle +frank: 3 of 3 failures counted, logins refused for \d+ s more \(mailfront unthrottle frank\)$/m, whereis.stdout);
    assert.match(whereis.stdout, /^ +read from this instance's counters; without throttle\.redis each instance counts alone$/m);
    const json = (await api(alone, 'GET', '/api/whereis/frank')).json;
    assert.equal(json['throttle'].from, 'memory');
    assert.equal(json['throttle'].users[0].failures, FAILURES_PER_USER);
    assert.ok(json['throttle'].users[0].refusedForMs > 590_000, JSON.stringify(json['throttle']));

    // kick does not release it (it is not meant to): unthrottle does.
    await cli(alone, 'kick', 'frank');
    assert.match((await login(alone, 'frank', PASSWORD)).line, LIMIT);
    const mark = alone.logs.length;
    const unthrottle = await cli(alone, 'unthrottle', 'Frank');
    assert.equal(unthrottle.code, 0, unthrottle.stderr);
    assert.match(unthrottle.stdout, /^user frank: cleared 3 of 3 failures counted, logins refused for \d+ s more on this instance \(no throttle\.redis/);
    const logged = alone.logs.slice(mark).filter((l) => l['event'] === 'admin.unthrottled');
    assert.equal(logged.length, 1);
    assert.equal(logged[0]!['level'], 'info');
    assert.equal(logged[0]!['user'], 'frank');
    assert.equal(logged[0]!['failures'], FAILURES_PER_USER);
    assert.ok(!JSON.stringify(logged[0]).includes('fingerprint'), JSON.stringify(logged[0]));

    assert.match((await login(alone, 'frank', PASSWORD)).line, /^OK /);
    assert.match((await cli(alone, 'whereis', 'frank')).stdout, /^throttle +frank: no failures counted$/m);
  });

  test('through Redis: shown from Redis on the other instance, released on both by one unthrottle', async () => {
    const [a, b] = shared;
    await fail(a, 'gina', FAILURES_PER_USER);
    assert.match((await login(b, 'gina', PASSWORD)).line, LIMIT);
    const whereis = await cli(b, 'whereis', 'gina');
    assert.match(whereis.stdout, /^throttle +gina: 3 of 3 failures counted, logins refused for \d+ s more/m, whereis.stdout);
    assert.match(whereis.stdout, /^ +read from Redis, shared by every instance using it$/m);
    assert.equal((await api(b, 'GET', '/api/whereis/gina')).json['throttle'].from, 'redis');

    const unthrottle = await cli(a, 'unthrottle', 'gina');
    assert.equal(unthrottle.code, 0, unthrottle.stderr);
    assert.match(unthrottle.stdout, /^user gina: cleared 3 of 3 failures counted, logins refused for \d+ s more in Redis: released on every instance sharing it$/m);
    const client = createClient({ url: redis.url });
    await client.connect();
    try {
      assert.equal(await client.exists(`${KEY_PREFIX}u:gina`), 0);
    } finally {
      await client.quit();
    }
    assert.match((await login(b, 'gina', PASSWORD)).line, /^OK /);
    assert.match((await login(a, 'gina', PASSWORD)).line, /^OK /);
  });

  test('through Redis: unthrottle ADDRESS on the other instance releases it', async () => {
    const [a, b] = shared;
    const from = '127.0.0.77';
    for (let i = 0; i < FAILURES_PER_ADDRESS; i++) assert.match((await login(a, `nobody${i}`, WRONG[i]!, { from })).line, /^NO /);
    assert.match((await login(a, 'hank', PASSWORD, { from })).line, LIMIT);
    const unthrottle = await cli(b, 'unthrottle', from);
    assert.equal(unthrottle.code, 0, unthrottle.stderr);
    assert.match(unthrottle.stdout, /^address 127\.0\.0\.77: cleared 5 of 5 failures counted, logins refused for \d+ s more in Redis/m);
    assert.match((await login(a, 'hank', PASSWORD, { from })).line, /^OK /);
  });
});

describe('an alias, addresses as counted, and what is not counted', { concurrency: true }, () => {
  test('whereis of an alias shows the counts of the name typed and of the login name; unthrottle of the alias releases it', async () => {
    await fail(alone, ALIAS, FAILURES_PER_USER);
    assert.match((await login(alone, ALIAS, PASSWORD)).line, LIMIT);
    // The throttle counts the name typed: judy's own name is not refused.
    const whereis = await cli(alone, 'whereis', ALIAS);
    assert.match(whereis.stdout, /^throttle +j\.doe@example\.com: 3 of 3 failures counted, logins refused for \d+ s more \(mailfront unthrottle j\.doe@example\.com\)\n +judy: no failures counted$/m, whereis.stdout);
    assert.deepEqual((await api(alone, 'GET', `/api/whereis/${ALIAS}`)).json['throttle'].users.map((u: { user: string }) => u.user), [ALIAS, 'judy']);
    assert.match((await cli(alone, 'unthrottle', ALIAS)).stdout, /^user j\.doe@example\.com: cleared 3 of 3 failures counted/);
    assert.match((await login(alone, ALIAS, PASSWORD)).line, /^OK /);
  });

  test('an IPv6 address is cleared by its /56 (throttle.ipv6_prefix_bits), a nat64 address by the IPv4 address it embeds, as they are counted', async () => {
    // A webmail server (trusted) forwards its clients' addresses with ID.
    for (const [claim, asked, counted] of [
      ['2001:db8:5:6::10', '2001:db8:5:7::99', '2001:db8:5:0::/56'],
      ['198.51.100.7', '64:ff9b::198.51.100.7', '198.51.100.7'],
    ] as const) {
      for (let i = 0; i < FAILURES_PER_ADDRESS; i++) assert.match((await login(alone, `nobody${i}`, WRONG[i]!, { claim })).line, /^NO /);
      assert.match((await login(alone, 'hank', PASSWORD, { claim })).line, LIMIT, claim);
      const unthrottle = await cli(alone, 'unthrottle', asked);
      assert.equal(unthrottle.code, 0, unthrottle.stderr);
      assert.ok(unthrottle.stdout.startsWith(`address ${asked} (counted as ${counted}): cleared 5 of 5 failures counted`), unthrottle.stdout);
      assert.match((await login(alone, 'hank', PASSWORD, { claim })).line, /^OK /, claim);
    }
  });

  test('a subject with nothing counted is said so; a request naming no user or address is a 400', async () => {
    for (const subject of ['nosuchuser', '192.0.2.44']) {
      const result = await cli(alone, 'unthrottle', subject);
      assert.equal(result.code, 0, result.stderr);
      assert.match(result.stdout, new RegExp(`^(user|address) ${subject.replace(/\./g, '\\.')}: nothing to clear: no failures counted \\(read from this instance's counters`));
    }
    for (const body of [{}, { address: 'not-an-ip' }, { user: 'alice', address: '192.0.2.1' }, { user: '' }, { slot: 'a1' }]) {
      const reply = await api(alone, 'POST', '/api/unthrottle', body);
      assert.equal(reply.status, 400, JSON.stringify(body));
    }
    const usage = await cli(alone, 'unthrottle');
    assert.equal(usage.code, 2);
    assert.match(usage.stderr, /Usage: mailfront unthrottle USER \| ADDRESS/);
  });
});

describe('Redis down', () => {
  test('whereis says it read this instance\'s counters; unthrottle clears them there and says Redis did not take it', async () => {
    const [a] = shared;
    await redis.stopOnly();
    try {
      await fail(a, 'ivy', FAILURES_PER_USER);
      assert.match((await login(a, 'ivy', PASSWORD)).line, LIMIT);
      const whereis = await cli(a, 'whereis', 'ivy');
      assert.match(whereis.stdout, /^throttle +ivy: 3 of 3 failures counted, logins refused/m, whereis.stdout);
      assert.match(whereis.stdout, /^ +read from this instance's counters: Redis did not answer$/m);
      const unthrottle = await cli(a, 'unthrottle', 'ivy');
      assert.match(unthrottle.stdout, /^user ivy: cleared 3 of 3 failures counted, logins refused for \d+ s more on this instance only: Redis did not take the change/m);
      assert.match((await login(a, 'ivy', PASSWORD)).line, /^OK /);
    } finally {
      await redis.startAgain();
    }
  });
});
