// directory.master_user_filter and directory.master_user_separator (a helpdesk's master logins):
// off unless the filter is set; the separator `*` by default then, one printable ASCII character
// or null; the filter checked as user_filter is and parsed as the LDAP client parses it; every
// problem named by its path. check-config (and serve, through configWarnings) warns of a backend,
// a profile or a store in replay mode, to which no master login can go.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { ConfigError, loadConfig } from '../../src/config/load.js';
import { configWarnings } from '../../src/config/schema.js';
import { tmpDir } from '../integration/servers/tmp.js';

const CLI = join(dirname(fileURLToPath(import.meta.url)), '../../src/cli/main.js');

const STORES = 'stores:\n  a:\n    current_master: a1\n    slots:\n      a1: { host: 127.0.0.1, imap_port: 2001 }\n';

/** A config file whose directory section has `extra` (YAML lines, indented by two) and the rest as given. */
function write(dir: string, name: string, extra: string, rest = ''): string {
  const file = join(dir, `${name}.yaml`);
  writeFileSync(
    file,
    `listeners:\n  - { name: imap, protocol: imap, host: 127.0.0.1, port: 1143, plaintext_without_tls: true }\ndirectory:\n  urls: [ldap://127.0.0.1:1]\n  bind_dn: cn=x\n  bind_password: x\n  base_dn: dc=x\n${extra}store_map: { file: stores.yaml, watch: false }\n${rest}`,
  );
  return file;
}

function issuesOf(file: string): string[] {
  try {
    loadConfig(file);
  } catch (error) {
    assert.ok(error instanceof ConfigError, String(error));
    return error.issues.map((i) => `${i.path}: ${i.expected}`);
  }
  return [];
}

test('off unless master_user_filter is set; then the separator is * unless set, or null', () => {
  const dir = tmpDir('config-master').path;
  writeFileSync(join(dir, 'stores.yaml'), STORES);
  const off = loadConfig(write(dir, 'off', ''));
  assert.equal(off.directory.masterUserFilter, undefined);
  assert.equal(off.directory.masterUserSeparator, undefined);
  const on = loadConfig(write(dir, 'on', '  master_user_filter: "(&(objectClass=inetOrgPerson)(employeeType=mail-helpdesk)(uid={user}))"\n'));
  assert.equal(on.directory.masterUserFilter, '(&(objectClass=inetOrgPerson)(employeeType=mail-helpdesk)(uid={user}))');
  assert.equal(on.directory.masterUserSeparator, '*');
  const memberOf = loadConfig(write(dir, 'member-of', '  master_user_filter: "(memberOf=cn=mail-helpdesk,ou=groups,dc=example,dc=com)"\n  master_user_separator: "%"\n'));
  assert.equal(memberOf.directory.masterUserSeparator, '%');
  const authzidOnly = loadConfig(write(dir, 'null', '  master_user_filter: "(employeeType=mail-helpdesk)"\n  master_user_separator: null\n'));
  assert.equal(authzidOnly.directory.masterUserSeparator, null);
});

test('a filter or separator that cannot work is a problem naming its path and what was expected', () => {
  const dir = tmpDir('config-master-bad').path;
  writeFileSync(join(dir, 'stores.yaml'), STORES);
  const cases: Array<[string, string, RegExp]> = [
    ['separator-alone', '  master_user_separator: "*"\n', /^directory\.master_user_separator: no separator without directory\.master_user_filter/],
    ['two-chars', '  master_user_filter: "(employeeType=x)"\n  master_user_separator: "**"\n', /^directory\.master_user_separator: one printable ASCII character other than "@"/],
    ['at-sign', '  master_user_filter: "(employeeType=x)"\n  master_user_separator: "@"\n', /^directory\.master_user_separator: one printable ASCII character other than "@"/],
    ['space', '  master_user_filter: "(employeeType=x)"\n  master_user_separator: " "\n', /^directory\.master_user_separator: /],
    ['number', '  master_user_filter: "(employeeType=x)"\n  master_user_separator: 1\n', /^directory\.master_user_separator: /],
    ['no-parens', '  master_user_filter: "employeeType=x"\n', /^directory\.master_user_filter: an LDAP filter in parentheses/],
    ['unbalanced', '  master_user_filter: "(employeeType=x)(uid={user})"\n', /^directory\.master_user_filter: an LDAP filter in parentheses \(RFC 4515\), .*; this one does not parse: Unbalanced parens/],
    ['protocol', '  master_user_filter: "(&(employeeType=x)(enable{protocol}=TRUE))"\n', /^directory\.master_user_filter: an LDAP filter whose only placeholder is \{user\}/],
    ['empty', '  master_user_filter: ""\n', /^directory\.master_user_filter: a non-empty string/],
  ];
  for (const [name, extra, expected] of cases) {
    const issues = issuesOf(write(dir, name, extra));
    assert.ok(issues.some((i) => expected.test(i)), `${name}: ${JSON.stringify(issues)}`);
  }
});

