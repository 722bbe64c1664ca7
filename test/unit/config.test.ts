import assert from 'node:assert/strict';
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { ConfigError, loadAdminAccess, loadConfig, loadStoreMap } from '../../src/config/load.js';
import { filterLoginAttribute, loginAttributeOf } from '../../src/config/schema.js';
import { IssueList, describe, urlShown } from '../../src/config/validate.js';
import { tmpDir } from '../integration/servers/tmp.js';

/** A directory with `files` in it, removed when the process exits. */
function writeTemp(files: Record<string, string>): string {
  const dir = tmpDir('config').path;
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  return dir;
}

/** Runs `fn`, which must throw a ConfigError, and returns that error. */
function configErrorOf(fn: () => unknown): ConfigError {
  try {
    fn();
  } catch (error) {
    assert.ok(error instanceof ConfigError, `expected a ConfigError, got ${String(error)}`);
    return error;
  }
  assert.fail('expected a ConfigError, nothing was thrown');
}

const GOOD = `
listeners:
  - { protocol: imap, host: 127.0.0.1, port: 1143, tls: starttls, certificate: { cert: cert.pem, key: key.pem } }
directory:
  urls: [ldap://127.0.0.1:389]
  bind_dn: cn=mailfront,dc=example,dc=org
  bind_password_file: ldap.secret
  base_dn: ou=people,dc=example,dc=org
store_map: { file: stores.yaml }
`;

const STORES = `
stores:
  store1:
    current_master: slot1
    slots:
      slot1: { host: 127.0.0.1, imap_port: 1430 }
      slot2: { host: 127.0.0.1, imap_port: 1431 }
`;

test('a good config loads with defaults, secrets from files, and is frozen', () => {
  const dir = writeTemp({ 'mf.yaml': GOOD, 'ldap.secret': 's3cret\n', 'stores.yaml': STORES });
  const config = loadConfig(join(dir, 'mf.yaml'));
  assert.equal(config.directory.bindPassword, 's3cret');
  assert.deepEqual(config.storeMap, { kind: 'file', file: join(dir, 'stores.yaml'), watch: true, baseDir: dir });
  assert.equal(config.backend.loginMode, 'replay');
  assert.equal(config.session.authFailureDelayMs, 2000);
  assert.equal(config.directory.searchConnections, 2);
  assert.equal(config.listeners[0]?.plaintextWithoutTls, false);
  assert.ok(Object.isFrozen(config.listeners[0]));
  const map = loadStoreMap(join(dir, 'stores.yaml'), 7, config);
  assert.equal(map.version, 7);
  assert.equal(map.currentMaster('store1').slot.name, 'slot1');
  assert.equal(map.stores.get('store1')?.preferredMaster, 'slot1');
});

test('directory.login_attribute is the one attribute user_filter compares {user} with unless set, and must be an attribute name', () => {
  const dir = writeTemp({ 'mf.yaml': GOOD, 'ldap.secret': 's3cret\n', 'stores.yaml': STORES });
  const config = loadConfig(join(dir, 'mf.yaml'));
  assert.equal(config.directory.loginAttribute, undefined);
  assert.equal(loginAttributeOf(config.directory), 'uid');
  writeFileSync(join(dir, 'ad.yaml'), GOOD.replace('base_dn: ou=people', 'login_attribute: sAMAccountName\n  base_dn: ou=people'));
  assert.equal(loginAttributeOf(loadConfig(join(dir, 'ad.yaml')).directory), 'sAMAccountName');
  for (const bad of ['"uid;binary"', '"(uid)"', '"1uid"', '""']) {
    writeFileSync(join(dir, 'bad.yaml'), GOOD.replace('base_dn: ou=people', `login_attribute: ${bad}\n  base_dn: ou=people`));
    const error = configErrorOf(() => loadConfig(join(dir, 'bad.yaml')));
    assert.match(error.message, /directory\.login_attribute/, bad);
  }
  // A deployment whose users log in with their address, and whose backend knows them by it, goes on as before.
  assert.equal(filterLoginAttribute('(&(objectClass=inetOrgPerson)(mail={user}))'), 'mail');
  assert.equal(filterLoginAttribute('(&(objectClass=user)(|(sAMAccountName={user})(SAMACCOUNTNAME={user})))'), 'sAMAccountName');
  // An alias may match, or {user} is no equality: nothing to infer.
  assert.equal(filterLoginAttribute('(|(uid={user})(mail={user}))'), undefined);
  assert.equal(filterLoginAttribute('(&(objectClass=inetOrgPerson)(uid={user}*))'), undefined);
  assert.equal(filterLoginAttribute('(&(uid={user})(description=*{user}*))'), undefined);
});

test('a login mode that asserts the user\'s name needs directory.login_attribute when user_filter names no one attribute', () => {
  const aliases = GOOD.replace('base_dn: ou=people', 'user_filter: "(|(uid={user})(mail={user}))"\n  base_dn: ou=people');
  const dir = writeTemp({ 'mf.yaml': aliases, 'ldap.secret': 's3cret\n', 'proxy.secret': 'p\n', 'stores.yaml': STORES });
  // replay: the backend checks the password against the name typed.
  assert.equal(loginAttributeOf(loadConfig(join(dir, 'mf.yaml')).directory), undefined);
  writeFileSync(join(dir, 'trust.yaml'), `${aliases}\nbackend:\n  login_mode: master-user\n  proxy_user: mfproxy\n  proxy_password_file: proxy.secret\n`);
  const error = configErrorOf(() => loadConfig(join(dir, 'trust.yaml')));
  assert.match(error.message, /directory\.login_attribute: expected the attribute holding the name the backend knows users by: backend\.login_mode "master-user"/);
  writeFileSync(join(dir, 'set.yaml'), `${aliases.replace('base_dn: ou=people', 'login_attribute: uid\n  base_dn: ou=people')}\nbackend:\n  login_mode: master-user\n  proxy_user: mfproxy\n  proxy_password_file: proxy.secret\n`);
  assert.equal(loginAttributeOf(loadConfig(join(dir, 'set.yaml')).directory), 'uid');
});

