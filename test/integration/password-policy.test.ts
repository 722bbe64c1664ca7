/**
 * The directory's password policy (directory.password_policy: the ppolicy control on each user
 * bind), with real slapd and its ppolicy overlay, and Dovecot behind: an expired password and one
 * to change after a reset are refused as such (IMAP NO [EXPIRED], through imapflow and a raw
 * socket; POP3 -ERR [AUTH] and ManageSieve NO with the words), not as a wrong password, and are no
 * failure for the throttle; a wrong password for such an account is still a wrong password; grace
 * logins let in, and warnings logged and counted; a locked account (ppolicy_use_lockout: said for
 * any password) refused as a wrong password, the reason logged only; a staff member's expired
 * password refuses a master login; with the option off, and against a slapd without the overlay,
 * logins are as before.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { ImapFlow } from 'imapflow';
import { LineClient, slapdPolicyDn, startDovecot, startSlapd } from './servers/index.js';
import type { Dovecot, Slapd, SlapdUser } from './servers/index.js';
import { ADMIN_TOKEN, registerPasswords, startFront, waitForLog } from './front.js';
import type { Front } from './front.js';

const PASSWORD = 'Ppolicy-pw-7e1b';
const WRONG = ['Ppolicy-wrong-1a', 'Ppolicy-wrong-2b', 'Ppolicy-wrong-3c', 'Ppolicy-wrong-4d'];
const EXPIRED_TEXT = 'Your password has expired, please change it and log in again.';
const MUST_CHANGE_TEXT = 'Your password was reset and must be changed, please change it and log in again.';
/** A password last changed long ago: expired under any pwdMaxAge. */
const LONG_AGO = '20000101000000Z';

/** Now as a GeneralizedTime (pwdChangedTime). */
function generalizedNow(): string {
  return `${new Date().toISOString().replace(/[-:T]/g, '').slice(0, 14)}Z`;
}

/** A user of store alpha under the policy `policy` (the default one when undefined), with more attributes. */
function user(uid: string, policy: string | undefined, attributes: Record<string, string> = {}): SlapdUser {
  return { uid, password: PASSWORD, store: 'alpha', attributes: { ...(policy !== undefined ? { pwdPolicySubentry: slapdPolicyDn(policy) } : {}), ...attributes } };
}

const POLICIES = {
  // The default: a password an administrator reset must be changed; three wrong ones lock.
  default: { pwdMustChange: 'TRUE', pwdLockout: 'TRUE', pwdMaxFailure: '3', pwdLockoutDuration: '600' },
  // Expires a day after its change, warned of ten days before: always warned, or expired.
  expiring: { pwdMaxAge: '86400', pwdExpireWarning: '864000', pwdGraceAuthNLimit: '0' },
  grace: { pwdMaxAge: '86400', pwdGraceAuthNLimit: '2' },
};

let slapd: Slapd;
let plainSlapd: Slapd;
let a1: Dovecot;

before(async () => {
  registerPasswords(PASSWORD, ...WRONG);
  slapd = await startSlapd({
    ppolicy: { policies: POLICIES, default: 'default', useLockout: true },
    users: [
      user('fine', undefined),
      user('old', 'expiring', { pwdChangedTime: LONG_AGO }),
      user('olden', 'expiring', { pwdChangedTime: LONG_AGO }),
      user('warned', 'expiring', { pwdChangedTime: generalizedNow() }),
      user('gracie', 'grace', { pwdChangedTime: LONG_AGO }),
      user('reset', undefined, { pwdReset: 'TRUE' }),
      user('locky', undefined),
      user('staff', 'expiring', { pwdChangedTime: LONG_AGO, description: 'helpdesk' }),
    ],
  });
  plainSlapd = await startSlapd({ users: [{ uid: 'fine', password: PASSWORD, store: 'alpha' }] });
  a1 = await startDovecot({ name: 'ppolicy-a1', users: ['fine', 'old', 'olden', 'warned', 'gracie', 'reset', 'locky'].map((name) => ({ name, password: PASSWORD })), sieve: true });
});

after(async () => {
  await Promise.all([slapd?.stop(), plainSlapd?.stop(), a1?.stop()]);
});

function stores(): Parameters<typeof startFront>[0]['stores'] {
  return { alpha: { currentMaster: 'a1', slots: { a1: { imapPort: a1.imapPort, pop3Port: a1.pop3Port, sievePort: a1.sievePort! } } } };
}

/** An IMAP LOGIN through mailfront on a raw socket: the tagged answer (after the [ALERT] of a warning, which password-policy-alert.test reads). */
async function imapLogin(front: Front, name: string, password = PASSWORD): Promise<string> {
  const c = await LineClient.connect(front.imapTrustedPort);
  try {
    await c.readLine();
    c.send(`t1 LOGIN "${name}" ${password}`);
    for (let line = await c.readLine(); ; line = await c.readLine()) if (!line.startsWith('* OK [ALERT] ')) return line;
  } finally {
    c.close();
  }
}

