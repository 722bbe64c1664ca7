/**
 * A user's hold (directory.hold_attribute), without servers: the cache of logins never serves a
 * held user's right password as a success, and the config key's checks. Imports nothing the hold
 * added, so that it runs (and fails) on the code before it.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { CachingDirectory } from '../../src/auth/cache.js';
import type { Directory, DirectoryUser } from '../../src/auth/directory.js';
import { ConfigError, loadConfig } from '../../src/config/load.js';
import { tmpDir } from '../integration/servers/tmp.js';

/** A held user as the directory answers one (DirectoryUser.hold). */
type Held = DirectoryUser & { readonly hold?: string };

test('the cache of logins never keeps a held user\'s right password: the next login asks the directory again', async () => {
  let asked = 0;
  let hold: string | undefined = 'Mailbox moving, please wait and try again later.';
  const inner: Directory = {
    authenticate: async (user) => {
      asked++;
      const found: Held = { user, dn: `uid=${user},ou=people,dc=example,dc=org`, store: 'store1', readAt: performance.now() };
      return hold === undefined ? found : { ...found, hold };
    },
    lookup: async () => null,
    reachable: async () => true,
    forget: () => 0,
    cacheEntries: () => ({}),
    close: async () => undefined,
  };
  const cache = new CachingDirectory(inner, 60_000, 100);
  const signal = new AbortController().signal;
  assert.equal(((await cache.authenticate('ann', 'pw', signal, 'imap')) as Held).hold, hold);
  assert.equal(((await cache.authenticate('ann', 'pw', signal, 'imap')) as Held).hold, hold);
  assert.equal(asked, 2, 'the held answer was not cached');
  assert.equal(cache.cacheEntries().auth, 0);
  // The hold cleared: the directory's answer is a login, cached as usual.
  hold = undefined;
  assert.equal(((await cache.authenticate('ann', 'pw', signal, 'imap')) as Held).hold, undefined);
  assert.equal(((await cache.authenticate('ann', 'pw', signal, 'imap')) as Held).hold, undefined);
  assert.equal(asked, 3);
});

const CONFIG = `
listeners:
  - { protocol: imap, host: 127.0.0.1, port: 1143, tls: none, plaintext_without_tls: true }
directory:
  urls: [ldap://127.0.0.1:389]
  bind_dn: cn=mailfront,dc=example,dc=org
  bind_password: s3cret
  base_dn: ou=people,dc=example,dc=org
HOLD
store_map: { file: stores.yaml }
`;

function configWith(hold: string): string {
  const dir = tmpDir('hold-config').path;
  writeFileSync(join(dir, 'mf.yaml'), CONFIG.replace('HOLD', hold));
  return join(dir, 'mf.yaml');
}

function configError(file: string): string {
  try {
    loadConfig(file);
  } catch (error) {
    assert.ok(error instanceof ConfigError, String(error));
    return error.message;
  }
  assert.fail('the config loaded');
}

test('directory.hold_attribute: off unless set; an attribute name other than the store and login attributes', () => {
  assert.equal((loadConfig(configWith('')).directory as { holdAttribute?: string }).holdAttribute, undefined);
  assert.equal((loadConfig(configWith('  hold_attribute: mailfrontHold')).directory as { holdAttribute?: string }).holdAttribute, 'mailfrontHold');
  for (const bad of ['"mailfront hold"', '1hold', '"(mailfrontHold=TRUE)"', '[mailfrontHold]', '42']) {
    assert.match(configError(configWith(`  hold_attribute: ${bad}`)), /directory\.hold_attribute: expected (an LDAP attribute name|a string)/, bad);
  }
  assert.match(configError(configWith('  hold_attribute: MAILSTORE')), /directory\.hold_attribute: expected an LDAP attribute name other than store_attribute and login_attribute \(its value holds the user\), found "MAILSTORE"/);
  assert.match(configError(configWith('  hold_attribute: uid')), /directory\.hold_attribute: expected an LDAP attribute name other than store_attribute and login_attribute/);
});
