/**
 * mailfront against a real 389 Directory Server (ds389.ts harness) and Dovecot. 389 DS refuses
 * the bind of an inactivated account (nsAccountLock: true, FreeIPA's ipa user-disable) with
 * unwillingToPerform (53) and of one its password policy locked out with constraintViolation (19),
 * whatever the password: each is answered as a wrong password (same text, same delay, counted by
 * the throttle and towards a connection's three failed logins), logged at info with the server's
 * result. With the password policy control 389 DS adds accountLocked to those refusals, and says
 * passwordExpired only for the right password, as OpenLDAP does. Also: the shipped 389 DS schema
 * and the README's ACIs carry a store map and its failover, and a map past the server's
 * look-through limit fails with a message that names what to raise. whereis shows 389 DS's own
 * locks, with the README's ACIs: nsAccountLock (an inactivated account), a lockout of its password
 * policy (passwordLockout: accountUnlockTime, until then, or 19700101000000Z with passwordUnlock
 * off: until an administrator unlocks it), a password an administrator reset under
 * passwordMustChange (passwordExpirationTime 19700101000000Z, no pwdReset), and an ACI that hides
 * accountUnlockTime, which must read as unknown, not "not locked" (no backend: whereis asks none).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { LineClient, LDAP_PEOPLE_DN, LDAP_SERVICE_DN, LDAP_STORE_ATTRIBUTE, LDAP_STORES_DN, freePort, repoRoot, startDovecot, startDs389 } from './servers/index.js';
import type { Dovecot, Ds389 } from './servers/index.js';
import { ADMIN_TOKEN, AUTH_FAILURE_DELAY_MS, assertSameFailure, registerPasswords, startFront, waitForLog } from './front.js';
import type { Front } from './front.js';
import { claimsFor, jwks, makeKey, signJwt } from './oauth-idp.js';
import { registerSecrets } from './front.js';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LdapStoreMapSource } from '../../src/routing/sources.js';
import { StoreMapHolder } from '../../src/routing/holder.js';
import { createLogger } from '../../src/log.js';
import { readBackend } from '../../src/config/schema.js';
import { IssueList } from '../../src/config/validate.js';

const PASSWORD = 'Ds389-user-pw-4c1';
const WRONG = 'Ds389-wrong-pw-9d2';
const FAILED = 't1 NO [AUTHENTICATIONFAILED] Authentication failed.';
const EXPIRED_TEXT = 'Your password has expired, please change it and log in again.';
const MUST_CHANGE_TEXT = 'Your password was reset and must be changed, please change it and log in again.';
const USERS = ['alice', 'bob', 'disabled', 'lockme', 'expired', 'gracie', 'reset'];
/** whereis's users (the last describe), in the directory only: whereis asks no backend. */
const WHEREIS_USERS = ['wh-alice', 'wh-lockme', 'wh-forever', 'wh-disabled', 'wh-reset'];
const MASTER = { name: 'proxymaster', password: 'Ds389-proxy-pw-7e1' };
const ISSUER = 'https://idp.example.org/realms/mail';
const AUDIENCE = 'mail';
const tokenKey = makeKey('ds389-rsa', 'RS256');

let ds: Ds389;
let a1: Dovecot;

