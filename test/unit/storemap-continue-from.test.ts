// LdapStoreMapSource.continueFrom(): what a new LDAP store-map source takes over from the one a
// reload replaces (the map in force's entryCSNs, the server that answered last, the one found
// behind), and that its second call, as the holder puts it in place after its check read,
// leaves what that read found of its own servers: its readings are named by the server it
// answered from, and a good server must not be named as the one behind.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LdapStoreMapSource } from '../../src/routing/sources.js';

const P = 'ldap://127.0.0.1:3891';
const C = 'ldap://127.0.0.1:3892';

/** A source of ou=stores (or `baseDn`) on P and C; nothing is connected. */
function source(baseDn = 'ou=stores,dc=example,dc=org', urls: readonly string[] = [P, C]): LdapStoreMapSource {
  return new LdapStoreMapSource({ kind: 'ldap', urls: [...urls], bindDn: 'cn=reader', bindPassword: 'x', baseDn, pollIntervalMs: 1000, starttls: false, operationTimeoutMs: 1000 });
}

/** The private fields continueFrom() hands over. */
interface Handed {
  inForce: ReadonlyMap<string, string> | undefined;
  answered: string | undefined;
  behind: { readonly url: string } | undefined;
}
const fields = (s: LdapStoreMapSource): Handed => s as unknown as Handed;

test('a new source on the same base DN takes over the entryCSNs in force, the server that answered last and the one found behind; a second call keeps what its own read found', () => {
  const old = source();
  const csns = new Map([['cn=st1,ou=stores,dc=example,dc=org', '20261207000000.000000Z#000000#000#000000']]);
  Object.assign(fields(old), { inForce: csns, answered: C, behind: { url: C } });
  const fresh = source('OU=Stores,DC=example,DC=org');
  fresh.continueFrom(old);
  assert.equal(fields(fresh).inForce, csns);
  assert.equal(fields(fresh).answered, C);
  assert.equal(fields(fresh).behind?.url, C);

  // Its check read put C last and reached P, which gave a good map; then the holder puts it in place.
  Object.assign(fields(fresh), { answered: P, behind: undefined });
  const later = new Map(csns);
  fields(old).inForce = later;
  fresh.continueFrom(old);
  assert.equal(fields(fresh).inForce, later, 'the map in force as it stands when the source is put in place');
  assert.equal(fields(fresh).answered, P, 'named by the old source\'s server, not the one it reads');
});

test('a base DN widened to a parent takes over every entryCSN in force; one narrowed to a subtree, those within it', () => {
  const old = source();
  const st1 = 'cn=st1,ou=east,ou=stores,dc=example,dc=org';
  const st2 = 'cn=st2,ou=west,ou=stores,dc=example,dc=org';
  const csns = new Map([[st1, '20261207000000.000000Z#000000#000#000000'], [st2, '20261207000001.000000Z#000000#000#000000']]);
  Object.assign(fields(old), { inForce: csns, answered: C, behind: { url: C } });
  const wider = source('dc=example, dc=org');
  wider.continueFrom(old);
  assert.equal(fields(wider).inForce, csns, 'the same entries read from further up: still compared');
  assert.equal(fields(wider).answered, C);
  const narrower = source('OU=East,ou=stores,dc=example,dc=org');
  narrower.continueFrom(old);
  assert.deepEqual([...(fields(narrower).inForce ?? [])], [[st1, csns.get(st1)]], 'st2 is left out of the new map on purpose, not missing on a lagging server');
  assert.equal(fields(narrower).behind?.url, C);
});

test('a new source on another base DN, or whose urls do not list the servers, takes none of them over', () => {
  const old = source();
  Object.assign(fields(old), { inForce: new Map([['cn=st1,ou=stores,dc=example,dc=org', 'x']]), answered: C, behind: { url: C } });
  const other = source('ou=stores2,dc=example,dc=org');
  other.continueFrom(old);
  assert.equal(fields(other).inForce, undefined);
  assert.equal(fields(other).answered, undefined);
  // A DN whose text ends as the old one's does is not below it ('co', friendlyCountryName, is another attribute).
  const top = source('o=example');
  Object.assign(fields(top), { inForce: new Map([['cn=st1,o=example', 'x']]) });
  const sibling = source('co=example');
  sibling.continueFrom(top);
  assert.equal(fields(sibling).inForce, undefined);
  const moved = source(undefined, ['ldap://127.0.0.1:3893']);
  moved.continueFrom(old);
  assert.equal(fields(moved).inForce, fields(old).inForce, 'the same tree, read elsewhere: still compared');
  assert.equal(fields(moved).answered, undefined);
  assert.equal(fields(moved).behind, undefined);
});
