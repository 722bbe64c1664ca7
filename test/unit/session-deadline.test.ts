// The pre-auth deadline against a login still under way: waiting on the throttle (a Redis round
// trip), or on a directory that does not answer. The session ends at the deadline, the login goes
// no further, and nothing the client pipelined behind it is run. And against a login refused
// already, its answer waiting out the throttle's penalty: that refusal is the answer, at the deadline.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { SessionContext } from '../../src/session/session.js';
import { imapAdapter } from '../../src/protocol/imap/index.js';
import { aTurn, refusedWithPenalty, startFakeSession, throttleThatAllows, unanswered, until } from './session-harness.js';
import type { FakeSession } from './session-harness.js';

interface Harness extends FakeSession {
  readonly steps: string[];
}

/** An IMAP session with a 100 ms pre-auth deadline, whose throttle and directory the test gives (each may push to `steps`). */
function startSession(parts: (steps: string[]) => Pick<SessionContext, 'throttle' | 'directory'>): Harness {
  const steps: string[] = [];
  const storeMap = (): never => {
    steps.push('store map');
    throw new Error('no store map in this test');
  };
  return { ...startFakeSession(imapAdapter, 100, { ...parts(steps), storeMap } as unknown as Pick<SessionContext, 'throttle' | 'directory' | 'storeMap'>), steps };
}

test('a deadline that passes while the throttle answers ends the session; the login goes no further', async () => {
  // The throttle answers once the session has ended (or after 2 s: a session that let its
  // deadline pass would go on to the directory then).
  const session: Harness = startSession((steps) => ({
    directory: () =>
      ({
        authenticate: async () => {
          steps.push('directory');
          return { user: 'bob', dn: 'uid=bob', store: 's1' };
        },
      }) as unknown as ReturnType<SessionContext['directory']>,
    throttle: () =>
      ({
        ...throttleThatAllows(),
        check: async () => {
          steps.push('throttle asked');
          await until(() => session.ended() !== '', 'the session to end', 2_000).catch(() => undefined);
          steps.push('throttle answered');
          return { refused: false, refusedForMs: 0 };
        },
      }) as unknown as ReturnType<SessionContext['throttle']>,
  }));
  session.socket.push('a LOGIN bob secret-pw\r\n');
  await until(() => session.steps.includes('throttle answered'), "the throttle's answer");
  await aTurn();
  assert.equal(session.ended(), 'timeout');
  assert.match(session.socket.out, /\* BYE No login within the time allowed\r\n$/);
  assert.deepEqual(session.steps, ['throttle asked', 'throttle answered'], 'neither the directory nor the store map was asked after the deadline');
  // Counted once, as abandoned; not as whatever a login that went on would have met.
  const { body } = await session.metrics.exposition();
  assert.match(body, /^mailfront_logins_total\{protocol="imap",result="aborted"\} 1$/m);
  assert.doesNotMatch(body, /mailfront_logins_total\{protocol="imap",result="(?!success|aborted)[^"]*"\} [1-9]/);
});

test('a deadline that cuts a login short at the directory: the login answered as unavailable, the timeout answer, and nothing pipelined behind the login is run', async () => {
  const session = startSession((steps) => unanswered(steps));
  session.socket.push('a LOGIN bob secret-pw\r\nb LOGIN carl other-pw\r\nc LOGOUT\r\n');
  await until(() => session.ended() !== '', 'the session to end');
  // What was pipelined would run after the login's answer, if it ran at all.
  await aTurn();
  assert.equal(session.ended(), 'timeout');
  const lines = session.socket.out.split('\r\n').filter((l) => l !== '');
  assert.equal(lines.length, 3, `the greeting, the login's answer and the timeout answer only: ${JSON.stringify(lines)}`);
  assert.match(lines[1]!, /^a NO \[UNAVAILABLE\] /);
  assert.match(lines[2]!, /^\* BYE No login within the time allowed/);
  assert.deepEqual(session.steps, ['directory bob']);
  assert.equal(session.limiter.sessionsOf('bob'), 0, 'the user claim is released');
});

test('a deadline that passes while a refused login waits out the throttle\'s penalty: the refusal decided, then the timeout answer, at the deadline; the failure counted as it was', async () => {
  // The directory refuses the password at once; the throttle adds 10 s before the answer (the
  // failure delay is 0 here), far past the 100 ms deadline.
  const session = startSession((steps) => refusedWithPenalty(steps));
  const started = performance.now();
  session.socket.push('a LOGIN bob wrong-pw\r\nb LOGOUT\r\n');
  await until(() => session.ended() !== '', 'the session to end');
  await aTurn();
  assert.ok(performance.now() - started < 5_000, 'ended at the deadline, not after the penalty');
  assert.equal(session.ended(), 'timeout');
  const lines = session.socket.out.split('\r\n').filter((l) => l !== '');
  // Not NO [UNAVAILABLE]: a wrong password is no outage. The LOGOUT pipelined behind it is not run.
  assert.deepEqual(lines.slice(1), ['a NO [AUTHENTICATIONFAILED] Authentication failed.', '* BYE No login within the time allowed']);
  assert.deepEqual(session.steps, ['directory', 'failure recorded']);
  const { body } = await session.metrics.exposition();
  assert.match(body, /^mailfront_logins_total\{protocol="imap",result="auth-failed"\} 1$/m);
});