async function pop3Login(front: Front, name: string, password = PASSWORD): Promise<string> {
  const c = await LineClient.connect(front.pop3TrustedPort);
  try {
    await c.readLine();
    await c.pop3(`USER ${name}`);
    c.send(`PASS ${password}`);
    return await c.readLine();
  } finally {
    c.close();
  }
}

async function sieveLogin(front: Front, name: string, password = PASSWORD): Promise<string> {
  const c = await LineClient.connect(front.sieveTrustedPort!);
  try {
    for (let line = await c.readLine(); !line.startsWith('OK'); line = await c.readLine());
    c.send(`AUTHENTICATE "PLAIN" "${Buffer.from(`\0${name}\0${password}`).toString('base64')}"`);
    return await c.readLine();
  } finally {
    c.close();
  }
}

/** An imapflow login: its error's response code (and the text it read), or 'OK' when it logged in. */
async function imapflowLogin(front: Front, name: string, password = PASSWORD): Promise<{ code: string; response?: string }> {
  const client = new ImapFlow({ host: '127.0.0.1', port: front.imapTrustedPort, secure: false, auth: { user: name, pass: password }, logger: false });
  try {
    await client.connect();
  } catch (error) {
    const e = error as { serverResponseCode?: string; authenticationFailed?: boolean; response?: string };
    assert.equal(e.authenticationFailed, true, 'imapflow takes it as its login refused');
    return { code: e.serverResponseCode ?? 'none', ...(e.response !== undefined ? { response: e.response } : {}) };
  }
  await client.logout();
  return { code: 'OK' };
}

