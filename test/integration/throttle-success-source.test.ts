/**
 * A success forgets only the user's failures counted from its own address (the fx-success31
 * brief), through running mailfront instances (real slapd, Dovecot and redis-server): before,
 * the user's login started the whole count over, so a guesser got failures_per_user - 1 guesses,
 * waited for the user's phone to log in, and guessed again, without end. On an instance counting
 * alone, and through two instances sharing Redis (the success on one, the guesses through the
 * other), also a login its known address spared a refusal of the user's own typos there (it
 * forgets them too, the fx-success31b brief); and, through the Throttle on Redis, a rolling upgrade: failures written by the version
 * before sources (no `s` field) stay after a success, and that version counts what this one wrote.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { createClient } from '@redis/client';
import { pino } from 'pino';
import { Throttle } from '../../src/auth/throttle.js';
import type { LoginAttempt } from '../../src/auth/throttle.js';
import { LineClient, startDovecot, startRedis, startSlapd } from './servers/index.js';
import type { Dovecot, Redis, Slapd } from './servers/index.js';
import { ADMIN_TOKEN, registerPasswords, startFront, waitForLog } from './front.js';
import type { Front } from './front.js';

const PASSWORD = 'Source-pw-4d1a';
const USERS = ['walt', 'xena', 'yuri', 'zoe', 'vera', 'uma'];
const KEY_PREFIX = 'source:';
const LIMIT_PER_USER = 3;
const THROTTLE = { enabled: true, base_delay_ms: 0, max_delay_ms: 0, failures_per_user: LIMIT_PER_USER, failures_per_address: 12, refusal_ms: 60_000 };

/**
 * Deadlines: the set-up takes about 2 s alone (slapd, Dovecot, Redis and three instances started at
 * once), a case under 1 s (seven logins or fewer); on a busy machine several times that. Each step
 * has its own deadline and says what it waited for (the daemons' 20 s, a login line's 15 s, the
 * Redis state's 10 s, whereis's 10 s); these bound the rest, well under the runner's 300 s per file.
 */
const SETUP = { timeout: 120_000 };
const CASE = { timeout: 60_000 };

let slapd: Slapd;
let dovecot: Dovecot;
let redis: Redis;
/** Counters of its own. */
let alone: Front;
/** Two instances sharing Redis. */
let shared: [Front, Front];

before(async () => {
  [slapd, dovecot, redis] = await Promise.all([
    startSlapd({ users: USERS.map((uid) => ({ uid, password: PASSWORD, store: 'alpha' })) }),
    startDovecot({ name: 'source', users: USERS.map((name) => ({ name, password: PASSWORD })) }),
    startRedis(),
  ]);
  registerPasswords(PASSWORD);
  const stores = { alpha: { currentMaster: 's1', slots: { s1: { imapPort: dovecot.imapPort, pop3Port: dovecot.pop3Port } } } };
  const common = { slapd, stores, session: { auth_failure_delay_ms: 50 } };
  const withRedis = { ...THROTTLE, redis: { url: redis.url, key_prefix: KEY_PREFIX, timeout_ms: 500 } };
  [alone, ...shared] = await Promise.all([startFront({ ...common, throttle: THROTTLE }), startFront({ ...common, throttle: withRedis }), startFront({ ...common, throttle: withRedis })]);
  for (const [i, f] of shared.entries()) {
    await waitForLog(f, (l) => l['event'] === 'throttle.redis_state' && l['state'] === 'up', 10_000).catch((error: unknown) => {
      const states = f.logs.filter((l) => l['event'] === 'throttle.redis_state').map((l) => `${String(l['state'])}${l['reason'] !== undefined ? ` (${String(l['reason'])})` : ''}`);
      throw new Error(`shared instance ${i + 1}: Redis at ${redis.url} never up (throttle.redis_state up): ${error instanceof Error ? error.message : String(error)}; its states: ${states.join(', ') || 'none logged'}`);
    });
  }
}, SETUP);

