// The pre-auth deadline against a login still under way: waiting on the throttle (a Redis round
// trip), or on a directory that does not answer. The session ends at the deadline, the login goes
// no further, and nothing the client pipelined behind it is run.
import assert from 'node:assert/strict';
import { Duplex } from 'node:stream';
import { test } from 'node:test';
import { Session } from '../../src/session/session.js';
import type { SessionContext } from '../../src/session/session.js';
import { imapAdapter } from '../../src/protocol/imap/index.js';
import { Metrics } from '../../src/metrics.js';
import { ConnectionLimiter } from '../../src/server/connection-limits.js';
import { SessionRegistry } from '../../src/proxy/registry.js';
import { CidrSet } from '../../src/net/cidr.js';
import { createLogger } from '../../src/log.js';
import { MailfrontError } from '../../src/errors.js';
import { LoginGate } from '../../src/auth/login-gate.js';
import type { Config, ListenerConfig } from '../../src/config/schema.js';
import type { Socket } from 'node:net';

class FakeSocket extends Duplex {
  out = '';
  readonly remoteAddress = '192.0.2.1';
  readonly remotePort = 1234;
  override _read(): void {}
  override _write(chunk: Buffer, _encoding: BufferEncoding, done: () => void): void {
    this.out += chunk.toString('latin1');
    done();
  }
}

interface Harness {
  readonly socket: FakeSocket;
  readonly steps: string[];
  readonly metrics: Metrics;
  readonly limiter: ConnectionLimiter;
  /** Why the session ended ('' while it runs). */
  ended(): string;
}

/** An IMAP session with a 100 ms pre-auth deadline, whose throttle and directory the test gives (each may push to `steps`). */
function startSession(parts: (steps: string[]) => Pick<SessionContext, 'throttle' | 'directory'>): Harness {
  const steps: string[] = [];
  const config = {
    session: { greeting: 'hi', preauthTimeoutMs: 100, authFailureDelayMs: 0, idleTimeoutMs: 60_000 },
    usernames: { lowercase: true },
    connectionLimits: { maxSessionsPerUser: 10 },
    failover: { holdMs: 0 },
  } as unknown as Config;
  const limiter = new ConnectionLimiter({ maxConnections: 100, maxConnectionsPerAddress: 100, maxSessionsPerUser: 10 });
  const admission = limiter.admit('192.0.2.1', false);
  assert.ok(admission.admitted);
  const metrics = new Metrics({ version: 'test', processMetrics: false, protocols: ['imap'] });
  let ended = '';
  const context = {
    config: () => config,
    storeMap: () => {
      steps.push('store map');
      throw new Error('no store map in this test');
    },
    metrics,
    trustedNetworks: () => new CidrSet([]),
    loginGate: new LoginGate(),
    limiter,
    registry: new SessionRegistry(),
    log: createLogger('silent'),
    secureContext: () => undefined,
    onEnd: (reason: string) => {
      ended = reason;
    },
    ...parts(steps),
  } as unknown as SessionContext;
  const socket = new FakeSocket();
  const endpoints = { client: { address: '192.0.2.1', port: 1234 }, peer: { address: '192.0.2.1', port: 1234 }, local: { address: '127.0.0.1', port: 143 } };
  const listener = { name: 'imap', tls: 'none', plaintextWithoutTls: true } as unknown as ListenerConfig;
  new Session(socket as unknown as Socket, listener, imapAdapter, context, false, endpoints, admission.lease);
  return { socket, steps, metrics, limiter, ended: () => ended };
}

const throttleThatAllows = () => ({ check: async () => ({ refused: false, refusedForMs: 0 }), recordSuccess: async () => undefined, recordFailure: async () => ({ delayMs: 0 }) });

test('a deadline that passes while the throttle answers ends the session; the login goes no further', async () => {
  const session = startSession((steps) => ({
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
        check: () => new Promise((resolve) => setTimeout(() => (steps.push('throttle answered'), resolve({ refused: false, refusedForMs: 0 })), 200)),
      }) as unknown as ReturnType<SessionContext['throttle']>,
  }));
  setTimeout(() => session.socket.push('a LOGIN bob secret-pw\r\n'), 50);
  await new Promise((resolve) => setTimeout(resolve, 400));
  assert.equal(session.ended(), 'timeout');
  assert.match(session.socket.out, /\* BYE Autologout[^\n]*\r\n$/);
  assert.deepEqual(session.steps, ['throttle answered'], 'neither the directory nor the store map was asked after the deadline');
  // Counted once, as abandoned; not as whatever a login that went on would have met.
  const { body } = await session.metrics.exposition();
  assert.match(body, /^mailfront_logins_total\{protocol="imap",result="aborted"\} 1$/m);
  assert.doesNotMatch(body, /mailfront_logins_total\{protocol="imap",result="(?!success|aborted)[^"]*"\} [1-9]/);
});

test('a deadline that cuts a login short at the directory: the login answered as unavailable, the timeout answer, and nothing pipelined behind the login is run', async () => {
  const session = startSession((steps) => ({
    // A directory that does not answer, and gives up when the login is cancelled (as LDAP does).
    directory: () =>
      ({
        authenticate: (user: string, _password: string, signal: { addEventListener(type: 'abort', listener: () => void): void }) => {
          steps.push(`directory ${user}`);
          return new Promise((_resolve, reject) => signal.addEventListener('abort', () => reject(new MailfrontError('ABORTED', 'aborted', 'cancelled'))));
        },
      }) as unknown as ReturnType<SessionContext['directory']>,
    throttle: () => throttleThatAllows() as unknown as ReturnType<SessionContext['throttle']>,
  }));
  setTimeout(() => session.socket.push('a LOGIN bob secret-pw\r\nb LOGIN carl other-pw\r\nc LOGOUT\r\n'), 20);
  await new Promise((resolve) => setTimeout(resolve, 400));
  assert.equal(session.ended(), 'timeout');
  const lines = session.socket.out.split('\r\n').filter((l) => l !== '');
  assert.equal(lines.length, 3, `the greeting, the login's answer and the timeout answer only: ${JSON.stringify(lines)}`);
  assert.match(lines[1]!, /^a NO \[UNAVAILABLE\] /);
  assert.match(lines[2]!, /^\* BYE Autologout/);
  assert.deepEqual(session.steps, ['directory bob']);
  assert.equal(session.limiter.sessionsOf('bob'), 0, 'the user claim is released');
});
