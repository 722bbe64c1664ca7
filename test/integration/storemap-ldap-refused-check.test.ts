/**
 * A failover refused by a read-only consumer (STOREMAP_READ_ONLY_REPLICA) after its check read a
 * store map newer than the holder's: that newer map is put in force by the next polls, as if the
 * check had not read it (it was never put in force before: the check's read made it the source's
 * last loaded, and the polls found nothing new; the rv-diff3 review's lost-change repro).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Client } from 'ldapts';
import { readBackend } from '../../src/config/schema.js';
import { IssueList } from '../../src/config/validate.js';
import { createLogger } from '../../src/log.js';
import { StoreMapHolder } from '../../src/routing/holder.js';
import { LdapStoreMapSource } from '../../src/routing/sources.js';
import { LDAP_STORES_DN } from './servers/index.js';
import { startSlapdPair } from './servers/slapd-pair.js';
import type { PairMember } from './servers/slapd-pair.js';
import { storeEntries, FAILOVER_ACCESS } from './store-entries.js';

const config = (): ReturnType<ConstructorParameters<typeof StoreMapHolder>[1]> => ({ backend: readBackend(undefined, 'backend', (p) => p, new IssueList()), backendProfiles: new Map() });

async function masterOn(server: PairMember, store: string): Promise<string | undefined> {
  const client = new Client({ url: server.url });
  try {
    await client.bind(server.bindDn, server.bindPassword);
    const { searchEntries } = await client.search(`cn=${store},${LDAP_STORES_DN}`, { scope: 'base', attributes: ['mailfrontCurrentMaster'] });
    return String(searchEntries[0]?.['mailfrontCurrentMaster']);
  } finally {
    await client.unbind().catch(() => undefined);
  }
}

test('a change read by a refused failover\'s check is put in force by the polls', { timeout: 60_000 }, async () => {
  const pair = await startSlapdPair({ mode: 'consumer', entries: storeEntries(2), access: FAILOVER_ACCESS });
  const [provider, consumer] = pair.servers;
  // The default poll interval (1 s); whole reads every 3 s instead of 30 s, to show they do not heal it either.
  const source = new LdapStoreMapSource({ kind: 'ldap', urls: [consumer.url], bindDn: consumer.bindDn, bindPassword: consumer.bindPassword, baseDn: LDAP_STORES_DN, pollIntervalMs: 1_000, starttls: false, operationTimeoutMs: 2_000 }, undefined, createLogger('silent'), { fullReadIntervalMs: 3_000 });
  const holder = new StoreMapHolder(source, config, createLogger('silent'), { changes: () => undefined });
  assert.equal((await holder.reload('start')).ok, true);
  const stop = source.watch(() => void holder.reload('change'), () => undefined);
  try {
    await sleep(1_500);
    // Another instance fails st2 over on the provider; it reaches the consumer...
    await provider.modify(`dn: cn=st2,${LDAP_STORES_DN}\nchangetype: modify\nreplace: mailfrontCurrentMaster\nmailfrontCurrentMaster: sl2b\n`);
    while ((await masterOn(consumer, 'st2')) !== 'sl2b') await sleep(20);
    // ...and within the poll interval, this instance is asked to fail st1 over (refused: a read-only replica).
    await assert.rejects(holder.failover('st1', 'sl1b'), /read-only replica/);
    const refused = performance.now();
    while (holder.current.stores.get('st2')?.currentMaster !== 'sl2b' && performance.now() - refused < 5_000) await sleep(50);
    assert.equal(holder.current.stores.get('st2')?.currentMaster, 'sl2b', 'the failover of st2 on the server is in force within 5 s');
  } finally {
    stop();
    await source.close();
    await pair.stop();
  }
});
