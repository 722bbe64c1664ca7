/**
 * The identity mailfront asserts to Cyrus in sasl-authzid mode, against a real Cyrus whose
 * `admins` is `cyrus`: a directory user named cyrus (or named as the proxy account) is refused
 * before anything reaches the backend, over IMAP, POP3 and ManageSieve alike, and is not counted
 * by the throttle. Before, such a user logged in as the Cyrus admin and could SETACL and read
 * every other user's mailbox.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { LineClient, startCyrus, startSlapd } from './servers/index.js';
import type { Cyrus, Slapd } from './servers/index.js';
import { assertNoRegisteredSecret, linesOfSession, makeMessage, registerSecrets, sessionIdOf, startFront, waitForLog } from './front.js';
import type { Front } from './front.js';

const CYRUS_PROXY = { name: 'proxyadmin', password: 'Cyrus-proxy-pw-88' };
const PASSWORDS = { carol: 'Carol-pw-5a1d', cyrus: 'Cyrus-dir-pw-7e21', proxyadmin: 'Proxy-dir-pw-40c3' };
registerSecrets([...Object.values(PASSWORDS), CYRUS_PROXY.password, ...Object.entries(PASSWORDS).map(([user, pw]) => Buffer.from(`\0${user}\0${pw}`).toString('base64'))]);

let slapd: Slapd;
let cyrus: Cyrus;
let front: Front;

before(async () => {
  [slapd, cyrus] = await Promise.all([
    startSlapd({
      users: [
        { uid: 'carol', password: PASSWORDS.carol, store: 'gamma' },
        // Directory users whose names Cyrus knows as its admin and as the proxy account.
        { uid: 'cyrus', password: PASSWORDS.cyrus, store: 'gamma' },
        { uid: 'proxyadmin', password: PASSWORDS.proxyadmin, store: 'gamma' },
      ],
    }),
    startCyrus({ users: [{ name: 'carol', password: 'carol-backend-only' }], proxyAdmin: CYRUS_PROXY, sieve: true }),
  ]);
  assert.equal(cyrus.adminUser, 'cyrus', 'the fixture Cyrus has admins: cyrus');
  await cyrus.deliver('carol', makeMessage('carol private'));
  front = await startFront({
    slapd,
    sieve: true,
    stores: {
      gamma: {
        currentMaster: 'slot-c1',
        slots: { 'slot-c1': { imapPort: cyrus.imapPort, pop3Port: cyrus.pop3Port, sievePort: cyrus.sievePort! } },
        backend: { login_mode: 'sasl-authzid', proxy_user: CYRUS_PROXY.name, proxy_password: CYRUS_PROXY.password },
      },
    },
    // One counted failure per user would refuse the next login: a refusal counted as a wrong
    // password would turn the second answer into NO [LIMIT].
    throttle: { enabled: true, failures_per_user: 1, failures_per_address: 1000, base_delay_ms: 0 },
  });
});

after(async () => {
  await front?.stop();
  await Promise.all([slapd?.stop(), cyrus?.stop()]);
});

/** IMAP LOGIN on the plaintext webmail listener; the tagged answer and the session id. */
async function imapLogin(user: string, password: string): Promise<{ answer: string; session: string; client: LineClient }> {
  const mark = front.logs.length;
  const client = await LineClient.connect(front.imapTrustedPort);
  await client.readLine();
  const session = await sessionIdOf(front, client.socket.localPort!, mark);
  const result = await client.imap(`LOGIN {${Buffer.byteLength(user)}+}\r\n${user} {${Buffer.byteLength(password)}+}\r\n${password}`);
  return { answer: `${result.status} ${result.text}`, session, client };
}

test('IMAP: directory user "cyrus" (the Cyrus admin) gets NO [AUTHORIZATIONFAILED], and nothing reaches Cyrus', async () => {
  for (const user of ['cyrus', 'CYRUS']) {
    const { answer, session, client } = await imapLogin(user, PASSWORDS.cyrus);
    try {
      if (answer.startsWith('OK')) {
        // What the old code let through: Cyrus's admin rights over another user's mailbox.
        const acl = await client.imap('SETACL user.carol cyrus lrs');
        const select = await client.imap('SELECT user.carol');
        assert.fail(`logged in as the Cyrus admin: SETACL ${acl.status}, SELECT user.carol ${select.status}`);
      }
      assert.equal(answer, 'NO [AUTHORIZATIONFAILED] Authorization failed.', user);
      const events = linesOfSession(front, session).map((l) => l['event']);
      assert.ok(!events.includes('session.backend_connected'), `the backend was dialled: ${events.join(', ')}`);
      const failed = linesOfSession(front, session).find((l) => l['event'] === 'session.login_failed');
      assert.equal(failed?.['level'], 'error');
      assert.equal(failed?.['code'], 'BACKEND_IDENTITY_REFUSED');
      assert.equal(failed?.['kind'], 'not-authorized', 'the kind mailfront_logins_total counts it under');
      assert.equal(failed?.['user'], 'cyrus');
      assert.match(String(failed?.['reason']), /reserved_users/);
      assert.equal(failed?.['penaltyMs'], undefined);
    } finally {
      client.close();
    }
  }
  // The right password, refused twice with failures_per_user 1: neither counted as a failure.
  const again = await imapLogin('cyrus', PASSWORDS.cyrus);
  again.client.close();
  assert.equal(again.answer, 'NO [AUTHORIZATIONFAILED] Authorization failed.');
});

test('IMAP: a directory user named as the proxy account is refused the same way; other users of the store log in', async () => {
  const proxy = await imapLogin('proxyadmin', PASSWORDS.proxyadmin);
  proxy.client.close();
  assert.equal(proxy.answer, 'NO [AUTHORIZATIONFAILED] Authorization failed.');
  const failed = await waitForLog(front, (l) => l['event'] === 'session.login_failed' && l['session'] === proxy.session);
  assert.match(String(failed['reason']), /proxy_user/);
  const carol = await imapLogin('carol', PASSWORDS.carol);
  try {
    assert.match(carol.answer, /^OK /);
    const select = await carol.client.imap('SELECT INBOX');
    assert.equal(select.status, 'OK');
  } finally {
    carol.client.close();
  }
});

test('POP3 and ManageSieve: the Cyrus admin name gets -ERR [AUTH] and NO', async () => {
  const pop3 = await LineClient.connect(front.pop3TrustedPort);
  try {
    await pop3.readLine();
    assert.match(await pop3.pop3('USER cyrus'), /^\+OK/);
    pop3.write(`PASS ${PASSWORDS.cyrus}\r\n`);
    assert.equal(await pop3.readLine(), '-ERR [AUTH] Authorization failed.');
  } finally {
    pop3.close();
  }
  const sieve = await LineClient.connect(front.sieveTrustedPort!);
  try {
    while (!(await sieve.readLine()).startsWith('OK')) {
      // the capability lines of the greeting
    }
    sieve.write(`AUTHENTICATE "PLAIN" "${Buffer.from(`\0cyrus\0${PASSWORDS.cyrus}`).toString('base64')}"\r\n`);
    assert.equal(await sieve.readLine(), 'NO "Authorization failed."');
  } finally {
    sieve.close();
  }
});

test('no password or proxy secret appears in any log line', () => {
  assertNoRegisteredSecret(front.rawLogs);
});
