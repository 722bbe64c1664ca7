/**
 * whereis shows the directory's lock of an account ("why can't alice log in?"), with a real slapd
 * and OpenLDAP's password policy overlay (ppolicy_use_lockout): an administrator's lock
 * (pwdAccountLockedTime 000001010000Z), a lockout that failed password logins through mailfront
 * set, nsAccountLock TRUE (389 DS, FreeIPA; here a user attribute, as in oauth-account-lock), a
 * password an administrator reset (pwdReset), and an ACL that hides the lock from the service
 * account, which whereis must not read as "not locked" (nor one of them hidden), a lockout whose
 * pwdLockoutDuration has passed (slapd keeps pwdAccountLockedTime until the next good bind) and one
 * whose policy the service account may not read, a pwdAccountLockedTime slapd does not enforce (its
 * policy's pwdLockout FALSE or absent, the administrator's too; one in the future); and all of it
 * with directory.auth_cache_ttl_ms at its default, a CachingDirectory in front. No backend: whereis asks none.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { Client } from 'ldapts';
import { LDAP_SERVICE_DN, LineClient, freePort, ldifLine, repoRoot, slapdPolicyDn, startSlapd } from './servers/index.js';
import type { Slapd } from './servers/index.js';
import { ADMIN_TOKEN, registerPasswords, startFront } from './front.js';
import type { Front } from './front.js';

const run = promisify(execFile);
const PASSWORD = 'Whereis-lock-pw-5e9a';
registerPasswords(PASSWORD, ...[0, 1, 2].map((i) => `Whereis-wrong-pw-${i}-b7d3`));
const HIDDEN_POLICY_DN = slapdPolicyDn('hidden');
/** A GeneralizedTime of whole seconds, as slapd writes pwdAccountLockedTime. */
const generalizedTime = (ms: number): string => `${new Date(ms).toISOString().slice(0, 19).replace(/[-T:]/g, '')}Z`;
const FUTURE_LOCK = generalizedTime(Date.now() + 86_400_000);

/** nsAccountLock as 389 DS names it, and a class to hold it (RFC 5612's example enterprise number). */
const NS_ACCOUNT_LOCK_SCHEMA = [
  "attributetype ( 2.16.840.1.113730.3.1.610 NAME 'nsAccountLock' EQUALITY caseIgnoreMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )",
  "objectclass ( 1.3.6.1.4.1.32473.1.2.1 NAME 'testAccountLock' AUXILIARY MAY nsAccountLock )",
].join('\n');

let slapd: Slapd;
let front: Front;
/** The same directory behind the cache of logins (auth_cache_ttl_ms at its default). */
let cachedFront: Front;

