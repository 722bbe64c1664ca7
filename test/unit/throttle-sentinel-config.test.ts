/**
 * throttle.redis.sentinel as the config reads it: the master name and the sentinels, their own
 * credentials (auth_password_file resolved by the loader), url and sentinel exclusive, what a
 * reload compares, and the issues check-config prints.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { THROTTLE_DEFAULTS, readThrottleConfig, sameRedisConnection, throttleChanges } from '../../src/auth/throttle-config.js';
import type { ThrottleConfig } from '../../src/auth/throttle-config.js';
import { withoutSecrets } from '../../src/auth/throttle.js';
import { ConfigError, loadConfig } from '../../src/config/load.js';
import { IssueList } from '../../src/config/validate.js';
import { tmpDir } from '../integration/servers/tmp.js';

function read(redis: unknown): { config: ThrottleConfig; issues: IssueList } {
  const issues = new IssueList();
  const config = readThrottleConfig({ redis }, 'throttle', issues, (p) => (p.startsWith('/') ? p : `/etc/mailfront/${p}`));
  return { config, issues };
}

test('throttle.redis.sentinel: master name, sentinels (IPv6 in brackets), their credentials, beside the primary\'s', () => {
  const { config, issues } = read({
    sentinel: { master_name: 'mf', nodes: ['10.0.0.1:26379', 'sentinel-b.example:26380', '[2001:db8::7]:26379'], username: 'watcher', auth_password: 'w-pass' },
    username: 'mailfront',
    auth_password: 'data-pass',
    timeout_ms: 100,
  });
  assert.deepEqual(issues.issues, []);
  assert.deepEqual(config.redis, {
    sentinel: {
      masterName: 'mf',
      nodes: [
        { host: '10.0.0.1', port: 26379 },
        { host: 'sentinel-b.example', port: 26380 },
        { host: '2001:db8::7', port: 26379 },
      ],
      username: 'watcher',
      password: 'w-pass',
    },
    username: 'mailfront',
    password: 'data-pass',
    keyPrefix: THROTTLE_DEFAULTS.redisKeyPrefix,
    timeoutMs: 100,
  });
});

test('throttle.redis.sentinel: each mistake names its path and what was expected', () => {
  const both = read({ url: 'redis://127.0.0.1', sentinel: { master_name: 'mf', nodes: ['127.0.0.1:26379'] } });
  assert.deepEqual(both.issues.issues, [{ path: 'throttle.redis.sentinel', expected: 'either url or sentinel, not both (url names one Redis, sentinel the sentinels that name the primary)', found: 'both' }]);

  const neither = read({ username: 'mf' });
  assert.deepEqual(neither.issues.issues, [{ path: 'throttle.redis.url', expected: 'a redis:// or rediss:// URL with a host, or sentinel in its place', found: 'nothing' }]);

  const bad = read({ sentinel: { nodes: ['127.0.0.1', 'host:0', '[::1:26379', 'h:26379:1', 'ok:26379', '::1:26379'], colour: 'red', auth_password: true } });
  assert.deepEqual(
    bad.issues.issues.map((i) => i.path),
    ['throttle.redis.sentinel.colour', 'throttle.redis.sentinel.master_name', 'throttle.redis.sentinel.nodes[0]', 'throttle.redis.sentinel.nodes[1]', 'throttle.redis.sentinel.nodes[2]', 'throttle.redis.sentinel.nodes[3]', 'throttle.redis.sentinel.nodes[5]', 'throttle.redis.sentinel.auth_password'],
  );
  assert.equal(bad.issues.issues.find((i) => i.path === 'throttle.redis.sentinel.nodes[0]')?.expected, 'a sentinel as host:port (an IPv6 address in brackets: [2001:db8::1]:26379)');
  assert.equal(bad.issues.issues.find((i) => i.path === 'throttle.redis.sentinel.auth_password')?.found, 'a boolean (not shown: a secret)');

  const empty = read({ sentinel: { master_name: 'mf', nodes: [] } });
  assert.deepEqual(empty.issues.issues, [{ path: 'throttle.redis.sentinel.nodes', expected: 'a non-empty list of strings', found: 'a list of 0' }]);

  // TLS is for a rediss:// url: not ignored with sentinel, where the primary is reached without it.
  const tls = read({ sentinel: { master_name: 'mf', nodes: ['127.0.0.1:26379'] }, ca_file: 'ca.pem' });
  assert.deepEqual(tls.issues.issues.map((i) => i.path), ['throttle.redis.ca_file']);
});

test('a reload: the sentinel keys it changed are named, and any of them makes the connection anew; timeout_ms does not', () => {
  const base = read({ sentinel: { master_name: 'mf', nodes: ['127.0.0.1:26379', '127.0.0.1:26380'], username: 'w', auth_password: 'p1' } }).config;
  const redis = base.redis!;
  const sentinel = redis.sentinel!;
  const withRedis = (r: Partial<typeof redis>): ThrottleConfig => ({ ...base, redis: { ...redis, ...r } });
  assert.deepEqual(throttleChanges(base, withRedis({ sentinel: { ...sentinel, nodes: [...sentinel.nodes, { host: '127.0.0.1', port: 26381 }] } })), ['redis.sentinel.nodes']);
  assert.deepEqual(throttleChanges(base, withRedis({ sentinel: { ...sentinel, masterName: 'other', password: 'p2' } })), ['redis.sentinel.master_name', 'redis.sentinel.auth_password']);
  const { sentinel: _, ...noSentinel } = redis;
  assert.deepEqual(throttleChanges(base, { ...base, redis: { ...noSentinel, url: 'redis://127.0.0.1' } }), ['redis.url', 'redis.sentinel']);
  assert.equal(sameRedisConnection(redis, { ...redis, sentinel: { ...sentinel, nodes: [...sentinel.nodes].reverse() } }), false);
  assert.equal(sameRedisConnection(redis, { ...redis, sentinel: { ...sentinel, username: 'x' } }), false);
  assert.equal(sameRedisConnection(redis, { ...redis, timeoutMs: 1_000 }), true);
  assert.equal(sameRedisConnection(redis, { ...redis, sentinel: { ...sentinel, nodes: [...sentinel.nodes] } }), true);
});

test('the sentinels\' auth_password_file is read by the loader like every *_password_file; neither password is ever logged', () => {
  const dir = tmpDir('config').path;
  writeFileSync(join(dir, 'ldap.secret'), 'x\n');
  writeFileSync(join(dir, 'sentinel.secret'), 'sentinel-s3cret\n');
  writeFileSync(join(dir, 'redis.secret'), 'redis-s3cret\n');
  const base = `
listeners:
  - { protocol: imap, host: 127.0.0.1, port: 1143, tls: starttls, certificate: { cert: cert.pem, key: key.pem } }
directory:
  urls: [ldap://127.0.0.1:389]
  bind_dn: cn=mailfront,dc=example,dc=org
  bind_password_file: ldap.secret
  base_dn: ou=people,dc=example,dc=org
store_map: { file: stores.yaml }
`;
  writeFileSync(join(dir, 'mf.yaml'), `${base}throttle:\n  redis:\n    sentinel: { master_name: mf, nodes: ['127.0.0.1:26379'], username: watcher, auth_password_file: sentinel.secret }\n    auth_password_file: redis.secret\n`);
  const redis = loadConfig(join(dir, 'mf.yaml')).throttle.redis;
  assert.equal(redis?.sentinel?.password, 'sentinel-s3cret');
  assert.equal(redis?.password, 'redis-s3cret');
  assert.equal(withoutSecrets('WRONGPASS sentinel-s3cret and redis-s3cret', redis!), 'WRONGPASS [password hidden] and [password hidden]');

  writeFileSync(join(dir, 'bad.yaml'), `${base}throttle:\n  redis:\n    url: redis://127.0.0.1\n    sentinel: { master_name: mf, nodes: ['127.0.0.1'] }\n`);
  let error: unknown;
  try {
    loadConfig(join(dir, 'bad.yaml'));
  } catch (e) {
    error = e;
  }
  assert.ok(error instanceof ConfigError);
  assert.match(error.message, /throttle\.redis\.sentinel: expected either url or sentinel, not both/);
  assert.match(error.message, /throttle\.redis\.sentinel\.nodes\[0\]: expected a sentinel as host:port/);
});
