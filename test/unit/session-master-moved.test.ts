// A backend login that completes on a slot that stopped being its store's master meanwhile is
// dropped and retried on the new master: no session is ever spliced to a demoted master. The
// failover's drain normally cuts such a login short first (registry.masterMoved); this is the
// session's own check for a map that changed without it (the check after the login's OK).
import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import type { AddressInfo, Server, Socket } from 'node:net';
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
import { imapFront } from './session-harness.js';

/**
 * A scripted IMAP backend on loopback: greets, answers CAPABILITY, hands each LOGIN to `onLogin`
 * (which answers it when it likes), and answers every later command with "served by NAME".
 */
async function scriptedBackend(name: string, onLogin: (answer: () => void) => void): Promise<{ server: Server; port: number; logins: () => number }> {
  let logins = 0;
  const server = createServer((socket: Socket) => {
    socket.on('error', () => undefined);
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
          onLogin(() => socket.write(`${tag} OK [CAPABILITY IMAP4rev1] logged in\r\n`));
        } else socket.write(`${tag} OK served by ${name}\r\n`);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, port: (server.address() as AddressInfo).port, logins: () => logins };
}

test('a backend login that completes on a master demoted meanwhile is dropped, and the client is served by the new master', async (t) => {
  let answerOldLogin: (() => void) | undefined;
  let oldMasterSawLogin: () => void = () => undefined;
  const oldLoginHeld = new Promise<void>((resolve) => (oldMasterSawLogin = resolve));
  const a1 = await scriptedBackend('a1', (answer) => {
    answerOldLogin = answer;
    oldMasterSawLogin();
  });
  const a2 = await scriptedBackend('a2', (answer) => answer());
  t.after(() => {
    a1.server.close();
    a2.server.close();
  });

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