after(async () => {
  await Promise.all([alone?.stop(), ...(shared ?? []).map((f) => f?.stop())]);
  await Promise.all([slapd?.stop(), dovecot?.stop(), redis?.stop()]);
});

/** A LOGIN of `user` from `localAddress` on `front`; its tagged answer. */
async function login(front: Front, localAddress: string, user: string, password: string): Promise<string> {
  registerPasswords(password);
  const c = await LineClient.connect(front.imapTrustedPort, { localAddress });
  try {
    await c.readLine();
    c.send(`t1 LOGIN ${user} ${password}`);
    for (;;) {
      const line = await c.readLine(15_000);
      if (line.startsWith('t1 ')) return line;
    }
  } finally {
    c.close();
  }
}

/** The user's failures as whereis reads them on `front`. */
async function failuresOf(front: Front, user: string): Promise<number> {
  const { port } = front.mailfront.httpAddress()!;
  const url = `http://127.0.0.1:${port}/api/whereis/${user}`;
  const response = await fetch(url, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, signal: AbortSignal.timeout(10_000) }).catch((error: unknown) => {
    throw new Error(`whereis of ${user} (GET ${url}): ${error instanceof Error ? error.message : String(error)}`);
  });
  const json = (await response.json()) as { throttle: { users: Array<{ failures: number }> } };
  return json.throttle.users[0]!.failures;
}

const OK = /^t1 OK /;
const LIMIT = /^t1 NO \[LIMIT\] /;
const WRONG = /^t1 NO \[AUTHENTICATIONFAILED\] /;

/**
 * The guesser at `guesser` makes failures_per_user - 1 wrong guesses through `guessVia`, the user
 * logs in from `home` through `userVia`, and the guesser's next guess reaches the limit: the user
 * is refused at the guesser's address and at an address never seen, not at home.
 */
async function guessAroundTheUser(user: string, userVia: Front, guessVia: Front, home: string, guesser: string, unseen: string): Promise<void> {
  for (let i = 0; i < LIMIT_PER_USER - 1; i++) assert.match(await login(guessVia, guesser, user, `guess-${user}-${i}`), WRONG);
  assert.match(await login(userVia, home, user, PASSWORD), OK, "the user's phone polls");
  assert.match(await login(guessVia, guesser, user, `guess-${user}-last`), WRONG, 'the guess that reaches the limit is answered, then counted');
  assert.match(await login(guessVia, guesser, user, PASSWORD), LIMIT, 'the guesser, now with the right password, is refused');
  assert.match(await login(userVia, unseen, user, PASSWORD), LIMIT, 'the user from an address never seen');
  assert.match(await login(guessVia, unseen, user, PASSWORD), LIMIT, 'the same through the other instance');
  assert.match(await login(guessVia, home, user, PASSWORD), OK, 'the user at home, a known address');
}

/**
 * The user logs in at `home` through `loginVia` (a known address from then on), makes
 * failures_per_user typos there through `typoVia` (refused elsewhere), and logs in at home through
 * `loginVia` again, spared the refusal: his typos are forgotten, and his phone gets in at `phone`
 * through `typoVia`. Before, a spared login forgot nothing, and the phone waited for refusal_ms.
 */
async function typosAtHome(user: string, typoVia: Front, loginVia: Front, home: string, phone: string): Promise<void> {
  assert.match(await login(loginVia, home, user, PASSWORD), OK, 'yesterday at home');
  for (let i = 0; i < LIMIT_PER_USER; i++) assert.match(await login(typoVia, home, user, `typo-${user}-${i}`), WRONG);
  assert.match(await login(typoVia, phone, user, PASSWORD), LIMIT, 'his typos reached the limit: refused elsewhere');
  assert.match(await login(loginVia, home, user, PASSWORD), OK, 'spared at home, a known address');
  assert.equal(await failuresOf(typoVia, user), 0, 'his typos at home forgotten');
  assert.match(await login(typoVia, phone, user, PASSWORD), OK, 'his phone elsewhere gets in');
}

