/**
 * The user told of the directory's password policy warnings (directory.password_policy's alerts),
 * with real slapd and its ppolicy overlay, Dovecot and Cyrus behind: an IMAP login let in with a
 * password about to expire gets `* OK [ALERT] <text>` before its tagged OK (raw socket and
 * imapflow), at most once per alert_interval_ms per instance, again after it; a grace login gets
 * its alert every time, the logins left counting down; a login the cache of logins answers (no
 * bind) is told the same, the time left as of then; "" tells nothing; POP3 and ManageSieve logins
 * are as before; a backend's own alert (Cyrus's plaintextloginalert) still reaches the client
 * beside mailfront's. session.spliced says whether the client was told (passwordAlert).
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import type { AddressInfo, Server } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { ImapFlow } from 'imapflow';
import { parse, stringify } from 'yaml';
import { LineClient, slapdPolicyDn, startCyrus, startDovecot, startSlapd } from './servers/index.js';
import type { Cyrus, Dovecot, Slapd, SlapdUser } from './servers/index.js';
import { registerPasswords, registerSecrets, startFront, waitForLog } from './front.js';
import type { Front } from './front.js';

const PASSWORD = 'Ppalert-pw-3c8e';
const CYRUS_PROXY = { name: 'proxyadmin', password: 'Ppalert-cyrus-proxy-9d' };
const CYRUS_ALERT = 'Cyrus says: plaintext logins will end soon';
/** A password last changed long ago: expired under any pwdMaxAge. */
const LONG_AGO = '20000101000000Z';
/** How often a user is told, in the fronts that tell: short, for the case that waits it out. */
const INTERVAL_MS = 1_500;
const EXPIRING_TEXT = 'Change it at https://password.example.org/ : {days} days ({hours} hours) left.';
const GRACE_TEXT = 'Your password has expired: {grace} more logins, then change it at https://password.example.org/';

/**
 * Half an hour ago as a GeneralizedTime (pwdChangedTime): 9 days and 239.5 hours left, far from a
 * whole day or hour whichever second slapd and mailfront count it in.
 */
function generalizedHalfHourAgo(): string {
  return `${new Date(Date.now() - 1_800_000).toISOString().replace(/[-:T]/g, '').slice(0, 14)}Z`;
}

const POLICIES = {
  // Expires ten days after its change, warned of twenty days before: always warned, 9 days (239 hours) left (changed half an hour ago).
  expiring: { pwdMaxAge: '864000', pwdExpireWarning: '1728000', pwdGraceAuthNLimit: '0' },
  grace: { pwdMaxAge: '86400', pwdGraceAuthNLimit: '3' },
};

const EXPIRING_USERS = ['ann', 'eve', 'fay', 'cid', 'dee', 'gus'];
const GRACE_USERS = ['bea', 'hal', 'ida'];

/** A user of the store behind the backend that greets when a test says (the reload case). */
const HELD_USER = 'jo';

function user(uid: string): SlapdUser {
  const grace = GRACE_USERS.includes(uid);
  return { uid, password: PASSWORD, store: uid === 'gus' ? 'gamma' : uid === HELD_USER ? 'delta' : 'alpha', attributes: { pwdPolicySubentry: slapdPolicyDn(grace ? 'grace' : 'expiring'), pwdChangedTime: grace ? LONG_AGO : generalizedHalfHourAgo() } };
}

/** The expiring alert of EXPIRING_TEXT with 9 days left. */
const EXPIRING_ALERT = '* OK [ALERT] Change it at https://password.example.org/ : 9 days (239 hours) left.';

let slapd: Slapd;
let a1: Dovecot;
let cyrus: Cyrus;

before(async () => {
  registerPasswords(PASSWORD);
  registerSecrets([CYRUS_PROXY.password]);
  [slapd, a1, cyrus] = await Promise.all([
    startSlapd({ ppolicy: { policies: POLICIES }, users: [...EXPIRING_USERS, ...GRACE_USERS, HELD_USER].map(user) }),
    startDovecot({ name: 'ppalert-a1', users: [...EXPIRING_USERS, ...GRACE_USERS].map((name) => ({ name, password: PASSWORD })), sieve: true }),
    startCyrus({ users: [{ name: 'gus', password: PASSWORD }], proxyAdmin: CYRUS_PROXY, imapdConf: [`plaintextloginalert: ${CYRUS_ALERT}`] }),
  ]);
});

after(async () => {
  await Promise.all([slapd?.stop(), a1?.stop(), cyrus?.stop()]);
});

