// The identity mailfront asserts to a backend in the trust modes: never the proxy account or a
// backend administrator (backend.reserved_users), whatever the case; and how the option is read.
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { assertedIdentityProblem } from '../../src/backend/connect.js';
import { ConfigError, loadConfig, loadStoreMap } from '../../src/config/load.js';
import { DEFAULT_RESERVED_USERS } from '../../src/config/schema.js';

const CYRUS = { loginMode: 'sasl-authzid', proxyUser: 'ProxyAdmin', reservedUsers: DEFAULT_RESERVED_USERS, masterUserSeparator: '*' } as const;

test('sasl-authzid and master-user never assert the proxy account or a reserved name, in any case', () => {
  for (const loginMode of ['sasl-authzid', 'master-user'] as const) {
    const config = { ...CYRUS, loginMode };
    for (const user of ['cyrus', 'CYRUS', 'Cyrus', 'root', 'admin', 'proxyadmin', 'PROXYADMIN', 'ProxyAdmin']) {
      assert.notEqual(assertedIdentityProblem(user, config), null, `${loginMode} ${user}`);
    }
    assert.match(assertedIdentityProblem('proxyadmin', config) ?? '', /backend\.proxy_user/);
    assert.match(assertedIdentityProblem('cyrus', config) ?? '', /backend\.reserved_users/);
    for (const user of ['carol', 'cyrus2', 'cyrus@example.org', 'proxyadmin2', 'administrator']) {
      assert.equal(assertedIdentityProblem(user, config), null, `${loginMode} ${user}`);
    }
  }
  // An empty list leaves the proxy account reserved.
  assert.notEqual(assertedIdentityProblem('proxyadmin', { ...CYRUS, reservedUsers: [] }), null);
  assert.equal(assertedIdentityProblem('cyrus', { ...CYRUS, reservedUsers: [] }), null);
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
  const dir = mkdtempSync(join(tmpdir(), 'mf-identity-'));
  writeFileSync(join(dir, 'mf.yaml'), `${BASE}${backend}`);
  writeFileSync(join(dir, 'stores.yaml'), stores);
  return loadConfig(join(dir, 'mf.yaml'));
}

test('backend.reserved_users: defaults to cyrus, root and admin; a list replaces it, lower-cased; a store inherits it or sets its own', () => {
  assert.deepEqual(load('').backend.reservedUsers, ['cyrus', 'root', 'admin']);
  assert.deepEqual(load('backend: { reserved_users: [Cyrus, " mailadmin "] }\n').backend.reservedUsers, ['cyrus', 'mailadmin']);
  assert.deepEqual(load('backend: { reserved_users: [] }\n').backend.reservedUsers, []);
  const stores = `
stores:
  a: { current_master: s1, slots: { s1: { host: 127.0.0.1, imap_port: 1430 } } }
  b: { current_master: s2, slots: { s2: { host: 127.0.0.1, imap_port: 1431 } }, backend: { reserved_users: [sysadmin] } }
`;
  const dir = mkdtempSync(join(tmpdir(), 'mf-identity-'));
  writeFileSync(join(dir, 'mf.yaml'), `${BASE}backend: { reserved_users: [cyrus, MailAdmin] }\n`);
  writeFileSync(join(dir, 'stores.yaml'), stores);
  const config = loadConfig(join(dir, 'mf.yaml'));
  const map = loadStoreMap(join(dir, 'stores.yaml'), 1, config);
  assert.deepEqual(map.stores.get('a')?.backend.reservedUsers, ['cyrus', 'mailadmin']);
  assert.deepEqual(map.stores.get('b')?.backend.reservedUsers, ['sysadmin']);
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
