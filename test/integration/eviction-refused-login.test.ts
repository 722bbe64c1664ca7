/**
 * A full front evicts a connection whose login was refused already and waits out
 * session.auth_failure_delay_ms (real slapd; a wrong password): the client gets its login's
 * refusal first, the bytes the end of the delay would have sent (IMAP's tagged
 * NO [AUTHENTICATIONFAILED], POP3's -ERR [AUTH], ManageSieve's NO), then the connection limit's
 * goodbye, at once and not after the delay; the failure is counted once. Before the fix the
 * goodbye came alone: IMAP's LOGIN tag never answered, and POP3's -ERR [SYS/TEMP] taken for an
 * outage (fetchmail retries the same wrong password).
 */
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import { LineClient, refusingPort, startSlapd } from './servers/index.js';
import type { Slapd } from './servers/index.js';
import { connectionsReleased, startFront, waitForLog } from './front.js';
import type { Front } from './front.js';

const PASSWORD = 'Evictee-pw-7a2e';
const MAX = 3;
/** Far past each case: an answer sent at its end would fail the case's reads. */
const DELAY_MS = 30_000;
const GOODBYE = 'Too many connections, please wait and try again later.';

let slapd: Slapd;
let front: Front;

before(async () => {
  slapd = await startSlapd({ users: [{ uid: 'evictee', password: PASSWORD, store: 'alpha' }] });
  // A wrong password never reaches a backend: the slot refuses connections.
  const port = await refusingPort();
  front = await startFront({
    slapd,
    stores: { alpha: { currentMaster: 'a1', slots: { a1: { imapPort: port, pop3Port: port, sievePort: port } } } },
    sieve: true,
    connectionLimits: { max_connections: MAX },
    session: { auth_failure_delay_ms: DELAY_MS, preauth_timeout_ms: 2 * DELAY_MS },
  });
});
after(async () => {
  await front?.stop();
  await slapd?.stop();
});

/** Every connection a case opened, closed at its end. */
const opened: LineClient[] = [];

async function open(port: number, greeted: RegExp): Promise<LineClient> {
  const client = await LineClient.connect(port);
  opened.push(client);
  // ManageSieve's capability lines, up to its OK.
  for (;;) if (greeted.test(await client.readLine())) return client;
}

async function metric(series: string): Promise<number> {
  const line = (await front.mailfront.metrics.exposition()).body.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? 0 : Number(line.slice(series.length + 1));
}

/**
 * Sends `login` (a wrong password) on a new connection to `port`, waits until mailfront has
 * refused it (session.login_failed; the answer then waits out the delay), fills the front, admits
 * one more, and returns the lines the refused client got before its connection closed, and how
 * long after the newcomer they came.
 */
async function evictedWhileRefused(port: number, greeted: RegExp, login: (client: LineClient) => Promise<void>): Promise<{ lines: string[]; ms: number }> {
  const mark = front.logs.length;
  const refused = await open(port, greeted);
  await login(refused);
  await waitForLog(front, (l) => l['event'] === 'session.login_failed' && l['code'] === 'WRONG_PASSWORD', 5_000, mark);
  for (let i = 1; i < MAX; i++) await open(port, greeted);
  assert.equal(front.mailfront.limiter.connections, MAX);
  const started = performance.now();
  await open(port, greeted);
  const lines: string[] = [];
  for (;;) {
    const line = await refused.readLine(5_000).catch((error: unknown) => (error instanceof Error && error.message === 'connection closed' ? null : Promise.reject(error)));
    if (line === null) break;
    lines.push(line);
  }
  const ms = performance.now() - started;
  const finished = await waitForLog(front, (l) => l['event'] === 'session.finished' && l['reason'] === 'evicted', 5_000, mark);
  assert.equal(finished['phase'], 'preauth');
  assert.equal(finished['user'], 'evictee');
  return { lines, ms };
}

