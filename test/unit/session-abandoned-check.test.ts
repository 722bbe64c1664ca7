// A guesser that sends `LOGIN user guess` and resets the connection before the answer: the
// directory goes on to check the password (its search and bind run to the end), so its answer
// must be counted by the throttle and the user's turns at the login gate kept until then. Before,
// every such guess reached the directory and none was counted: any number of distinct passwords
// per user, at once, past failures_per_user. Real sessions over loopback TCP, the real throttle
// (in memory), login gate and cache of logins; a directory that refuses every password in 3 ms.
import assert from 'node:assert/strict';
import { connect, createServer } from 'node:net';
import type { AddressInfo, Socket } from 'node:net';
import { test } from 'node:test';
import { CachingDirectory } from '../../src/auth/cache.js';
import type { Directory } from '../../src/auth/directory.js';
import { Throttle } from '../../src/auth/throttle.js';
import type { Config, ListenerConfig } from '../../src/config/schema.js';
import { MailfrontError } from '../../src/errors.js';
import { createLogger } from '../../src/log.js';
import { Metrics } from '../../src/metrics.js';
import { imapAdapter } from '../../src/protocol/imap/index.js';
import { ConnectionLimiter } from '../../src/server/connection-limits.js';
import { Session } from '../../src/session/session.js';
import { sessionContext, until } from './session-harness.js';

const FAILURES_PER_USER = 10;
/** A process checks at most this many passwords of one user at once (README, throttle.failures_per_user). */
const USER_TURNS = 4;

test('a guesser resetting the connection after each LOGIN has its wrong passwords counted: no more reach the directory than the user\'s limit and the turns in flight, and the user is then refused', { timeout: 60_000 }, async () => {
  const throttle = Throttle.fromConfig({ enabled: true, baseDelayMs: 1000, maxDelayMs: 15_000, failuresPerUser: FAILURES_PER_USER, failuresPerAddress: 30, failureWindowMs: 900_000, refusalMs: 600_000, maxTrackedSubjects: 1000 } as never, createLogger('silent'));
  let binds = 0;
  const inner = {
    byProtocol: false,
    authenticate: async () => {
      binds++;
      await new Promise((resolve) => setTimeout(resolve, 3));
      throw new MailfrontError('WRONG_PASSWORD', 'auth-failed', 'wrong password');
    },
  } as unknown as Directory;
  const directory = new CachingDirectory(inner, 60_000, 1000);
  const config = {
    session: { greeting: 'hi', preauthTimeoutMs: 60_000, authFailureDelayMs: 200, idleTimeoutMs: 60_000 },
    usernames: { lowercase: true },
    directory: { connectTimeoutMs: 3_000, operationTimeoutMs: 5_000 },
    connectionLimits: { maxSessionsPerUser: 10, maxConnectionsPerAddress: 100 },
    failover: { holdMs: 0 },
  } as unknown as Config;
  const limiter = new ConnectionLimiter({ maxConnections: 1000, maxConnectionsPerAddress: 100, maxSessionsPerUser: 10 });
  const metrics = new Metrics({ version: 'test', processMetrics: false, protocols: ['imap'] });
  const context = sessionContext(config, limiter, metrics, { throttle: () => throttle, directory: () => directory });
  const listener = { name: 'imap', tls: 'none', plaintextWithoutTls: true } as unknown as ListenerConfig;
  const server = createServer((socket: Socket) => {
    const admission = limiter.admit(socket.remoteAddress!, false);
    if (!admission.admitted) return void socket.destroy();
    const endpoints = { client: { address: socket.remoteAddress!, port: socket.remotePort! }, peer: { address: socket.remoteAddress!, port: socket.remotePort! }, local: { address: '127.0.0.1', port: 143 } };
    new Session(socket, listener, imapAdapter, context, false, endpoints, admission.lease);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  try {
    const GUESSES = 40;
    for (let i = 0; i < GUESSES; i++) {
      const client = connect(port, '127.0.0.1');
      await new Promise<void>((resolve) => client.once('data', () => resolve()));
      client.write(`a LOGIN alice guess-${i}\r\n`);
      // Gone before the directory's 3 ms: a reset, as a guesser's SO_LINGER 0 close.
      await new Promise((resolve) => setTimeout(resolve, 1));
      client.resetAndDestroy();
    }
    // The checks in flight answered and counted.
    const counted = async (): Promise<number> => (await throttle.inspect([{ user: 'alice' }]))![0]!.failures;
    const settle = performance.now() + 5_000;
    while ((await counted()) < FAILURES_PER_USER && performance.now() < settle) await new Promise((resolve) => setTimeout(resolve, 20));
    await new Promise((resolve) => setTimeout(resolve, 100));
    assert.ok((await counted()) >= FAILURES_PER_USER, `the throttle counted ${await counted()} of ${binds} wrong passwords checked`);
    assert.ok(binds <= FAILURES_PER_USER + USER_TURNS - 1, `${binds} wrong passwords of alice reached the directory (at most ${FAILURES_PER_USER + USER_TURNS - 1})`);
    // Seen by the auth-failure metric too, which the login-failure alerts read.
    const { body } = await metrics.exposition();
    const failures = [...body.matchAll(/^mailfront_auth_failures_total\{[^}]*\} (\d+)$/gm)].reduce((sum, m) => sum + Number(m[1]), 0);
    assert.ok(failures >= FAILURES_PER_USER, `mailfront_auth_failures_total: ${failures}`);

    // A client that waits for its answer is refused as the user's limit says.
    const client = connect(port, '127.0.0.1');
    let out = '';
    client.on('data', (data: Buffer) => (out += data.toString('latin1')));
    await until(() => out.includes('\r\n'), 'the greeting');
    const before = binds;
    client.write('b LOGIN alice one-more\r\n');
    await until(() => /^b (?:OK|NO|BAD)/m.test(out), 'the answer', 10_000);
    assert.match(out, /^b NO \[LIMIT\]/m);
    assert.equal(binds, before, 'a refused login reached the directory');
    client.destroy();
  } finally {
    server.close();
    await throttle.close();
  }
});
