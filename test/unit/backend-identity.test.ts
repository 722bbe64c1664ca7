// The identity mailfront asserts to a backend in the trust modes: never the proxy account or a
// backend administrator (backend.reserved_users), whatever the case or domain; and how the option
// is read (its default depends on the login mode).
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { assertedIdentityProblem } from '../../src/backend/connect.js';
import { ConfigError, loadConfig, loadStoreMap } from '../../src/config/load.js';
import { reservedUsersOf } from '../../src/config/schema.js';
import { tmpDir } from '../integration/servers/tmp.js';

const CYRUS = { loginMode: 'sasl-authzid', proxyUser: 'ProxyAdmin', reservedUsers: ['cyrus', 'root', 'admin'], masterUserSeparator: '*' } as const;

test('sasl-authzid and master-user never assert the proxy account or a reserved name, in any case', () => {
  for (const loginMode of ['sasl-authzid', 'master-user'] as const) {
    const config = { ...CYRUS, loginMode };
    for (const user of ['cyrus', 'CYRUS', 'Cyrus', 'root', 'admin', 'proxyadmin', 'PROXYADMIN', 'ProxyAdmin']) {
      assert.notEqual(assertedIdentityProblem(user, config), null, `${loginMode} ${user}`);
    }
    assert.match(assertedIdentityProblem('proxyadmin', config) ?? '', /backend\.proxy_user/);
    assert.match(assertedIdentityProblem('cyrus', config) ?? '', /backend\.reserved_users/);
    for (const user of ['carol', 'cyrus2', 'carol@example.org', 'proxyadmin2', 'administrator', 'root.cyrus', 'admin-cyrus@example.org']) {
      assert.equal(assertedIdentityProblem(user, config), null, `${loginMode} ${user}`);
    }
  }
  // An empty list leaves the proxy account reserved.
  assert.notEqual(assertedIdentityProblem('proxyadmin', { ...CYRUS, reservedUsers: [] }), null);
  assert.equal(assertedIdentityProblem('cyrus', { ...CYRUS, reservedUsers: [] }), null);
});

test('an entry without @ is reserved in every domain (Cyrus virtdomains drops its defaultdomain, and reads % as @); one with @ only as written', () => {
  const config = { ...CYRUS, reservedUsers: ['cyrus', 'mailadmin@example.org'] };
  for (const user of ['cyrus@example.com', 'Cyrus@Example.COM', 'cyrus%example.com', 'cyrus%a@example.com', 'cyrus@', 'MailAdmin@example.org', 'proxyadmin@example.com', 'proxyadmin%example.com']) {
    assert.notEqual(assertedIdentityProblem(user, config), null, user);
  }
  assert.match(assertedIdentityProblem('cyrus@example.com', config) ?? '', /backend\.reserved_users/);
  assert.match(assertedIdentityProblem('proxyadmin@example.com', config) ?? '', /backend\.proxy_user/);
  for (const user of ['carol@example.com', 'mailadmin', 'mailadmin@example.com', 'cyrus.x@example.com', 'x@cyrus', 'x%cyrus']) {
    assert.equal(assertedIdentityProblem(user, config), null, user);
  }
  // Cyrus reads a '%' as '@' in a name without '@' (the last one): an entry with '@' is that name too.
  for (const user of ['mailadmin%example.org', 'MailAdmin%Example.ORG']) {
    assert.match(assertedIdentityProblem(user, config) ?? '', /backend\.reserved_users/, user);
  }
  for (const user of ['mailadmin%example.org@example.org', 'mailadmin%x%example.org', 'mailadmin%example.com']) {
    assert.equal(assertedIdentityProblem(user, config), null, user);
  }
  // A proxy account named with its domain is reserved as written.
  assert.notEqual(assertedIdentityProblem('proxy@example.com', { ...config, proxyUser: 'proxy@example.com' }), null);
  assert.equal(assertedIdentityProblem('proxy@example.org', { ...config, proxyUser: 'proxy@example.com' }), null);
  assert.notEqual(assertedIdentityProblem('proxy%example.com', { ...config, proxyUser: 'proxy@example.com' }), null);
});

test('not set, reserved_users is [cyrus] in sasl-authzid (Cyrus) and empty in master-user (Dovecot: admin and root are ordinary mailboxes); the proxy account is reserved in both', () => {
  const { reservedUsers: _, ...unset } = CYRUS;
  assert.match(assertedIdentityProblem('cyrus@example.com', unset) ?? '', /backend\.reserved_users/);
  for (const user of ['root', 'admin', 'carol']) assert.equal(assertedIdentityProblem(user, unset), null, user);
  const dovecot = { ...unset, loginMode: 'master-user' } as const;
  for (const user of ['cyrus', 'root', 'admin', 'admin@example.com']) assert.equal(assertedIdentityProblem(user, dovecot), null, user);
  assert.match(assertedIdentityProblem('proxyadmin', dovecot) ?? '', /backend\.proxy_user/);
});

test('master-user never sends a name that holds the separator, which Dovecot would split it at', () => {
  const dovecot = { ...CYRUS, loginMode: 'master-user' } as const;
  for (const user of ['alice*bob', '*', 'alice*']) assert.match(assertedIdentityProblem(user, dovecot) ?? '', /master_user_separator "\*"/, user);
  assert.equal(assertedIdentityProblem('alice%bob', dovecot), null);
  assert.notEqual(assertedIdentityProblem('alice%bob', { ...dovecot, masterUserSeparator: '%' }), null);
  // sasl-authzid and replay send the name as one field: the separator means nothing there.
  assert.equal(assertedIdentityProblem('alice*bob', CYRUS), null);
  assert.equal(assertedIdentityProblem('alice*bob', { ...CYRUS, loginMode: 'replay' }), null);
});

