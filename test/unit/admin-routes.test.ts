// Which requests the admin API takes as which endpoint: exactly its segments (a path with more
// names nothing and acts on nothing), HEAD as GET without the body, and a kick of a session id
// that is not open answered 404, by the API and so by `mailfront kick --session`.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { createAdminHandler } from '../../src/server/admin.js';
import type { AdminContext } from '../../src/server/admin.js';
import { SessionRegistry } from '../../src/proxy/registry.js';
import type { SessionEntry } from '../../src/proxy/registry.js';
import { createLogger } from '../../src/log.js';
import { MailfrontError } from '../../src/errors.js';

const TOKEN = 'admin-token-for-the-routes-test';
const CLI = join(dirname(fileURLToPath(import.meta.url)), '../../src/cli/main.js');

describe('admin API: endpoints', () => {
  const closed: string[] = [];
  const failovers: string[] = [];
  let reloads = 0;
  const reloadOptions: unknown[] = [];
  let lookups = 0;
  const registry = new SessionRegistry();
  const session: SessionEntry = {
    id: 's-1',
    protocol: 'imap',
    user: 'amy',
    dn: 'uid=amy,dc=x',
    kicksAtLogin: 0,
    store: 'alpha',
    slot: 'a1',
    server: { name: 'a1', store: 'alpha', host: '127.0.0.1', imapPort: 10143 },
    clientAddress: '127.0.0.1',
    startedAt: 0,
    traffic: { bytesFromClient: 0, bytesToClient: 0 },
    reportedFromClient: 0,
    reportedToClient: 0,
    close: () => void closed.push('s-1'),
  } as SessionEntry;
  registry.add(session);
  const store = { name: 'alpha', currentMaster: 'a1', preferredMaster: 'a1', slots: new Map([['a1', { name: 'a1', host: '127.0.0.1', imapPort: 10143 }]]) };
  const context = {
    token: () => TOKEN,
    registry,
    holder: {
      current: { version: 4, stores: new Map([['alpha', store]]) },
      last: undefined,
      failover: async (name: string, slot: string) => {
        if (slot === 'refused') throw new MailfrontError('STOREMAP_FAILOVER_REFUSED', 'config', 'store "beta" does not validate; nothing was written');
        if (slot === 'behind') throw new MailfrontError('STOREMAP_LDAP_BEHIND', 'config', 'the store-map server ldap://replica is behind the map in force');
        // Written, and the reload that was to put it in force rejected what the source gave then.
        if (slot === 'unloaded') return { ok: false, version: 4, changes: [], error: 'the store-map source could not be read' };
        failovers.push(`${name}/${slot}`);
        return { ok: true, version: 5, changes: [] };
      },
    },
    health: { get: () => undefined },
    directory: () => ({
      lookup: async (user: string) => {
        lookups++;
        // What ldap.ts throws when the lookup's signal fires first (its deadline, here).
        if (user === 'slow') throw new MailfrontError('ABORTED', 'aborted', 'the session ended during a directory lookup');
        return { user: 'amy', dn: 'uid=amy,dc=x', store: 'alpha' };
      },
      forget: () => 0,
    }),
    usernames: () => ({ lowercase: true }),
    log: createLogger('silent'),
    reload: async (options?: { acceptOlderStoreMap?: boolean }) => {
      reloads++;
      reloadOptions.push(options);
      return { ok: true, storeMap: { ok: true, version: 4, changes: [] } };
    },
  } as unknown as AdminContext;
  const handler = createAdminHandler(context);
  const server = createServer((req, res) => void handler(req, res));
  let base = '';

  before(async () => {
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(() => {
    server.closeAllConnections();
    server.close();
  });

  const ask = async (method: string, path: string, body?: unknown): Promise<{ status: number; text: string; type: string | null }> => {
    const response = await fetch(`${base}${path}`, { method, headers: { authorization: `Bearer ${TOKEN}` }, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) });
    return { status: response.status, text: await response.text(), type: response.headers.get('content-type') };
  };

  it('answers 404 to a path with more segments than its endpoint has, and does nothing', async () => {
    for (const [method, path, body] of [
      ['POST', '/api/stores/alpha/failover/anything', { slot: 'a1' }],
      ['POST', '/api/kick/x/y', { session: 's-1' }],
      ['POST', '/api/kick/x', { user: 'amy' }],
      ['POST', '/api/reload/now', undefined],
      ['GET', '/api/sessions/xyz', undefined],
      ['GET', '/api/stores/alpha/slots', undefined],
      ['GET', '/api/whereis/amy/extra', undefined],
    ] as const) {
      const reply = await ask(method, path, body);
      assert.equal(reply.status, 404, `${method} ${path}: ${reply.text}`);
      assert.match(reply.text, new RegExp(`no such endpoint: ${method} ${path}`));
    }
    assert.deepEqual(failovers, []);
    assert.deepEqual(closed, []);
    assert.equal(reloads, 0);
    assert.equal(lookups, 0);
    // The endpoints themselves answer.
    assert.equal((await ask('GET', '/api/sessions')).status, 200);
    assert.equal((await ask('GET', '/api/stores')).status, 200);
    assert.equal((await ask('GET', '/api/whereis/amy')).status, 200);
    assert.equal((await ask('POST', '/api/stores/alpha/failover', { slot: 'a1' })).status, 200);
    assert.deepEqual(failovers, ['alpha/a1']);
  });

  it('reloads with an empty body or {}, putting an older LDAP store map in force only when {"acceptOlderStoreMap": true} says so; any other body is refused (400) and nothing reloaded', async () => {
    const before = reloads;
    reloadOptions.length = 0;
    for (const body of [undefined, {}, { acceptOlderStoreMap: false }, { acceptOlderStoreMap: true }]) {
      const reply = await ask('POST', '/api/reload', body);
      assert.equal(reply.status, 200, reply.text);
    }
    assert.deepEqual(reloadOptions, [{ acceptOlderStoreMap: false }, { acceptOlderStoreMap: false }, { acceptOlderStoreMap: false }, { acceptOlderStoreMap: true }]);
    // A misspelt key, a string for the boolean: a reload without what was asked would say it took.
    for (const body of [{ acceptOlderStoremap: true }, { acceptOlderStoreMap: 'yes' }, { acceptOlderStoreMap: true, force: true }, []]) {
      const reply = await ask('POST', '/api/reload', body);
      assert.equal(reply.status, 400, `${JSON.stringify(body)}: ${reply.text}`);
    }
    assert.equal(reloads, before + 4);
  });

  it('answers 409 to a failover the store map would not validate with (nothing written), not 500', async () => {
    const reply = await ask('POST', '/api/stores/alpha/failover', { slot: 'refused' });
    assert.equal(reply.status, 409, reply.text);
    assert.equal(JSON.parse(reply.text).code, 'STOREMAP_FAILOVER_REFUSED');
  });

  it('answers 503 to a failover refused by a store-map server behind the map in force, and 500 to one written but not put in force, with the reason', async () => {
    const behind = await ask('POST', '/api/stores/alpha/failover', { slot: 'behind' });
    assert.equal(behind.status, 503, behind.text);
    assert.equal(JSON.parse(behind.text).code, 'STOREMAP_LDAP_BEHIND');
    const unloaded = await ask('POST', '/api/stores/alpha/failover', { slot: 'unloaded' });
    assert.equal(unloaded.status, 500, unloaded.text);
    assert.deepEqual(JSON.parse(unloaded.text), { ok: false, version: 4, changes: [], error: 'the store-map source could not be read' });
  });

  it('answers 503 to a lookup the directory did not answer in time, in words of its own (not 500, not a session\'s)', async () => {
    const before = lookups;
    const reply = await ask('GET', '/api/whereis/slow');
    assert.equal(reply.status, 503, reply.text);
    assert.deepEqual(JSON.parse(reply.text), { error: 'the directory did not answer the lookup of "slow" within 10 s', code: 'ADMIN_LOOKUP_TIMEOUT' });
    assert.equal(lookups, before + 1);
  });

  it('answers HEAD as GET, without the body', async () => {
    for (const path of ['/api/stores', '/api/sessions?user=amy', '/api/whereis/amy']) {
      const get = await ask('GET', path);
      const head = await ask('HEAD', path);
      assert.equal(get.status, 200, path);
      assert.equal(head.status, 200, path);
      assert.equal(head.type, get.type);
      assert.equal(head.text, '');
    }
    assert.equal((await ask('HEAD', '/api/sessions/xyz')).status, 404);
    // HEAD is never a POST endpoint.
    const reloadsBefore = reloads;
    assert.equal((await ask('HEAD', '/api/reload')).status, 404);
    assert.equal(reloads, reloadsBefore);
  });

  it('answers 404 to a kick of a session id that is not open, and mailfront kick --session says so with exit 1', async () => {
    const unknown = await ask('POST', '/api/kick', { session: 'nosuch' });
    assert.equal(unknown.status, 404);
    assert.deepEqual(JSON.parse(unknown.text), { error: 'no session "nosuch" (it ended, or never was: mailfront sessions lists those open)', code: 'UNKNOWN_SESSION' });
    assert.deepEqual(closed, []);

    const child = spawn(process.execPath, [CLI, 'kick', '--session', 'nosuch', '--url', base, '--token', TOKEN], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const [code] = (await once(child, 'close')) as [number | null];
    assert.equal(code, 1, stderr);
    assert.equal(stdout, '');
    assert.match(stderr, /^mailfront: 404: no session "nosuch" \(it ended, or never was/);

    const known = await ask('POST', '/api/kick', { session: 's-1' });
    assert.equal(known.status, 200);
    assert.deepEqual(closed, ['s-1']);
  });
});
