/**
 * Master logins (directory.master_user_filter): a helpdesk staff member opens a user's mailbox
 * with the staff member's own password, as with Dovecot's master passdb: `LOGIN "alice*helpdesk1"
 * <helpdesk1's password>` or SASL PLAIN with authzid alice, authcid helpdesk1. Real servers:
 * slapd (staff entries marked with employeeType=mail-helpdesk, no mailStore), store alpha on
 * Dovecot in master-user mode (with ManageSieve), store gamma on Cyrus in sasl-authzid mode, store
 * delta in replay mode. The mailbox opened is the target's (its message, its Sieve scripts on
 * disk); a staff member the filter does not match, or a target that does not exist, gets
 * AUTHORIZATIONFAILED, no slot dialled, no failure counted; a wrong staff password is the usual
 * AUTHENTICATIONFAILED, counted against the staff member; the target's hold, a replay store,
 * revocation, the caches, the audit fields of the logs, the admin API and kick. With the filter
 * not set, everything is as before.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { LdapDirectory } from '../../src/auth/ldap.js';
import { LineClient, directoryConfigOf, ldifLine, quoteImap, startCyrus, startDovecot, startSlapd } from './servers/index.js';
import type { Cyrus, Dovecot, Slapd } from './servers/index.js';
import { ADMIN_TOKEN, assertNoRegisteredSecret, capturedLogger, makeMessage, registerPasswords, registerSecrets, startFront, waitForLog } from './front.js';
import type { Front, StoreSpec } from './front.js';

const PASSWORDS = {
  alice: 'Alice-master-pw-4e1f',
  bob: 'Bob-master-pw-77a0',
  carol: 'Carol-master-pw-2b9c',
  hank: 'Hank-master-pw-c3d8',
  rita: 'Rita-master-pw-9e02',
  helpdesk1: 'Helpdesk1-pw-5f6a',
  helpdesk2: 'Helpdesk2-pw-0d3b',
  helpdesk3: 'Helpdesk3-pw-a81e',
  helpdesk4: 'Helpdesk4-pw-7c2d',
  nohelp: 'Nohelp-pw-6c47',
};
const WRONG = ['Wrong-staff-pw-1a2b', 'Wrong-staff-pw-3c4d'];
const MASTER = { name: 'proxymaster', password: 'Proxy-master-pw-8b1d' };
const CYRUS_PROXY = { name: 'proxyadmin', password: 'Cyrus-proxy-pw-5e7f' };
const HOLD = 'mailfrontHold';
const REASON = 'Mailbox moving to a new server, please wait and try again later.';
const FILTER = '(&(objectClass=inetOrgPerson)(employeeType=mail-helpdesk)(uid={user}))';
const AUTHORIZATION_FAILED = 'NO [AUTHORIZATIONFAILED] Authorization failed.';
const AUTHENTICATION_FAILED = 'NO [AUTHENTICATIONFAILED] Authentication failed.';

const CLI = join(dirname(fileURLToPath(import.meta.url)), '../../src/cli/main.js');

const plain = (authzid: string, authcid: string, password: string): string => Buffer.from(`${authzid}\0${authcid}\0${password}`, 'utf8').toString('base64');
registerPasswords(...Object.values(PASSWORDS), ...WRONG, MASTER.password, CYRUS_PROXY.password);
registerSecrets([
  plain('alice', 'helpdesk1', PASSWORDS.helpdesk1),
  plain('carol', 'helpdesk1', PASSWORDS.helpdesk1),
  plain('alice', 'nohelp', PASSWORDS.nohelp),
  plain('ghost', 'helpdesk1', PASSWORDS.helpdesk1),
  plain('alice', 'helpdesk2', PASSWORDS.helpdesk2),
]);

let slapd: Slapd;
let a1: Dovecot;
let cyrus: Cyrus;

/** Marks `uid` as helpdesk staff (matched by FILTER), or takes the mark away, as an operator's ldapmodify does. */
async function setStaff(uid: string, on: boolean): Promise<void> {
  await slapd.modify(`dn: ${slapd.userDn(uid)}\nchangetype: modify\n${on ? `add: employeeType\n${ldifLine('employeeType', 'mail-helpdesk')}` : 'delete: employeeType'}\n`);
}

