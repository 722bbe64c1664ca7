/**
 * The throttle's defaults against real traffic, through running mailfront instances (real slapd,
 * Dovecot and redis-server), after the rv-defaults review:
 * - a NAT exempted from per-address counting (throttle.exempt_networks, connection_limits.exempt_networks)
 *   is not trusted: its ID claims are ignored, so that no one behind it can get another address
 *   refused or shown as theirs; its users are still counted per user;
 * - an attacker who knows a user name cannot lock the user out: the addresses the user logged in
 *   from (here, or on another instance through Redis) are spared the user's refusal, and the
 *   user's login there lifts nothing for the guessers;
 * - IPv6 clients are counted per /56 (throttle.ipv6_prefix_bits), not per /64;
 * - a subject keeps as many wrong-password fingerprints as its limit: nine phones retrying stale
 *   passwords behind one NAT count nine failures, not one at every retry (in memory and in Redis).
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { createClient } from '@redis/client';
import { parse, stringify } from 'yaml';
import { LineClient, freePort, startDovecot, startRedis, startSlapd } from './servers/index.js';
import type { Dovecot, Redis, Slapd } from './servers/index.js';
import { ADMIN_TOKEN, registerPasswords, startFront, waitForLog } from './front.js';
import type { Front } from './front.js';

const PASSWORD = 'Defaults-pw-7c2e';
const PHONES = Array.from({ length: 9 }, (_, i) => `phone${i}`);
const NAT_USERS = Array.from({ length: 6 }, (_, i) => `natuser${i}`);
const V6_USERS = Array.from({ length: 8 }, (_, i) => `v6user${i}`);
const USERS = ['victim', 'victim2', 'officeuser', 'mallory', 'innocent', ...PHONES, ...NAT_USERS, ...V6_USERS];
const KEY_PREFIX = 'defaults:';
const NAT = '127.0.0.60';

let slapd: Slapd;
let dovecot: Dovecot;
let redis: Redis;
/** Counters of its own. */
let front: Front;
/** Two instances sharing Redis. */
let shared: [Front, Front];

const THROTTLE = { enabled: true, base_delay_ms: 0, max_delay_ms: 0, failures_per_user: 3, failures_per_address: 12, refusal_ms: 60_000 };

before(async () => {
  [slapd, dovecot, redis] = await Promise.all([
    startSlapd({ users: USERS.map((uid) => ({ uid, password: PASSWORD, store: 'alpha' })) }),
    startDovecot({ name: 'defaults', users: USERS.map((name) => ({ name, password: PASSWORD })) }),
    startRedis(),
  ]);
  registerPasswords(PASSWORD);
  const stores = { alpha: { currentMaster: 's1', slots: { s1: { imapPort: dovecot.imapPort, pop3Port: dovecot.pop3Port } } } };
  const common = { slapd, stores, trustedNetworks: ['127.0.0.9/32'], session: { auth_failure_delay_ms: 50 } };
  front = await startFront({
    ...common,
    throttle: { ...THROTTLE, exempt_networks: [`${NAT}/32`] },
    connectionLimits: { max_connections_per_address: 3, exempt_networks: [`${NAT}/32`] },
  });
  const withRedis = { ...THROTTLE, redis: { url: redis.url, key_prefix: KEY_PREFIX, timeout_ms: 500 } };
  shared = [await startFront({ ...common, throttle: withRedis }), await startFront({ ...common, throttle: withRedis })];
  for (const f of shared) await waitForLog(f, (l) => l['event'] === 'throttle.redis_state' && l['state'] === 'up', 10_000);
});

after(async () => {
  await Promise.all([front?.stop(), ...(shared ?? []).map((f) => f?.stop())]);
  await Promise.all([slapd?.stop(), dovecot?.stop(), redis?.stop()]);
});

/** A LOGIN of `user` from `localAddress` (after an ID naming `claim`, if given) on `port`; its tagged answer. */
async function login(port: number, localAddress: string, user: string, password: string, claim?: string): Promise<string> {
  registerPasswords(password);
  const c = await LineClient.connect(port, { localAddress });
  try {
    await c.readLine();
    if (claim !== undefined) assert.equal((await c.imap(`ID ("x-originating-ip" "${claim}")`)).status, 'OK');
    c.send(`t1 LOGIN ${user} ${password}`);
    for (;;) {
      const line = await c.readLine(15_000);
      if (line.startsWith('t1 ')) return line;
    }
  } finally {
    c.close();
  }
}

const OK = /^t1 OK /;
const LIMIT = /^t1 NO \[LIMIT\] /;
const WRONG = /^t1 NO \[AUTHENTICATIONFAILED\] /;