before(async () => {
  registerPasswords(PASSWORD, MASTER.password, WRONG, ...[0, 1, 2, 3, 4].map((i) => `${WRONG}-${i}`));
  ds = await startDs389({ users: [...USERS, ...WHEREIS_USERS].map((uid) => ({ uid, password: PASSWORD, store: 'alpha' })) });
  a1 = await startDovecot({ name: 'ds389-a1', users: USERS.map((name) => ({ name, password: PASSWORD })), sieve: true, masterUser: MASTER });
  // 389 DS's global password policy: three wrong passwords lock an account out; passwords expire,
  // with two grace logins; one an administrator sets must be changed.
  await ds.modify(
    [
      'dn: cn=config',
      'changetype: modify',
      ...[['passwordLockout', 'on'], ['passwordMaxFailure', '3'], ['passwordExp', 'on'], ['passwordMaxAge', '8640000'], ['passwordGraceLimit', '2'], ['passwordMustChange', 'on']].flatMap(([name, value]) => [`replace: ${name}`, `${name}: ${value}`, '-']),
      '',
      `dn: ${ds.userDn('disabled')}`,
      'changetype: modify',
      'add: nsAccountLock',
      'nsAccountLock: true',
      '-',
      '',
      // Expired long ago, its grace logins used.
      `dn: ${ds.userDn('expired')}`,
      'changetype: modify',
      'replace: passwordExpirationTime',
      'passwordExpirationTime: 20000101000000Z',
      '-',
      'replace: passwordGraceUserTime',
      'passwordGraceUserTime: 2',
      '-',
      '',
      `dn: ${ds.userDn('gracie')}`,
      'changetype: modify',
      'replace: passwordExpirationTime',
      'passwordExpirationTime: 20000101000000Z',
      '-',
      '',
      // Set by the administrator (Directory Manager) under passwordMustChange.
      `dn: ${ds.userDn('reset')}`,
      'changetype: modify',
      'replace: userPassword',
      `userPassword: ${PASSWORD}`,
      '-',
      '',
    ].join('\n'),
  );
});

after(async () => {
  await Promise.all([ds?.stop(), a1?.stop()]);
});

function stores(): Parameters<typeof startFront>[0]['stores'] {
  return { alpha: { currentMaster: 'a1', slots: { a1: { imapPort: a1.imapPort, pop3Port: a1.pop3Port, sievePort: a1.sievePort! } } } };
}

async function imapLogin(front: Front, user: string, password: string): Promise<{ line: string; ms: number }> {
  const c = await LineClient.connect(front.imapTrustedPort);
  try {
    await c.readLine();
    const started = Date.now();
    c.send(`t1 LOGIN "${user}" "${password}"`);
    // The tagged answer, after the [ALERT] of a grace login (password-policy-alert.test reads those).
    let line = await c.readLine();
    while (line.startsWith('* OK [ALERT] ')) line = await c.readLine();
    return { line, ms: Date.now() - started };
  } finally {
    c.close();
  }
}

async function pop3Login(front: Front, user: string, password: string): Promise<string> {
  const c = await LineClient.connect(front.pop3TrustedPort);
  try {
    await c.readLine();
    await c.pop3(`USER ${user}`);
    c.send(`PASS ${password}`);
    return await c.readLine();
  } finally {
    c.close();
  }
}

async function sieveLogin(front: Front, user: string, password: string): Promise<string> {
  const c = await LineClient.connect(front.sieveTrustedPort!);
  try {
    for (let line = await c.readLine(); !line.startsWith('OK'); line = await c.readLine());
    c.send(`AUTHENTICATE "PLAIN" "${Buffer.from(`\0${user}\0${password}`).toString('base64')}"`);
    return await c.readLine();
  } finally {
    c.close();
  }
}

/** Logins on one IMAP connection until it closes (at most 5): every line the client got after each. */
async function loginsOnOneConnection(front: Front, user: string, password: string): Promise<string[]> {
  const c = await LineClient.connect(front.imapTrustedPort);
  const lines: string[] = [];
  try {
    await c.readLine();
    for (let i = 1; i <= 5; i++) {
      c.send(`t${i} LOGIN "${user}" "${password}"`);
      for (;;) {
        let line: string;
        try {
          line = await c.readLine(5_000);
        } catch {
          lines.push('(closed)');
          return lines;
        }
        lines.push(line.replace(/^t\d+ /, 'tN '));
        if (line.startsWith(`t${i} `)) break;
      }
    }
    return lines;
  } finally {
    c.close();
  }
}