test('backend.master_user_separator must be one character, as Dovecot\'s auth_master_user_separator is', () => {
  assert.equal(load('').backend.masterUserSeparator, '*');
  assert.equal(load('backend: { master_user_separator: "%" }\n').backend.masterUserSeparator, '%');
  for (const bad of ['"**"', '""', '" "', '"é"', '3']) {
    try {
      load(`backend: { master_user_separator: ${bad} }\n`);
      assert.fail(`accepted ${bad}`);
    } catch (error) {
      assert.ok(error instanceof ConfigError, String(error));
      assert.deepEqual(error.issues.map((i) => i.path), ['backend.master_user_separator'], bad);
      assert.match(error.issues[0]?.expected ?? '', /one printable ASCII character/);
    }
  }
});

test('replay asserts nothing: the backend checks the user\'s own password, so every name may go', () => {
  for (const user of ['cyrus', 'root', 'proxyadmin']) assert.equal(assertedIdentityProblem(user, { ...CYRUS, loginMode: 'replay' }), null);
});

const BASE = `
listeners:
  - { protocol: imap, host: 127.0.0.1, port: 1143, tls: none, plaintext_without_tls: true }
directory: { urls: [ldap://127.0.0.1:389], bind_dn: cn=x, bind_password: p, base_dn: dc=x }
store_map: { file: stores.yaml }
`;

function load(backend: string, stores = 'stores: {}\n'): ReturnType<typeof loadConfig> {
  const dir = tmpDir('identity').path;
  writeFileSync(join(dir, 'mf.yaml'), `${BASE}${backend}`);
  writeFileSync(join(dir, 'stores.yaml'), stores);
  return loadConfig(join(dir, 'mf.yaml'));
}

test('backend.reserved_users: not set, the login mode\'s default; a list replaces it, lower-cased; a profile or store inherits it or sets its own', () => {
  assert.equal(load('').backend.reservedUsers, undefined);
  assert.deepEqual(reservedUsersOf(load('backend: { login_mode: sasl-authzid, proxy_user: p, proxy_password: pw }\n').backend), ['cyrus']);
  assert.deepEqual(reservedUsersOf(load('backend: { login_mode: master-user, proxy_user: p, proxy_password: pw }\n').backend), []);
  assert.deepEqual(load('backend: { reserved_users: [Cyrus, " mailadmin "] }\n').backend.reservedUsers, ['cyrus', 'mailadmin']);
  assert.deepEqual(load('backend: { reserved_users: [] }\n').backend.reservedUsers, []);
  const stores = `
stores:
  a: { current_master: s1, slots: { s1: { host: 127.0.0.1, imap_port: 1430 } } }
  b: { current_master: s2, slots: { s2: { host: 127.0.0.1, imap_port: 1431 } }, backend: { reserved_users: [sysadmin] } }
`;
  const dir = tmpDir('identity').path;
  writeFileSync(join(dir, 'mf.yaml'), `${BASE}backend: { reserved_users: [cyrus, MailAdmin] }\n`);
  writeFileSync(join(dir, 'stores.yaml'), stores);
  const config = loadConfig(join(dir, 'mf.yaml'));
  const map = loadStoreMap(join(dir, 'stores.yaml'), 1, config);
  assert.deepEqual(map.stores.get('a')?.backend.reservedUsers, ['cyrus', 'mailadmin']);
  assert.deepEqual(map.stores.get('b')?.backend.reservedUsers, ['sysadmin']);
  // Not set anywhere: a store that turns to sasl-authzid gets Cyrus's default, one on master-user Dovecot's.
  const modes = `
stores:
  c: { current_master: s1, slots: { s1: { host: 127.0.0.1, imap_port: 1430 } }, backend: { login_mode: sasl-authzid } }
  d: { current_master: s2, slots: { s2: { host: 127.0.0.1, imap_port: 1431 } } }
`;
  writeFileSync(join(dir, 'mf.yaml'), `${BASE}backend: { login_mode: master-user, proxy_user: p, proxy_password: pw }\n`);
  writeFileSync(join(dir, 'stores.yaml'), modes);
  const byMode = loadStoreMap(join(dir, 'stores.yaml'), 1, loadConfig(join(dir, 'mf.yaml')));
  assert.deepEqual(reservedUsersOf(byMode.stores.get('c')!.backend), ['cyrus']);
  assert.deepEqual(reservedUsersOf(byMode.stores.get('d')!.backend), []);
  // A list set for another mode is not inherited by a store that changes the mode: a Dovecot-wide
  // list ([admin], or []) left a Cyrus store's cyrus unreserved, a directory user of that name
  // asserted as Cyrus's admin. A store keeping the mode inherits the list.
  writeFileSync(join(dir, 'mf.yaml'), `${BASE}backend: { login_mode: master-user, proxy_user: p, proxy_password: pw, reserved_users: [admin] }\n`);
  const listed = loadStoreMap(join(dir, 'stores.yaml'), 1, loadConfig(join(dir, 'mf.yaml')));
  assert.deepEqual(reservedUsersOf(listed.stores.get('c')!.backend), ['cyrus']);
  assert.deepEqual(reservedUsersOf(listed.stores.get('d')!.backend), ['admin']);
});

test('backend.reserved_users that is not a list of names is an error naming the path', () => {
  for (const bad of ['{ reserved_users: [cyrus, 3] }', '{ reserved_users: [""] }', '{ reserved_users: { a: 1 } }']) {
    try {
      load(`backend: ${bad}\n`);
      assert.fail(`accepted ${bad}`);
    } catch (error) {
      assert.ok(error instanceof ConfigError, String(error));
      assert.deepEqual(error.issues.map((i) => i.path), ['backend.reserved_users'], bad);
    }
  }
});
