// shutdown.unready_delay_ms: how long a stop keeps the listeners accepting after /readyz turns 503
// (src/main.ts stop()). Its default covers the checks of the shipped HAProxy config, and a value
// that is no integer from 0 to 600000 is refused naming its path.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { DEFAULT_UNREADY_DELAY_MS, readConfig } from '../../src/config/schema.js';
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

test('shutdown.unready_delay_ms: an integer from 0 (no delay) to 600000; the default 5000', () => {
  assert.equal(read({}).config.shutdown.unreadyDelayMs, 5_000);
  assert.equal(read({ shutdown: { drain_timeout_ms: 3_000 } }).config.shutdown.unreadyDelayMs, 5_000);
  for (const ok of [0, 1, 5_000, 600_000]) {
    const { config, issues } = read({ shutdown: { unready_delay_ms: ok } });
    assert.deepEqual(issues, [], String(ok));
    assert.equal(config.shutdown.unreadyDelayMs, ok);
  }
  for (const [bad, found] of [[-1, 'number -1'], [600_001, 'number 600001'], [1_500.5, 'number 1500.5'], ['5000', '"5000"'], [null, 'null']] as const) {
    assert.deepEqual(read({ shutdown: { unready_delay_ms: bad } }).issues, [`shutdown.unready_delay_ms: expected an integer from 0 to 600000, found ${found}`]);
  }
});

test("the default delay outlasts the shipped HAProxy config's checks (inter x fall, plus a second), and that config redispatches", () => {
  const cfg = readFileSync(new URL('../../../docker/haproxy/haproxy.cfg', import.meta.url), 'utf8');
  const line = cfg.split('\n').find((l) => /^\s*default-server .*\bcheck\b/.test(l));
  const inter = /\binter (\d+)s\b/.exec(line ?? '');
  const fall = /\bfall (\d+)\b/.exec(line ?? '');
  assert.ok(inter && fall, `no inter / fall on the default-server line: ${line}`);
  assert.ok(DEFAULT_UNREADY_DELAY_MS >= Number(inter[1]) * 1_000 * Number(fall[1]) + 1_000, `${DEFAULT_UNREADY_DELAY_MS} ms against inter ${inter[1]}s fall ${fall[1]}`);
  assert.match(cfg, /^\s*option redispatch 1\s*$/m);
  assert.match(cfg, /^\s*option httpchk GET \/readyz\s*$/m);
});
