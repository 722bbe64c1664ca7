/**
 * A full ConnectionLimiter makes room by closing its oldest connection not logged in: the order,
 * what is never evicted (trusted connections, logins under way, sessions), the per-address limit
 * before any eviction, the young connections of a front full of sessions, the address holding the
 * most connections not logged in evicted first on such a front, and the counts after
 * thousands of admissions and logins in any order (fast-check) against a plain model.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { ConnectionLimiter, EVICTION_MIN_AGE_MS } from '../../src/server/connection-limits.js';
import type { ConnectionLease } from '../../src/server/connection-limits.js';

/** A limiter on a clock the test moves. */
function limiterOf(maxConnections: number, maxConnectionsPerAddress = 100): { limiter: ConnectionLimiter; clock: { now: number } } {
  const clock = { now: 0 };
  return { limiter: new ConnectionLimiter({ maxConnections, maxConnectionsPerAddress, maxSessionsPerUser: 10 }, () => clock.now), clock };
}

/** Admits a connection from `address` that may be evicted (as the listener makes every untrusted one); its closer notes its name in `closed`. */
function connect(limiter: ConnectionLimiter, name: string, closed: string[], address = `192.0.2.${name.length}`, trusted = false): ConnectionLease {
  const admission = limiter.admit(address, trusted);
  assert.ok(admission.admitted, `${name} admitted`);
  admission.lease.evictableBy(() => closed.push(name));
  return admission.lease;
}

test('at max_connections the oldest connection not logged in is closed, its slot given to the new one', () => {
  const { limiter } = limiterOf(3);
  const closed: string[] = [];
  const [a, b] = [connect(limiter, 'a', closed), connect(limiter, 'b', closed)];
  connect(limiter, 'c', closed);
  const admission = limiter.admit('198.51.100.1', false);
  assert.ok(admission.admitted && admission.evicted);
  assert.deepEqual(closed, ['a']);
  assert.ok(a.released, 'the evicted lease is released before its closer runs');
  assert.equal(limiter.connections, 3);
  a.release();
  assert.equal(limiter.connections, 3, 'released once');
  admission.lease.evictableBy(() => closed.push('d'));
  assert.ok(limiter.admit('198.51.100.2', false).admitted);
  assert.deepEqual(closed, ['a', 'b']);
  assert.ok(b.released);
});

test('logged-in sessions, logins under way and trusted connections are never evicted; with none other, the new one is refused', () => {
  const { limiter, clock } = limiterOf(4);
  const closed: string[] = [];
  const spliced = connect(limiter, 'spliced', closed);
  const logging = connect(limiter, 'logging', closed);
  connect(limiter, 'webmail', closed, '192.0.2.80', true);
  connect(limiter, 'idle', closed);
  spliced.loginStarted();
  spliced.loggedIn();
  logging.loginStarted();
  assert.equal(limiter.evictable, 1);
  // One of four: only past its minimum age (the next test).
  clock.now += EVICTION_MIN_AGE_MS;
  assert.ok(limiter.admit('198.51.100.1', false).admitted);
  assert.deepEqual(closed, ['idle']);
  assert.equal(limiter.evictable, 0, 'the newcomer has no closer yet');
  assert.deepEqual(limiter.admit('198.51.100.2', false), { admitted: false, limit: 'total' });
  assert.deepEqual(closed, ['idle']);
  // The login fails: evictable again, in its place by age (before the newcomer).
  logging.loginFailed();
  assert.ok(limiter.admit('198.51.100.3', false).admitted);
  assert.deepEqual(closed, ['idle', 'logging']);
});

test('a login that failed goes back in its place by age, also after it was unlinked at the head during its login', () => {
  const { limiter, clock } = limiterOf(5);
  const closed: string[] = [];
  const leases: ConnectionLease[] = [];
  for (const name of ['a', 'b', 'c', 'd', 'e']) {
    clock.now += 10_000;
    leases.push(connect(limiter, name, closed));
  }
  const [a, b] = leases as [ConnectionLease, ConnectionLease];
  a.loginStarted();
  b.loginStarted();
  // c is evicted; a and b, at the head and logging in, are taken out of the list on the way.
  clock.now += 10_000;
  connect(limiter, 'f', closed);
  assert.deepEqual(closed, ['c']);
  // Linked again in the order of their admission, ahead of d, e and f.
  b.loginFailed();
  a.loginFailed();
  for (const name of ['g', 'h', 'i']) connect(limiter, name, closed);
  assert.deepEqual(closed, ['c', 'a', 'b', 'd']);
});

