// GET /api/sessions and GET /api/stores make their answers over several turns of the event loop:
// made in one, 30,000 sessions held every login and scrape 130 to 500 ms and 50,000 stores 1 to
// 2 s. The answer is the same text as before, with its content-length, and lists what there was
// when the request came: a session that ends or a map that replaces the one in force meanwhile
// changes nothing in it.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { createAdminHandler } from '../../src/server/admin.js';
import type { AdminContext } from '../../src/server/admin.js';
import { SessionRegistry } from '../../src/proxy/registry.js';
import type { SessionEntry } from '../../src/proxy/registry.js';
import { createLogger } from '../../src/log.js';

const TOKEN = 'admin-token-for-the-listing-test';

function entry(id: string, onView: () => void = () => undefined): SessionEntry {
  return {
    id,
    protocol: 'imap',
    user: `u${id}`,
    dn: `uid=u${id},dc=x`,
    kicksAtLogin: 0,
    store: 's',
    slot: 'a1',
    server: { name: 'a1', store: 's', host: '127.0.0.1', imapPort: 10143 },
    // Read once per view of the session: what the test counts.
    get clientAddress() {
      onView();
      return '127.0.0.1';
    },
    startedAt: 0,
    traffic: { bytesFromClient: 10, bytesToClient: 2000 },
    reportedFromClient: 0,
    reportedToClient: 0,
    close: () => undefined,
  };
}

