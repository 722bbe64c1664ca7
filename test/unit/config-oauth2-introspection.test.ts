/**
 * The oauth2 section's token introspection (RFC 7662) and OpenID discovery keys: token_check's
 * default (auto once introspection_url is set, else jwt), client_secret_file read by the loader
 * as every *_file secret is, the URLs held to https (http to loopback only), discovery's document
 * URL made from issuers[0], and each mistake refused at load with an issue naming the path and
 * what was expected, never showing the secret.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { ConfigError, loadConfig } from '../../src/config/load.js';
import type { Config } from '../../src/config/schema.js';
import { tmpDir } from '../integration/servers/tmp.js';

const BASE = `
listeners:
  - { protocol: imap, host: 127.0.0.1, port: 1143, tls: starttls, certificate: { cert: cert.pem, key: key.pem } }
directory:
  urls: [ldap://127.0.0.1:389]
  bind_dn: cn=mailfront,dc=example,dc=org
  bind_password_file: ldap.secret
  base_dn: ou=people,dc=example,dc=org
  login_attribute: uid
store_map: { file: stores.yaml }
backend: { login_mode: master-user, proxy_user: proxy, proxy_password: proxy-secret-pw }
`;
const CLIENT_SECRET = 'Introspect-client-secret-5e7a';

function load(extra: string): Config | ConfigError {
  const dir = tmpDir('config-oauth2-introspection').path;
  writeFileSync(join(dir, 'mf.yaml'), BASE + extra);
  writeFileSync(join(dir, 'ldap.secret'), 's3cret\n');
  writeFileSync(join(dir, 'idp-client.secret'), `${CLIENT_SECRET}\n`);
  try {
    return loadConfig(join(dir, 'mf.yaml'));
  } catch (error) {
    assert.ok(error instanceof ConfigError, String(error));
    return error;
  }
}

function issues(extra: string): string[] {
  const loaded = load(extra);
  assert.ok(loaded instanceof ConfigError, 'the config was taken');
  return loaded.issues.map((i) => `${i.path}: expected ${i.expected}, found ${i.found}`);
}

test('introspection_url with client_id and client_secret_file: token_check auto, the secret read from its file, the defaults', () => {
  const config = load(`
oauth2:
  issuers: [https://sso.example.com/realms/mail]
  audiences: [mail]
  jwks_url: https://sso.example.com/realms/mail/protocol/openid-connect/certs
  introspection_url: https://sso.example.com/realms/mail/protocol/openid-connect/token/introspect
  client_id: mailfront
  client_secret_file: idp-client.secret
`);
  assert.ok(!(config instanceof ConfigError), String(config));
  const oauth2 = config.oauth2!;
  assert.equal(oauth2.tokenCheck, 'auto');
  assert.equal(oauth2.clientId, 'mailfront');
  assert.equal(oauth2.clientSecret, CLIENT_SECRET);
  assert.equal(oauth2.introspectionTimeoutMs, 2_000);
  assert.equal(oauth2.introspectionConcurrency, 16);
  assert.equal(oauth2.introspectionNegativeCacheMs, 10_000);
  assert.equal(oauth2.userClaim, 'email');
  const before = load(`
oauth2:
  issuers: [https://sso.example.com/realms/mail]
  audiences: [mail]
  jwks_url: https://sso.example.com/realms/mail/protocol/openid-connect/certs
`);
  assert.ok(!(before instanceof ConfigError), String(before));
  assert.equal(before.oauth2!.tokenCheck, 'jwt', 'without introspection: JWTs only, as before');
});

test('token_check introspect needs no keys; discovery: true reads <issuers[0]>/.well-known/openid-configuration for both', () => {
  const config = load(`
oauth2:
  issuers: [https://sso.example.com/realms/mail/, https://sso.internal/realms/mail]
  audiences: [mail]
  discovery: true
  token_check: introspect
  client_id: mailfront
  client_secret_file: idp-client.secret
`);
  assert.ok(!(config instanceof ConfigError), String(config));
  const oauth2 = config.oauth2!;
  assert.equal(oauth2.openidConfigurationUrl, 'https://sso.example.com/realms/mail/.well-known/openid-configuration');
  assert.deepEqual(oauth2.discoveryIssuers, ['https://sso.example.com/realms/mail/']);
  assert.equal(oauth2.tokenCheck, 'introspect');
  assert.equal(oauth2.introspectionUrl, undefined);
});

test('introspection without a client, a secret or an endpoint; http beyond loopback; discovery twice; bounds: each refused naming the path, the secret never shown', () => {
  const found = issues(`
oauth2:
  issuers: [https://sso.example.com/realms/mail]
  audiences: [mail]
  jwks_url: https://sso.example.com/realms/mail/protocol/openid-connect/certs
  token_check: auto
  introspection_concurrency: 0
`);
  assert.ok(found.some((i) => i.startsWith('oauth2.introspection_url: expected the IdP\'s token introspection endpoint')), found.join('\n'));
  assert.ok(found.some((i) => i.startsWith('oauth2.client_id: expected')), found.join('\n'));
  assert.ok(found.some((i) => i.startsWith('oauth2.client_secret: expected the client\'s secret, from client_secret_file')), found.join('\n'));
  assert.ok(found.some((i) => i.startsWith('oauth2.introspection_concurrency: expected an integer from 1 to 256')), found.join('\n'));

  const urls = issues(`
oauth2:
  issuers: [https://sso.example.com/realms/mail]
  audiences: [mail]
  jwks_url: https://sso.example.com/realms/mail/protocol/openid-connect/certs
  introspection_url: http://sso.example.com/introspect
  openid_configuration_url: https://sso.example.com/realms/mail/.well-known/openid-configuration
  discovery: true
  client_id: mailfront
  client_secret: 12345
`);
  assert.ok(urls.some((i) => i.startsWith('oauth2.introspection_url: expected an https:// URL (http:// only to a loopback address)')), urls.join('\n'));
  assert.ok(urls.some((i) => i.startsWith('oauth2.discovery: expected discovery: true or openid_configuration_url, not both')), urls.join('\n'));
  assert.ok(urls.some((i) => i.startsWith('oauth2.client_secret: expected a non-empty string, found a number (not shown: a secret)')), urls.join('\n'));
  assert.ok(!urls.some((i) => i.includes('12345')), urls.join('\n'));

  // An unreadable secret file is one issue, of the file, not a second one of the missing secret.
  const unread = issues(`
oauth2:
  issuers: [https://sso.example.com/realms/mail]
  audiences: [mail]
  jwks_url: https://sso.example.com/realms/mail/protocol/openid-connect/certs
  introspection_url: https://sso.example.com/introspect
  client_id: mailfront
  client_secret_file: missing.secret
`);
  assert.deepEqual(unread.filter((i) => i.startsWith('oauth2.client_secret')).map((i) => i.split(':')[0]), ['oauth2.client_secret_file'], unread.join('\n'));
  assert.ok(!unread.some((i) => i.includes(CLIENT_SECRET)));
});

test('a URL with a user and password in it (introspection_url, jwks_url, openid_configuration_url, discovery\'s issuers[0]) is refused, naming the path, never showing them', () => {
  // Dovecot's oauth2 docs write the introspection URL so: https://user:password@host/...
  const password = 'Url-password-3f9a2c';
  const found = issues(`
oauth2:
  issuers: [https://sso.example.com/realms/mail]
  audiences: [mail]
  jwks_url: https://keys:${password}@sso.example.com/realms/mail/protocol/openid-connect/certs
  introspection_url: https://mailfront:${password}@sso.example.com/realms/mail/protocol/openid-connect/token/introspect
  openid_configuration_url: https://mailfront:${password}@sso.example.com/realms/mail/.well-known/openid-configuration
  client_id: mailfront
  client_secret_file: idp-client.secret
`);
  for (const key of ['jwks_url', 'introspection_url', 'openid_configuration_url']) {
    assert.ok(found.some((i) => i.startsWith(`oauth2.${key}: expected an https:// URL (http:// only to a loopback address), found a URL with credentials in it: "https://[credentials hidden]@sso.example.com/realms/mail/`)), `${key}:\n${found.join('\n')}`);
  }
  const discovery = issues(`
oauth2:
  issuers: [https://mailfront:${password}@sso.example.com/realms/mail]
  audiences: [mail]
  discovery: true
`);
  assert.ok(discovery.some((i) => i.startsWith('oauth2.discovery: expected an issuers[0] that is an https:// URL') && i.endsWith('found a URL with credentials in it: "https://[credentials hidden]@sso.example.com/realms/mail"')), discovery.join('\n'));
  for (const text of [...found, ...discovery]) assert.ok(!text.includes(password) && !text.includes('mailfront:') && !text.includes('keys:'), text);
});

test('discovery with the client\'s credentials introspects (token_check auto); token_check jwt beside them is refused: they would never be sent', () => {
  const config = load(`
oauth2:
  issuers: [https://sso.example.com/realms/mail]
  audiences: [mail]
  discovery: true
  client_id: mailfront
  client_secret_file: idp-client.secret
`);
  assert.ok(!(config instanceof ConfigError), String(config));
  assert.equal(config.oauth2!.tokenCheck, 'auto');
  const found = issues(`
oauth2:
  issuers: [https://sso.example.com/realms/mail]
  audiences: [mail]
  discovery: true
  token_check: jwt
  client_id: mailfront
  client_secret_file: idp-client.secret
`);
  assert.ok(found.some((i) => i.startsWith('oauth2.token_check: expected auto or introspect where client_id or client_secret is set')), found.join('\n'));
  assert.ok(!found.join('\n').includes(CLIENT_SECRET));
});
