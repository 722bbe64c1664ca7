/**
 * What a reload keeps (real slapd, Dovecot and Redis): the throttle's counters and refusals when
 * its policy changes (delays, limits, max_tracked, redis.timeout_ms), and the directory's caches
 * when only its connection settings change (timeouts, search_connections); a change of what the
 * directory answers (user_filter) empties them.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { parse, stringify } from 'yaml';
import { LineClient, startDovecot, startRedis, startSlapd } from './servers/index.js';
import type { Dovecot, Redis, Slapd } from './servers/index.js';
import { registerPasswords, startFront, waitForLog } from './front.js';
import type { Front } from './front.js';

const PASSWORD = 'Reload-state-pw-7d1e';
const USERS = ['tara', 'rita', 'mona', 'rhea', 'dora', 'dina'];
let slapd: Slapd;
let dovecot: Dovecot;
let redis: Redis;

const stores = () => ({ alpha: { currentMaster: 's1', slots: { s1: { imapPort: dovecot.imapPort } } } });
/** No penalty (the tests would wait for it), a per-user limit of 3, refusals that outlast the test. */
const THROTTLE = { enabled: true, base_delay_ms: 0, max_delay_ms: 0, failures_per_user: 3, failures_per_address: 1000, refusal_ms: 60_000, max_tracked: 100 };

before(async () => {
  slapd = await startSlapd({ users: USERS.map((uid) => ({ uid, password: PASSWORD, store: 'alpha' })) });
  dovecot = await startDovecot({ name: 'reload-state', users: USERS.map((name) => ({ name, password: PASSWORD })) });
  redis = await startRedis();
});
after(async () => {
  await Promise.all([slapd?.stop(), dovecot?.stop(), redis?.stop()]);
});

