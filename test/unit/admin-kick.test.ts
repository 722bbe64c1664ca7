// POST /api/kick for a user, with a directory that answers slowly: the sessions close at once,
// before the directory's lookup (for other names of the entry) returns; then those names'
// sessions close too.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { createAdminHandler } from '../../src/server/admin.js';
import type { AdminContext } from '../../src/server/admin.js';
import type { Directory, DirectoryUser } from '../../src/auth/directory.js';
import { SessionRegistry } from '../../src/proxy/registry.js';
import type { SessionEntry } from '../../src/proxy/registry.js';
import { createLogger } from '../../src/log.js';

const TOKEN = 'admin-token-for-the-kick-test';

function entry(id: string, user: string, dn: string, closed: string[], kicksAtLogin = 0): SessionEntry {
  return { id, protocol: 'imap', user, dn, kicksAtLogin, store: 's', slot: 'a1', server: { name: 'a1', store: 's', host: '127.0.0.1', imapPort: 10143 }, clientAddress: '127.0.0.1', startedAt: 0, traffic: { bytesFromClient: 0, bytesToClient: 0 }, reportedFromClient: 0, reportedToClient: 0, close: () => void closed.push(id) };
}

test('kick USER closes the sessions before the directory answers, then those of the other names of the entry it names', async () => {
  const closed: string[] = [];
  const registry = new SessionRegistry();
  registry.add(entry('1', 'amy', 'uid=amy,dc=x', closed));
  registry.add(entry('2', 'amy@example.com', 'uid=amy,dc=x', closed));
  registry.add(entry('3', 'bob', 'uid=bob,dc=x', closed));
  let answer!: (found: DirectoryUser | null) => void;
  const forgotten: Array<{ user: string; dns: string[] }> = [];
  const directory: Directory = {
    authenticate: () => Promise.reject(new Error('not used')),
    // Nothing cached under "amy" knows the entry: only the directory's answer names it.
    lookup: () => new Promise((resolve) => (answer = resolve)),
    reachable: async () => true,
    forget: (user, dns) => {
      forgotten.push({ user, dns: [...(dns ?? [])] });
      return 1;
    },
    cacheEntries: () => ({}),
    close: async () => undefined,
  };
  const context = { token: () => TOKEN, registry, directory: () => directory, usernames: () => ({ lowercase: true }), log: createLogger('silent') } as unknown as AdminContext;
  const handler = createAdminHandler(context);
  const server = createServer((req, res) => void handler(req, res));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  try {
    const kicksBefore = registry.kicksSoFar;
    const response = fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/api/kick`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` }, body: JSON.stringify({ user: 'AMY' }) });
    for (let i = 0; i < 500 && closed.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(closed, ['1'], "amy's session closed while the directory has not answered");
    assert.equal(registry.kickedSince('amy', 'uid=unknown', kicksBefore), true, 'a login of amy under way will not be spliced');
    // While the directory is slow: a new login under the other name, made after the kick (with
    // the new password, say), is spliced. The kick is not for it.
    const kicksAfter = registry.kicksSoFar;
    registry.add(entry('4', 'amy@example.com', 'uid=amy,dc=x', closed, kicksAfter));
    // And a login under the other name that was under way at the kick, spliced just now: the
    // kick is for it.
    registry.add(entry('5', 'amy@example.com', 'uid=amy,dc=x', closed, kicksBefore));
    answer({ user: 'amy', dn: 'uid=amy,dc=x', store: 's' });
    const body = (await (await response).json()) as { kicked: Array<{ id: string }>; forgotten: number };
    assert.deepEqual(closed, ['1', '2', '5'], 'then the sessions under the other name of her entry begun before the kick');
    assert.deepEqual(body.kicked.map((k) => k.id), ['1', '2', '5']);
    assert.equal(body.forgotten, 2);
    assert.deepEqual(forgotten, [{ user: 'amy', dns: [] }, { user: 'amy', dns: ['uid=amy,dc=x'] }]);
    assert.equal(registry.kickedSince('amy@example.com', 'uid=amy,dc=x', kicksBefore), true, 'and a login under the other name that was under way');
    assert.equal(registry.kickedSince('amy@example.com', 'uid=amy,dc=x', kicksAfter), false, 'but not one begun after the kick');
  } finally {
    server.closeAllConnections();
    server.close();
  }
});

