/**
 * The LDAP directory against a real slapd: search + bind, several URLs tried in order, ldaps
 * and StartTLS verified against the test CA, a hung server answered within the deadline, and
 * recovery after the server restarts.
 */
import assert from 'node:assert/strict';
import { createServer, connect as netConnect } from 'node:net';
import type { AddressInfo, Socket } from 'node:net';
import { after, before, test } from 'node:test';
import { LdapDirectory } from '../../src/auth/ldap.js';
import type { DirectoryConfig } from '../../src/config/schema.js';
import { Metrics } from '../../src/metrics.js';
import { assertNoRegisteredSecret, registerPasswords, registerSecrets, capturedLogger } from './front.js';
import { directoryConfigOf, refusingPort, startSlapd } from './servers/index.js';
import type { Slapd } from './servers/index.js';
import { mailfrontFailure as failure } from '../mailfront-failure.js';

let slapd: Slapd;
// Every password these tests hand to the directory code, right and wrong: its log lines (kept
// here and written to the suite-wide scan) must hold none of them.
registerPasswords('alice-pw', 'alice-new-pw', 'nostore-pw', 'wrong-alice-pw', 'nobody-pw', 'not-the-service-pw');
const { log, lines: logLines } = capturedLogger('debug');

before(async () => {
  slapd = await startSlapd({ tls: true, users: [{ uid: 'alice', password: 'alice-pw', store: 'alpha' }, { uid: 'nostore', password: 'nostore-pw' }] });
  registerSecrets([slapd.bindPassword]);
});
after(async () => {
  await slapd?.stop();
});

function directory(overrides: Partial<DirectoryConfig>, metrics?: Metrics): LdapDirectory {
  return new LdapDirectory(directoryConfigOf(slapd, overrides), log, metrics);
}


const signal = new AbortController().signal;

test('search then bind: the store comes from the directory; wrong password and unknown user are auth-failed', async () => {
  const d = directory({});
  try {
    const { readAt, ...found } = await d.authenticate('alice', 'alice-pw', signal);
    // The entry's own names (directory.login_attribute, uid unless set) come with it, from the same search.
    assert.deepEqual(found, { user: 'alice', loginNames: ['alice'], dn: 'uid=alice,ou=people,dc=example,dc=org', store: 'alpha' });
    assert.ok(readAt !== undefined && Math.abs(performance.now() - readAt) < 5_000, 'the directory says when it read the entry');
    assert.equal((await d.authenticate('nostore', 'nostore-pw', signal)).store, null);
    assert.equal((await failure(d.authenticate('alice', 'wrong-alice-pw', signal))).kind, 'auth-failed');
    assert.equal((await failure(d.authenticate('nobody', 'nobody-pw', signal))).kind, 'auth-failed');
    assert.equal((await failure(d.authenticate('*', 'alice-pw', signal))).kind, 'auth-failed');
  } finally {
    await d.close();
  }
});

test('the store attribute is matched without regard to case, as LDAP attribute names are', async () => {
  const d = directory({ storeAttribute: 'MAILSTORE' });
  try {
    assert.equal((await d.authenticate('alice', 'alice-pw', signal)).store, 'alpha');
  } finally {
    await d.close();
  }
});

test('a server that is down is skipped for the next URL', async () => {
  const deadPort = await refusingPort();
  const d = directory({ urls: [`ldap://127.0.0.1:${deadPort}`, slapd.url] });
  try {
    assert.equal((await d.authenticate('alice', 'alice-pw', signal)).store, 'alpha');
  } finally {
    await d.close();
  }
});

test('a cached entry found on a server that has since died: the login moves on to the next server at once', async () => {
  const second = await startSlapd({ users: [{ uid: 'alice', password: 'alice-pw', store: 'alpha' }], servicePassword: slapd.bindPassword });
  registerSecrets([second.bindPassword]);
  const d = directory({ urls: [second.url, slapd.url], entryCacheTtlMs: 60_000 });
  try {
    // Found on the first server, and cached with it.
    assert.equal((await d.authenticate('alice', 'alice-pw', signal)).store, 'alpha');
    await second.stop();
    assert.equal((await d.authenticate('alice', 'alice-pw', signal)).store, 'alpha', 'the next server answered');
    assert.equal((await failure(d.authenticate('alice', 'wrong-alice-pw', signal))).kind, 'auth-failed', 'and still checks the password');
  } finally {
    await d.close();
    await second.stop();
  }
});

