/**
 * mailfront against a real 389 Directory Server (ds389.ts harness) and Dovecot: a user logs in,
 * and the shipped 389 DS schema and the README's ACIs carry a store map and its failover.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { LineClient, LDAP_STORES_DN, startDovecot, startDs389 } from './servers/index.js';
import type { Dovecot, Ds389 } from './servers/index.js';
import { registerPasswords, startFront } from './front.js';
import type { Front } from './front.js';
import { LdapStoreMapSource } from '../../src/routing/sources.js';
import { StoreMapHolder } from '../../src/routing/holder.js';
import { createLogger } from '../../src/log.js';
import { readBackend } from '../../src/config/schema.js';
import { IssueList } from '../../src/config/validate.js';

const PASSWORD = 'Ds389-user-pw-4c1';
const WRONG = 'Ds389-wrong-pw-9d2';
const USERS = ['alice', 'bob', 'disabled', 'lockme', 'expired', 'gracie', 'reset'];

let ds: Ds389;
let a1: Dovecot;

before(async () => {
  registerPasswords(PASSWORD, WRONG, ...[0, 1, 2, 3, 4].map((i) => `${WRONG}-${i}`));
  ds = await startDs389({ users: USERS.map((uid) => ({ uid, password: PASSWORD, store: 'alpha' })) });
  a1 = await startDovecot({ name: 'ds389-a1', users: USERS.map((name) => ({ name, password: PASSWORD })), sieve: true });
  // 389 DS's global password policy: three wrong passwords lock an account out; passwords expire,
  // with two grace logins; one an administrator sets must be changed.
  await ds.modify(
    [
      'dn: cn=config',
      'changetype: modify',
      ...[['passwordLockout', 'on'], ['passwordMaxFailure', '3'], ['passwordExp', 'on'], ['passwordMaxAge', '8640000'], ['passwordGraceLimit', '2'], ['passwordMustChange', 'on']].flatMap(([name, value]) => [`replace: ${name}`, `${name}: ${value}`, '-']),
      '',
      `dn: ${ds.userDn('disabled')}`,
      'changetype: modify',
      'add: nsAccountLock',
      'nsAccountLock: true',
      '-',
      '',
      // Expired long ago, its grace logins used.
      `dn: ${ds.userDn('expired')}`,
      'changetype: modify',
      'replace: passwordExpirationTime',
      'passwordExpirationTime: 20000101000000Z',
      '-',
      'replace: passwordGraceUserTime',
      'passwordGraceUserTime: 2',
      '-',
      '',
      `dn: ${ds.userDn('gracie')}`,
      'changetype: modify',
      'replace: passwordExpirationTime',
      'passwordExpirationTime: 20000101000000Z',
      '-',
      '',
      // Set by the administrator (Directory Manager) under passwordMustChange.
      `dn: ${ds.userDn('reset')}`,
      'changetype: modify',
      'replace: userPassword',
      `userPassword: ${PASSWORD}`,
      '-',
      '',
    ].join('\n'),
  );
});

after(async () => {
  await Promise.all([ds?.stop(), a1?.stop()]);
});

function stores(): Parameters<typeof startFront>[0]['stores'] {
  return { alpha: { currentMaster: 'a1', slots: { a1: { imapPort: a1.imapPort, pop3Port: a1.pop3Port, sievePort: a1.sievePort! } } } };
}

async function imapLogin(front: Front, user: string, password: string): Promise<{ line: string; ms: number }> {
  const c = await LineClient.connect(front.imapTrustedPort);
  try {
    await c.readLine();
    const started = Date.now();
    c.send(`t1 LOGIN "${user}" "${password}"`);
    return { line: await c.readLine(), ms: Date.now() - started };
  } finally {
    c.close();
  }
}

describe('389 DS with the password policy control (the default)', () => {
  let front: Front;
  before(async () => {
    front = await startFront({ slapd: ds, stores: stores(), sieve: true });
  });
  after(async () => {
    await front?.stop();
  });

  test('a user of 389 DS logs in', async () => {
    assert.match((await imapLogin(front, 'alice', PASSWORD)).line, /^t1 OK /);
  });
});

describe('a store map in 389 DS', () => {
  const storeLdif = (name: string): string =>
    [
      `dn: cn=${name},${LDAP_STORES_DN}`,
      'changetype: add',
      'objectClass: mailfrontStore',
      `cn: ${name}`,
      `mailfrontCurrentMaster: ${name}a`,
      '',
      ...['a', 'b'].flatMap((s, i) => [`dn: cn=${name}${s},cn=${name},${LDAP_STORES_DN}`, 'changetype: add', 'objectClass: mailfrontSlot', `cn: ${name}${s}`, 'mailfrontHost: 127.0.0.1', `mailfrontImapPort: ${10143 + i}`, '']),
    ].join('\n');

  test('the shipped schema and the README\'s ACIs: the service account reads the map and writes a failover', async () => {
    await ds.modify(storeLdif('s1'));
    const source = new LdapStoreMapSource({ kind: 'ldap', urls: [ds.url], bindDn: ds.bindDn, bindPassword: ds.bindPassword, baseDn: LDAP_STORES_DN, pollIntervalMs: 100, starttls: false, operationTimeoutMs: 2_000 });
    const holder = new StoreMapHolder(source, () => ({ backend: readBackend(undefined, 'backend', (p) => p, new IssueList()), backendProfiles: new Map() }), createLogger('silent'), { changes: () => undefined });
    try {
      assert.equal((await holder.reload('start')).ok, true);
      assert.equal(holder.current.stores.get('s1')!.currentMaster, 's1a');
      const result = await holder.failover('s1', 's1b');
      assert.deepEqual(result.changes, [{ store: 's1', from: 's1a', to: 's1b' }]);
      const written = (await source.load()) as { stores: Record<string, { current_master: string; preferred_master?: string }> };
      assert.equal(written.stores['s1']!.current_master, 's1b');
      assert.equal(written.stores['s1']!.preferred_master, 's1a', 'the preferred master written with it');
    } finally {
      await source.close();
    }
  });

});