test('every config problem is reported at once, each with its path and what was expected', () => {
  const dir = writeTemp({
    'bad.yaml': `
listeners:
  - { protocol: smtp, host: localhost, port: 70000, tls: implicit }
  - { protocol: imap, host: 127.0.0.1, port: 143, tls: none, colour: blue }
directory:
  urls: [http://x]
  bind_dn: cn=x
  bind_password: p
  base_dn: dc=x
  user_filter: uid=%u
  search_connections: 0
backend: { login_mode: master-user }
session: { preauth_timeout_ms: -5 }
`,
  });
  const error = configErrorOf(() => loadConfig(join(dir, 'bad.yaml')));
  const paths = error.issues.map((i) => i.path);
  for (const expected of [
    'listeners[0].protocol',
    'listeners[0].host',
    'listeners[0].port',
    'listeners[0].certificate',
    'listeners[1].colour',
    'directory.urls[0]',
    'directory.user_filter',
    'directory.search_connections',
    'store_map',
    'backend.proxy_user',
    'backend.proxy_password',
    'session.preauth_timeout_ms',
  ]) {
    assert.ok(paths.includes(expected), `missing issue for ${expected}: ${paths.join(', ')}`);
  }
  const port = error.issues.find((i) => i.path === 'listeners[0].port');
  assert.equal(port?.expected, 'an integer from 1 to 65535');
  assert.match(error.message, /listeners\[0\]\.port: expected an integer from 1 to 65535, found number 70000/);
  assert.match(error.message, /directory\.search_connections: expected an integer from 1 to 64, found number 0/);
});

test('listener names are unique: two listeners on one port of two addresses need names of their own', () => {
  const listener = '  - { protocol: imap, host: 127.0.0.1, port: 1143, tls: starttls, certificate: { cert: cert.pem, key: key.pem } }';
  const twoHomes = GOOD.replace(listener, `${listener}\n${listener.replace('127.0.0.1', '127.0.0.2')}`);
  const dir = writeTemp({ 'mf.yaml': twoHomes, 'named.yaml': twoHomes.replace('host: 127.0.0.2,', 'name: imap-second, host: 127.0.0.2,'), 'ldap.secret': 's3cret\n' });
  const error = configErrorOf(() => loadConfig(join(dir, 'mf.yaml')));
  assert.match(error.message, /listeners\[1\]\.name: expected a name no other listener has \(listeners\[0\] has it; the default name is <protocol>-<port>, so listeners on one port need names of their own\), found "imap-1143"/);
  assert.deepEqual(loadConfig(join(dir, 'named.yaml')).listeners.map((l) => l.name), ['imap-1143', 'imap-second']);
});

test('listeners (and the HTTP listener) cannot share a port where one address covers the other: a wildcard, or an IPv4-mapped twin', () => {
  const dir = writeTemp({
    'ldap.secret': 'x',
    'mf.yaml': `
listeners:
  - { name: any4, protocol: imap, host: 0.0.0.0, port: 1143, tls: none, plaintext_without_tls: true }
  - { name: loop4, protocol: imap, host: 127.0.0.1, port: 1143, tls: none, plaintext_without_tls: true }
  - { name: any6, protocol: imap, host: "::", port: 1143, tls: none, plaintext_without_tls: true }
  - { name: mapped, protocol: pop3, host: "::ffff:127.0.0.1", port: 1110, tls: none, plaintext_without_tls: true }
  - { name: plain, protocol: pop3, host: 127.0.0.1, port: 1110, tls: none, plaintext_without_tls: true }
  - { name: loop6, protocol: pop3, host: "::1", port: 1110, tls: none, plaintext_without_tls: true }
  - { name: loop6-sieve, protocol: managesieve, host: "::1", port: 4190, tls: none, plaintext_without_tls: true }
  - { name: any4-sieve, protocol: managesieve, host: 0.0.0.0, port: 4190, tls: none, plaintext_without_tls: true }
http: { host: 127.0.0.1, port: 1110 }
directory: { urls: [ldap://127.0.0.1], bind_dn: cn=x, bind_password_file: ldap.secret, base_dn: dc=x }
store_map: { file: stores.yaml }
`,
  });
  const error = configErrorOf(() => loadConfig(join(dir, 'mf.yaml')));
  assert.deepEqual(
    error.issues.filter((i) => i.path.endsWith('.port')).map((i) => `${i.path}: expected ${i.expected}, found ${i.found}`),
    [
      'listeners[1].port: expected an address and port no other listener uses (listeners[0] has 0.0.0.0:1143, which takes port 1143 on every IPv4 address), found "127.0.0.1:1143"',
      'listeners[2].port: expected an address and port no other listener uses (listeners[0] has 0.0.0.0:1143, and :: would take port 1143 on every IPv6 address and, dual-stack, every IPv4 address), found "[::]:1143"',
      'listeners[4].port: expected an address and port no other listener uses (listeners[3] has it), found "127.0.0.1:1110"',
      'http.port: expected an address and port no other listener uses (listeners[3] has it), found "127.0.0.1:1110"',
    ],
  );
  // ::1 and 127.0.0.1 are two addresses, and 0.0.0.0 covers IPv4 addresses only.
  assert.deepEqual(error.issues.map((i) => i.path).filter((p) => !p.endsWith('.port')), [], error.message);
});

