// directory.user_filter's {protocol}: replaced by the login's protocol, escaped as {user} is;
// any other placeholder refused by the config reader (and so by check-config); the caches of
// the directory's answers keyed by protocol when, and only when, the filter holds it.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { CachingDirectory } from '../../src/auth/cache.js';
import type { Directory } from '../../src/auth/directory.js';
import { protocolFilter, userFilter } from '../../src/auth/ldap.js';
import { ConfigError, loadConfig } from '../../src/config/load.js';
import { filterLoginAttribute, filterUsesProtocol, loginAttributeOf, unknownFilterPlaceholders, USER_FILTER_PLACEHOLDERS } from '../../src/config/schema.js';
import type { Protocol } from '../../src/config/schema.js';
import { tmpDir } from '../integration/servers/tmp.js';
import { ONE_SLOT_STORE_MAP } from './serve-process.js';

const CLI = join(dirname(fileURLToPath(import.meta.url)), '../../src/cli/main.js');

const BY_DESCRIPTION = '(&(objectClass=inetOrgPerson)(uid={user})(description={protocol}))';

function configWithFilter(filter: string): string {
  return `
listeners:
  - { protocol: imap, host: 127.0.0.1, port: 1143, tls: none, plaintext_without_tls: true }
directory:
  urls: [ldap://127.0.0.1:389]
  bind_dn: cn=mailfront,dc=example,dc=org
  bind_password: s3cret
  base_dn: ou=people,dc=example,dc=org
  user_filter: ${JSON.stringify(filter)}
store_map: { file: stores.yaml, watch: false }
`;
}

function writeConfig(filter: string): string {
  const dir = tmpDir('user-filter').path;
  writeFileSync(join(dir, 'stores.yaml'), ONE_SLOT_STORE_MAP);
  writeFileSync(join(dir, 'mf.yaml'), configWithFilter(filter));
  return join(dir, 'mf.yaml');
}

/** The ConfigError loading a config with `filter` throws, or undefined when it loads. */
function filterError(filter: string): ConfigError | undefined {
  try {
    loadConfig(writeConfig(filter));
    return undefined;
  } catch (error) {
    assert.ok(error instanceof ConfigError, `expected a ConfigError, got ${String(error)}`);
    return error;
  }
}

test('{protocol} is replaced by the protocol\'s name, in a value and in an attribute\'s name, and {user} after it as before', () => {
  assert.equal(protocolFilter(BY_DESCRIPTION, 'pop3'), '(&(objectClass=inetOrgPerson)(uid={user})(description=pop3))');
  assert.equal(userFilter(protocolFilter(BY_DESCRIPTION, 'managesieve'), 'x*)('), '(&(objectClass=inetOrgPerson)(uid=x\\2a\\29\\28)(description=managesieve))');
  // iRedMail-style flags, one attribute per protocol: the names are letters and digits, valid in an attribute's name.
  const flags = '(&(uid={user})(enable{protocol}=TRUE)(!(deny{protocol}=*)))';
  assert.deepEqual(
    (['imap', 'pop3', 'managesieve'] as const).map((p) => protocolFilter(flags, p)),
    ['(&(uid={user})(enableimap=TRUE)(!(denyimap=*)))', '(&(uid={user})(enablepop3=TRUE)(!(denypop3=*)))', '(&(uid={user})(enablemanagesieve=TRUE)(!(denymanagesieve=*)))'],
  );
  // A user name that looks like the placeholder is a value like any other: {user} is replaced after {protocol}.
  assert.equal(userFilter(protocolFilter(BY_DESCRIPTION, 'imap'), '{protocol}'), '(&(objectClass=inetOrgPerson)(uid={protocol})(description=imap))');
  assert.equal(filterUsesProtocol(BY_DESCRIPTION), true);
  assert.equal(filterUsesProtocol('(&(objectClass=inetOrgPerson)(uid={user}))'), false);
});

test('user_filter takes {user} and {protocol}; any other placeholder is refused, naming the path, what it found and what is allowed', () => {
  assert.equal(filterError(BY_DESCRIPTION), undefined);
  assert.equal(filterError('(&(uid={user})(enable{protocol}=TRUE))'), undefined);
  // Braces of the filter's own, escaped (RFC 4515), are no placeholder.
  assert.equal(filterError('(&(uid={user})(description=\\7bimap\\7d))'), undefined);
  for (const [filter, found] of [
    ['(&(uid={user})(description={service}))', 'an unknown placeholder "{service}"'],
    ['(&(uid={user})(description={Protocol}))', 'an unknown placeholder "{Protocol}"'],
    ['(&(uid={user})(description={protocol })(mail={domain}))', 'unknown placeholders "{protocol }", "{domain}"'],
    // Dovecot's spelling: its % would reach LDAP as text.
    ['(&(uid={user})(enabledService=%{protocol}))', 'an unknown placeholder "%{protocol}"'],
    ['(&(uid=%{user})(mail={user}))', 'an unknown placeholder "%{user}"'],
    ['(&(uid={user})(description={}))', 'an unknown placeholder "{}"'],
  ] as const) {
    const error = filterError(filter);
    assert.ok(error !== undefined, `${filter} was taken`);
    const issue = error.issues.find((i) => i.path === 'directory.user_filter');
    assert.ok(issue !== undefined, `${filter}: ${error.message}`);
    assert.equal(issue.found, found, filter);
    assert.equal(issue.expected, "an LDAP filter whose placeholders are {user} and {protocol} (the session's protocol: imap, pop3, managesieve); a brace of the filter's own is written \\7b or \\7d");
  }
  // A filter without {user} is still told so.
  assert.match(filterError('(description={protocol})')?.message ?? '', /directory\.user_filter: expected an LDAP filter in parentheses \(RFC 4515\) containing \{user\}, found/);
  // One the LDAP client cannot read is refused now, with why, not at every login (where it was taken for a server failure).
  for (const filter of ['(uid={user})(objectClass=person)', '(&(uid={user})(!))']) {
    const message = filterError(filter)?.message ?? '';
    assert.match(message, /directory\.user_filter: expected an LDAP filter in parentheses \(RFC 4515\) containing \{user\}; this one does not parse: [^\n]+, found /, filter);
  }
  assert.deepEqual(unknownFilterPlaceholders('(&(a={x})(b={x})(c={user}))', USER_FILTER_PLACEHOLDERS), ['{x}']);
});

