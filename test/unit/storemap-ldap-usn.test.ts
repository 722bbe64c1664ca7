// 389 Directory Server's update sequence numbers as the LDAP store-map source reads them: the
// root DSE's lastusn values (per backend, or one global), and from which entryusn a poll asks for
// the store entries: after the values of a sample at least the margin old, so that a write whose
// lastusn showed before its commit is still asked for; none when nothing moved since; a whole read
// (undefined) when no sample is that old or a value went back, appeared or went away. What a poll
// compares: an entry's entryusn and its routing values, since a replicated change may leave the
// entryusn as it was.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { entryUsns, lastUsns, usnSearchFrom, usnVersion } from '../../src/routing/sources.js';
import type { UsnSample } from '../../src/routing/sources.js';

test('lastusn reads per backend or global; anything else as none', () => {
  assert.deepEqual(lastUsns({ dn: '', 'lastusn;userroot': '72', 'lastusn;testbackend': ['15'] }), new Map([['lastusn;userroot', 72n], ['lastusn;testbackend', 15n]]));
  assert.deepEqual(lastUsns({ dn: '', lastUSN: '-1' }), new Map([['lastusn', -1n]]));
  // As ldapts gives it: the plain name asked for, absent, as [].
  assert.deepEqual(lastUsns({ dn: '', 'lastusn;userroot': '4', lastusn: [] }), new Map([['lastusn;userroot', 4n]]));
  assert.equal(lastUsns({ dn: '', namingContexts: 'dc=example,dc=org' }), undefined);
  assert.equal(lastUsns({ dn: '', 'lastusn;userroot': 'x' }), undefined);
  assert.equal(lastUsns({ dn: '', 'lastusn;userroot': '7', 'lastusn;other': '' }), undefined);
});

const sample = (at: number, ...values: Array<[string, bigint]>): UsnSample => ({ at, values: new Map(values) });

test('a poll asks from after the values of the newest sample at least the margin old', () => {
  const margin = 10_000;
  // No sample that old: cannot be told.
  let step = usnSearchFrom([], sample(0, ['lastusn;userroot', 5n]), margin);
  assert.equal(step.from, undefined);
  step = usnSearchFrom(step.samples, sample(4_000, ['lastusn;userroot', 6n]), margin);
  assert.equal(step.from, undefined);
  // 10 s after the first: from 6 (the write with USN 6 may not have been visible at 4 s).
  step = usnSearchFrom(step.samples, sample(10_000, ['lastusn;userroot', 6n]), margin);
  assert.equal(step.from, 6n);
  assert.equal(step.samples.length, 3);
  // The reference moves on to the sample at 4 s: from 7, and the sample at 0 is dropped.
  step = usnSearchFrom(step.samples, sample(14_500, ['lastusn;userroot', 9n]), margin);
  assert.equal(step.from, 7n);
  assert.deepEqual(step.samples.map((s) => s.at), [4_000, 10_000, 14_500]);
  // Nothing moved since the reference (at 24.5 s, the sample at 14.5 s).
  step = usnSearchFrom(step.samples, sample(24_500, ['lastusn;userroot', 9n]), margin);
  assert.equal(step.from, null);
  assert.deepEqual(step.samples.map((s) => s.at), [14_500, 24_500]);
});

test('with counters per backend, a poll asks from the lowest of the moved ones', () => {
  const first = usnSearchFrom([], sample(0, ['lastusn;userroot', 500n], ['lastusn;stores', 20n]), 1_000);
  const moved = usnSearchFrom(first.samples, sample(1_000, ['lastusn;userroot', 501n], ['lastusn;stores', 20n]), 1_000);
  assert.equal(moved.from, 501n);
  const both = usnSearchFrom(first.samples, sample(1_000, ['lastusn;userroot', 501n], ['lastusn;stores', 21n]), 1_000);
  assert.equal(both.from, 21n);
});

test('a value that went back, a backend that appeared or went away: all but the new sample dropped, a whole read', () => {
  const kept = [sample(0, ['lastusn;userroot', 50n]), sample(5_000, ['lastusn;userroot', 52n])];
  for (const now of [sample(20_000, ['lastusn;userroot', 51n]), sample(20_000, ['lastusn;userroot', 60n], ['lastusn;other', 1n]), sample(20_000, ['lastusn', 60n])]) {
    const step = usnSearchFrom(kept, now, 1_000);
    assert.equal(step.from, undefined, JSON.stringify([...now.values].map(([k, v]) => [k, String(v)])));
    assert.deepEqual(step.samples, [now]);
  }
});

test('a store entry\'s USN version: its entryusn and its routing values, so a value changed under the same entryusn is a change', () => {
  const store = { dn: 'cn=st3,ou=stores,dc=example,dc=org', objectClass: ['top', 'mailfrontStore'], cn: 'st3', mailfrontCurrentMaster: 'sl3a', mailfrontMaintenance: 'disk swap', entryUSN: '53' };
  const before = usnVersion(store);
  assert.ok(before?.startsWith('53 '));
  // 389 DS multi-master: a failover replicated after a later local write to the entry takes the
  // attribute (its CSN) and leaves the local write's entryusn.
  assert.notEqual(usnVersion({ ...store, mailfrontCurrentMaster: 'sl3b' }), before);
  assert.notEqual(usnVersion({ ...store, mailfrontMaintenance: [] }), before);
  assert.notEqual(usnVersion({ ...store, entryUSN: '54' }), before);
  // The same values, however the server spells and orders the names; other attributes do not count.
  assert.equal(usnVersion({ dn: store.dn, entryusn: ['53'], mailfrontmaintenance: ['disk swap'], CN: ['st3'], mailfrontCurrentMaster: 'sl3a', objectclass: ['top', 'mailfrontStore'], description: 'x', mailfrontPreferredMaster: [] }), before);
  const slot = { dn: 'cn=sl3a,cn=st3,ou=stores,dc=example,dc=org', objectClass: 'mailfrontSlot', cn: 'sl3a', mailfrontHost: '127.0.0.1', mailfrontImapPort: '10143', entryUSN: '12' };
  assert.notEqual(usnVersion({ ...slot, mailfrontImapPort: '10144' }), usnVersion(slot));
  assert.notEqual(usnVersion({ ...slot, mailfrontHost: Buffer.from('127.0.0.2') }), usnVersion(slot));
  assert.equal(usnVersion({ ...slot, mailfrontHost: Buffer.from('127.0.0.1') }), usnVersion(slot));
  // No entryusn the account may read: none, and entryUsns names the entry.
  assert.equal(usnVersion({ ...slot, entryUSN: undefined }), undefined);
  assert.deepEqual(entryUsns([store, { ...slot, entryUSN: [] }]), { without: slot.dn });
  assert.deepEqual(entryUsns([store]), new Map([['cn=st3,ou=stores,dc=example,dc=org', before]]));
});
