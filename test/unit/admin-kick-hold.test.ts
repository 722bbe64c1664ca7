// POST /api/kick for a user the directory holds (a mailbox being moved): the sessions are closed
// with the hold's reason; with a directory that does not answer, they are closed all the same
// about a second later, with the kick's own words. The logins under way are stopped at once,
// before the directory answers, with the kick's own words: a login with an old password must not
// be spliced while the kick waits for its lookup.
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

const TOKEN = 'admin-token-for-the-kick-hold-test';
const REASON = 'Mailbox moving, please wait and try again later.';

function entry(id: string, closed: Array<[string, string | undefined]>): SessionEntry {
  return { id, protocol: 'imap', user: 'amy', dn: 'uid=amy,dc=x', kicksAtLogin: 0, store: 's', slot: 'a1', server: { name: 'a1', store: 's', host: '127.0.0.1', imapPort: 10143 }, clientAddress: '127.0.0.1', startedAt: 0, traffic: { bytesFromClient: 0, bytesToClient: 0 }, reportedFromClient: 0, reportedToClient: 0, close: (_reason, hold) => void closed.push([id, hold]) };
}

async function kickWith(lookup: Directory['lookup']): Promise<{ closed: Array<[string, string | undefined]>; stopped: string | undefined; stoppedMs: number | undefined; ms: number }> {
  const closed: Array<[string, string | undefined]> = [];
  const registry = new SessionRegistry();
  registry.add(entry('1', closed));
  // A login of amy under way at its backend: the kick stops it, and it asks what to tell its client.
  let stopped: string | undefined;
  let stoppedAt: number | undefined;
  const kicksAtLogin = registry.kicksSoFar;
  registry.attemptStarted({
    store: 's',
    slot: 'a1',
    protocol: 'imap',
    user: 'amy',
    dn: 'uid=amy,dc=x',
    kicksAtLogin,
    stop: () => {
      stoppedAt = performance.now();
      stopped = registry.kickHold('amy', 'uid=amy,dc=x', kicksAtLogin) ?? 'Disconnected by an administrator';
    },
    attemptPlace: -1,
  });
  const directory: Directory = { authenticate: () => Promise.reject(new Error('not used')), lookup, reachable: async () => true, forget: () => 0, cacheEntries: () => ({}), close: async () => undefined };
  const context = { token: () => TOKEN, registry, directory: () => directory, usernames: () => ({ lowercase: true }), log: createLogger('silent') } as unknown as AdminContext;
  const handler = createAdminHandler(context);
  const server = createServer((req, res) => void handler(req, res));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  try {
    const started = performance.now();
    const response = fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/api/kick`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` }, body: JSON.stringify({ user: 'amy' }) });
    for (let i = 0; i < 300 && closed.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
    const ms = performance.now() - started;
    // A directory that never answers: the answer waits for the admin lookup's deadline; not awaited here.
    void response.then((r) => r.body?.cancel(), () => undefined);
    return { closed, stopped, stoppedMs: stoppedAt === undefined ? undefined : stoppedAt - started, ms };
  } finally {
    server.closeAllConnections();
    server.close();
  }
}

test('kick USER of a user the directory holds closes the sessions with the hold\'s reason, and stops the logins under way at once', async () => {
  const held: DirectoryUser = { user: 'amy', dn: 'uid=amy,dc=x', store: 's', hold: REASON };
  const { closed, stopped } = await kickWith(async () => held);
  assert.deepEqual(closed, [['1', REASON]]);
  // Stopped before the lookup answered: the kick's own words.
  assert.equal(stopped, 'Disconnected by an administrator');
});

test('kick USER with a directory that does not answer closes the sessions within about a second, with the kick\'s own words', async () => {
  const { closed, stopped, stoppedMs, ms } = await kickWith(() => new Promise(() => undefined));
  assert.deepEqual(closed, [['1', undefined]]);
  assert.equal(stopped, 'Disconnected by an administrator');
  assert.ok(stoppedMs !== undefined && stoppedMs < 500, `the login under way was stopped ${stoppedMs} ms after the kick: it could be spliced meanwhile`);
  assert.ok(ms >= 900 && ms < 2_000, `closed after ${Math.round(ms)} ms`);
});