/** Waits until `series` reads `value` (the failure is counted once the wait it cut short has ended). */
async function metricReaches(series: string, value: number): Promise<void> {
  const deadline = Date.now() + 5_000;
  while ((await metric(series)) !== value && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  assert.equal(await metric(series), value, series);
}

describe('a connection evicted while its refused login waits out the failure delay', { concurrency: 1 }, () => {
  afterEach(async () => {
    for (const client of opened.splice(0)) client.close();
    await connectionsReleased(front);
  });

  test('IMAP: the tagged NO [AUTHENTICATIONFAILED] for its LOGIN, then * BYE [UNAVAILABLE], at once; counted once', async () => {
    const failures = await metric('mailfront_auth_failures_total{reason="wrong-password"}');
    const { lines, ms } = await evictedWhileRefused(front.imapTrustedPort, /^\* OK /, async (client) => {
      // The NOOP pipelined behind the LOGIN is never run: the eviction ends the session.
      client.write(`a1 LOGIN evictee wrong-${PASSWORD}\r\na2 NOOP\r\n`);
    });
    assert.deepEqual(lines, ['a1 NO [AUTHENTICATIONFAILED] Authentication failed.', `* BYE [UNAVAILABLE] ${GOODBYE}`]);
    assert.ok(ms < DELAY_MS / 2, `answered at the eviction, not after the delay (${Math.round(ms)} ms)`);
    await metricReaches('mailfront_logins_total{protocol="imap",result="auth-failed"}', 1);
    assert.equal(await metric('mailfront_logins_total{protocol="imap",result="aborted"}'), 0);
    assert.equal(await metric('mailfront_auth_failures_total{reason="wrong-password"}'), failures + 1);
    assert.equal(await metric('mailfront_connections_evicted_total{phase="preauth"}'), 1);
  });

  test('POP3: -ERR [AUTH] for its PASS, then -ERR [SYS/TEMP], at once; counted once', async () => {
    const failures = await metric('mailfront_auth_failures_total{reason="wrong-password"}');
    const { lines, ms } = await evictedWhileRefused(front.pop3TrustedPort, /^\+OK /, async (client) => {
      await client.pop3('USER evictee');
      client.send(`PASS wrong-${PASSWORD}`);
    });
    // Not -ERR [SYS/TEMP] alone: fetchmail would take it for an outage and retry the same wrong password.
    assert.deepEqual(lines, ['-ERR [AUTH] Authentication failed.', `-ERR [SYS/TEMP] ${GOODBYE}`]);
    assert.ok(ms < DELAY_MS / 2, `answered at the eviction, not after the delay (${Math.round(ms)} ms)`);
    await metricReaches('mailfront_logins_total{protocol="pop3",result="auth-failed"}', 1);
    assert.equal(await metric('mailfront_logins_total{protocol="pop3",result="aborted"}'), 0);
    assert.equal(await metric('mailfront_auth_failures_total{reason="wrong-password"}'), failures + 1);
  });

  test('ManageSieve: NO for its AUTHENTICATE, then BYE (TRYLATER), at once; counted once', async () => {
    const failures = await metric('mailfront_auth_failures_total{reason="wrong-password"}');
    const { lines, ms } = await evictedWhileRefused(front.sieveTrustedPort!, /^OK /, async (client) => {
      client.send(`AUTHENTICATE "PLAIN" "${Buffer.from(`\0evictee\0wrong-${PASSWORD}`).toString('base64')}"`);
    });
    assert.deepEqual(lines, ['NO "Authentication failed."', `BYE (TRYLATER) "${GOODBYE}"`]);
    assert.ok(ms < DELAY_MS / 2, `answered at the eviction, not after the delay (${Math.round(ms)} ms)`);
    await metricReaches('mailfront_logins_total{protocol="managesieve",result="auth-failed"}', 1);
    assert.equal(await metric('mailfront_logins_total{protocol="managesieve",result="aborted"}'), 0);
    assert.equal(await metric('mailfront_auth_failures_total{reason="wrong-password"}'), failures + 1);
  });
});
