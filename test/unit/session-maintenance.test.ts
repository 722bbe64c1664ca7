// A store in maintenance, at the session: a login of it is refused with its reason once the
// password is checked, with no slot dialled and no failure for the throttle; and a backend login
// that completes just as its store goes into maintenance (a map that changed without the
// registry being told: no drain cut the attempt short) is dropped, its backend connection
// closed, and the client refused the same way. The drain normally stops such a login first
// (maintenance.test.ts).
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import type { AddressInfo, Socket } from 'node:net';
import { test } from 'node:test';
import type { SessionContext } from '../../src/session/session.js';
import { Metrics } from '../../src/metrics.js';
import { ConnectionLimiter } from '../../src/server/connection-limits.js';
import { SessionRegistry } from '../../src/proxy/registry.js';
import { CidrSet } from '../../src/net/cidr.js';
import { createLogger } from '../../src/log.js';
import { LoginGate } from '../../src/auth/login-gate.js';
import { buildStoreMap } from '../../src/config/load.js';
import { readConfig } from '../../src/config/schema.js';
import { IssueList } from '../../src/config/validate.js';
import type { StoreMap } from '../../src/routing/storemap.js';
import { LineClient } from '../integration/servers/lineclient.js';
import { imapFront, scriptedImapBackend } from './session-harness.js';

const REASON = 'Store upgrade, please wait and try again later.';

test('a backend login that completes as its store goes into maintenance is dropped, its backend closed, and the client told the reason', { timeout: 15_000 }, async (t) => {
  let answerLogin: (() => void) | undefined;
  let sawLogin: () => void = () => undefined;
  const loginHeld = new Promise<void>((resolve) => (sawLogin = resolve));
  let backendClosed: () => void = () => undefined;
  const closed = new Promise<void>((resolve) => (backendClosed = resolve));
  const { port } = await scriptedImapBackend(t, 'a1', {
    onLogin: (answer) => {
      answerLogin = answer;
      sawLogin();
    },
    onClose: () => backendClosed(),
  });

  const config = readConfig({ failover: { hold_ms: 5_000 }, session: { auth_failure_delay_ms: 0 } }, '/etc/mailfront/mailfront.yaml', (p) => p, new IssueList());
  const mapWith = (maintenance: unknown, version: number): StoreMap =>
    buildStoreMap({ stores: { alpha: { current_master: 'a1', ...(maintenance !== undefined ? { maintenance } : {}), slots: { a1: { host: '127.0.0.1', imap_port: port } } } } }, 'test', version, config);
  let map = mapWith(undefined, 1);
  const logs: Array<Record<string, unknown>> = [];
  const registry = new SessionRegistry();
  const limiter = new ConnectionLimiter({ maxConnections: 100, maxConnectionsPerAddress: 100, maxSessionsPerUser: 10 });
  const context = {
    config: () => config,
    storeMap: () => map,
    directory: () => ({ authenticate: async () => ({ user: 'ann', dn: 'uid=ann,ou=people', store: 'alpha' }) }),
    metrics: new Metrics({ version: 'test', processMetrics: false, protocols: ['imap'] }),
    trustedNetworks: () => new CidrSet([]),
    throttle: () => ({ check: async () => ({ refused: false, refusedForMs: 0 }), recordSuccess: async () => undefined, recordFailure: async () => ({ delayMs: 0 }), exempts: () => false, addressKey: (address: string) => address }),
    loginGate: new LoginGate(),
    limiter,
    registry,
    log: createLogger('debug', { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) }),
    secureContext: () => undefined,
  } as unknown as SessionContext;

  const client = await LineClient.connect(await imapFront(t, context, limiter));
  try {
    assert.match(await client.readLine(), /^\* OK /);
    client.send('t1 LOGIN ann Maintenance-unit-pw-1');
    await loginHeld;
    map = mapWith(REASON, 2);
    answerLogin!();
    assert.equal(await client.readLine(5_000), `t1 NO [UNAVAILABLE] ${REASON}`);
    await closed;
    assert.equal(registry.size, 0, 'nothing spliced');
    const failed = logs.find((l) => l['event'] === 'session.login_failed');
    assert.equal(failed?.['kind'], 'maintenance');
    assert.deepEqual(logs.filter((l) => l['event'] === 'session.spliced'), []);
  } finally {
    client.close();
  }
});

test('a login of a store in maintenance is refused with its reason: no slot dialled, the throttle told of a success, not a failure, nor a session counted (the user at max_sessions_per_user)', { timeout: 15_000 }, async (t) => {
  let dialled = 0;
  const backend = createServer((socket: Socket) => {
    dialled++;
    socket.destroy();
  });
  await new Promise<void>((resolve) => backend.listen(0, '127.0.0.1', resolve));
  t.after(() => backend.close());
  const port = (backend.address() as AddressInfo).port;
  const config = readConfig({ failover: { hold_ms: 5_000 }, session: { auth_failure_delay_ms: 0 } }, '/etc/mailfront/mailfront.yaml', (p) => p, new IssueList());
  const map = buildStoreMap({ stores: { alpha: { current_master: 'a1', maintenance: REASON, slots: { a1: { host: '127.0.0.1', imap_port: port } } } } }, 'test', 1, config);
  const throttled = { successes: 0, failures: 0 };
  // ann is at max_sessions_per_user already (a session the drain spread has not closed yet): the
  // maintenance is said all the same, not NO [LIMIT], and counts no session of hers.
  const limiter = new ConnectionLimiter({ maxConnections: 100, maxConnectionsPerAddress: 100, maxSessionsPerUser: 1 });
  const elsewhere = limiter.admit('127.0.0.2', false);
  assert.ok(elsewhere.admitted && elsewhere.lease.claimUser('ann'));
  t.after(() => elsewhere.admitted && elsewhere.lease.release());
  const context = {
    config: () => config,
    storeMap: () => map,
    directory: () => ({ authenticate: async () => ({ user: 'ann', dn: 'uid=ann,ou=people', store: 'alpha' }) }),
    metrics: new Metrics({ version: 'test', processMetrics: false, protocols: ['imap'] }),
    trustedNetworks: () => new CidrSet([]),
    throttle: () => ({
      check: async () => ({ refused: false, refusedForMs: 0 }),
      recordSuccess: async () => void throttled.successes++,
      recordFailure: async () => (throttled.failures++, { delayMs: 0 }),
      exempts: () => false,
      addressKey: (address: string) => address,
    }),
    loginGate: new LoginGate(),
    limiter,
    registry: new SessionRegistry(),
    log: createLogger('debug', { write: () => undefined }),
    secureContext: () => undefined,
  } as unknown as SessionContext;
  const client = await LineClient.connect(await imapFront(t, context, limiter));
  try {
    assert.match(await client.readLine(), /^\* OK /);
    for (const tag of ['t1', 't2', 't3', 't4']) {
      client.send(`${tag} LOGIN ann Maintenance-unit-pw-1`);
      assert.equal(await client.readLine(5_000), `${tag} NO [UNAVAILABLE] ${REASON}`);
    }
    assert.equal(dialled, 0);
    assert.deepEqual(throttled, { successes: 4, failures: 0 });
    assert.equal(limiter.sessionsOf('ann'), 1, 'only the session held elsewhere');
    // Not failed logins of the connection either (3 close it): the fourth was answered, and it is open.
    client.send('t5 NOOP');
    assert.match(await client.readLine(5_000), /^t5 OK/);
  } finally {
    client.close();
  }
});
