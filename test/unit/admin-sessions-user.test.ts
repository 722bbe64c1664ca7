// GET /api/sessions?user=NAME looks NAME up in the directory, as whereis does: the sessions of its
// entry under any of its names (a session carries the entry's own name, not an alias typed).
// Without an answer from the directory, the sessions under NAME are listed, and the answer says so.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { createAdminHandler } from '../../src/server/admin.js';
import type { AdminContext } from '../../src/server/admin.js';
import type { Directory, DirectoryUser } from '../../src/auth/directory.js';
import { MailfrontError } from '../../src/errors.js';
import { SessionRegistry } from '../../src/proxy/registry.js';
import type { SessionEntry } from '../../src/proxy/registry.js';
import { createLogger } from '../../src/log.js';

const TOKEN = 'admin-token-for-the-sessions-test';
const AMY = 'uid=amy,dc=x';

function entry(id: string, user: string, dn: string, store = 's'): SessionEntry {
  return { id, protocol: 'imap', user, dn, kicksAtLogin: 0, store, slot: 'a1', server: { name: 'a1', store, host: '127.0.0.1', imapPort: 10143 }, clientAddress: '127.0.0.1', startedAt: 0, traffic: { bytesFromClient: 0, bytesToClient: 0 }, reportedFromClient: 0, reportedToClient: 0, close: () => undefined };
}

test('sessions?user= finds the entry of an alias, and falls back to the name asked when the directory fails', async () => {
  const registry = new SessionRegistry();
  registry.add(entry('1', 'amy', AMY));
  registry.add(entry('2', 'amy', AMY, 't'));
  registry.add(entry('3', 'bob', 'uid=bob,dc=x'));
  let down = false;
  const directory = {
    lookup: async (user: string): Promise<DirectoryUser | null> => {
      if (down) throw new MailfrontError('LDAP_UNAVAILABLE', 'auth-tempfail', 'no LDAP server answered');
      return user === 'amy' || user === 'amy@example.com' ? { user, loginNames: ['amy'], dn: AMY, store: 's' } : null;
    },
  } as unknown as Directory;
  const context = { token: () => TOKEN, registry, directory: () => directory, usernames: () => ({ lowercase: true }), log: createLogger('silent') } as unknown as AdminContext;
  const handler = createAdminHandler(context);
  const server = createServer((req, res) => void handler(req, res));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const ask = async (query: string): Promise<Record<string, unknown> & { sessions: Array<{ id: string }> }> => {
    const response = await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/api/sessions?${query}`, { headers: { authorization: `Bearer ${TOKEN}` } });
    assert.equal(response.status, 200);
    return (await response.json()) as Record<string, unknown> & { sessions: Array<{ id: string }> };
  };
  try {
    const alias = await ask('user=Amy%40Example.com');
    assert.deepEqual(alias.sessions.map((s) => s.id).sort(), ['1', '2']);
    assert.deepEqual(alias['entry'], { dn: AMY, loginName: 'amy' });
    assert.deepEqual((await ask('user=amy%40example.com&store=t')).sessions.map((s) => s.id), ['2']);
    // No entry: the sessions under the name asked (none here), and the answer says there is no entry.
    const nobody = await ask('user=carol');
    assert.deepEqual(nobody.sessions, []);
    assert.equal(nobody['entry'], null);
    down = true;
    const byName = await ask('user=amy');
    assert.deepEqual(byName.sessions.map((s) => s.id).sort(), ['1', '2']);
    assert.match(String(byName['lookupFailed']), /no LDAP server answered/);
    assert.equal(byName['entry'], undefined);
    assert.deepEqual((await ask('user=amy%40example.com')).sessions, []);
    // Without a user, no lookup: every session.
    assert.equal((await ask('')).sessions.length, 3);
  } finally {
    server.close();
  }
});
