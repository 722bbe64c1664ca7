// masterLoginOf(): which logins name another user's mailbox (a master login) and whose, with
// directory.master_user_filter set: a SASL authzid other than the authcid, or `target*staff`
// split at the FIRST separator, as Dovecot splits at auth_master_user_separator; each side
// normalised alone. Without the filter nothing is a master login (today's behaviour).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { masterLoginOf } from '../../src/session/session.js';

const ON = { masterUserFilter: '(employeeType=mail-helpdesk)', masterUserSeparator: '*' };
const USERNAMES = { lowercase: true, domain: 'keep' as const, localDomains: [] };

test('without master_user_filter no login is a master login: authzid and separator are as today', () => {
  assert.equal(masterLoginOf({ user: 'alice*helpdesk1' }, {}, USERNAMES), undefined);
  assert.equal(masterLoginOf({ user: 'helpdesk1', authzid: 'alice' }, {}, USERNAMES), undefined);
});

test('the separator form splits at the first separator: the target before it, the staff member after, each normalised', () => {
  assert.deepEqual(masterLoginOf({ user: 'alice*helpdesk1' }, ON, USERNAMES), { target: 'alice', staff: 'helpdesk1' });
  assert.deepEqual(masterLoginOf({ user: ' Alice * HelpDesk1 ' }, ON, USERNAMES), { target: 'alice', staff: 'helpdesk1' });
  assert.deepEqual(masterLoginOf({ user: 'alice*help*desk' }, ON, USERNAMES), { target: 'alice', staff: 'help*desk' }, 'Dovecot: strchr, the first');
  assert.deepEqual(masterLoginOf({ user: 'alice@example.com*helpdesk1@example.com' }, ON, USERNAMES), { target: 'alice@example.com', staff: 'helpdesk1@example.com' });
  assert.deepEqual(masterLoginOf({ user: 'alice%helpdesk1' }, { ...ON, masterUserSeparator: '%' }, USERNAMES), { target: 'alice', staff: 'helpdesk1' });
  assert.equal(masterLoginOf({ user: 'alice' }, ON, USERNAMES), undefined);
  // An empty side is no user name: the session refuses it (INVALID_USERNAME).
  assert.deepEqual(masterLoginOf({ user: '*helpdesk1' }, ON, USERNAMES), { target: null, staff: 'helpdesk1' });
  assert.deepEqual(masterLoginOf({ user: 'alice*' }, ON, USERNAMES), { target: 'alice', staff: null });
  // With usernames.domain qualify, each side gets the domain.
  assert.deepEqual(masterLoginOf({ user: 'alice*helpdesk1' }, ON, { lowercase: true, domain: 'qualify', localDomains: ['example.com'] }), { target: 'alice@example.com', staff: 'helpdesk1@example.com' });
});

test('a separator of null: only an authzid names a target, and a name holding * is an ordinary name', () => {
  assert.equal(masterLoginOf({ user: 'alice*helpdesk1' }, { ...ON, masterUserSeparator: null }, USERNAMES), undefined);
  assert.deepEqual(masterLoginOf({ user: 'helpdesk1', authzid: 'alice' }, { ...ON, masterUserSeparator: null }, USERNAMES), { target: 'alice', staff: 'helpdesk1' });
});

test('an authzid other than the authcid names the target, the authcid taken whole; the same one is an ordinary login', () => {
  assert.deepEqual(masterLoginOf({ user: 'HelpDesk1', authzid: 'Alice' }, ON, USERNAMES), { target: 'alice', staff: 'helpdesk1' });
  assert.deepEqual(masterLoginOf({ user: 'bob*helpdesk1', authzid: 'alice' }, ON, USERNAMES), { target: 'alice', staff: 'bob*helpdesk1' }, 'not split: one form per login');
  assert.equal(masterLoginOf({ user: 'alice', authzid: 'ALICE' }, ON, USERNAMES), undefined);
  assert.deepEqual(masterLoginOf({ user: 'helpdesk1', authzid: 'al\u0000ice' }, ON, USERNAMES), { target: null, staff: 'helpdesk1' });
});