test('a client at its own address limit takes no one\'s place', () => {
  const { limiter } = limiterOf(3, 2);
  const closed: string[] = [];
  connect(limiter, 'a', closed, '192.0.2.1');
  connect(limiter, 'b', closed, '192.0.2.1');
  connect(limiter, 'c', closed, '192.0.2.2');
  assert.deepEqual(limiter.admit('192.0.2.1', false), { admitted: false, limit: 'address' });
  assert.deepEqual(closed, []);
  // A trusted (or exempt) newcomer is not counted per address: it may take a place.
  assert.ok(limiter.admit('192.0.2.1', true).admitted);
  assert.deepEqual(closed, ['a']);
});

test(`a front mostly of sessions evicts no connection younger than ${EVICTION_MIN_AGE_MS} ms; one mostly of connections not logged in evicts the oldest whatever its age`, () => {
  const { limiter, clock } = limiterOf(10);
  const closed: string[] = [];
  for (let i = 0; i < 6; i++) {
    const session = connect(limiter, `s${i}`, closed);
    session.loginStarted();
    session.loggedIn();
  }
  // Four clients, each from its own address (no address stands out).
  for (const [i, name] of ['p', 'q', 'r', 's'].entries()) connect(limiter, name, closed, `192.0.2.${10 + i}`);
  // 4 of 10 not logged in, all admitted just now: the newcomer is refused, as before evictions.
  clock.now += EVICTION_MIN_AGE_MS - 1;
  assert.deepEqual(limiter.admit('198.51.100.1', false), { admitted: false, limit: 'total' });
  clock.now += 1;
  assert.ok(limiter.admit('198.51.100.1', false).admitted);
  assert.deepEqual(closed, ['p']);

  const flood = limiterOf(10);
  const floodClosed: string[] = [];
  for (let i = 0; i < 10; i++) connect(flood.limiter, `f${i}`, floodClosed);
  assert.ok(flood.limiter.admit('198.51.100.1', false).admitted, 'no wait: half or more are not logged in');
  assert.deepEqual(floodClosed, ['f0']);
});

test('a front mostly of sessions evicts, whatever their age, the connections of the address holding the most not logged in; a user keeps its minimum age', () => {
  const { limiter, clock } = limiterOf(20);
  const closed: string[] = [];
  for (let i = 0; i < 12; i++) {
    const session = connect(limiter, `s${i}`, closed, `198.51.100.${i}`);
    session.loginStarted();
    session.loggedIn();
  }
  // One user about to log in, then an attacker's seven from one address, all young.
  clock.now += 10_000;
  connect(limiter, 'user', closed, '192.0.2.200');
  for (let i = 0; i < 7; i++) connect(limiter, `x${i}`, closed, '203.0.113.66');
  // The attacker's own newcomer would leave its address holding more: refused, no one closed.
  assert.deepEqual(limiter.admit('203.0.113.66', false), { admitted: false, limit: 'total' });
  // A user from another address takes the attacker's oldest place at once; the user there is kept.
  connect(limiter, 'u1', closed, '192.0.2.201');
  assert.deepEqual(closed, ['x0']);
  // Another address of two holds fewer than the attacker's six: still the attacker's.
  connect(limiter, 'n1', closed, '192.0.2.202');
  connect(limiter, 'n2', closed, '192.0.2.202');
  assert.deepEqual(closed, ['x0', 'x1', 'x2']);
  // A trusted newcomer (a webmail) too; it takes no one's place from a key of one.
  assert.ok(limiter.admit('192.0.2.80', true).admitted);
  assert.deepEqual(closed, ['x0', 'x1', 'x2', 'x3']);
  // Attacker 3, 192.0.2.202 two: a newcomer of that key would hold three, as many: no one stands
  // out for it; the oldest is under its minimum age: refused.
  assert.deepEqual(limiter.admit('192.0.2.202', false), { admitted: false, limit: 'total' });
  // A fresh address: the attacker's (3, the most) first, down to two, then 192.0.2.202's or the
  // attacker's (two each), then none stands out (every key one or the newcomer's as many).
  connect(limiter, 'f1', closed, '192.0.2.203');
  assert.deepEqual(closed.slice(4), ['x4']);
  connect(limiter, 'f2', closed, '192.0.2.204');
  connect(limiter, 'f3', closed, '192.0.2.205');
  assert.deepEqual(new Set(closed.slice(5)), new Set(['x5', 'n1']));
  assert.deepEqual(limiter.admit('192.0.2.206', false), { admitted: false, limit: 'total' });
  assert.ok(!closed.includes('user'), 'the user with one connection kept its minimum age');
  // Past it, the oldest goes again, whoever it is (the user, here).
  clock.now += EVICTION_MIN_AGE_MS;
  connect(limiter, 'late', closed, '192.0.2.207');
  assert.equal(closed.at(-1), 'user');
});

