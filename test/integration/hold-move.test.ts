/**
 * The README's move of a mailbox (Directory entries) as an operator runs it on a fleet, with real
 * servers: slapd, store alpha (Dovecot a1, with ManageSieve), and two mailfront instances with
 * both caches on. whereis reads the directory itself (a hold set after the entry was cached is
 * seen), and says what this instance would do from its caches meanwhile: an instance that was not
 * kicked after the hold was set lets the user in from its cache of logins, and whereis's problem
 * says so. A kick of a held user tells its IMAP and ManageSieve clients the hold's reason, not
 * that an administrator disconnected them.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { LineClient, ldifLine, startDovecot, startSlapd } from './servers/index.js';
import type { Dovecot, Slapd } from './servers/index.js';
import { ADMIN_TOKEN, registerPasswords, startFront } from './front.js';
import type { Front } from './front.js';

const PASSWORD = 'Hold-move-pw-7a2c';
const REASON = 'Mailbox moving to a new server, please wait and try again later.';
const HOLD = 'mailfrontHold';

let slapd: Slapd;
let a1: Dovecot;
let front1: Front;
let front2: Front;

/** Sets (or, undefined, deletes) `uid`'s mailfrontHold, as an operator's ldapmodify does. */
async function setHold(uid: string, value: string | undefined): Promise<void> {
  const change = value === undefined ? `delete: ${HOLD}\n` : `replace: ${HOLD}\n${ldifLine(HOLD, value)}\n`;
  await slapd.modify(`dn: ${slapd.userDn(uid)}\nchangetype: modify\n${change}`).catch(() => undefined);
}

async function imapLogin(front: Front, user: string): Promise<string> {
  const c = await LineClient.connect(front.imapTrustedPort);
  try {
    await c.readLine();
    c.send(`t1 LOGIN ${user} ${PASSWORD}`);
    return await c.readLine();
  } finally {
    c.close();
  }
}

async function imapSession(front: Front, user: string): Promise<LineClient> {
  const c = await LineClient.connect(front.imapTrustedPort);
  await c.readLine();
  c.send(`t1 LOGIN ${user} ${PASSWORD}`);
  assert.match(await c.readLine(), /^t1 OK /, `${user}'s login`);
  return c;
}

async function sieveSession(front: Front, user: string): Promise<LineClient> {
  const c = await LineClient.connect(front.sieveTrustedPort!);
  for (let line = await c.readLine(); !line.startsWith('OK'); line = await c.readLine());
  c.send(`AUTHENTICATE "PLAIN" "${Buffer.from(`\0${user}\0${PASSWORD}`).toString('base64')}"`);
  assert.match(await c.readLine(), /^OK/, `${user}'s ManageSieve login`);
  return c;
}

