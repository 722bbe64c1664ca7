/**
 * backend.reserved_users against a real Cyrus with `virtdomains: userid` and `defaultdomain:
 * example.com`, which reads "cyrus@example.com" as its admin `cyrus`: with the default list of
 * sasl-authzid mode ([cyrus]), a directory user cyrus@example.com (or one whose login
 * usernames.domain: qualify turns into it) is refused before Cyrus is dialled; before, it logged
 * in with Cyrus's admin rights (SETACL on another user's mailbox). carol@example.com logs in.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { LineClient, startCyrus, startSlapd } from './servers/index.js';
import type { Cyrus, Slapd } from './servers/index.js';
import { linesOfSession, makeMessage, registerSecrets, sessionIdOf, startFront } from './front.js';
import type { Front } from './front.js';

const CYRUS_PROXY = { name: 'proxyadmin', password: 'Cyrus-proxy-pw-4d1e' };
const PASSWORDS = { carol: 'Carol-pw-9b2f', cyrus: 'Cyrus-dir-pw-1c77' };
registerSecrets([...Object.values(PASSWORDS), CYRUS_PROXY.password]);

let slapd: Slapd;
let cyrus: Cyrus;
/** usernames.domain keep, and qualify (a bare login gets @example.com). */
let keep: Front;
let qualify: Front;

before(async () => {
  [slapd, cyrus] = await Promise.all([
    startSlapd({
      users: [
        { uid: 'carol@example.com', password: PASSWORDS.carol, store: 'gamma' },
        { uid: 'cyrus@example.com', password: PASSWORDS.cyrus, store: 'gamma' },
      ],
    }),
    startCyrus({ users: [{ name: 'carol', password: 'carol-backend-only' }], proxyAdmin: CYRUS_PROXY, imapdConf: ['virtdomains: userid', 'defaultdomain: example.com'] }),
  ]);
  await cyrus.deliver('carol', makeMessage('carol private'));
  // reserved_users not set: sasl-authzid's default.
  const stores = {
    gamma: {
      currentMaster: 'slot-c1',
      slots: { 'slot-c1': { imapPort: cyrus.imapPort, pop3Port: cyrus.pop3Port } },
      backend: { login_mode: 'sasl-authzid', proxy_user: CYRUS_PROXY.name, proxy_password: CYRUS_PROXY.password },
    },
  };
  keep = await startFront({ slapd, stores });
  qualify = await startFront({ slapd, stores, usernames: { domain: 'qualify', local_domains: ['example.com'] } });
});

after(async () => {
  await keep?.stop();
  await qualify?.stop();
  await Promise.all([slapd?.stop(), cyrus?.stop()]);
});

/** IMAP LOGIN on the plaintext webmail listener: the tagged answer, the session and the client. */
async function imapLogin(front: Front, user: string, password: string): Promise<{ answer: string; session: string; client: LineClient }> {
  const mark = front.logs.length;
  const client = await LineClient.connect(front.imapTrustedPort);
  await client.readLine();
  const session = await sessionIdOf(front, client.socket.localPort!, mark);
  const result = await client.imap(`LOGIN {${Buffer.byteLength(user)}+}\r\n${user} {${Buffer.byteLength(password)}+}\r\n${password}`);
  return { answer: `${result.status} ${result.text}`, session, client };
}

for (const [mode, login] of [['keep', 'cyrus@example.com'], ['keep', 'CYRUS@Example.com'], ['qualify', 'cyrus']] as const) {
  test(`usernames.domain ${mode}: "${login}", Cyrus's admin under its defaultdomain, gets NO [AUTHORIZATIONFAILED] and Cyrus is not dialled`, async () => {
    const front = mode === 'keep' ? keep : qualify;
    const { answer, session, client } = await imapLogin(front, login, PASSWORDS.cyrus);
    try {
      if (answer.startsWith('OK')) {
        const acl = await client.imap('SETACL user.carol anyone lrs');
        assert.fail(`logged in as the Cyrus admin: SETACL user.carol ${acl.status} ${acl.text}`);
      }
      assert.equal(answer, 'NO [AUTHORIZATIONFAILED] Authorization failed.');
      const lines = linesOfSession(front, session);
      assert.ok(!lines.some((l) => l['event'] === 'session.backend_connected'), 'the backend was dialled');
      const failed = lines.find((l) => l['event'] === 'session.login_failed');
      assert.equal(failed?.['code'], 'BACKEND_IDENTITY_REFUSED');
      assert.match(String(failed?.['reason']), /reserved_users/);
    } finally {
      client.close();
    }
  });
}

for (const [mode, login] of [['keep', 'carol@example.com'], ['qualify', 'carol']] as const) {
  test(`usernames.domain ${mode}: "${login}" logs in to her own mailbox`, async () => {
    const { answer, client } = await imapLogin(mode === 'keep' ? keep : qualify, login, PASSWORDS.carol);
    try {
      assert.match(answer, /^OK /);
      const select = await client.imap('SELECT INBOX');
      assert.equal(select.status, 'OK', select.text);
      assert.ok(select.untagged.some((line) => /^\* 1 EXISTS/.test(line)), select.untagged.join(' | '));
    } finally {
      client.close();
    }
  });
}
