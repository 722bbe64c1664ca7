/**
 * whereis shows 389 DS's own locks, with the README's ACIs: nsAccountLock (an inactivated
 * account), a lockout of its password policy (passwordLockout: accountUnlockTime, until then, or
 * 19700101000000Z with passwordUnlock off: until an administrator unlocks it), a password an
 * administrator reset under passwordMustChange (passwordExpirationTime 19700101000000Z, no
 * pwdReset), and an ACI that hides accountUnlockTime, which must read as unknown, not "not
 * locked". No backend: whereis asks none.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { LDAP_PEOPLE_DN, LDAP_SERVICE_DN, LineClient, freePort, repoRoot, startDs389 } from './servers/index.js';
import type { Ds389 } from './servers/index.js';
import { ADMIN_TOKEN, registerPasswords, startFront } from './front.js';
import type { Front } from './front.js';

const run = promisify(execFile);
const PASSWORD = 'Ds389-whereis-pw-4c1';
const WRONG = 'Ds389-whereis-wrong-9d2';
registerPasswords(PASSWORD, WRONG);

let ds: Ds389;
let front: Front;

/** cn=config's password policy as 389 DS takes it, live. */
async function passwordPolicy(settings: Record<string, string>): Promise<void> {
  await ds.modify(['dn: cn=config', 'changetype: modify', ...Object.entries(settings).flatMap(([name, value]) => [`replace: ${name}`, `${name}: ${value}`, '-']), ''].join('\n'));
}

before(async () => {
  ds = await startDs389({ users: ['alice', 'lockme', 'forever', 'disabled', 'reset'].map((uid) => ({ uid, password: PASSWORD, store: 'alpha' })) });
  await passwordPolicy({ passwordLockout: 'on', passwordMaxFailure: '3', passwordMustChange: 'on' });
  await ds.modify([`dn: ${ds.userDn('disabled')}`, 'changetype: modify', 'add: nsAccountLock', 'nsAccountLock: true', '-', '', `dn: ${ds.userDn('reset')}`, 'changetype: modify', 'replace: userPassword', `userPassword: ${PASSWORD}`, '-', ''].join('\n'));
  front = await startFront({ slapd: ds, stores: { alpha: { currentMaster: 'a1', slots: { a1: { imapPort: await freePort() } } } }, directory: { login_attribute: 'uid' } });
});

after(async () => {
  await front?.stop();
  await ds?.stop();
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

describe("whereis shows 389 DS's locks", () => {
  test('an account not locked: locked null', async () => {
    const json = await whereis('alice');
    assert.equal(json['locked'], null);
    assert.equal(json['passwordReset'], false);
    assert.equal(json['problem'], null);
  });

  test('nsAccountLock true: locked by an administrator', async () => {
    const json = await whereis('disabled');
    assert.deepEqual(json['locked'], { attribute: 'nsAccountLock', value: 'true', since: null, byAdministrator: true });
  });

  test('a lockout of its password policy (accountUnlockTime): locked until then', async () => {
    const before = Date.now();
    for (let i = 0; i < 3; i++) assert.match(await login('lockme', WRONG), /^NO /);
    assert.match(await login('lockme', PASSWORD), /^NO \[AUTHENTICATIONFAILED\]/, 'the right password, refused as a wrong one');
    const json = await whereis('lockme');
    const locked = json['locked'] as Record<string, unknown>;
    assert.equal(locked['attribute'], 'accountUnlockTime');
    assert.equal(locked['byAdministrator'], false);
    // passwordLockoutDuration's default, 3600 s.
    const until = Date.parse(String(locked['until']));
    assert.ok(until >= before + 3_590_000 && until <= Date.now() + 3_600_000, String(locked['until']));
    assert.match(String(json['problem']), /^the directory's password policy has locked the account out \(accountUnlockTime \d{14}Z, failed password binds\): its password logins are refused as a wrong password until \S+, or an administrator unlocks it/);
    assert.match(await cli('whereis', 'lockme'), /^locked +yes, locked out by failed password binds until \S+ \(accountUnlockTime \d{14}Z\)$/m);
  });

  test('a lockout with passwordUnlock off (accountUnlockTime 19700101000000Z): until an administrator unlocks it', async () => {
    await passwordPolicy({ passwordUnlock: 'off' });
    try {
      for (let i = 0; i < 3; i++) assert.match(await login('forever', WRONG), /^NO /);
      const json = await whereis('forever');
      assert.deepEqual(json['locked'], { attribute: 'accountUnlockTime', value: '19700101000000Z', since: null, byAdministrator: false, until: null });
      assert.match(String(json['problem']), /until an administrator unlocks it \(passwordUnlock off\)/);
      assert.match(await cli('whereis', 'forever'), /^locked +yes, locked out by failed password binds until an administrator unlocks it \(accountUnlockTime 19700101000000Z\)$/m);
    } finally {
      await passwordPolicy({ passwordUnlock: 'on' });
    }
  });

  test('a password an administrator reset under passwordMustChange (passwordExpirationTime 19700101000000Z)', async () => {
    const json = await whereis('reset');
    assert.equal(json['locked'], null);
    assert.equal(json['passwordReset'], true);
    assert.equal(json['passwordResetBy'], 'passwordExpirationTime 19700101000000Z');
    assert.match(String(json['problem']), /^an administrator reset the password \(passwordExpirationTime 19700101000000Z\)/);
    assert.match(await cli('whereis', 'reset'), /^password +reset by an administrator \(passwordExpirationTime 19700101000000Z\)$/m);
  });

  test('an ACI without accountUnlockTime: the lock is unknown, not "not locked"', async () => {
    const service = `userdn="ldap:///${LDAP_SERVICE_DN}"`;
    await ds.modify([`dn: ${LDAP_PEOPLE_DN}`, 'changetype: modify', 'replace: aci', `aci: (targetattr="uid || mail || cn || objectClass || mailStore || mailfrontHold || nsAccountLock || passwordExpirationTime")(version 3.0; acl "mailfront reads users"; allow (read, search, compare) ${service};)`, '-', ''].join('\n'));
    const json = await whereis('lockme');
    assert.equal(json['locked']?.['unknown'], 'not readable: the service account may not read accountUnlockTime');
    assert.equal(json['passwordReset'], false);
    // A lock it can read is a lock all the same.
    assert.equal((await whereis('disabled'))['locked']?.['attribute'], 'nsAccountLock');
  });
});
