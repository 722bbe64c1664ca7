// Bounds of settings whose extremes cost the process or its backends: health.interval_ms (0 turns
// the probes off; 1 ms made 2,192 probe connections to one slot in 3 s), and the cache sizes
// directory.cache_max_entries and throttle.max_tracked (lru-cache allocates its index for the
// whole maximum at start: about 44 bytes an entry, 440 MB and 1.3 s per cache at 10,000,000).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { readConfig } from '../../src/config/schema.js';
import type { Config } from '../../src/config/schema.js';
import { IssueList } from '../../src/config/validate.js';

/** A minimal valid config with `extra` sections on top: the config read, and its issues as "path: expected …, found …". */
function read(extra: Record<string, unknown>): { readonly config: Config; readonly issues: string[] } {
  const doc = {
    listeners: [{ protocol: 'imap', host: '127.0.0.1', port: 1143, tls: 'none', plaintext_without_tls: true }],
    directory: { urls: ['ldap://127.0.0.1:389'], bind_dn: 'cn=x', bind_password: 'x', base_dn: 'dc=x' },
    store_map: { file: '/nonexistent/stores.yaml' },
    ...extra,
  };
  const issues = new IssueList();
  const config = readConfig(doc, '/nonexistent/mailfront.yaml', (p) => p, issues);
  return { config, issues: issues.issues.map((i) => `${i.path}: expected ${i.expected}, found ${i.found}`) };
}

test('health.interval_ms: 0 (off) or 1000 to 3600000; the default 5000', () => {
  assert.equal(read({}).config.health.intervalMs, 5_000);
  for (const ok of [0, 1_000, 5_000, 3_600_000]) {
    const { config, issues } = read({ health: { interval_ms: ok } });
    assert.deepEqual(issues, [], String(ok));
    assert.equal(config.health.intervalMs, ok);
  }
  for (const [bad, found] of [[1, 'number 1'], [99, 'number 99'], [999, 'number 999'], [3_600_001, 'number 3600001'], [-1, 'number -1'], [1_500.5, 'number 1500.5'], ['5000', '"5000"']] as const) {
    assert.deepEqual(read({ health: { interval_ms: bad } }).issues, [`health.interval_ms: expected 0 (off) or an integer from 1000 to 3600000, found ${found}`]);
  }
});

test('directory.cache_max_entries and throttle.max_tracked: at most 2000000 (each cache allocates its index for the whole maximum at start)', () => {
  const top = read({ directory: { urls: ['ldap://127.0.0.1:389'], bind_dn: 'cn=x', bind_password: 'x', base_dn: 'dc=x', cache_max_entries: 2_000_000 }, throttle: { max_tracked: 2_000_000 } });
  assert.deepEqual(top.issues, []);
  assert.equal(top.config.directory.cacheMaxEntries, 2_000_000);
  assert.equal(top.config.throttle.maxTrackedSubjects, 2_000_000);
  for (const over of [2_000_001, 10_000_000]) {
    assert.deepEqual(read({ directory: { urls: ['ldap://127.0.0.1:389'], bind_dn: 'cn=x', bind_password: 'x', base_dn: 'dc=x', cache_max_entries: over }, throttle: { max_tracked: over } }).issues, [
      `directory.cache_max_entries: expected an integer from 1 to 2000000, found number ${over}`,
      `throttle.max_tracked: expected an integer from 100 to 2000000, found number ${over}`,
    ]);
  }
});

test('directory.connect_timeout_ms and operation_timeout_ms: 100 to 120000, the defaults 3000 and 5000; 0 (no deadline at all to an LDAP client) is refused', () => {
  const directory = { urls: ['ldap://127.0.0.1:389'], bind_dn: 'cn=x', bind_password: 'x', base_dn: 'dc=x' };
  const defaults = read({}).config.directory;
  assert.equal(defaults.connectTimeoutMs, 3_000);
  assert.equal(defaults.operationTimeoutMs, 5_000);
  for (const ok of [100, 120_000]) {
    const { config, issues } = read({ directory: { ...directory, connect_timeout_ms: ok, operation_timeout_ms: ok } });
    assert.deepEqual(issues, [], String(ok));
    assert.equal(config.directory.connectTimeoutMs, ok);
    assert.equal(config.directory.operationTimeoutMs, ok);
  }
  for (const bad of [0, 99, 120_001]) {
    assert.deepEqual(read({ directory: { ...directory, connect_timeout_ms: bad, operation_timeout_ms: bad } }).issues, [
      `directory.connect_timeout_ms: expected an integer from 100 to 120000, found number ${bad}`,
      `directory.operation_timeout_ms: expected an integer from 100 to 120000, found number ${bad}`,
    ]);
  }
});
