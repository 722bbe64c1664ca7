// The LDAP directory against answers a real slapd gives in less common setups: a size limit of
// the service account's own, a first server that fails in part, an entry with two stores, a
// search that meets a referral. Each decides a login; none may let a user in as someone else,
// nor turn a directory's trouble into a wrong-password answer.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { LdapDirectory } from '../../src/auth/ldap.js';
import type { DirectoryConfig } from '../../src/config/schema.js';
import { createLogger } from '../../src/log.js';
import { assertNoRegisteredSecret, registerPasswords, registerSecrets, suiteLogWriter } from './front.js';
import { startSlapd } from './servers/index.js';
import type { Slapd } from './servers/index.js';
import { LDAP_PEOPLE_DN, LDAP_SERVICE_DN } from './servers/slapd.js';
import { mailfrontFailure as failure } from '../mailfront-failure.js';

registerPasswords('alice-pw', 'first-dup-pw', 'second-dup-pw', 'solo-user-pw', 'two-stores-pw', 'wrong-two-stores-pw');
const logLines: string[] = [];
const writeSuiteLog = suiteLogWriter();
const log = createLogger('debug', {
  write(line: string) {
    logLines.push(line);
    writeSuiteLog(line);
  },
});
const signal = new AbortController().signal;

let slapd: Slapd;
before(async () => {
  slapd = await startSlapd({ users: [{ uid: 'alice', password: 'alice-pw', store: 'alpha' }] });
  registerSecrets([slapd.bindPassword]);
});
after(async () => {
  await slapd?.stop();
});

function directory(server: Slapd, overrides: Partial<DirectoryConfig> = {}): LdapDirectory {
  return new LdapDirectory(
    {
      urls: [server.url],
      bindDn: server.bindDn,
      bindPassword: server.bindPassword,
      baseDn: server.usersDn,
      userFilter: '(&(objectClass=inetOrgPerson)(uid={user}))',
      storeAttribute: 'mailStore',
      starttls: false,
      connectTimeoutMs: 500,
      operationTimeoutMs: 1000,
      entryCacheTtlMs: 0,
      authCacheTtlMs: 0,
      cacheMaxEntries: 1000,
      searchConnections: 2,
      ...overrides,
    },
    log,
  );
}

test('a uid found twice is refused as ambiguous even when the server limits the service account to one entry', async () => {
  // size=1 for the service account: slapd sends one of the two entries and sizeLimitExceeded.
  const limited = await startSlapd({
    users: [
      { uid: 'dup', password: 'first-dup-pw', store: 'alpha' },
      { uid: 'solo', password: 'solo-user-pw', store: 'alpha' },
    ],
    limits: [`dn.exact="${LDAP_SERVICE_DN}" size=1`],
  });
  registerSecrets([limited.bindPassword]);
  const d = directory(limited);
  try {
    await limited.modify(
      [
        `dn: ou=other,${LDAP_PEOPLE_DN}`,
        'changetype: add',
        'objectClass: organizationalUnit',
        'ou: other',
        '',
        `dn: uid=dup,ou=other,${LDAP_PEOPLE_DN}`,
        'changetype: add',
        'objectClass: inetOrgPerson',
        'objectClass: mailfrontUser',
        'uid: dup',
        'cn: dup',
        'sn: dup',
        'userPassword: second-dup-pw',
        'mailStore: beta',
        '',
      ].join('\n'),
    );
    for (const password of ['first-dup-pw', 'second-dup-pw']) {
      const error = await failure(d.authenticate('dup', password, signal));
      assert.equal(error.code, 'LDAP_AMBIGUOUS_USER', `${password}: ${error.message}`);
      assert.equal(error.kind, 'auth-tempfail');
    }
    // The limit still lets a user found once in.
    assert.equal((await d.authenticate('solo', 'solo-user-pw', signal)).store, 'alpha');
  } finally {
    await d.close();
    await limited.stop();
  }
});

test('no password and no bind secret appears in these tests\' log lines', () => {
  assertNoRegisteredSecret(logLines, "the directory's log");
});
