import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { SessionContext } from '../../src/session/session.js';
import { Metrics } from '../../src/metrics.js';
import { ConnectionLimiter } from '../../src/server/connection-limits.js';
import { createLogger } from '../../src/log.js';
import { buildStoreMap } from '../../src/config/load.js';
import { readConfig } from '../../src/config/schema.js';
import { IssueList } from '../../src/config/validate.js';
import { LineClient } from '../integration/servers/lineclient.js';
import { imapFront, scriptedImapBackend, sessionContext, throttleThatAllows } from './session-harness.js';

// The login reply of a session whose backend offers UNAUTHENTICATE (RFC 8437): the session gives
// the client the guarded list (without UNAUTHENTICATE, STARTTLS, COMPRESS=…, which the guard
// refuses in the splice), not the backend's. The adapter's filter has unit tests of its own; a
// review's mutant that passed the backend's list to the reply instead passed every test, as no
// real server offers UNAUTHENTICATE to an ordinary user (Cyrus to its admins only).
test('a backend offering UNAUTHENTICATE: the login reply lists the capabilities without the words the guard refuses, and the word closes the session', { timeout: 15_000 }, async (t) => {
  const { port } = await scriptedImapBackend(t, 'b1', { loginCapabilities: 'IMAP4rev1 UNAUTHENTICATE STARTTLS COMPRESS=DEFLATE IDLE' });
  const config = readConfig({ session: { auth_failure_delay_ms: 0 } }, '/etc/mailfront/mailfront.yaml', (p) => p, new IssueList());
  const map = buildStoreMap({ stores: { beta: { current_master: 'b1', slots: { b1: { host: '127.0.0.1', imap_port: port } } } } }, 'test', 1, config);
  const logs: Array<Record<string, unknown>> = [];
  const limiter = new ConnectionLimiter({ maxConnections: 100, maxConnectionsPerAddress: 100, maxSessionsPerUser: 10 });
  const context = sessionContext(config, limiter, new Metrics({ version: 'test', processMetrics: false, protocols: ['imap'] }), {
    storeMap: () => map,
    directory: () => ({ authenticate: async () => ({ user: 'ben', dn: 'uid=ben,ou=people', store: 'beta' }) }),
    throttle: throttleThatAllows,
    log: createLogger('debug', { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) }),
  } as unknown as Partial<SessionContext>);
  const client = await LineClient.connect(await imapFront(t, context, limiter));
  try {
    assert.match(await client.readLine(), /^\* OK /);
    client.send('t1 LOGIN ben Capabilities-unit-pw-1');
    assert.equal(await client.readLine(5_000), 't1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in');
    client.send('t2 UNAUTHENTICATE');
    assert.match(await client.readLine(5_000), /^\* BYE /);
    assert.equal(await client.waitClosed(5_000), true);
    // Logged as the session ends, after its close.
    for (let i = 0; i < 100 && !logs.some((l) => l['event'] === 'session.command_refused'); i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(logs.find((l) => l['event'] === 'session.command_refused')?.['command'], 'UNAUTHENTICATE', JSON.stringify(logs.map((l) => l['event'])));
  } finally {
    client.close();
  }
});
