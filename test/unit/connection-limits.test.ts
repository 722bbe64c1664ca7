import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { CONNECTION_LIMIT_DEFAULTS, ConnectionLimiter, readConnectionLimitsConfig } from '../../src/server/connection-limits.js';
import type { ConnectionLease } from '../../src/server/connection-limits.js';
import { IssueList } from '../../src/config/validate.js';

const LIMITS = { maxConnections: 5, maxConnectionsPerAddress: 2, maxSessionsPerUser: 2 };

function admitOk(limiter: ConnectionLimiter, address: string, trusted = false): ConnectionLease {
  const admission = limiter.admit(address, trusted);
  assert.ok(admission.admitted, `admitted ${address}`);
  return admission.lease;
}

test('per-address limit, with IPv4-mapped and IPv6 /64 counted as one address; trusted networks exempt', () => {
  const limiter = new ConnectionLimiter(LIMITS);
  admitOk(limiter, '192.0.2.1');
  admitOk(limiter, '::ffff:192.0.2.1');
  assert.deepEqual(limiter.admit('192.0.2.1', false), { admitted: false, limit: 'address' });
  admitOk(limiter, '2001:db8:0:1::1');
  admitOk(limiter, '2001:db8:0:1::2');
  assert.deepEqual(limiter.admit('2001:db8:0:1:ffff::9', false), { admitted: false, limit: 'address' });
  assert.equal(limiter.connectionsFrom('::ffff:192.0.2.1'), 2);
  const webmail = admitOk(limiter, '192.0.2.1', true);
  assert.equal(limiter.connections, 5);
  assert.equal(limiter.connectionsFrom('192.0.2.1'), 2, 'a trusted connection is not counted per address');
  assert.equal(webmail.addressKey, undefined);
  // The total applies to trusted addresses too.
  assert.deepEqual(limiter.admit('10.0.0.1', true), { admitted: false, limit: 'total' });
  webmail.release();
  admitOk(limiter, '10.0.0.1', true);
});

test('behind a translator (64:ff9b::/96, RFC 6052) each IPv4 client has its own per-address count', () => {
  const limiter = new ConnectionLimiter({ ...LIMITS, maxConnections: 10 });
  const clients = { '64:ff9b::c633:6401': '198.51.100.1', '64:ff9b::c633:6402': '198.51.100.2', '64:ff9b::cb00:7101': '203.0.113.1', '64:ff9b::cb00:7102': '203.0.113.2' };
  for (const [client, key] of Object.entries(clients)) assert.equal(admitOk(limiter, client).addressKey, key);
  assert.deepEqual(limiter.tracked, { addresses: 4, users: 0 }, 'four IPv4 clients, four counts (one /64 before)');
  admitOk(limiter, '198.51.100.1');
  assert.deepEqual(limiter.admit('64:ff9b::198.51.100.1', false), { admitted: false, limit: 'address' }, 'counted as the IPv4 address it embeds');
});

test('a trusted address is counted in the total only: its untrusted neighbours in the same IPv6 /64 keep their own count', () => {
  const limiter = new ConnectionLimiter({ ...LIMITS, maxConnections: 10 });
  // A webmail server at 2001:db8:1:2::10 (trusted as a /128) with three connections.
  const webmail = [1, 2, 3].map(() => admitOk(limiter, '2001:db8:1:2::10', true));
  assert.equal(limiter.connectionsFrom('2001:db8:1:2::20'), 0);
  assert.deepEqual(limiter.tracked, { addresses: 0, users: 0 });
  const neighbour = [admitOk(limiter, '2001:db8:1:2::20'), admitOk(limiter, '2001:db8:1:2::21')];
  assert.deepEqual(limiter.admit('2001:db8:1:2::22', false), { admitted: false, limit: 'address' }, 'the /64 has its own two');
  for (const lease of webmail) lease.release();
  assert.equal(limiter.connectionsFrom('2001:db8:1:2::20'), 2, "releasing the webmail's connections takes nothing from the neighbours' count");
  assert.equal(limiter.connections, 2);
  for (const lease of neighbour) lease.release();
  assert.equal(limiter.connections, 0);
  assert.deepEqual(limiter.tracked, { addresses: 0, users: 0 });
});