describe('a success forgets the failures counted from its own address only', { concurrency: true }, () => {
  test("on an instance counting alone: the guesser's failures outlive the user's login, and his next guess reaches the limit", CASE, async () => {
    await guessAroundTheUser('walt', alone, alone, '127.0.4.1', '127.0.5.1', '127.0.6.1');
  });

  test("on an instance counting alone: the user's own typos, then the user's login from there: the count is back to the guesser's", CASE, async () => {
    assert.match(await login(alone, '127.0.5.2', 'xena', 'guess-xena'), WRONG);
    assert.match(await login(alone, '127.0.4.2', 'xena', 'typo-xena'), WRONG);
    assert.equal(await failuresOf(alone, 'xena'), 2);
    assert.match(await login(alone, '127.0.4.2', 'xena', PASSWORD), OK);
    assert.equal(await failuresOf(alone, 'xena'), 1, "the guesser's one is left");
  });

  test("through Redis: the user's login on one instance, the guesses through the other", CASE, async () => {
    const [a, b] = shared;
    await guessAroundTheUser('yuri', a, b, '127.0.4.3', '127.0.5.3', '127.0.6.3');
    const raw = createClient({ url: redis.url });
    raw.on('error', () => undefined);
    await raw.connect();
    try {
      assert.equal(await raw.hGet(`${KEY_PREFIX}u:yuri`, 'n'), String(LIMIT_PER_USER));
    } finally {
      raw.destroy();
    }
  });

  test("through Redis: the user's own typos through one instance, the login through the other: the count is back to the guesser's on both", CASE, async () => {
    const [a, b] = shared;
    assert.match(await login(a, '127.0.5.4', 'zoe', 'guess-zoe'), WRONG);
    assert.match(await login(b, '127.0.4.4', 'zoe', 'typo-zoe'), WRONG);
    assert.equal(await failuresOf(a, 'zoe'), 2);
    assert.match(await login(a, '127.0.4.4', 'zoe', PASSWORD), OK);
    assert.equal(await failuresOf(b, 'zoe'), 1, "the guesser's one is left, for the other instance too");
    assert.equal(await failuresOf(a, 'zoe'), 1);
  });

  test("on an instance counting alone: a login the known address spared forgets the user's typos from there, and his phone elsewhere is no longer refused", CASE, async () => {
    await typosAtHome('vera', alone, alone, '127.0.4.5', '127.0.6.5');
  });

  test("through Redis: a login the known address spared on one instance forgets the typos from there counted through the other, which lets his phone in", CASE, async () => {
    const [a, b] = shared;
    await typosAtHome('uma', a, b, '127.0.4.6', '127.0.6.6');
  });
});

/** The failure script of the version before sources, as it was: what an instance not yet upgraded runs. */
const BEFORE_SOURCES_FAILURE = `
if redis.replicate_commands then redis.replicate_commands() end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fp = ARGV[1]
local window = tonumber(ARGV[2])
local refusal = tonumber(ARGV[3])
local floor = tonumber(ARGV[4])
local len = string.len(fp)
local out = {}
local refused = ''
for i, key in ipairs(KEYS) do
  local limit = tonumber(ARGV[4 + i])
  local keep = math.min(64, math.max(floor, limit))
  local v = redis.call('HMGET', key, 'n', 'p', 'b')
  local n = tonumber(v[1]) or 0
  local p = v[2] or ''
  local b = tonumber(v[3]) or 0
  local seen = false
  for j = 1, string.len(p), len do
    if string.sub(p, j, j + len - 1) == fp then seen = true break end
  end
  local status = 0
  if not seen then
    local np = p .. fp
    if string.len(np) > keep * len then np = string.sub(np, -keep * len) end
    local nb = b
    if n + 1 >= limit then nb = math.max(b, now + refusal) end
    local w = redis.pcall('HSET', key, 'n', n + 1, 'p', np, 'b', string.format('%.0f', nb))
    if type(w) == 'table' and w.err then
      status = -1
      refused = w.err
    else
      n = n + 1
      b = nb
      redis.call('PEXPIRE', key, math.max(window, b - now))
      status = 1
    end
  end
  out[#out + 1] = n
  out[#out + 1] = math.max(0, b - now)
  out[#out + 1] = status
end
out[#out + 1] = refused
return out
`;

