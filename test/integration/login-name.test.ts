/**
 * The name a login asserts to the backend is the directory entry's own (directory.login_attribute),
 * not the name the client typed, against a real slapd and a real Cyrus with
 * `virtdomains: userid` and `defaultdomain: example.com` in sasl-authzid mode. With a user filter
 * that also matches mail, alice logs in as "info@example.com" (her mail); Cyrus reads that name
 * as `info`, another user: before, mailfront asserted it as typed and alice read info's INBOX.
 * An entry with several names, none of them the one typed, and one without the attribute, are
 * refused before Cyrus is dialled.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { LineClient, startCyrus, startSlapd } from './servers/index.js';
import type { Cyrus, Slapd } from './servers/index.js';
import { linesOfSession, makeMessage, registerSecrets, sessionIdOf, startFront } from './front.js';
import type { Front } from './front.js';

const CYRUS_PROXY = { name: 'proxyadmin', password: 'Cyrus-proxy-pw-61b0' };
const PASSWORDS = { alice: 'Alice-pw-3e8d', info: 'Info-pw-77c2', dan: 'Dan-pw-0a4f' };
registerSecrets([...Object.values(PASSWORDS), CYRUS_PROXY.password]);

let slapd: Slapd;
let cyrus: Cyrus;
/** user_filter (|(uid={user})(mail={user})), login_attribute uid. */
let front: Front;
/** The same, with a login_attribute no entry has. */
let unnamed: Front;
/** The same, login_attribute not set: that filter names no one attribute to take it from. */
let uninferred: Front;

before(async () => {
  [slapd, cyrus] = await Promise.all([
    startSlapd({
      users: [
        // alice's mail is the address of the shared "info" box's name: an alias that finds her entry.
        { uid: 'alice', password: PASSWORDS.alice, store: 'gamma', mail: 'info@example.com' },
        { uid: 'info', password: PASSWORDS.info, store: 'gamma' },
        { uid: 'dan', password: PASSWORDS.dan, store: 'gamma', mail: 'd@example.com' },
      ],
    }),
    startCyrus({
      users: [
        { name: 'alice', password: 'alice-backend-only' },
        { name: 'info', password: 'info-backend-only' },
      ],
      proxyAdmin: CYRUS_PROXY,
      imapdConf: ['virtdomains: userid', 'defaultdomain: example.com'],
    }),
  ]);
  // Two names in one entry: uid dan and daniel.
  await slapd.modify(`dn: ${slapd.userDn('dan')}\nchangetype: modify\nadd: uid\nuid: daniel\n`);
  await cyrus.deliver('alice', makeMessage('alice private'));
  await cyrus.deliver('info', makeMessage('info private'));
  const stores = {
    gamma: {
      currentMaster: 'slot-c1',
      slots: { 'slot-c1': { imapPort: cyrus.imapPort, pop3Port: cyrus.pop3Port } },
      backend: { login_mode: 'sasl-authzid', proxy_user: CYRUS_PROXY.name, proxy_password: CYRUS_PROXY.password },
    },
  };
  const directory = { user_filter: '(&(objectClass=inetOrgPerson)(|(uid={user})(mail={user})))' };
  front = await startFront({ slapd, stores, directory: { ...directory, login_attribute: 'uid' } });
  unnamed = await startFront({ slapd, stores, directory: { ...directory, login_attribute: 'employeeNumber' } });
  uninferred = await startFront({ slapd, stores, directory });
});

after(async () => {
  await front?.stop();
  await unnamed?.stop();
  await uninferred?.stop();
  await Promise.all([slapd?.stop(), cyrus?.stop()]);
});

/** IMAP LOGIN on the plaintext webmail listener: the tagged answer, the session and the client. */
async function imapLogin(on: Front, user: string, password: string): Promise<{ answer: string; session: string; client: LineClient }> {
  const mark = on.logs.length;
  const client = await LineClient.connect(on.imapTrustedPort);
  await client.readLine();
  const session = await sessionIdOf(on, client.socket.localPort!, mark);
  const result = await client.imap(`LOGIN {${Buffer.byteLength(user)}+}\r\n${user} {${Buffer.byteLength(password)}+}\r\n${password}`);
  return { answer: `${result.status} ${result.text}`, session, client };
}

/** The INBOX's messages whose subject holds `subject` (SEARCH). */
async function found(client: LineClient, subject: string): Promise<boolean> {
  const search = await client.imap(`SEARCH SUBJECT "${subject}"`);
  assert.equal(search.status, 'OK', search.text);
  return search.untagged.some((line) => /^\* SEARCH \d/.test(line));
}