async function metric(front: Front, name: string, labels: string): Promise<number> {
  const { port } = front.mailfront.httpAddress()!;
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}}`));
  return line === undefined ? 0 : Number(line.split(' ').pop());
}

// The logins' three describes run at once, each with a front of its own (its logs, metrics and
// throttle), and users no other changes in the directory: bob, whose wrong passwords lock him
// out, only without the control. Their cases, one after another (concurrency 1: a suite takes
// its parent's otherwise). The store map and whereis, which change the server's settings for a
// while, come after, alone.
describe('389 DS logins', { concurrency: true }, () => {
  describe('389 DS with the password policy control (the default)', { concurrency: 1 }, () => {
    let front: Front;
    before(async () => {
      front = await startFront({ slapd: ds, stores: stores(), sieve: true });
    });
    after(async () => {
      await front?.stop();
    });

    test('a user of 389 DS logs in', async () => {
      assert.match((await imapLogin(front, 'alice', PASSWORD)).line, /^t1 OK /);
    });

    test('an inactivated account (nsAccountLock) is refused as a wrong password, after the same delay, whatever the password; logged at info with the result', async () => {
      const mark = front.logs.length;
      await assertSameFailure((user, password) => imapLogin(front, user, password), ['disabled', PASSWORD], ['nosuchuser', WRONG], FAILED);
      assert.equal((await imapLogin(front, 'disabled', WRONG)).line, FAILED);
      assert.equal(await pop3Login(front, 'disabled', PASSWORD), '-ERR [AUTH] Authentication failed.');
      assert.equal(await sieveLogin(front, 'disabled', PASSWORD), 'NO "Authentication failed."');
      const failed = await waitForLog(front, (l) => l['event'] === 'session.login_failed' && l['user'] === 'disabled', 5_000, mark);
      assert.equal(failed['level'], 'info');
      assert.equal(failed['kind'], 'auth-failed');
      // 389 DS sends accountLocked with its refusal when asked for the control.
      assert.equal(failed['code'], 'ACCOUNT_LOCKED');
      assert.match(String(failed['reason']), /result 53 unwillingToPerform "Account inactivated\. Contact system administrator\."/);
      assert.equal(await metric(front, 'mailfront_logins_total', 'protocol="imap",result="auth-tempfail"'), 0);
      assert.equal(await metric(front, 'mailfront_ldap_request_duration_seconds_count', 'operation="user-bind",result="error"'), 0);
    });

    test('a connection with three refused logins of an inactivated account is closed as with three wrong passwords', async () => {
      const wrong = await loginsOnOneConnection(front, 'nosuchuser', WRONG);
      assert.ok(wrong.includes('(closed)'), JSON.stringify(wrong));
      assert.deepEqual(await loginsOnOneConnection(front, 'disabled', PASSWORD), wrong);
    });

    test('an account 389 DS locked out (passwordLockout: constraintViolation for any password) is refused as a wrong password', async () => {
      for (let i = 0; i < 3; i++) assert.equal((await imapLogin(front, 'lockme', WRONG)).line, FAILED);
      const mark = front.logs.length;
      const right = await imapLogin(front, 'lockme', PASSWORD);
      assert.equal(right.line, FAILED);
      assert.ok(right.ms >= AUTH_FAILURE_DELAY_MS - 20, `${right.ms} ms`);
      assert.equal(await pop3Login(front, 'lockme', PASSWORD), '-ERR [AUTH] Authentication failed.');
      const failed = await waitForLog(front, (l) => l['event'] === 'session.login_failed' && l['user'] === 'lockme', 5_000, mark);
      assert.equal(failed['level'], 'info');
      assert.equal(failed['code'], 'ACCOUNT_LOCKED');
      assert.match(String(failed['reason']), /result 19 constraintViolation "Exceed password retry limit\. Please try later\."/);
    });

    test('an expired password is told only to its owner (389 DS says passwordExpired for the right password alone); grace logins let in; a reset password must be changed', async () => {
      assert.equal((await imapLogin(front, 'expired', PASSWORD)).line, `t1 NO [EXPIRED] ${EXPIRED_TEXT}`);
      const mark = front.logs.length;
      assert.equal((await imapLogin(front, 'expired', WRONG)).line, FAILED);
      const wrong = await waitForLog(front, (l) => l['event'] === 'session.login_failed' && l['user'] === 'expired', 5_000, mark);
      assert.equal(wrong['code'], 'WRONG_PASSWORD');
      const graceMark = front.logs.length;
      assert.match((await imapLogin(front, 'gracie', PASSWORD)).line, /^t1 OK /);
      const grace = await waitForLog(front, (l) => l['event'] === 'directory.password_grace_login', 5_000, graceMark);
      assert.equal(grace['graceLeft'], 1);
      assert.equal((await imapLogin(front, 'reset', PASSWORD)).line, `t1 NO [EXPIRED] ${MUST_CHANGE_TEXT}`);
      assert.equal((await imapLogin(front, 'reset', WRONG)).line, FAILED);
    });
  });

  describe('389 DS without the control, the throttle on', { concurrency: 1 }, () => {
    let front: Front;
    before(async () => {
      front = await startFront({ slapd: ds, stores: stores(), directory: { password_policy: false }, throttle: { enabled: true, failures_per_user: 3, failures_per_address: 1000, base_delay_ms: 10, max_delay_ms: 10 } });
    });
    after(async () => {
      await front?.stop();
    });

    test('an inactivated account is USER_BIND_REFUSED (info, reason bind-refused), and counted by the throttle as a wrong password is', async () => {
      const mark = front.logs.length;
      const disabled: string[] = [];
      const wrong: string[] = [];
      // Distinct passwords: the throttle counts a repeated wrong one once.
      for (let i = 0; i < 5; i++) {
        disabled.push((await imapLogin(front, 'disabled', `${WRONG}-${i}`)).line);
        wrong.push((await imapLogin(front, 'bob', `${WRONG}-${i}`)).line);
      }
      assert.deepEqual(disabled, wrong);
      assert.ok(disabled.some((line) => line.startsWith('t1 NO [LIMIT]')), JSON.stringify(disabled));
      const failed = await waitForLog(front, (l) => l['event'] === 'session.login_failed' && l['user'] === 'disabled', 5_000, mark);
      assert.equal(failed['level'], 'info');
      assert.equal(failed['code'], 'USER_BIND_REFUSED');
      assert.match(String(failed['reason']), /refused the bind of uid=disabled,ou=people,dc=example,dc=org on ldap:\/\/127\.0\.0\.1:\d+ with result 53 unwillingToPerform "Account inactivated\. Contact system administrator\."/);
      assert.equal(await metric(front, 'mailfront_auth_failures_total', 'reason="bind-refused"'), 3);
    });
  });

  // A token login makes no bind: an inactivated account is seen through nsAccountLock, which the
  // README's ACI lets the service account read (without it, the lock is hidden and the token let in).
  describe('OAuth logins against 389 DS', { concurrency: 1 }, () => {
    let front: Front;
    const dir = mkdtempSync(join(tmpdir(), 'ds389-oauth-'));
    before(async () => {
      const jwksFile = join(dir, 'jwks.json');
      writeFileSync(jwksFile, jwks([tokenKey]));
      front = await startFront({
        slapd: ds,
        stores: stores(),
        backend: { login_mode: 'master-user', proxy_user: MASTER.name, proxy_password: MASTER.password },
        oauth2: { issuers: [ISSUER], audiences: [AUDIENCE], jwks_file: jwksFile, user_claim: 'preferred_username', clock_skew_ms: 5_000 },
      });
    });
    after(async () => {
      await front?.stop();
      rmSync(dir, { recursive: true, force: true });
    });

    async function tokenLogin(user: string): Promise<string> {
      const jwt = signJwt(tokenKey, claimsFor(user, ISSUER, AUDIENCE));
      registerSecrets([jwt, jwt.split('.')[2] ?? '']);
      const c = await LineClient.connect(front.imapTrustedPort);
      try {
        await c.readLine();
        c.send(`t1 AUTHENTICATE OAUTHBEARER ${Buffer.from(`n,,\x01auth=Bearer ${jwt}\x01\x01`).toString('base64')}`);
        for (;;) {
          const line = await c.readLine();
          if (line.startsWith('+ ')) c.send('AQ==');
          else if (line.startsWith('t1 ')) return line;
        }
      } finally {
        c.close();
      }
    }

    test('an inactivated account (nsAccountLock: true) is refused a token login (ACCOUNT_LOCKED); an active one logs in', async () => {
      let mark = front.logs.length;
      assert.match(await tokenLogin('alice'), /^t1 OK /);
      assert.equal((await waitForLog(front, (l) => l['event'] === 'session.spliced', 5_000, mark))['user'], 'alice');
      mark = front.logs.length;
      assert.equal(await tokenLogin('disabled'), FAILED);
      const failed = await waitForLog(front, (l) => l['event'] === 'session.login_failed', 5_000, mark);
      assert.equal(failed['code'], 'ACCOUNT_LOCKED', String(failed['reason']));
    });
  });
});

describe('a store map in 389 DS', () => {
  const storeLdif = (name: string): string =>
    [
      `dn: cn=${name},${LDAP_STORES_DN}`,
      'changetype: add',
      'objectClass: mailfrontStore',
      `cn: ${name}`,
      `mailfrontCurrentMaster: ${name}a`,
      '',
      ...['a', 'b'].flatMap((s, i) => [`dn: cn=${name}${s},cn=${name},${LDAP_STORES_DN}`, 'changetype: add', 'objectClass: mailfrontSlot', `cn: ${name}${s}`, 'mailfrontHost: 127.0.0.1', `mailfrontImapPort: ${10143 + i}`, '']),
    ].join('\n');

  test('the shipped schema and the README\'s ACIs: the service account reads the map and writes a failover', async () => {
    await ds.modify(storeLdif('s1'));
    const source = new LdapStoreMapSource({ kind: 'ldap', urls: [ds.url], bindDn: ds.bindDn, bindPassword: ds.bindPassword, baseDn: LDAP_STORES_DN, pollIntervalMs: 100, starttls: false, operationTimeoutMs: 2_000 });
    const holder = new StoreMapHolder(source, () => ({ backend: readBackend(undefined, 'backend', (p) => p, new IssueList()), backendProfiles: new Map() }), createLogger('silent'), { changes: () => undefined });
    try {
      assert.equal((await holder.reload('start')).ok, true);
      assert.equal(holder.current.stores.get('s1')!.currentMaster, 's1a');
      const result = await holder.failover('s1', 's1b');
      assert.deepEqual(result.changes, [{ store: 's1', from: 's1a', to: 's1b' }]);
      const written = (await source.load()) as { stores: Record<string, { current_master: string; preferred_master?: string }> };
      assert.equal(written.stores['s1']!.current_master, 's1b');
      assert.equal(written.stores['s1']!.preferred_master, 's1a', 'the preferred master written with it');
    } finally {
      await source.close();
    }
  });

  test('a map past the look-through limit (adminLimitExceeded) says to set nsPagedLookThroughLimit; once set, it is read', async () => {
    for (const name of ['l1', 'l2', 'l3']) await ds.modify(storeLdif(name));
    // 389 DS's default is 5,000 entries: here 5, with 12 entries in the map.
    await ds.modify('dn: cn=config,cn=ldbm database,cn=plugins,cn=config\nchangetype: modify\nreplace: nsslapd-lookthroughlimit\nnsslapd-lookthroughlimit: 5\n-\n');
    const source = new LdapStoreMapSource({ kind: 'ldap', urls: [ds.url], bindDn: ds.bindDn, bindPassword: ds.bindPassword, baseDn: LDAP_STORES_DN, pollIntervalMs: 100, starttls: false, operationTimeoutMs: 2_000 });
    try {
      const failure = await source.load().then(() => 'loaded', (error: Error) => error.message);
      assert.match(failure, /adminLimitExceeded/);
      assert.ok(failure.includes(`389 DS: nsPagedLookThroughLimit: -1, or nsLookThroughLimit: -1, in the entry ${ds.bindDn}`), failure);
      await ds.modify(`dn: ${ds.bindDn}\nchangetype: modify\nreplace: nsPagedLookThroughLimit\nnsPagedLookThroughLimit: -1\n-\n`);
      const document = (await source.load()) as { stores: Record<string, unknown> };
      assert.ok(Object.keys(document.stores).length >= 3, JSON.stringify(Object.keys(document.stores)));
    } finally {
      await source.close();
      await ds.modify('dn: cn=config,cn=ldbm database,cn=plugins,cn=config\nchangetype: modify\nreplace: nsslapd-lookthroughlimit\nnsslapd-lookthroughlimit: 5000\n-\n');
    }
  });
});

// Last: its cases change cn=config's passwordUnlock and the people's ACI for a while (each put
// back); its own users and front.
describe("whereis shows 389 DS's locks", () => {
  const run = promisify(execFile);
  let front: Front;

  /** cn=config's password policy as 389 DS takes it, live. */
  async function passwordPolicy(settings: Record<string, string>): Promise<void> {
    await ds.modify(['dn: cn=config', 'changetype: modify', ...Object.entries(settings).flatMap(([name, value]) => [`replace: ${name}`, `${name}: ${value}`, '-']), ''].join('\n'));
  }

  before(async () => {
    await ds.modify([`dn: ${ds.userDn('wh-disabled')}`, 'changetype: modify', 'add: nsAccountLock', 'nsAccountLock: true', '-', '', `dn: ${ds.userDn('wh-reset')}`, 'changetype: modify', 'replace: userPassword', `userPassword: ${PASSWORD}`, '-', ''].join('\n'));
    // No server on the slot: whereis asks no backend, and no login here gets that far.
    front = await startFront({ slapd: ds, stores: { alpha: { currentMaster: 'a1', slots: { a1: { imapPort: await freePort() } } } }, directory: { login_attribute: 'uid' } });
  });
  after(async () => {
    await front?.stop();
  });

  async function whereis(user: string): Promise<Record<string, any>> {
    const { port } = front.mailfront.httpAddress()!;
    const response = await fetch(`http://127.0.0.1:${port}/api/whereis/${user}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    assert.equal(response.status, 200, user);
    return (await response.json()) as Record<string, any>;
  }

  async function cli(...args: string[]): Promise<string> {
    const { port } = front.mailfront.httpAddress()!;
    const { stdout } = await run(process.execPath, [join(repoRoot(), 'dist/src/cli/main.js'), ...args, '--url', `http://127.0.0.1:${port}`, '--token', ADMIN_TOKEN]);
    return stdout;
  }

  async function login(user: string, password: string): Promise<string> {
    const client = await LineClient.connect(front.imapTrustedPort);
    try {
      await client.readLine();
      const result = await client.imap(`LOGIN "${user}" "${password}"`);
      return `${result.status} ${result.text}`;
    } finally {
      client.close();
    }
  }

  test('an account not locked: locked null', async () => {
    const json = await whereis('wh-alice');
    assert.equal(json['locked'], null);
    assert.equal(json['passwordReset'], false);
    assert.equal(json['problem'], null);
  });

  test('nsAccountLock true: locked by an administrator', async () => {
    const json = await whereis('wh-disabled');
    assert.deepEqual(json['locked'], { attribute: 'nsAccountLock', value: 'true', since: null, byAdministrator: true });
  });

  test('a lockout of its password policy (accountUnlockTime): locked until then', async () => {
    const before = Date.now();
    for (let i = 0; i < 3; i++) assert.match(await login('wh-lockme', WRONG), /^NO /);
    assert.match(await login('wh-lockme', PASSWORD), /^NO \[AUTHENTICATIONFAILED\]/, 'the right password, refused as a wrong one');
    const json = await whereis('wh-lockme');
    const locked = json['locked'] as Record<string, unknown>;
    assert.equal(locked['attribute'], 'accountUnlockTime');
    assert.equal(locked['byAdministrator'], false);
    // passwordLockoutDuration's default, 3600 s.
    const until = Date.parse(String(locked['until']));
    assert.ok(until >= before + 3_590_000 && until <= Date.now() + 3_600_000, String(locked['until']));
    assert.match(String(json['problem']), /^the directory's password policy has locked the account out \(accountUnlockTime \d{14}Z, failed password binds\): its password logins are refused as a wrong password until \S+, or an administrator unlocks it/);
    assert.match(await cli('whereis', 'wh-lockme'), /^locked +yes, locked out by failed password binds until \S+ \(accountUnlockTime \d{14}Z\)$/m);
  });

  test('a lockout with passwordUnlock off (accountUnlockTime 19700101000000Z): until an administrator unlocks it', async () => {
    await passwordPolicy({ passwordUnlock: 'off' });
    try {
      for (let i = 0; i < 3; i++) assert.match(await login('wh-forever', WRONG), /^NO /);
      const json = await whereis('wh-forever');
      assert.deepEqual(json['locked'], { attribute: 'accountUnlockTime', value: '19700101000000Z', since: null, byAdministrator: false, until: null });
      assert.match(String(json['problem']), /until an administrator unlocks it \(passwordUnlock off\)/);
      assert.match(await cli('whereis', 'wh-forever'), /^locked +yes, locked out by failed password binds until an administrator unlocks it \(accountUnlockTime 19700101000000Z\)$/m);
    } finally {
      await passwordPolicy({ passwordUnlock: 'on' });
    }
  });

  test('a password an administrator reset under passwordMustChange (passwordExpirationTime 19700101000000Z)', async () => {
    const json = await whereis('wh-reset');
    assert.equal(json['locked'], null);
    assert.equal(json['passwordReset'], true);
    assert.equal(json['passwordResetBy'], 'passwordExpirationTime 19700101000000Z');
    assert.match(String(json['problem']), /^an administrator reset the password \(passwordExpirationTime 19700101000000Z\)/);
    assert.match(await cli('whereis', 'wh-reset'), /^password +reset by an administrator \(passwordExpirationTime 19700101000000Z\)$/m);
  });

  test('an ACI without accountUnlockTime: the lock is unknown, not "not locked"', async () => {
    const service = `userdn="ldap:///${LDAP_SERVICE_DN}"`;
    const aciLdif = (aci: string): string => [`dn: ${LDAP_PEOPLE_DN}`, 'changetype: modify', 'replace: aci', `aci: ${aci}`, '-', ''].join('\n');
    const readme = `(targetattr="uid || mail || cn || objectClass || ${LDAP_STORE_ATTRIBUTE} || mailfrontHold || nsAccountLock || accountUnlockTime || passwordExpirationTime")(version 3.0; acl "mailfront reads users"; allow (read, search, compare) ${service};)`;
    await ds.modify(aciLdif(readme.replace(' || accountUnlockTime', '')));
    try {
      const json = await whereis('wh-lockme');
      assert.equal(json['locked']?.['unknown'], 'not readable: the service account may not read accountUnlockTime');
      assert.equal(json['passwordReset'], false);
      // A lock it can read is a lock all the same.
      assert.equal((await whereis('wh-disabled'))['locked']?.['attribute'], 'nsAccountLock');
    } finally {
      await ds.modify(aciLdif(readme));
    }
  });
});
