/**
 * directory.user_filter with {protocol}, against real slapd and Dovecot: each user's entry says
 * which protocols the user may use (description: imap, pop3, managesieve), and the filter asks
 * for the login's. With both directory caches on, a login the directory let in over one protocol
 * must not let the same user and password in over another from a cache; the admin API, which
 * has no protocol, still finds every user.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { LdapDirectory } from '../../src/auth/ldap.js';
import { createLogger } from '../../src/log.js';
import { LineClient, directoryConfigOf, startDovecot, startSlapd } from './servers/index.js';
import type { Dovecot, Slapd } from './servers/index.js';
import { ADMIN_TOKEN, registerPasswords, startFront } from './front.js';
import type { Front } from './front.js';

const PASSWORDS = { alice: 'Alice-proto-pw-7c31', bob: 'Bob-proto-pw-2e84', carol: 'Carol-proto-pw-9a06' } as const;
/** The protocols each user's entry allows (description values). */
const ALLOWED = { alice: ['imap'], bob: ['pop3'], carol: ['imap', 'managesieve'] } as const;
const FILTER = '(&(objectClass=inetOrgPerson)(uid={user})(description={protocol}))';
registerPasswords(...Object.values(PASSWORDS), ...Object.values(PASSWORDS).map((pw) => Buffer.from(`\0carol\0${pw}`).toString('base64')));

let slapd: Slapd;
let dovecot: Dovecot;
let front: Front;

before(async () => {
  const users = Object.entries(PASSWORDS).map(([uid, password]) => ({ uid, password, store: 'alpha' }));
  [slapd, dovecot] = await Promise.all([
    startSlapd({ users }),
    startDovecot({ name: 'proto', users: Object.entries(PASSWORDS).map(([name, password]) => ({ name, password })), sieve: true }),
  ]);
  for (const [uid, protocols] of Object.entries(ALLOWED)) {
    await slapd.modify(`dn: ${slapd.userDn(uid)}\nchangetype: modify\nadd: description\n${protocols.map((p) => `description: ${p}`).join('\n')}\n`);
  }
  front = await startFront({
    slapd,
    sieve: true,
    // Both caches on, for longer than the test runs: the second login of a user is within them.
    directory: { user_filter: FILTER, entry_cache_ttl_ms: 60_000, auth_cache_ttl_ms: 60_000 },
    stores: { alpha: { currentMaster: 'd1', slots: { d1: { imapPort: dovecot.imapPort, pop3Port: dovecot.pop3Port, sievePort: dovecot.sievePort! } } } },
  });
});

after(async () => {
  await front?.stop();
  await Promise.all([slapd?.stop(), dovecot?.stop()]);
});

/** An IMAP LOGIN through mailfront: its tagged line. */
async function imapLogin(user: keyof typeof PASSWORDS): Promise<string> {
  const client = await LineClient.connect(front.imapTrustedPort);
  try {
    await client.readLine();
    const result = await client.imap(`LOGIN ${user} "${PASSWORDS[user]}"`);
    return `${result.status} ${result.text}`;
  } finally {
    client.close();
  }
}

/** A POP3 USER/PASS through mailfront: the answer to PASS. */
async function pop3Login(user: keyof typeof PASSWORDS): Promise<string> {
  const client = await LineClient.connect(front.pop3TrustedPort);
  try {
    await client.readLine();
    await client.pop3(`USER ${user}`);
    client.send(`PASS ${PASSWORDS[user]}`);
    return await client.readLine();
  } finally {
    client.close();
  }
}

/** A ManageSieve AUTHENTICATE PLAIN through mailfront: its final line. */
async function sieveLogin(user: keyof typeof PASSWORDS): Promise<string> {
  const client = await LineClient.connect(front.sieveTrustedPort!);
  try {
    while (!(await client.readLine()).startsWith('OK')) {
      // The capabilities before the greeting's OK.
    }
    client.send(`AUTHENTICATE "PLAIN" "${Buffer.from(`\0${user}\0${PASSWORDS[user]}`).toString('base64')}"`);
    for (;;) {
      const line = await client.readLine();
      if (/^(OK|NO|BYE)\b/.test(line)) return line;
    }
  } finally {
    client.close();
  }
}

const IMAP_REFUSED = 'NO [AUTHENTICATIONFAILED] Authentication failed.';
const POP3_REFUSED = '-ERR [AUTH] Authentication failed.';

