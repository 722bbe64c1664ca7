// A master login takes three directory calls (the staff member's password, the filter, the
// target's entry). A reload that replaces the directory between them closes the one the login
// began on: the rest is asked of the directory in force, as the admin API's kick does, instead of
// failing the login as a directory outage (LDAP_CLOSED, "Authentication service temporarily
// unavailable"). The login then goes on as the target's: here to a store in maintenance, whose
// reason the client is told, which shows it got past both checks and to the target's store.
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { test } from 'node:test';
import { Session } from '../../src/session/session.js';
import type { SessionContext } from '../../src/session/session.js';
import { imapAdapter } from '../../src/protocol/imap/index.js';
import { Metrics } from '../../src/metrics.js';
import { ConnectionLimiter } from '../../src/server/connection-limits.js';
import { SessionRegistry } from '../../src/proxy/registry.js';
import { CidrSet } from '../../src/net/cidr.js';
import { createLogger } from '../../src/log.js';
import { LoginGate } from '../../src/auth/login-gate.js';
import { buildStoreMap } from '../../src/config/load.js';
import { readConfig } from '../../src/config/schema.js';
import type { ListenerConfig } from '../../src/config/schema.js';
import { IssueList } from '../../src/config/validate.js';
import type { Directory, DirectoryUser } from '../../src/auth/directory.js';
import { MailfrontError } from '../../src/errors.js';
import { FakeSocket } from './session-harness.js';

const REASON = 'Store upgrade, please wait and try again later.';

/** An IMAP session on a stand-in socket, its directory whatever `directory()` says at each ask, `extra` context stand-ins (an OAuth verifier), the rest allowed; its log lines in `logs`. */
function startSession(config: ReturnType<typeof readConfig>, map: ReturnType<typeof buildStoreMap>, directory: () => Directory, extra: Record<string, unknown> = {}): { socket: FakeSocket; logs: Array<Record<string, unknown>> } {
  const limiter = new ConnectionLimiter({ maxConnections: 100, maxConnectionsPerAddress: 100, maxSessionsPerUser: 10 });
  const admission = limiter.admit('192.0.2.1', false);
  assert.ok(admission.admitted);
  const logs: Array<Record<string, unknown>> = [];
  const context = {
    config: () => config,
    storeMap: () => map,
    directory,
    ...extra,
    metrics: new Metrics({ version: 'test', processMetrics: false, protocols: ['imap'] }),
    trustedNetworks: () => new CidrSet([]),
    throttle: () => ({ check: async () => ({ refused: false, refusedForMs: 0 }), recordSuccess: async () => undefined, recordFailure: async () => ({ delayMs: 0 }), exempts: () => false, addressKey: (address: string) => address }),
    loginGate: new LoginGate(),
    limiter,
    registry: new SessionRegistry(),
    log: createLogger('debug', { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) }),
    secureContext: () => undefined,
  } as unknown as SessionContext;
  const socket = new FakeSocket();
  const endpoints = { client: { address: '192.0.2.1', port: 1234 }, peer: { address: '192.0.2.1', port: 1234 }, local: { address: '127.0.0.1', port: 143 } };
  const listener = { name: 'imap', tls: 'none', plaintextWithoutTls: true } as unknown as ListenerConfig;
  new Session(socket as unknown as Socket, listener, imapAdapter, context, false, endpoints, admission.lease);
  return { socket, logs };
}

