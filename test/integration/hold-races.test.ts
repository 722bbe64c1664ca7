/**
 * A per-user hold (directory.hold_attribute) seen by one login reaches what that login does not
 * hold itself: a login of the user already under way (read before the hold, at its backend) is
 * stopped, not spliced after the hold was seen; and the logins the cache kept from before the hold
 * under another key (the other protocol's, with {protocol} in the filter) are forgotten, though no
 * session of the user was open to close. Real slapd and Dovecot; a relay that holds each backend
 * connection 2 s makes the first login slow.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import { LineClient, ldifLine, startDovecot, startSlapd } from './servers/index.js';
import type { Dovecot, Slapd } from './servers/index.js';
import { registerPasswords, startFront } from './front.js';

const PASSWORD = 'Hold-race-pw-51e0';
const REASON = 'Mailbox moving, please wait and try again later.';

let slapd: Slapd;
let a1: Dovecot;

/** Sets (or, undefined, deletes) ann's mailfrontHold, as an operator's ldapmodify does. */
async function setHold(value: string | undefined): Promise<void> {
  const change = value === undefined ? 'delete: mailfrontHold\n' : `replace: mailfrontHold\n${ldifLine('mailfrontHold', value)}\n`;
  await slapd.modify(`dn: ${slapd.userDn('ann')}\nchangetype: modify\n${change}`).catch(() => undefined);
}

/** Connects to `port`, reads the greeting and sends ann's LOGIN; the tagged answer and the client. */
async function imapLogin(port: number): Promise<{ line: string; client: LineClient }> {
  const client = await LineClient.connect(port);
  await client.readLine();
  client.send(`t1 LOGIN ann ${PASSWORD}`);
  return { line: await client.readLine(10_000), client };
}

before(async () => {
  registerPasswords(PASSWORD);
  slapd = await startSlapd({ users: [{ uid: 'ann', password: PASSWORD, store: 'alpha' }] });
  a1 = await startDovecot({ name: 'holdrace-a1', users: [{ name: 'ann', password: PASSWORD }] });
});

after(async () => {
  await Promise.all([slapd?.stop(), a1?.stop()]);
});

test('a login under way when another login sees the hold is stopped, not spliced', async () => {
  const relay = net.createServer((client) => {
    client.pause();
    client.on('error', () => undefined);
    setTimeout(() => {
      const up = net.connect(a1.imapPort, '127.0.0.1', () => {
        client.pipe(up);
        up.pipe(client);
        client.resume();
      });
      up.on('error', () => client.destroy());
    }, 2_000);
  });
  await new Promise<void>((resolve) => relay.listen(0, '127.0.0.1', resolve));
  const front = await startFront({ slapd, stores: { alpha: { currentMaster: 'a1', slots: { a1: { imapPort: (relay.address() as AddressInfo).port } } } }, directory: { hold_attribute: 'mailfrontHold' } });
  try {
    const first = imapLogin(front.imapTrustedPort);
    await new Promise((resolve) => setTimeout(resolve, 500));
    await setHold(REASON);
    const second = await imapLogin(front.imapTrustedPort);
    second.client.close();
    assert.equal(second.line, `t1 NO [UNAVAILABLE] ${REASON}`);
    const { line, client } = await first;
    client.close();
    assert.doesNotMatch(line, /^t1 OK/, 'the login under way was spliced after the hold was seen');
    assert.ok(!front.logs.some((l) => l['event'] === 'session.spliced'), 'no session spliced');
  } finally {
    await setHold(undefined);
    await front.stop();
    relay.close();
  }
});

test('a held login has the cache forget the user\'s logins kept from before the hold, though no session was open', async () => {
  const front = await startFront({
    slapd,
    stores: { alpha: { currentMaster: 'a1', slots: { a1: { imapPort: a1.imapPort, pop3Port: a1.pop3Port } } } },
    directory: { hold_attribute: 'mailfrontHold', user_filter: '(&(objectClass=inetOrgPerson)(uid={user})(!(description={protocol})))', entry_cache_ttl_ms: 0, auth_cache_ttl_ms: 60_000 },
  });
  try {
    // A webmail page view: logs in over IMAP (cached) and out.
    const view = await imapLogin(front.imapTrustedPort);
    assert.match(view.line, /^t1 OK/);
    view.client.close();
    await setHold(REASON);
    // The phone's POP3 login (another key of the cache) sees the hold.
    const phone = await LineClient.connect(front.pop3TrustedPort);
    try {
      await phone.readLine();
      await phone.pop3('USER ann');
      phone.send(`PASS ${PASSWORD}`);
      assert.equal(await phone.readLine(), `-ERR [SYS/TEMP] ${REASON}`);
    } finally {
      phone.close();
    }
    // The next page view asks the directory, and is held too.
    const next = await imapLogin(front.imapTrustedPort);
    next.client.close();
    assert.equal(next.line, `t1 NO [UNAVAILABLE] ${REASON}`);
  } finally {
    await setHold(undefined);
    await front.stop();
  }
});
