/**
 * Abuse limits through a running mailfront (real slapd and Dovecot): auth-failure throttling
 * for IMAP and POP3 alike (growing delay, refusal past the threshold, the same wrong password
 * not counted twice, trusted webmail exempt per address but not per user, counters shared
 * through a real Redis by two instances and local fallback when Redis stops), and connection
 * limits in total, per address and per user, each with its own answer.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { parse, stringify } from 'yaml';
import { LineClient, freePort, startDovecot, startRedis, startSlapd } from './servers/index.js';
import type { Dovecot, Redis, Slapd } from './servers/index.js';
import { ADMIN_TOKEN, connectionsReleased, registerPasswords, startFront, waitForLog } from './front.js';
import type { Front } from './front.js';

const PASSWORD = 'Limits-pw-3b9e';
let slapd: Slapd;
let dovecot: Dovecot;
let redis: Redis;

const stores = () => ({ alpha: { currentMaster: 's1', slots: { s1: { imapPort: dovecot.imapPort, pop3Port: dovecot.pop3Port } } } });
const THROTTLE = { enabled: true, base_delay_ms: 200, max_delay_ms: 800, failures_per_user: 4, failures_per_address: 6, refusal_ms: 60_000 };

before(async () => {
  const users = ['tina', 'tom', 'ted', 'una', 'uwe', 'val', 'vic', 'wes', 'xena'];
  slapd = await startSlapd({ users: users.map((uid) => ({ uid, password: PASSWORD, store: 'alpha' })) });
  dovecot = await startDovecot({ name: 'limits', users: users.map((name) => ({ name, password: PASSWORD })) });
  redis = await startRedis();
});
after(async () => {
  await Promise.all([slapd?.stop(), dovecot?.stop(), redis?.stop()]);
});

async function imapLogin(front: Front, user: string, password: string, localAddress = '127.0.0.1'): Promise<{ line: string; ms: number }> {
  registerPasswords(password);
  const raw = await LineClient.connect(front.imapTrustedPort, { localAddress });
  try {
    await raw.readLine();
    const started = Date.now();
    raw.send(`t1 LOGIN ${user} ${password}`);
    const line = await raw.readLine(10_000);
    return { line, ms: Date.now() - started };
  } finally {
    raw.close();
  }
}

async function pop3Login(front: Front, user: string, password: string, localAddress = '127.0.0.1'): Promise<string> {
  registerPasswords(password);
  const raw = await LineClient.connect(front.pop3TrustedPort, { localAddress });
  try {
    await raw.readLine();
    raw.send(`USER ${user}`);
    await raw.readLine();
    raw.send(`PASS ${password}`);
    return await raw.readLine(10_000);
  } finally {
    raw.close();
  }
}

// The four run at once: each counts failures of its own users from addresses of its own (127.0.0.1,
// .5, .7 and .9, and the addresses .9 forwards), so no case reaches another's threshold.
describe('auth-failure throttling', { concurrency: true }, () => {
  let front: Front;
  before(async () => {
    front = await startFront({ slapd, stores: stores(), throttle: THROTTLE, trustedNetworks: ['127.0.0.9/32'], session: { auth_failure_delay_ms: 100 } });
  });
  after(async () => {
    await front?.stop();
  });

  test('failures add a growing delay; the same wrong password does not grow it; past the threshold logins are refused', async () => {
    const first = await imapLogin(front, 'tina', 'wrong-1');
    const second = await imapLogin(front, 'tina', 'wrong-2');
    const third = await imapLogin(front, 'tina', 'wrong-3');
    assert.equal(first.line, 't1 NO [AUTHENTICATIONFAILED] Authentication failed.');
    assert.ok(second.ms > first.ms + 100 && third.ms > second.ms + 100, `delays ${first.ms}, ${second.ms}, ${third.ms} ms do not grow`);
    const repeated = await imapLogin(front, 'tina', 'wrong-3');
    assert.ok(repeated.ms < third.ms + 150, `repeating a wrong password grew the delay: ${third.ms} → ${repeated.ms} ms`);
    await imapLogin(front, 'tina', 'wrong-4');
    // Four distinct wrong passwords: tina is refused now, even with the right one, for IMAP and POP3 alike.
    assert.match((await imapLogin(front, 'tina', PASSWORD)).line, /^t1 NO \[LIMIT\] /);
    assert.match(await pop3Login(front, 'tina', PASSWORD), /^-ERR \[SYS\/TEMP\] /);
    await waitForLog(front, (l) => l['event'] === 'session.login_failed' && l['code'] === 'THROTTLED' && l['user'] === 'tina');
    // Another user from the same address still gets in: the address is below its own threshold.
    assert.match((await imapLogin(front, 'tom', PASSWORD)).line, /^t1 OK /);
  });

  test('a burst of parallel wrong passwords for one user: the directory checks at most the threshold plus the gate, the rest are refused', async () => {
    const mark = front.logs.length;
    // Twenty connections greeted first, then every LOGIN at once.
    const clients = await Promise.all(Array.from({ length: 20 }, () => LineClient.connect(front.imapTrustedPort, { localAddress: '127.0.0.5' })));
    const answers: string[] = [];
    try {
      await Promise.all(clients.map((c) => c.readLine()));
      clients.forEach((c, i) => {
        registerPasswords(`burst-wrong-${i}`);
        c.send(`t1 LOGIN xena burst-wrong-${i}`);
      });
      answers.push(...(await Promise.all(clients.map((c) => c.readLine(10_000)))));
    } finally {
      for (const c of clients) c.close();
    }
    const failed = front.logs.slice(mark).filter((l) => l['event'] === 'session.login_failed' && l['user'] === 'xena');
    // Each line names the client, for the operator (or fail2ban) acting on failed logins.
    assert.deepEqual([...new Set(failed.map((l) => l['client']))], ['127.0.0.5']);
    const checked = failed.filter((l) => l['code'] === 'WRONG_PASSWORD').length;
    const refused = answers.filter((line) => /^t1 NO \[LIMIT\] /.test(line)).length;
    // failures_per_user 4, four checks of one user at a time: 4 + 4 - 1 at most.
    assert.ok(checked <= 7, `${checked} of the 20 wrong passwords reached the directory`);
    assert.equal(checked + refused, 20, `every other login was refused by the throttle (${refused})`);
  });

  test('an address past its threshold is refused for every user; the trusted webmail network is exempt per address', async () => {
    // The two addresses at once: each user gets at most three failures from both (below its four).
    await Promise.all([
      (async () => {
        for (const [i, user] of ['una', 'uwe', 'val', 'vic', 'wes', 'una'].entries()) await pop3Login(front, user, `bad-addr-${i}`, '127.0.0.7');
        assert.match((await imapLogin(front, 'ted', PASSWORD, '127.0.0.7')).line, /^t1 NO \[LIMIT\] /);
      })(),
      (async () => {
        for (const [i, user] of ['una', 'uwe', 'val', 'vic', 'wes', 'uwe', 'val'].entries()) await pop3Login(front, user, `bad-webmail-${i}`, '127.0.0.9');
        assert.match((await imapLogin(front, 'ted', PASSWORD, '127.0.0.9')).line, /^t1 OK /);
      })(),
    ]);
  });

  test('a trusted webmail server that forwards its client\'s address (IMAP ID x-originating-ip) has that address counted: past its threshold it is refused, another address forwarded by the same server is not', async () => {
    /** One IMAP login from the trusted webmail address 127.0.0.9, on behalf of `claimed`. */
    const forwardedLogin = async (claimed: string, user: string, password: string): Promise<string> => {
      registerPasswords(password);
      const raw = await LineClient.connect(front.imapTrustedPort, { localAddress: '127.0.0.9' });
      try {
        await raw.readLine();
        raw.send(`t0 ID ("x-originating-ip" "${claimed}")`);
        for (let line = await raw.readLine(); !line.startsWith('t0 '); line = await raw.readLine());
        raw.send(`t1 LOGIN ${user} ${password}`);
        return await raw.readLine(10_000);
      } finally {
        raw.close();
      }
    };
    // failures_per_address 6, each for another (unknown) user: no user reaches its own threshold.
    for (let i = 0; i < THROTTLE.failures_per_address; i++) {
      assert.match(await forwardedLogin('192.0.2.77', `fwd-nobody-${i}`, `fwd-wrong-${i}`), /^t1 NO \[AUTHENTICATIONFAILED\] /);
    }
    assert.match(await forwardedLogin('192.0.2.77', 'ted', PASSWORD), /^t1 NO \[LIMIT\] /, 'the forwarded address is past its threshold');
    const refused = await waitForLog(front, (l) => l['event'] === 'throttle.refusing' && l['client'] === '192.0.2.77');
    assert.equal(refused['by'], 'address');
    // The webmail server itself, and its other users, are not refused.
    assert.match(await forwardedLogin('192.0.2.78', 'ted', PASSWORD), /^t1 OK /);
  });
});