test('a reload that replaces the directory between a master login\'s steps: the rest is asked of the directory in force', async () => {
  const config = readConfig(
    {
      directory: { urls: ['ldap://127.0.0.1:1'], bind_dn: 'cn=x', bind_password: 'x', base_dn: 'dc=x', master_user_filter: '(employeeType=mail-helpdesk)' },
      backend: { login_mode: 'master-user', proxy_user: 'pm', proxy_password: 'pm-secret-1' },
      failover: { hold_ms: 0 },
      session: { auth_failure_delay_ms: 0 },
    },
    '/etc/mailfront/mailfront.yaml',
    (p) => p,
    new IssueList(),
  );
  const map = buildStoreMap({ stores: { alpha: { current_master: 'a1', maintenance: REASON, slots: { a1: { host: '127.0.0.1', imap_port: 1 } } } } }, 'test', 1, config);
  const staff: DirectoryUser = { user: 'helpdesk1', loginNames: ['helpdesk1'], dn: 'uid=helpdesk1,ou=people', store: null };
  const calls: string[] = [];
  const unused = async (): Promise<never> => {
    throw new Error('not asked in this test');
  };
  const common = { reachable: async () => true, forget: () => 0, cacheEntries: () => ({}), close: async () => undefined };
  // The directory in force once the reload is through.
  const next: Directory = {
    ...common,
    authenticate: unused,
    masterAllowed: async (who) => {
      calls.push(`next.masterAllowed ${who.dn}`);
      return true;
    },
    lookup: async (user, _signal, protocol) => {
      calls.push(`next.lookup ${user} ${protocol ?? ''}`);
      return { user, loginNames: ['alice'], dn: 'uid=alice,ou=people', store: 'alpha' };
    },
  };
  let current: Directory;
  // The directory the login began on: replaced (and closed) as the password is checked.
  const first: Directory = {
    ...common,
    authenticate: async (user) => {
      calls.push(`first.authenticate ${user}`);
      current = next;
      return staff;
    },
    masterAllowed: async () => {
      calls.push('first.masterAllowed');
      throw new MailfrontError('LDAP_CLOSED', 'auth-tempfail', 'the directory is shutting down');
    },
    lookup: unused,
  };
  current = first;
  const { socket, logs } = startSession(config, map, () => current);
  socket.push('a LOGIN "alice*helpdesk1" Helpdesk1-pw-5f6a\r\n');
  const deadline = Date.now() + 5_000;
  while (!socket.out.includes('a NO') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  assert.match(socket.out, new RegExp(`\\r\\na NO \\[UNAVAILABLE\\] ${REASON.replace(/[.]/g, '\\.')}\\r\\n$`), socket.out);
  assert.deepEqual(calls, ['first.authenticate helpdesk1', 'first.masterAllowed', 'next.masterAllowed uid=helpdesk1,ou=people', 'next.lookup alice imap']);
  const failed = logs.find((l) => l['event'] === 'session.login_failed');
  assert.deepEqual([failed?.['code'], failed?.['user'], failed?.['master'], failed?.['masterDn']], ['STORE_MAINTENANCE', 'alice', 'helpdesk1', 'uid=helpdesk1,ou=people']);
  socket.destroy();
});

// A bearer login verifies its token first, which may wait seconds on the IdP's JWKS URL; a reload
// meanwhile replaces the directory the login began with. The user's entry is asked of the
// directory in force, not of the closed one (which would fail the login as an outage, LDAP_CLOSED).
test('a reload while a bearer token is verified: the user\'s entry is asked of the directory in force', async () => {
  const config = readConfig(
    {
      directory: { urls: ['ldap://127.0.0.1:1'], bind_dn: 'cn=x', bind_password: 'x', base_dn: 'dc=x' },
      backend: { login_mode: 'master-user', proxy_user: 'pm', proxy_password: 'pm-secret-1' },
      failover: { hold_ms: 0 },
      session: { auth_failure_delay_ms: 0 },
    },
    '/etc/mailfront/mailfront.yaml',
    (p) => p,
    new IssueList(),
  );
  const map = buildStoreMap({ stores: { alpha: { current_master: 'a1', maintenance: REASON, slots: { a1: { host: '127.0.0.1', imap_port: 1 } } } } }, 'test', 1, config);
  const calls: string[] = [];
  const unused = async (): Promise<never> => {
    throw new Error('not asked in this test');
  };
  const closed = async (): Promise<never> => {
    calls.push('first asked');
    throw new MailfrontError('LDAP_CLOSED', 'auth-tempfail', 'the directory is shutting down');
  };
  const common = { reachable: async () => true, forget: () => 0, cacheEntries: () => ({}), close: async () => undefined, authenticate: unused };
  const next: Directory = {
    ...common,
    lookup: unused,
    findForLogin: async (user, _signal, protocol) => {
      calls.push(`next.findForLogin ${user} ${protocol}`);
      return { user, loginNames: ['alice'], dn: 'uid=alice,ou=people', store: 'alpha' };
    },
  };
  const first: Directory = { ...common, lookup: closed, findForLogin: closed };
  let current: Directory = first;
  const verifier = {
    config: { userClaim: 'preferred_username' },
    verify: async () => {
      calls.push('verify');
      current = next;
      return { user: 'alice' };
    },
  };
  const { socket, logs } = startSession(config, map, () => current, { oauth: () => verifier });
  const initial = Buffer.from('user=alice\x01auth=Bearer not-looked-at-by-the-stand-in\x01\x01').toString('base64');
  socket.push(`a AUTHENTICATE XOAUTH2 ${initial}\r\n`);
  const deadline = Date.now() + 5_000;
  while (!socket.out.includes('a NO') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  // The store is in maintenance: the client is told its reason, which shows the login got past the directory.
  assert.match(socket.out, new RegExp(`\\r\\na NO \\[UNAVAILABLE\\] ${REASON.replace(/[.]/g, '\\.')}\\r\\n$`), socket.out);
  assert.deepEqual(calls, ['verify', 'next.findForLogin alice imap']);
  const failed = logs.find((l) => l['event'] === 'session.login_failed');
  assert.equal(failed?.['code'], 'STORE_MAINTENANCE');
  socket.destroy();
});
