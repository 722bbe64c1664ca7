// OpenLDAP change sequence numbers as the LDAP store-map source reads them: parsed into their
// parts, ordered as slapd's csnOrderingMatch orders them (time, count, server id, mod; not as
// text where the widths differ), contextCSN's values by server id, and whether a read is behind
// the map in force (an entry's entryCSN older, or an entry missing whose change the server has
// not got); and what a failover's modify refused by the server becomes (failoverWriteError).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { behindMapInForce, compareCsn, contextCsnsBySid, entryAfterContext, parseCsn } from '../../src/routing/sources.js';

test('a CSN reads as its time, count, server id and mod; anything else as none', () => {
  assert.deepEqual(parseCsn('20261206004219.500954Z#000000#001#000000'), { time: '20261206004219.500954', count: 0, sid: 1, mod: 0 });
  assert.deepEqual(parseCsn('20261206004219.5Z#00000a#00f#000002'), { time: '20261206004219.500000', count: 10, sid: 15, mod: 2 });
  // OpenLDAP 2.3's, without microseconds.
  assert.deepEqual(parseCsn('20080101000000Z#000001#00#000000'), { time: '20080101000000.000000', count: 1, sid: 0, mod: 0 });
  for (const bad of ['', '20261206004219.500954Z', '20261206004219.500954Z#000000#001', 'x20261206004219.500954Z#000000#001#000000', '20261206004219.500954Z#0#g#0', '2026-12-06T00:42:19Z#000000#001#000000']) assert.equal(parseCsn(bad), undefined, bad);
});

test('CSNs order by time, then count, server id and mod', () => {
  const a = '20261206004219.500954Z#000000#001#000000';
  assert.equal(compareCsn(a, a), 0);
  assert.ok(compareCsn('20261206004219.500955Z#000000#001#000000', a) > 0);
  assert.ok(compareCsn('20261206004220.000000Z#000000#000#000000', a) > 0);
  assert.ok(compareCsn('20261206004219.500954Z#000001#000#000000', a) > 0);
  assert.ok(compareCsn('20261206004219.500954Z#000000#002#000000', a) > 0);
  assert.ok(compareCsn('20261206004219.500954Z#000000#001#000001', a) > 0);
  assert.ok(compareCsn(a, '20261206004219.500954Z#000000#001#000001') < 0);
  // A time without microseconds is the same time with zeros; an unparseable CSN sorts first.
  assert.equal(compareCsn('20261206004219Z#000000#001#000000', '20261206004219.000000Z#000000#001#000000'), 0);
  assert.ok(compareCsn('junk', a) < 0);
  assert.ok(compareCsn(a, 'junk') > 0);
});

test("contextCSN's values by server id: the newest of each; none when a value is no CSN", () => {
  const bySid = contextCsnsBySid(['20261206004219.029707Z#000000#000#000000', '20261206004220.950050Z#000000#001#000000', '20261206004210.000000Z#000000#001#000000']);
  assert.deepEqual([...(bySid ?? [])], [[0, '20261206004219.029707Z#000000#000#000000'], [1, '20261206004220.950050Z#000000#001#000000']]);
  assert.equal(contextCsnsBySid([]), undefined);
  assert.equal(contextCsnsBySid(['20261206004219.029707Z#000000#000#000000', 'junk']), undefined);
});

test('a read is behind the map in force when an entry in force is older on the server, or missing there, while the server has not got its change', () => {
  const old = '20261206004200.000000Z#000000#001#000000';
  const failover = '20261206004219.500000Z#000000#001#000000';
  const later = '20261206004230.000000Z#000000#002#000000';
  const inForce = new Map([['cn=st1,ou=stores', failover], ['cn=st2,ou=stores', old]]);
  // The failover not there yet: without contextCSN, by the entry alone; with it, its server id's value older than the failover.
  assert.deepEqual(behindMapInForce(inForce, new Map([['cn=st1,ou=stores', old], ['cn=st2,ou=stores', old]]), undefined), { dn: 'cn=st1,ou=stores', inForce: failover, server: old });
  assert.deepEqual(behindMapInForce(inForce, new Map([['cn=st1,ou=stores', old], ['cn=st2,ou=stores', old]]), new Map([[1, old]])), { dn: 'cn=st1,ou=stores', inForce: failover, server: `${old} (contextCSN ${old})` });
  // Older, on a server that has the failover: written again since by a server whose clock is behind (server id 3, 30 s slow): not behind.
  const skewed = '20261206004150.000000Z#000000#003#000000';
  assert.equal(behindMapInForce(inForce, new Map([['cn=st1,ou=stores', skewed], ['cn=st2,ou=stores', old]]), new Map([[1, failover], [3, skewed]])), undefined);
  // The same, or newer (from another server id, whose clock may be behind): not behind.
  assert.equal(behindMapInForce(inForce, new Map(inForce), undefined), undefined);
  assert.equal(behindMapInForce(inForce, new Map([['cn=st1,ou=stores', later], ['cn=st2,ou=stores', old]]), undefined), undefined);
  // Missing: deleted on a server that has the change that made it what it is in force; behind where it has not, or says nothing of that server id.
  const onlySt2 = new Map([['cn=st2,ou=stores', old]]);
  assert.equal(behindMapInForce(inForce, onlySt2, new Map([[1, '20261206004240.000000Z#000000#001#000000']])), undefined);
  assert.equal(behindMapInForce(inForce, onlySt2, new Map([[1, old]]))?.dn, 'cn=st1,ou=stores');
  assert.equal(behindMapInForce(inForce, onlySt2, new Map([[2, later]]))?.dn, 'cn=st1,ou=stores');
  // Without contextCSN a missing entry cannot be told from a deleted one; without entryCSN nothing can be told.
  assert.equal(behindMapInForce(inForce, onlySt2, undefined), undefined);
  assert.equal(behindMapInForce(inForce, undefined, undefined), undefined);
});