async function setHold(uid: string, value: string | undefined): Promise<void> {
  await slapd.modify(`dn: ${slapd.userDn(uid)}\nchangetype: modify\n${value === undefined ? `delete: ${HOLD}` : `replace: ${HOLD}\n${ldifLine(HOLD, value)}`}\n`);
}

/** An IMAP client past the greeting on `port`. */
async function imapClient(port: number): Promise<LineClient> {
  const c = await LineClient.connect(port);
  await c.readLine();
  return c;
}

/** `LOGIN name password` through mailfront's plaintext IMAP listener: the tagged answer, the connection closed. */
async function imapLogin(front: Front, name: string, password: string): Promise<string> {
  const c = await imapClient(front.imapTrustedPort);
  try {
    const result = await c.imap(`LOGIN ${quoteImap(name)} ${quoteImap(password)}`);
    return `${result.status} ${result.text}`;
  } finally {
    c.close();
  }
}

/** The subjects in the INBOX of the session `c` is logged in to. */
async function subjects(c: LineClient): Promise<string[]> {
  await c.imapOk('SELECT INBOX');
  const fetched = await c.imapOk('FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])');
  return fetched.untagged.filter((l) => l.startsWith('Subject: ')).map((l) => l.slice('Subject: '.length));
}

/** A POP3 client past the greeting. */
async function pop3Client(front: Front): Promise<LineClient> {
  const c = await LineClient.connect(front.pop3TrustedPort);
  await c.readLine();
  return c;
}

/** The Subject of message 1 of the POP3 session `c` is logged in to. */
async function pop3Subject(c: LineClient): Promise<string | undefined> {
  const lines = await c.pop3Multi('TOP 1 0');
  return lines.find((l) => l.startsWith('Subject: '))?.slice('Subject: '.length);
}

/** A ManageSieve client past the greeting. */
async function sieveClient(front: Front): Promise<LineClient> {
  const c = await LineClient.connect(front.sieveTrustedPort!);
  for (let line = await c.readLine(); !line.startsWith('OK'); line = await c.readLine());
  return c;
}

/** The lines since `mark` that show a slot dialled or a session spliced. */
function dials(front: Front, mark: number): Array<Record<string, unknown>> {
  return front.logs.slice(mark).filter((l) => l['event'] === 'session.backend_connected' || l['event'] === 'session.backend_retry' || l['event'] === 'session.spliced');
}

async function metric(front: Front, name: string, labels: string): Promise<number> {
  const { port } = front.mailfront.httpAddress()!;
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}}`));
  return line === undefined ? Number.NaN : Number(line.split(' ').pop());
}

async function api(front: Front, method: 'GET' | 'POST', path: string, body?: unknown): Promise<Record<string, unknown>> {
  const { port } = front.mailfront.httpAddress()!;
  const response = await fetch(`http://127.0.0.1:${port}${path}`, { method, headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
  assert.equal(response.status, 200, path);
  return (await response.json()) as Record<string, unknown>;
}

before(async () => {
  slapd = await startSlapd({
    users: [
      { uid: 'alice', password: PASSWORDS.alice, store: 'alpha' },
      { uid: 'bob', password: PASSWORDS.bob, store: 'alpha' },
      { uid: 'hank', password: PASSWORDS.hank, store: 'alpha' },
      { uid: 'carol', password: PASSWORDS.carol, store: 'gamma' },
      { uid: 'rita', password: PASSWORDS.rita, store: 'delta' },
      // Staff: no store of their own.
      { uid: 'helpdesk1', password: PASSWORDS.helpdesk1 },
      { uid: 'helpdesk2', password: PASSWORDS.helpdesk2 },
      { uid: 'helpdesk3', password: PASSWORDS.helpdesk3 },
      // Not staff, with a mailbox of their own.
      { uid: 'nohelp', password: PASSWORDS.nohelp, store: 'alpha' },
    ],
  });
  for (const uid of ['helpdesk1', 'helpdesk2', 'helpdesk3']) await setStaff(uid, true);
  const users = ['alice', 'bob', 'hank', 'nohelp', 'rita'].map((name) => ({ name, password: `${name}-backend-only-pw` }));
  registerPasswords(...users.map((u) => u.password));
  [a1, cyrus] = await Promise.all([
    startDovecot({ name: 'master-a1', users, masterUser: MASTER, sieve: true }),
    startCyrus({ users: [{ name: 'carol', password: 'carol-backend-only-pw' }], proxyAdmin: CYRUS_PROXY }),
  ]);
  registerPasswords('carol-backend-only-pw');
  await a1.deliver('alice', makeMessage('for alice only'));
  await a1.deliver('bob', makeMessage('for bob only'));
  await a1.deliver('rita', makeMessage('for rita only'));
  await cyrus.deliver('carol', makeMessage('for carol on cyrus'));
});