async function metric(front: Front, name: string, labels: string): Promise<number> {
  const { port } = front.mailfront.httpAddress()!;
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}}`));
  return line === undefined ? 0 : Number(line.split(' ').pop());
}

describe('with the ppolicy overlay, caches off', () => {
  let front: Front;
  before(async () => {
    front = await startFront({
      slapd,
      stores: stores(),
      sieve: true,
      directory: { master_user_filter: '(description=helpdesk)' },
      // A refusal counted as a failure would refuse the user at the fifth.
      throttle: { enabled: true, failures_per_user: 5, failures_per_address: 1000, base_delay_ms: 10, max_delay_ms: 10 },
    });
  });
  after(async () => {
    await front?.stop();
  });

  test('an expired password is refused as expired on IMAP (raw and imapflow), POP3 and ManageSieve, at info, no failure for the throttle; a wrong one is a wrong password', async () => {
    const mark = front.logs.length;
    assert.equal(await imapLogin(front, 'old'), `t1 NO [EXPIRED] ${EXPIRED_TEXT}`);
    const failed = await waitForLog(front, (l) => l['event'] === 'session.login_failed' && l['user'] === 'old', 5_000, mark);
    assert.equal(failed['code'], 'PASSWORD_EXPIRED');
    assert.equal(failed['kind'], 'expired');
    assert.equal(failed['level'], 'info');
    assert.match(String(failed['reason']), /password policy says the password of uid=old,ou=people,dc=example,dc=org has expired \(passwordExpired, no grace logins left\)/);
    const flow = await imapflowLogin(front, 'old');
    assert.equal(flow.code, 'EXPIRED');
    assert.ok(flow.response?.endsWith(` NO [EXPIRED] ${EXPIRED_TEXT}`), flow.response);
    assert.equal(await pop3Login(front, 'old'), `-ERR [AUTH] ${EXPIRED_TEXT}`);
    assert.equal(await sieveLogin(front, 'old'), `NO "${EXPIRED_TEXT}"`);
    // Five expired logins and more: not one counted, or the throttle would refuse the user now.
    assert.equal(await imapLogin(front, 'old'), `t1 NO [EXPIRED] ${EXPIRED_TEXT}`);
    assert.equal(await imapLogin(front, 'old'), `t1 NO [EXPIRED] ${EXPIRED_TEXT}`);
    assert.equal(await metric(front, 'mailfront_logins_total', 'protocol="imap",result="expired"'), 4);
    assert.equal(await metric(front, 'mailfront_logins_total', 'protocol="pop3",result="expired"'), 1);
    assert.equal(await metric(front, 'mailfront_logins_total', 'protocol="managesieve",result="expired"'), 1);
    assert.deepEqual(front.logs.slice(mark).filter((l) => l['event'] === 'session.backend_connected' || l['event'] === 'session.spliced'), [], 'no slot dialled');

    // A wrong password for an expired account: the usual refusal (OpenLDAP says nothing more then).
    const wrongMark = front.logs.length;
    assert.equal(await imapLogin(front, 'olden', WRONG[0]), 't1 NO [AUTHENTICATIONFAILED] Authentication failed.');
    assert.equal(await pop3Login(front, 'olden', WRONG[1]), '-ERR [AUTH] Authentication failed.');
    assert.equal(await sieveLogin(front, 'olden', WRONG[2]), 'NO "Authentication failed."');
    const wrong = await waitForLog(front, (l) => l['event'] === 'session.login_failed' && l['user'] === 'olden', 5_000, wrongMark);
    assert.equal(wrong['code'], 'WRONG_PASSWORD');
    // The right one is told it expired, not throttled (three failures of five).
    assert.equal(await imapLogin(front, 'olden'), `t1 NO [EXPIRED] ${EXPIRED_TEXT}`);
  });

  test('a password reset by an administrator (pwdReset, pwdMustChange) is refused until it is changed; a wrong one is a wrong password', async () => {
    const mark = front.logs.length;
    assert.equal(await imapLogin(front, 'reset'), `t1 NO [EXPIRED] ${MUST_CHANGE_TEXT}`);
    const failed = await waitForLog(front, (l) => l['event'] === 'session.login_failed' && l['user'] === 'reset', 5_000, mark);
    assert.equal(failed['code'], 'PASSWORD_MUST_CHANGE');
    assert.equal(failed['kind'], 'expired');
    assert.equal(failed['level'], 'info');
    assert.equal((await imapflowLogin(front, 'reset')).code, 'EXPIRED');
    assert.equal(await pop3Login(front, 'reset'), `-ERR [AUTH] ${MUST_CHANGE_TEXT}`);
    assert.equal(await sieveLogin(front, 'reset'), `NO "${MUST_CHANGE_TEXT}"`);
    assert.equal(await imapLogin(front, 'reset', WRONG[0]), 't1 NO [AUTHENTICATIONFAILED] Authentication failed.');
    assert.deepEqual(front.logs.slice(mark).filter((l) => l['event'] === 'session.spliced'), []);
  });

  test('grace logins let in, each logged and counted; then expired', async () => {
    const mark = front.logs.length;
    const before = await metric(front, 'mailfront_directory_password_warnings_total', 'warning="grace"');
    assert.match(await imapLogin(front, 'gracie'), /^t1 OK /);
    assert.match(await pop3Login(front, 'gracie'), /^\+OK/);
    const graces = front.logs.slice(mark).filter((l) => l['event'] === 'directory.password_grace_login');
    assert.deepEqual(graces.map((l) => [l['user'], l['graceLeft'], l['level']]), [['gracie', 1, 'info'], ['gracie', 0, 'info']]);
    assert.equal(await metric(front, 'mailfront_directory_password_warnings_total', 'warning="grace"'), before + 2);
    assert.equal(await imapLogin(front, 'gracie'), `t1 NO [EXPIRED] ${EXPIRED_TEXT}`);
  });

  test('a password about to expire lets in, the warning logged with the time left and counted', async () => {
    const mark = front.logs.length;
    const before = await metric(front, 'mailfront_directory_password_warnings_total', 'warning="expiring"');
    assert.equal((await imapflowLogin(front, 'warned')).code, 'OK');
    const warning = await waitForLog(front, (l) => l['event'] === 'directory.password_expiring', 5_000, mark);
    assert.equal(warning['user'], 'warned');
    assert.equal(warning['level'], 'info');
    assert.equal(warning['expiresInDays'], 0);
    assert.ok(Number(warning['expiresInS']) > 86_000 && Number(warning['expiresInS']) <= 86_400, String(warning['expiresInS']));
    assert.equal(await metric(front, 'mailfront_directory_password_warnings_total', 'warning="expiring"'), before + 1);
    // A password without a policy's warning logs none.
    const fineMark = front.logs.length;
    assert.match(await imapLogin(front, 'fine'), /^t1 OK /);
    assert.deepEqual(front.logs.slice(fineMark).filter((l) => String(l['event']).startsWith('directory.password_')), []);
  });

  test('a locked account (ppolicy_use_lockout: accountLocked for any password) is refused as a wrong password, the reason logged', async () => {
    for (const wrong of WRONG.slice(0, 3)) assert.equal(await imapLogin(front, 'locky', wrong), 't1 NO [AUTHENTICATIONFAILED] Authentication failed.');
    const mark = front.logs.length;
    const before = await metric(front, 'mailfront_auth_failures_total', 'reason="account-locked"');
    // The right password, locked: nothing tells it from a wrong one.
    assert.equal(await imapLogin(front, 'locky'), 't1 NO [AUTHENTICATIONFAILED] Authentication failed.');
    assert.equal(await pop3Login(front, 'locky'), '-ERR [AUTH] Authentication failed.');
    const failed = await waitForLog(front, (l) => l['event'] === 'session.login_failed' && l['user'] === 'locky', 5_000, mark);
    assert.equal(failed['code'], 'ACCOUNT_LOCKED');
    assert.equal(failed['kind'], 'auth-failed');
    assert.match(String(failed['reason']), /account uid=locky,ou=people,dc=example,dc=org is locked \(accountLocked/);
    assert.equal(await metric(front, 'mailfront_auth_failures_total', 'reason="account-locked"'), before + 2);
    // A wrong password, locked: the same answer.
    assert.equal(await imapLogin(front, 'locky', WRONG[3]), 't1 NO [AUTHENTICATIONFAILED] Authentication failed.');
  });

  test("a staff member's expired password refuses a master login as expired", async () => {
    const mark = front.logs.length;
    assert.equal(await imapLogin(front, 'fine*staff'), `t1 NO [EXPIRED] ${EXPIRED_TEXT}`);
    const failed = await waitForLog(front, (l) => l['event'] === 'session.login_failed' && l['code'] === 'PASSWORD_EXPIRED', 5_000, mark);
    assert.equal(failed['master'], 'staff');
  });
});

describe('with the auth cache on', () => {
  let front: Front;
  before(async () => {
    front = await startFront({ slapd, stores: stores(), directory: { auth_cache_ttl_ms: 60_000, entry_cache_ttl_ms: 60_000 } });
  });
  after(async () => {
    await front?.stop();
  });

  test('a refused login is never cached; a success with a warning is, its warning logged once; a reset after a cached login is seen once the cache is forgotten (kick)', async () => {
    assert.equal(await imapLogin(front, 'reset'), `t1 NO [EXPIRED] ${MUST_CHANGE_TEXT}`);
    assert.equal(await imapLogin(front, 'reset'), `t1 NO [EXPIRED] ${MUST_CHANGE_TEXT}`);
    const mark = front.logs.length;
    assert.match(await imapLogin(front, 'warned'), /^t1 OK /);
    assert.match(await imapLogin(front, 'warned'), /^t1 OK /);
    assert.equal(front.logs.slice(mark).filter((l) => l['event'] === 'directory.password_expiring').length, 1, 'the second login came from the cache');

    assert.match(await imapLogin(front, 'fine'), /^t1 OK /);
    await slapd.modify(`dn: ${slapd.userDn('fine')}\nchangetype: modify\nreplace: pwdReset\npwdReset: TRUE\n-\n`);
    try {
      // Within auth_cache_ttl_ms the cached login lets the user in (as a changed password would be), until a kick.
      assert.match(await imapLogin(front, 'fine'), /^t1 OK /);
      const { port } = front.mailfront.httpAddress()!;
      const kicked = await fetch(`http://127.0.0.1:${port}/api/kick`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ user: 'fine' }) });
      assert.equal(kicked.status, 200);
      assert.equal(await imapLogin(front, 'fine'), `t1 NO [EXPIRED] ${MUST_CHANGE_TEXT}`);
    } finally {
      await slapd.modify(`dn: ${slapd.userDn('fine')}\nchangetype: modify\ndelete: pwdReset\n-\n`);
    }
  });
});

