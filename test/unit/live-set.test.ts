// LiveSet: a set of live objects in an array, each member holding its place; members that left
// are referenced from nowhere, so a set that has lived through full collections does not keep
// them alive through young ones (which a Set does: V8 leaves a rehashed table's entries in place).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LiveSet } from '../../src/live-set.js';
import { PAYLOAD_BYTES, payload, promotedBy } from './young-gc.js';

interface Member {
  readonly name: string;
  place: number;
  payload?: number[];
}

const member = (name: string): Member => ({ name, place: -1 });
const names = (set: LiveSet<Member>): string[] => set.toArray().map((m) => m.name).sort();

test('members are added once, found, and removed wherever they are in the array', () => {
  const set = new LiveSet<Member>('place');
  const [a, b, c, d] = ['a', 'b', 'c', 'd'].map(member) as [Member, Member, Member, Member];
  for (const m of [a, b, c, d, a]) set.add(m);
  assert.equal(set.size, 4);
  assert.deepEqual(names(set), ['a', 'b', 'c', 'd']);
  // The first: the last moves into its place and keeps its own place right.
  assert.equal(set.delete(a), true);
  assert.equal(set.has(a), false);
  assert.equal(a.place, -1);
  assert.equal(set.has(d), true);
  assert.equal(set.delete(a), false);
  // The last, then one in the middle.
  assert.equal(set.delete(c), true);
  assert.equal(set.delete(d), true);
  assert.deepEqual(names(set), ['b']);
  set.add(a);
  assert.deepEqual(names(set), ['a', 'b']);
  assert.equal(set.size, 2);
});

test('a member of another set with the same place field is not taken for a member', () => {
  const one = new LiveSet<Member>('place');
  const other = new LiveSet<Member>('place');
  const [a, b] = [member('a'), member('b')];
  one.add(a);
  other.add(b);
  // b's place (0) is a's place in `one`.
  assert.equal(one.has(b), false);
  assert.equal(one.delete(b), false);
  assert.deepEqual(names(one), ['a']);
  // An object that never had the field (a test's stand-in) is no member either.
  assert.equal(one.has({ name: 'x' } as Member), false);
});

test('a loop over the members may add and remove: it goes over them as they were', () => {
  const set = new LiveSet<Member>('place');
  const all = ['a', 'b', 'c'].map(member);
  for (const m of all) set.add(m);
  const seen: string[] = [];
  for (const m of set) {
    seen.push(m.name);
    set.delete(m);
    set.add(member(`${m.name}2`));
  }
  assert.deepEqual(seen.sort(), ['a', 'b', 'c']);
  assert.deepEqual(names(set), ['a2', 'b2', 'c2']);
});

test('forEachFromLast visits each member once when the visit removes the member it is given', () => {
  const set = new LiveSet<Member>('place');
  const all = ['a', 'b', 'c', 'd', 'e'].map(member);
  for (const m of all) set.add(m);
  const seen: string[] = [];
  set.forEachFromLast((m) => {
    seen.push(m.name);
    if (m.name !== 'c') set.delete(m);
  });
  assert.deepEqual(seen.sort(), ['a', 'b', 'c', 'd', 'e']);
  assert.deepEqual(names(set), ['c']);
});

test('members that left are not moved to the old generation by young collections', () => {
  const set = new LiveSet<Member>('place');
  const churned = 300;
  const promoted = promotedBy(
    // A few long-lived members: the set's array is old after the full collections.
    () => ['x', 'y', 'z'].forEach((n) => set.add(member(n))),
    () => {
      // Each login's member comes and goes, with others around it (a few logins in flight).
      for (let i = 0; i < churned; i++) {
        const m: Member = { name: `m${i}`, place: -1, payload: payload(i) };
        set.add(m);
        const around = [member('p'), member('q'), member('r')];
        for (const o of around) set.add(o);
        for (const o of around) set.delete(o);
        set.delete(m);
      }
    },
  );
  assert.equal(set.size, 3);
  // A Set here moves every payload (9.6 MB); the set's own array and the young collections'
  // bookkeeping are a few KiB.
  assert.ok(promoted < (churned * PAYLOAD_BYTES) / 10, `${promoted} bytes moved to the old generation for ${churned} members of ${PAYLOAD_BYTES} bytes`);
});