after(async () => {
  await Promise.all([slapd?.stop(), a1?.stop(), cyrus?.stop()]);
});

function stores(): Record<string, StoreSpec> {
  return {
    alpha: { currentMaster: 'a1', slots: { a1: { imapPort: a1.imapPort, pop3Port: a1.pop3Port, sievePort: a1.sievePort! } } },
    gamma: {
      currentMaster: 'c1',
      slots: { c1: { imapPort: cyrus.imapPort, pop3Port: cyrus.pop3Port } },
      backend: { login_mode: 'sasl-authzid', proxy_user: CYRUS_PROXY.name, proxy_password: CYRUS_PROXY.password },
    },
    // The same Dovecot, logged in to with the user's own credentials: no master login can go there.
    delta: { currentMaster: 'd1', slots: { d1: { imapPort: a1.imapPort, pop3Port: a1.pop3Port } }, backend: { login_mode: 'replay' } },
  };
}

describe('master logins, filter set', () => {
  let front: Front;
  before(async () => {
    front = await startFront({
      slapd,
      stores: stores(),
      sieve: true,
      backend: { login_mode: 'master-user', proxy_user: MASTER.name, proxy_password: MASTER.password },
      directory: { master_user_filter: FILTER, hold_attribute: HOLD },
      // Two distinct wrong passwords refuse a user: a refused master login counted as a failure would show.
      throttle: { enabled: true, failures_per_user: 2, failures_per_address: 1000, base_delay_ms: 50, max_delay_ms: 50 },
    });
  });
  after(async () => {
    assertNoRegisteredSecret(front?.rawLogs ?? [], 'the master logins\' log');
    await front?.stop();
  });

  test('IMAP LOGIN "alice*helpdesk1" with helpdesk1\'s password opens alice\'s mailbox; the audit fields name both', async () => {
    const successes = await metric(front, 'mailfront_master_logins_total', 'protocol="imap",result="success"');
    assert.equal(successes, 0, 'the series is there from the start');
    const mark = front.logs.length;
    const c = await imapClient(front.imapTrustedPort);
    try {
      const login = await c.imap(`LOGIN "alice*helpdesk1" ${quoteImap(PASSWORDS.helpdesk1)}`);
      assert.equal(login.status, 'OK', login.text);
      assert.deepEqual(await subjects(c), ['for alice only']);
      await c.imapOk('LOGOUT').catch(() => undefined);
    } finally {
      c.close();
    }
    const spliced = await waitForLog(front, (l) => l['event'] === 'session.spliced', 5_000, mark);
    assert.equal(spliced['level'], 'info', 'the audit record');
    assert.equal(spliced['user'], 'alice');
    assert.equal(spliced['master'], 'helpdesk1');
    assert.equal(spliced['masterDn'], slapd.userDn('helpdesk1'));
    assert.equal(spliced['store'], 'alpha');
    const finished = await waitForLog(front, (l) => l['event'] === 'session.finished' && l['session'] === spliced['session'], 5_000, mark);
    assert.equal(finished['user'], 'alice');
    assert.equal(finished['master'], 'helpdesk1');
    // The backend asserted alice on the proxy account's word (Dovecot's master passdb).
    const deadline = Date.now() + 3_000;
    while (!(await a1.readLog()).includes(`session=<${String(spliced['session'])}>`) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    assert.match(await a1.readLog(), new RegExp(`imap-login: Info: Login: user=<alice>.*session=<${String(spliced['session'])}>`));
    assert.equal(await metric(front, 'mailfront_master_logins_total', 'protocol="imap",result="success"'), 1);
  });

  test('IMAP AUTHENTICATE PLAIN with authzid alice, authcid helpdesk1 opens alice\'s mailbox', async () => {
    const mark = front.logs.length;
    const c = await imapClient(front.imapTrustedPort);
    try {
      const auth = await c.authenticatePlain('alice', 'helpdesk1', PASSWORDS.helpdesk1);
      assert.equal(auth.status, 'OK', auth.text);
      assert.deepEqual(await subjects(c), ['for alice only']);
    } finally {
      c.close();
    }
    const spliced = await waitForLog(front, (l) => l['event'] === 'session.spliced', 5_000, mark);
    assert.deepEqual([spliced['user'], spliced['master'], spliced['mechanism']], ['alice', 'helpdesk1', 'PLAIN']);
  });

  test('POP3 USER alice*helpdesk1 / PASS, and AUTH PLAIN with an authzid, open alice\'s maildrop', async () => {
    const userPass = await pop3Client(front);
    try {
      assert.match(await userPass.pop3('USER alice*helpdesk1'), /^\+OK/);
      assert.match(await userPass.pop3(`PASS ${PASSWORDS.helpdesk1}`), /^\+OK/);
      assert.equal(await pop3Subject(userPass), 'for alice only');
    } finally {
      userPass.close();
    }
    const auth = await pop3Client(front);
    try {
      assert.match(await auth.pop3(`AUTH PLAIN ${plain('alice', 'helpdesk1', PASSWORDS.helpdesk1)}`), /^\+OK/);
      assert.equal(await pop3Subject(auth), 'for alice only');
    } finally {
      auth.close();
    }
    assert.equal(await metric(front, 'mailfront_master_logins_total', 'protocol="pop3",result="success"'), 2);
  });

  test('ManageSieve AUTHENTICATE PLAIN with an authzid: the script lands in alice\'s Sieve directory', async () => {
    const c = await sieveClient(front);
    const body = 'require "fileinto";\r\nkeep;\r\n';
    try {
      c.send(`AUTHENTICATE "PLAIN" "${plain('alice', 'helpdesk1', PASSWORDS.helpdesk1)}"`);
      assert.match(await c.readLine(), /^OK/);
      c.write(`PUTSCRIPT "from-helpdesk" {${Buffer.byteLength(body)}+}\r\n${body}\r\n`);
      assert.match(await c.readLine(), /^OK/);
    } finally {
      c.close();
    }
    assert.ok((await readdir(join(a1.dir, 'home', 'alice', 'sieve'))).includes('from-helpdesk.sieve'), "in alice's Sieve directory");
    assert.equal(await readFile(join(a1.dir, 'home', 'alice', 'sieve', 'from-helpdesk.sieve'), 'utf8'), body);
  });

  test('Cyrus (sasl-authzid): IMAP LOGIN "carol*helpdesk1" and POP3 AUTH PLAIN open carol\'s mailbox', async () => {
    const c = await imapClient(front.imapTrustedPort);
    try {
      const login = await c.imap(`LOGIN "carol*helpdesk1" ${quoteImap(PASSWORDS.helpdesk1)}`);
      assert.equal(login.status, 'OK', login.text);
      assert.deepEqual(await subjects(c), ['for carol on cyrus']);
    } finally {
      c.close();
    }
    const p = await pop3Client(front);
    try {
      assert.match(await p.pop3(`AUTH PLAIN ${plain('carol', 'helpdesk1', PASSWORDS.helpdesk1)}`), /^\+OK/);
      assert.equal(await pop3Subject(p), 'for carol on cyrus');
    } finally {
      p.close();
    }
  });

  test('a staff member the filter does not match, or a target that does not exist: AUTHORIZATIONFAILED on each protocol, no slot dialled, no failure counted, logged at info', async () => {
    const mark = front.logs.length;
    const refusedBefore = await metric(front, 'mailfront_master_logins_total', 'protocol="imap",result="not-authorized"');
    // nohelp's password is right: nohelp is no master, and learns nothing of whether the target exists.
    for (const target of ['alice', 'ghost', 'alice', 'ghost']) assert.equal(await imapLogin(front, `${target}*nohelp`, PASSWORDS.nohelp), AUTHORIZATION_FAILED, target);
    const p = await pop3Client(front);
    try {
      assert.match(await p.pop3('USER alice*nohelp'), /^\+OK/);
      p.send(`PASS ${PASSWORDS.nohelp}`);
      assert.equal(await p.readLine(), '-ERR [AUTH] Authorization failed.');
    } finally {
      p.close();
    }
    const s = await sieveClient(front);
    try {
      s.send(`AUTHENTICATE "PLAIN" "${plain('alice', 'nohelp', PASSWORDS.nohelp)}"`);
      assert.equal(await s.readLine(), 'NO "Authorization failed."');
    } finally {
      s.close();
    }
    // A master, and a target that does not exist: the same answer.
    assert.equal(await imapLogin(front, 'ghost*helpdesk1', PASSWORDS.helpdesk1), AUTHORIZATION_FAILED);
    const c = await imapClient(front.imapTrustedPort);
    try {
      assert.equal((await c.authenticatePlain('ghost', 'helpdesk1', PASSWORDS.helpdesk1)).text, '[AUTHORIZATIONFAILED] Authorization failed.');
    } finally {
      c.close();
    }
    assert.deepEqual(dials(front, mark), [], 'no slot was dialled');
    const failed = front.logs.slice(mark).filter((l) => l['event'] === 'session.login_failed');
    assert.deepEqual(
      failed.map((l) => [l['code'], l['kind'], l['level'], l['user'], l['master']]),
      [
        ...['alice', 'ghost', 'alice', 'ghost'].map((target) => ['MASTER_NOT_ALLOWED', 'not-authorized', 'info', target, 'nohelp']),
        ['MASTER_NOT_ALLOWED', 'not-authorized', 'info', 'alice', 'nohelp'],
        ['MASTER_NOT_ALLOWED', 'not-authorized', 'info', 'alice', 'nohelp'],
        ['MASTER_TARGET_UNKNOWN', 'not-authorized', 'info', 'ghost', 'helpdesk1'],
        ['MASTER_TARGET_UNKNOWN', 'not-authorized', 'info', 'ghost', 'helpdesk1'],
      ],
    );
    assert.equal(failed[0]!['masterDn'], slapd.userDn('nohelp'));
    assert.equal(await metric(front, 'mailfront_master_logins_total', 'protocol="imap",result="not-authorized"'), refusedBefore + 6);
    // Not a failed password: nohelp (two distinct wrong passwords refuse a user here) logs in as usual.
    assert.deepEqual(front.logs.slice(mark).filter((l) => l['event'] === 'throttle.refusing'), []);
    assert.match(await imapLogin(front, 'nohelp', PASSWORDS.nohelp), /^OK /);
  });

  test('a wrong staff password is the usual AUTHENTICATIONFAILED, after the usual delay, and the throttle counts the staff member, not the target', async () => {
    const mark = front.logs.length;
    const started = Date.now();
    assert.equal(await imapLogin(front, 'alice*helpdesk3', WRONG[0]!), AUTHENTICATION_FAILED);
    assert.ok(Date.now() - started >= 280, 'after session.auth_failure_delay_ms (300 ms)');
    assert.equal(await imapLogin(front, 'bob*helpdesk3', WRONG[1]!), AUTHENTICATION_FAILED);
    const wrong = front.logs.slice(mark).filter((l) => l['event'] === 'session.login_failed');
    assert.deepEqual(wrong.map((l) => [l['code'], l['user'], l['master']]), [
      ['WRONG_PASSWORD', 'alice', 'helpdesk3'],
      ['WRONG_PASSWORD', 'bob', 'helpdesk3'],
    ]);
    const refusing = await waitForLog(front, (l) => l['event'] === 'throttle.refusing', 5_000, mark);
    assert.equal(refusing['user'], 'helpdesk3');
    // helpdesk3 is refused now, with the right password, as a master and on its own.
    assert.match(await imapLogin(front, 'alice*helpdesk3', PASSWORDS.helpdesk3), /^NO \[LIMIT\] /);
    assert.match(await imapLogin(front, 'helpdesk3', PASSWORDS.helpdesk3), /^NO \[LIMIT\] /);
    const throttled = front.logs.slice(mark).filter((l) => l['event'] === 'session.login_failed' && l['code'] === 'THROTTLED');
    assert.deepEqual([throttled[0]!['user'], throttled[0]!['master'], throttled[0]!['by']], ['alice', 'helpdesk3', 'user']);
    // The targets are not: their own logins go on.
    assert.match(await imapLogin(front, 'alice', PASSWORDS.alice), /^OK /);
    assert.match(await imapLogin(front, 'bob', PASSWORDS.bob), /^OK /);
  });

  test('a target the directory holds: its hold\'s reason, no slot dialled', async () => {
    await setHold('hank', REASON);
    try {
      const mark = front.logs.length;
      assert.equal(await imapLogin(front, 'hank*helpdesk1', PASSWORDS.helpdesk1), `NO [UNAVAILABLE] ${REASON}`);
      assert.deepEqual(dials(front, mark), []);
      const failed = await waitForLog(front, (l) => l['event'] === 'session.login_failed', 5_000, mark);
      assert.deepEqual([failed['code'], failed['user'], failed['master']], ['USER_HELD', 'hank', 'helpdesk1']);
    } finally {
      await setHold('hank', undefined);
    }
  });

  test('a target whose store logs in with replay: refused (MASTER_USER_NEEDS_TRUST_MODE), no slot dialled; the target\'s own login goes on', async () => {
    const mark = front.logs.length;
    assert.equal(await imapLogin(front, 'rita*helpdesk1', PASSWORDS.helpdesk1), "NO [UNAVAILABLE] Logging in to another user's mailbox is not available for this mailbox's server.");
    assert.deepEqual(dials(front, mark), []);
    const failed = await waitForLog(front, (l) => l['event'] === 'session.login_failed', 5_000, mark);
    assert.deepEqual([failed['code'], failed['kind'], failed['level'], failed['user'], failed['master'], failed['store']], ['MASTER_USER_NEEDS_TRUST_MODE', 'config', 'error', 'rita', 'helpdesk1', 'delta']);
  });

  test('revocation: a staff member taken out of the filter is refused from the next login on', async () => {
    assert.match(await imapLogin(front, 'alice*helpdesk2', PASSWORDS.helpdesk2), /^OK /);
    await setStaff('helpdesk2', false);
    try {
      assert.equal(await imapLogin(front, 'alice*helpdesk2', PASSWORDS.helpdesk2), AUTHORIZATION_FAILED);
    } finally {
      await setStaff('helpdesk2', true);
    }
  });

  test('sessions and whereis show the staff member; kick of the target, and kick of the staff member, close a master session', async () => {
    const open = async (): Promise<LineClient> => {
      const c = await imapClient(front.imapTrustedPort);
      const login = await c.imap(`LOGIN "alice*helpdesk1" ${quoteImap(PASSWORDS.helpdesk1)}`);
      assert.equal(login.status, 'OK', login.text);
      return c;
    };
    // The sessions of the tests before have ended (their clients closed).
    for (let i = 0; i < 100 && front.mailfront.registry.size > 0; i++) await new Promise((r) => setTimeout(r, 20));
    const first = await open();
    try {
      const sessions = (await api(front, 'GET', '/api/sessions'))['sessions'] as Array<Record<string, unknown>>;
      assert.deepEqual(sessions.map((s) => [s['user'], s['master']]), [['alice', 'helpdesk1']]);
      const ofStaff = (await api(front, 'GET', '/api/sessions?user=helpdesk1'))['sessions'] as Array<Record<string, unknown>>;
      assert.equal(ofStaff.length, 1, "the staff member's sessions in other mailboxes");
      const whereis = await api(front, 'GET', '/api/whereis/alice');
      assert.deepEqual((whereis['sessions'] as Array<Record<string, unknown>>).map((s) => s['master']), ['helpdesk1']);
      // The operator's table has a MASTER column then.
      const { stdout } = await promisify(execFile)(process.execPath, [CLI, 'sessions', '--user', 'helpdesk1', '--url', `http://127.0.0.1:${front.mailfront.httpAddress()!.port}`, '--token', ADMIN_TOKEN]);
      const [header, row] = stdout.split('\n');
      assert.match(header!, /^SESSION +PROTOCOL +USER +MASTER +STORE +SLOT +CLIENT +STARTED$/);
      assert.match(row!, /^\S+ +imap +alice +helpdesk1 +alpha +a1 +127\.0\.0\.1 /);
      const mark = front.logs.length;
      const kicked = await api(front, 'POST', '/api/kick', { user: 'alice' });
      assert.equal((kicked['kicked'] as unknown[]).length, 1);
      assert.match(await first.readLine(5_000), /^\* BYE /);
      const line = await waitForLog(front, (l) => l['event'] === 'session.kicked', 5_000, mark);
      assert.deepEqual([line['user'], line['master']], ['alice', 'helpdesk1']);
    } finally {
      first.close();
    }
    // An off-boarded staff member: a kick of helpdesk1 closes helpdesk1's sessions in alice's mailbox.
    const second = await open();
    try {
      const kicked = await api(front, 'POST', '/api/kick', { user: 'helpdesk1' });
      assert.deepEqual((kicked['kicked'] as Array<Record<string, unknown>>).map((s) => [s['user'], s['master']]), [['alice', 'helpdesk1']]);
      assert.match(await second.readLine(5_000), /^\* BYE /);
      assert.equal(await second.waitClosed(5_000), true);
    } finally {
      second.close();
    }
  });
});

describe('master logins with the caches on', () => {
  let front: Front;
  before(async () => {
    front = await startFront({
      slapd,
      stores: stores(),
      backend: { login_mode: 'master-user', proxy_user: MASTER.name, proxy_password: MASTER.password },
      directory: { master_user_filter: FILTER, auth_cache_ttl_ms: 60_000, entry_cache_ttl_ms: 60_000 },
      connectionLimits: { max_sessions_per_user: 1 },
    });
  });
  after(async () => {
    await front?.stop();
  });

  test('a cached login of the staff member does not skip the filter; the target\'s entry is never cached, under either password', async () => {
    // A master login leaves the staff member's own login in the cache, and nothing of the target's.
    assert.match(await imapLogin(front, 'alice*helpdesk2', PASSWORDS.helpdesk2), /^OK /);
    const whereis = await api(front, 'GET', '/api/whereis/alice');
    assert.deepEqual(whereis['cached'], [], 'a master login caches nothing of the target');
    const staff = await api(front, 'GET', '/api/whereis/helpdesk2');
    assert.ok((staff['cached'] as Array<Record<string, unknown>>).some((c) => c['cache'] === 'auth'), 'the staff member\'s own login is cached');
    // The staff password is no password of alice's, cached or not; nor alice's one of the staff member's.
    assert.equal(await imapLogin(front, 'alice', PASSWORDS.helpdesk2), AUTHENTICATION_FAILED);
    assert.match(await imapLogin(front, 'alice', PASSWORDS.alice), /^OK /);
    assert.equal(await imapLogin(front, 'alice*helpdesk2', PASSWORDS.alice), AUTHENTICATION_FAILED);
    await setStaff('helpdesk2', false);
    try {
      const mark = front.logs.length;
      assert.equal(await imapLogin(front, 'alice*helpdesk2', PASSWORDS.helpdesk2), AUTHORIZATION_FAILED, 'revoked at the next login, the staff member\'s login in the cache');
      const failed = await waitForLog(front, (l) => l['event'] === 'session.login_failed', 5_000, mark);
      assert.equal(failed['code'], 'MASTER_NOT_ALLOWED');
    } finally {
      await setStaff('helpdesk2', true);
    }
  });

  test('a staff member whose entry was deleted, its login still cached, is no master: the base search finds no entry', async () => {
    await slapd.addUser({ uid: 'helpdesk4', password: PASSWORDS.helpdesk4 });
    await setStaff('helpdesk4', true);
    assert.match(await imapLogin(front, 'alice*helpdesk4', PASSWORDS.helpdesk4), /^OK /);
    await slapd.deleteUser('helpdesk4');
    const mark = front.logs.length;
    assert.equal(await imapLogin(front, 'alice*helpdesk4', PASSWORDS.helpdesk4), AUTHORIZATION_FAILED);
    const failed = await waitForLog(front, (l) => l['event'] === 'session.login_failed', 5_000, mark);
    assert.deepEqual([failed['code'], failed['masterDn']], ['MASTER_NOT_ALLOWED', slapd.userDn('helpdesk4')]);
  });

  test('max_sessions_per_user counts a master session as the target\'s, not the staff member\'s', async () => {
    for (let i = 0; i < 100 && front.mailfront.registry.size > 0; i++) await new Promise((r) => setTimeout(r, 20));
    const bob = await imapClient(front.imapTrustedPort);
    const alice = await imapClient(front.imapTrustedPort);
    try {
      assert.equal((await bob.imap(`LOGIN "bob*helpdesk1" ${quoteImap(PASSWORDS.helpdesk1)}`)).status, 'OK');
      // helpdesk1 holds a session already: a second one, in another mailbox, is let in.
      assert.equal((await alice.imap(`LOGIN "alice*helpdesk1" ${quoteImap(PASSWORDS.helpdesk1)}`)).status, 'OK');
      // alice holds one (the master's): her own is over the limit of one.
      assert.match(await imapLogin(front, 'alice', PASSWORDS.alice), /^NO \[LIMIT\] /);
    } finally {
      bob.close();
      alice.close();
    }
  });
});

describe('the LDAP directory\'s master check', () => {
  test('masterAllowed: a base search of the staff entry with the filter, false without one or for an entry gone; a closing directory takes none', async () => {
    registerSecrets([slapd.bindPassword]);
    const { log } = capturedLogger('debug');
    const signal = new AbortController().signal;
    const off = new LdapDirectory(directoryConfigOf(slapd), log);
    const on = new LdapDirectory(directoryConfigOf(slapd, { masterUserFilter: FILTER, masterUserSeparator: '*' }), log);
    try {
      const helpdesk1 = await on.authenticate('helpdesk1', PASSWORDS.helpdesk1, signal, 'imap');
      const nohelp = await on.authenticate('nohelp', PASSWORDS.nohelp, signal, 'imap');
      assert.equal(await on.masterAllowed(helpdesk1, signal), true);
      assert.equal(await on.masterAllowed(nohelp, signal), false);
      assert.equal(await on.masterAllowed({ ...helpdesk1, dn: slapd.userDn('nobody-here') }, signal), false, 'an entry gone is no master');
      assert.equal(await off.masterAllowed(helpdesk1, signal), false);
      // Replaced by a reload: the session asks the directory in force (session-master-reload.test.ts).
      await on.close(5_000);
      await assert.rejects(on.masterAllowed(helpdesk1, signal), { code: 'LDAP_CLOSED' });
    } finally {
      await Promise.all([off.close(), on.close()]);
    }
  });
});

describe('master logins, filter not set: as before', () => {
  let front: Front;
  before(async () => {
    front = await startFront({ slapd, stores: stores(), backend: { login_mode: 'master-user', proxy_user: MASTER.name, proxy_password: MASTER.password } });
  });
  after(async () => {
    await front?.stop();
  });

  test('"alice*helpdesk1" is an unknown user and an authzid other than the user is refused: AUTHENTICATIONFAILED, nothing dialled', async () => {
    const mark = front.logs.length;
    assert.equal(await imapLogin(front, 'alice*helpdesk1', PASSWORDS.helpdesk1), AUTHENTICATION_FAILED);
    const c = await imapClient(front.imapTrustedPort);
    try {
      assert.equal((await c.authenticatePlain('alice', 'helpdesk1', PASSWORDS.helpdesk1)).text, '[AUTHENTICATIONFAILED] Authentication failed.');
    } finally {
      c.close();
    }
    const failed = front.logs.slice(mark).filter((l) => l['event'] === 'session.login_failed');
    assert.deepEqual(failed.map((l) => [l['code'], l['user'], 'master' in l]), [
      ['UNKNOWN_USER', 'alice*helpdesk1', false],
      ['AUTHZID_REFUSED', 'helpdesk1', false],
    ]);
    assert.deepEqual(dials(front, mark), []);
  });
});
