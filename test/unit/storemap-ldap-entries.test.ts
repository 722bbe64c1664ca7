// Store and slot entries from LDAP as a store-map document: one store name on two entries (cn,
// which LDAP matches regardless of case) makes no document, whatever the order of the answer.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { storeEntriesToDocument } from '../../src/routing/sources.js';

const BASE = 'ou=stores,dc=example,dc=org';
const store = (dn: string, cn: string, master: string): Record<string, unknown> & { dn: string } => ({ dn, objectClass: ['top', 'mailfrontStore'], cn, mailfrontCurrentMaster: master });
const slot = (dn: string, cn: string): Record<string, unknown> & { dn: string } => ({ dn, objectClass: 'mailfrontSlot', cn, mailfrontHost: '127.0.0.1', mailfrontImapPort: '143' });

test('store and slot entries make a document; each slot belongs to the store entry above it', () => {
  const document = storeEntriesToDocument([store(`cn=alpha,${BASE}`, 'alpha', 'a1'), slot(`cn=a1,cn=alpha,${BASE}`, 'a1'), slot(`cn=a2, cn=alpha,${BASE}`, 'a2')]);
  assert.deepEqual(document, { stores: { alpha: { current_master: 'a1', slots: { a1: { host: '127.0.0.1', imap_port: 143 }, a2: { host: '127.0.0.1', imap_port: 143 } } } } });
});

test('one store name on two entries is rejected, naming both, in one message whatever their order', () => {
  const one = store(`cn=alpha,${BASE}`, 'alpha', 'a1');
  const other = store(`cn=alpha,ou=east,${BASE}`, 'alpha', 'a2');
  const entries = [one, slot(`cn=a1,cn=alpha,${BASE}`, 'a1'), other, slot(`cn=a2,cn=alpha,ou=east,${BASE}`, 'a2')];
  const messages = [entries, [...entries].reverse()].map((list) => {
    try {
      storeEntriesToDocument(list);
      return 'accepted';
    } catch (error) {
      assert.equal((error as { code?: string }).code, 'STOREMAP_DUPLICATE_STORE');
      return (error as Error).message;
    }
  });
  assert.ok(messages[0]!.includes(`store "alpha" has 2 entries: cn=alpha,ou=east,${BASE} and cn=alpha,${BASE}`), messages[0]);
  assert.equal(messages[1], messages[0]);
});

test('names that differ only in case are one name to LDAP: rejected too', () => {
  assert.throws(() => storeEntriesToDocument([store(`cn=Alpha,${BASE}`, 'Alpha', 'a1'), store(`cn=alpha,ou=east,${BASE}`, 'alpha', 'a2')]), /store "alpha" has 2 entries: cn=alpha,ou=east,ou=stores,dc=example,dc=org and cn=Alpha,ou=stores/);
});
