// One store's view: GET /api/stores/STORE answers as GET /api/stores does, with that store alone
// (an operator asking about one store of 50,000 waited for the view of all of them), 404 with
// UNKNOWN_STORE for a store the map does not have; `mailfront stores STORE` prints it, alone or
// with the fleet's fan-out (several --url, as --all).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, describe, it } from 'node:test';
import { createAdminHandler } from '../../src/server/admin.js';
import type { AdminContext } from '../../src/server/admin.js';
import { SessionRegistry } from '../../src/proxy/registry.js';
import type { SessionEntry } from '../../src/proxy/registry.js';
import { createLogger } from '../../src/log.js';

const TOKEN = 'admin-token-for-the-one-store-test';
const CLI = join(dirname(fileURLToPath(import.meta.url)), '../../src/cli/main.js');

const slot = (name: string, store: string, imapPort: number): Record<string, unknown> => ({ name, store, host: '127.0.0.1', imapPort });

/** An instance's admin API over a map of `stores` (alpha, and beta in maintenance and backwards, when listed). */
function adminApi(stores: readonly string[]): Server {
  const registry = new SessionRegistry();
  registry.add({ id: 's-1', protocol: 'imap', user: 'amy', dn: 'uid=amy,dc=x', kicksAtLogin: 0, store: 'beta', slot: 'b2', server: slot('b2', 'beta', 10144), clientAddress: '127.0.0.1', startedAt: 0, traffic: { bytesFromClient: 0, bytesToClient: 0 }, reportedFromClient: 0, reportedToClient: 0, close: () => undefined } as unknown as SessionEntry);
  const all = new Map<string, unknown>([
    ['alpha', { name: 'alpha', currentMaster: 'a1', preferredMaster: 'a1', maintenance: null, slots: new Map([['a1', slot('a1', 'alpha', 10143)]]) }],
    ['beta', { name: 'beta', currentMaster: 'b2', preferredMaster: 'b1', maintenance: 'moving disks, try again in an hour', slots: new Map([['b1', slot('b1', 'beta', 10145)], ['b2', slot('b2', 'beta', 10144)]]) }],
  ]);
  const context = {
    token: () => TOKEN,
    registry,
    holder: { current: { version: 7, stores: new Map(stores.map((name) => [name, all.get(name)])) }, last: { ok: true, version: 7 } },
    health: { get: (name: string) => (name === 'a1' ? { up: true, checkedAt: 0 } : undefined) },
    directory: () => ({}),
    usernames: () => ({ lowercase: true }),
    log: createLogger('silent'),
    reload: async () => ({ ok: true, storeMap: { ok: true, version: 7, changes: [] } }),
  } as unknown as AdminContext;
  const handler = createAdminHandler(context);
  return createServer((req, res) => void handler(req, res));
}