async function login(front: Front, user: string, password: string): Promise<string> {
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

/** Rewrites the front's config with `change` applied to the file it was started with, and reloads it. */
async function reloadWith(front: Front, original: string, change: (config: Record<string, Record<string, unknown>>) => void): Promise<void> {
  const config = parse(original) as Record<string, Record<string, unknown>>;
  change(config);
  writeFileSync(front.configFile, stringify(config));
  const result = await front.mailfront.reload();
  assert.equal(result.ok, true, result.error);
}

describe('throttle in memory', () => {
  let front: Front;
  let original: string;
  before(async () => {
    front = await startFront({ slapd, stores: stores(), throttle: THROTTLE, session: { auth_failure_delay_ms: 50 } });
    original = readFileSync(front.configFile, 'utf8');
  });
  after(async () => {
    await front?.stop();
  });

  test('failures counted before a reload that changes base_delay_ms still count: the limit refuses as before', async () => {
    for (const i of [1, 2]) assert.match(await login(front, 'tara', `tara-wrong-${i}`), /^t1 NO \[AUTHENTICATIONFAILED\] /);
    const since = front.logs.length;
    await reloadWith(front, original, (c) => {
      c['throttle'] = { ...THROTTLE, base_delay_ms: 1, max_delay_ms: 2 };
    });
    assert.match(await login(front, 'tara', 'tara-wrong-3'), /^t1 NO \[AUTHENTICATIONFAILED\] /, 'the third failure reaches the limit');
    assert.match(await login(front, 'tara', PASSWORD), /^t1 NO \[LIMIT\] /, 'the two failures before the reload were still counted');
    const line = await waitForLog(front, (l) => l['event'] === 'throttle.reconfigured', 1_000, since);
    assert.deepEqual(line['changed'], ['base_delay_ms', 'max_delay_ms']);
    assert.equal(line['counters'], 'kept');
  });

  test('a refusal in force survives a reload that tightens failures_per_user, and one that changes max_tracked', async () => {
    for (const i of [1, 2, 3]) await login(front, 'rita', `rita-wrong-${i}`);
    assert.match(await login(front, 'rita', PASSWORD), /^t1 NO \[LIMIT\] /);
    await login(front, 'mona', 'mona-wrong-1');
    await reloadWith(front, original, (c) => {
      c['throttle'] = { ...THROTTLE, failures_per_user: 2 };
    });
    assert.match(await login(front, 'rita', PASSWORD), /^t1 NO \[LIMIT\] /, 'the refusal is still in force');
    // The new limit counts the failure before the reload: the next one reaches it.
    await login(front, 'mona', 'mona-wrong-2');
    assert.match(await login(front, 'mona', PASSWORD), /^t1 NO \[LIMIT\] /, 'the failure before the reload counted towards the new limit');
    // max_tracked: the counters are copied into stores of the new size (the most recently used
    // first when they do not all fit): a refusal goes on.
    const since = front.logs.length;
    await reloadWith(front, original, (c) => {
      c['throttle'] = { ...THROTTLE, failures_per_user: 2, max_tracked: 200 };
    });
    assert.match(await login(front, 'rita', PASSWORD), /^t1 NO \[LIMIT\] /, 'the refusal survives max_tracked');
    assert.match(await login(front, 'mona', PASSWORD), /^t1 NO \[LIMIT\] /);
    assert.match(await login(front, 'dina', PASSWORD), /^t1 OK /, 'a user without failures logs in');
    const line = await waitForLog(front, (l) => l['event'] === 'throttle.reconfigured', 1_000, since);
    assert.deepEqual(line['changed'], ['max_tracked']);
    assert.equal(line['counters'], 'copied');
  });

  test('enabled: false forgets the counters; enabled again, they start empty', async () => {
    for (const i of [1, 2, 3]) await login(front, 'rhea', `rhea-wrong-${i}`);
    assert.match(await login(front, 'rhea', PASSWORD), /^t1 NO \[LIMIT\] /);
    const since = front.logs.length;
    await reloadWith(front, original, (c) => {
      c['throttle'] = { ...THROTTLE, enabled: false };
    });
    assert.equal((await waitForLog(front, (l) => l['event'] === 'throttle.reconfigured', 1_000, since))['counters'], 'dropped');
    assert.match(await login(front, 'rhea', PASSWORD), /^t1 OK /);
    await reloadWith(front, original, (c) => {
      c['throttle'] = THROTTLE;
    });
    assert.match(await login(front, 'rhea', PASSWORD), /^t1 OK /);
  });
});

describe('throttle through Redis', () => {
  let front: Front;
  let original: string;
  before(async () => {
    front = await startFront({ slapd, stores: stores(), throttle: { ...THROTTLE, redis: { url: redis.url, timeout_ms: 200 } }, session: { auth_failure_delay_ms: 50 } });
    original = readFileSync(front.configFile, 'utf8');
    await waitForLog(front, (l) => l['event'] === 'throttle.redis_state' && l['state'] === 'up');
  });
  after(async () => {
    await front?.stop();
  });

  test('a reload that changes redis.timeout_ms and a limit keeps the Redis connection', async () => {
    for (const i of [1, 2, 3]) await login(front, 'tara', `tara-redis-wrong-${i}`);
    assert.match(await login(front, 'tara', PASSWORD), /^t1 NO \[LIMIT\] /);
    const since = front.logs.length;
    await reloadWith(front, original, (c) => {
      c['throttle'] = { ...THROTTLE, failures_per_user: 4, redis: { url: redis.url, timeout_ms: 300 } };
    });
    assert.match(await login(front, 'tara', PASSWORD), /^t1 NO \[LIMIT\] /);
    assert.equal(front.logs.slice(since).filter((l) => l['event'] === 'throttle.redis_state').length, 0, 'no reconnection');
    const line = await waitForLog(front, (l) => l['event'] === 'throttle.reconfigured', 1_000, since);
    assert.deepEqual(line['changed'], ['failures_per_user', 'redis.timeout_ms']);
    assert.equal(line['redis'], 'kept');
    const { port } = front.mailfront.httpAddress()!;
    assert.match(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text(), /^mailfront_throttle_redis_up 1$/m);
  });

  test('a reload that changes redis.key_prefix connects anew, and the counters under the new prefix are Redis\'s', async () => {
    const since = front.logs.length;
    await reloadWith(front, original, (c) => {
      c['throttle'] = { ...THROTTLE, failures_per_user: 4, redis: { url: redis.url, timeout_ms: 300, key_prefix: 'other:' } };
    });
    const line = await waitForLog(front, (l) => l['event'] === 'throttle.reconfigured', 1_000, since);
    assert.deepEqual(line['changed'], ['redis.key_prefix']);
    assert.equal(line['redis'], 'connecting');
    await waitForLog(front, (l) => l['event'] === 'throttle.redis_state' && l['state'] === 'up', 5_000, since);
    assert.match(await login(front, 'tara', PASSWORD), /^t1 OK /, 'Redis holds no failures under the new prefix');
  });
});

describe('directory caches', () => {
  let front: Front;
  let original: string;
  before(async () => {
    front = await startFront({ slapd, stores: stores(), directory: { entry_cache_ttl_ms: 60_000, auth_cache_ttl_ms: 60_000 } });
    original = readFileSync(front.configFile, 'utf8');
  });
  after(async () => {
    await front?.stop();
  });

  test('a reload that changes only connection settings keeps a cached login; one that changes user_filter empties the caches', async () => {
    assert.match(await login(front, 'dora', PASSWORD), /^t1 OK /);
    // From now on only the cache lets the old password in.
    await slapd.setPassword('dora', 'Reload-state-new-pw-1');
    const since = front.logs.length;
    await reloadWith(front, original, (c) => {
      c['directory'] = { ...c['directory'], operation_timeout_ms: 2_500, connect_timeout_ms: 1_500, search_connections: 3 };
    });
    assert.match(await login(front, 'dora', PASSWORD), /^t1 OK /, 'the cached login was kept');
    const line = await waitForLog(front, (l) => l['event'] === 'directory.reconfigured', 1_000, since);
    assert.deepEqual(line['changed'], ['connect_timeout_ms', 'operation_timeout_ms', 'search_connections']);
    assert.deepEqual(line['kept'], ['auth', 'entry']);
    await reloadWith(front, original, (c) => {
      c['directory'] = { ...c['directory'], user_filter: '(&(objectClass=inetOrgPerson)(uid={user})(uid=*))' };
    });
    assert.match(await login(front, 'dora', PASSWORD), /^t1 NO \[AUTHENTICATIONFAILED\] /, 'the caches were emptied: the directory checks the password');
  });
});
