// An eviction (a full process closing a connection not logged in, Session.evict()) against a
// session whose login is not answered yet: refused already and waiting out the throttle's penalty
// (the refusal is the answer, at once, then the limit's goodbye; the failure recorded once, as it
// was when decided), or still waiting on the throttle (IMAP's tag answered as unavailable, as at
// a stop). The refusal went unsaid before: IMAP's tag left open, POP3's -ERR [SYS/TEMP] taken for
// an outage.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { SessionContext } from '../../src/session/session.js';
import { imapAdapter } from '../../src/protocol/imap/index.js';
import { pop3Adapter } from '../../src/protocol/pop3/index.js';
import { managesieveAdapter } from '../../src/protocol/managesieve/index.js';
import type { ProtocolAdapter } from '../../src/protocol/types.js';
import { aTurn, refusedWithPenalty, startFakeSession, throttleThatAllows, until } from './session-harness.js';

// A pre-auth deadline far past the test: only the eviction ends these sessions.
const NO_DEADLINE_MS = 60_000;
const GOODBYE = 'Too many connections, please wait and try again later.';

const cases: ReadonlyArray<{ adapter: ProtocolAdapter; login: string; expected: string[] }> = [
  // The NOOP pipelined behind the login is not run.
  { adapter: imapAdapter, login: 'a LOGIN bob wrong-pw\r\nb NOOP\r\n', expected: ['a NO [AUTHENTICATIONFAILED] Authentication failed.', `* BYE [UNAVAILABLE] ${GOODBYE}`] },
  { adapter: pop3Adapter, login: 'USER bob\r\nPASS wrong-pw\r\nSTAT\r\n', expected: ['+OK', '-ERR [AUTH] Authentication failed.', `-ERR [SYS/TEMP] ${GOODBYE}`] },
  { adapter: managesieveAdapter, login: `AUTHENTICATE "PLAIN" "${Buffer.from('\0bob\0wrong-pw').toString('base64')}"\r\nNOOP\r\n`, expected: ['NO "Authentication failed."', `BYE (TRYLATER) "${GOODBYE}"`] },
];

for (const { adapter, login, expected } of cases) {
  test(`${adapter.name}: evicted while a refused login waits out the throttle's penalty: the refusal decided, then the limit's goodbye, at once; the failure recorded and counted once`, async () => {
    const steps: string[] = [];
    const session = startFakeSession(adapter, NO_DEADLINE_MS, refusedWithPenalty(steps));
    const greeting = session.socket.out;
    session.socket.push(login);
    await until(() => steps.includes('failure recorded'), 'the failure to be recorded');
    await aTurn();
    assert.equal(session.ended(), '', 'the answer waits out the penalty');
    const evicted = performance.now();
    assert.equal(session.session.evict(), 'preauth');
    await until(() => session.ended() !== '', 'the session to end');
    await aTurn();
    assert.ok(performance.now() - evicted < 1_000, 'ended at the eviction, not after the penalty');
    assert.equal(session.ended(), 'evicted');
    const lines = session.socket.out
      .slice(greeting.length)
      .split('\r\n')
      .filter((l) => l !== '')
      .map((l) => (l.startsWith('+OK') ? '+OK' : l));
    assert.deepEqual(lines, expected);
    assert.deepEqual(steps, ['directory', 'failure recorded'], 'the throttle told of the failure once');
    const { body } = await session.metrics.exposition();
    assert.match(body, new RegExp(`^mailfront_logins_total\\{protocol="${adapter.name}",result="auth-failed"\\} 1$`, 'm'));
    assert.doesNotMatch(body, new RegExp(`mailfront_logins_total\\{protocol="${adapter.name}",result="(?!auth-failed)[^"]*"\\} [1-9]`));
    assert.match(body, /^mailfront_auth_failures_total\{reason="wrong-password"\} 1$/m);
  });
}

test('IMAP: evicted while its login waits on the throttle (undecided): the tag answered as unavailable, then the BYE, as at a stop', async () => {
  const steps: string[] = [];
  const parts = {
    directory: () =>
      ({
        authenticate: async () => {
          steps.push('directory');
          throw new Error('the directory is not asked after an eviction');
        },
      }) as unknown as ReturnType<SessionContext['directory']>,
    throttle: () =>
      ({
        ...throttleThatAllows(),
        check: () => {
          steps.push('throttle asked');
          return new Promise(() => undefined);
        },
      }) as unknown as ReturnType<SessionContext['throttle']>,
  };
  const session = startFakeSession(imapAdapter, NO_DEADLINE_MS, parts);
  session.socket.push('a LOGIN bob secret-pw\r\nb NOOP\r\n');
  await until(() => steps.includes('throttle asked'), 'the throttle to be asked');
  assert.equal(session.session.evict(), 'authenticating');
  await until(() => session.ended() !== '', 'the session to end');
  await aTurn();
  assert.equal(session.ended(), 'evicted');
  const lines = session.socket.out.split('\r\n').filter((l) => l !== '');
  assert.deepEqual(lines.slice(1), ['a NO [UNAVAILABLE] Temporary failure, please try again later.', `* BYE [UNAVAILABLE] ${GOODBYE}`]);
  assert.deepEqual(steps, ['throttle asked']);
});
