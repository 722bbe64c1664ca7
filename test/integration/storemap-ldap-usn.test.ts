/**
 * The LDAP store-map source's polls on a real 389 Directory Server with the USN plugin on (one
 * server with a counter per backend, one with the global counter): they read the root DSE's
 * lastusn and, when it moved, ask for the store entries by entryusn, where they asked by
 * modifyTimestamp and read the whole map at every poll for about 11 s after each change (389 DS
 * keeps no entryCSN). A failover written by another tool, and several changes written between two
 * polls, are in force within a poll or two, with one whole read; user entries written all along
 * (which move lastusn) cost no whole read; a deleted store leaves the map within the full-read
 * interval; after a switch to the other server, whose USNs are lower, the map is read whole there
 * and its changes are followed by its own USNs. A store entry without an entryusn the account may
 * read is said (storemap.usn_not_used), and the polls go by modifyTimestamp. Two 389 DS in
 * multi-master replication: a failover replicated after a later local write to the same entry,
 * which leaves the entry the local write's entryusn, is in force within a poll or two.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { Client } from 'ldapts';
import { readBackend } from '../../src/config/schema.js';
import { IssueList } from '../../src/config/validate.js';
import { createLogger } from '../../src/log.js';
import { StoreMapHolder } from '../../src/routing/holder.js';
import { LdapStoreMapSource } from '../../src/routing/sources.js';
import { LDAP_STORES_DN, startDs389 } from './servers/index.js';
import type { Ds389 } from './servers/index.js';
import { failoverLdif } from './store-entries.js';

const STORES = 30;
const POLL_MS = 100;
const FULL_READ_MS = 4_000;
const MARGIN_MS = 1_000;
const PASSWORD = 'Usn-user-pw-7e1';
const STORE_ENTRIES_FILTER = '(|(objectClass=mailfrontStore)(objectClass=mailfrontSlot))';
const run = promisify(execFile);

let ds1: Ds389;
let ds2: Ds389;
/** The multi-master case's two servers, replicating both ways, set up while ds1 and ds2 start. */
let mm: [Ds389, Ds389];

const mapLdif = (): string => {
  const ldif: string[] = [];
  for (let s = 0; s < STORES; s++) {
    ldif.push(`dn: cn=st${s},${LDAP_STORES_DN}`, 'changetype: add', 'objectClass: mailfrontStore', `cn: st${s}`, `mailfrontCurrentMaster: sl${s}a`, '');
    for (const [j, slot] of ['a', 'b'].entries()) ldif.push(`dn: cn=sl${s}${slot},cn=st${s},${LDAP_STORES_DN}`, 'changetype: add', 'objectClass: mailfrontSlot', `cn: sl${s}${slot}`, 'mailfrontHost: 127.0.0.1', `mailfrontImapPort: ${10143 + j}`, '');
  }
  return ldif.join('\n');
};

before(async () => {
  const single = Promise.all([startDs389({ users: [{ uid: 'alice', password: PASSWORD }], usn: true }), startDs389({ users: [{ uid: 'alice', password: PASSWORD }], usn: 'global' })]);
  const pair = Promise.all([startDs389({ users: [], usn: true }), startDs389({ users: [], usn: true })]);
  [[ds1, ds2], mm] = await Promise.all([
    single.then(async (servers) => {
      await Promise.all(servers.map((ds) => ds.modify(mapLdif())));
      return servers;
    }),
    pair.then(async (servers) => {
      await replicate(...servers);
      return servers;
    }),
  ]);
});
after(async () => {
  await Promise.all([ds1?.stop(), ds2?.stop(), ...(mm ?? []).map((ds) => ds.stop())]);
});

/**
 * Counts the source's searches of the store entries on `servers`: whole reads, by modifyTimestamp,
 * by entryusn (those of the multi-master case, which runs alongside on servers of its own, left out).
 */