describe('throttling with usernames.lowercase off', () => {
  let front: Front;
  before(async () => {
    front = await startFront({ slapd, stores: stores(), throttle: { ...THROTTLE, base_delay_ms: 0, max_delay_ms: 0, failures_per_user: 3 }, usernames: { lowercase: false }, connectionLimits: { max_sessions_per_user: 1 }, session: { auth_failure_delay_ms: 50 } });
  });
  after(async () => {
    await front?.stop();
  });

  test('the spellings of one user share its failure count and its session limit (the directory finds them all)', async () => {
    for (const [i, spelling] of ['wes', 'Wes', 'WES'].entries()) {
      assert.match((await imapLogin(front, spelling, `case-${i}`)).line, /^t1 NO \[AUTHENTICATIONFAILED\]/);
    }
    for (const spelling of ['wes', 'wEs', 'WeS']) {
      assert.match((await imapLogin(front, spelling, PASSWORD)).line, /^t1 NO \[LIMIT\] /, `${spelling} is refused with the others`);
    }
    // One session per user: a second spelling is the same user.
    const held = await LineClient.connect(front.imapTrustedPort);
    try {
      await held.readLine();
      held.send(`h LOGIN tom ${PASSWORD}`);
      assert.match(await held.readLine(), /^h OK /);
      assert.match((await imapLogin(front, 'TOM', PASSWORD)).line, /^t1 NO \[LIMIT\] /);
    } finally {
      held.close();
    }
  });
});

