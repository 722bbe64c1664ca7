// config/ldap/mailfront.ldif loaded the way the README says, into a real slapd configured with
// cn=config (slapd -F): `ldapadd -Y EXTERNAL -H ldapi:///`, as root over the local socket. Store,
// slot and user entries with mailfront's classes and attributes are then taken, which they were
// not before; the schema stays after a restart. (mailfront.schema, slapd.conf's form, is what
// every other slapd of the tests includes; mailfront-389ds.ldif is loaded by the 389 DS harness.)
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { Client } from 'ldapts';
import { LDAP_BASE_DN, LDAP_ROOT_DN, LDAP_STORES_DN, freePort, lifecycleOf, repoRootDir, restartable, run, spawnDaemon, tmpDir, waitForPort } from './servers/index.js';
import type { TmpDir } from './servers/index.js';

const ROOT_PASSWORD = 'cnconfig-root-secret';
let dir: TmpDir;
let url: string;
let ldapiUrl: string;
let slapd: ReturnType<typeof lifecycleOf>;

const ENTRIES = [
  `dn: ${LDAP_BASE_DN}`,
  'changetype: add',
  'objectClass: dcObject',
  'objectClass: organization',
  'o: mailfront tests',
  'dc: example',
  '',
  `dn: ${LDAP_STORES_DN}`,
  'changetype: add',
  'objectClass: organizationalUnit',
  'ou: stores',
  '',
  `dn: ou=people,${LDAP_BASE_DN}`,
  'changetype: add',
  'objectClass: organizationalUnit',
  'ou: people',
  '',
].join('\n');

const MAILFRONT_ENTRIES = [
  `dn: cn=store1,${LDAP_STORES_DN}`,
  'changetype: add',
  'objectClass: mailfrontStore',
  'cn: store1',
  'mailfrontCurrentMaster: slot1a',
  'mailfrontPreferredMaster: slot1a',
  'mailfrontMaintenance: TRUE',
  '',
  `dn: cn=slot1a,cn=store1,${LDAP_STORES_DN}`,
  'changetype: add',
  'objectClass: mailfrontSlot',
  'cn: slot1a',
  'mailfrontHost: 127.0.0.1',
  'mailfrontImapPort: 143',
  'mailfrontPop3Port: 110',
  'mailfrontSievePort: 4190',
  '',
  `dn: uid=ann,ou=people,${LDAP_BASE_DN}`,
  'changetype: add',
  'objectClass: inetOrgPerson',
  'objectClass: mailfrontUser',
  'uid: ann',
  'cn: ann',
  'sn: ann',
  'mailStore: store1',
  'mailfrontHold: TRUE',
  '',
].join('\n');

function ldapmodify(ldif: string): Promise<unknown> {
  return run('ldapmodify', ['-x', '-H', url, '-D', LDAP_ROOT_DN, '-w', ROOT_PASSWORD], { input: ldif, env: { ...process.env, LDAPNOINIT: '1' } });
}

before(async () => {
  dir = tmpDir('slapd-cnconfig');
  const port = await freePort();
  url = `ldap://127.0.0.1:${port}`;
  const socket = join(dir.path, 'ldapi');
  ldapiUrl = `ldapi://${encodeURIComponent(socket)}`;
  const conf = join(dir.path, 'slapd.conf');
  const configDir = join(dir.path, 'slapd.d');
  await mkdir(configDir);
  await mkdir(join(dir.path, 'data'), { mode: 0o700 });
  await writeFile(
    conf,
    [
      'include /etc/ldap/schema/core.schema',
      'include /etc/ldap/schema/cosine.schema',
      'include /etc/ldap/schema/inetorgperson.schema',
      `pidfile ${join(dir.path, 'slapd.pid')}`,
      'modulepath /usr/lib/ldap',
      'moduleload back_mdb',
      // What Debian's slapd package sets up: root over ldapi:/// manages cn=config.
      'database config',
      'access to * by dn.exact=gidNumber=0+uidNumber=0,cn=peercred,cn=external,cn=auth manage by * none',
      'database mdb',
      'maxsize 268435456',
      `suffix "${LDAP_BASE_DN}"`,
      `rootdn "${LDAP_ROOT_DN}"`,
      `rootpw ${ROOT_PASSWORD}`,
      `directory ${join(dir.path, 'data')}`,
      '',
    ].join('\n'),
  );
  // The tree first (slaptest opens the database read-only), then slapd.conf converted to a
  // cn=config directory, which slapd -F runs from.
  await writeFile(join(dir.path, 'base.ldif'), ENTRIES.replaceAll('changetype: add\n', ''));
  await run('slapadd', ['-q', '-f', conf, '-l', join(dir.path, 'base.ldif')]);
  await run('slaptest', ['-f', conf, '-F', configDir]);
  const life = await restartable(
    'slapd',
    () => spawnDaemon({ name: 'slapd', command: '/usr/sbin/slapd', args: ['-F', configDir, '-h', `${url}/ ${ldapiUrl}/`, '-d', '0'], logFile: join(dir.path, 'slapd.log'), cwd: dir.path }),
    (daemon) => waitForPort(port, { daemon }),
    () => dir.remove(),
  );
  slapd = lifecycleOf(life);
});

after(async () => {
  await slapd?.stop();
  await dir?.remove();
});

test("config/ldap/mailfront.ldif loads into cn=config with ldapadd -Y EXTERNAL over ldapi:///, and mailfront's entries are taken after it (and after a restart)", async () => {
  // Without the schema the entries are refused.
  await assert.rejects(ldapmodify(MAILFRONT_ENTRIES), /mailfrontStore|objectClass|undefined/i);

  await run('ldapadd', ['-Y', 'EXTERNAL', '-H', ldapiUrl, '-f', join(repoRootDir(), 'config/ldap/mailfront.ldif')], { env: { ...process.env, LDAPNOINIT: '1' } });
  await ldapmodify(MAILFRONT_ENTRIES);

  await slapd.restart();
  const client = new Client({ url });
  try {
    await client.bind(LDAP_ROOT_DN, ROOT_PASSWORD);
    const { searchEntries } = await client.search(LDAP_BASE_DN, { scope: 'sub', filter: '(|(objectClass=mailfrontStore)(objectClass=mailfrontSlot)(objectClass=mailfrontUser))', attributes: ['mailfrontCurrentMaster', 'mailfrontImapPort', 'mailStore', 'mailfrontHold'] });
    assert.deepEqual(
      searchEntries.map((e) => e.dn).sort(),
      [`cn=slot1a,cn=store1,${LDAP_STORES_DN}`, `cn=store1,${LDAP_STORES_DN}`, `uid=ann,ou=people,${LDAP_BASE_DN}`],
    );
    // SINGLE-VALUE is in force: a second mailStore is refused.
    await assert.rejects(ldapmodify(`dn: uid=ann,ou=people,${LDAP_BASE_DN}\nchangetype: modify\nadd: mailStore\nmailStore: store2\n-\n`), /single|constraint/i);
  } finally {
    await client.unbind();
  }
});