function stores(): Parameters<typeof startFront>[0]['stores'] {
  return {
    alpha: { currentMaster: 'a1', slots: { a1: { imapPort: a1.imapPort, pop3Port: a1.pop3Port, sievePort: a1.sievePort! } } },
    // Replay: mailfront logs in with LOGIN, after which Cyrus sends its plaintextloginalert.
    gamma: { currentMaster: 'c1', slots: { c1: { imapPort: cyrus.imapPort } } },
  };
}

/** An IMAP LOGIN through mailfront on a raw socket: the lines up to its tagged answer, and the client, still logged in. */
async function imapLogin(front: Front, name: string): Promise<{ lines: string[]; client: LineClient }> {
  const client = await LineClient.connect(front.imapTrustedPort);
  await client.readLine();
  client.send(`t1 LOGIN "${name}" ${PASSWORD}`);
  const lines: string[] = [];
  for (let line = await client.readLine(); ; line = await client.readLine()) {
    lines.push(line);
    if (line.startsWith('t1 ')) break;
  }
  return { lines, client };
}

/** imapLogin() and a LOGOUT: the lines of the login's answer. */
async function imapLoginLines(front: Front, name: string): Promise<string[]> {
  const { lines, client } = await imapLogin(front, name);
  try {
    assert.match(lines.at(-1) ?? '', /^t1 OK /, lines.join(' | '));
    await client.imap('LOGOUT');
  } finally {
    client.close();
  }
  return lines;
}

/** The ALERT lines of a login's answer. */
function alerts(lines: readonly string[]): string[] {
  return lines.filter((line) => /^\* (OK|NO) \[ALERT\]/i.test(line));
}

/** The session.spliced line of `name`'s login logged since `mark`. */
function spliced(front: Front, name: string, mark: number): Promise<Record<string, unknown>> {
  return waitForLog(front, (l) => l['event'] === 'session.spliced' && l['user'] === name, 5_000, mark);
}

async function pop3Login(front: Front, name: string): Promise<string> {
  const c = await LineClient.connect(front.pop3TrustedPort);
  try {
    await c.readLine();
    await c.pop3(`USER ${name}`);
    c.send(`PASS ${PASSWORD}`);
    return await c.readLine();
  } finally {
    c.close();
  }
}

async function sieveLogin(front: Front, name: string): Promise<string> {
  const c = await LineClient.connect(front.sieveTrustedPort!);
  try {
    for (let line = await c.readLine(); !line.startsWith('OK'); line = await c.readLine());
    c.send(`AUTHENTICATE "PLAIN" "${Buffer.from(`\0${name}\0${PASSWORD}`).toString('base64')}"`);
    return await c.readLine();
  } finally {
    c.close();
  }
}

