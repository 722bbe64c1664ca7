// A Session over a fake socket with no network: the config, limits and context a unit test of
// the session's login needs, with the directory, throttle and store map the test gives; and a
// loopback front of real IMAP sessions for the tests that need a client and a backend (imapFront()).
import assert from 'node:assert/strict';
import { Duplex } from 'node:stream';
import { createServer } from 'node:net';
import type { AddressInfo, Socket } from 'node:net';
import type { TestContext } from 'node:test';
import { Session } from '../../src/session/session.js';
import type { SessionContext } from '../../src/session/session.js';
import type { ProtocolAdapter } from '../../src/protocol/types.js';
import { imapAdapter } from '../../src/protocol/imap/index.js';
import { Metrics } from '../../src/metrics.js';
import { ConnectionLimiter } from '../../src/server/connection-limits.js';
import { SessionRegistry } from '../../src/proxy/registry.js';
import { CidrSet } from '../../src/net/cidr.js';
import { createLogger } from '../../src/log.js';
import { LoginGate } from '../../src/auth/login-gate.js';
import { MailfrontError } from '../../src/errors.js';
import type { Config, ListenerConfig } from '../../src/config/schema.js';

/** A client socket whose writes are kept as text. */
export class FakeSocket extends Duplex {
  out = '';
  readonly remoteAddress = '192.0.2.1';
  readonly remotePort = 1234;
  override _read(): void {}
  override _write(chunk: Buffer, _encoding: BufferEncoding, done: () => void): void {
    this.out += chunk.toString('latin1');
    done();
  }
}

export interface FakeSession {
  readonly session: Session;
  readonly socket: FakeSocket;
  readonly metrics: Metrics;
  readonly limiter: ConnectionLimiter;
  /** Why the session ended ('' while it runs). */
  ended(): string;
}

/**
 * Starts a `protocol` session from 192.0.2.1 on a plaintext listener, with a pre-auth deadline of
 * `preauthTimeoutMs`, no failure delay and no failover hold; `parts` gives the directory, the
 * throttle and, if the test needs one, the store map.
 */
export function startFakeSession(
  adapter: ProtocolAdapter,
  preauthTimeoutMs: number,
  parts: Pick<SessionContext, 'throttle' | 'directory'> & Partial<Pick<SessionContext, 'storeMap'>>,
): FakeSession {
  const config = {
    session: { greeting: 'hi', preauthTimeoutMs, authFailureDelayMs: 0, idleTimeoutMs: 60_000 },
    usernames: { lowercase: true },
    directory: {},
    connectionLimits: { maxSessionsPerUser: 10 },
    failover: { holdMs: 0 },
  } as unknown as Config;
  const limiter = new ConnectionLimiter({ maxConnections: 100, maxConnectionsPerAddress: 100, maxSessionsPerUser: 10 });
  const admission = limiter.admit('192.0.2.1', false);
  assert.ok(admission.admitted);
  const metrics = new Metrics({ version: 'test', processMetrics: false, protocols: [adapter.name] });
  let ended = '';
  const context = sessionContext(config, limiter, metrics, {
    onEnd: (reason: string) => {
      ended = reason;
    },
    ...parts,
  });
  const socket = new FakeSocket();
  const endpoints = { client: { address: '192.0.2.1', port: 1234 }, peer: { address: '192.0.2.1', port: 1234 }, local: { address: '127.0.0.1', port: 143 } };
  const listener = { name: adapter.name, tls: 'none', plaintextWithoutTls: true } as unknown as ListenerConfig;
  const session = new Session(socket as unknown as Socket, listener, adapter, context, false, endpoints, admission.lease);
  return { session, socket, metrics, limiter, ended: () => ended };
}

/**
 * The context of sessions under `config`, with `limiter` and `metrics`: a fresh login gate and
 * session registry, no trusted network, a silent log, no store map unless `parts` gives one;
 * `parts` gives the directory and the throttle, and may replace the rest.
 */
export function sessionContext(config: Config, limiter: ConnectionLimiter, metrics: Metrics, parts: Partial<SessionContext>): SessionContext {
  return {
    config: () => config,
    storeMap: () => {
      throw new Error('no store map in this test');
    },
    metrics,
    trustedNetworks: () => new CidrSet([]),
    loginGate: new LoginGate(),
    limiter,
    registry: new SessionRegistry(),
    log: createLogger('silent'),
    secureContext: () => undefined,
    onEnd: () => undefined,
    ...parts,
  } as unknown as SessionContext;
}

/**
 * A front on a free loopback port whose every connection becomes an IMAP session of `context` on
 * a plaintext listener, admitted by `limiter` (from 127.0.0.1); closed when the test `t` ends.
 * Returns its port.
 */
