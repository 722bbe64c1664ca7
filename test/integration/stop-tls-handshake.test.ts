/**
 * A stop and the connections not logged in over TLS: an implicit-TLS connection still in its
 * handshake at the end of a stop is closed by it, not left to wait out the pre-auth deadline after
 * the stop has ended (logging its timeout after `server.stopped`). (One that finishes its
 * handshake during the stop's drain is told BYE: lifecycle.test.ts.)
 * Also a STARTTLS the client sent its FIN behind, pipelined after a login on a listener that takes
 * plaintext logins: the session ends once the STARTTLS is answered, not at the pre-auth deadline.
 * Backends: slapd, and a Dovecot for the login.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect } from 'node:net';
import type { Socket } from 'node:net';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { startDovecot, startSlapd } from './servers/index.js';
import type { Dovecot, Slapd } from './servers/index.js';
import { linesOfSession, registerSecrets, startFront, waitForLog } from './front.js';
import type { Front } from './front.js';

const PASSWORD = 'Tess-stop-5a93';
registerSecrets([PASSWORD]);
/** session.preauth_timeout_ms here: what a connection left alone would wait for. */
const PREAUTH_MS = 3_000;

let slapd: Slapd;
let dovecot: Dovecot;

before(async () => {
  slapd = await startSlapd({ users: [{ uid: 'tess', password: PASSWORD, store: 'alpha' }] });
  dovecot = await startDovecot({ name: 'stop-tls', users: [{ name: 'tess', password: PASSWORD }] });
});
after(async () => {
  await Promise.all([slapd?.stop(), dovecot?.stop()]);
});

function startTestFront(): Promise<Front> {
  return startFront({
    slapd,
    stores: { alpha: { currentMaster: 'a1', slots: { a1: { imapPort: dovecot.imapPort, pop3Port: dovecot.pop3Port } } } },
    session: { preauth_timeout_ms: PREAUTH_MS },
    starttlsPlaintext: true,
  });
}

/** Resolves when `socket` closes, with the time it took from now. */
function closeOf(socket: Socket): Promise<number> {
  const started = performance.now();
  socket.on('error', () => undefined);
  socket.resume();
  return new Promise((resolve) => socket.once('close', () => resolve(performance.now() - started)));
}

test('a stop closes the implicit-TLS connections still in their handshake, and nothing is logged of them after server.stopped', async () => {
  const front = await startTestFront();
  let stopped = false;
  try {
    const silent = connect({ port: front.imapsPort, host: '127.0.0.1' });
    const partial = connect({ port: front.pop3sPort, host: '127.0.0.1' });
    await Promise.all([once(silent, 'connect'), once(partial, 'connect')]);
    // The first five bytes of a TLS record (a handshake record of 512 bytes), and no more.
    partial.write(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00]));
    const closed = [closeOf(silent), closeOf(partial)];
    // Both are accepted (counted) before the stop begins.
    for (let i = 0; i < 100 && front.mailfront.limiter.connections < 2; i++) await sleep(20);
    assert.equal(front.mailfront.limiter.connections, 2, 'both connections are accepted');
    await front.mailfront.stop(500);
    stopped = true;
    // Closed by the stop: the pre-auth deadline is another PREAUTH_MS away.
    const waits = await Promise.race([Promise.all(closed), sleep(PREAUTH_MS).then(() => null)]);
    assert.ok(waits !== null, `still open ${PREAUTH_MS} ms after the stop`);
    const stoppedAt = front.logs.findIndex((l) => l['event'] === 'server.stopped');
    assert.ok(stoppedAt >= 0);
    // Past the deadline the old code logged its timeout: nothing may come after server.stopped.
    await sleep(PREAUTH_MS - Math.min(...waits) + 200);
    assert.deepEqual(front.logs.slice(stoppedAt + 1).map((l) => l['event']), []);
    assert.equal(front.logs.filter((l) => l['event'] === 'session.tls_failed').length, 0, 'a stop is not a failed handshake');
  } finally {
    if (!stopped) await front.mailfront.stop(500);
    await front.stop();
  }
});

test('LOGIN and STARTTLS pipelined, then a FIN, on a STARTTLS listener that takes plaintext logins: the session ends after the STARTTLS answer', async () => {
  const front = await startTestFront();
  try {
    const socket = connect({ port: front.imapStarttlsTrustedPort!, host: '127.0.0.1', allowHalfOpen: true });
    await once(socket, 'connect');
    let text = '';
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => (text += chunk));
    for (let i = 0; i < 100 && !text.includes('\r\n'); i++) await sleep(20);
    assert.match(text, /^\* OK /);
    const closed = closeOf(socket);
    // A wrong password: the login fails after the failure delay, with the FIN read meanwhile.
    socket.end(`a LOGIN tess wrong-${PASSWORD}\r\nb STARTTLS\r\n`);
    const waited = await Promise.race([closed, sleep(PREAUTH_MS + 1_000).then(() => null)]);
    assert.ok(waited !== null, 'the connection is still open past the pre-auth deadline');
    assert.match(text, /\r\na NO \[AUTHENTICATIONFAILED\][^\r\n]*\r\nb OK [^\r\n]*\r\n$/);
    const finished = await waitForLog(front, (l) => l['event'] === 'session.finished');
    // The session ended on the FIN, not at the pre-auth deadline. (Its log lines with the
    // failure: one fresh run of the suite saw protocol-error here, never reproduced.)
    assert.equal(finished['reason'], 'client-closed-preauth', linesOfSession(front, String(finished['session'])).map((l) => JSON.stringify(l)).join('\n'));
  } finally {
    await front.stop();
  }
});