describe('throttle.exempt_networks and connection_limits.exempt_networks: a NAT exempt, not trusted', () => {
  test("wrong passwords from the NAT claiming an office's address neither refuse the office nor are believed; a forged address never reaches the logs or Dovecot", async () => {
    const port = front.imapTrustedPort;
    assert.match(await login(port, '127.0.0.70', 'officeuser', PASSWORD), OK);
    const mark = front.logs.length;
    // More wrong passwords than failures_per_address (12), each as another user (3 each: the user's limit).
    for (let i = 0; i < 14; i++) assert.match(await login(port, NAT, NAT_USERS[i % 5]!, `nat-wrong-${i}`, '127.0.0.70'), /^t1 NO \[(?:AUTHENTICATIONFAILED|LIMIT)\] /);
    const ignored = front.logs.slice(mark).filter((l) => l['event'] === 'session.client_id_ignored');
    assert.ok(ignored.length > 0 && ignored.every((l) => l['trusted'] === false), 'the claims were ignored');
    assert.equal(front.logs.slice(mark).filter((l) => l['event'] === 'session.client_id_honoured').length, 0);
    assert.deepEqual(front.logs.slice(mark).filter((l) => l['event'] === 'throttle.refusing' && l['by'] === 'address'), [], 'no address refused');
    assert.match(await login(port, '127.0.0.70', 'officeuser', PASSWORD), OK, 'the office is not refused');
    assert.match(await login(port, NAT, 'innocent', PASSWORD), OK, 'nor the NAT: it is not counted per address');

    const spliced = front.logs.length;
    assert.match(await login(port, NAT, 'mallory', PASSWORD, '198.51.100.99'), OK);
    const line = await waitForLog(front, (l) => l['event'] === 'session.spliced' && l['user'] === 'mallory', 5_000, spliced);
    assert.equal(line['client'], NAT, 'the address is the NAT, not the one claimed');
    assert.equal(line['via'], undefined);
    // Dovecot's log process writes the login's line after the login is answered: on a loaded machine, not yet when it is.
    const mallorysLogins = (): string[] => readFileSync(dovecot.logFile, 'utf8').split('\n').filter((l) => /user=<mallory>/.test(l) && /Login/.test(l));
    for (let i = 0; i < 100 && mallorysLogins().length === 0; i++) await sleep(100);
    const dovecotLog = mallorysLogins();
    assert.ok(dovecotLog.length > 0, `no login of mallory in Dovecot's log ${dovecot.logFile}`);
    assert.ok(dovecotLog.every((l) => !/198\.51\.100\.99/.test(l)), dovecotLog.join('\n'));
  });

  test("users behind the NAT are still counted per user: the user's limit refuses the user", async () => {
    const answers: string[] = [];
    for (let i = 0; i < 4; i++) answers.push(await login(front.imapTrustedPort, NAT, 'natuser5', `per-user-wrong-${i}`));
    assert.deepEqual(answers.map((a) => (WRONG.test(a) ? 'wrong' : LIMIT.test(a) ? 'limit' : a)), ['wrong', 'wrong', 'wrong', 'limit']);
  });

  test('connections from the NAT are not counted against max_connections_per_address; another address is', async () => {
    const held: LineClient[] = [];
    try {
      for (let i = 0; i < 5; i++) {
        const c = await LineClient.connect(front.imapTrustedPort, { localAddress: NAT });
        held.push(c);
        assert.match(await c.readLine(), /^\* OK /, `connection ${i + 1} from the NAT`);
      }
      for (let i = 0; i < 3; i++) {
        const c = await LineClient.connect(front.imapTrustedPort, { localAddress: '127.0.0.61' });
        held.push(c);
        assert.match(await c.readLine(), /^\* OK /);
      }
      const over = await LineClient.connect(front.imapTrustedPort, { localAddress: '127.0.0.61' });
      held.push(over);
      assert.match(await over.readLine(), /^\* BYE \[LIMIT\] /);
    } finally {
      for (const c of held) c.close();
    }
  });
});