test('a listener whose host or port had an issue is not also reported as a duplicate of another (its stand-in address and default name are not its own)', () => {
  const dir = writeTemp({
    'mf.yaml': `
listeners:
  - { protocol: imap, host: 127.0.0.1, port: "143", tls: none, plaintext_without_tls: true }
  - { protocol: imap, host: 127.0.0.1, port: 70000, tls: none, plaintext_without_tls: true }
  - { name: bad-host, protocol: pop3, host: 12, port: 110, tls: none, plaintext_without_tls: true }
  - { name: pop3, protocol: pop3, host: 127.0.0.1, port: 110, tls: none, plaintext_without_tls: true }
directory: { urls: [ldap://127.0.0.1], bind_dn: cn=x, bind_password: x, base_dn: dc=x }
store_map: { file: stores.yaml }
`,
  });
  const error = configErrorOf(() => loadConfig(join(dir, 'mf.yaml')));
  assert.deepEqual(
    error.issues.map((i) => `${i.path}: expected ${i.expected}, found ${i.found}`),
    [
      'listeners[0].port: expected an integer from 1 to 65535, found "143"',
      'listeners[1].port: expected an integer from 1 to 65535, found number 70000',
      'listeners[2].host: expected a non-empty string, found number 12',
    ],
  );
});

test('a listener\'s proxy_protocol.trusted_networks refuses a block with host bits set in the words the top-level trusted_networks uses', () => {
  const dir = writeTemp({
    'mf.yaml': `
listeners:
  - { name: imap, protocol: imap, host: 127.0.0.1, port: 1143, tls: none, plaintext_without_tls: true, proxy_protocol: { trusted_networks: [10.0.0.1/8] } }
trusted_networks: [10.0.0.1/8]
directory: { urls: [ldap://127.0.0.1], bind_dn: cn=x, bind_password: x, base_dn: dc=x }
store_map: { file: stores.yaml }
`,
  });
  const error = configErrorOf(() => loadConfig(join(dir, 'mf.yaml')));
  assert.deepEqual(
    error.issues.map((i) => `${i.path}: expected ${i.expected}, found ${i.found}`),
    [
      'listeners[0].proxy_protocol.trusted_networks[0]: expected an address block such as 10.0.0.0/8 or 2001:db8::/32, without host bits, found "10.0.0.1/8"',
      'trusted_networks[0]: expected an address block such as 10.0.0.0/8 or 2001:db8::/32, without host bits, found "10.0.0.1/8"',
    ],
  );
});

test('nat64_prefixes: the well-known 64:ff9b::/96 unless set, a list of IPv6 /96 prefixes replacing it, [] for none; anything else is named with its path', () => {
  const dir = writeTemp({ 'mf.yaml': GOOD, 'ldap.secret': 's3cret\n', 'stores.yaml': STORES });
  assert.deepEqual(loadConfig(join(dir, 'mf.yaml')).nat64Prefixes, ['64:ff9b::/96']);
  writeFileSync(join(dir, 'set.yaml'), `${GOOD}nat64_prefixes: ["2001:db8:46::/96", 64:ff9b:1:abcd::/96]\n`);
  assert.deepEqual(loadConfig(join(dir, 'set.yaml')).nat64Prefixes, ['2001:db8:46::/96', '64:ff9b:1:abcd::/96']);
  writeFileSync(join(dir, 'one.yaml'), `${GOOD}nat64_prefixes: "2001:db8:46::/96"\n`);
  assert.deepEqual(loadConfig(join(dir, 'one.yaml')).nat64Prefixes, ['2001:db8:46::/96']);
  writeFileSync(join(dir, 'none.yaml'), `${GOOD}nat64_prefixes: []\n`);
  assert.deepEqual(loadConfig(join(dir, 'none.yaml')).nat64Prefixes, []);
  writeFileSync(join(dir, 'bad.yaml'), `${GOOD}nat64_prefixes: [64:ff9b::/64, "64:ff9b:1::/48", 192.0.2.0/24, "2001:db8:46::1/96", 7]\n`);
  const prefix = 'an IPv6 /96 prefix without host bits whose last 32 bits are an IPv4 address (RFC 6052), such as 64:ff9b::/96 or 2001:db8:46::/96; only /96 is read';
  assert.deepEqual(
    configErrorOf(() => loadConfig(join(dir, 'bad.yaml'))).issues.map((i) => `${i.path}: expected ${i.expected}, found ${i.found}`),
    [
      `nat64_prefixes[0]: expected ${prefix}, found "64:ff9b::/64"`,
      `nat64_prefixes[1]: expected ${prefix}, found "64:ff9b:1::/48"`,
      `nat64_prefixes[2]: expected ${prefix}, found "192.0.2.0/24"`,
      `nat64_prefixes[3]: expected ${prefix}, found "2001:db8:46::1/96"`,
      `nat64_prefixes[4]: expected ${prefix}, found number 7`,
    ],
  );
  writeFileSync(join(dir, 'map.yaml'), `${GOOD}nat64_prefixes: { prefix: 64:ff9b::/96 }\n`);
  assert.match(configErrorOf(() => loadConfig(join(dir, 'map.yaml'))).message, /nat64_prefixes: expected a list of translator prefixes, each an IPv6 \/96 prefix/);
});

test('a list of address blocks written as something else (a mapping, a number) is refused naming its path, never taken as no blocks', () => {
  const dir = writeTemp({ 'ldap.secret': 's3cret\n', 'stores.yaml': STORES });
  writeFileSync(join(dir, 'mf.yaml'), `${GOOD}trusted_networks: { webmail: 192.0.2.10/32 }\nconnection_limits: { exempt_networks: 100 }\n`);
  const error = configErrorOf(() => loadConfig(join(dir, 'mf.yaml')));
  assert.deepEqual(
    error.issues.map((i) => `${i.path}: expected ${i.expected}, found ${i.found}`),
    ['trusted_networks: expected a list of address blocks such as 10.0.0.0/8 or 2001:db8::/32, found a mapping', 'connection_limits.exempt_networks: expected a list of address blocks such as 10.0.0.0/8 or 2001:db8::/32, found number 100'],
  );
});

test('an empty list where a non-empty one is needed (directory.urls: []) is refused naming its path', () => {
  const dir = writeTemp({ 'ldap.secret': 's3cret\n', 'stores.yaml': STORES });
  writeFileSync(join(dir, 'mf.yaml'), GOOD.replace('urls: [ldap://127.0.0.1:389]', 'urls: []'));
  const error = configErrorOf(() => loadConfig(join(dir, 'mf.yaml')));
  assert.deepEqual(error.issues.map((i) => `${i.path}: expected ${i.expected}, found ${i.found}`), ['directory.urls: expected a non-empty list of strings, found a list of 0']);
});

