// A backend login that completes on a slot that stopped being its store's master meanwhile is
// dropped and retried on the new master: no session is ever spliced to a demoted master. The
// failover's drain normally cuts such a login short first (registry.masterMoved); this is the
// session's own check for a map that changed without it (the check after the login's OK).
import assert from 'node:assert/strict';
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

test('a backend login that completes on a master demoted meanwhile is dropped, and the client is served by the new master', async (t) => {
  let answerOldLogin: (() => void) | undefined;
  let oldMasterSawLogin: () => void = () => undefined;
  const oldLoginHeld = new Promise<void>((resolve) => (oldMasterSawLogin = resolve));
  const a1 = await scriptedImapBackend(t, 'a1', {
    onLogin: (answer) => {
      answerOldLogin = answer;
      oldMasterSawLogin();
    },
  });
  const a2 = await scriptedImapBackend(t, 'a2');

  const issues = new IssueList();
  const config = readConfig({ failover: { hold_ms: 5_000 }, session: { auth_failure_delay_ms: 0 } }, '/etc/mailfront/mailfront.yaml', (p) => p, issues);
  const mapWithMaster = (master: string, version: number): StoreMap =>
    buildStoreMap(
      { stores: { alpha: { current_master: master, slots: { a1: { host: '127.0.0.1', imap_port: a1.port }, a2: { host: '127.0.0.1', imap_port: a2.port } } } } },
      'test',
      version,
      config,
    );
  let map = mapWithMaster('a1', 1);
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
    client.send('t1 LOGIN ann Moved-master-pw-1');
    await oldLoginHeld;
    // The master moves while a1 holds the login's OK; the registry is not told (no drain), so
    // only the session's check after the OK stands between the client and the demoted master.
    map = mapWithMaster('a2', 2);
    answerOldLogin!();
    assert.match(await client.readLine(5_000), /^t1 OK /);
    client.send('t2 NOOP');
    assert.equal(await client.readLine(5_000), 't2 OK served by a2');
    assert.deepEqual([a1.logins(), a2.logins()], [1, 1]);
    const changed = logs.find((l) => l['event'] === 'session.master_changed_during_login');
    assert.ok(changed, `no session.master_changed_during_login in ${JSON.stringify(logs.map((l) => l['event']))}`);
    assert.deepEqual([changed['store'], changed['slot'], changed['currentMaster']], ['alpha', 'a1', 'a2']);
    const spliced = logs.filter((l) => l['event'] === 'session.spliced').map((l) => l['slot']);
    assert.deepEqual(spliced, ['a2']);
  } finally {
    client.close();
  }
});