describe('known addresses: a user locked out by guessers still logs in from where the user logged in before', () => {
  test("guesses from other addresses refuse the user, but not the user's phone at its usual address nor the webmail forwarding the user's address; the user's login lifts nothing for the guessers", async () => {
    const port = front.imapTrustedPort;
    assert.match(await login(port, '127.0.0.20', 'victim', PASSWORD), OK, "the victim's phone");
    assert.match(await login(port, '127.0.0.9', 'victim', PASSWORD, '127.0.0.22'), OK, 'the victim through the webmail');
    for (let i = 0; i < 3; i++) assert.match(await login(port, `127.0.1.${i + 1}`, 'victim', `guess-${i}`), WRONG);
    assert.match(await login(port, '127.0.1.9', 'victim', 'guess-9'), LIMIT, 'the user is refused');
    assert.match(await login(port, '127.0.0.20', 'victim', PASSWORD), OK, "the victim's phone at its usual address");
    assert.match(await login(port, '127.0.0.9', 'victim', PASSWORD, '127.0.0.22'), OK, 'the webmail forwarding the address the victim logged in from');
    assert.match(await login(port, '127.0.1.10', 'victim', 'guess-10'), LIMIT, "the victim's logins did not lift the refusal");
    assert.match(await login(port, '127.0.0.21', 'victim', PASSWORD), LIMIT, 'an address the victim never logged in from is refused, the password right or not');
    // The webmail's own address (not counted per address) is no known address: the user's limit is all that bounds guesses through it.
    assert.match(await login(port, '127.0.0.9', 'victim', PASSWORD), LIMIT);
    // A known address's own failures still count, for the user and the address.
    assert.match(await login(port, '127.0.0.20', 'victim', 'a-typo-of-mine'), WRONG);
  });

  test('through Redis: an address the user logged in from on one instance is known to the other', async () => {
    const [a, b] = shared;
    assert.match(await login(a.imapTrustedPort, '127.0.0.30', 'victim2', PASSWORD), OK);
    for (let i = 0; i < 3; i++) assert.match(await login(b.imapTrustedPort, `127.0.2.${i + 1}`, 'victim2', `guess-${i}`), WRONG);
    assert.match(await login(a.imapTrustedPort, '127.0.2.9', 'victim2', 'guess-9'), LIMIT);
    assert.match(await login(b.imapTrustedPort, '127.0.0.30', 'victim2', PASSWORD), OK, 'known through Redis');
    assert.match(await login(b.imapTrustedPort, '127.0.0.31', 'victim2', PASSWORD), LIMIT);
    const client = createClient({ url: redis.url });
    await client.connect();
    try {
      const known = await client.hGetAll(`${KEY_PREFIX}k:victim2`);
      assert.deepEqual(Object.keys(known), ['127.0.0.30']);
      const ttl = await client.pTTL(`${KEY_PREFIX}k:victim2`);
      assert.ok(ttl > 23 * 3_600_000 && ttl <= 24 * 3_600_000, `expires in ${ttl} ms`);
    } finally {
      await client.quit();
    }
  });
});

describe('throttle.ipv6_prefix_bits', () => {
  test('guesses from many /64s of one /56 share one failures_per_address; another /56 is not refused', async () => {
    const port = await freePort();
    const doc = parse(readFileSync(front.configFile, 'utf8')) as { listeners: unknown[] };
    doc.listeners.push({ name: 'imap-balanced', protocol: 'imap', host: '127.0.0.1', port, tls: 'none', plaintext_without_tls: true, proxy_protocol: { trusted_networks: ['127.0.0.0/8'] } });
    writeFileSync(front.configFile, stringify(doc));
    const reload = await fetch(`http://127.0.0.1:${front.mailfront.httpAddress()!.port}/api/reload`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    assert.equal(reload.status, 200);
    const v6login = async (client: string, user: string, password: string): Promise<string> => {
      registerPasswords(password);
      const c = await LineClient.connect(port);
      try {
        c.write(`PROXY TCP6 ${client} 2001:db8:ffff::1 40000 143\r\n`);
        await c.readLine();
        c.send(`t1 LOGIN ${user} ${password}`);
        for (;;) {
          const line = await c.readLine(15_000);
          if (line.startsWith('t1 ')) return line;
        }
      } finally {
        c.close();
      }
    };
    // 14 guesses, each from another /64 of 2001:db8:aa:bb00::/56, two per user (under the user's limit of 3).
    const answers: string[] = [];
    for (let i = 0; i < 14; i++) answers.push(await v6login(`2001:db8:aa:bb${i.toString(16).padStart(2, '0')}::1`, V6_USERS[i % 7]!, `v6-guess-${i}`));
    assert.equal(answers.filter((a) => WRONG.test(a)).length, 12, answers.join('\n'));
    assert.equal(answers.filter((a) => LIMIT.test(a)).length, 2);
    assert.match(await v6login('2001:db8:aa:cc00::1', 'v6user7', PASSWORD), OK, 'a neighbour in another /56');
  });
});

describe('fingerprints kept per subject: as many as its limit', () => {
  /** Nine phones with stale passwords behind one address retry in turn, three rounds; then another user logs in there. */
  async function stalePhones(port: number, address: string): Promise<{ answers: string[]; innocent: string }> {
    const answers: string[] = [];
    for (let round = 0; round < 3; round++) for (const phone of PHONES) answers.push(await login(port, address, phone, `stale-${phone}`));
    return { answers, innocent: await login(port, address, 'innocent', PASSWORD) };
  }

  test('in memory: nine stale passwords retried count nine failures; the address is never refused', async () => {
    const { answers, innocent } = await stalePhones(front.imapTrustedPort, '127.0.0.50');
    assert.deepEqual(answers.filter((a) => !WRONG.test(a)), []);
    assert.match(innocent, OK);
  });

  test('in Redis: the same', async () => {
    const { answers, innocent } = await stalePhones(shared[0].imapTrustedPort, '127.0.0.51');
    assert.deepEqual(answers.filter((a) => !WRONG.test(a)), []);
    assert.match(innocent, OK);
    const client = createClient({ url: redis.url });
    await client.connect();
    try {
      assert.equal(await client.hGet(`${KEY_PREFIX}a:127.0.0.51`, 'n'), '9');
    } finally {
      await client.quit();
    }
  });
});