test("a failover's modify refused by the server: an error that says why, with a code and kind for the admin API; one not answered: unconfirmed, passing", async () => {
  const { BusyError, InsufficientAccessError, UnavailableError, UnknownStatusCodeError, UnwillingToPerformError, NoSuchObjectError } = await import('ldapts');
  const { failoverWriteError } = await import('../../src/routing/sources.js');
  const { MailfrontError } = await import('../../src/errors.js');
  const url = 'ldap://127.0.0.1:3899';
  const cases: Array<[Error, string, string, RegExp]> = [
    [new UnknownStatusCodeError(10, ''), 'STOREMAP_READ_ONLY_REPLICA', 'config', /is a read-only replica \(it answered with a referral/],
    [new UnwillingToPerformError('shadow context; no update referral'), 'STOREMAP_READ_ONLY_REPLICA', 'config', /unwillingToPerform.*\(the server said: shadow context; no update referral\)/],
    [new InsufficientAccessError(''), 'STOREMAP_WRITE_NOT_ALLOWED', 'config', /insufficientAccessRights/],
    [new BusyError(''), 'STOREMAP_LDAP_BUSY', 'auth-tempfail', /busy, LDAP result 51/],
    [new UnavailableError(''), 'STOREMAP_LDAP_BUSY', 'auth-tempfail', /unavailable, LDAP result 52/],
    [new NoSuchObjectError(''), 'STOREMAP_WRITE_FAILED', 'config', /refused the modify of cn=st1,ou=stores with LDAP result 32/],
  ];
  for (const [error, code, kind, message] of cases) {
    const mapped = failoverWriteError(error, 'st1', 'cn=st1,ou=stores', url);
    assert.ok(mapped instanceof MailfrontError, String(mapped));
    assert.equal(mapped.code, code);
    assert.equal(mapped.kind, kind);
    assert.match(mapped.message, message);
    assert.ok(mapped.message.startsWith(`failover of store "st1" not written: the store-map server ${url} `), mapped.message);
    assert.ok(!mapped.message.includes('Code: 0x'), mapped.message);
  }
  // Not answered: may or may not be written, and passing (503).
  for (const dropped of [new Error('Connection closed'), new Error('ModifyRequest: Operation timed out'), Object.assign(new Error('read ECONNRESET'), { code: 'ECONNRESET' })]) {
    const mapped = failoverWriteError(dropped, 'st1', 'cn=st1,ou=stores', url, 'maintenance');
    assert.ok(mapped instanceof MailfrontError, String(mapped));
    assert.equal(mapped.code, 'STOREMAP_WRITE_UNCONFIRMED');
    assert.equal(mapped.kind, 'auth-tempfail');
    assert.equal(mapped.cause, dropped);
    assert.ok(mapped.message.startsWith(`maintenance of store "st1" unconfirmed: the store-map server ${url} did not answer the modify of cn=st1,ou=stores (${dropped.message}); it may or may not have been written: see \`mailfront stores\``), mapped.message);
  }
  const closed = new MailfrontError('STOREMAP_SOURCE_CLOSED', 'config', 'the store-map source was closed');
  assert.equal(failoverWriteError(closed, 'st1', 'cn=st1,ou=stores', url), closed);
});

test('entryAfterContext: a store entry newer than the contextCSN read after it says that contextCSN is another database\'s', () => {
  const context = new Map([[1, '20261201000000.000000Z#000000#001#000000']]);
  const older = new Map([['cn=a', '20261130000000.000000Z#000000#001#000000'], ['cn=b', '20261201000000.000000Z#000000#001#000000']]);
  assert.equal(entryAfterContext(older, context), undefined);
  // The parent database's contextCSN, which a write to the glued stores database does not move.
  const newer = new Map([['cn=a', '20261130000000.000000Z#000000#001#000000'], ['cn=b', '20261202000000.000000Z#000000#001#000000']]);
  assert.deepEqual(entryAfterContext(newer, context), { dn: 'cn=b', csn: '20261202000000.000000Z#000000#001#000000', context: '20261201000000.000000Z#000000#001#000000' });
  // A server id the contextCSN lacks: compared with its newest value (an entry loaded by slapadd, sid 000, is older).
  assert.equal(entryAfterContext(new Map([['cn=a', '20261101000000.000000Z#000000#000#000000']]), context), undefined);
  assert.equal(entryAfterContext(new Map([['cn=a', '20261203000000.000000Z#000000#002#000000']]), context)?.dn, 'cn=a');
});
