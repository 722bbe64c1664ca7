/**
 * The store map in a database of its own glued under the advertised naming context (slapd's
 * `subordinate`): the root DSE advertises only the parent database, whose contextCSN does not move
 * when the store entries change. The polls go by the contextCSN of the database that holds the
 * base DN, and follow a failover written there within a few poll intervals (they followed it only
 * at the next whole read, 30 s later). With the stores database's contextCSN hidden from the bind
 * account, the parent's is the one found: a whole read sees a store entry newer than it, and the
 * polls go by modifyTimestamp (they went by the parent's, and said "unchanged" until the whole read).
 */
import assert from 'node:assert/strict';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { readBackend } from '../../src/config/schema.js';
import { IssueList } from '../../src/config/validate.js';
import { createLogger } from '../../src/log.js';
import { StoreMapHolder } from '../../src/routing/holder.js';
import { LdapStoreMapSource } from '../../src/routing/sources.js';
import { LDAP_BASE_DN, LDAP_ROOT_DN, LDAP_SERVICE_DN, LDAP_STORES_DN, MAILFRONT_SCHEMA, freePort, run, spawnDaemon, sshaHash, tmpDir, waitForPort } from './servers/index.js';

const config = (): ReturnType<ConstructorParameters<typeof StoreMapHolder>[1]> => ({ backend: readBackend(undefined, 'backend', (p) => p, new IssueList()), backendProfiles: new Map() });

function database(dir: string, suffix: string, subordinate: boolean, hideContextCsn = false): string[] {
  return ['database mdb', 'maxsize 268435456', `suffix "${suffix}"`, ...(subordinate ? ['subordinate'] : []), `rootdn "${LDAP_ROOT_DN}"`, ...(subordinate ? [] : ['rootpw secret']), `directory ${dir}`, 'index objectClass eq', 'index entryCSN,entryUUID eq', ...(hideContextCsn ? [`access to dn.base="${suffix}" attrs=contextCSN by * none`] : []), 'access to * by * read', 'overlay syncprov', 'syncprov-checkpoint 1 1', ''];
}

async function gluedFailover(hideContextCsn: boolean): Promise<void> {
  const tmp = tmpDir('slapd-glued');
  const dir = tmp.path;
  const port = await freePort();
  const url = `ldap://127.0.0.1:${port}`;
  await mkdir(join(dir, 'sub'));
  await mkdir(join(dir, 'sup'));
  await writeFile(join(dir, 'mailfront.schema'), MAILFRONT_SCHEMA);
  const conf = join(dir, 'slapd.conf');
  await writeFile(conf, [
    'include /etc/ldap/schema/core.schema', 'include /etc/ldap/schema/cosine.schema', 'include /etc/ldap/schema/inetorgperson.schema', `include ${join(dir, 'mailfront.schema')}`,
    `pidfile ${join(dir, 'slapd.pid')}`, 'modulepath /usr/lib/ldap', 'moduleload back_mdb', 'moduleload syncprov', '',
    ...database(join(dir, 'sub'), LDAP_STORES_DN, true, hideContextCsn),
    ...database(join(dir, 'sup'), LDAP_BASE_DN, false),
  ].join('\n'));
  const entries = [
    `dn: ${LDAP_BASE_DN}`, 'objectClass: dcObject', 'objectClass: organization', 'o: test', 'dc: example', '',
    `dn: ${LDAP_SERVICE_DN}`, 'objectClass: organizationalRole', 'objectClass: simpleSecurityObject', 'cn: mailfront', `userPassword: ${sshaHash('secret')}`, '',
    `dn: ${LDAP_STORES_DN}`, 'objectClass: organizationalUnit', 'ou: stores', '',
    `dn: cn=st1,${LDAP_STORES_DN}`, 'objectClass: mailfrontStore', 'cn: st1', 'mailfrontCurrentMaster: sl1a', '',
    ...['a', 'b'].flatMap((x) => [`dn: cn=sl1${x},cn=st1,${LDAP_STORES_DN}`, 'objectClass: mailfrontSlot', `cn: sl1${x}`, 'mailfrontHost: 127.0.0.1', 'mailfrontImapPort: 10143', '']),
  ].join('\n');
  await writeFile(join(dir, 'data.ldif'), entries);
  // Without -w (slapadd crashes with it, now and then, on glued databases): each database gets its contextCSN at its first write.
  await run('slapadd', ['-f', conf, '-b', LDAP_BASE_DN, '-l', join(dir, 'data.ldif')]);
  const daemon = spawnDaemon({ name: 'slapd', command: '/usr/sbin/slapd', args: ['-f', conf, '-h', `${url}/`, '-d', '0'], logFile: join(dir, 'slapd.log'), cwd: dir });
  const source = new LdapStoreMapSource({ kind: 'ldap', urls: [url], bindDn: LDAP_SERVICE_DN, bindPassword: 'secret', baseDn: LDAP_STORES_DN, pollIntervalMs: 500, starttls: false, operationTimeoutMs: 2_000 }, undefined, createLogger('silent'));
  const holder = new StoreMapHolder(source, config, createLogger('silent'), { changes: () => undefined });
  let stop = (): void => undefined;
  try {
    await waitForPort(port, { daemon });
    const modify = (text: string): Promise<unknown> => run('ldapmodify', ['-x', '-H', url, '-D', LDAP_ROOT_DN, '-w', 'secret'], { input: text, env: { ...process.env, LDAPNOINIT: '1' } });
    await modify(`dn: ${LDAP_BASE_DN}\nchangetype: modify\nreplace: description\ndescription: the parent database\n\ndn: ${LDAP_STORES_DN}\nchangetype: modify\nreplace: description\ndescription: the stores database\n`);
    // A store entry written since the parent database was: what shows that the parent's contextCSN, the only one readable when the stores database's is hidden, is not theirs.
    if (hideContextCsn) await modify(`dn: cn=sl1b,cn=st1,${LDAP_STORES_DN}\nchangetype: modify\nreplace: mailfrontImapPort\nmailfrontImapPort: 10143\n`);
    assert.equal((await holder.reload('start')).ok, true);
    assert.equal(holder.current.stores.get('st1')?.currentMaster, 'sl1a');
    stop = source.watch(() => void holder.reload('change'), () => undefined);
    // A few polls first: the ones that go by the contextCSN.
    await sleep(2_000);
    await modify(`dn: cn=st1,${LDAP_STORES_DN}\nchangetype: modify\nreplace: mailfrontCurrentMaster\nmailfrontCurrentMaster: sl1b\n`);
    const written = performance.now();
    while (holder.current.stores.get('st1')?.currentMaster !== 'sl1b' && performance.now() - written < 10_000) await sleep(50);
    assert.equal(holder.current.stores.get('st1')?.currentMaster, 'sl1b', 'the failover is in force within 10 s (the poll interval is 0.5 s)');
  } finally {
    stop();
    await source.close();
    await daemon.stop();
    await tmp.remove();
  }
}

test('a failover in a glued (subordinate) stores database is followed within a few polls', { timeout: 60_000 }, () => gluedFailover(false));

test('a failover in a glued stores database whose contextCSN the bind account may not read is followed within a few polls (by modifyTimestamp)', { timeout: 60_000 }, () => gluedFailover(true));
