// The stop against a session whose login is not answered yet: refused already and waiting out the
// throttle's penalty (the refusal is the answer, at once, then the BYE), or still at the directory
// (abandoned; IMAP's tag answered as unavailable, then the BYE). The failure is counted once, as
// it was before the stop.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { imapAdapter } from '../../src/protocol/imap/index.js';
import { aTurn, refusedWithPenalty, startFakeSession, unanswered, until } from './session-harness.js';

// A pre-auth deadline far past the test: only the stop ends these sessions.
const NO_DEADLINE_MS = 60_000;

test("a stop while a refused login waits out the throttle's penalty: the refusal decided, then the BYE, at once; the failure recorded and counted once", async () => {
  const steps: string[] = [];
  const session = startFakeSession(imapAdapter, NO_DEADLINE_MS, refusedWithPenalty(steps));
  session.socket.push('a LOGIN bob wrong-pw\r\nb LOGOUT\r\n');
  await until(() => steps.includes('failure recorded'), 'the failure to be recorded');
  await aTurn();
  assert.equal(session.ended(), '', 'the answer waits out the penalty');
  const stopped = performance.now();
  session.session.shutdown();
  await until(() => session.ended() !== '', 'the session to end');
  await aTurn();
  assert.ok(performance.now() - stopped < 1_000, 'ended at the stop, not after the penalty');
  assert.equal(session.ended(), 'shutdown');
  const lines = session.socket.out.split('\r\n').filter((l) => l !== '');
  // Not the BYE alone, the tag left open: a wrong password is no outage. The LOGOUT pipelined behind it is not run.
  assert.deepEqual(lines.slice(1), ['a NO [AUTHENTICATIONFAILED] Authentication failed.', '* BYE [UNAVAILABLE] Server shutting down']);
  assert.deepEqual(steps, ['directory', 'failure recorded']);
  const { body } = await session.metrics.exposition();
  assert.match(body, /^mailfront_logins_total\{protocol="imap",result="auth-failed"\} 1$/m);
  assert.doesNotMatch(body, /mailfront_logins_total\{protocol="imap",result="(?!auth-failed)[^"]*"\} [1-9]/);
});

test('a stop while a login waits on the directory: the login abandoned, its tag answered as unavailable, then the BYE; counted as aborted', async () => {
  const steps: string[] = [];
  const session = startFakeSession(imapAdapter, NO_DEADLINE_MS, unanswered(steps));
  session.socket.push('a LOGIN bob secret-pw\r\nb LOGOUT\r\n');
  await until(() => steps.length > 0, 'the directory to be asked');
  session.session.shutdown();
  await until(() => session.ended() !== '', 'the session to end');
  await aTurn();
  assert.equal(session.ended(), 'shutdown');
  const lines = session.socket.out.split('\r\n').filter((l) => l !== '');
  assert.deepEqual(lines.slice(1), ['a NO [UNAVAILABLE] Temporary failure, please try again later.', '* BYE [UNAVAILABLE] Server shutting down']);
  assert.deepEqual(steps, ['directory bob']);
  assert.equal(session.limiter.sessionsOf('bob'), 0, 'the user claim is released');
  const { body } = await session.metrics.exposition();
  assert.match(body, /^mailfront_logins_total\{protocol="imap",result="aborted"\} 1$/m);
  assert.doesNotMatch(body, /mailfront_logins_total\{protocol="imap",result="(?!aborted)[^"]*"\} [1-9]/);
});
