/**
 * OAuth logins of accounts the directory has locked or disabled, with real servers: slapd with
 * OpenLDAP's password policy overlay (ppolicy_use_lockout) and an nsAccountLock attribute as 389
 * DS and FreeIPA have it (here a user attribute: slapd refuses a user-defined operational one, so
 * the test also shows the search asks for it by name), Dovecot in master-user mode. A bearer
 * login makes no bind, whose refusal would have said so: an administrator's ppolicy lock
 * (pwdAccountLockedTime 000001010000Z) and nsAccountLock TRUE are refused as a wrong token
 * (ACCOUNT_LOCKED in the log), a lock failed password binds set is not (a guard for the
 * password), and an entry a password login cached without the lock attributes is read again.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { LineClient, ldifLine, startDovecot, startSlapd, slapdPolicyDn } from './servers/index.js';
import type { Dovecot, Slapd } from './servers/index.js';
import { ADMIN_TOKEN, assertNoRegisteredSecret, makeMessage, registerPasswords, registerSecrets, startFront, waitForLog } from './front.js';
import type { Front } from './front.js';
import { claimsFor, jwks, makeKey, signJwt } from './oauth-idp.js';

const ISSUER = 'https://idp.example.org/realms/mail';
const AUDIENCE = 'mail';
const MASTER = { name: 'proxymaster', password: 'Proxy-master-pw-4c1e' };
const PASSWORD = 'Lock-oauth-pw-8d2f';
const AUTH_FAILED = 'NO [AUTHENTICATIONFAILED] Authentication failed.';
registerPasswords(PASSWORD, MASTER.password);

/** nsAccountLock as 389 DS names it (2.16.840.1.113730.3.1.610), and a class to hold it (RFC 5612's example enterprise number). */
const NS_ACCOUNT_LOCK_SCHEMA = [
  "attributetype ( 2.16.840.1.113730.3.1.610 NAME 'nsAccountLock' EQUALITY caseIgnoreMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )",
  "objectclass ( 1.3.6.1.4.1.32473.1.2.1 NAME 'testAccountLock' AUXILIARY MAY nsAccountLock )",
].join('\n');

/** Now as an LDAP GeneralizedTime (a lock failed binds set). */
function generalizedNow(): string {
  return `${new Date().toISOString().replace(/[-:T]/g, '').slice(0, 14)}Z`;
}

const key = makeKey('lock-rsa', 'RS256');
const dir = mkdtempSync(join(tmpdir(), 'oauth-lock-'));
const jwksFile = join(dir, 'jwks.json');
writeFileSync(jwksFile, jwks([key]));

function tokenFor(user: string): string {
  const jwt = signJwt(key, claimsFor(user, ISSUER, AUDIENCE));
  registerSecrets([jwt, jwt.split('.')[2] ?? '']);
  return jwt;
}
const b64 = (text: string): string => Buffer.from(text, 'utf8').toString('base64');
const oauthbearer = (user: string, token: string): string => b64(`n,a=${user},\x01host=127.0.0.1\x01port=143\x01auth=Bearer ${token}\x01\x01`);

const USERS = ['alice', 'locky', 'ipa', 'enabled', 'timed', 'later', 'cached'];
let slapd: Slapd;
let a1: Dovecot;
let front: Front;

before(async () => {
  const policy = { pwdPolicySubentry: slapdPolicyDn('default') };
  slapd = await startSlapd({
    ppolicy: { policies: { default: { pwdLockout: 'TRUE', pwdMaxFailure: '3', pwdLockoutDuration: '3600' } }, default: 'default', useLockout: true },
    schema: NS_ACCOUNT_LOCK_SCHEMA,
    users: [
      { uid: 'alice', password: PASSWORD, store: 'alpha' },
      // An administrator's lock (draft-behera-ldap-password-policy-10 §5.3.3).
      { uid: 'locky', password: PASSWORD, store: 'alpha', attributes: { ...policy, pwdAccountLockedTime: '000001010000Z' } },
      { uid: 'ipa', password: PASSWORD, store: 'alpha' },
      { uid: 'enabled', password: PASSWORD, store: 'alpha' },
      // Locked for pwdLockoutDuration by failed password binds.
      { uid: 'timed', password: PASSWORD, store: 'alpha', attributes: { ...policy, pwdAccountLockedTime: generalizedNow() } },
      { uid: 'later', password: PASSWORD, store: 'alpha', attributes: policy },
      { uid: 'cached', password: PASSWORD, store: 'alpha', attributes: policy },
    ],
  });
  // ipa user-disable (and its opposite), written after slapadd: it took the entry's second objectClass line for its only one.
  for (const [uid, value] of [['ipa', 'TRUE'], ['enabled', 'FALSE']] as const) {
    await slapd.modify(`${ldifLine('dn', slapd.userDn(uid))}\nchangetype: modify\nadd: objectClass\nobjectClass: testAccountLock\n-\nadd: nsAccountLock\nnsAccountLock: ${value}\n-\n`);
  }
  a1 = await startDovecot({ name: 'oauth-lock-a1', users: USERS.map((name) => ({ name, password: `${name}-backend-only-pw` })), masterUser: MASTER });
  registerPasswords(...USERS.map((name) => `${name}-backend-only-pw`));
  for (const user of USERS) await a1.deliver(user, makeMessage(`for ${user}`));
  front = await startFront({
    slapd,
    stores: { alpha: { currentMaster: 'a1', slots: { a1: { imapPort: a1.imapPort, pop3Port: a1.pop3Port } } } },
    backend: { login_mode: 'master-user', proxy_user: MASTER.name, proxy_password: MASTER.password },
    // The cache of entries as in production (the harness turns it off).
    directory: { login_attribute: 'uid', entry_cache_ttl_ms: 30_000, auth_cache_ttl_ms: 0 },
    throttle: { enabled: true, failures_per_user: 50, failures_per_address: 1000, base_delay_ms: 10, max_delay_ms: 10 },
    oauth2: { issuers: [ISSUER], audiences: [AUDIENCE], jwks_file: jwksFile, user_claim: 'preferred_username', clock_skew_ms: 5_000 },
  });
});