test('per-user sessions: claimed after login, released with the connection, a failed claim holds nothing', () => {
  const limiter = new ConnectionLimiter(LIMITS);
  const a = admitOk(limiter, '192.0.2.1');
  const b = admitOk(limiter, '192.0.2.2');
  const c = admitOk(limiter, '192.0.2.3');
  assert.equal(a.claimUser('alice'), true);
  assert.equal(b.claimUser('alice'), true);
  assert.equal(c.claimUser('alice'), false, 'third session of alice');
  assert.equal(c.user, undefined);
  assert.equal(limiter.sessionsOf('alice'), 2);
  assert.equal(c.claimUser('bob'), true, 'the refused lease can still log in as someone else');
  a.releaseUser();
  a.releaseUser();
  assert.equal(limiter.sessionsOf('alice'), 1);
  assert.equal(a.claimUser('alice'), true);
  assert.equal(a.claimUser('alice'), true, 'claiming the same user again counts once');
  assert.equal(limiter.sessionsOf('alice'), 2);
  assert.equal(a.claimUser('carol'), true, 'a new claim replaces the old one');
  assert.equal(limiter.sessionsOf('alice'), 1);
  for (const lease of [a, b, c, a, b, c]) lease.release();
  assert.equal(limiter.connections, 0);
  assert.deepEqual(limiter.tracked, { addresses: 0, users: 0 });
  assert.equal(a.claimUser('dave'), false, 'a released lease claims nothing');
  assert.equal(limiter.sessionsOf('dave'), 0);
});

test('new limits apply to new connections; held leases stay valid', () => {
  const limiter = new ConnectionLimiter(LIMITS);
  const held = [admitOk(limiter, '192.0.2.1'), admitOk(limiter, '192.0.2.1')];
  limiter.setLimits({ ...LIMITS, maxConnectionsPerAddress: 1 });
  assert.equal(limiter.admit('192.0.2.1', false).admitted, false);
  held[0]?.release();
  assert.equal(limiter.admit('192.0.2.1', false).admitted, false, 'still one held, the new limit is one');
  held[1]?.release();
  assert.equal(limiter.admit('192.0.2.1', false).admitted, true);
});

test('an address a trusted webmail forwards is counted per address from then on, up to its limit, and released with the connection', () => {
  const limiter = new ConnectionLimiter(LIMITS);
  const direct = admitOk(limiter, '192.0.2.9');
  const first = admitOk(limiter, '192.0.2.5', true);
  const second = admitOk(limiter, '192.0.2.5', true);
  assert.equal(first.countAddress('192.0.2.9'), true);
  assert.equal(first.addressKey, '192.0.2.9');
  assert.equal(first.countAddress('::ffff:192.0.2.9'), true, 'the same address again counts once');
  assert.equal(limiter.connectionsFrom('192.0.2.9'), 2);
  assert.equal(second.countAddress('192.0.2.9'), false, 'a third connection of 192.0.2.9');
  assert.equal(second.addressKey, undefined, 'a refused count changes nothing');
  assert.deepEqual(limiter.admit('192.0.2.9', false), { admitted: false, limit: 'address' }, 'a webmail connection counts as a direct one does');
  assert.equal(second.countAddress('192.0.2.10'), true);
  assert.equal(second.countAddress('2001:db8::1'), true, 'a new address replaces the one counted before');
  assert.equal(limiter.connectionsFrom('192.0.2.10'), 0);
  assert.equal(limiter.connectionsFrom('2001:db8::2'), 1);
  first.release();
  assert.equal(limiter.connectionsFrom('192.0.2.9'), 1);
  assert.equal(first.countAddress('192.0.2.11'), false, 'a released lease counts nothing');
  for (const lease of [direct, second, first]) lease.release();
  assert.equal(limiter.connections, 0);
  assert.deepEqual(limiter.tracked, { addresses: 0, users: 0 });
});

test('a forwarded address of the trusted networks is not counted: uncountAddress drops the address counted before', () => {
  const limiter = new ConnectionLimiter(LIMITS);
  const lease = admitOk(limiter, '192.0.2.5', true);
  assert.equal(lease.countAddress('192.0.2.9'), true);
  assert.equal(limiter.connectionsFrom('192.0.2.9'), 1);
  lease.uncountAddress();
  lease.uncountAddress();
  assert.equal(lease.addressKey, undefined);
  assert.equal(limiter.connectionsFrom('192.0.2.9'), 0);
  lease.release();
  assert.equal(limiter.connections, 0);
  assert.deepEqual(limiter.tracked, { addresses: 0, users: 0 });
});