test('a listener without TLS must allow plaintext logins: otherwise no client could log in on it', () => {
  const dir = writeTemp({
    'mf.yaml': `
listeners:
  - { name: imap, protocol: imap, host: 127.0.0.1, port: 1143 }
  - { name: pop3, protocol: pop3, host: 127.0.0.1, port: 1110, tls: none, plaintext_without_tls: false }
  - { name: sieve, protocol: managesieve, host: 127.0.0.1, port: 4190, tls: none }
  - { name: webmail, protocol: imap, host: 127.0.0.1, port: 1144, tls: none, plaintext_without_tls: true }
  - { name: imaps, protocol: imap, host: 127.0.0.1, port: 1993, tls: implicit, certificate: { cert: cert.pem, key: key.pem } }
  - { name: typo, protocol: imap, host: 127.0.0.1, port: 1145, tls: nope, plaintext_without_tls: "yes" }
directory: { urls: [ldap://127.0.0.1], bind_dn: cn=x, bind_password: x, base_dn: dc=x }
store_map: { file: stores.yaml }
`,
  });
  const error = configErrorOf(() => loadConfig(join(dir, 'mf.yaml')));
  assert.deepEqual(
    error.issues.filter((i) => !i.path.startsWith('listeners[5]')).map((i) => `${i.path}: expected ${i.expected}, found ${i.found}`),
    [
      'listeners[0].plaintext_without_tls: expected true on a listener without TLS (tls: none), or tls: starttls/implicit: without it no client can log in, found nothing',
      'listeners[1].plaintext_without_tls: expected true on a listener without TLS (tls: none), or tls: starttls/implicit: without it no client can log in, found boolean false',
      'listeners[2].plaintext_without_tls: expected true on a listener without TLS (tls: none), or tls: starttls/implicit: without it no client can log in, found nothing',
    ],
  );
  // A listener whose keys are wrong is told about those, not about what its stand-ins would mean.
  assert.deepEqual(error.issues.filter((i) => i.path.startsWith('listeners[5]')).map((i) => i.path), ['listeners[5].tls', 'listeners[5].plaintext_without_tls']);
  assert.match(error.issues.find((i) => i.path === 'listeners[5].plaintext_without_tls')?.expected ?? '', /^true or false$/);
});

test('a secret of the wrong type is reported by its path and kind, never its value', () => {
  const dir = writeTemp({
    'secrets.yaml': `
listeners:
  - { name: imap, protocol: imap, host: 127.0.0.1, port: 143, tls: none }
directory:
  urls: [ldap://127.0.0.1]
  bind_dn: cn=x
  bind_password: 839201746
  base_dn: dc=x
store_map: { file: stores.yaml }
health: { probe_user: probe, probe_password: 557123901 }
admin: { token: 991827364512 }
throttle: { redis: { url: 'redis://127.0.0.1', auth_password: true } }
`,
  });
  const error = configErrorOf(() => loadConfig(join(dir, 'secrets.yaml')));
  const paths = error.issues.map((i) => i.path);
  for (const path of ['directory.bind_password', 'health.probe_password', 'admin.token', 'throttle.redis.auth_password']) {
    assert.ok(paths.includes(path), `no issue for ${path}: ${paths.join(', ')}`);
  }
  for (const secret of ['839201746', '557123901', '991827364512']) assert.ok(!error.message.includes(secret), `${secret} is in: ${error.message}`);
  assert.match(error.message, /directory\.bind_password: expected [^\n]*, found a number \(not shown: a secret\)/);
  assert.match(error.message, /throttle\.redis\.auth_password: expected [^\n]*, found a boolean \(not shown: a secret\)/);

  // The secret written in place of its file's name, as a number or a boolean: by its kind only, as a string there is.
  writeFileSync(
    join(dir, 'files.yaml'),
    `
listeners:
  - { name: imap, protocol: imap, host: 127.0.0.1, port: 143, tls: none }
directory:
  urls: [ldap://127.0.0.1]
  bind_dn: cn=x
  bind_password_file: 839201746
  base_dn: dc=x
store_map: { file: stores.yaml }
health: { probe_user: probe, probe_password_file: true }
admin: { token_file: 4242424242424242 }
http: { metrics_token_file: 991827364512 }
oauth2: { issuers: [x], audiences: [mail], jwks_file: j.json, token_check: auto, introspection_url: 'https://idp.example.org/i', client_id: mf, client_secret_file: 557123901 }
throttle: { redis: { url: 'redis://127.0.0.1', auth_password_file: 0x5a17 } }
`,
  );
  const files = configErrorOf(() => loadConfig(join(dir, 'files.yaml')));
  const found = Object.fromEntries(files.issues.filter((i) => i.path.endsWith('_file')).map((i) => [i.path, i.found]));
  assert.deepEqual(found, {
    'directory.bind_password_file': 'a number (not shown: a secret)',
    'health.probe_password_file': 'a boolean (not shown: a secret)',
    'admin.token_file': 'a number (not shown: a secret)',
    'http.metrics_token_file': 'a number (not shown: a secret)',
    'oauth2.client_secret_file': 'a number (not shown: a secret)',
    'throttle.redis.auth_password_file': 'a number (not shown: a secret)',
  });
  for (const secret of ['839201746', '4242424242424242', '991827364512', '557123901', '23063']) assert.ok(!files.message.includes(secret), `${secret} is in: ${files.message}`);
});

test('an issue at a secret\'s path never quotes its string, empty or not; other strings are quoted up to 40 characters, longer ones told by their length', () => {
  const issues = new IssueList();
  issues.add('directory.bind_password', 'a password the server takes', 'Kx9-issue-secret');
  issues.add('backend.proxy_password', 'a non-empty string', '');
  issues.add('stores.s.slots.a.proxy_password_file', 'a file name', 'Kx9-issue-secret-file');
  issues.add('admin.token', 'a token', 'Kx9-issue-token');
  assert.deepEqual(
    issues.issues.map((i) => i.found),
    ['a string (not shown: a secret)', 'an empty string', 'a string (not shown: a secret)', 'a string (not shown: a secret)'],
  );
  assert.equal(describe('x'.repeat(40)), JSON.stringify('x'.repeat(40)));
  assert.equal(describe('x'.repeat(41)), 'a string of 41 characters');
});

