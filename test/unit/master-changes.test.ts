// Which store-map edits move a store's sessions: another master, or the master slot pointed at
// another server for some protocol. An edit that moves no session's server moves nothing.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { masterChanges } from '../../src/routing/holder.js';
import { StoreMap, sameServer } from '../../src/routing/storemap.js';
import type { Slot, Store } from '../../src/routing/storemap.js';

function mapOf(master: string, slots: Record<string, Omit<Slot, 'name' | 'store'>>): StoreMap {
  const store = { name: 's1', currentMaster: master, preferredMaster: master, slots: new Map(Object.entries(slots).map(([name, slot]) => [name, { name, store: 's1', ...slot }])) } as unknown as Store;
  return new StoreMap(1, new Map([['s1', store]]));
}

test('the master slot: renamed or given another host moves every protocol; a changed port moves its protocol; an added port moves nothing', () => {
  const before = mapOf('a', { a: { host: '10.0.0.1', imapPort: 143, pop3Port: 110 }, b: { host: '10.0.0.2', imapPort: 143, pop3Port: 110 } });
  assert.deepEqual(masterChanges(before, mapOf('b', { a: { host: '10.0.0.1', imapPort: 143, pop3Port: 110 }, b: { host: '10.0.0.2', imapPort: 143, pop3Port: 110 } })), [{ store: 's1', from: 'a', to: 'b' }]);
  assert.deepEqual(masterChanges(before, mapOf('a', { a: { host: '10.0.0.9', imapPort: 143, pop3Port: 110 } })), [{ store: 's1', from: 'a', to: 'a' }]);
  assert.deepEqual(masterChanges(before, mapOf('a', { a: { host: '10.0.0.1', imapPort: 143, pop3Port: 1110 } })), [{ store: 's1', from: 'a', to: 'a', protocols: ['pop3'] }]);
  assert.deepEqual(masterChanges(before, mapOf('a', { a: { host: '10.0.0.1', imapPort: 143, pop3Port: 110, sievePort: 4190 } })), [], 'a sieve port added');
  assert.deepEqual(masterChanges(before, mapOf('a', { a: { host: '10.0.0.1', imapPort: 143, pop3Port: 110 }, b: { host: '10.0.0.3', imapPort: 143 } })), [], 'another slot changed');
  assert.deepEqual(masterChanges(before, new StoreMap(2, new Map())), [{ store: 's1', from: 'a', to: null }]);
});

test('a login that completed on the master is kept unless its own protocol moved', () => {
  const slot: Slot = { name: 'a', store: 's1', host: '10.0.0.1', imapPort: 143, pop3Port: 110 };
  assert.equal(sameServer(slot, { ...slot, sievePort: 4190 }, 'imap'), true);
  assert.equal(sameServer(slot, { ...slot, pop3Port: 1110 }, 'imap'), true);
  assert.equal(sameServer(slot, { ...slot, pop3Port: 1110 }, 'pop3'), false);
  assert.equal(sameServer(slot, { ...slot, host: '10.0.0.9' }, 'imap'), false);
});