after(async () => {
  if (front !== undefined) assertNoRegisteredSecret(front.rawLogs, 'the OAuth lock logins\' log');
  await front?.stop();
  await Promise.all([slapd?.stop(), a1?.stop()]);
  rmSync(dir, { recursive: true, force: true });
});

async function metric(name: string, labels: string): Promise<number> {
  const { port } = front.mailfront.httpAddress()!;
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}}`));
  return line === undefined ? 0 : Number(line.split(' ').pop());
}

/** A token login of `user` over IMAP: the error challenge (if any) and the tagged answer. */
async function tokenLogin(user: string): Promise<{ challenge: string | null; line: string }> {
  const c = await LineClient.connect(front.imapTrustedPort);
  try {
    await c.readLine();
    const tag = c.nextTag();
    c.send(`${tag} AUTHENTICATE OAUTHBEARER ${oauthbearer(user, tokenFor(user))}`);
    let challenge: string | null = null;
    for (;;) {
      const line = await c.readLine();
      if (line.startsWith('+ ')) {
        challenge = Buffer.from(line.slice(2), 'base64').toString('utf8');
        c.send('AQ==');
        continue;
      }
      if (line.startsWith(`${tag} `)) return { challenge, line: line.slice(tag.length + 1) };
    }
  } finally {
    c.close();
  }
}

async function passwordLogin(user: string): Promise<string> {
  const c = await LineClient.connect(front.imapTrustedPort);
  try {
    await c.readLine();
    const r = await c.imap(`LOGIN ${user} ${PASSWORD}`);
    return `${r.status} ${r.text}`;
  } finally {
    c.close();
  }
}

/** A token login of `user` the directory's lock refuses: the answer of a wrong token, ACCOUNT_LOCKED in the log. */
async function assertLockedOut(user: string, because: RegExp): Promise<void> {
  const mark = front.logs.length;
  const { challenge, line } = await tokenLogin(user);
  assert.ok(challenge !== null && challenge.includes('invalid_token'), `${user}: ${String(challenge)}`);
  assert.equal(line, AUTH_FAILED, user);
  const failed = await waitForLog(front, (l) => l['event'] === 'session.login_failed', 5_000, mark);
  assert.equal(failed['code'], 'ACCOUNT_LOCKED', `${user}: ${String(failed['reason'])}`);
  assert.equal(failed['kind'], 'auth-failed');
  assert.equal(failed['level'], 'info');
  assert.match(String(failed['reason']), because);
  assert.ok(!front.logs.slice(mark).some((l) => l['event'] === 'session.spliced'), user);
}

describe('OAuth logins of locked accounts', () => {
  test('an account an administrator locked (ppolicy pwdAccountLockedTime 000001010000Z) is refused by token as by password', async () => {
    assert.match(await tokenLogin('alice').then((r) => r.line), /^OK /, 'an account not locked');
    const before = await metric('mailfront_auth_failures_total', 'reason="account-locked"');
    assert.match(await passwordLogin('locky'), /^NO /);
    await assertLockedOut('locky', /pwdAccountLockedTime 000001010000Z/);
    assert.equal(await metric('mailfront_auth_failures_total', 'reason="account-locked"'), before + 2, 'the password login and the token login');
  });

  test('an account disabled with nsAccountLock TRUE (389 DS, FreeIPA\'s ipa user-disable) is refused; FALSE is let in', async () => {
    await assertLockedOut('ipa', /nsAccountLock TRUE/);
    assert.match((await tokenLogin('enabled')).line, /^OK /);
  });

  test('a lock that failed password binds set (pwdLockoutDuration) refuses the password, not a token', async () => {
    assert.match(await passwordLogin('timed'), /^NO \[AUTHENTICATIONFAILED\]/);
    assert.match((await tokenLogin('timed')).line, /^OK /, 'a guard against password guessing: the token was not guessed');
  });

  test('an entry a password login cached, without the lock attributes, is read again by a token login', async () => {
    assert.match(await passwordLogin('later'), /^OK /);
    await slapd.modify(`${ldifLine('dn', slapd.userDn('later'))}\nchangetype: modify\nreplace: pwdAccountLockedTime\npwdAccountLockedTime: 000001010000Z\n-\n`);
    await assertLockedOut('later', /pwdAccountLockedTime/);
  });

  test('a lock set after a token login cached the entry is seen once the entry is forgotten (mailfront kick)', async () => {
    assert.match((await tokenLogin('cached')).line, /^OK /);
    await slapd.modify(`${ldifLine('dn', slapd.userDn('cached'))}\nchangetype: modify\nreplace: pwdAccountLockedTime\npwdAccountLockedTime: 000001010000Z\n-\n`);
    assert.match((await tokenLogin('cached')).line, /^OK /, 'from the cache of entries (entry_cache_ttl_ms), as README says');
    const { port } = front.mailfront.httpAddress()!;
    const kicked = await fetch(`http://127.0.0.1:${port}/api/kick`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ user: 'cached' }) });
    assert.equal(kicked.status, 200);
    await assertLockedOut('cached', /pwdAccountLockedTime/);
  });
});
