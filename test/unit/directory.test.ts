import assert from 'node:assert/strict';
import { createServer } from 'node:net';
import type { AddressInfo, Socket } from 'node:net';
import { test } from 'node:test';
import { CachingDirectory } from '../../src/auth/cache.js';
import { entryLoginName, normalizeUser } from '../../src/auth/directory.js';
import type { Directory } from '../../src/auth/directory.js';
import { escapeFilterValue, openLdapClient, userFilter } from '../../src/auth/ldap.js';

test('LDAP filter values are escaped per RFC 4515', () => {
  assert.equal(escapeFilterValue('a*b'), 'a\\2ab');
  assert.equal(escapeFilterValue(')(uid=*'), '\\29\\28uid=\\2a');
  assert.equal(escapeFilterValue('back\\slash'), 'back\\5cslash');
  assert.equal(escapeFilterValue('nul\0'), 'nul\\00');
  assert.equal(userFilter('(&(objectClass=person)(|(uid={user})(mail={user})))', 'x*'), '(&(objectClass=person)(|(uid=x\\2a)(mail=x\\2a)))');
});

test('user names are normalised in one way', () => {
  assert.equal(normalizeUser('  Alice ', { lowercase: true }), 'alice');
  assert.equal(normalizeUser('Alice', { lowercase: false }), 'Alice');
  assert.equal(normalizeUser('   ', { lowercase: true }), null);
  assert.equal(normalizeUser('a\nb', { lowercase: true }), null);
  assert.equal(normalizeUser('x'.repeat(257), { lowercase: true }), null);
});