test('a user and password written into a URL (or a host:port) are never shown in an issue: directory.urls, throttle.redis.url and its sentinels, a slot\'s host', () => {
  // 40 characters or less, which an issue quoted in full.
  const secrets = ['Ldap-pw-71c3', 'Redis-user-5d', 'Sentinel-pw-42', 'Slot-pw-93e1'];
  const dir = writeTemp({
    'mf.yaml': GOOD.replace('urls: [ldap://127.0.0.1:389]', 'urls: [ldap://127.0.0.1:389, "ldaps://mf:Ldap-pw-71c3@ds1/o=x"]'),
    'good.yaml': GOOD,
    'ldap.secret': 'x',
    'stores.yaml': STORES,
    'redis.yaml': `${GOOD}throttle: { redis: { url: "redis://Redis-user-5d@h/abc" } }\n`,
    'sentinel.yaml': `${GOOD}throttle: { redis: { sentinel: { master_name: mf, nodes: ["mf:Sentinel-pw-42@s1:26379"] } } }\n`,
  });
  const directory = configErrorOf(() => loadConfig(join(dir, 'mf.yaml')));
  assert.deepEqual(directory.issues.map((i) => [i.path, i.found]), [['directory.urls[1]', '"ldaps://[credentials hidden]@ds1/o=x"']]);
  const redis = configErrorOf(() => loadConfig(join(dir, 'redis.yaml')));
  assert.deepEqual(redis.issues.map((i) => [i.path, i.found]), [['throttle.redis.url', '"redis://[credentials hidden]@h/abc"']]);
  const sentinel = configErrorOf(() => loadConfig(join(dir, 'sentinel.yaml')));
  assert.deepEqual(sentinel.issues.map((i) => [i.path, i.found]), [['throttle.redis.sentinel.nodes[0]', '"[credentials hidden]@s1:26379"']]);
  const config = loadConfig(join(dir, 'good.yaml'));
  writeFileSync(join(dir, 'slots.yaml'), STORES.replace('slot2: { host: 127.0.0.1', 'slot2: { host: "mf:Slot-pw-93e1@10.0.0.7"'));
  const slot = configErrorOf(() => loadStoreMap(join(dir, 'slots.yaml'), 1, config));
  assert.deepEqual(slot.issues.map((i) => [i.path, i.found]), [['stores.store1.slots.slot2.host', '"[credentials hidden]@10.0.0.7"']]);
  const shown = [directory, redis, sentinel, slot].map((e) => e.message).join('\n');
  for (const secret of secrets) assert.ok(!shown.includes(secret), `${secret} is in:\n${shown}`);
});

test('urlShown() hides a URL\'s query values and fragment, the parameters\' names kept, in text that does not parse as a URL too', () => {
  const cases: Array<[string, string]> = [
    ['https://idp.example.org/introspect?client_secret=Qs-1', 'https://idp.example.org/introspect?client_secret=[hidden]'],
    ['https://idp/x?a=1&access_token=Qs-2#Qs-3', 'https://idp/x?a=[hidden]&access_token=[hidden]#[hidden]'],
    ['https://mf:Pw-1@idp/x?password=Qs-4', 'https://[credentials hidden]@idp/x?password=[hidden]'],
    // Not a URL (the reason it is quoted): the same.
    ['htps:/idp x?apikey=Qs-5', 'htps:/idp x?apikey=[hidden]'],
    ['idp.example.org:443?apikey=Qs-6', 'idp.example.org:443?apikey=[hidden]'],
    // A parameter that is all value, and an empty one.
    ['https://idp/x?Qs-7&a=', 'https://idp/x?[hidden]&a='],
    // An "@" in a query value: what precedes it is hidden as a userinfo would be, and the value's end too.
    ['https://idp/x?password=Qs-8@Qs-9&b=Qs-10', 'https://[credentials hidden]@[hidden]&b=[hidden]'],
    // The userinfo as before: the last "@", a password holding "?" and "/" hidden whole.
    ['https://mf:Pw-4?/Pw-5@idp/x?a=Qs-11', 'https://[credentials hidden]@idp/x?a=[hidden]'],
    // A password holding an unencoded "@": hidden up to the last one, not the first.
    ['redis://mf:Pw-6@Pw-7@10.0.0.5:6379', 'redis://[credentials hidden]@10.0.0.5:6379'],
    ['ldaps://mf:Pw-2@ds1/o=x', 'ldaps://[credentials hidden]@ds1/o=x'],
    ['mf:Pw-3@s1:26379', '[credentials hidden]@s1:26379'],
    // Nothing to hide: as written.
    ['https://idp.example.org/realms/mail', 'https://idp.example.org/realms/mail'],
    ['https://idp/x?#', 'https://idp/x?#'],
  ];
  for (const [text, shown] of cases) {
    assert.equal(urlShown(text), shown, text);
    assert.doesNotMatch(urlShown(text), /(?:Qs|Pw)-\d/, text);
  }
});

test('a secret written into a URL\'s query is never shown in an issue: throttle.redis.url, valid or not', () => {
  const dir = writeTemp({
    'ldap.secret': 'x',
    'stores.yaml': STORES,
    // 40 characters or less, which an issue quotes.
    'path.yaml': `${GOOD}throttle: { redis: { url: "redis://h/abc?password=Redis-q-pw-5d" } }\n`,
    'scheme.yaml': `${GOOD}throttle: { redis: { url: "redis//h:6379?password=Redis-q-pw-6e" } }\n`,
  });
  const path = configErrorOf(() => loadConfig(join(dir, 'path.yaml')));
  assert.deepEqual(path.issues.map((i) => [i.path, i.found]), [['throttle.redis.url', '"redis://h/abc?password=[hidden]"']]);
  const scheme = configErrorOf(() => loadConfig(join(dir, 'scheme.yaml')));
  assert.deepEqual(scheme.issues.map((i) => [i.path, i.found]), [['throttle.redis.url', '"redis//h:6379?password=[hidden]"']]);
  const shown = [path, scheme].map((e) => e.message).join('\n');
  for (const secret of ['Redis-q-pw-5d', 'Redis-q-pw-6e']) assert.ok(!shown.includes(secret), `${secret} is in:\n${shown}`);
});