before(async () => {
  const policy = { pwdPolicySubentry: slapdPolicyDn('default') };
  slapd = await startSlapd({
    ppolicy: {
      policies: {
        default: { pwdLockout: 'TRUE', pwdMaxFailure: '3', pwdLockoutDuration: '3600' },
        short: { pwdLockout: 'TRUE', pwdMaxFailure: '3', pwdLockoutDuration: '2' },
        hidden: { pwdLockout: 'TRUE', pwdMaxFailure: '3', pwdLockoutDuration: '3600' },
        // slapd enforces no pwdAccountLockedTime under these: pwdLockout FALSE, and absent (its default, FALSE).
        nolockout: { pwdLockout: 'FALSE', pwdMaxFailure: '3', pwdLockoutDuration: '3600' },
        nolockoutset: { pwdMaxFailure: '3', pwdLockoutDuration: '3600' },
      },
      default: 'default',
      useLockout: true,
    },
    schema: NS_ACCOUNT_LOCK_SCHEMA,
    // The service account may not see hidden's lock (an ACL on the ppolicy attributes, as a site may have).
    // partial's pwdAccountLockedTime only; the policy of hiddenpolicy's entry.
    access: [
      `access to dn.exact="uid=hidden,ou=people,dc=example,dc=org" attrs=pwdAccountLockedTime,pwdReset,nsAccountLock\n  by dn.exact="${LDAP_SERVICE_DN}" none\n  by * break`,
      `access to dn.exact="uid=partial,ou=people,dc=example,dc=org" attrs=pwdAccountLockedTime\n  by dn.exact="${LDAP_SERVICE_DN}" none\n  by * break`,
      `access to dn.exact="${HIDDEN_POLICY_DN}"\n  by dn.exact="${LDAP_SERVICE_DN}" none\n  by * break`,
    ],
    users: [
      { uid: 'alice', password: PASSWORD, store: 'alpha', attributes: policy },
      { uid: 'locky', password: PASSWORD, store: 'alpha', attributes: { ...policy, pwdAccountLockedTime: '000001010000Z' } },
      { uid: 'guessed', password: PASSWORD, store: 'alpha', attributes: policy },
      { uid: 'ipa', password: PASSWORD, store: 'alpha' },
      { uid: 'reset', password: PASSWORD, store: 'alpha', attributes: { ...policy, pwdReset: 'TRUE' } },
      { uid: 'hidden', password: PASSWORD, store: 'alpha', attributes: { ...policy, pwdAccountLockedTime: '000001010000Z' } },
      { uid: 'partial', password: PASSWORD, store: 'alpha', attributes: { ...policy, pwdAccountLockedTime: '000001010000Z' } },
      // A lockout set (by an administrator's tool) with a fraction of an hour: since 12:30.
      { uid: 'fraction', password: PASSWORD, store: 'alpha', attributes: { ...policy, pwdAccountLockedTime: '2026010112.5Z' } },
      { uid: 'expiring', password: PASSWORD, store: 'alpha', attributes: { pwdPolicySubentry: slapdPolicyDn('short') } },
      { uid: 'hiddenpolicy', password: PASSWORD, store: 'alpha', attributes: { pwdPolicySubentry: HIDDEN_POLICY_DN } },
      { uid: 'adminnolockout', password: PASSWORD, store: 'alpha', attributes: { pwdPolicySubentry: slapdPolicyDn('nolockout'), pwdAccountLockedTime: '000001010000Z' } },
      { uid: 'adminnolockoutset', password: PASSWORD, store: 'alpha', attributes: { pwdPolicySubentry: slapdPolicyDn('nolockoutset'), pwdAccountLockedTime: '000001010000Z' } },
      { uid: 'lockoutnolockout', password: PASSWORD, store: 'alpha', attributes: { pwdPolicySubentry: slapdPolicyDn('nolockout'), pwdAccountLockedTime: generalizedTime(Date.now() - 60_000) } },
      { uid: 'future', password: PASSWORD, store: 'alpha', attributes: { ...policy, pwdAccountLockedTime: FUTURE_LOCK } },
    ],
  });
  await slapd.modify(`${ldifLine('dn', slapd.userDn('partial'))}\nchangetype: modify\nadd: objectClass\nobjectClass: testAccountLock\n-\n`);
  await slapd.modify(`${ldifLine('dn', slapd.userDn('ipa'))}\nchangetype: modify\nadd: objectClass\nobjectClass: testAccountLock\n-\nadd: nsAccountLock\nnsAccountLock: TRUE\n-\n`);
  front = await startFront({
    slapd,
    // No server on the slot: whereis asks no backend, and no login here gets that far.
    stores: { alpha: { currentMaster: 'a1', slots: { a1: { imapPort: await freePort() } } } },
    directory: { login_attribute: 'uid' },
  });
  cachedFront = await startFront({ slapd, stores: { alpha: { currentMaster: 'a1', slots: { a1: { imapPort: await freePort() } } } }, directory: { login_attribute: 'uid', auth_cache_ttl_ms: 60_000 } });
});

after(async () => {
  await cachedFront?.stop();
  await front?.stop();
  await slapd?.stop();
});

/** Runs `mailfront ARGS` against the admin API. */
async function cli(...args: string[]): Promise<string> {
  return cliOf(front, ...args);
}