test('configWarnings: a backend, a profile or a store in replay mode beside a master filter; none without the filter or in the trust modes', () => {
  const base = { failover: { drainSpreadMs: 0, holdMs: 1000 }, session: { preauthTimeoutMs: 60_000 }, shutdown: { unreadyDelayMs: 5_000, drainTimeoutMs: 10_000 } } as unknown as Parameters<typeof configWarnings>[0];
  const directory = { masterUserFilter: '(employeeType=x)', masterUserSeparator: '*' } as never;
  const replay = { loginMode: 'replay' } as never;
  const trusted = { loginMode: 'master-user' } as never;
  assert.deepEqual(configWarnings({ ...base, directory: {} as never, backend: replay, backendProfiles: new Map([['p', replay]]) }, new Map([['a', { backend: replay }]])), []);
  const warnings = configWarnings({ ...base, directory, backend: replay, backendProfiles: new Map([['cyrus', trusted], ['plain', replay]]) }, new Map([['a', { backend: replay }], ['b', { backend: trusted }]]));
  assert.deepEqual(
    warnings.map((w) => [w.event, w.path]),
    [
      ['config.master_user_replay', 'backend.login_mode'],
      ['config.master_user_replay', 'backend_profiles.plain.login_mode'],
      ['config.master_user_replay', 'stores'],
    ],
  );
  assert.match(warnings[0]!.text, /^directory\.master_user_filter is set and backend\.login_mode is "replay": master logins to the stores that keep it are refused \(MASTER_USER_NEEDS_TRUST_MODE/);
  assert.match(warnings[2]!.text, /and 1 store of the store map logs in with login_mode "replay" \(a\): master logins to it are refused/);
  const many = new Map(Array.from({ length: 12 }, (_, i) => [`s${i}`, { backend: replay }] as const));
  assert.match(configWarnings({ ...base, directory, backend: trusted, backendProfiles: new Map() }, many)[0]!.text, /12 stores of the store map log in with login_mode "replay" \(s0, s1, s2, s3, s4, s5, s6, s7, s8, s9 and 2 more\): master logins to them are refused/);
  assert.deepEqual(configWarnings({ ...base, directory, backend: trusted, backendProfiles: new Map([['cyrus', trusted]]) }, new Map([['b', { backend: trusted }]])), []);
});

test('check-config prints the warning for the config and for the stores of the store map it reads', async () => {
  const dir = tmpDir('config-master-check').path;
  writeFileSync(join(dir, 'stores.yaml'), `${STORES}  b:\n    current_master: b1\n    backend: { login_mode: master-user, proxy_user: pm, proxy_password: pm-secret-1 }\n    slots:\n      b1: { host: 127.0.0.1, imap_port: 2002 }\n`);
  const file = write(dir, 'check', '  master_user_filter: "(employeeType=mail-helpdesk)"\n');
  const result = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
    execFile(process.execPath, [CLI, 'check-config', file], { timeout: 30_000 }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : -1, stdout, stderr });
    });
  });
  assert.equal(result.code, 0, result.stderr);
  assert.match(result.stdout, /\nwarning: directory\.master_user_filter is set and backend\.login_mode is "replay": master logins to the stores that keep it are refused/);
  assert.match(result.stdout, /\nwarning: directory\.master_user_filter is set and 1 store of the store map logs in with login_mode "replay" \(a\): master logins to it are refused/);
});