function countingSearches(servers: readonly Ds389[]): { readonly whole: () => number; readonly byTime: () => number; readonly byUsn: () => number; readonly restore: () => void } {
  const original = Client.prototype.searchPaginated;
  const counts = { whole: 0, byTime: 0, byUsn: 0 };
  const urls = new Set(servers.map((ds) => ds.url));
  Client.prototype.searchPaginated = function (this: Client, ...args: Parameters<typeof original>) {
    const filter = String(args[1]?.filter ?? '');
    if (!urls.has((this as unknown as { clientOptions: { url: string } }).clientOptions.url)) return original.apply(this, args);
    if (filter === STORE_ENTRIES_FILTER) counts.whole++;
    else if (filter.includes('modifyTimestamp')) counts.byTime++;
    else if (filter.includes('entryUSN')) counts.byUsn++;
    return original.apply(this, args);
  } as typeof original;
  return { whole: () => counts.whole, byTime: () => counts.byTime, byUsn: () => counts.byUsn, restore: () => (Client.prototype.searchPaginated = original) };
}

const config = (): ReturnType<ConstructorParameters<typeof StoreMapHolder>[1]> => ({ backend: readBackend(undefined, 'backend', (p) => p, new IssueList()), backendProfiles: new Map() });

/** Waits (at most `ms`) until `done`; true if it came. */
async function until(done: () => boolean, ms: number): Promise<boolean> {
  const end = performance.now() + ms;
  while (!done() && performance.now() < end) await sleep(20);
  return done();
}


/** Writes alice's entry on `ds` every 150 ms (each write moves lastusn) until the returned stop. */
function userWrites(ds: Ds389): () => Promise<void> {
  let stopped = false;
  const loop = (async () => {
    for (let i = 0; i < 2_000 && !stopped; i++) {
      await ds.modify(`dn: ${ds.userDn('alice')}\nchangetype: modify\nreplace: description\ndescription: write ${i}\n`);
      await sleep(150);
    }
  })();
  return async () => {
    stopped = true;
    await loop;
  };
}

/** dsconf against `ds` as its Directory Manager. */
async function dsconf(ds: Ds389, ...args: string[]): Promise<string> {
  const { stdout } = await run('dsconf', ['-D', ds.rootDn, '-w', ds.rootPassword, ds.url, ...args], { env: { ...process.env, LDAPNOINIT: '1' } });
  return stdout;
}

/** One attribute of `dn` on `ds`, read as its Directory Manager. */
async function rootRead(ds: Ds389, dn: string, attribute: string): Promise<string | undefined> {
  const client = new Client({ url: ds.url });
  try {
    await client.bind(ds.rootDn, ds.rootPassword);
    const { searchEntries } = await client.search(dn, { scope: 'base', attributes: [attribute] });
    const value = Object.entries(searchEntries[0] ?? {}).find(([key]) => key.toLowerCase() === attribute.toLowerCase())?.[1];
    return Array.isArray(value) ? String(value[0]) : value === undefined ? undefined : String(value);
  } finally {
    await client.unbind();
  }
}

const SUFFIX = ['--suffix', 'dc=example,dc=org'];

/**
 * The multi-master case's set-up, as the review did it: the map written on a, replication on
 * both (dsconf), a-to-b made with --init (waited for), then b-to-a.
 */
async function replicate(a: Ds389, b: Ds389): Promise<void> {
  const manager = ['--bind-dn', 'cn=replication manager,cn=config', '--bind-passwd', 'repl-secret-1'];
  await a.modify(mapLdif());
  for (const [ds, id] of [[a, 1], [b, 2]] as const) await dsconf(ds, 'replication', 'enable', ...SUFFIX, '--role', 'supplier', '--replica-id', String(id), ...manager);
  const agreement = (from: Ds389, to: Ds389, name: string, ...more: string[]): Promise<string> => dsconf(from, 'repl-agmt', 'create', ...SUFFIX, '--host', '127.0.0.1', '--port', String(to.port), '--conn-protocol', 'LDAP', ...manager, '--bind-method', 'SIMPLE', ...more, name);
  await agreement(a, b, 'a-to-b', '--init');
  let initialized = false;
  for (let i = 0; i < 60 && !initialized; i++) {
    const status = await dsconf(a, 'repl-agmt', 'init-status', ...SUFFIX, 'a-to-b');
    if (/fail|error/i.test(status)) throw new Error(status);
    initialized = /success/i.test(status);
    if (!initialized) await sleep(500);
  }
  assert.ok(initialized, 'b was not initialized from a');
  await agreement(b, a, 'b-to-a');
}

