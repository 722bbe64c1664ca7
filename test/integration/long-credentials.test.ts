/**
 * Credentials longer than the 1 KiB input buffer of Dovecot's imap-login and pop3-login, through
 * mailfront against real servers: replayed as SASL PLAIN, which Dovecot reads into a buffer of
 * its own, they log in; a backend that closes the connection in answer to a login command is a
 * refused login, answered at once and never retried as if the slot were down.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { LineClient, startDovecot, startSlapd } from './servers/index.js';
import type { Dovecot, Slapd } from './servers/index.js';
import { loginEventsOf, makeMessage, registerSecrets, sessionIdOf, startFront, waitForLog } from './front.js';
import type { Front } from './front.js';

/** 3,000 bytes, far past Dovecot's LOGIN_MAX_INBUF_SIZE (1026) and within mailfront's 4,096 per argument. */
const LONG_PASSWORD = `Long-pw-${'x7Q'.repeat(1000)}`.slice(0, 3000);
const MASTER = { name: 'proxymaster', password: `Master-${'m3W'.repeat(1000)}`.slice(0, 3000) };
const PASSWORDS = { lena: LONG_PASSWORD, mona: 'Mona-pw-4e1b' };
registerSecrets([LONG_PASSWORD, MASTER.password, PASSWORDS.mona, Buffer.from(`\0lena\0${LONG_PASSWORD}`).toString('base64')]);

/** failover.hold_ms: a login taken for one to an unreachable master would be retried this long. */
const HOLD_MS = 5_000;

let slapd: Slapd;
let alpha: Dovecot;
let beta: Dovecot;
let front: Front;

before(async () => {
  slapd = await startSlapd({
    users: [
      { uid: 'lena', password: PASSWORDS.lena, store: 'alpha' },
      { uid: 'mona', password: PASSWORDS.mona, store: 'beta' },
    ],
  });
  [alpha, beta] = await Promise.all([
    startDovecot({ name: 'alpha', users: [{ name: 'lena', password: PASSWORDS.lena }] }),
    // A master user whose password makes mailfront's LOGIN (and PASS) longer than Dovecot reads.
    startDovecot({ name: 'beta', users: [{ name: 'mona', password: 'mona-backend-only' }], masterUser: MASTER }),
  ]);
  await alpha.deliver('lena', makeMessage('long password hello'));
  front = await startFront({
    slapd,
    stores: {
      alpha: { currentMaster: 'a1', slots: { a1: { imapPort: alpha.imapPort, pop3Port: alpha.pop3Port } } },
      beta: {
        currentMaster: 'b1',
        slots: { b1: { imapPort: beta.imapPort, pop3Port: beta.pop3Port } },
        backend: { login_mode: 'master-user', proxy_user: MASTER.name, proxy_password: MASTER.password },
      },
    },
    failover: { hold_ms: HOLD_MS },
  });
});

after(async () => {
  await front?.stop();
  await Promise.all([slapd?.stop(), alpha?.stop(), beta?.stop()]);
});

describe('credentials longer than a Dovecot login buffer', () => {
  test('IMAP: LOGIN with a 3,000-byte password is replayed as AUTHENTICATE PLAIN and logs in', async () => {
    const raw = await LineClient.connect(front.imapTrustedPort);
    try {
      assert.match(await raw.readLine(), /^\* OK /);
      raw.write(`a1 LOGIN lena {${LONG_PASSWORD.length}+}\r\n${LONG_PASSWORD}\r\n`);
      assert.equal((await raw.imapResult('a1')).status, 'OK');
      const select = await raw.imapOk('EXAMINE INBOX');
      assert.ok(select.untagged.includes('* 1 EXISTS'), select.untagged.join(' | '));
    } finally {
      raw.close();
    }
  });

  test('POP3: USER and PASS with a 3,000-byte password are replayed as AUTH PLAIN and log in', async () => {
    const raw = await LineClient.connect(front.pop3TrustedPort);
    try {
      assert.match(await raw.readLine(), /^\+OK/);
      assert.match(await raw.pop3('USER lena'), /^\+OK/);
      assert.match(await raw.pop3(`PASS ${LONG_PASSWORD}`), /^\+OK/);
      assert.match(await raw.pop3('STAT'), /^\+OK 1 \d+$/);
      await raw.pop3('QUIT');
    } finally {
      raw.close();
    }
  });

  for (const protocol of ['imap', 'pop3'] as const) {
    test(`${protocol}: a backend that closes in answer to the login command is tried twice at most (a crash is waited for; a refusal comes again), then the client is told`, async () => {
      const since = front.logs.length;
      const raw = await LineClient.connect(protocol === 'imap' ? front.imapTrustedPort : front.pop3TrustedPort);
      try {
        await raw.readLine();
        // mailfront's LOGIN "mona*proxymaster" {3000+} (or PASS of 3,000 bytes) overflows
        // Dovecot's input buffer: it answers "Input buffer full" and closes at once.
        let reply: string;
        if (protocol === 'imap') {
          const result = await raw.imap(`LOGIN mona ${PASSWORDS.mona}`);
          reply = `${result.status} ${result.text}`;
        } else {
          await raw.pop3('USER mona');
          raw.send(`PASS ${PASSWORDS.mona}`);
          reply = await raw.readLine();
        }
        const session = await sessionIdOf(front, raw.socket.localPort!, since);
        assert.match(reply, protocol === 'imap' ? /^NO \[UNAVAILABLE\] / : /^-ERR \[SYS\/TEMP\] /);
        const failed = await waitForLog(front, (l) => l['event'] === 'session.login_failed' && l['session'] === session, 2_000, since);
        assert.equal(failed['kind'], 'backend-login', JSON.stringify(failed));
        if (protocol === 'imap') {
          // Dovecot's imap-login closes without a word: one more attempt, then the refusal. The
          // login was not held for failover.hold_ms, each retry sending the password again.
          assert.equal(failed['code'], 'BACKEND_CLOSED_AFTER_LOGIN', JSON.stringify(failed));
          assert.deepEqual(loginEventsOf(front, session), ['session.authenticated', 'session.backend_connected', 'session.backend_retry', 'session.backend_connected', 'session.login_failed']);
        } else {
          // pop3-login says -ERR before it closes: a refusal, not retried.
          assert.equal(failed['code'], 'BACKEND_REFUSED_LOGIN', JSON.stringify(failed));
          assert.deepEqual(loginEventsOf(front, session), ['session.authenticated', 'session.backend_connected', 'session.login_failed']);
        }
      } finally {
        raw.close();
      }
    });
  }
});
