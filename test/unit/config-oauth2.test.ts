/**
 * The oauth2 section (OAuth 2.0 bearer-token logins): its defaults, and each mistake refused at
 * load (start, check-config and a reload all load through loadConfig) with an issue naming the
 * path and what was expected: no key source, an http URL beyond loopback, alg none or HS256, no
 * audience. check-config and serve warn (config.oauth2_replay) of a store in replay mode, whose
 * users' OAuth logins are refused.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { ConfigError, loadConfig } from '../../src/config/load.js';
import { configWarnings } from '../../src/config/schema.js';
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

function load(extra: string): Config | ConfigError {
  const dir = tmpDir('config-oauth2').path;
  writeFileSync(join(dir, 'mf.yaml'), BASE + extra);
  writeFileSync(join(dir, 'ldap.secret'), 's3cret\n');
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

test('defaults: the email claim, a minute of skew, every public-key algorithm, a minute of token cache; jwks_file made absolute', () => {
  const config = load(`
oauth2:
  issuers: https://idp.example.org/realms/mail
  audiences: [mail]
  jwks_file: jwks.json
`);
  assert.ok(!(config instanceof ConfigError), String(config));
  const oauth2 = config.oauth2!;
  assert.deepEqual(oauth2.issuers, ['https://idp.example.org/realms/mail']);
  assert.equal(oauth2.userClaim, 'email');
  assert.equal(oauth2.clockSkewMs, 60_000);
  assert.equal(oauth2.tokenCacheMs, 60_000);
  assert.equal(oauth2.jwksRefreshMs, 600_000);
  assert.equal(oauth2.jwksUnknownKidRefetchMs, 60_000);
  assert.deepEqual(oauth2.algorithms, ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA']);
  assert.ok(oauth2.jwksFile?.startsWith('/') && oauth2.jwksFile.endsWith('/jwks.json'));
  const without = load('');
  assert.ok(!(without instanceof ConfigError), String(without));
  assert.equal(without.oauth2, undefined, 'absent: no OAuth logins');
});

test('no key source, no audience, alg none and HS256, an http URL beyond loopback: each refused, naming the path', () => {
  const found = issues(`
oauth2:
  issuers: [https://idp.example.org/realms/mail]
  algorithms: [RS256, none, HS256]
`);
  assert.ok(found.some((i) => i.startsWith('oauth2.audiences: expected a non-empty list of strings')), found.join('\n'));
  assert.ok(found.some((i) => i.startsWith('oauth2: expected jwks_file or jwks_url')), found.join('\n'));
  assert.ok(found.some((i) => i.startsWith('oauth2.algorithms[1]: expected one of RS256') && i.includes('never none or HS256') && i.endsWith('found "none"')), found.join('\n'));
  assert.ok(found.some((i) => i.startsWith('oauth2.algorithms[2]:') && i.endsWith('found "HS256"')), found.join('\n'));
  const url = issues(`
oauth2:
  issuers: [https://idp.example.org/realms/mail]
  audiences: [mail]
  jwks_url: http://idp.example.org/certs
`);
  assert.deepEqual(url.filter((i) => i.startsWith('oauth2.jwks_url')).length, 1, url.join('\n'));
  assert.match(url[0] ?? '', /^oauth2\.jwks_url: expected an https:\/\/ URL \(http:\/\/ only to a loopback address\), found an http URL to a host that is not a loopback address/);
  const loopback = load(`
oauth2:
  issuers: [https://idp.example.org/realms/mail]
  audiences: [mail]
  jwks_url: http://127.0.0.1:8080/certs
  user_claim: preferred_username
`);
  assert.ok(!(loopback instanceof ConfigError), String(loopback));
  assert.equal(loopback.oauth2?.userClaim, 'preferred_username');
  assert.ok(issues('oauth2: { issuers: [x], audiences: [mail], jwks_file: j.json, surprise: 1 }\n').some((i) => i.startsWith('oauth2.surprise: expected one of the known keys')));
});

test('oauth2 with a store, a profile or the default in replay mode is warned of (config.oauth2_replay); without oauth2, nothing', () => {
  const config = load(`
oauth2: { issuers: [https://idp.example.org/realms/mail], audiences: [mail], jwks_file: jwks.json }
backend_profiles:
  old: { login_mode: replay }
`);
  assert.ok(!(config instanceof ConfigError), String(config));
  const stores = new Map([['store7', { backend: { loginMode: 'replay' as const } }], ['store8', { backend: { loginMode: 'master-user' as const } }]]);
  const warnings = configWarnings(config, stores).filter((w) => w.event === 'config.oauth2_replay');
  assert.deepEqual(warnings.map((w) => w.path), ['backend_profiles.old.login_mode', 'stores']);
  assert.match(warnings[1]?.text ?? '', /^oauth2 is set and 1 store of the store map logs in with login_mode "replay" \(store7\): OAuth logins \(OAUTHBEARER, XOAUTH2\) of users of it are refused \(OAUTH_NEEDS_TRUST_MODE/);
  const without = load('');
  assert.ok(!(without instanceof ConfigError));
  assert.deepEqual(configWarnings(without, stores).filter((w) => w.event === 'config.oauth2_replay'), []);
});
