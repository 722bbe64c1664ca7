/**
 * directory.login_attribute, not set, is the one attribute user_filter compares {user} with: a
 * deployment whose users log in with their address (user_filter (mail={user})) and whose Dovecot
 * knows them by it logs in as that address, as before login_attribute existed, in replay and in
 * master-user mode (a fixed default of uid sent "alice" instead, which Dovecot refused). With a
 * filter that matches aliases and no login_attribute, a replay login goes on with the name typed.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { LineClient, startDovecot, startSlapd } from './servers/index.js';
import type { Dovecot, Slapd } from './servers/index.js';
import { linesOfSession, registerSecrets, sessionIdOf, startFront } from './front.js';
import type { Front } from './front.js';

const PASSWORD = 'Alice-mailkeyed-pw-91a2';
const MASTER = { name: 'mfmaster', password: 'Master-mailkeyed-pw-5d1e' };
registerSecrets([PASSWORD, MASTER.password]);

let slapd: Slapd;
let dovecot: Dovecot;
const fronts: Record<'replay' | 'master' | 'aliases', Front | undefined> = { replay: undefined, master: undefined, aliases: undefined };

before(async () => {
  [slapd, dovecot] = await Promise.all([
    // uid is the short name; users log in with their address, which the backend knows them by.
    startSlapd({ users: [{ uid: 'alice', password: PASSWORD, store: 'alpha', mail: 'alice@example.com' }] }),
    startDovecot({ name: 'mailkeyed', users: [{ name: 'alice@example.com', password: PASSWORD }], masterUser: MASTER }),
  ]);
  const slots = { d1: { imapPort: dovecot.imapPort, pop3Port: dovecot.pop3Port } };
  const byMail = { user_filter: '(&(objectClass=inetOrgPerson)(mail={user}))' };
  const store = (backend: Record<string, unknown>) => ({ alpha: { currentMaster: 'd1', slots, backend } });
  [fronts.replay, fronts.master, fronts.aliases] = await Promise.all([
    startFront({ slapd, directory: byMail, stores: store({ login_mode: 'replay' }) }),
    startFront({ slapd, directory: byMail, stores: store({ login_mode: 'master-user', proxy_user: MASTER.name, proxy_password: MASTER.password }) }),
    startFront({ slapd, directory: { user_filter: '(&(objectClass=inetOrgPerson)(|(uid={user})(mail={user})))' }, stores: store({ login_mode: 'replay' }) }),
  ]);
});

after(async () => {
  await Promise.all(Object.values(fronts).map((front) => front?.stop()));
  await Promise.all([slapd?.stop(), dovecot?.stop()]);
});

for (const which of ['replay', 'master', 'aliases'] as const) {
  test(`${which}: alice logs in with her address, and Dovecot gets that address`, async () => {
    const front = fronts[which]!;
    const mark = front.logs.length;
    const client = await LineClient.connect(front.imapTrustedPort);
    try {
      await client.readLine();
      const session = await sessionIdOf(front, client.socket.localPort!, mark);
      const login = await client.imap(`LOGIN alice@example.com "${PASSWORD}"`);
      assert.equal(login.status, 'OK', login.text);
      const spliced = linesOfSession(front, session).find((l) => l['event'] === 'session.spliced');
      assert.equal(spliced?.['user'], 'alice@example.com');
      assert.equal(spliced?.['typedUser'], undefined);
    } finally {
      client.close();
    }
  });
}
