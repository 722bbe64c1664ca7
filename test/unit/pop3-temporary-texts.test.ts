// What a POP3 client is told when its login fails for a while (directory or backend down, a limit,
// a bug), read the way fetchmail reads it. fetchmail's pop3_ok (pop3.c) takes a -ERR to a login as
// temporary only when its text holds "lock", "wait", [IN-USE] or [LOGIN-DELAY] ("lock busy"), or
// "service" with "unavailable" ("server busy"); any other text is a failed password, and in daemon
// mode it mails the user "authentication failed" after three of them. The response code alone
// ([SYS/TEMP]) is not looked at. The texts are the session's, shared with IMAP and ManageSieve.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { SessionContext } from '../../src/session/session.js';
import { pop3Adapter } from '../../src/protocol/pop3/index.js';
import { MailfrontError } from '../../src/errors.js';
import type { FailureKind } from '../../src/errors.js';
import { startFakeSession } from './session-harness.js';

/** How fetchmail's pop3_ok classifies a -ERR answer to USER/PASS/AUTH. */
function fetchmailReads(line: string): 'lock-busy' | 'server-busy' | 'auth-failed' {
  if (/lock|Lock|LOCK|wait|\[IN-USE\]|\[LOGIN-DELAY\]/.test(line)) return 'lock-busy';
  if (/[Ss]ervice/.test(line) && line.includes('unavailable')) return 'server-busy';
  return 'auth-failed';
}

type Outcome = { readonly kind: FailureKind } | { readonly throttled: true } | { readonly hang: true; readonly stopAfterMs?: number };

/** A POP3 session (pre-auth deadline 150 ms) whose login meets `outcome`; resolves with the answer to PASS. */
async function answerToPass(outcome: Outcome): Promise<string> {
  const { session, socket } = startFakeSession(pop3Adapter, 150, {
    directory: () =>
      ({
        authenticate: (_user: string, _password: string, signal: { addEventListener(type: 'abort', listener: () => void): void }) => {
          if ('kind' in outcome) return Promise.reject(new MailfrontError('TEST', outcome.kind, 'as the test says'));
          return new Promise((_resolve, reject) => signal.addEventListener('abort', () => reject(new MailfrontError('ABORTED', 'aborted', 'cancelled'))));
        },
      }) as unknown as ReturnType<SessionContext['directory']>,
    throttle: () =>
      ({
        check: async () => ('throttled' in outcome ? { refused: true, refusedBy: 'user', refusedForMs: 60_000 } : { refused: false, refusedForMs: 0 }),
        recordSuccess: async () => undefined,
        recordFailure: async () => ({ delayMs: 0 }), exempts: () => false, addressKey: (address: string) => address,
      }) as unknown as ReturnType<SessionContext['throttle']>,
  });
  socket.push('USER bob\r\nPASS secret-pw\r\n');
  // The server stops while the login is under way (a restart, a deploy).
  if ('stopAfterMs' in outcome && outcome.stopAfterMs !== undefined) setTimeout(() => session.shutdown(), outcome.stopAfterMs);
  const deadline = Date.now() + 2_000;
  for (;;) {
    const lines = socket.out.split('\r\n');
    // The greeting, USER's +OK, then the answer to PASS.
    if (lines.length > 3) return lines[2]!;
    assert.ok(Date.now() < deadline, `no answer to PASS: ${JSON.stringify(socket.out)}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

describe('pop3: a login that fails for a while reads as temporary to fetchmail', () => {
  const kinds: FailureKind[] = ['auth-tempfail', 'no-route', 'connect', 'backend-login', 'internal', 'config', 'client-protocol', 'limit'];
  for (const kind of kinds) {
    it(`kind ${kind}`, async () => {
      const line = await answerToPass({ kind });
      assert.match(line, /^-ERR \[SYS\/TEMP\] /);
      assert.notEqual(fetchmailReads(line), 'auth-failed', `fetchmail reads ${JSON.stringify(line)} as a wrong password`);
      assert.doesNotMatch(line, /bob|192\.0\.2/, 'the answer names no user or address');
    });
  }

  it('a throttled login', async () => {
    const line = await answerToPass({ throttled: true });
    assert.match(line, /^-ERR \[SYS\/TEMP\] /);
    assert.notEqual(fetchmailReads(line), 'auth-failed', `fetchmail reads ${JSON.stringify(line)} as a wrong password`);
  });

  it('a login the pre-auth deadline cut short', async () => {
    const line = await answerToPass({ hang: true });
    assert.match(line, /^-ERR \[SYS\/TEMP\] /);
    assert.notEqual(fetchmailReads(line), 'auth-failed', `fetchmail reads ${JSON.stringify(line)} as a wrong password`);
  });

  it('a login under way when the server stops', async () => {
    const line = await answerToPass({ hang: true, stopAfterMs: 30 });
    assert.match(line, /^-ERR \[SYS\/TEMP\] Server shutting down/);
    assert.notEqual(fetchmailReads(line), 'auth-failed', `fetchmail reads ${JSON.stringify(line)} as a wrong password`);
  });

  it('a wrong password still reads as one', async () => {
    assert.equal(fetchmailReads(await answerToPass({ kind: 'auth-failed' })), 'auth-failed');
  });
});
