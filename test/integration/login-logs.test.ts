/**
 * What the logs and metrics say about a failed or slow login, against a real slapd and Dovecot
 * (the support-desk review's repros): a login the pre-auth deadline cuts short while the master
 * is down or the directory hangs is the fleet's failure (its kind, counted so), not a client
 * abort; each login's time (`loginMs`, mailfront_login_duration_seconds); a wrong password typed
 * under an alias names the entry's user; session.login_failed and session.finished name the
 * protocol, the listener, the webmail a trusted ID came through (`via`), the user a throttle or
 * the per-address limit refused, and what the throttle refused by.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { LineClient, startDovecot, startSlapd } from './servers/index.js';
import type { Dovecot, Slapd } from './servers/index.js';
import { registerPasswords, sessionIdOf, startFront, waitForLog } from './front.js';
import type { Front, FrontOptions } from './front.js';

const PASSWORDS = { alice: 'Alice-pw-71aa', gina: 'Gina-pw-77g7', frank: 'Frank-pw-66f6', wrong: 'Wrong-pw-0001', wrong2: 'Wrong-pw-0002' };
registerPasswords(...Object.values(PASSWORDS));

let slapd: Slapd;
let dovecot: Dovecot;

before(async () => {
  [slapd, dovecot] = await Promise.all([
    startSlapd({
      users: [
        { uid: 'alice', password: PASSWORDS.alice, store: 'store1', mail: 'a.smith@example.com' },
        { uid: 'gina', password: PASSWORDS.gina, store: 'store1' },
        { uid: 'frank', password: PASSWORDS.frank, store: 'store1' },
      ],
    }),
    startDovecot({
      name: 'logs-a',
      users: [
        { name: 'alice', password: PASSWORDS.alice },
        { name: 'gina', password: PASSWORDS.gina },
        { name: 'frank', password: PASSWORDS.frank },
      ],
    }),
  ]);
});

after(async () => {
  await Promise.all([slapd?.stop(), dovecot?.stop()]);
});

/** A mailfront in front of the Dovecot (store1, one slot), with a user filter that also matches mail and login_attribute uid. */
function front(options: Partial<FrontOptions> = {}): Promise<Front> {
  return startFront({
    slapd,
    stores: { store1: { currentMaster: 's1a', slots: { s1a: { imapPort: dovecot.imapPort, pop3Port: dovecot.pop3Port } } } },
    ...options,
    directory: { user_filter: '(&(objectClass=inetOrgPerson)(|(uid={user})(mail={user})))', login_attribute: 'uid', ...options.directory },
  });
}

/** IMAP LOGIN on the plaintext webmail listener (from `localAddress`, after an ID naming `forwarded`): the tagged answer, the session and how long the answer took. */
async function imapLogin(on: Front, user: string, password: string, opts: { localAddress?: string; forwarded?: string } = {}): Promise<{ answer: string; session: string; ms: number; client: LineClient }> {
  const mark = on.logs.length;
  const client = await LineClient.connect(on.imapTrustedPort, { ...(opts.localAddress !== undefined ? { localAddress: opts.localAddress } : {}), timeoutMs: 20_000 });
  await client.readLine();
  const session = await sessionIdOf(on, client.socket.localPort!, mark);
  if (opts.forwarded !== undefined) assert.equal((await client.imap(`ID ("x-originating-ip" "${opts.forwarded}")`)).status, 'OK');
  const started = Date.now();
  const result = await client.imap(`LOGIN "${user}" "${password}"`);
  return { answer: `${result.status} ${result.text}`, session, ms: Date.now() - started, client };
}

/** The lines `event` of `session` (waiting for the first). */
async function lineOf(on: Front, session: string, event: string, timeoutMs = 5_000): Promise<Record<string, unknown>> {
  return waitForLog(on, (l) => l['session'] === session && l['event'] === event, timeoutMs);
}

/** The series of mailfront's /metrics whose line starts with `prefix`, by their labels, with their values. */
async function series(on: Front, prefix: string): Promise<Map<string, number>> {
  const { host, port } = on.mailfront.httpAddress()!;
  const body = await (await fetch(`http://${host}:${port}/metrics`)).text();
  const found = new Map<string, number>();
  for (const line of body.split('\n')) if (line.startsWith(prefix)) found.set(line.slice(0, line.lastIndexOf(' ')), Number(line.slice(line.lastIndexOf(' ') + 1)));
  return found;
}