// The multi-master case runs at once with the two others (which share ds1 and ds2, one after the
// other): its servers are its own, set up in before(), and it spends its time waiting for
// margins and replication.
describe('389 DS with the USN plugin', { concurrency: true }, () => {
  // One after the other (a suite takes its parent's concurrency otherwise): the second hides an
  // entryusn on ds2, which the first switches to.
  describe('one server, then the other', { concurrency: 1 }, () => {
    test('389 DS with the USN plugin: polls by lastusn and entryusn; changes between polls, a deletion and a switch of servers are all followed', async () => {
      const counted = countingSearches([ds1, ds2]);
      const source = new LdapStoreMapSource({ kind: 'ldap', urls: [ds1.url, ds2.url], bindDn: ds1.bindDn, bindPassword: ds1.bindPassword, baseDn: LDAP_STORES_DN, pollIntervalMs: POLL_MS, starttls: false, operationTimeoutMs: 2_000 }, undefined, undefined, { fullReadIntervalMs: FULL_READ_MS, recentMarginMs: MARGIN_MS });
      const holder = new StoreMapHolder(source, config, createLogger('silent'), { changes: () => undefined });
      const master = (store: string): string | undefined => holder.current.stores.get(store)?.currentMaster;
      let stop = (): void => undefined;
      let stopWrites = async (): Promise<void> => undefined;
      try {
        assert.equal((await holder.reload('start')).ok, true);
        stop = source.watch(() => void holder.reload('change'));
        stopWrites = userWrites(ds1);
        // The margin after connecting: no lastusn sample that old yet, the polls read whole.
        await sleep(MARGIN_MS + 1_000);
        let whole = counted.whole();
        await sleep(1_500);
        assert.ok(counted.whole() - whole <= 1, `1.5 s of polls with a user entry written every 150 ms read the whole map ${counted.whole() - whole} times`);

        // Another tool fails st1 over: in force within a poll or two, and one whole read for it.
        whole = counted.whole();
        let written = performance.now();
        await ds1.modify(failoverLdif('st1', 'sl1b'));
        assert.ok(await until(() => master('st1') === 'sl1b', 3_000), 'the failover written by another tool was not seen');
        assert.ok(performance.now() - written < 1_000, `seen after ${Math.round(performance.now() - written)} ms, polling every ${POLL_MS} ms`);
        await sleep(MARGIN_MS + 500);
        assert.ok(counted.whole() - whole <= 2, `a failover cost ${counted.whole() - whole} whole reads in the ${MARGIN_MS + 500} ms after it`);
        assert.ok(counted.byUsn() > 0, 'no poll asked by entryusn');

        // Several changes between two polls (one ldapmodify): a failover, a maintenance, a store added.
        written = performance.now();
        await ds1.modify(
          [
            failoverLdif('st2', 'sl2b'),
            `dn: cn=st3,${LDAP_STORES_DN}\nchangetype: modify\nreplace: mailfrontMaintenance\nmailfrontMaintenance: disk swap\n`,
            `dn: cn=new1,${LDAP_STORES_DN}\nchangetype: add\nobjectClass: mailfrontStore\ncn: new1\nmailfrontCurrentMaster: new1a\n`,
            `dn: cn=new1a,cn=new1,${LDAP_STORES_DN}\nchangetype: add\nobjectClass: mailfrontSlot\ncn: new1a\nmailfrontHost: 127.0.0.1\nmailfrontImapPort: 10143\n`,
            failoverLdif('st4', 'sl4b'),
          ].join('\n'),
        );
        assert.ok(await until(() => master('st2') === 'sl2b' && master('st4') === 'sl4b' && holder.current.stores.get('st3')?.maintenance === 'disk swap' && master('new1') === 'new1a', 3_000), 'changes written together were not all seen');
        assert.ok(performance.now() - written < 1_500, `seen after ${Math.round(performance.now() - written)} ms`);

        // Another tool deletes store st5: it leaves the map within the full-read interval.
        written = performance.now();
        await ds1.modify([`dn: cn=sl5a,cn=st5,${LDAP_STORES_DN}\nchangetype: delete\n`, `dn: cn=sl5b,cn=st5,${LDAP_STORES_DN}\nchangetype: delete\n`, `dn: cn=st5,${LDAP_STORES_DN}\nchangetype: delete\n`].join('\n'));
        assert.ok(await until(() => !holder.current.stores.has('st5'), FULL_READ_MS + 2_000), 'the deleted store stayed in the map');
        // A failover right after it, within the margin: seen within a poll.
        written = performance.now();
        await ds1.modify(failoverLdif('st6', 'sl6b'));
        assert.ok(await until(() => master('st6') === 'sl6b', 3_000), 'the failover after the deletion was not seen');
        assert.ok(performance.now() - written < 1_000, `seen after ${Math.round(performance.now() - written)} ms`);
        assert.equal(counted.byTime(), 0, 'a poll asked by modifyTimestamp');

        // ds1 stops: the source switches to ds2, whose map never had those changes (no replication
        // here) and whose global counter is far behind ds1's (which took every user write).
        await stopWrites();
        await ds1.stopOnly();
        assert.ok(await until(() => master('st1') === 'sl1a' && holder.current.stores.has('st5') && !holder.current.stores.has('new1'), 5_000), 'the map of the server switched to was not read');
        // Once the margin has passed on ds2, its changes are followed by its own USNs, within a poll.
        stopWrites = userWrites(ds2);
        await sleep(MARGIN_MS + 1_000);
        whole = counted.whole();
        const byUsn = counted.byUsn();
        written = performance.now();
        await ds2.modify(failoverLdif('st7', 'sl7b'));
        assert.ok(await until(() => master('st7') === 'sl7b', 3_000), 'a failover written on the server switched to was not seen');
        assert.ok(performance.now() - written < 1_000, `seen after ${Math.round(performance.now() - written)} ms`);
        await sleep(MARGIN_MS + 500);
        assert.ok(counted.whole() - whole <= 2, `a failover on ds2 cost ${counted.whole() - whole} whole reads`);
        assert.ok(counted.byUsn() > byUsn, 'no poll on ds2 asked by entryusn');
        assert.equal(counted.byTime(), 0, 'a poll asked by modifyTimestamp');
      } finally {
        stop();
        await stopWrites();
        counted.restore();
        await source.close();
      }
    });

    test('a store entry without an entryusn the account may read: said once, and the polls go by modifyTimestamp', async () => {
      // An ACI hides st0's entryusn from the service account (as an entry written before the plugin was on has none).
      await ds2.modify(`dn: cn=st0,${LDAP_STORES_DN}\nchangetype: modify\nadd: aci\naci: (targetattr="entryusn")(version 3.0; acl "hide entryusn"; deny (read, search, compare) userdn="ldap:///${ds2.bindDn}";)\n-\n`);
      const warnings: Array<Record<string, unknown>> = [];
      const log = createLogger('warn', { write: (line: string) => void warnings.push(JSON.parse(line) as Record<string, unknown>) });
      const counted = countingSearches([ds2]);
      const source = new LdapStoreMapSource({ kind: 'ldap', urls: [ds2.url], bindDn: ds2.bindDn, bindPassword: ds2.bindPassword, baseDn: LDAP_STORES_DN, pollIntervalMs: POLL_MS, starttls: false, operationTimeoutMs: 2_000 }, undefined, log, { fullReadIntervalMs: FULL_READ_MS, recentMarginMs: MARGIN_MS });
      const holder = new StoreMapHolder(source, config, createLogger('silent'), { changes: () => undefined });
      let stop = (): void => undefined;
      try {
        assert.equal((await holder.reload('start')).ok, true);
        stop = source.watch(() => void holder.reload('change'));
        // The ACI's write is recent: the polls read the map whole until a whole read comes a
        // margin past its second, then ask by modifyTimestamp. Waited for, not slept for: on a
        // busy machine (the whole suite) the first poll after the window came after a fixed
        // sleep, so the failover was found by a whole read, whose recent change kept them whole.
        assert.ok(await until(() => counted.byTime() > 0, 4 * (MARGIN_MS + 1_000)), 'the polls never asked by modifyTimestamp');
        await ds2.modify(failoverLdif('st8', 'sl8b'));
        assert.ok(await until(() => holder.current.stores.get('st8')?.currentMaster === 'sl8b', 3_000), 'the failover was not seen');
        const said = warnings.filter((w) => w['event'] === 'storemap.usn_not_used');
        assert.equal(said.length, 1, JSON.stringify(warnings));
        assert.equal(said[0]!['dn'], `cn=st0,${LDAP_STORES_DN}`);
        assert.ok(counted.byTime() > 0, 'no poll asked by modifyTimestamp');
        assert.equal(counted.byUsn(), 0, 'a poll asked by entryusn');
      } finally {
        stop();
        counted.restore();
        await source.close();
      }
    });
  });

  test('389 DS multi-master: a failover replicated after a later local write to the same entry (its entryusn stays the local write\'s) is in force within a poll or two', async () => {
    // The review's steps: two servers, two-way replication (dsconf: replicate(), in before()),
    // b-to-a paused while the failover is written on b, a maintenance written to the same entry
    // on a, b-to-a resumed. On a, mailfrontCurrentMaster takes b's value (per attribute, by CSN)
    // and entryusn stays the local write's.
    const [a, b] = mm;
    const margin = 4_000;
    const source = new LdapStoreMapSource({ kind: 'ldap', urls: [a.url], bindDn: a.bindDn, bindPassword: a.bindPassword, baseDn: LDAP_STORES_DN, pollIntervalMs: POLL_MS, starttls: false, operationTimeoutMs: 2_000 }, undefined, undefined, { fullReadIntervalMs: 60_000, recentMarginMs: margin });
    const holder = new StoreMapHolder(source, config, createLogger('silent'), { changes: () => undefined });
    let stop = (): void => undefined;
    try {
      assert.equal((await holder.reload('start')).ok, true);
      stop = source.watch(() => void holder.reload('change'));
      // Past the first margin: the polls go by lastusn and entryusn.
      await sleep(margin + 1_500);
      const dn = `cn=st3,${LDAP_STORES_DN}`;
      await dsconf(b, 'repl-agmt', 'disable', ...SUFFIX, 'b-to-a');
      await b.modify(failoverLdif('st3', 'sl3b'));
      // Into the next second: CSNs go by the second, and the local write's must be the later, so
      // that its entryusn (which the replicated change replaces too, with the older CSN) stays.
      await sleep(1_500);
      await a.modify(`dn: ${dn}\nchangetype: modify\nreplace: mailfrontMaintenance\nmailfrontMaintenance: disk swap\n`);
      assert.ok(await until(() => holder.current.stores.get('st3')?.maintenance === 'disk swap', 2_000), 'the maintenance written on a was not seen');
      const usnOfLocalWrite = await rootRead(a, dn, 'entryusn');
      await dsconf(b, 'repl-agmt', 'enable', ...SUFFIX, 'b-to-a');
      const enabled = performance.now();
      let onA: number | undefined;
      while (onA === undefined && performance.now() - enabled < 10_000) {
        if ((await rootRead(a, dn, 'mailfrontCurrentMaster')) === 'sl3b') onA = performance.now();
        else await sleep(50);
      }
      assert.ok(onA !== undefined, 'the failover was not replicated to a');
      // The state of the miss: the failover on a, the entry still with the local write's entryusn.
      assert.equal(await rootRead(a, dn, 'entryusn'), usnOfLocalWrite);
      assert.ok(onA - enabled < margin, `replicated ${Math.round(onA - enabled)} ms after b-to-a was resumed, past the margin (${margin} ms)`);
      assert.ok(await until(() => holder.current.stores.get('st3')?.currentMaster === 'sl3b', 3_000), 'the replicated failover was not put in force (not before the next whole read)');
      assert.ok(performance.now() - onA < 1_000, `in force ${Math.round(performance.now() - onA)} ms after it was on a, polling every ${POLL_MS} ms`);
    } finally {
      stop();
      await source.close();
    }
  });
});