test('an LDAP server that accepts StartTLS and then never shakes hands: the open fails within its deadlines, and the next attempt dials again', async () => {
  // Answers the StartTLS extended request with success ([APPLICATION 24], resultCode 0), then says nothing.
  let dials = 0;
  const sockets: Socket[] = [];
  const server = createServer((socket) => {
    dials++;
    sockets.push(socket);
    socket.on('error', () => undefined);
    socket.once('data', (chunk) => {
      if (!chunk.includes(0x77)) return;
      const messageId = chunk[4] ?? 1;
      socket.write(Buffer.from([0x30, 0x0c, 0x02, 0x01, messageId, 0x78, 0x07, 0x0a, 0x01, 0x00, 0x04, 0x00, 0x04, 0x00]));
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `ldap://127.0.0.1:${(server.address() as AddressInfo).port}`;
  try {
    for (let attempt = 1; attempt <= 2; attempt++) {
      const started = Date.now();
      await assert.rejects(openLdapClient(url, { tls: {}, starttls: true, connectTimeoutMs: 300, operationTimeoutMs: 300, autoRebind: false }), /StartTLS handshake/);
      const ms = Date.now() - started;
      assert.ok(ms >= 500 && ms < 3_000, `gave up after ${ms} ms`);
      assert.equal(dials, attempt);
    }
  } finally {
    for (const socket of sockets) socket.destroy();
    server.close();
  }
});

test('the authentication cache keeps a route no longer than its TTL after the store was read from the directory', async () => {
  let calls = 0;
  let readAt = performance.now();
  const inner: Directory = {
    authenticate: async (user) => {
      calls++;
      return { user, dn: `uid=${user}`, store: 'alpha', readAt };
    },
    lookup: async () => null,
    reachable: async () => true,
    forget: () => 0,
    cacheEntries: () => ({}),
    close: async () => undefined,
  };
  // Margins of hundreds of milliseconds either side: a busy machine's timers are late by tens.
  const cache = new CachingDirectory(inner, 1_500, 100);
  const signal = new AbortController().signal;
  // Read just now: cached for the full 1.5 s.
  await cache.authenticate('alice', 'pw', signal);
  await cache.authenticate('alice', 'pw', signal);
  assert.equal(calls, 1);
  // Read 0.8 s ago (an entry cache's answer): cached for what is left, about 700 ms.
  readAt = performance.now() - 800;
  await cache.authenticate('bob', 'pw', signal);
  await cache.authenticate('bob', 'pw', signal);
  assert.equal(calls, 2, 'within what is left');
  // 1 s on: 300 ms past what was left, 500 ms before the TTL from when it was cached.
  await new Promise((r) => setTimeout(r, 1_000));
  await cache.authenticate('bob', 'pw', signal);
  assert.equal(calls, 3, 'gone after what was left, before the 1.5 s TTL');
  // Read longer ago than the TTL: not cached at all.
  readAt = performance.now() - 2_000;
  await cache.authenticate('carol', 'pw', signal);
  await cache.authenticate('carol', 'pw', signal);
  assert.equal(calls, 5);
});

test('the authentication cache times a cached route on the monotonic clock: a step of the wall clock neither keeps it longer nor ends it', async () => {
  let calls = 0;
  const inner: Directory = {
    authenticate: async (user) => {
      calls++;
      return { user, dn: `uid=${user}`, store: 'alpha', readAt: performance.now() };
    },
    lookup: async () => null,
    reachable: async () => true,
    forget: () => 0,
    cacheEntries: () => ({}),
    close: async () => undefined,
  };
  const cache = new CachingDirectory(inner, 60_000, 100);
  const signal = new AbortController().signal;
  const realNow = Date.now;
  try {
    await cache.authenticate('alice', 'pw', signal);
    Date.now = () => realNow() + 3_600_000;
    await cache.authenticate('alice', 'pw', signal);
    assert.equal(calls, 1, 'an hour forward on the wall clock: still cached');
    // Read while the wall clock is an hour back: cached all the same, and no longer than its TTL.
    Date.now = () => realNow() - 3_600_000;
    await cache.authenticate('bob', 'pw', signal);
    await cache.authenticate('bob', 'pw', signal);
    assert.equal(calls, 2, 'an hour back on the wall clock: cached');
  } finally {
    Date.now = realNow;
  }
});

test('entryLoginName: the entry\'s one name, normalised as a typed name is, whatever name found the entry', () => {
  const usernames = { lowercase: true };
  assert.deepEqual(entryLoginName(['alice'], 'info@example.com', usernames), { kind: 'name', name: 'alice' });
  assert.deepEqual(entryLoginName([' Alice '], 'alice', usernames), { kind: 'name', name: 'alice' });
  // Spellings of one name are one name.
  assert.deepEqual(entryLoginName(['alice', 'ALICE', 'Alice'], 'a@example.com', usernames), { kind: 'name', name: 'alice' });
  // usernames.domain applies: qualify makes a bare uid the address the typed name became.
  const qualify = { lowercase: true, domain: 'qualify', localDomains: ['example.com'] } as const;
  assert.deepEqual(entryLoginName(['carol'], 'carol@example.com', qualify), { kind: 'name', name: 'carol@example.com' });
  // usernames.lowercase off keeps the entry's case.
  assert.deepEqual(entryLoginName(['Bob'], 'bob', { lowercase: false }), { kind: 'name', name: 'Bob' });
});

test('entryLoginName: of several names the one typed, else none (ambiguous); without a usable one, none', () => {
  const usernames = { lowercase: true };
  assert.deepEqual(entryLoginName(['dan', 'daniel'], 'daniel', usernames), { kind: 'name', name: 'daniel' });
  assert.deepEqual(entryLoginName(['dan', 'DANIEL'], 'daniel', usernames), { kind: 'name', name: 'daniel' });
  assert.deepEqual(entryLoginName(['dan', 'daniel'], 'd@example.com', usernames), { kind: 'ambiguous', names: ['dan', 'daniel'] });
  assert.deepEqual(entryLoginName([], 'alice', usernames), { kind: 'none', unusable: 0 });
  // Values no typed name could be (controls, empty, another domain under local_domains) are no names.
  assert.deepEqual(entryLoginName(['al\u0000ice', ''], 'alice', usernames), { kind: 'none', unusable: 2 });
  const local = { lowercase: true, domain: 'strip', localDomains: ['example.com'] } as const;
  assert.deepEqual(entryLoginName(['carol@other.org', 'carol@example.com'], 'c', local), { kind: 'name', name: 'carol' });
  assert.deepEqual(entryLoginName(['carol@other.org'], 'carol', local), { kind: 'none', unusable: 1 });
});