async function listen(server: Server): Promise<string> {
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

/** The answer's text, checked to be what send() sends: one compact JSON line, its length in bytes as content-length. */
async function answerText(response: Response): Promise<string> {
  assert.equal(response.status, 200);
  assert.equal(response.headers.get('content-type'), 'application/json; charset=utf-8');
  assert.equal(response.headers.get('cache-control'), 'no-store');
  const text = await response.text();
  assert.equal(text, `${JSON.stringify(JSON.parse(text))}\n`, 'compact JSON and a newline');
  assert.equal(response.headers.get('content-length'), String(Buffer.byteLength(text)));
  return text;
}

test('GET /api/sessions makes its answer over several turns of the event loop, listing the sessions open when it came', async () => {
  const registry = new SessionRegistry();
  // More than one turn's worth: a process may hold 30,000 sessions.
  const count = 3_000;
  let views = 0;
  let viewsAtNextTurn: number | undefined;
  const ending = entry(String(count - 1), () => views++);
  const later = entry('spliced-during-the-answer', () => views++);
  const entries = Array.from({ length: count - 1 }, (_, i) =>
    entry(String(i), () => {
      // The first view: a callback for the next turn, a session that ends, one that is spliced.
      if (views++ === 0) {
        setImmediate(() => (viewsAtNextTurn = views));
        registry.remove(ending);
        registry.add(later);
      }
    }),
  );
  entries.push(ending);
  for (const e of entries) registry.add(e);
  const context = { token: () => TOKEN, registry, usernames: () => ({ lowercase: true }), log: createLogger('silent') } as unknown as AdminContext;
  const handler = createAdminHandler(context);
  const server = createServer((req, res) => void handler(req, res));
  const base = await listen(server);
  try {
    const text = await answerText(await fetch(`${base}/api/sessions`, { headers: { authorization: `Bearer ${TOKEN}` } }));
    assert.ok(viewsAtNextTurn !== undefined && viewsAtNextTurn < count, `the event loop turned before the last session's view was made (at ${viewsAtNextTurn} of ${count})`);
    const body = JSON.parse(text) as { sessions: Array<{ id: string; bytesToClient: number }> };
    assert.deepEqual(Object.keys(body), ['sessions']);
    assert.deepEqual(body.sessions.map((s) => s.id), entries.map((e) => e.id), 'every session open when the request came, in order, the one that ended since too, not the one spliced since');
    assert.equal(body.sessions[0]?.bytesToClient, 2000);
    const filtered = JSON.parse(await answerText(await fetch(`${base}/api/sessions?slot=a2`, { headers: { authorization: `Bearer ${TOKEN}` } }))) as unknown;
    assert.deepEqual(filtered, { sessions: [] });
  } finally {
    server.closeAllConnections();
    server.close();
  }
});

test('GET /api/stores makes its answer over several turns of the event loop, from the store map in force when it came', async () => {
  const registry = new SessionRegistry();
  registry.add(entry('1'));
  const storeMap = (version: number, count: number): unknown => ({
    version,
    stores: new Map(
      Array.from({ length: count }, (_, i) => {
        const name = i === 0 ? 's' : `store${i}`;
        const slots = new Map(['1', '2', '3'].map((k) => [`${name === 's' ? 'a' : name}${k}`, { name: `${name === 's' ? 'a' : name}${k}`, store: name, host: '127.0.0.1', imapPort: 10143 }]));
        // A reason in more than ASCII: content-length counts bytes, not characters.
        return [name, { name, currentMaster: [...slots.keys()][0], preferredMaster: [...slots.keys()][0], maintenance: i === 7 ? 'Wartung – bis 18 Uhr' : null, slots }];
      }),
    ),
  });
  const count = 1_000;
  const holder = { current: storeMap(3, count), last: undefined as unknown };
  let views = 0;
  let viewsAtNextTurn: number | undefined;
  const health = {
    get: () => {
      // Read once per slot of a store's view (three a store); the first: a callback for the
      // next turn, and a reload that puts another map in force.
      if (views++ === 0) {
        setImmediate(() => (viewsAtNextTurn = views / 3));
        holder.current = storeMap(4, 2);
      }
      return { up: true, checkedAt: 0 };
    },
  };
  const context = { token: () => TOKEN, registry, holder, health, usernames: () => ({ lowercase: true }), log: createLogger('silent') } as unknown as AdminContext;
  const handler = createAdminHandler(context);
  const server = createServer((req, res) => void handler(req, res));
  const base = await listen(server);
  try {
    const response = await fetch(`${base}/api/stores`, { headers: { authorization: `Bearer ${TOKEN}` } });
    const text = await answerText(response);
    assert.ok(viewsAtNextTurn !== undefined && viewsAtNextTurn < count, `the event loop turned before the last store's view was made (at ${viewsAtNextTurn} of ${count})`);
    const body = JSON.parse(text) as { version: number; stores: Array<{ store: string; sessions: number; maintenanceReason: string | null; slots: Array<{ sessions: number }> }> };
    // lastReload undefined: left out, as JSON.stringify leaves it out.
    assert.deepEqual(Object.keys(body), ['version', 'stores']);
    assert.equal(body.version, 3, 'the map in force when the request came');
    assert.equal(body.stores.length, count);
    assert.deepEqual(body.stores[0]?.slots.map((s) => s.sessions), [1, 0, 0]);
    assert.equal(body.stores[0]?.sessions, 1);
    assert.equal(body.stores[7]?.maintenanceReason, 'Wartung – bis 18 Uhr');
    // HEAD: the same headers, no body.
    holder.current = storeMap(3, count);
    holder.last = { ok: true, version: 3 };
    const head = await fetch(`${base}/api/stores`, { method: 'HEAD', headers: { authorization: `Bearer ${TOKEN}` } });
    assert.equal(head.status, 200);
    assert.equal(await head.text(), '');
    const withLast = await answerText(await fetch(`${base}/api/stores`, { headers: { authorization: `Bearer ${TOKEN}` } }));
    assert.equal(head.headers.get('content-length'), String(Buffer.byteLength(withLast)));
    assert.ok(withLast.startsWith('{"version":3,"lastReload":{"ok":true,"version":3},"stores":[{"store":"s",'), withLast.slice(0, 100));
  } finally {
    server.closeAllConnections();
    server.close();
  }
});