test('alice may use IMAP only: IMAP logs in, then POP3 with the same password within the caches\' TTL is refused, and IMAP again logs in', async () => {
  assert.match(await imapLogin('alice'), /^OK /);
  assert.equal(await pop3Login('alice'), POP3_REFUSED);
  assert.equal(await sieveLogin('alice'), 'NO "Authentication failed."');
  assert.match(await imapLogin('alice'), /^OK /);
  assert.equal(await pop3Login('alice'), POP3_REFUSED, 'still refused once IMAP was cached twice');
});

test('bob may use POP3 only: POP3 logs in first, then IMAP within the caches\' TTL is refused', async () => {
  assert.match(await pop3Login('bob'), /^\+OK/);
  assert.equal(await imapLogin('bob'), IMAP_REFUSED);
  assert.match(await pop3Login('bob'), /^\+OK/);
  assert.equal(await imapLogin('bob'), IMAP_REFUSED);
});

test('carol may use IMAP and ManageSieve (two values): both log in, POP3 is refused', async () => {
  assert.match(await sieveLogin('carol'), /^OK\b/);
  assert.match(await imapLogin('carol'), /^OK /);
  assert.equal(await pop3Login('carol'), POP3_REFUSED);
  const refused = front.logs.filter((l) => l['event'] === 'session.login_failed' && l['user'] === 'carol');
  assert.deepEqual(refused.map((l) => l['code']), ['UNKNOWN_USER']);
});

test('the admin API, which has no protocol, finds a user of any protocol (whereis), and a kick forgets every protocol\'s cached entry', async () => {
  const { port } = front.mailfront.httpAddress()!;
  const headers = { authorization: `Bearer ${ADMIN_TOKEN}` };
  for (const user of ['alice', 'bob', 'carol']) {
    const answer = await fetch(`http://127.0.0.1:${port}/api/whereis/${user}`, { headers });
    assert.equal(answer.status, 200, user);
    const body = (await answer.json()) as { dn: string; store: string };
    assert.deepEqual([body.dn, body.store], [slapd.userDn(user), 'alpha'], user);
  }
  const nobody = await fetch(`http://127.0.0.1:${port}/api/whereis/nobody`, { headers });
  assert.equal(nobody.status, 404);
  // carol logged in over IMAP and ManageSieve above: the entry cache has an entry for each, and the authentication cache a login.
  const kick = await fetch(`http://127.0.0.1:${port}/api/kick`, { method: 'POST', headers: { ...headers, 'content-type': 'application/json' }, body: JSON.stringify({ user: 'carol' }) });
  assert.equal(kick.status, 200);
  const { forgotten } = (await kick.json()) as { forgotten: number };
  assert.equal(forgotten, 4, 'two logins and two entries of carol');
  // Taken from IMAP only: the change reaches ManageSieve at once (nothing cached is left of it).
  await slapd.modify(`dn: ${slapd.userDn('carol')}\nchangetype: modify\ndelete: description\ndescription: managesieve\n`);
  assert.equal(await sieveLogin('carol'), 'NO "Authentication failed."');
  assert.match(await imapLogin('carol'), /^OK /);
});

test('the directory\'s own entry cache keys by protocol, and a lookup without one tries each in turn', async () => {
  const d = new LdapDirectory(directoryConfigOf(slapd, { userFilter: FILTER, entryCacheTtlMs: 60_000 }), createLogger('silent'));
  const signal = new AbortController().signal;
  try {
    assert.equal(d.byProtocol, true);
    assert.equal((await d.authenticate('alice', PASSWORDS.alice, signal, 'imap')).store, 'alpha');
    await assert.rejects(d.authenticate('alice', PASSWORDS.alice, signal, 'pop3'), { code: 'UNKNOWN_USER' });
    assert.deepEqual(d.cacheEntries(), { entry: 1 }, 'no entry cached for the refusal');
    // Without a protocol a login cannot be checked: the filter needs one.
    await assert.rejects(d.authenticate('alice', PASSWORDS.alice, signal), { code: 'DIRECTORY_PROTOCOL_MISSING', kind: 'internal' });
    assert.equal((await d.lookup('bob', signal))?.dn, slapd.userDn('bob'));
    assert.equal(await d.lookup('bob', signal, 'imap'), null);
    assert.equal(await d.lookup('nobody', signal), null);
    assert.equal(d.forget('alice'), 1);
    assert.deepEqual(d.cacheEntries(), { entry: 0 });
  } finally {
    await d.close();
  }
});