describe('rolling upgrade: instances of the version before sources share Redis with this one', () => {
  const from = (user: string, address: string): LoginAttempt => ({ user, address, trusted: false });
  const prefix = 'upgrade:';

  /** A failure as the version before sources writes it (for the user and the address), with a fingerprint of its own. */
  async function oldFailure(raw: { sendCommand(args: string[]): Promise<unknown> }, user: string, address: string, fingerprint = randomBytes(12).toString('base64url')): Promise<number[]> {
    const reply = (await raw.sendCommand(['EVAL', BEFORE_SOURCES_FAILURE, '2', `${prefix}u:${user}`, `${prefix}a:${address}`, fingerprint, '60000', '30000', '8', '5', '8'])) as unknown[];
    return reply.slice(0, 6).map(Number);
  }

  test("a failure the version before wrote has no source: a success leaves it counted; that version counts what this one wrote, each wrong password once", CASE, async () => {
    const raw = createClient({ url: redis.url });
    raw.on('error', () => undefined);
    await raw.connect();
    const log = pino({ level: 'silent' });
    const config = { enabled: true, baseDelayMs: 0, maxDelayMs: 0, failuresPerUser: 5, failuresPerAddress: 8, failureWindowMs: 60_000, refusalMs: 30_000, maxTrackedSubjects: 1_000, redis: { url: redis.url, keyPrefix: prefix, timeoutMs: 500 } };
    const key = new Uint8Array(32).fill(9);
    const throttle = Throttle.fromConfig(config, log, { fingerprintKey: key });
    try {
      await throttle.ready();
      assert.equal(throttle.sharing, 'up');
      // The old instance's failure for olaf at home (a typo of his, or a guess: it cannot tell), then a typo through this one.
      await oldFailure(raw, 'olaf', '192.0.2.40');
      await throttle.recordFailure(from('olaf', '192.0.2.40'), 'typo');
      await throttle.recordSuccess(from('olaf', '192.0.2.40'));
      assert.equal(await raw.hGet(`${prefix}u:olaf`, 'n'), '1', 'the failure without a source stays; the typo from home is forgotten');
      assert.equal((await throttle.inspect([{ user: 'olaf' }]))?.[0]?.failures, 1);

      // This instance writes pia's failures with their sources; the old one counts on them.
      await throttle.recordFailure(from('pia', '198.51.100.40'), 'guess');
      await throttle.recordFailure(from('pia', '192.0.2.41'), 'typo');
      const fields = await raw.hGetAll(`${prefix}u:pia`);
      assert.equal(fields['n'], '2');
      assert.equal(fields['p']?.length, 2 * 16, 'p as the version before reads it: fingerprints of 16 characters');
      assert.equal(fields['s']?.length, 2 * 24, 's: each fingerprint with its source');
      const fp = fields['p']!.slice(0, 16);
      const [n1, , status1] = await oldFailure(raw, 'pia', '198.51.100.40', fp);
      assert.deepEqual([n1, status1], [2, 0], 'a wrong password this version counted is counted again by none: the old one holds it');
      const [n2, , status2] = await oldFailure(raw, 'pia', '198.51.100.40');
      assert.deepEqual([n2, status2], [3, 1], "the old one's own counts on");
      assert.equal((await throttle.check(from('pia', '203.0.113.40'))).refused, false);
      await throttle.recordSuccess(from('pia', '192.0.2.41'));
      assert.equal(await raw.hGet(`${prefix}u:pia`, 'n'), '2', "the typo from 192.0.2.41 forgotten; the guess and the old instance's failure stay");
      for (let i = 0; i < 3; i++) await oldFailure(raw, 'pia', '198.51.100.40');
      const refused = await throttle.check(from('pia', '203.0.113.40'));
      assert.equal(refused.refused, true, "the two left and the old instance's three since: five, the limit, refused by the old instance's script");
      assert.equal(refused.refusedBy, 'user');
    } finally {
      await throttle.close();
      raw.destroy();
    }
  });
});
