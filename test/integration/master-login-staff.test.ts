/**
 * Master logins beside a user filter that matches aliases, and to targets without a mailbox.
 * Real slapd (user_filter `(|(uid={user})(mail={user}))`, login_attribute uid, the README's
 * master filter `(uid={user})`) and Dovecot in master-user mode with ManageSieve, as
 * master-login.test.ts. A staff member typing an alias is the staff member's entry all the same:
 * the master filter's {user} is the entry's own name, and the log says what was typed
 * (typedMaster). A target whose entry names no store (another staff member's: staff entries need
 * none) or two is refused AUTHORIZATIONFAILED at info, not taken for a fleet failure; a user's own
 * login without a store stays a no-route error.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { LineClient, ldifLine, quoteImap, startDovecot, startSlapd } from './servers/index.js';
import type { Dovecot, Slapd } from './servers/index.js';
import { assertNoRegisteredSecret, makeMessage, registerPasswords, startFront, waitForLog } from './front.js';
import type { Front } from './front.js';

const PASSWORDS = {
  alice: 'Alice-staff-pw-61d0',
  nohelp: 'Nohelp-staff-pw-3e8a',
  dual: 'Dual-staff-pw-9f14',
  helpdesk1: 'Helpdesk1-staff-pw-b72c',
  helpdesk2: 'Helpdesk2-staff-pw-05ae',
};
const MASTER = { name: 'proxymaster', password: 'Proxy-staff-pw-c4d1' };
const FILTER = '(&(objectClass=inetOrgPerson)(employeeType=mail-helpdesk)(uid={user}))';
const AUTHORIZATION_FAILED = 'NO [AUTHORIZATIONFAILED] Authorization failed.';
registerPasswords(...Object.values(PASSWORDS), MASTER.password);

let slapd: Slapd;
let a1: Dovecot;
let front: Front;

async function imapClient(port: number): Promise<LineClient> {
  const c = await LineClient.connect(port);
  await c.readLine();
  return c;
}

/** `LOGIN name password` through mailfront: the tagged answer, the connection closed. */
async function imapLogin(name: string, password: string): Promise<string> {
  const c = await imapClient(front.imapTrustedPort);
  try {
    const result = await c.imap(`LOGIN ${quoteImap(name)} ${quoteImap(password)}`);
    return `${result.status} ${result.text}`;
  } finally {
    c.close();
  }
}