test('kick --slot with a slot that no store has answers 404 saying so; a known slot without sessions, or a removed one with sessions, is kicked', async () => {
  const closed: string[] = [];
  const registry = new SessionRegistry();
  // On a slot a reload took out of the store map: still there to be kicked.
  registry.add({ ...entry('1', 'amy', 'uid=amy,dc=x', closed), slot: 'old9' });
  const holder = { current: { version: 4, stores: new Map([['s', { slots: new Map([['a1', {}], ['a2', {}]]) }]]) } };
  const context = { token: () => TOKEN, registry, holder, usernames: () => ({ lowercase: true }), log: createLogger('silent') } as unknown as AdminContext;
  const handler = createAdminHandler(context);
  const server = createServer((req, res) => void handler(req, res));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const kick = async (slot: string): Promise<{ status: number; body: Record<string, unknown> }> => {
    const response = await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/api/kick`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` }, body: JSON.stringify({ slot }) });
    return { status: response.status, body: (await response.json()) as Record<string, unknown> };
  };
  try {
    const unknown = await kick('nope');
    assert.equal(unknown.status, 404);
    assert.deepEqual(unknown.body, { error: 'no store has a slot "nope" (store map version 4), and no session is on one', code: 'UNKNOWN_SLOT' });
    assert.deepEqual(await kick('a2'), { status: 200, body: { kicked: [] } });
    const removed = await kick('old9');
    assert.equal(removed.status, 200);
    assert.deepEqual(closed, ['1']);
  } finally {
    server.closeAllConnections();
    server.close();
  }
});

test('kick --slot closes its sessions over several turns of the event loop, and answers with those it closed', async () => {
  const closed: string[] = [];
  const registry = new SessionRegistry();
  // More than a slot's kick closes in one turn: a slot may hold 30,000 sessions, and closing
  // them all in one turn kept every login and scrape waiting for seconds.
  const count = 3_000;
  const entries = Array.from({ length: count }, (_, i) => entry(String(i), `u${i}`, `uid=u${i},dc=x`, closed));
  // What the first close starts: a callback for the event loop's next turn, a session that ends
  // on its own (its client logged out) before its turn, and a login spliced to the slot during the kick.
  let closedAtNextTurn: number | undefined;
  const last = entries[count - 1]!;
  const first = entries[0]!;
  const spliced = entry('spliced-during-the-kick', 'bob', 'uid=bob,dc=x', closed);
  entries[0] = {
    ...first,
    close: (reason) => {
      first.close(reason);
      setImmediate(() => (closedAtNextTurn = closed.length));
      registry.remove(last);
      registry.add(spliced);
    },
  };
  for (const e of entries) registry.add(e);
  const holder = { current: { version: 1, stores: new Map([['s', { slots: new Map([['a1', {}]]) }]]) } };
  const context = { token: () => TOKEN, registry, holder, usernames: () => ({ lowercase: true }), log: createLogger('silent') } as unknown as AdminContext;
  const handler = createAdminHandler(context);
  const server = createServer((req, res) => void handler(req, res));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  try {
    const response = await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/api/kick`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` }, body: JSON.stringify({ slot: 'a1' }) });
    assert.equal(response.status, 200);
    const body = (await response.json()) as { kicked: Array<{ id: string; slot: string }> };
    assert.ok(closedAtNextTurn !== undefined && closedAtNextTurn < count - 1, `the event loop turned before the last session was closed (at ${closedAtNextTurn} of ${count - 1} closed)`);
    const expected = entries.slice(0, count - 1).map((e) => e.id);
    assert.deepEqual(closed, expected, 'every session on the slot when the kick came is closed, once, but the one that ended before its turn and the one spliced since');
    assert.deepEqual(body.kicked.map((k) => k.id), expected, 'the answer lists the sessions the kick closed');
    assert.equal(body.kicked[0]?.slot, 'a1');
  } finally {
    server.closeAllConnections();
    server.close();
  }
});