async function listen(server: Server): Promise<string> {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

async function cli(args: readonly string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const [code] = (await once(child, 'close')) as [number | null];
  return { code, stdout, stderr };
}

describe('one store: GET /api/stores/STORE and mailfront stores STORE', () => {
  const whole = adminApi(['alpha', 'beta']);
  const withoutBeta = adminApi(['alpha']);
  let base = '';
  let other = '';

  before(async () => {
    base = await listen(whole);
    other = await listen(withoutBeta);
  });
  after(() => {
    for (const server of [whole, withoutBeta]) {
      server.closeAllConnections();
      server.close();
    }
  });

  const ask = async (method: string, path: string, token = TOKEN): Promise<{ status: number; text: string; type: string | null }> => {
    const response = await fetch(`${base}${path}`, { method, headers: { authorization: `Bearer ${token}` } });
    return { status: response.status, text: await response.text(), type: response.headers.get('content-type') };
  };

  it("answers with the store's view as GET /api/stores gives it, that store alone", async () => {
    const all = JSON.parse((await ask('GET', '/api/stores')).text) as { version: number; lastReload: unknown; stores: Array<{ store: string }> };
    for (const name of ['alpha', 'beta']) {
      const reply = await ask('GET', `/api/stores/${name}`);
      assert.equal(reply.status, 200, reply.text);
      assert.match(reply.type ?? '', /^application\/json/);
      assert.deepEqual(JSON.parse(reply.text), { version: all.version, lastReload: all.lastReload, stores: all.stores.filter((s) => s.store === name) });
    }
    const beta = JSON.parse((await ask('GET', '/api/stores/beta')).text).stores[0];
    assert.equal(beta.backwards, true);
    assert.equal(beta.maintenanceReason, 'moving disks, try again in an hour');
    assert.equal(beta.sessions, 1);
    // HEAD as GET, without the body; the token as for every endpoint.
    const head = await ask('HEAD', '/api/stores/beta');
    assert.equal(head.status, 200);
    assert.equal(head.text, '');
    assert.equal((await ask('GET', '/api/stores/beta', 'not-the-token-at-all')).status, 401);
  });

  it('answers 404 with a JSON error naming the store for a store the map does not have', async () => {
    for (const [path, name] of [
      ['/api/stores/nosuch', 'nosuch'],
      ['/api/stores/Alpha', 'Alpha'],
      ['/api/stores/al%2Fpha', 'al/pha'],
    ] as const) {
      const reply = await ask('GET', path);
      assert.equal(reply.status, 404, path);
      assert.match(reply.type ?? '', /^application\/json/);
      assert.deepEqual(JSON.parse(reply.text), { error: `store "${name}" is not in the store map (version 7)`, code: 'UNKNOWN_STORE' });
    }
    // A segment more names nothing, and is said so as before.
    const deeper = await ask('GET', '/api/stores/alpha/slots');
    assert.equal(deeper.status, 404);
    assert.match(deeper.text, /no such endpoint: GET \/api\/stores\/alpha\/slots/);
  });

  it('mailfront stores STORE prints that store alone; --json its answer; an unknown store exits 1 naming it', async () => {
    const one = await cli(['stores', 'beta', '--url', base, '--token', TOKEN]);
    assert.equal(one.code, 0, one.stderr);
    assert.equal(one.stderr, '');
    const lines = one.stdout.split('\n');
    assert.equal(lines[0], 'store map version 7');
    assert.match(lines[1] ?? '', /^STORE +SLOT +HOST +ROLE +PREFERRED +HEALTH +SESSIONS$/);
    assert.match(lines[2] ?? '', /^beta +b1 +127\.0\.0\.1 +replica +yes +paused +0$/);
    assert.match(lines[3] ?? '', /^beta +b2 +127\.0\.0\.1 +master +paused +1 +BACKWARDS MAINTENANCE$/);
    assert.ok(!one.stdout.includes('alpha'), one.stdout);
    assert.match(one.stdout, /store beta in maintenance, logins refused: moving disks, try again in an hour\n$/);

    const json = await cli(['stores', 'alpha', '--json', '--url', base, '--token', TOKEN]);
    assert.equal(json.code, 0, json.stderr);
    assert.deepEqual(JSON.parse(json.stdout), JSON.parse((await ask('GET', '/api/stores/alpha')).text));

    const unknown = await cli(['stores', 'nosuch', '--url', base, '--token', TOKEN]);
    assert.equal(unknown.code, 1);
    assert.equal(unknown.stdout, '');
    assert.equal(unknown.stderr, 'mailfront: 404: store "nosuch" is not in the store map (version 7)\n');

    const two = await cli(['stores', 'alpha', 'beta', '--url', base, '--token', TOKEN]);
    assert.equal(two.code, 2);
    assert.match(two.stderr, /^mailfront stores: unexpected argument "beta"\n\nUsage: mailfront stores \[STORE\]/);
  });

  it('mailfront stores STORE goes to each instance with several --url (as --all), naming the one that lacks it', async () => {
    const fleet = await cli(['stores', 'beta', '--url', base, '--url', other, '--token', TOKEN]);
    assert.equal(fleet.code, 1);
    assert.match(fleet.stdout, new RegExp(`^== ${base} ==\\nstore map version 7\\nSTORE .*\\nbeta +b1 `));
    assert.ok(fleet.stdout.includes(`== ${other} ==\nfailed: 404: store "beta" is not in the store map (version 7)\n`), fleet.stdout);
    assert.match(fleet.stderr, new RegExp(`^mailfront stores: failed on 1 of 2 instances: ${other}\n`));

    const json = await cli(['stores', 'alpha', '--json', '--url', base, '--url', other, '--token', TOKEN]);
    assert.equal(json.code, 0, json.stderr);
    const byUrl = JSON.parse(json.stdout) as Record<string, { stores: Array<{ store: string }> }>;
    assert.deepEqual(Object.keys(byUrl), [base, other]);
    for (const url of [base, other]) assert.deepEqual(byUrl[url]?.stores.map((s) => s.store), ['alpha']);
  });
});
