/**
 * A block of trusted_networks that equals or contains one of throttle.exempt_networks or
 * connection_limits.exempt_networks is refused at load (start, check-config and a reload all load
 * through loadConfig): the session believes a trusted network's ID claims whatever the exempt
 * lists say, so a NAT listed in both let anyone behind it name any address as theirs (the
 * rv-throttle review's R2: check-config said OK). A narrower trusted block inside an exempt one
 * (a webmail server inside a campus NAT) stays allowed.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import { ConfigError, loadConfig } from '../../src/config/load.js';
import { tmpDir } from '../integration/servers/tmp.js';

const BASE = `
listeners:
  - { protocol: imap, host: 127.0.0.1, port: 1143, tls: starttls, certificate: { cert: cert.pem, key: key.pem } }
directory:
  urls: [ldap://127.0.0.1:389]
  bind_dn: cn=mailfront,dc=example,dc=org
  bind_password_file: ldap.secret
  base_dn: ou=people,dc=example,dc=org
store_map: { file: stores.yaml }
`;

function load(extra: string): ConfigError | undefined {
  const dir = tmpDir('config-trusted-exempt').path;
  writeFileSync(join(dir, 'mf.yaml'), BASE + extra);
  writeFileSync(join(dir, 'ldap.secret'), 's3cret\n');
  try {
    loadConfig(join(dir, 'mf.yaml'));
    return undefined;
  } catch (error) {
    assert.ok(error instanceof ConfigError, String(error));
    return error;
  }
}

const paths = (error: ConfigError | undefined): string[] => (error?.issues ?? []).map((i) => i.path);

test('a trusted block equal to an exempt one is refused, naming trusted_networks[N] and the exempt list', () => {
  const error = load(`
trusted_networks: [192.0.2.10/32, 100.64.0.0/10]
throttle: { exempt_networks: [100.64.0.0/10] }
`);
  assert.deepEqual(paths(error), ['trusted_networks[1]']);
  const issue = error!.issues[0]!;
  assert.match(issue.expected, /neither equals nor contains one of throttle\.exempt_networks \(100\.64\.0\.0\/10\)/);
  assert.equal(issue.found, '"100.64.0.0/10"');
});

test('a trusted block containing a block of connection_limits.exempt_networks is refused, in any spelling', () => {
  assert.deepEqual(paths(load(`
trusted_networks: 10.0.0.0/8
connection_limits: { exempt_networks: [10.20.0.0/16] }
`)), ['trusted_networks[0]']);
  assert.deepEqual(paths(load(`
trusted_networks: ['::ffff:10.0.0.0/104', '2001:db8::/32']
throttle: { exempt_networks: [10.1.2.3/32] }
connection_limits: { exempt_networks: ['2001:db8:aa::/48'] }
`)), ['trusted_networks[0]', 'trusted_networks[1]']);
});

test('a narrower trusted block inside an exempt one (a webmail inside a campus NAT) is allowed, as are disjoint ones', () => {
  assert.equal(load(`
trusted_networks: [100.64.1.10/32, 192.0.2.0/24]
throttle: { exempt_networks: [100.64.0.0/10] }
connection_limits: { exempt_networks: [100.64.0.0/10, 198.51.100.0/24] }
`), undefined);
});