test('alice logging in with her alias "info@example.com" gets her own INBOX, not info\'s, and the log names both', async () => {
  const { answer, session, client } = await imapLogin(front, 'info@example.com', PASSWORDS.alice);
  try {
    assert.match(answer, /^OK /);
    const select = await client.imap('SELECT INBOX');
    assert.equal(select.status, 'OK', select.text);
    assert.equal(await found(client, 'info private'), false, 'alice reads the INBOX of uid=info');
    assert.equal(await found(client, 'alice private'), true, 'alice does not see her own INBOX');
    const spliced = linesOfSession(front, session).find((l) => l['event'] === 'session.spliced');
    assert.equal(spliced?.['user'], 'alice');
    assert.equal(spliced?.['typedUser'], 'info@example.com');
  } finally {
    client.close();
  }
});

test('a login with the entry\'s own name logs in as before, and the log has no typedUser', async () => {
  const { answer, session, client } = await imapLogin(front, 'alice', PASSWORDS.alice);
  try {
    assert.match(answer, /^OK /);
    await client.imap('SELECT INBOX');
    assert.equal(await found(client, 'alice private'), true);
    const spliced = linesOfSession(front, session).find((l) => l['event'] === 'session.spliced');
    assert.equal(spliced?.['user'], 'alice');
    assert.equal(spliced?.['typedUser'], undefined);
  } finally {
    client.close();
  }
});

test('an entry with two names, neither the one typed, is refused once the password is right, before Cyrus is dialled', async () => {
  const { answer, session, client } = await imapLogin(front, 'd@example.com', PASSWORDS.dan);
  try {
    assert.match(answer, /^NO \[UNAVAILABLE\] /);
    const lines = linesOfSession(front, session);
    assert.ok(!lines.some((l) => l['event'] === 'session.backend_connected'), 'the backend was dialled');
    const failed = lines.find((l) => l['event'] === 'session.login_failed');
    assert.equal(failed?.['code'], 'USER_LOGIN_AMBIGUOUS');
    assert.match(String(failed?.['reason']), /uid=dan,.* has 2 names in uid \(directory\.login_attribute\)/);
  } finally {
    client.close();
  }
  // A wrong password is a wrong password, whatever the entry's names.
  const wrong = await imapLogin(front, 'd@example.com', 'not-dan');
  wrong.client.close();
  assert.equal(wrong.answer, 'NO [AUTHENTICATIONFAILED] Authentication failed.');
});

test('sasl-authzid: an entry without the login attribute is refused with an error naming the entry and the attribute, and nothing reaches Cyrus', async () => {
  for (const user of ['alice', 'info@example.com']) {
    const { answer, session, client } = await imapLogin(unnamed, user, PASSWORDS.alice);
    try {
      assert.match(answer, /^NO \[UNAVAILABLE\] /, user);
      const lines = linesOfSession(unnamed, session);
      assert.ok(!lines.some((l) => l['event'] === 'session.backend_connected'), 'the backend was dialled');
      const failed = lines.find((l) => l['event'] === 'session.login_failed');
      assert.equal(failed?.['code'], 'USER_WITHOUT_LOGIN_NAME');
      assert.equal(failed?.['level'], 'error');
      assert.match(String(failed?.['reason']), /uid=alice,.* has no employeeNumber \(directory\.login_attribute\)/);
    } finally {
      client.close();
    }
  }
});

test('sasl-authzid with a user_filter that matches aliases and no login_attribute: refused, naming the setting, and nothing reaches Cyrus', async () => {
  for (const user of ['alice', 'info@example.com']) {
    const { answer, session, client } = await imapLogin(uninferred, user, PASSWORDS.alice);
    try {
      assert.match(answer, /^NO \[UNAVAILABLE\] /, user);
      const lines = linesOfSession(uninferred, session);
      assert.ok(!lines.some((l) => l['event'] === 'session.backend_connected'), 'the backend was dialled');
      const failed = lines.find((l) => l['event'] === 'session.login_failed');
      assert.equal(failed?.['code'], 'USER_WITHOUT_LOGIN_NAME');
      assert.match(String(failed?.['reason']), /directory\.login_attribute is not set and user_filter compares \{user\} with no one attribute/);
    } finally {
      client.close();
    }
  }
});