test('a lease whose address changes (a forwarded address) is counted with its new key\'s crowd', () => {
  const { limiter, clock } = limiterOf(10);
  const closed: string[] = [];
  for (let i = 0; i < 6; i++) {
    const session = connect(limiter, `s${i}`, closed, `198.51.100.${i}`);
    session.loginStarted();
    session.loggedIn();
  }
  clock.now += 10_000;
  const a = connect(limiter, 'a', closed, '192.0.2.1');
  connect(limiter, 'b', closed, '192.0.2.2');
  connect(limiter, 'c', closed, '192.0.2.3');
  const d = connect(limiter, 'd', closed, '192.0.2.4');
  assert.ok(d.countAddress('192.0.2.1'));
  // 192.0.2.1 holds a and d: two, the most.
  connect(limiter, 'e', closed, '192.0.2.9');
  assert.deepEqual(closed, ['a']);
  d.uncountAddress();
  // Every key one: none stands out, all young: refused.
  assert.deepEqual(limiter.admit('192.0.2.10', false), { admitted: false, limit: 'total' });
  assert.equal(a.released, true);
});

test('connection_limits.exempt_networks (a NAT) holds no address\'s crowd: its young connections keep their minimum age', () => {
  const clock = { now: 0 };
  const limiter = new ConnectionLimiter({ maxConnections: 10, maxConnectionsPerAddress: 100, maxSessionsPerUser: 10, exemptNetworks: ['100.64.0.0/10'] }, () => clock.now);
  const closed: string[] = [];
  for (let i = 0; i < 6; i++) {
    const session = connect(limiter, `s${i}`, closed, `198.51.100.${i}`);
    session.loginStarted();
    session.loggedIn();
  }
  clock.now += 10_000;
  for (const name of ['n1', 'n2', 'n3', 'n4']) connect(limiter, name, closed, '100.64.0.1');
  assert.deepEqual(limiter.admit('192.0.2.1', false), { admitted: false, limit: 'total' });
  assert.deepEqual(closed, []);
});

test('released leases leave the list; the closer set last is the one called', () => {
  const { limiter } = limiterOf(2);
  const closed: string[] = [];
  const a = connect(limiter, 'a', closed);
  a.evictableBy(() => closed.push('a-session'));
  const b = connect(limiter, 'b', closed);
  b.release();
  assert.equal(limiter.evictable, 1);
  connect(limiter, 'c', closed);
  connect(limiter, 'd', closed);
  assert.deepEqual(closed, ['a-session']);
  assert.equal(limiter.connections, 2);
});