test('a bearer token (admin.token, http.metrics_token) with whitespace or a character beyond visible ASCII is refused at load, by the key written, never trimmed nor shown', () => {
  // The file an operator wrote with a space before its line break: check-config and a reload took
  // it, then every CLI command got 401 (node strips the space around the header's value).
  const dir = writeTemp({ 'ldap.secret': 'x', 'stores.yaml': STORES, 'admin.token': 'abcdefghijklmnopqrstuvwxyz \n', 'metrics.token': 'Metrics-tokén-0123456789\n' });
  writeFileSync(join(dir, 'mf.yaml'), `${GOOD}http: { host: 127.0.0.1, port: 9143, metrics_token_file: metrics.token }\nadmin: { token_file: admin.token }\n`);
  const error = configErrorOf(() => loadConfig(join(dir, 'mf.yaml')));
  assert.deepEqual(
    error.issues.map((i) => [i.path, i.found]),
    [
      ['http.metrics_token_file', 'a string of 24 characters with a character beyond ASCII at character 12'],
      ['admin.token_file', 'a string of 27 characters with a space at its end'],
    ],
  );
  assert.match(error.message, new RegExp(`admin\\.token_file: expected a token of visible ASCII characters \\(0x21 to 0x7E: letters, digits and punctuation\\) and spaces between them[^\\n]* in the file \\(${join(dir, 'admin.token')}\\), found a string of 27 characters with a space at its end$`, 'm'));
  assert.ok(!error.message.includes('abcdefghijklm') && !error.message.includes('Metrics-tok'), error.message);
  // The operator commands read the token as serve does: refused there too, not sent to get 401s.
  const cli = configErrorOf(() => loadAdminAccess(join(dir, 'mf.yaml'), true));
  assert.deepEqual(cli.issues.map((i) => [i.path, i.found]), [['admin.token_file', 'a string of 27 characters with a space at its end']]);
  // Punctuation of every kind is a token's, as it always was; the file's line break is not part of it.
  writeFileSync(join(dir, 'admin.token'), 'Ab1!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~\n');
  writeFileSync(join(dir, 'metrics.token'), 'Metrics-token-0123456789\r\n');
  const config = loadConfig(join(dir, 'mf.yaml'));
  assert.equal(config.admin.token, 'Ab1!"#$%&\'()*+,-./:;<=>?@[\\]^_`{|}~');
  assert.equal(config.http?.metricsToken, 'Metrics-token-0123456789');
  assert.equal(loadAdminAccess(join(dir, 'mf.yaml'), true).token, config.admin.token);
});

test('YAML syntax errors name the line', () => {
  const dir = writeTemp({ 'broken.yaml': 'listeners:\n  - protocol: imap\n   port: [\n' });
  const error = configErrorOf(() => loadConfig(join(dir, 'broken.yaml')));
  assert.match(error.issues[0]?.path ?? '', /^line \d+ column \d+$/);
});

test('an unquoted value that starts with * (an alias without an anchor) is a config error naming its line, never its text', () => {
  const dir = writeTemp({
    'mf.yaml': 'log:\n  level: info\ndirectory:\n  bind_password: *Zx9secretPw\n',
    'good.yaml': GOOD,
    'ldap.secret': 'x',
    'stores.yaml': 'stores:\n  s:\n    current_master: a\n    slots:\n      a: { host: 127.0.0.1, imap_port: 143, proxy_password: *Cyrus5ecret }\n',
  });
  const error = configErrorOf(() => loadConfig(join(dir, 'mf.yaml')));
  assert.deepEqual(error.issues.map((i) => i.path), ['line 4']);
  assert.doesNotMatch(error.message, /Zx9secretPw/);
  const storeError = configErrorOf(() => loadStoreMap(join(dir, 'stores.yaml'), 1, loadConfig(join(dir, 'good.yaml'))));
  assert.doesNotMatch(storeError.message, /Cyrus5ecret/);
});

test('a YAML error names its line and column, never the text at fault (an unquoted secret)', () => {
  for (const start of ['|', '>', ']', '}', '!x!', '!', '! ', '!!str ', '&a ', '"\\u', '&a *']) {
    const dir = writeTemp({ 'mf.yaml': `log:\n  level: info\ndirectory:\n  bind_password: ${start}Kx9-LdapBindSecret\n` });
    const error = configErrorOf(() => loadConfig(join(dir, 'mf.yaml')));
    assert.doesNotMatch(error.message, /Kx9-LdapBindSecret/, start);
    assert.match(error.issues[0]?.path ?? '', /^line 4/, start);
  }
});

test('a missing file is a config error, not a crash', () => {
  assert.throws(() => loadConfig('/nonexistent/mailfront.yaml'), (e: unknown) => e instanceof ConfigError && /a readable file/.test(e.message));
});

