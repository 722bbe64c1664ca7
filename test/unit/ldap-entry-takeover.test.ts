/**
 * A reload that changes only how the LDAP servers are reached builds a new directory that takes
 * over the entry cache in force (takeEntries()). Built for that (entriesFromTakeover), it
 * allocates no cache of its own first: one of cache_max_entries, made only to be dropped, blocked
 * the process for about 0.35 s at 2,000,000 (the diff review). No server runs, nothing connects.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { LdapDirectory } from '../../src/auth/ldap.js';
import type { DirectoryConfig } from '../../src/config/schema.js';
import { createLogger } from '../../src/log.js';

const config: DirectoryConfig = {
  urls: ['ldap://127.0.0.1:9'],
  bindDn: 'cn=reader',
  bindPassword: 'unused',
  baseDn: 'dc=example',
  userFilter: '(uid={user})',
  storeAttribute: 'mailStore',
  starttls: false,
  connectTimeoutMs: 1_000,
  operationTimeoutMs: 1_000,
  entryCacheTtlMs: 30_000,
  authCacheTtlMs: 0,
  cacheMaxEntries: 1_000,
  searchConnections: 1,
};
const log = createLogger('info', { write: () => undefined });
const entries = (d: LdapDirectory): unknown => d['entries'];

test('a directory built to take over the entry cache allocates none until it does, and takes the one in force', async () => {
  const inForce = new LdapDirectory(config, log);
  const cache = entries(inForce);
  assert.ok(cache !== null, 'the directory in force has its cache');
  const next = new LdapDirectory({ ...config, operationTimeoutMs: 2_000 }, log, undefined, undefined, true);
  assert.equal(entries(next), null, 'no cache allocated before the takeover');
  assert.equal(next.takeEntries(inForce), true);
  assert.equal(entries(next), cache, 'the cache in force, taken over');
  assert.equal(entries(inForce), null);
  await Promise.all([inForce.close(), next.close()]);
});

test('a directory built to take over makes its own cache when there is none to take (another cache size, or no LDAP directory in force)', async () => {
  const inForce = new LdapDirectory(config, log);
  const resized = new LdapDirectory({ ...config, cacheMaxEntries: 2_000 }, log, undefined, undefined, true);
  assert.equal(resized.takeEntries(inForce), false);
  assert.ok(entries(resized) !== null && entries(resized) !== entries(inForce), 'a cache of its own');
  const alone = new LdapDirectory(config, log, undefined, undefined, true);
  assert.equal(alone.takeEntries(null), false);
  assert.ok(entries(alone) !== null, 'a cache of its own');
  const off = new LdapDirectory({ ...config, entryCacheTtlMs: 0 }, log, undefined, undefined, true);
  assert.equal(off.takeEntries(inForce), false);
  assert.equal(entries(off), null, 'entry_cache_ttl_ms 0: no cache');
  await Promise.all([inForce.close(), resized.close(), alone.close(), off.close()]);
});