test('any sequence of admissions, logins, failures and closes: counts and eviction order match a plain model', () => {
  type Op = { kind: 'admit'; trusted: boolean; address: number } | { kind: 'start' | 'fail' | 'in' | 'close'; pick: number } | { kind: 'tick' };
  const op = fc.oneof(
    // Five addresses: some hold several connections, and three is the limit of one.
    fc.record({ kind: fc.constant('admit' as const), trusted: fc.boolean(), address: fc.nat(4) }),
    fc.record({ kind: fc.constantFrom('start' as const, 'fail' as const, 'in' as const, 'close' as const), pick: fc.nat() }),
    fc.record({ kind: fc.constant('tick' as const) }),
  );
  fc.assert(
    fc.property(fc.array(op, { maxLength: 300, size: 'max' }), (ops: Op[]) => {
      const { limiter, clock } = limiterOf(8, 3);
      interface Held { readonly id: number; readonly lease: ConnectionLease; readonly at: number; trusted: boolean; state: 'pre' | 'login' | 'in'; readonly address: string }
      const held: Held[] = [];
      let next = 0;
      const evictedIds: number[] = [];
      for (const o of ops) {
        if (o.kind === 'tick') clock.now += 1_000;
        else if (o.kind === 'admit') {
          const id = next++;
          const address = `10.0.0.${o.address}`;
          const candidates = held.filter((h) => !h.trusted && h.state === 'pre').sort((x, y) => x.at - y.at || x.id - y.id);
          const full = held.length >= 8;
          const busy = candidates.length * 2 < held.length;
          // Per address: how many may be evicted, and the oldest of each.
          const crowds = new Map<string, Held[]>();
          for (const h of candidates) crowds.set(h.address, [...(crowds.get(h.address) ?? []), h]);
          const most = Math.max(0, ...[...crowds.values()].map((c) => c.length));
          const newcomerWillHold = o.trusted ? 0 : (crowds.get(address)?.length ?? 0) + 1;
          const crowded = busy && most > Math.max(1, newcomerWillHold);
          const oldest = candidates[0];
          const allowed = crowded || (oldest !== undefined && (!busy || clock.now - oldest.at >= EVICTION_MIN_AGE_MS));
          const overAddress = !o.trusted && held.filter((h) => !h.trusted && h.address === address).length >= 3;
          const admission = limiter.admit(address, o.trusted);
          // As admit() decides: nothing evictable, then the address limit, then whether one may go.
          const refused = full && candidates.length === 0 ? 'total' : overAddress ? 'address' : full && !allowed ? 'total' : undefined;
          if (refused !== undefined) {
            assert.deepEqual(admission, { admitted: false, limit: refused });
            continue;
          }
          assert.ok(admission.admitted);
          if (full) {
            const gone = held.find((h) => h.id === evictedIds.at(-1));
            assert.ok(gone !== undefined && candidates.includes(gone), 'an evictable connection was closed');
            if (crowded) {
              const crowd = crowds.get(gone.address)!;
              assert.equal(crowd.length, most, 'of an address holding the most');
              assert.equal(crowd[0], gone, 'its oldest');
            } else assert.equal(gone, oldest, 'the oldest evictable was closed');
            held.splice(held.indexOf(gone), 1);
          }
          admission.lease.evictableBy(() => evictedIds.push(id));
          held.push({ id, lease: admission.lease, at: clock.now, trusted: o.trusted, state: 'pre', address });
        } else {
          const h = held[o.pick % Math.max(1, held.length)];
          if (h === undefined) continue;
          if (o.kind === 'start' && h.state === 'pre') {
            h.lease.loginStarted();
            h.state = 'login';
          } else if (o.kind === 'fail' && h.state === 'login') {
            h.lease.loginFailed();
            h.state = 'pre';
          } else if (o.kind === 'in' && h.state === 'login') {
            h.lease.loggedIn();
            h.state = 'in';
          } else if (o.kind === 'close') {
            h.lease.release();
            held.splice(held.indexOf(h), 1);
          }
        }
        assert.equal(limiter.connections, held.length);
        assert.equal(limiter.evictable, held.filter((h) => !h.trusted && h.state === 'pre').length);
      }
      for (const h of held) h.lease.release();
      assert.equal(limiter.connections, 0);
      assert.equal(limiter.evictable, 0);
      assert.deepEqual(limiter.tracked, { addresses: 0, users: 0 });
    }),
    { numRuns: 2000 },
  );
});