test('store map: current master must be one of the store\'s slots; slot names are unique across stores', () => {
  const dir = writeTemp({ 'mf.yaml': GOOD, 'ldap.secret': 'x', 'stores.yaml': STORES });
  const config = loadConfig(join(dir, 'mf.yaml'));
  writeFileSync(
    join(dir, 'stores.yaml'),
    `
stores:
  store1:
    current_master: slot9
    slots: { slot1: { host: 127.0.0.1, imap_port: 1 } }
  store2:
    current_master: slot1
    preferred_master: slot1
    slots: { slot1: { host: 127.0.0.1, imap_port: 3 } }
  store3:
    current_master: slot3
    backend: { login_mode: sasl-authzid }
    slots: { slot3: { host: 127.0.0.1, imap_port: 2 } }
`,
  );
  const error = configErrorOf(() => loadStoreMap(join(dir, 'stores.yaml'), 2, config));
  const paths = error.issues.map((i) => i.path);
  assert.ok(paths.includes('stores.store1.current_master'), paths.join(', '));
  // store2's slot1 is complete in itself (host and port): its only fault is the name store1 has too.
  const duplicate = error.issues.filter((i) => i.path === 'stores.store2.slots.slot1');
  assert.equal(duplicate.length, 1, JSON.stringify(error.issues));
  assert.match(duplicate[0]?.expected ?? '', /a slot name used by one store only \(store "store1" has it too\)/);
  assert.ok(!paths.some((p) => p.startsWith('stores.store1.slots')), paths.join(', '));
  assert.ok(paths.includes('stores.store3.backend.proxy_user'), paths.join(', '));
});

test('store map: no store, a store without a slot, a slot without a port and a preferred master that is no slot of its store are each refused, naming where', () => {
  const dir = writeTemp({ 'mf.yaml': GOOD, 'ldap.secret': 'x', 'stores.yaml': STORES });
  const config = loadConfig(join(dir, 'mf.yaml'));
  writeFileSync(join(dir, 'stores.yaml'), 'stores: {}\n');
  const empty = configErrorOf(() => loadStoreMap(join(dir, 'stores.yaml'), 2, config));
  assert.deepEqual(
    empty.issues.map((i) => [i.path, i.expected]),
    [['stores', 'at least one store']],
  );
  writeFileSync(
    join(dir, 'stores.yaml'),
    `
stores:
  store1:
    current_master: slot1
    preferred_master: slot9
    slots:
      slot1: { host: 127.0.0.1, imap_port: 1430 }
      slot2: { host: 127.0.0.1, imap_port: 1431 }
  store2:
    current_master: slot3
    slots: {}
  store3:
    current_master: slot4
    slots:
      slot4: { host: 127.0.0.1 }
`,
  );
  const error = configErrorOf(() => loadStoreMap(join(dir, 'stores.yaml'), 2, config));
  const issue = (path: string): string | undefined => error.issues.find((i) => i.path === path)?.expected;
  assert.equal(issue('stores.store1.preferred_master'), "one of this store's slots (slot1, slot2)", JSON.stringify(error.issues));
  assert.equal(issue('stores.store2.slots'), 'at least one slot', JSON.stringify(error.issues));
  assert.equal(issue('stores.store3.slots.slot4'), 'at least one of imap_port, imaps_port, pop3_port, pop3s_port, sieve_port', JSON.stringify(error.issues));
  // Each fault once, where it is: a store without slots has no current master to name besides.
  assert.equal(error.issues.length, 3, JSON.stringify(error.issues));
});

test('a store map\'s relative file names resolve against the config file\'s folder, wherever the store map lives', async () => {
  const dir = writeTemp({ 'mf.yaml': GOOD.replace('file: stores.yaml', 'file: state/stores.yaml'), 'ldap.secret': 'x', 'proxy.secret': 'from-config-folder\n' });
  mkdirSync(join(dir, 'state'));
  writeFileSync(join(dir, 'state', 'stores.yaml'), 'stores:\n  s:\n    current_master: a\n    backend: { login_mode: master-user, proxy_user: m, proxy_password_file: proxy.secret }\n    slots:\n      a: { host: 127.0.0.1, imap_port: 143 }\n');
  const config = loadConfig(join(dir, 'mf.yaml'));
  const { createStoreMapSource } = await import('../../src/routing/sources.js');
  const source = createStoreMapSource(config.storeMap);
  try {
    const document = (await source.load()) as { stores: { s: { backend: { proxy_password: string } } } };
    assert.equal(document.stores.s.backend.proxy_password, 'from-config-folder');
  } finally {
    await source.close();
  }
});

test("throttle.redis's TLS files, like every file name of the config, resolve against the config file's folder", () => {
  const dir = writeTemp({ 'mf.yaml': `${GOOD}throttle:\n  redis: { url: 'rediss://127.0.0.1:6380', ca_file: redis-ca.pem, cert_file: tls/mf.crt, key_file: /etc/mf/mf.key }\n`, 'ldap.secret': 'x' });
  const redis = loadConfig(join(dir, 'mf.yaml')).throttle.redis;
  assert.equal(redis?.caFile, join(dir, 'redis-ca.pem'));
  assert.equal(redis?.certFile, join(dir, 'tls', 'mf.crt'));
  assert.equal(redis?.keyFile, '/etc/mf/mf.key');
});

test('routing refuses unknown stores', () => {
  const dir = writeTemp({ 'mf.yaml': GOOD, 'ldap.secret': 'x', 'stores.yaml': STORES });
  const config = loadConfig(join(dir, 'mf.yaml'));
  const map = loadStoreMap(join(dir, 'stores.yaml'), 1, config);
  assert.throws(() => map.currentMaster('store9'), (e: unknown) => e instanceof Error && 'kind' in e && e.kind === 'no-route');
});