test('a login the pre-auth deadline cuts short while the master is down or the directory hangs is logged and counted as the fleet failure that held it, not as aborted', async () => {
  // The deadline (2.5 s) comes before the hold ends (3 s) and before an LDAP operation times out (5 s).
  const deadline = await front({ session: { preauth_timeout_ms: 2_500 }, failover: { hold_ms: 3_000 }, directory: { connect_timeout_ms: 5_000, operation_timeout_ms: 5_000 } });
  try {
    const warned = await waitForLog(deadline, (l) => l['event'] === 'config.hold_exceeds_preauth');
    assert.equal(warned['level'], 'warn');
    assert.equal(warned['path'], 'failover.hold_ms');
    assert.match(String(warned['msg']), /failover\.hold_ms \(3000\) is not below session\.preauth_timeout_ms \(2500\)/);
    await dovecot.stopOnly();
    let held;
    try {
      held = await imapLogin(deadline, 'gina', PASSWORDS.gina);
    } finally {
      await dovecot.startAgain();
    }
    held.client.close();
    assert.match(held.answer, /^NO \[UNAVAILABLE\] /);
    const failed = await lineOf(deadline, held.session, 'session.login_failed');
    assert.equal(failed['level'], 'error');
    assert.equal(failed['code'], 'PREAUTH_DEADLINE');
    assert.equal(failed['kind'], 'connect', 'held for an unreachable master');
    assert.match(String(failed['reason']), /^the pre-auth deadline passed: the login was waiting on a connection to the store's master; held for it \(failover\.hold_ms\), last error: slot "s1a" \(127\.0\.0\.1:\d+\): connect ECONNREFUSED/);
    assert.ok(typeof failed['loginMs'] === 'number' && failed['loginMs'] >= 2_000 && failed['loginMs'] < 3_000, `loginMs ${String(failed['loginMs'])}`);

    await slapd.pause();
    let hung;
    try {
      hung = await imapLogin(deadline, 'alice', PASSWORDS.alice);
    } finally {
      slapd.resume();
    }
    hung.client.close();
    assert.match(hung.answer, /^NO \[UNAVAILABLE\] /);
    const lookup = await lineOf(deadline, hung.session, 'session.login_failed');
    assert.equal(lookup['code'], 'PREAUTH_DEADLINE');
    assert.equal(lookup['kind'], 'auth-tempfail', 'a directory that did not answer');
    assert.equal(lookup['reason'], 'the pre-auth deadline passed: the login was waiting on the directory');

    // The kinds MailfrontLoginErrors reads; aborted is the client's connection or a stop.
    const logins = await series(deadline, 'mailfront_logins_total{');
    assert.equal(logins.get('mailfront_logins_total{protocol="imap",result="connect"}'), 1);
    assert.equal(logins.get('mailfront_logins_total{protocol="imap",result="auth-tempfail"}'), 1);
    assert.equal(logins.get('mailfront_logins_total{protocol="imap",result="aborted"}'), undefined);
    const timed = await series(deadline, 'mailfront_login_duration_seconds_count{');
    assert.equal(timed.get('mailfront_login_duration_seconds_count{protocol="imap",result="connect"}'), 1);

    // A reload logs the warning again, while the setting stands.
    const mark = deadline.logs.length;
    await deadline.mailfront.reload();
    await waitForLog(deadline, (l) => l['event'] === 'config.hold_exceeds_preauth', 5_000, mark);
  } finally {
    slapd.resume();
    await deadline.stop();
  }
});

test('each login says how long it took: loginMs on session.spliced and session.login_failed, and mailfront_login_duration_seconds by protocol and result', async () => {
  const timed = await front();
  try {
    assert.equal(timed.logs.find((l) => l['event'] === 'config.hold_exceeds_preauth'), undefined, 'no warning: hold_ms 1000 is below preauth_timeout_ms 5000');
    const before = await series(timed, 'mailfront_login_duration_seconds_count{');
    assert.equal(before.get('mailfront_login_duration_seconds_count{protocol="imap",result="success"}'), 0, 'the success series exists from the start');
    const ok = await imapLogin(timed, 'gina', PASSWORDS.gina);
    ok.client.close();
    assert.match(ok.answer, /^OK /);
    const spliced = await lineOf(timed, ok.session, 'session.spliced');
    assert.ok(Number.isInteger(spliced['loginMs']) && (spliced['loginMs'] as number) >= 0 && (spliced['loginMs'] as number) <= ok.ms + 5, `loginMs ${String(spliced['loginMs'])}, the client waited ${ok.ms} ms`);
    const wrong = await imapLogin(timed, 'gina', PASSWORDS.wrong);
    wrong.client.close();
    assert.match(wrong.answer, /^NO \[AUTHENTICATIONFAILED\] /);
    const failed = await lineOf(timed, wrong.session, 'session.login_failed');
    assert.ok(Number.isInteger(failed['loginMs']) && (failed['loginMs'] as number) < 300, `loginMs ${String(failed['loginMs'])}: until the failure, before the failure delay`);
    const after = await series(timed, 'mailfront_login_duration_seconds_');
    assert.equal(after.get('mailfront_login_duration_seconds_count{protocol="imap",result="success"}'), 1);
    assert.equal(after.get('mailfront_login_duration_seconds_count{protocol="imap",result="auth-failed"}'), 1);
    assert.equal(after.get('mailfront_login_duration_seconds_bucket{le="0.001",protocol="imap",result="auth-failed"}'), 0);
    // The failure's answer waits session.auth_failure_delay_ms (300 ms in these tests): what the client waited.
    const failedSeconds = after.get('mailfront_login_duration_seconds_sum{protocol="imap",result="auth-failed"}')!;
    assert.ok(failedSeconds >= 0.29 && failedSeconds < 2, `auth-failed sum ${failedSeconds} s`);
    assert.equal(after.get('mailfront_login_duration_seconds_bucket{le="30",protocol="imap",result="success"}'), 1);
  } finally {
    await timed.stop();
  }
});

test("a wrong password typed under an alias names the entry's user, with the name typed as typedUser; an unknown user stays as typed", async () => {
  const aliases = await front();
  try {
    const wrong = await imapLogin(aliases, 'a.smith@example.com', PASSWORDS.wrong);
    wrong.client.close();
    assert.match(wrong.answer, /^NO \[AUTHENTICATIONFAILED\] /);
    const failed = await lineOf(aliases, wrong.session, 'session.login_failed');
    assert.equal(failed['code'], 'WRONG_PASSWORD');
    assert.equal(failed['user'], 'alice');
    assert.equal(failed['typedUser'], 'a.smith@example.com');
    const finished = await lineOf(aliases, wrong.session, 'session.finished');
    assert.equal(finished['user'], 'alice');
    assert.equal(finished['typedUser'], 'a.smith@example.com');
    // Under her own name: one name, no typedUser.
    const own = await imapLogin(aliases, 'alice', PASSWORDS.wrong);
    own.client.close();
    const ownFailed = await lineOf(aliases, own.session, 'session.login_failed');
    assert.equal(ownFailed['user'], 'alice');
    assert.equal(ownFailed['typedUser'], undefined);
    const unknown = await imapLogin(aliases, 'nobody@example.com', PASSWORDS.wrong);
    unknown.client.close();
    const unknownFailed = await lineOf(aliases, unknown.session, 'session.login_failed');
    assert.equal(unknownFailed['code'], 'UNKNOWN_USER');
    assert.equal(unknownFailed['user'], 'nobody@example.com');
    assert.equal(unknownFailed['typedUser'], undefined);
  } finally {
    await aliases.stop();
  }
});

test('session.login_failed, session.spliced and session.finished name the protocol, the listener and the webmail an ID came through; a throttled login names its user and what it was refused by', async () => {
  const fields = await front({
    trustedNetworks: ['127.0.0.1/32'],
    throttle: { enabled: true, base_delay_ms: 10, max_delay_ms: 20, failures_per_user: 2, failures_per_address: 3, failure_window_ms: 60_000, refusal_ms: 60_000 },
  });
  try {
    // Through a trusted webmail (127.0.0.1) that names its user's address with ID.
    const webmail = await imapLogin(fields, 'alice', PASSWORDS.wrong, { forwarded: '198.51.100.7' });
    webmail.client.close();
    const viaFailed = await lineOf(fields, webmail.session, 'session.login_failed');
    assert.equal(viaFailed['protocol'], 'imap');
    assert.equal(viaFailed['listener'], 'imap-webmail');
    assert.equal(viaFailed['client'], '198.51.100.7');
    assert.equal(viaFailed['via'], '127.0.0.1');
    const viaFinished = await lineOf(fields, webmail.session, 'session.finished');
    assert.equal(viaFinished['listener'], 'imap-webmail');
    assert.equal(viaFinished['client'], '198.51.100.7');
    assert.equal(viaFinished['via'], '127.0.0.1');
    const through = await imapLogin(fields, 'gina', PASSWORDS.gina, { forwarded: '198.51.100.8' });
    assert.match(through.answer, /^OK /);
    const spliced = await lineOf(fields, through.session, 'session.spliced');
    assert.equal(spliced['via'], '127.0.0.1');
    through.client.close();
    const splicedFinished = await lineOf(fields, through.session, 'session.finished');
    assert.equal(splicedFinished['via'], '127.0.0.1');
    assert.equal(splicedFinished['listener'], 'imap-webmail');
    // A direct client: no via.
    const direct = await imapLogin(fields, 'gina', PASSWORDS.gina, { localAddress: '127.0.0.20' });
    direct.client.close();
    const directFinished = await lineOf(fields, direct.session, 'session.finished');
    assert.equal(directFinished['via'], undefined);

    // The user's limit: two wrong passwords for frank (two: the same one again counts once), then the right one is refused.
    for (const [address, password] of [['127.0.0.21', PASSWORDS.wrong], ['127.0.0.22', PASSWORDS.wrong2]] as const) (await imapLogin(fields, 'frank', password, { localAddress: address })).client.close();
    const byUser = await imapLogin(fields, 'frank', PASSWORDS.frank, { localAddress: '127.0.0.23' });
    byUser.client.close();
    assert.match(byUser.answer, /^NO \[LIMIT\] /);
    const userRefused = await lineOf(fields, byUser.session, 'session.login_failed');
    assert.equal(userRefused['code'], 'THROTTLED');
    assert.equal(userRefused['by'], 'user');
    assert.equal(userRefused['user'], 'frank');
    assert.equal((await lineOf(fields, byUser.session, 'session.finished'))['user'], 'frank', 'session.finished names the user refused');
    // The address's limit: three failures of other users from 127.0.0.30, then gina's right password.
    for (const user of ['nouser0', 'nouser1', 'nouser2']) (await imapLogin(fields, user, PASSWORDS.wrong, { localAddress: '127.0.0.30' })).client.close();
    const byAddress = await imapLogin(fields, 'gina', PASSWORDS.gina, { localAddress: '127.0.0.30' });
    byAddress.client.close();
    assert.match(byAddress.answer, /^NO \[LIMIT\] /);
    const addressRefused = await lineOf(fields, byAddress.session, 'session.login_failed');
    assert.equal(addressRefused['code'], 'THROTTLED');
    assert.equal(addressRefused['by'], 'address');
    assert.equal((await lineOf(fields, byAddress.session, 'session.finished'))['user'], 'gina');
    // Other refusals have no `by`.
    assert.equal(viaFailed['by'], undefined);
  } finally {
    await fields.stop();
  }
});

test('a login the per-address limit refuses (an address a trusted webmail forwards) names its user in session.finished', async () => {
  const limited = await front({ trustedNetworks: ['127.0.0.1/32'], connectionLimits: { max_connections_per_address: 1 } });
  const held: LineClient[] = [];
  try {
    const first = await imapLogin(limited, 'gina', PASSWORDS.gina, { forwarded: '198.51.100.9' });
    held.push(first.client);
    assert.match(first.answer, /^OK /);
    const refused = await imapLogin(limited, 'alice', PASSWORDS.alice, { forwarded: '198.51.100.9' });
    held.push(refused.client);
    assert.match(refused.answer, /^NO \[LIMIT\] /);
    const failed = await lineOf(limited, refused.session, 'session.login_failed');
    assert.equal(failed['code'], 'ADDRESS_CONNECTION_LIMIT');
    assert.equal(failed['user'], 'alice');
    refused.client.close();
    const finished = await lineOf(limited, refused.session, 'session.finished');
    assert.equal(finished['user'], 'alice');
    assert.equal(finished['via'], '127.0.0.1');
  } finally {
    for (const c of held) c.close();
    await limited.stop();
  }
});