test('a forward refused at the new address keeps the address counted before: counted once, released once', () => {
  const limiter = new ConnectionLimiter({ ...LIMITS, maxConnectionsPerAddress: 1 });
  const there = admitOk(limiter, '192.0.2.1');
  const lease = admitOk(limiter, '192.0.2.2');
  assert.equal(lease.countAddress('192.0.2.1'), false, '192.0.2.1 is at its limit');
  assert.equal(lease.addressKey, '192.0.2.2');
  assert.equal(limiter.connectionsFrom('192.0.2.2'), 1, 'still counted where it was');
  assert.deepEqual(limiter.admit('192.0.2.2', false), { admitted: false, limit: 'address' });
  lease.release();
  assert.equal(limiter.connectionsFrom('192.0.2.2'), 0);
  there.release();
  assert.equal(limiter.connections, 0);
  assert.deepEqual(limiter.tracked, { addresses: 0, users: 0 });
});

test('an address of connection_limits.exempt_networks forwarded by a trusted webmail is not counted, as when it connects itself', () => {
  const limiter = new ConnectionLimiter({ ...LIMITS, exemptNetworks: ['100.64.0.0/10'] });
  const direct = [admitOk(limiter, '100.64.0.7'), admitOk(limiter, '100.64.0.7'), admitOk(limiter, '100.64.0.7')];
  assert.equal(limiter.connectionsFrom('100.64.0.7'), 0, 'its own connections: not counted per address');
  const forwarded = admitOk(limiter, '192.0.2.5', true);
  assert.equal(forwarded.countAddress('192.0.2.9'), true);
  assert.equal(forwarded.countAddress('100.64.0.7'), true);
  assert.equal(forwarded.addressKey, undefined, 'the address counted before is dropped, the NAT not counted');
  assert.equal(limiter.connectionsFrom('192.0.2.9'), 0);
  assert.equal(limiter.connectionsFrom('100.64.0.7'), 0);
  for (const lease of [...direct, forwarded]) lease.release();
  assert.equal(limiter.connections, 0);
  assert.deepEqual(limiter.tracked, { addresses: 0, users: 0 });
});

test('any interleaving of admits, forwarded addresses, claims and releases (released twice or more) keeps exact counts and leaks nothing', () => {
  type Op =
    | { kind: 'admit'; address: number; trusted: boolean }
    | { kind: 'forward'; lease: number; address: number }
    | { kind: 'claim'; lease: number; user: number }
    | { kind: 'releaseUser'; lease: number }
    | { kind: 'release'; lease: number };
  const op: fc.Arbitrary<Op> = fc.oneof(
    fc.record({ kind: fc.constant('admit' as const), address: fc.nat(4), trusted: fc.boolean() }),
    fc.record({ kind: fc.constant('forward' as const), lease: fc.nat(30), address: fc.nat(4) }),
    fc.record({ kind: fc.constant('claim' as const), lease: fc.nat(30), user: fc.nat(3) }),
    fc.record({ kind: fc.constant('releaseUser' as const), lease: fc.nat(30) }),
    fc.record({ kind: fc.constant('release' as const), lease: fc.nat(30) }),
  );
  fc.assert(
    fc.property(fc.array(op, { maxLength: 200 }), (ops) => {
      const limiter = new ConnectionLimiter({ maxConnections: 8, maxConnectionsPerAddress: 3, maxSessionsPerUser: 2 });
      // `counted`: the address the lease is counted under (none for a trusted one until it forwards one).
      const leases: { lease: ConnectionLease; counted: string | undefined }[] = [];
      const countedUnder = (address: string): number => leases.filter((l) => !l.lease.released && l.counted === address).length;
      for (const o of ops) {
        if (o.kind === 'admit') {
          const address = `192.0.2.${o.address}`;
          const live = leases.filter((l) => !l.lease.released);
          // Trusted connections count in the total only.
          const admission = limiter.admit(address, o.trusted);
          const expected = live.length >= 8 ? 'total' : !o.trusted && countedUnder(address) >= 3 ? 'address' : 'ok';
          assert.equal(admission.admitted ? 'ok' : admission.limit, expected);
          if (admission.admitted) leases.push({ lease: admission.lease, counted: o.trusted ? undefined : address });
          continue;
        }
        const entry = leases[o.lease];
        if (entry === undefined) continue;
        if (o.kind === 'forward') {
          const address = `192.0.2.${o.address}`;
          const expected = !entry.lease.released && (entry.counted === address || countedUnder(address) < 3);
          assert.equal(entry.lease.countAddress(address), expected);
          if (expected) entry.counted = address;
          assert.equal(entry.lease.addressKey, entry.counted);
        } else if (o.kind === 'claim') {
          const user = `user${o.user}`;
          const others = leases.filter((l) => l !== entry && !l.lease.released && l.lease.user === user).length;
          const before = entry.lease.user;
          const expected = !entry.lease.released && (before === user || others < 2);
          assert.equal(entry.lease.claimUser(user), expected);
          assert.equal(entry.lease.user, expected ? user : before);
        } else if (o.kind === 'releaseUser') entry.lease.releaseUser();
        else entry.lease.release();
        const live = leases.filter((l) => !l.lease.released);
        assert.equal(limiter.connections, live.length);
        for (let a = 0; a < 5; a++) assert.equal(limiter.connectionsFrom(`192.0.2.${a}`), countedUnder(`192.0.2.${a}`));
        for (let u = 0; u < 4; u++) assert.equal(limiter.sessionsOf(`user${u}`), live.filter((l) => l.lease.user === `user${u}`).length);
      }
      for (const l of leases) l.lease.release();
      assert.equal(limiter.connections, 0);
      assert.deepEqual(limiter.tracked, { addresses: 0, users: 0 });
    }),
    { numRuns: 300 },
  );
});