describe('directory.password_policy: false', () => {
  let front: Front;
  before(async () => {
    front = await startFront({ slapd, stores: stores(), directory: { password_policy: false } });
  });
  after(async () => {
    await front?.stop();
  });

  test('no control is sent: an expired password is a wrong password, and a reset one lets in', async () => {
    assert.equal(await imapLogin(front, 'old'), 't1 NO [AUTHENTICATIONFAILED] Authentication failed.');
    assert.match(await imapLogin(front, 'reset'), /^t1 OK /);
  });
});

describe('a slapd without the overlay', () => {
  let front: Front;
  before(async () => {
    front = await startFront({ slapd: plainSlapd, stores: stores(), sieve: true });
  });
  after(async () => {
    await front?.stop();
  });

  test('the control is ignored: logins as before', async () => {
    const mark = front.logs.length;
    assert.equal((await imapflowLogin(front, 'fine')).code, 'OK');
    assert.match(await pop3Login(front, 'fine'), /^\+OK/);
    assert.match(await sieveLogin(front, 'fine'), /^OK/);
    assert.equal(await imapLogin(front, 'fine', WRONG[0]), 't1 NO [AUTHENTICATIONFAILED] Authentication failed.');
    assert.deepEqual(front.logs.slice(mark).filter((l) => String(l['event']).startsWith('directory.password_')), []);
  });
});