async function admin(front: Front, method: 'GET' | 'POST', path: string, body?: unknown): Promise<Record<string, unknown>> {
  const { port } = front.mailfront.httpAddress()!;
  const response = await fetch(`http://127.0.0.1:${port}${path}`, { method, headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
  assert.equal(response.status, 200, `${method} ${path}`);
  return (await response.json()) as Record<string, unknown>;
}

before(async () => {
  registerPasswords(PASSWORD);
  slapd = await startSlapd({
    users: [
      { uid: 'ann', password: PASSWORD, store: 'alpha' },
      { uid: 'ava', password: PASSWORD, store: 'alpha' },
      { uid: 'amy', password: PASSWORD, store: 'alpha' },
    ],
  });
  a1 = await startDovecot({ name: 'holdmove-a1', users: ['ann', 'ava', 'amy'].map((name) => ({ name, password: PASSWORD })), sieve: true });
  const options = {
    slapd,
    stores: { alpha: { currentMaster: 'a1', slots: { a1: { imapPort: a1.imapPort, pop3Port: a1.pop3Port, sievePort: a1.sievePort! } } } },
    sieve: true,
    directory: { hold_attribute: HOLD, entry_cache_ttl_ms: 60_000, auth_cache_ttl_ms: 60_000 },
  };
  [front1, front2] = await Promise.all([startFront(options), startFront(options)]);
});

after(async () => {
  await Promise.all([front1?.stop(), front2?.stop()]);
  await Promise.all([slapd?.stop(), a1?.stop()]);
});

test('whereis reads the hold set after the entry was cached', async () => {
  try {
    assert.match(await imapLogin(front1, 'ann'), /^t1 OK /);
    await setHold('ann', REASON);
    const whereis = await admin(front1, 'GET', '/api/whereis/ann');
    assert.equal(whereis['held'], REASON, 'the directory holds ann: whereis must not answer from the entry cached before the hold');
    assert.match(String(whereis['problem']), /^the directory holds the user \(directory\.hold_attribute\): its logins are refused with "Mailbox moving/);
  } finally {
    await setHold('ann', undefined);
    await admin(front1, 'POST', '/api/kick', { user: 'ann' });
  }
});

test('whereis on an instance not kicked after the hold shows the cached view and says that it lets the user in', async () => {
  try {
    // A webmail page view on each instance: the login and the entry are cached on both.
    assert.match(await imapLogin(front1, 'ava'), /^t1 OK /);
    assert.match(await imapLogin(front2, 'ava'), /^t1 OK /);
    await setHold('ava', REASON);
    // Step 2 run on instance 1 only.
    await admin(front1, 'POST', '/api/kick', { user: 'ava' });

    const kicked = await admin(front1, 'GET', '/api/whereis/ava');
    assert.equal(kicked['held'], REASON);
    assert.deepEqual(kicked['cached'], [], 'the kicked instance holds nothing of ava');
    assert.doesNotMatch(String(kicked['problem']), /this instance/);

    const notKicked = await admin(front2, 'GET', '/api/whereis/ava');
    assert.equal(notKicked['held'], REASON, 'the directory holds ava, whatever instance 2 cached');
    const cached = notKicked['cached'] as Array<Record<string, unknown>>;
    assert.deepEqual(cached.map((c) => [c['cache'], c['store'], c['held']]).sort(), [['auth', 'alpha', null], ['entry', 'alpha', null]]);
    for (const c of cached) assert.ok(Number(c['expiresInMs']) > 50_000 && Number(c['expiresInMs']) <= 60_000, `expiresInMs ${String(c['expiresInMs'])}`);
    assert.match(String(notKicked['problem']), /; this instance lets the user in from its cache for (59|60) s more: mailfront kick ava here$/);
    // As it says: instance 2 lets ava in, instance 1 does not.
    assert.match(await imapLogin(front2, 'ava'), /^t1 OK /);
    assert.equal(await imapLogin(front1, 'ava'), `t1 NO [UNAVAILABLE] ${REASON}`);

    // Kicked there too: nothing cached, the problem is the hold alone.
    await admin(front2, 'POST', '/api/kick', { user: 'ava' });
    const after = await admin(front2, 'GET', '/api/whereis/ava');
    assert.deepEqual(after['cached'], []);
    assert.equal(after['problem'], `the directory holds the user (directory.hold_attribute): its logins are refused with "${REASON}"`);
  } finally {
    await setHold('ava', undefined);
    await Promise.all([admin(front1, 'POST', '/api/kick', { user: 'ava' }), admin(front2, 'POST', '/api/kick', { user: 'ava' })]);
  }
});

test('a kick of a held user tells its IMAP and ManageSieve clients the hold\'s reason', async () => {
  const imap = await imapSession(front1, 'amy');
  const sieve = await sieveSession(front1, 'amy');
  try {
    await setHold('amy', REASON);
    const mark = front1.logs.length;
    const kick = await admin(front1, 'POST', '/api/kick', { user: 'amy' });
    assert.equal((kick['kicked'] as unknown[]).length, 2);
    assert.equal(await imap.readLine(5_000), `* BYE [UNAVAILABLE] ${REASON}`);
    assert.equal(await imap.waitClosed(5_000), true);
    assert.equal(await sieve.readLine(5_000), `BYE (TRYLATER) "${REASON}"`);
    assert.equal(await sieve.waitClosed(5_000), true);
    const kicked = front1.logs.slice(mark).filter((l) => l['event'] === 'session.kicked');
    assert.deepEqual(kicked.map((l) => [l['user'], l['held']]), [['amy', true], ['amy', true]]);
  } finally {
    imap.close();
    sieve.close();
    await setHold('amy', undefined);
    await admin(front1, 'POST', '/api/kick', { user: 'amy' });
  }
});