test('ldaps:// and StartTLS are verified against the CA file', async () => {
  for (const overrides of [{ urls: [slapd.ldapsUrl!] }, { starttls: true }]) {
    const good = directory({ ...overrides, caFile: slapd.caFile! });
    try {
      assert.equal((await good.authenticate('alice', 'alice-pw', signal)).store, 'alpha');
    } finally {
      await good.close();
    }
    // Without the CA the certificate is not trusted: a temporary failure, never a login.
    const untrusted = directory(overrides);
    try {
      assert.equal((await failure(untrusted.authenticate('alice', 'alice-pw', signal))).kind, 'auth-tempfail');
    } finally {
      await untrusted.close();
    }
  }
});

test('a hung server is a temporary failure within the operation deadline', async () => {
  // One search connection: the search runs on the connection the first login opened (with two,
  // it would open the second one, and a hung bind would be tested instead).
  const d = directory({ searchConnections: 1 });
  try {
    await d.authenticate('alice', 'alice-pw', signal);
    await slapd.pause();
    const started = Date.now();
    const error = await failure(d.authenticate('alice', 'alice-pw', signal));
    assert.equal(error.kind, 'auth-tempfail');
    assert.ok(Date.now() - started < 5_000, `took ${Date.now() - started} ms`);
  } finally {
    slapd.resume();
    await d.close();
  }
});

for (const [mode, overrides] of [['plain', {}], ['StartTLS', { starttls: true }]] as const) {
  test(`after the directory restarts, every login works again on the same directory object, the first included; reachable() sees the stop (${mode})`, async () => {
    const d = directory({ ...overrides, caFile: slapd.caFile! });
    try {
      // Three at once: three bind connections are kept, and the restart closes them all.
      await Promise.all([1, 2, 3].map(() => d.authenticate('alice', 'alice-pw', signal)));
      assert.equal(await d.reachable(signal), true);
      await slapd.stopOnly();
      try {
        assert.equal(await d.reachable(signal), false, 'the closed connections are seen as closed');
        assert.equal((await failure(d.authenticate('alice', 'alice-pw', signal))).kind, 'auth-tempfail');
      } finally {
        await slapd.startAgain();
      }
      for (let i = 1; i <= 3; i++) {
        const started = Date.now();
        assert.equal((await d.authenticate('alice', 'alice-pw', signal)).store, 'alpha', `login ${i} after the restart`);
        // No wait for an operation deadline (1 s) on a connection the server has closed.
        assert.ok(Date.now() - started < 900, `login ${i} took ${Date.now() - started} ms`);
      }
      assert.equal(await d.reachable(signal), true);
    } finally {
      await d.close();
    }
  });
}

/**
 * A loopback relay to `port` that can forget its flows the way a firewall or NAT does: forget()
 * stops relaying on every flow open now, without a close or reset; new flows are relayed.
 */
