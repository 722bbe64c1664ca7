/**
 * A full ConnectionLimiter makes room by closing its oldest connection not logged in: the order,
 * what is never evicted (trusted connections, logins under way, sessions), the per-address limit
 * before any eviction, the young connections of a front full of sessions, and the counts after
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
  for (const name of ['p', 'q', 'r', 's']) connect(limiter, name, closed);
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
  type Op = { kind: 'admit'; trusted: boolean } | { kind: 'start' | 'fail' | 'in' | 'close'; pick: number } | { kind: 'tick' };
  const op = fc.oneof(
    fc.record({ kind: fc.constant('admit' as const), trusted: fc.boolean() }),
    fc.record({ kind: fc.constantFrom('start' as const, 'fail' as const, 'in' as const, 'close' as const), pick: fc.nat() }),
    fc.record({ kind: fc.constant('tick' as const) }),
  );
  fc.assert(
    fc.property(fc.array(op, { maxLength: 300 }), (ops: Op[]) => {
      const { limiter, clock } = limiterOf(8);
      interface Held { readonly id: number; readonly lease: ConnectionLease; readonly at: number; trusted: boolean; state: 'pre' | 'login' | 'in' }
      const held: Held[] = [];
      let next = 0;
      const evictedIds: number[] = [];
      for (const o of ops) {
        if (o.kind === 'tick') clock.now += 1_000;
        else if (o.kind === 'admit') {
          const id = next++;
          const candidates = held.filter((h) => !h.trusted && h.state === 'pre').sort((x, y) => x.at - y.at || x.id - y.id);
          const full = held.length >= 8;
          const oldest = candidates[0];
          const allowed = oldest !== undefined && (candidates.length * 2 >= held.length || clock.now - oldest.at >= EVICTION_MIN_AGE_MS);
          const admission = limiter.admit(`10.0.${id >> 8}.${id & 255}`, o.trusted);
          if (full && !allowed) {
            assert.deepEqual(admission, { admitted: false, limit: 'total' });
            continue;
          }
          assert.ok(admission.admitted);
          if (full) {
            assert.equal(evictedIds.at(-1), oldest?.id, 'the oldest evictable was closed');
            held.splice(held.indexOf(oldest!), 1);
          }
          admission.lease.evictableBy(() => evictedIds.push(id));
          held.push({ id, lease: admission.lease, at: clock.now, trusted: o.trusted, state: 'pre' });
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
