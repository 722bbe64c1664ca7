/** store_map.ldap.urls are checked as directory.urls are: each one that is not an LDAP URL is named by its index. */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { ConfigError, loadConfig } from '../../src/config/load.js';

function configWith(storeMapUrls: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'mf-smurls-'));
  writeFileSync(
    join(dir, 'mf.yaml'),
    `
listeners:
  - { name: imap, protocol: imap, host: 127.0.0.1, port: 1143, tls: none, plaintext_without_tls: true }
directory: { urls: [ldap://127.0.0.1:389], bind_dn: cn=x, bind_password: x, base_dn: dc=x }
store_map: { ldap: { urls: ${storeMapUrls}, base_dn: "ou=stores,dc=x" } }
`,
  );
  return dir;
}

test('store_map.ldap.urls: a URL without a scheme or with a path is an issue naming store_map.ldap.urls[i]; LDAP URLs load', () => {
  const bad = configWith('["ldap.example.org:389", "ldaps://127.0.0.1:636", "http://127.0.0.1:1/x", "ldap://cn=a:Url-pw-7q@127.0.0.1", "ldap://127.0.0.1:389?bindpw=Url-q-pw-8r", "ldaps://127.0.0.1#x"]');
  try {
    let caught: unknown;
    try {
      loadConfig(join(bad, 'mf.yaml'));
    } catch (error) {
      caught = error;
    }
    assert.ok(caught instanceof ConfigError, `expected a ConfigError, got ${String(caught)}`);
    assert.deepEqual(
      caught.issues.map((i) => [i.path, i.expected, i.found]),
      [
        ['store_map.ldap.urls[0]', 'an ldap:// or ldaps:// URL with host and optional port', '"ldap.example.org:389"'],
        ['store_map.ldap.urls[2]', 'an ldap:// or ldaps:// URL with host and optional port', '"http://127.0.0.1:1/x"'],
        // Ignored by the client, logged as written: refused, and shown without the password.
        ['store_map.ldap.urls[3]', 'an ldap:// or ldaps:// URL with host and optional port, and no user or password in it (bind_dn and its password say who binds)', '"ldap://[credentials hidden]@127.0.0.1"'],
        // A query or fragment: ignored by the client as well, and logged as written; shown without its values.
        ['store_map.ldap.urls[4]', 'an ldap:// or ldaps:// URL with host and optional port', '"ldap://127.0.0.1:389?bindpw=[hidden]"'],
        ['store_map.ldap.urls[5]', 'an ldap:// or ldaps:// URL with host and optional port', '"ldaps://127.0.0.1#[hidden]"'],
      ],
    );
  } finally {
    rmSync(bad, { recursive: true, force: true });
  }
  const good = configWith('[ldap://127.0.0.1:389, "ldaps://ldap.example.org/"]');
  try {
    const config = loadConfig(join(good, 'mf.yaml'));
    assert.deepEqual(config.storeMap.kind === 'ldap' ? config.storeMap.urls : [], ['ldap://127.0.0.1:389', 'ldaps://ldap.example.org/']);
  } finally {
    rmSync(good, { recursive: true, force: true });
  }
});