async function forgetfulRelay(port: number): Promise<{ url: string; forget(): void; close(): Promise<void> }> {
  const flows = new Set<{ frozen: boolean; sockets: Socket[] }>();
  const server = createServer((client) => {
    const upstream = netConnect(port, '127.0.0.1');
    const flow = { frozen: false, sockets: [client, upstream] };
    flows.add(flow);
    client.on('data', (data) => flow.frozen || upstream.write(data));
    upstream.on('data', (data) => flow.frozen || client.write(data));
    for (const socket of flow.sockets) {
      socket.on('error', () => undefined);
      socket.on('close', () => {
        if (flow.frozen) return;
        flows.delete(flow);
        for (const other of flow.sockets) other.destroy();
      });
    }
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port: relayPort } = server.address() as AddressInfo;
  return {
    url: `ldap://127.0.0.1:${relayPort}`,
    forget: () => {
      for (const flow of flows) flow.frozen = true;
    },
    close: async () => {
      for (const flow of flows) for (const socket of flow.sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

test('kept bind connections that a firewall forgot cost one retry on a new connection, not a failed login', async () => {
  const relay = await forgetfulRelay(slapd.port);
  // The entry cache answers the searches: only the binds go over the forgotten flows.
  const d = directory({ urls: [relay.url], entryCacheTtlMs: 60_000 });
  try {
    await Promise.all([1, 2, 3].map(() => d.authenticate('alice', 'alice-pw', signal)));
    relay.forget();
    for (let i = 1; i <= 3; i++) assert.equal((await d.authenticate('alice', 'alice-pw', signal)).store, 'alpha', `login ${i} after the flows were forgotten`);
    // A wrong password is still refused on the new connection.
    assert.equal((await failure(d.authenticate('alice', 'wrong-alice-pw', signal))).kind, 'auth-failed');
  } finally {
    await d.close();
    await relay.close();
  }
});

test('reachable() asks the server: false while it hangs with its connection open, true once it answers', async () => {
  const d = directory({ searchConnections: 1 });
  try {
    await d.authenticate('alice', 'alice-pw', signal);
    assert.equal(await d.reachable(signal), true);
    await slapd.pause();
    try {
      const started = Date.now();
      assert.equal(await d.reachable(AbortSignal.timeout(3_000)), false, 'a hung server is not reachable');
      assert.ok(Date.now() - started < 2_500, `answered in ${Date.now() - started} ms`);
    } finally {
      slapd.resume();
    }
    assert.equal(await d.reachable(signal), true);
  } finally {
    await d.close();
  }
});

test('a session that ends stops the wait at once', async () => {
  const d = directory({});
  try {
    await slapd.pause();
    const controller = new AbortController();
    const pending = d.authenticate('alice', 'alice-pw', controller.signal);
    setTimeout(() => controller.abort(), 50);
    assert.equal((await failure(pending)).kind, 'aborted');
  } finally {
    slapd.resume();
    await d.close();
  }
});

test('the entry cache skips the search for a known user and still checks every password', async () => {
  const d = directory({ entryCacheTtlMs: 60_000 });
  try {
    assert.equal((await d.authenticate('alice', 'alice-pw', signal)).store, 'alpha');
    await slapd.setStore('alice', 'beta');
    // Within the TTL the cached entry answers (no search), but the bind still checks the password.
    assert.equal((await d.authenticate('alice', 'alice-pw', signal)).store, 'alpha');
    assert.equal((await failure(d.authenticate('alice', 'wrong-alice-pw', signal))).kind, 'auth-failed');
    const fresh = directory({});
    try {
      assert.equal((await fresh.authenticate('alice', 'alice-pw', signal)).store, 'beta');
    } finally {
      await fresh.close();
    }
  } finally {
    await slapd.setStore('alice', 'alpha');
    await d.close();
  }
});

test('the authentication cache answers a repeated login without LDAP, never a wrong password, and keeps no password', async () => {
  const { CachingDirectory } = await import('../../src/auth/cache.js');
  const d = new CachingDirectory(directory({}), 60_000, 100);
  try {
    assert.equal((await d.authenticate('alice', 'alice-pw', signal)).store, 'alpha');
    await slapd.stopOnly();
    try {
      assert.equal((await d.authenticate('alice', 'alice-pw', signal)).store, 'alpha');
      assert.equal((await failure(d.authenticate('alice', 'wrong-alice-pw', signal))).kind, 'auth-tempfail');
      assert.ok(!JSON.stringify([...(d as unknown as { successes: Map<string, unknown> }).successes.entries()]).includes('alice-pw'));
    } finally {
      await slapd.startAgain();
    }
  } finally {
    await d.close();
  }
});

test('a refused service account is a temporary failure, logged (the one line the directory writes) without its password', async () => {
  const mark = logLines.length;
  const d = directory({ bindPassword: 'not-the-service-pw' });
  try {
    const error = await failure(d.authenticate('alice', 'alice-pw', signal));
    assert.equal(error.kind, 'auth-tempfail');
    // The message becomes a session.login_failed reason in mailfront's log.
    assert.doesNotMatch(error.message, /not-the-service-pw|alice-pw/);
  } finally {
    await d.close();
  }
  assert.ok(logLines.slice(mark).some((l) => (JSON.parse(l) as Record<string, unknown>)['event'] === 'directory.service_bind_refused'), logLines.slice(mark).join(''));
});

test('no password (right or wrong) and no bind secret appears in the directory\'s log lines', () => {
  assert.ok(logLines.length > 0, 'the directory logged nothing: the scan would pass on nothing');
  assertNoRegisteredSecret(logLines, "the directory's log");
});

test("forget() drops one user's cached logins and entries, under every name of the entry: after a password change the old password is refused at once", async () => {
  const { CachingDirectory } = await import('../../src/auth/cache.js');
  const d = new CachingDirectory(directory({ entryCacheTtlMs: 60_000 }), 60_000, 100);
  const cachedLogins = (): number => (d as unknown as { successes: { size: number } }).successes.size;
  try {
    await d.authenticate('alice', 'alice-pw', signal);
    // The same entry under another name (uid matches without regard to case; mailfront
    // lowercases names unless usernames.lowercase is off): cached apart.
    await d.authenticate('ALICE', 'alice-pw', signal);
    await d.authenticate('nostore', 'nostore-pw', signal);
    await slapd.setPassword('alice', 'alice-new-pw');
    assert.equal((await d.authenticate('alice', 'alice-pw', signal)).store, 'alpha', 'the cached login answers within its TTL');
    assert.equal(cachedLogins(), 3);
    assert.equal(d.forget('alice'), 4, "alice's two cached logins and her entry cached under both names");
    assert.equal(cachedLogins(), 1, "the other user's cached login stays");
    assert.equal((await failure(d.authenticate('alice', 'alice-pw', signal))).kind, 'auth-failed');
    assert.equal((await failure(d.authenticate('ALICE', 'alice-pw', signal))).kind, 'auth-failed');
    assert.equal((await d.authenticate('alice', 'alice-new-pw', signal)).store, 'alpha');
    assert.equal(d.forget('nobody'), 0);
  } finally {
    await slapd.setPassword('alice', 'alice-pw');
    await d.close();
  }
});

test('the caches count their hits and misses and report their sizes in /metrics', async () => {
  const { CachingDirectory } = await import('../../src/auth/cache.js');
  const metrics = new Metrics({ processMetrics: false });
  const d = new CachingDirectory(directory({ entryCacheTtlMs: 60_000 }, metrics), 60_000, 100, metrics);
  metrics.directoryCacheEntries(() => d.cacheEntries());
  const series = async (): Promise<string> => (await metrics.exposition()).body.split('\n').filter((l) => l.startsWith('mailfront_directory_cache_')).sort().join('\n');
  try {
    await d.authenticate('alice', 'alice-pw', signal); // auth miss, entry miss
    await d.authenticate('alice', 'alice-pw', signal); // auth hit
    await failure(d.authenticate('alice', 'wrong-alice-pw', signal)); // auth miss, entry hit
    assert.equal(
      await series(),
      [
        'mailfront_directory_cache_entries{cache="auth"} 1',
        'mailfront_directory_cache_entries{cache="entry"} 1',
        'mailfront_directory_cache_lookups_total{cache="auth",result="hit"} 1',
        'mailfront_directory_cache_lookups_total{cache="auth",result="miss"} 2',
        'mailfront_directory_cache_lookups_total{cache="entry",result="hit"} 1',
        'mailfront_directory_cache_lookups_total{cache="entry",result="miss"} 1',
      ].join('\n'),
    );
  } finally {
    await d.close();
  }
});

test('a login on its way to the directory when forget() is called does not cache its answer', async () => {
  const { CachingDirectory } = await import('../../src/auth/cache.js');
  const d = new CachingDirectory(directory({ entryCacheTtlMs: 60_000 }), 60_000, 100);
  const cachedLogins = (): number => (d as unknown as { successes: { size: number } }).successes.size;
  try {
    const inFlight = d.authenticate('alice', 'alice-pw', signal);
    assert.equal(d.forget('alice'), 0, 'nothing cached yet');
    assert.equal((await inFlight).store, 'alpha', 'the login itself completes');
    assert.equal(cachedLogins(), 0, 'its answer was not cached');
    assert.deepEqual(d.cacheEntries(), { entry: 0, auth: 0 }, 'nor its entry');
    await d.authenticate('alice', 'alice-pw', signal);
    assert.deepEqual(d.cacheEntries(), { entry: 1, auth: 1 }, 'the next login caches again');
  } finally {
    await d.close();
  }
});

test('searches are spread over search_connections service connections, each bound once, opened as needed', async () => {
  const metrics = new Metrics({ processMetrics: false });
  const d = directory({ searchConnections: 3 }, metrics);
  const serviceBinds = async (): Promise<string | undefined> => (await metrics.exposition()).body.split('\n').find((l) => l.startsWith('mailfront_ldap_request_duration_seconds_count{operation="service-bind",result="success"}'))?.split(' ')[1];
  const searches = async (): Promise<string | undefined> => (await metrics.exposition()).body.split('\n').find((l) => l.startsWith('mailfront_ldap_request_duration_seconds_count{operation="search",result="success"}'))?.split(' ')[1];
  const slots = (): Array<{ open: { client: { unbind(): Promise<void> } } | null }> => (d as unknown as { serviceSlots: Array<{ open: { client: { unbind(): Promise<void> } } | null }> }).serviceSlots;
  const openSlots = (): number => slots().filter((s) => s.open !== null).length;
  let unbound = 0;
  try {
    assert.equal((await d.authenticate('alice', 'alice-pw', signal)).store, 'alpha');
    assert.equal(openSlots(), 1, 'one connection for the first search');
    await Promise.all(Array.from({ length: 8 }, () => d.authenticate('alice', 'alice-pw', signal)));
    assert.equal(openSlots(), 3);
    assert.equal(await serviceBinds(), '3', 'each connection bound once, however many searches it carried');
    assert.equal(await searches(), '9');
    for (const slot of slots()) {
      const client = slot.open!.client;
      const unbind = client.unbind.bind(client);
      client.unbind = () => {
        unbound++;
        return unbind();
      };
    }
  } finally {
    await d.close();
  }
  assert.equal(openSlots(), 0);
  assert.equal(unbound, 3, 'close() unbinds every connection');
  // A closed directory (one a reload replaced) opens no connection for a late caller.
  assert.equal(await d.reachable(signal), false);
  assert.equal(await serviceBinds(), '3');
});
