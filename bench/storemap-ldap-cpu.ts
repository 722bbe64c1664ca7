/**
 * The LDAP store map's polls against a real 389 Directory Server: mailfront's CPU (this process:
 * LdapStoreMapSource.watch() at the default 1 s, a StoreMapHolder reloading on each change, as
 * serve does) over 15 s with nothing changing, then over the 15 s after each of three failovers
 * written by ldapmodify (another tool). 2,000 stores of two slots by default. With
 * BENCH_USN=1 the server has the USN plugin on (lastusn, entryusn); else as dscreate makes it.
 * Bounded: one server, three changes, a fixed schedule. Loopback only.
 *
 *   BENCH_USN=1 node dist/bench/storemap-ldap-cpu.js      (BENCH_STORES, default 2000)
 */
import { setTimeout as sleep } from 'node:timers/promises';
import { readBackend } from '../src/config/schema.js';
import { IssueList } from '../src/config/validate.js';
import { createLogger } from '../src/log.js';
import { StoreMapHolder } from '../src/routing/holder.js';
import { LdapStoreMapSource } from '../src/routing/sources.js';
import { LDAP_STORES_DN, startDs389 } from '../test/integration/servers/index.js';

const STORES = Number(process.env['BENCH_STORES'] ?? '2000');
const USN = process.env['BENCH_USN'] === '1';
const WINDOW_MS = 15_000;

/** CPU (user + system) of this process over `ms`, in ms. */
async function cpuOver(ms: number): Promise<number> {
  const before = process.cpuUsage();
  await sleep(ms);
  const used = process.cpuUsage(before);
  return (used.user + used.system) / 1000;
}

const ds = await startDs389({ users: [], usn: USN });
try {
  const ldif: string[] = [];
  for (let s = 0; s < STORES; s++) {
    ldif.push(`dn: cn=st${s},${LDAP_STORES_DN}`, 'changetype: add', 'objectClass: mailfrontStore', `cn: st${s}`, `mailfrontCurrentMaster: sl${s}a`, '');
    for (const [j, slot] of ['a', 'b'].entries()) ldif.push(`dn: cn=sl${s}${slot},cn=st${s},${LDAP_STORES_DN}`, 'changetype: add', 'objectClass: mailfrontSlot', `cn: sl${s}${slot}`, 'mailfrontHost: 127.0.0.1', `mailfrontImapPort: ${10143 + j}`, '');
  }
  // 389 DS's look-through limit (5,000 entries) bounds a paged search: lifted for the account, as the README says.
  await ds.modify(`dn: ${ds.bindDn}\nchangetype: modify\nreplace: nsPagedLookThroughLimit\nnsPagedLookThroughLimit: -1\n-\n`);
  await ds.modify(ldif.join('\n'));
  const source = new LdapStoreMapSource({ kind: 'ldap', urls: [ds.url], bindDn: ds.bindDn, bindPassword: ds.bindPassword, baseDn: LDAP_STORES_DN, pollIntervalMs: 1_000, starttls: false, operationTimeoutMs: 5_000 });
  const holder = new StoreMapHolder(source, () => ({ backend: readBackend(undefined, 'backend', (p) => p, new IssueList()), backendProfiles: new Map() }), createLogger('silent'), { changes: () => undefined });
  const loaded = await holder.reload('start');
  if (!loaded.ok) throw new Error(`the map did not load: ${loaded.error}`);
  const stop = source.watch(() => void holder.reload('change'));
  try {
    // Past the first whole-read interval and the margins after the import.
    await sleep(35_000);
    const quiet = await cpuOver(WINDOW_MS);
    const after: number[] = [];
    for (const s of [11, 12, 13]) {
      await ds.modify(`dn: cn=st${s},${LDAP_STORES_DN}\nchangetype: modify\nreplace: mailfrontCurrentMaster\nmailfrontCurrentMaster: sl${s}b\n`);
      after.push(await cpuOver(WINDOW_MS));
      if (holder.current.stores.get(`st${s}`)?.currentMaster !== `sl${s}b`) throw new Error(`the failover of st${s} was not in force ${WINDOW_MS} ms later`);
    }
    console.log(JSON.stringify({ stores: STORES, usn: USN, quietCpuMsPer15s: Math.round(quiet), afterChangeCpuMsPer15s: after.map(Math.round) }));
  } finally {
    stop();
    await source.close();
  }
} finally {
  await ds.stop();
}