describe('with alerts configured, caches off', () => {
  let front: Front;
  before(async () => {
    front = await startFront({ slapd, stores: stores(), sieve: true, directory: { password_policy: { expiring_alert: EXPIRING_TEXT, grace_alert: GRACE_TEXT, alert_interval_ms: INTERVAL_MS } } });
  });
  after(async () => {
    await front?.stop();
  });

  test('an expiring password: told before the tagged OK, not again within alert_interval_ms, told again after it', async () => {
    const mark = front.logs.length;
    const first = await imapLoginLines(front, 'ann');
    assert.deepEqual(first.slice(0, -1), [EXPIRING_ALERT], 'the alert, and only it, before the tagged OK');
    const told = await spliced(front, 'ann', mark);
    assert.equal(told['passwordWarning'], 'expiring');
    assert.equal(told['passwordAlert'], 'told');
    assert.equal(told['protocol'], 'imap');
    // The directory's own event is as it was.
    const event = await waitForLog(front, (l) => l['event'] === 'directory.password_expiring' && l['user'] === 'ann', 5_000, mark);
    assert.equal(event['expiresInDays'], 9);

    const secondMark = front.logs.length;
    assert.deepEqual(alerts(await imapLoginLines(front, 'ann')), [], 'not told again within the interval');
    assert.equal((await spliced(front, 'ann', secondMark))['passwordAlert'], 'interval');
    // A client's other connections, all at once (Thunderbird opens several): none told either.
    const many = await Promise.all([1, 2, 3].map(() => imapLoginLines(front, 'ann')));
    assert.deepEqual(many.flatMap(alerts), []);

    await sleep(INTERVAL_MS + 200);
    const thirdMark = front.logs.length;
    assert.deepEqual(alerts(await imapLoginLines(front, 'ann')), [EXPIRING_ALERT], 'told again once the interval passed');
    assert.equal((await spliced(front, 'ann', thirdMark))['passwordAlert'], 'told');
  });

  test('a grace login is told every time, the logins left counting down; then expired', async () => {
    for (const left of [2, 1, 0]) {
      const mark = front.logs.length;
      assert.deepEqual(alerts(await imapLoginLines(front, 'bea')), [`* OK [ALERT] Your password has expired: ${left} more logins, then change it at https://password.example.org/`]);
      const told = await spliced(front, 'bea', mark);
      assert.deepEqual([told['passwordWarning'], told['passwordAlert']], ['grace', 'told']);
    }
    const { lines, client } = await imapLogin(front, 'bea');
    client.close();
    assert.deepEqual(lines, ['t1 NO [EXPIRED] Your password has expired, please change it and log in again.']);
  });

  test('POP3 and ManageSieve logins are as before, nothing told, and they use up no IMAP alert', async () => {
    const mark = front.logs.length;
    assert.match(await pop3Login(front, 'eve'), /^\+OK/);
    assert.equal((await spliced(front, 'eve', mark))['passwordAlert'], 'protocol');
    const sieveMark = front.logs.length;
    assert.match(await sieveLogin(front, 'eve'), /^OK/);
    const sieve = await spliced(front, 'eve', sieveMark);
    assert.deepEqual([sieve['protocol'], sieve['passwordAlert']], ['managesieve', 'protocol']);
    // A POP3 grace login is spent all the same, and said in the log only.
    const graceMark = front.logs.length;
    assert.match(await pop3Login(front, 'ida'), /^\+OK/);
    assert.deepEqual([(await spliced(front, 'ida', graceMark))['passwordAlert']], ['protocol']);
    // The user's IMAP client is told all the same.
    assert.deepEqual(alerts(await imapLoginLines(front, 'eve')), [EXPIRING_ALERT]);
    assert.deepEqual(alerts(await imapLoginLines(front, 'ida')), ['* OK [ALERT] Your password has expired: 1 more logins, then change it at https://password.example.org/']);
  });

  test('imapflow reads the alert as an untagged OK [ALERT] of its login, and logs in', async () => {
    const server: string[] = [];
    const record = (entry: { src?: string; msg?: string }): void => {
      if (entry.src === 's' && typeof entry.msg === 'string') server.push(entry.msg);
    };
    const none = (): void => undefined;
    const client = new ImapFlow({ host: '127.0.0.1', port: front.imapTrustedPort, secure: false, auth: { user: 'fay', pass: PASSWORD }, logger: { debug: record, trace: record, info: none, warn: none, error: none, fatal: none } });
    await client.connect();
    try {
      assert.ok(client.authenticated, 'logged in');
      const alert = server.findIndex((line) => line.startsWith('* OK [ALERT] Change it at https://password.example.org/ : 9 days (239 hours) left.'));
      assert.ok(alert >= 0, server.join(' | '));
      assert.match(server[alert + 1] ?? '', /^\d+ OK \[CAPABILITY [^\]]*\] Logged in$/, `the alert comes just before the login's tagged OK: ${server.join(' | ')}`);
    } finally {
      await client.logout();
    }
  });
});

describe('with the auth cache on', () => {
  let front: Front;
  before(async () => {
    front = await startFront({ slapd, stores: stores(), directory: { auth_cache_ttl_ms: 60_000, password_policy: { expiring_alert: EXPIRING_TEXT, grace_alert: GRACE_TEXT, alert_interval_ms: INTERVAL_MS } } });
  });
  after(async () => {
    await front?.stop();
  });

  test('a login the cache answers (no bind, no warning of its own) is told as the first was, once the interval has passed', async () => {
    const mark = front.logs.length;
    assert.deepEqual(alerts(await imapLoginLines(front, 'cid')), [EXPIRING_ALERT]);
    assert.deepEqual(alerts(await imapLoginLines(front, 'cid')), []);
    await sleep(INTERVAL_MS + 200);
    const cachedMark = front.logs.length;
    assert.deepEqual(alerts(await imapLoginLines(front, 'cid')), [EXPIRING_ALERT], 'the cached login is told, the time left as of now');
    assert.equal((await spliced(front, 'cid', cachedMark))['passwordAlert'], 'told');
    assert.equal(front.logs.slice(mark).filter((l) => l['event'] === 'directory.password_expiring').length, 1, 'one bind: the other logins came from the cache');
  });

  test('a cached grace login is told every time, with the logins left as the bind said (it uses none)', async () => {
    const mark = front.logs.length;
    for (let i = 0; i < 3; i++) assert.deepEqual(alerts(await imapLoginLines(front, 'hal')), ['* OK [ALERT] Your password has expired: 2 more logins, then change it at https://password.example.org/']);
    assert.equal(front.logs.slice(mark).filter((l) => l['event'] === 'directory.password_grace_login').length, 1);
  });
});

