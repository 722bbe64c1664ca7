// The admin API answers compact JSON: indented, /api/stores for 50,000 stores was 42.8 MB (22.3 MB
// compact), and the CLI indents what it prints with --json itself.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { createLogger } from '../../src/log.js';
import { SessionRegistry } from '../../src/proxy/registry.js';
import { createAdminHandler } from '../../src/server/admin.js';
import type { AdminContext } from '../../src/server/admin.js';

const TOKEN = 'admin-token-for-the-json-test';

test('the admin API answers compact JSON, one line and a newline, for an answer and for an error', async () => {
  const slots = (store: string): Map<string, unknown> => new Map([1, 2].map((i) => [`${store}${i}`, { name: `${store}${i}`, host: '127.0.0.1', imapPort: 10143 + i }]));
  const context = {
    token: () => TOKEN,
    registry: new SessionRegistry(),
    holder: {
      current: { version: 2, stores: new Map(['alpha', 'beta'].map((name) => [name, { name, currentMaster: `${name}1`, preferredMaster: `${name}1`, slots: slots(name) }])) },
      last: undefined,
    },
    health: { get: () => undefined },
    log: createLogger('silent'),
  } as unknown as AdminContext;
  const handler = createAdminHandler(context);
  const server = createServer((req, res) => void handler(req, res));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  try {
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const stores = await fetch(`${base}/api/stores`, { headers: { authorization: `Bearer ${TOKEN}` } });
    assert.equal(stores.status, 200);
    const text = await stores.text();
    const parsed = JSON.parse(text) as { stores: Array<{ store: string; slots: unknown[] }> };
    assert.deepEqual(parsed.stores.map((s) => [s.store, s.slots.length]), [['alpha', 2], ['beta', 2]]);
    assert.equal(text, `${JSON.stringify(parsed)}\n`);
    assert.equal(stores.headers.get('content-length'), String(Buffer.byteLength(text)));
    const refused = await fetch(`${base}/api/stores`, { headers: { authorization: 'Bearer wrong' } });
    assert.equal(refused.status, 401);
    assert.equal(await refused.text(), '{"error":"a valid bearer token is required"}\n');
  } finally {
    server.closeAllConnections();
    server.close();
  }
});