async function metric(name: string, labels: string): Promise<number> {
  const { port } = front.mailfront.httpAddress()!;
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}}`));
  return line === undefined ? 0 : Number(line.split(' ').pop());
}

before(async () => {
  slapd = await startSlapd({
    users: [
      { uid: 'alice', password: PASSWORDS.alice, mail: 'info@example.com' },
      { uid: 'nohelp', password: PASSWORDS.nohelp, mail: 'nohelp@example.com' },
      { uid: 'dual', password: PASSWORDS.dual },
      // Staff: no store of their own, as the README sets them up.
      { uid: 'helpdesk1', password: PASSWORDS.helpdesk1, mail: 'help@example.com' },
      { uid: 'helpdesk2', password: PASSWORDS.helpdesk2 },
    ],
  });
  for (const uid of ['helpdesk1', 'helpdesk2']) {
    await slapd.modify(`dn: ${slapd.userDn(uid)}\nchangetype: modify\nadd: employeeType\n${ldifLine('employeeType', 'mail-helpdesk')}\n`);
  }
  // The store in businessCategory (directory.store_attribute), which may hold several values, as
  // mailStore of the test schema may not: dual's entry names two stores (a move half done by hand).
  for (const [uid, stores] of [['alice', ['alpha']], ['nohelp', ['alpha']], ['dual', ['alpha', 'beta']]] as const) {
    await slapd.modify(`dn: ${slapd.userDn(uid)}\nchangetype: modify\nadd: businessCategory\n${stores.map((s) => ldifLine('businessCategory', s)).join('\n')}\n`);
  }
  const users = ['alice', 'nohelp', 'dual'].map((name) => ({ name, password: `${name}-backend-only-pw` }));
  registerPasswords(...users.map((u) => u.password));
  a1 = await startDovecot({ name: 'master-staff-a1', users, masterUser: MASTER, sieve: true });
  await a1.deliver('alice', makeMessage('for alice only'));
  front = await startFront({
    slapd,
    stores: {
      alpha: { currentMaster: 'a1', slots: { a1: { imapPort: a1.imapPort, pop3Port: a1.pop3Port, sievePort: a1.sievePort! } } },
      beta: { currentMaster: 'b1', slots: { b1: { imapPort: a1.imapPort, pop3Port: a1.pop3Port, sievePort: a1.sievePort! } } },
    },
    sieve: true,
    backend: { login_mode: 'master-user', proxy_user: MASTER.name, proxy_password: MASTER.password },
    directory: { user_filter: '(&(objectClass=inetOrgPerson)(|(uid={user})(mail={user})))', login_attribute: 'uid', store_attribute: 'businessCategory', master_user_filter: FILTER },
  });
});

after(async () => {
  assertNoRegisteredSecret(front?.rawLogs ?? [], 'the master logins\' log');
  await front?.stop();
  await Promise.all([slapd?.stop(), a1?.stop()]);
});

describe('a staff member typing an alias the user filter matches', () => {
  test('"alice*help@example.com" opens alice\'s mailbox as "alice*helpdesk1" does; the log names the entry and what was typed', async () => {
    for (const [name, typedMaster] of [['alice*helpdesk1', undefined], ['alice*help@example.com', 'help@example.com'], ['info@example.com*help@example.com', 'help@example.com']] as const) {
      const mark = front.logs.length;
      const c = await imapClient(front.imapTrustedPort);
      try {
        const login = await c.imap(`LOGIN ${quoteImap(name)} ${quoteImap(PASSWORDS.helpdesk1)}`);
        assert.equal(login.status, 'OK', `${name}: ${login.text}`);
        await c.imapOk('SELECT INBOX');
        const fetched = await c.imapOk('FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])');
        assert.deepEqual(fetched.untagged.filter((l) => l.startsWith('Subject: ')), ['Subject: for alice only'], name);
      } finally {
        c.close();
      }
      const spliced = await waitForLog(front, (l) => l['event'] === 'session.spliced', 5_000, mark);
      assert.equal(spliced['user'], 'alice', name);
      assert.equal(spliced['master'], 'helpdesk1', name);
      assert.equal(spliced['typedMaster'], typedMaster, name);
      assert.equal(spliced['masterDn'], slapd.userDn('helpdesk1'), name);
    }
  });

  test('a non-master typing an alias is refused under the entry\'s own name, the alias typed logged beside it', async () => {
    const mark = front.logs.length;
    assert.equal(await imapLogin('alice*nohelp@example.com', PASSWORDS.nohelp), AUTHORIZATION_FAILED);
    const failed = await waitForLog(front, (l) => l['event'] === 'session.login_failed', 5_000, mark);
    assert.equal(failed['code'], 'MASTER_NOT_ALLOWED');
    assert.equal(failed['level'], 'info');
    assert.equal(failed['master'], 'nohelp');
    assert.equal(failed['typedMaster'], 'nohelp@example.com');
    assert.match(String(failed['reason']), /^"nohelp" \(/);
  });
});

describe('a master login to a user without a mailbox', () => {
  test('another staff member (no store): AUTHORIZATIONFAILED, at info, counted as not-authorized, no slot dialled', async () => {
    const noRoute = await metric('mailfront_logins_total', 'protocol="imap",result="no-route"');
    const notAuthorized = await metric('mailfront_logins_total', 'protocol="imap",result="not-authorized"');
    const mark = front.logs.length;
    assert.equal(await imapLogin('helpdesk2*helpdesk1', PASSWORDS.helpdesk1), AUTHORIZATION_FAILED);
    const failed = await waitForLog(front, (l) => l['event'] === 'session.login_failed', 5_000, mark);
    assert.equal(failed['code'], 'MASTER_TARGET_WITHOUT_MAILBOX');
    assert.equal(failed['kind'], 'not-authorized');
    assert.equal(failed['level'], 'info');
    assert.equal(failed['user'], 'helpdesk2');
    assert.equal(failed['master'], 'helpdesk1');
    assert.match(String(failed['reason']), /has no businessCategory attribute: no mailbox to open/);
    assert.equal(front.logs.slice(mark).filter((l) => l['event'] === 'session.backend_connected').length, 0);
    assert.equal(await metric('mailfront_logins_total', 'protocol="imap",result="no-route"'), noRoute);
    assert.equal(await metric('mailfront_logins_total', 'protocol="imap",result="not-authorized"'), notAuthorized + 1);
    assert.equal(await metric('mailfront_master_logins_total', 'protocol="imap",result="not-authorized"') >= 1, true);
  });

  test('POP3 and ManageSieve answer it as any refused master login', async () => {
    const pop = await LineClient.connect(front.pop3TrustedPort);
    try {
      await pop.readLine();
      pop.write(`USER helpdesk2*helpdesk1\r\n`);
      assert.match(await pop.readLine(), /^\+OK/);
      pop.write(`PASS ${PASSWORDS.helpdesk1}\r\n`);
      assert.equal(await pop.readLine(), '-ERR [AUTH] Authorization failed.');
    } finally {
      pop.close();
    }
    const sieve = await LineClient.connect(front.sieveTrustedPort!);
    try {
      for (let line = await sieve.readLine(); !line.startsWith('OK'); line = await sieve.readLine());
      sieve.write(`AUTHENTICATE "PLAIN" "${Buffer.from(`helpdesk2\0helpdesk1\0${PASSWORDS.helpdesk1}`).toString('base64')}"\r\n`);
      assert.equal(await sieve.readLine(), 'NO "Authorization failed."');
    } finally {
      sieve.close();
    }
  });

  test('a target naming two stores: the same refusal, naming them', async () => {
    const mark = front.logs.length;
    assert.equal(await imapLogin('dual*helpdesk1', PASSWORDS.helpdesk1), AUTHORIZATION_FAILED);
    const failed = await waitForLog(front, (l) => l['event'] === 'session.login_failed', 5_000, mark);
    assert.equal(failed['code'], 'MASTER_TARGET_WITHOUT_MAILBOX');
    assert.equal(failed['level'], 'info');
    assert.match(String(failed['reason']), /has 2 values of businessCategory/);
  });

  test('the staff member\'s own login (no store) stays a no-route error', async () => {
    const mark = front.logs.length;
    assert.match(await imapLogin('helpdesk2', PASSWORDS.helpdesk2), /^NO \[UNAVAILABLE\] /);
    const failed = await waitForLog(front, (l) => l['event'] === 'session.login_failed', 5_000, mark);
    assert.equal(failed['code'], 'USER_WITHOUT_STORE');
    assert.equal(failed['kind'], 'no-route');
    assert.equal(failed['level'], 'error');
  });
});