describe('with the alerts\' texts ""', () => {
  let front: Front;
  before(async () => {
    front = await startFront({ slapd, stores: stores(), directory: { password_policy: { expiring_alert: '', grace_alert: '' } } });
  });
  after(async () => {
    await front?.stop();
  });

  test('nothing is told, and the log says the alert is off', async () => {
    for (const name of ['dee', 'dee', 'ida']) {
      const mark = front.logs.length;
      const lines = await imapLoginLines(front, name);
      assert.equal(lines.length, 1, lines.join(' | '));
      assert.equal((await spliced(front, name, mark))['passwordAlert'], 'off');
    }
  });
});

describe('against Cyrus, which has an alert of its own', () => {
  let front: Front;
  before(async () => {
    // The default texts and interval.
    front = await startFront({ slapd, stores: stores() });
  });
  after(async () => {
    await front?.stop();
  });

  test("mailfront's alert before the login's tagged OK, Cyrus's own at the next command", async () => {
    const mark = front.logs.length;
    const { lines, client } = await imapLogin(front, 'gus');
    try {
      assert.equal(lines.length, 2, lines.join(' | '));
      assert.equal(lines[0], '* OK [ALERT] Your password expires in 9 days, please change it soon.');
      assert.match(lines[1]!, /^t1 OK /);
      const noop = await client.imap('NOOP');
      assert.equal(noop.status, 'OK');
      assert.deepEqual(alerts(noop.untagged), [`* OK [ALERT] ${CYRUS_ALERT}`]);
      await client.imap('LOGOUT');
    } finally {
      client.close();
    }
    const told = await spliced(front, 'gus', mark);
    assert.deepEqual([told['slot'], told['passwordAlert']], ['c1', 'told']);
  });
});

describe('a reload that turns the policy off while a login with a warning waits on its backend', () => {
  let front: Front;
  let backend: Server;
  let greet: () => void = () => undefined;
  before(async () => {
    // Greets when the test says, then answers OK to every command: the login waits on it.
    backend = createServer((socket) => {
      socket.on('error', () => undefined);
      greet = () => socket.write('* OK [CAPABILITY IMAP4rev1 ID] held backend ready\r\n');
      let buffered = '';
      socket.on('data', (data) => {
        buffered += data.toString('latin1');
        for (let end = buffered.indexOf('\r\n'); end >= 0; end = buffered.indexOf('\r\n')) {
          const tag = buffered.slice(0, end).split(' ')[0];
          buffered = buffered.slice(end + 2);
          socket.write(`${tag} OK done\r\n`);
        }
      });
    });
    await new Promise<void>((resolve) => backend.listen(0, '127.0.0.1', resolve));
    const port = (backend.address() as AddressInfo).port;
    front = await startFront({ slapd, stores: { ...stores(), delta: { currentMaster: 'd1', slots: { d1: { imapPort: port } } } }, directory: { password_policy: { expiring_alert: EXPIRING_TEXT } } });
  });
  after(async () => {
    await front?.stop();
    await new Promise((resolve) => backend?.close(resolve));
  });

  test('nothing is told: the policy in force when the login is answered says so, not the defaults', async () => {
    const mark = front.logs.length;
    const client = await LineClient.connect(front.imapTrustedPort);
    try {
      await client.readLine();
      client.send(`t1 LOGIN ${HELD_USER} ${PASSWORD}`);
      // The bind took the password with its warning; the backend has not greeted yet.
      await waitForLog(front, (l) => l['event'] === 'directory.password_expiring' && l['user'] === HELD_USER, 5_000, mark);
      const config = parse(readFileSync(front.configFile, 'utf8')) as { directory: Record<string, unknown> };
      config.directory['password_policy'] = false;
      writeFileSync(front.configFile, stringify(config));
      const reloaded = await front.mailfront.reload();
      assert.equal(reloaded.ok, true, reloaded.error);
      greet();
      const lines: string[] = [];
      for (let line = await client.readLine(); ; line = await client.readLine()) {
        lines.push(line);
        if (line.startsWith('t1 ')) break;
      }
      assert.deepEqual(alerts(lines), [], lines.join(' | '));
      assert.match(lines.at(-1)!, /^t1 OK /);
    } finally {
      client.close();
    }
    assert.equal((await spliced(front, HELD_USER, mark))['passwordAlert'], 'off');
  });
});