export async function imapFront(t: TestContext, context: SessionContext, limiter: ConnectionLimiter): Promise<number> {
  const listener = { name: 'imap', tls: 'none', plaintextWithoutTls: true } as unknown as ListenerConfig;
  const front = createServer((socket) => {
    const admission = limiter.admit('127.0.0.1', false);
    assert.ok(admission.admitted);
    const endpoints = { client: { address: '127.0.0.1', port: socket.remotePort ?? 0 }, peer: { address: '127.0.0.1', port: socket.remotePort ?? 0 }, local: { address: '127.0.0.1', port: 143 } };
    new Session(socket, listener, imapAdapter, context, false, endpoints, admission.lease);
  });
  await new Promise<void>((resolve) => front.listen(0, '127.0.0.1', resolve));
  t.after(() => front.close());
  return (front.address() as AddressInfo).port;
}

/**
 * A scripted IMAP backend on a free loopback port, closed when the test `t` ends: greets as
 * `name`, answers CAPABILITY, hands each LOGIN to `onLogin` (which answers it when it likes; by
 * default at once) with `OK [CAPABILITY <loginCapabilities>]`, and answers every later command
 * with "served by NAME". `onClose` is told of each connection's close. Returns its port and the
 * LOGINs it saw.
 */
export async function scriptedImapBackend(
  t: TestContext,
  name: string,
  options: { readonly onLogin?: (answer: () => void) => void; readonly loginCapabilities?: string; readonly onClose?: () => void } = {},
): Promise<{ port: number; logins: () => number }> {
  const { onLogin = (answer: () => void) => answer(), loginCapabilities = 'IMAP4rev1', onClose } = options;
  let logins = 0;
  const server = createServer((socket: Socket) => {
    socket.on('error', () => undefined);
    if (onClose !== undefined) socket.on('close', onClose);
    socket.write(`* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ${name} ready\r\n`);
    let buffered = '';
    socket.on('data', (chunk: Buffer) => {
      buffered += chunk.toString('latin1');
      for (let nl = buffered.indexOf('\n'); nl >= 0; nl = buffered.indexOf('\n')) {
        const line = buffered.slice(0, nl).replace(/\r$/, '');
        buffered = buffered.slice(nl + 1);
        const [tag, command] = line.split(' ');
        if (/^CAPABILITY$/i.test(command ?? '')) socket.write(`* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n${tag} OK done\r\n`);
        else if (/^LOGIN$/i.test(command ?? '')) {
          logins++;
          onLogin(() => socket.write(`${tag} OK [CAPABILITY ${loginCapabilities}] logged in\r\n`));
        } else socket.write(`${tag} OK served by ${name}\r\n`);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.after(() => server.close());
  return { port: (server.address() as AddressInfo).port, logins: () => logins };
}

/** Waits (polling) until `predicate` holds; fails with `what` after `timeoutMs`. */
export async function until(predicate: () => boolean, what: string, timeoutMs = 5_000): Promise<void> {
  const deadline = performance.now() + timeoutMs;
  while (!predicate()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

/** A turn of the event loop: whatever a settled wait set going (microtasks, setImmediate) has run. */
export async function aTurn(): Promise<void> {
  await new Promise((resolve) => setImmediate(resolve));
  await new Promise((resolve) => setTimeout(resolve, 0));
}

/** A throttle that refuses nothing and adds no delay. */
export const throttleThatAllows = () => ({ check: async () => ({ refused: false, refusedForMs: 0 }), recordSuccess: async () => undefined, recordFailure: async () => ({ delayMs: 0 }), exempts: () => false, addressKey: (address: string) => address });

/**
 * A directory that refuses every password, and a throttle that adds `penaltyMs` before the
 * refusal is answered (the failure delay, its penalty); each pushes what it did to `steps`.
 */
export function refusedWithPenalty(steps: string[], penaltyMs = 10_000): Pick<SessionContext, 'directory' | 'throttle'> {
  return {
    directory: () =>
      ({
        authenticate: async () => {
          steps.push('directory');
          throw new MailfrontError('WRONG_PASSWORD', 'auth-failed', 'wrong password');
        },
      }) as unknown as ReturnType<SessionContext['directory']>,
    throttle: () =>
      ({
        ...throttleThatAllows(),
        recordFailure: async () => {
          steps.push('failure recorded');
          return { refused: false, refusedForMs: 0, delayMs: penaltyMs };
        },
      }) as unknown as ReturnType<SessionContext['throttle']>,
  };
}

/**
 * A directory that never answers a password (the session stops waiting on its own cancellation:
 * it asks the directory without it, as the directory's work goes on to its end), and a throttle
 * that refuses nothing; the directory pushes `directory <user>` to `steps` when asked.
 */
export function unanswered(steps: string[]): Pick<SessionContext, 'directory' | 'throttle'> {
  return {
    directory: () =>
      ({
        authenticate: (user: string) => {
          steps.push(`directory ${user}`);
          return new Promise(() => undefined);
        },
      }) as unknown as ReturnType<SessionContext['directory']>,
    throttle: () => throttleThatAllows() as unknown as ReturnType<SessionContext['throttle']>,
  };
}
