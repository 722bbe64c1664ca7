// A client's FIN before login (the accepted socket is half-open): with nothing pending the session
// ends at once; during a login, the login goes on and its answer, and what was pipelined behind
// it, still reach the client (also when the FIN comes during the failure delay), and the session
// ends then; a login that never completes is still cut by the pre-auth deadline.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import type { SessionContext } from '../../src/session/session.js';
import type { Config } from '../../src/config/schema.js';
import { imapAdapter } from '../../src/protocol/imap/index.js';
import { pop3Adapter } from '../../src/protocol/pop3/index.js';
import { MailfrontError } from '../../src/errors.js';
import { startFakeSession } from './session-harness.js';
import type { FakeSession } from './session-harness.js';

const throttle = () => ({ check: async () => ({ refused: false, refusedForMs: 0 }), recordSuccess: async () => undefined, recordFailure: async () => ({ delayMs: 0 }), exempts: () => false, addressKey: (address: string) => address });

/** A directory that refuses every password after `afterMs`, or never answers (until the login is cancelled). */
function directory(afterMs: number | 'never') {
  return () => ({
    authenticate: (user: string, _password: string, signal: { addEventListener(type: 'abort', listener: () => void): void }) =>
      new Promise((_resolve, reject) => {
        signal.addEventListener('abort', () => reject(new MailfrontError('ABORTED', 'aborted', 'cancelled')));
        if (afterMs !== 'never') setTimeout(() => reject(new MailfrontError('WRONG_PASSWORD', 'auth-failed', `wrong password for "${user}"`)), afterMs);
      }),
  });
}

/** A session of `adapter` with a pre-auth deadline of `preauthTimeoutMs` and a failure delay of `failureDelayMs`. */
function start(adapter: typeof imapAdapter | typeof pop3Adapter, parts: { preauthTimeoutMs?: number; failureDelayMs?: number; directoryAfterMs: number | 'never' }): FakeSession {
  const preauthTimeoutMs = parts.preauthTimeoutMs ?? 5_000;
  const config = {
    session: { greeting: 'hi', preauthTimeoutMs, authFailureDelayMs: parts.failureDelayMs ?? 0, idleTimeoutMs: 60_000 },
    usernames: { lowercase: true },
    directory: {},
    connectionLimits: { maxSessionsPerUser: 10 },
    failover: { holdMs: 0 },
  } as unknown as Config;
  return startFakeSession(adapter, preauthTimeoutMs, { config: () => config, throttle, directory: directory(parts.directoryAfterMs) } as unknown as Pick<SessionContext, 'throttle' | 'directory'>);
}

async function endedWithin(session: FakeSession, ms: number): Promise<string> {
  const deadline = Date.now() + ms;
  while (session.ended() === '' && Date.now() < deadline) await sleep(10);
  return session.ended();
}

test('a FIN with nothing pending before login ends the session at once', async () => {
  const session = start(imapAdapter, { directoryAfterMs: 'never' });
  session.socket.push('a CAPABILITY\r\n');
  session.socket.push(null);
  assert.equal(await endedWithin(session, 200), 'client-closed-preauth');
  assert.match(session.socket.out, /\r\na OK Capability completed\.\r\n$/);
  assert.equal(session.socket.writableEnded, true, 'the session ends its side too');
});

test('a FIN during a login that fails: the refusal and the commands pipelined behind the login are answered, then the session ends', async () => {
  const session = start(imapAdapter, { directoryAfterMs: 50 });
  session.socket.push('a LOGIN bob wrong-pw\r\nb CAPABILITY\r\n');
  session.socket.push(null);
  assert.equal(await endedWithin(session, 1_000), 'client-closed-preauth');
  assert.match(session.socket.out, /\r\na NO \[AUTHENTICATIONFAILED\] [^\r\n]*\r\n\* CAPABILITY [^\r\n]*\r\nb OK Capability completed\.\r\n$/);
});

test('a FIN during a login that fails, with LOGOUT pipelined: the refusal, then the LOGOUT answered', async () => {
  const session = start(pop3Adapter, { directoryAfterMs: 20 });
  session.socket.push('USER bob\r\nPASS wrong-pw\r\nQUIT\r\n');
  session.socket.push(null);
  assert.equal(await endedWithin(session, 1_000), 'logout');
  assert.match(session.socket.out, /\r\n\+OK\r\n-ERR \[AUTH\] Authentication failed\.\r\n\+OK Logging out\r\n$/);
});

test('a FIN during the failure delay: the refusal still comes, after the delay, then the session ends', async () => {
  const session = start(imapAdapter, { directoryAfterMs: 0, failureDelayMs: 300 });
  const started = Date.now();
  session.socket.push('a LOGIN bob wrong-pw\r\n');
  await sleep(100);
  session.socket.push(null);
  assert.equal(await endedWithin(session, 2_000), 'client-closed-preauth');
  assert.ok(Date.now() - started >= 280, 'after the failure delay');
  assert.match(session.socket.out, /\r\na NO \[AUTHENTICATIONFAILED\] [^\r\n]*\r\n$/);
});

test('a FIN during a login that never completes: the pre-auth deadline still ends the session', async () => {
  const session = start(imapAdapter, { preauthTimeoutMs: 200, directoryAfterMs: 'never' });
  session.socket.push('a LOGIN bob secret-pw\r\n');
  session.socket.push(null);
  await sleep(100);
  assert.equal(session.ended(), '', 'the login goes on after the FIN');
  assert.equal(await endedWithin(session, 1_000), 'timeout');
  assert.match(session.socket.out, /\r\na NO \[UNAVAILABLE\] [^\r\n]*\r\n\* BYE No login within the time allowed\r\n$/);
  assert.equal(session.socket.writableEnded, true);
});