describe('throttle counters shared through Redis', () => {
  let one: Front;
  let two: Front;
  before(async () => {
    const throttle = { ...THROTTLE, base_delay_ms: 0, max_delay_ms: 0, redis: { url: redis.url, timeout_ms: 200 } };
    one = await startFront({ slapd, stores: stores(), throttle, session: { auth_failure_delay_ms: 50 } });
    two = await startFront({ slapd, stores: stores(), throttle, session: { auth_failure_delay_ms: 50 } });
    await new Promise((r) => setTimeout(r, 300));
  });
  after(async () => {
    await one?.stop();
    await two?.stop();
  });

  test('failures counted on one instance refuse the user on the other', async () => {
    for (const i of [1, 2]) await imapLogin(one, 'val', `val-wrong-pw-${i}-7c3e`);
    for (const i of [3, 4]) await imapLogin(two, 'val', `val-wrong-pw-${i}-7c3e`);
    assert.match((await imapLogin(one, 'val', PASSWORD)).line, /^t1 NO \[LIMIT\] /);
    assert.match((await imapLogin(two, 'val', PASSWORD)).line, /^t1 NO \[LIMIT\] /);
  });

  test('with Redis down, logins go on with local counters, and logs and metrics say so', async () => {
    await redis.stopOnly();
    try {
      assert.match((await imapLogin(one, 'vic', PASSWORD)).line, /^t1 OK /);
      await waitForLog(one, (l) => l['component'] === 'throttle' && l['level'] === 'warn');
      const { port } = one.mailfront.httpAddress()!;
      assert.match(await (await fetch(`http://127.0.0.1:${port}/metrics`)).text(), /^mailfront_throttle_redis_up 0$/m);
    } finally {
      await redis.startAgain();
    }
  });

  test('the Redis series is there only while the throttle uses Redis, across reloads', async () => {
    const { port } = two.mailfront.httpAddress()!;
    const series = async (): Promise<string | undefined> => (await (await fetch(`http://127.0.0.1:${port}/metrics`)).text()).match(/^mailfront_throttle_redis_up .*$/m)?.[0];
    const original = readFileSync(two.configFile, 'utf8');
    const reloadWith = async (throttle: Record<string, unknown>): Promise<void> => {
      const config = parse(original) as Record<string, unknown>;
      config['throttle'] = { ...(config['throttle'] as Record<string, unknown>), ...throttle };
      writeFileSync(two.configFile, stringify(config));
      const result = await two.mailfront.reload();
      assert.equal(result.ok, true, result.error);
    };
    // Redis may still be coming back from the test above (the client retries every second).
    const up = async (): Promise<void> => {
      const deadline = Date.now() + 5_000;
      while ((await series()) !== 'mailfront_throttle_redis_up 1' && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      assert.equal(await series(), 'mailfront_throttle_redis_up 1');
    };
    try {
      await up();
      // Redis still named, the throttle off: no counters are shared, and no outage is shown.
      await reloadWith({ enabled: false });
      assert.equal(await series(), undefined);
      await reloadWith({ enabled: true, redis: undefined });
      assert.equal(await series(), undefined);
      writeFileSync(two.configFile, original);
      assert.equal((await two.mailfront.reload()).ok, true);
      await up();
    } finally {
      writeFileSync(two.configFile, original);
    }
  });
});

describe('connection limits', () => {
  let front: Front;
  before(async () => {
    front = await startFront({ slapd, stores: stores(), connectionLimits: { max_connections: 6, max_connections_per_address: 3, max_sessions_per_user: 1 } });
  });
  after(async () => {
    await front?.stop();
  });

  test('per address: the next connection gets BYE [LIMIT] (IMAP) / -ERR [SYS/TEMP] (POP3)', async () => {
    const held = await Promise.all([1, 2, 3].map(() => LineClient.connect(front.imapTrustedPort, { localAddress: '127.0.0.4' })));
    try {
      for (const c of held) await c.readLine();
      const imap = await LineClient.connect(front.imapTrustedPort, { localAddress: '127.0.0.4' });
      assert.match(await imap.readLine(), /^\* BYE \[LIMIT\] /);
      imap.close();
      const pop3 = await LineClient.connect(front.pop3TrustedPort, { localAddress: '127.0.0.4' });
      // Worded so that fetchmail, which reads the words and not the code, takes it as temporary.
      assert.match(await pop3.readLine(), /^-ERR \[SYS\/TEMP\] .*\bwait\b/);
      pop3.close();
    } finally {
      for (const c of held) c.close();
    }
  });

  test('in total, with only sessions held (a connection not logged in would be evicted: eviction.test.ts): BYE [UNAVAILABLE]; per user: a second session gets NO [LIMIT]', async () => {
    await connectionsReleased(front);
    const held: LineClient[] = [];
    try {
      for (const [i, user] of ['tina', 'tom', 'ted', 'una', 'uwe', 'val'].entries()) {
        const c = await LineClient.connect(front.imapTrustedPort, { localAddress: `127.0.0.${21 + i}` });
        held.push(c);
        await c.readLine();
        c.send(`a LOGIN ${user} ${PASSWORD}`);
        assert.match(await c.readLine(), /^a OK /);
      }
      const extra = await LineClient.connect(front.imapTrustedPort, { localAddress: '127.0.0.27' });
      assert.match(await extra.readLine(), /^\* BYE \[UNAVAILABLE\] /);
      extra.close();
    } finally {
      for (const c of held) c.close();
    }
    await connectionsReleased(front);
    const first = await LineClient.connect(front.imapTrustedPort);
    try {
      await first.readLine();
      first.send(`a LOGIN wes ${PASSWORD}`);
      assert.match(await first.readLine(), /^a OK /);
      assert.match((await imapLogin(front, 'wes', PASSWORD)).line, /^t1 NO \[LIMIT\] /);
    } finally {
      first.close();
    }
    await connectionsReleased(front);
    assert.equal(front.mailfront.limiter.sessionsOf('wes'), 0);
    assert.match((await imapLogin(front, 'wes', PASSWORD)).line, /^t1 OK /);
  });
});

describe('connection limits and trusted webmail servers', () => {
  let front: Front;
  before(async () => {
    front = await startFront({
      slapd,
      stores: stores(),
      trustedNetworks: ['127.0.0.5/32', '2001:db8:1:2::10/128'],
      connectionLimits: { max_connections: 50, max_connections_per_address: 2, max_sessions_per_user: 10 },
    });
  });
  after(async () => {
    await front?.stop();
  });

  test("a trusted IPv6 webmail server's connections do not count against the untrusted addresses of its /64", async () => {
    // A balancer's PROXY listener, to give connections IPv6 client addresses.
    const port = await freePort();
    const doc = parse(readFileSync(front.configFile, 'utf8')) as { listeners: unknown[] };
    doc.listeners.push({ name: 'imap-balanced', protocol: 'imap', host: '127.0.0.1', port, tls: 'none', plaintext_without_tls: true, proxy_protocol: { trusted_networks: ['127.0.0.0/8'] } });
    writeFileSync(front.configFile, stringify(doc));
    const reload = await fetch(`http://127.0.0.1:${front.mailfront.httpAddress()!.port}/api/reload`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    assert.equal(reload.status, 200);
    const held: LineClient[] = [];
    const from = async (address: string): Promise<string> => {
      const c = await LineClient.connect(port);
      held.push(c);
      c.write(`PROXY TCP6 ${address} 2001:db8::1 40000 143\r\n`);
      return c.readLine();
    };
    try {
      for (let i = 0; i < 3; i++) assert.match(await from('2001:db8:1:2::10'), /^\* OK /, 'the webmail server is exempt');
      assert.match(await from('2001:db8:1:2::20'), /^\* OK /, 'a neighbour in the same /64');
      assert.match(await from('2001:db8:1:2::21'), /^\* OK /, 'another one');
      assert.match(await from('2001:db8:1:2::22'), /^\* BYE \[LIMIT\] /, 'the /64 is at its limit of 2');
    } finally {
      for (const c of held) c.close();
    }
    await connectionsReleased(front);
  });

  test('an address a trusted webmail server forwards (IMAP ID) counts per address: over the limit its login gets NO [LIMIT], and its direct connections BYE [LIMIT]', async () => {
    await connectionsReleased(front);
    const held: LineClient[] = [];
    /** A connection from the webmail server 127.0.0.5 that forwards `claimed`, and its login's answer. */
    const forwardedLogin = async (claimed: string, user: string): Promise<[LineClient, string]> => {
      const c = await LineClient.connect(front.imapTrustedPort, { localAddress: '127.0.0.5' });
      held.push(c);
      await c.readLine();
      assert.equal((await c.imap(`ID ("x-originating-ip" "${claimed}")`)).status, 'OK');
      c.send(`t1 LOGIN ${user} ${PASSWORD}`);
      let line = await c.readLine(10_000);
      while (!line.startsWith('t1 ')) line = await c.readLine(10_000);
      return [c, line];
    };
    try {
      assert.match((await forwardedLogin('127.0.0.9', 'una'))[1], /^t1 OK /);
      const [second, secondAnswer] = await forwardedLogin('127.0.0.9', 'uwe');
      assert.match(secondAnswer, /^t1 OK /);
      assert.equal(front.mailfront.limiter.connectionsFrom('127.0.0.9'), 2);
      assert.equal(front.mailfront.limiter.connectionsFrom('127.0.0.5'), 0, "the webmail server's own address is not counted");
      const direct = await LineClient.connect(front.imapTrustedPort, { localAddress: '127.0.0.9' });
      held.push(direct);
      assert.match(await direct.readLine(), /^\* BYE \[LIMIT\] /, 'the forwarded sessions count as connections from 127.0.0.9');
      const [third, refused] = await forwardedLogin('127.0.0.9', 'val');
      assert.match(refused, /^t1 NO \[LIMIT\] Too many connections from your address/);
      const line = await waitForLog(front, (l) => l['event'] === 'session.login_failed' && l['code'] === 'ADDRESS_CONNECTION_LIMIT');
      assert.equal(line['client'], '127.0.0.9');
      assert.match((await forwardedLogin('127.0.0.10', 'vic'))[1], /^t1 OK /, 'another address the server forwards');
      // One of 127.0.0.9's sessions ends: the refused connection's next login goes in.
      second.close();
      const deadline = Date.now() + 5_000;
      while (front.mailfront.limiter.connectionsFrom('127.0.0.9') > 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      third.send(`t2 LOGIN val ${PASSWORD}`);
      assert.match(await third.readLine(10_000), /^t2 OK /);
      assert.equal(front.mailfront.limiter.connectionsFrom('127.0.0.9'), 2);
    } finally {
      for (const c of held) c.close();
    }
    await connectionsReleased(front);
  });
});