async function cliOf(of: Front, ...args: string[]): Promise<string> {
  const { port } = of.mailfront.httpAddress()!;
  const { stdout } = await run(process.execPath, [join(repoRoot(), 'dist/src/cli/main.js'), ...args, '--url', `http://127.0.0.1:${port}`, '--token', ADMIN_TOKEN]);
  return stdout;
}

async function whereis(user: string, of: Front = front): Promise<Record<string, any>> {
  const { port } = of.mailfront.httpAddress()!;
  const response = await fetch(`http://127.0.0.1:${port}/api/whereis/${user}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
  assert.equal(response.status, 200, user);
  return (await response.json()) as Record<string, any>;
}

/** What slapd answers a password bind of `user` itself (no backend here for a login through mailfront to reach). */
async function binds(user: string): Promise<string> {
  const client = new Client({ url: slapd.url });
  try {
    await client.bind(slapd.userDn(user), PASSWORD);
    return 'bind ok';
  } catch (error) {
    return `bind refused: ${error instanceof Error ? error.message : String(error)}`;
  } finally {
    await client.unbind().catch(() => undefined);
  }
}

/** An IMAP LOGIN through mailfront: the tagged answer. */
async function login(user: string, password: string, of: Front = front): Promise<string> {
  const client = await LineClient.connect(of.imapTrustedPort);
  try {
    await client.readLine();
    const result = await client.imap(`LOGIN "${user}" "${password}"`);
    return `${result.status} ${result.text}`;
  } finally {
    client.close();
  }
}

// The cases run at once: each reads or locks an entry of its own (the cache case's locky and alice
// are only read, and through another instance).
describe('whereis shows an account lock', { concurrency: true }, () => {
  test('an account not locked: locked null, no problem', async () => {
    const json = await whereis('alice');
    assert.equal(json['locked'], null);
    assert.equal(json['passwordReset'], false);
    assert.equal(json['problem'], null);
    assert.match(await cli('whereis', 'alice'), /^locked +no$/m);
  });

  test("an administrator's ppolicy lock (pwdAccountLockedTime 000001010000Z): locked, and problem says so first", async () => {
    assert.match(await login('locky', PASSWORD), /^NO \[AUTHENTICATIONFAILED\]/, 'what the user sees: a wrong password');
    const json = await whereis('locky');
    assert.deepEqual(json['locked'], { attribute: 'pwdAccountLockedTime', value: '000001010000Z', since: null, byAdministrator: true });
    assert.match(String(json['problem']), /^the directory has locked the account \(pwdAccountLockedTime 000001010000Z, by an administrator\): its logins, by password or token, are refused as a wrong password/);
    const text = await cli('whereis', 'locky');
    assert.match(text, /^locked +yes, by an administrator \(pwdAccountLockedTime 000001010000Z\)$/m);
    assert.match(text, /^problem +the directory has locked the account/m);
  });

  test('a lockout failed password logins set: locked since then, not by an administrator', async () => {
    const started = Date.now() - 2_000;
    for (let i = 0; i < 3; i++) assert.match(await login('guessed', `Whereis-wrong-pw-${i}-b7d3`), /^NO /);
    assert.match(await login('guessed', PASSWORD), /^NO \[AUTHENTICATIONFAILED\]/, 'the right password, refused as a wrong one');
    const json = await whereis('guessed');
    const locked = json['locked'] as Record<string, unknown>;
    assert.equal(locked['attribute'], 'pwdAccountLockedTime');
    assert.equal(locked['byAdministrator'], false);
    const since = Date.parse(String(locked['since']));
    assert.ok(since >= started - 1_000 && since <= Date.now(), `since ${String(locked['since'])} (value ${String(locked['value'])})`);
    // The policy's pwdLockoutDuration (3600 s), read through the entry's pwdPolicySubentry.
    assert.equal(locked['until'], new Date(since + 3_600_000).toISOString());
    assert.match(String(json['problem']), /^the directory's password policy has locked the account out since \S+ \(pwdAccountLockedTime \d{14}Z, failed password binds\): its password logins are refused as a wrong password until \S+, or an administrator unlocks it/);
    assert.match(await cli('whereis', 'guessed'), /^locked +yes, locked out since \S+ by failed password binds until \S+ \(pwdAccountLockedTime \d{14}Z\)$/m);
  });

  test('nsAccountLock TRUE (389 DS, FreeIPA): locked by an administrator', async () => {
    const json = await whereis('ipa');
    assert.deepEqual(json['locked'], { attribute: 'nsAccountLock', value: 'TRUE', since: null, byAdministrator: true });
    assert.match(String(json['problem']), /^the directory has locked the account \(nsAccountLock TRUE/);
  });

  test('a password an administrator reset (pwdReset TRUE): noted', async () => {
    const json = await whereis('reset');
    assert.equal(json['locked'], null);
    assert.equal(json['passwordReset'], true);
    assert.match(String(json['problem']), /pwdReset TRUE/);
    assert.match(await cli('whereis', 'reset'), /^password +reset by an administrator \(pwdReset TRUE\)$/m);
  });

  test('a lock the service account may not read is unknown, not "not locked"', async () => {
    const json = await whereis('hidden');
    assert.notEqual(json['locked'], null);
    assert.match(String(json['locked']?.['unknown']), /^not readable: the service account may not read pwdAccountLockedTime, nsAccountLock$/);
    assert.equal(json['passwordReset'], null);
    assert.match(await cli('whereis', 'hidden'), /^locked +unknown \(not readable/m);
  });

  test("a lockout past its policy's pwdLockoutDuration is no lock, though slapd keeps pwdAccountLockedTime", async () => {
    for (let i = 0; i < 3; i++) assert.match(await login('expiring', `Whereis-wrong-pw-${i}-b7d3`), /^NO /);
    const during = await whereis('expiring');
    assert.equal(during['locked']?.['attribute'], 'pwdAccountLockedTime');
    assert.equal(Date.parse(String(during['locked']?.['until'])), Date.parse(String(during['locked']?.['since'])) + 2_000);
    // Until just past its end (whole seconds, at most 2 s away), on this machine's clock, which mailfront shares.
    await new Promise((resolve) => setTimeout(resolve, Date.parse(String(during['locked']?.['until'])) - Date.now() + 100));
    const json = await whereis('expiring');
    assert.equal(json['locked'], null);
    assert.equal(json['lockEnded']?.['attribute'], 'pwdAccountLockedTime');
    assert.equal(json['lockEnded']?.['endedAt'], during['locked']?.['until']);
    assert.equal(json['problem'], null);
    assert.match(await cli('whereis', 'expiring'), /^locked +no, a lockout by failed password binds ended at \S+ \(pwdAccountLockedTime \d{14}Z, kept until the next good bind\)$/m);
  });

  test('a GeneralizedTime with a fraction of an hour is read as one (RFC 4517 §3.3.13)', async () => {
    const json = await whereis('fraction');
    assert.equal(json['locked'], null);
    assert.deepEqual(json['lockEnded'], { attribute: 'pwdAccountLockedTime', value: '2026010112.5Z', since: '2026-01-01T12:30:00.000Z', byAdministrator: false, until: '2026-01-01T13:30:00.000Z', endedAt: '2026-01-01T13:30:00.000Z' });
  });

  test('a lockout whose policy the service account may not read: locked, unless its pwdLockoutDuration has passed', async () => {
    for (let i = 0; i < 3; i++) assert.match(await login('hiddenpolicy', `Whereis-wrong-pw-${i}-b7d3`), /^NO /);
    const json = await whereis('hiddenpolicy');
    assert.equal(json['locked']?.['attribute'], 'pwdAccountLockedTime');
    assert.equal('until' in json['locked'], false);
    assert.match(String(json['problem']), /refused as a wrong password until the policy's pwdLockoutDuration has passed since, if it sets one \(not readable here\)/);
    assert.match(await cli('whereis', 'hiddenpolicy'), /^locked +yes, locked out since \S+ by failed password binds, unless the policy's pwdLockoutDuration has passed since \(pwdAccountLockedTime \d{14}Z\)$/m);
  });

  test('one lock attribute hidden, the other readable and not set: unknown, naming the hidden one', async () => {
    const json = await whereis('partial');
    assert.equal(json['locked']?.['unknown'], 'not readable: the service account may not read pwdAccountLockedTime');
    assert.equal(json['passwordReset'], false);
    assert.match(await cli('whereis', 'partial'), /^locked +unknown \(not readable: the service account may not read pwdAccountLockedTime\)$/m);
  });

  test("an administrator's lock under a policy whose pwdLockout is FALSE: no lock for the password, token logins still refused", async () => {
    assert.equal(await binds('adminnolockout'), 'bind ok', 'slapd enforces no pwdAccountLockedTime without pwdLockout TRUE');
    const json = await whereis('adminnolockout');
    assert.equal(json['locked'], null);
    assert.deepEqual(json['lockIgnored'], { attribute: 'pwdAccountLockedTime', value: '000001010000Z', since: null, byAdministrator: true, why: 'pwdLockout' });
    assert.match(String(json['problem']), /^the directory's password policy does not enforce pwdAccountLockedTime 000001010000Z \(an administrator's lock; the policy's pwdLockout is not TRUE\): its password logins are let in, but its token logins are refused as a wrong password/);
    assert.match(await cli('whereis', 'adminnolockout'), /^locked +no for password logins, yes for token logins \(pwdAccountLockedTime 000001010000Z, an administrator's, not enforced: the policy's pwdLockout is not TRUE\)$/m);
  });

  test("a policy without pwdLockout: slapd's default is FALSE, the administrator's lock not enforced", async () => {
    assert.equal(await binds('adminnolockoutset'), 'bind ok');
    const json = await whereis('adminnolockoutset');
    assert.equal(json['locked'], null);
    assert.equal(json['lockIgnored']?.['why'], 'pwdLockout');
  });

  test('a lockout under a policy whose pwdLockout is FALSE: no lock, no problem', async () => {
    assert.equal(await binds('lockoutnolockout'), 'bind ok');
    const json = await whereis('lockoutnolockout');
    assert.equal(json['locked'], null);
    assert.equal(json['lockIgnored']?.['byAdministrator'], false);
    assert.equal(json['lockIgnored']?.['why'], 'pwdLockout');
    assert.equal(json['lockEnded'], undefined);
    assert.equal(json['problem'], null);
    assert.match(await cli('whereis', 'lockoutnolockout'), /^locked +no \(pwdAccountLockedTime \d{14}Z not enforced: the policy's pwdLockout is not TRUE\)$/m);
  });

  test('a pwdAccountLockedTime in the future is not yet in effect', async () => {
    assert.equal(await binds('future'), 'bind ok');
    const json = await whereis('future');
    assert.equal(json['locked'], null);
    assert.equal(json['lockIgnored']?.['value'], FUTURE_LOCK);
    assert.equal(json['lockIgnored']?.['why'], 'future');
    assert.equal(json['problem'], null);
    assert.match(await cli('whereis', 'future'), new RegExp(`^locked +no \\(pwdAccountLockedTime ${FUTURE_LOCK} in the future, not yet in effect\\)$`, 'm'));
  });

  test('with the cache of logins on (auth_cache_ttl_ms at its default), whereis still reads the lock', async () => {
    assert.match(await login('locky', PASSWORD, cachedFront), /^NO \[AUTHENTICATIONFAILED\]/);
    const json = await whereis('locky', cachedFront);
    assert.deepEqual(json['locked'], { attribute: 'pwdAccountLockedTime', value: '000001010000Z', since: null, byAdministrator: true });
    assert.equal(json['passwordReset'], false);
    assert.match(String(json['problem']), /^the directory has locked the account/);
    assert.match(await cliOf(cachedFront, 'whereis', 'locky'), /^locked +yes, by an administrator \(pwdAccountLockedTime 000001010000Z\)$/m);
    assert.equal((await whereis('alice', cachedFront))['locked'], null);
  });
});