test('config: defaults, values and mistakes', () => {
  const issues = new IssueList();
  assert.deepEqual(readConnectionLimitsConfig(undefined, 'connection_limits', issues), { ...CONNECTION_LIMIT_DEFAULTS, exemptNetworks: [] });
  assert.deepEqual(readConnectionLimitsConfig({ max_connections: 50, max_connections_per_address: 5, max_sessions_per_user: 3, exempt_networks: ['100.64.0.0/10'] }, 'connection_limits', issues), {
    maxConnections: 50,
    maxConnectionsPerAddress: 5,
    maxSessionsPerUser: 3,
    exemptNetworks: ['100.64.0.0/10'],
  });
  assert.deepEqual(issues.issues, []);
  const bad = new IssueList();
  readConnectionLimitsConfig({ max_connections: 0, max_sessions_per_user: 'many', per_ip: 3, exempt_networks: 'a NAT' }, 'connection_limits', bad);
  assert.deepEqual(bad.issues.map((i) => i.path).sort(), ['connection_limits.exempt_networks[0]', 'connection_limits.max_connections', 'connection_limits.max_sessions_per_user', 'connection_limits.per_ip']);
});

test('config: each limit is 1 at least (0 would refuse every connection or every login), and at most its bound', () => {
  const ok = new IssueList();
  assert.deepEqual(readConnectionLimitsConfig({ max_connections: 1, max_connections_per_address: 1, max_sessions_per_user: 1 }, 'connection_limits', ok), { maxConnections: 1, maxConnectionsPerAddress: 1, maxSessionsPerUser: 1, exemptNetworks: [] });
  assert.deepEqual(readConnectionLimitsConfig({ max_connections: 1_000_000, max_connections_per_address: 1_000_000, max_sessions_per_user: 100_000 }, 'connection_limits', ok), { maxConnections: 1_000_000, maxConnectionsPerAddress: 1_000_000, maxSessionsPerUser: 100_000, exemptNetworks: [] });
  assert.deepEqual(ok.issues, []);
  for (const [values, bad] of [
    [{ max_connections: 0, max_connections_per_address: 0, max_sessions_per_user: 0 }, ['0', '0', '0']],
    [{ max_connections: 1_000_001, max_connections_per_address: 1_000_001, max_sessions_per_user: 100_001 }, ['1000001', '1000001', '100001']],
  ] as const) {
    const issues = new IssueList();
    readConnectionLimitsConfig(values, 'connection_limits', issues);
    assert.deepEqual(
      issues.issues.map((i) => `${i.path}: expected ${i.expected}, found ${i.found}`),
      [
        `connection_limits.max_connections: expected an integer from 1 to 1000000, found number ${bad[0]}`,
        `connection_limits.max_connections_per_address: expected an integer from 1 to 1000000, found number ${bad[1]}`,
        `connection_limits.max_sessions_per_user: expected an integer from 1 to 100000, found number ${bad[2]}`,
      ],
    );
  }
});