test('the login attribute is still inferred from what user_filter compares {user} with when it also holds {protocol}', () => {
  assert.equal(filterLoginAttribute(BY_DESCRIPTION), 'uid');
  assert.equal(filterLoginAttribute('(&(objectClass=inetOrgPerson)(mail={user})(enable{protocol}=TRUE))'), 'mail');
  assert.equal(filterLoginAttribute('(&(|(uid={user})(mail={user}))(description={protocol}))'), undefined);
  // An attribute that depends on the protocol is no one attribute.
  assert.equal(filterLoginAttribute('({protocol}Login={user})'), undefined);
  assert.equal(loginAttributeOf(loadConfig(writeConfig(BY_DESCRIPTION)).directory), 'uid');
});

/** A directory that lets alice in over `allowed` only, and counts the logins that reach it. */
function protocolDirectory(allowed: Protocol, byProtocol: boolean): Directory & { calls: number } {
  const directory = {
    calls: 0,
    ...(byProtocol ? { byProtocol } : {}),
    authenticate: async (user: string, _password: string, _signal: unknown, protocol?: Protocol) => {
      directory.calls++;
      if (byProtocol && protocol !== allowed) throw Object.assign(new Error('unknown user'), { code: 'UNKNOWN_USER' });
      return { user, dn: `uid=${user},ou=people`, store: 'alpha' };
    },
    lookup: async () => null,
    reachable: async () => true,
    forget: () => 0,
    cacheEntries: () => ({}),
    close: async () => undefined,
  };
  return directory;
}

test('the authentication cache keys by protocol when the directory\'s answer depends on it: an IMAP login cached does not let POP3 in', async () => {
  const signal = new AbortController().signal;
  const inner = protocolDirectory('imap', true);
  const cache = new CachingDirectory(inner, 60_000, 100);
  assert.equal(cache.byProtocol, true);
  await cache.authenticate('alice', 'alice-pw', signal, 'imap');
  await cache.authenticate('alice', 'alice-pw', signal, 'imap');
  assert.equal(inner.calls, 1, 'the second IMAP login came from the cache');
  await assert.rejects(cache.authenticate('alice', 'alice-pw', signal, 'pop3'), { code: 'UNKNOWN_USER' });
  await assert.rejects(cache.authenticate('alice', 'alice-pw', signal, 'managesieve'), { code: 'UNKNOWN_USER' });
  assert.equal(inner.calls, 3, 'each other protocol asked the directory');
  // The reverse: a refusal is not cached, and POP3 first does not make IMAP a hit.
  const pop3Only = protocolDirectory('pop3', true);
  const other = new CachingDirectory(pop3Only, 60_000, 100);
  await assert.rejects(other.authenticate('alice', 'alice-pw', signal, 'imap'), { code: 'UNKNOWN_USER' });
  await other.authenticate('alice', 'alice-pw', signal, 'pop3');
  await assert.rejects(other.authenticate('alice', 'alice-pw', signal, 'imap'), { code: 'UNKNOWN_USER' });
  assert.equal(pop3Only.calls, 3);
});

test('the authentication cache keeps one entry for every protocol when the directory\'s answer does not depend on it', async () => {
  const signal = new AbortController().signal;
  const inner = protocolDirectory('imap', false);
  const cache = new CachingDirectory(inner, 60_000, 100);
  assert.equal(cache.byProtocol, false);
  await cache.authenticate('alice', 'alice-pw', signal, 'imap');
  await cache.authenticate('alice', 'alice-pw', signal, 'pop3');
  await cache.authenticate('alice', 'alice-pw', signal, 'managesieve');
  assert.equal(inner.calls, 1);
  assert.deepEqual(cache.cacheEntries(), { auth: 1 });
});

test('check-config refuses a user_filter with an unknown placeholder, naming the path and the placeholders allowed, and exits 1', async () => {
  const file = writeConfig('(&(objectClass=inetOrgPerson)(uid={user})(description={service}))');
  const result = await new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
    execFile(process.execPath, [CLI, 'check-config', file], { timeout: 30_000 }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : -1, stdout, stderr });
    });
  });
  assert.equal(result.code, 1, result.stdout);
  assert.ok(
    result.stderr.includes('directory.user_filter: expected an LDAP filter whose placeholders are {user} and {protocol} (the session\'s protocol: imap, pop3, managesieve); a brace of the filter\'s own is written \\7b or \\7d, found an unknown placeholder "{service}"'),
    result.stderr,
  );
});
