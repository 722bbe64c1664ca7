import assert from 'node:assert/strict';
import { test } from 'node:test';
import { normalizeUser } from '../../src/auth/directory.js';
import { escapeFilterValue, userFilter } from '../../src/auth/ldap.js';

test('LDAP filter values are escaped per RFC 4515', () => {
  assert.equal(escapeFilterValue('a*b'), 'a\\2ab');
  assert.equal(escapeFilterValue(')(uid=*'), '\\29\\28uid=\\2a');
  assert.equal(escapeFilterValue('back\\slash'), 'back\\5cslash');
  assert.equal(escapeFilterValue('nul\0'), 'nul\\00');
  assert.equal(userFilter('(&(objectClass=person)(|(uid={user})(mail={user})))', 'x*'), '(&(objectClass=person)(|(uid=x\\2a)(mail=x\\2a)))');
});

test('user names are normalised in one way', () => {
  assert.equal(normalizeUser('  Alice ', { lowercase: true }), 'alice');
  assert.equal(normalizeUser('Alice', { lowercase: false }), 'Alice');
  assert.equal(normalizeUser('   ', { lowercase: true }), null);
  assert.equal(normalizeUser('a\nb', { lowercase: true }), null);
  assert.equal(normalizeUser('x'.repeat(257), { lowercase: true }), null);
});