test('the documented example in config/ is valid (secret and certificate files stood in for)', async () => {
  const { readFileSync, mkdirSync } = await import('node:fs');
  const { dirname: dirOf, resolve: resolvePath } = await import('node:path');
  const { fileURLToPath } = await import('node:url');
  let root = dirOf(fileURLToPath(import.meta.url));
  while (!readdirSafe(join(root, 'config')).includes('mailfront.yaml')) root = resolvePath(root, '..');
  const dir = tmpDir('config-example').path;
  const secrets = join(dir, 'etc');
  mkdirSync(join(secrets, 'tls'), { recursive: true });
  const rewrite = (text: string): string => text.replaceAll('/etc/mailfront/', `${secrets}/`);
  for (const name of ['ldap-password', 'backend-password', 'cyrus-proxy-password', 'admin-token', 'tls/cert.pem', 'tls/key.pem']) writeFileSync(join(secrets, name), name === 'admin-token' ? 'an-admin-token-of-enough-length\n' : 'x\n');
  const example = readFileSync(join(root, 'config/mailfront.yaml'), 'utf8');
  // Its "Validate with" line says what it takes: the files it names, which a fresh machine has not.
  assert.match(example.split('\n').slice(0, 10).join('\n'), /Validate with: +mailfront check-config config\/mailfront\.yaml +\(it passes once the secret and\n# certificate files it names, under \/etc\/mailfront, exist/);
  writeFileSync(join(dir, 'mailfront.yaml'), rewrite(example));
  writeFileSync(join(dir, 'stores.yaml'), rewrite(readFileSync(join(root, 'config/stores.yaml'), 'utf8')));
  const config = loadConfig(join(dir, 'mailfront.yaml'));
  assert.equal(config.listeners.length, 4);
  assert.equal(config.admin.token, 'an-admin-token-of-enough-length');
  const map = loadStoreMap(join(dir, 'stores.yaml'), 1, config);
  assert.equal(map.stores.get('store3')?.backend.loginMode, 'sasl-authzid');
  assert.equal(map.currentMaster('store2').slot.name, 'slot202');
});

function readdirSafe(path: string): string[] {
  try {
    return readdirSync(path);
  } catch {
    return [];
  }
}

test('a secret file: every line break that ends it is dropped; one that is empty, an unknown *_file key, and a file that cannot be read are told by the key written, never showing a name that may be the secret', () => {
  const dir = writeTemp({ 'mf.yaml': GOOD, 'ldap.secret': 's3cret\n\n', 'stores.yaml': STORES });
  assert.equal(loadConfig(join(dir, 'mf.yaml')).directory.bindPassword, 's3cret');
  writeFileSync(join(dir, 'ldap.secret'), 's3cret\r\n');
  assert.equal(loadConfig(join(dir, 'mf.yaml')).directory.bindPassword, 's3cret');

  // An empty file (or line breaks only): the _file key, and the file, are named; no second
  // problem about the value ("bind_password: found an empty string").
  for (const [content, found] of [['', 'an empty file'], ['\n\n', 'line breaks only']] as const) {
    writeFileSync(join(dir, 'ldap.secret'), content);
    const error = configErrorOf(() => loadConfig(join(dir, 'mf.yaml')));
    assert.deepEqual(error.issues, [{ path: 'directory.bind_password_file', expected: `a file holding the bind_password (${join(dir, 'ldap.secret')})`, found }]);
  }

  // An unknown key, by the name it was given.
  writeFileSync(join(dir, 'ldap.secret'), 's3cret\n');
  writeFileSync(join(dir, 'unknown.yaml'), GOOD.replace('  base_dn:', '  foo_password_file: ldap.secret\n  base_dn:'));
  const unknown = configErrorOf(() => loadConfig(join(dir, 'unknown.yaml')));
  assert.deepEqual(unknown.issues.map((i) => [i.path, i.found]), [['directory.foo_password_file', 'an unknown key "foo_password_file"']]);

  // The token itself given as token_file: it is not printed (it would reach the journal).
  const token = 'Zk8s0d9f8g7h6j5k4l3m2n1b0v9c8x7';
  writeFileSync(join(dir, 'token.yaml'), `${GOOD}admin: { token_file: ${token} }\n`);
  const misused = configErrorOf(() => loadConfig(join(dir, 'token.yaml')));
  assert.ok(!misused.message.includes(token), misused.message);
  assert.deepEqual(misused.issues.map((i) => i.path), ['admin.token_file']);
  assert.match(misused.message, new RegExp(`admin\\.token_file: expected a readable file \\(a file in ${dir} whose name is not shown: [^\\n]*it may be the secret itself[^\\n]*\\), found ENOENT`));
  // A name that reads as one (a "/" or an extension) is printed, as the file resolved.
  writeFileSync(join(dir, 'named.yaml'), `${GOOD}admin: { token_file: secrets/admin.token }\n`);
  assert.match(configErrorOf(() => loadConfig(join(dir, 'named.yaml'))).message, new RegExp(`admin\\.token_file: expected a readable file \\(${join(dir, 'secrets/admin.token')}\\), found ENOENT`));
  // A base64 secret has "/" in it: no sign of a name. Neither it nor its part up to the last "/" is printed.
  const base64 = 'q8Zk3/Yw1bXr9TmP2vLc7NhA5uEoJg4R';
  writeFileSync(join(dir, 'base64.yaml'), `${GOOD}admin: { token_file: ${base64} }\n`);
  const slashed = configErrorOf(() => loadConfig(join(dir, 'base64.yaml')));
  assert.ok(!slashed.message.includes('q8Zk3') && !slashed.message.includes('Yw1bXr9TmP2vLc7NhA5uEoJg4R'), slashed.message);
  assert.match(slashed.message, new RegExp(`admin\\.token_file: expected a readable file \\(a file under ${dir} whose name is not shown: [^\\n]*it may be the secret itself[^\\n]*\\), found ENOENT`));
  // A token too short: its length is said, never the token (the check meant to say it, and said "a string (not shown: a secret)").
  writeFileSync(join(dir, 'short.yaml'), `${GOOD}admin: { token: short-tok3n }\n`);
  const short = configErrorOf(() => loadConfig(join(dir, 'short.yaml')));
  assert.deepEqual(short.issues.map((i) => [i.path, i.found]), [['admin.token', 'a string of 11 characters']]);
  assert.ok(!short.message.includes('short-tok3n'), short.message);
  // A relative name starting ./ or ../ reads as one, extension or not.
  for (const name of ['./secrets/admin', '../admin']) {
    writeFileSync(join(dir, 'dotted.yaml'), `${GOOD}admin: { token_file: ${name} }\n`);
    assert.match(configErrorOf(() => loadConfig(join(dir, 'dotted.yaml'))).message, new RegExp(`admin\\.token_file: expected a readable file \\(${join(dir, name)}\\), found ENOENT`));
  }
});
