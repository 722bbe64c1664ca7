/**
 * The LDAP store-map source's polls, against a real slapd: most read only the entries changed
 * lately (by modifyTimestamp, a few entries or none), and the whole map only when one of them
 * changed, or every full-read interval (for deletions, which stamp no remaining entry). Every poll
 * read the whole map before: at 5,000 stores 250-330 ms of CPU a second at the default interval.
 * A failover written by another tool is in force within a poll, one written by mailfront at once
 * (and not again), a deletion within the full-read interval. A poll while a load reads the whole
 * map waits for it: it found nothing to compare with meanwhile, and read the whole map as well.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Client } from 'ldapts';
import { readBackend } from '../../src/config/schema.js';
import { IssueList } from '../../src/config/validate.js';
import { createLogger } from '../../src/log.js';
import { StoreMapHolder } from '../../src/routing/holder.js';
import type { MasterChange } from '../../src/routing/holder.js';
import { LdapStoreMapSource, generalizedTimeMs } from '../../src/routing/sources.js';
import { LDAP_SERVICE_DN, LDAP_STORES_DN, startSlapd } from './servers/index.js';
import type { Slapd } from './servers/index.js';
import { failoverLdif } from './store-entries.js';

const STORES = 50;
const POLL_MS = 100;
const FULL_READ_MS = 3_000;

let slapd: Slapd;

before(async () => {
  // The service account may fail stores over, as the README has it.
  slapd = await startSlapd({ users: [], access: [`access to dn.subtree="${LDAP_STORES_DN}" attrs=mailfrontCurrentMaster,mailfrontPreferredMaster by dn.exact="${LDAP_SERVICE_DN}" write by * break`] });
  const ldif: string[] = [];
  for (let s = 0; s < STORES; s++) {
    ldif.push(`dn: cn=st${s},${LDAP_STORES_DN}`, 'changetype: add', 'objectClass: mailfrontStore', `cn: st${s}`, `mailfrontCurrentMaster: sl${s}x0`, '');
    for (let j = 0; j < 3; j++) ldif.push(`dn: cn=sl${s}x${j},cn=st${s},${LDAP_STORES_DN}`, 'changetype: add', 'objectClass: mailfrontSlot', `cn: sl${s}x${j}`, 'mailfrontHost: 127.0.0.1', `mailfrontImapPort: ${10143 + j}`, '');
  }
  await slapd.modify(ldif.join('\n'));
});
after(async () => {
  await slapd?.stop();
});

/** Counts the entries the source's searches hand over: of whole reads, and of the searches by modifyTimestamp. */
function countingSearches(): { readonly whole: () => number; readonly recent: () => number; readonly restore: () => void } {
  const original = Client.prototype.searchPaginated;
  let whole = 0;
  let recent = 0;
  Client.prototype.searchPaginated = async function* (this: Client, ...args: Parameters<typeof original>) {
    const byTime = String(args[1]?.filter ?? '').includes('modifyTimestamp');
    for await (const page of original.apply(this, args)) {
      if (byTime) recent += page.searchEntries.length;
      else whole += page.searchEntries.length;
      yield page;
    }
  } as typeof original;
  return { whole: () => whole, recent: () => recent, restore: () => (Client.prototype.searchPaginated = original) };
}

const config = (): ReturnType<ConstructorParameters<typeof StoreMapHolder>[1]> => ({ backend: readBackend(undefined, 'backend', (p) => p, new IssueList()), backendProfiles: new Map() });

/** Waits (at most `ms`) until `done`; true if it came. */
async function until(done: () => boolean, ms: number): Promise<boolean> {
  const end = performance.now() + ms;
  while (!done() && performance.now() < end) await sleep(20);
  return done();
}

test('polls read the entries changed lately, not the whole map; a failover by another tool is in force within a poll, one by mailfront at once and once; a deletion within the full-read interval', async () => {
  const counted = countingSearches();
  const source = new LdapStoreMapSource({ kind: 'ldap', urls: [slapd.url], bindDn: slapd.bindDn, bindPassword: slapd.bindPassword, baseDn: LDAP_STORES_DN, pollIntervalMs: POLL_MS, starttls: false, operationTimeoutMs: 2_000 }, undefined, undefined, { fullReadIntervalMs: FULL_READ_MS });
  const changes: MasterChange[] = [];
  const holder = new StoreMapHolder(source, config, createLogger('silent'), { changes: (c) => changes.push(...c) });
  const master = (store: string): string | undefined => holder.current.stores.get(store)?.currentMaster;
  let stop = (): void => undefined;
  try {
    assert.equal((await holder.reload('start')).ok, true);
    stop = source.watch(() => void holder.reload('change'));
    // The map was just written: the polls of the first interval look at the entries stamped
    // within seconds of the newest (all of them here); after a whole read a full interval later,
    // at none. Then 2 s of polls (about 20) read no entry, or one whole read's at most.
    await sleep(FULL_READ_MS + 500);
    const [wholeBefore, recentBefore] = [counted.whole(), counted.recent()];
    await sleep(2_000);
    const entries = STORES * 4;
    assert.ok(counted.whole() - wholeBefore <= entries, `2 s of polls read ${(counted.whole() - wholeBefore) / entries} times the whole map`);
    assert.ok(counted.recent() - recentBefore <= entries, `2 s of polls read ${counted.recent() - recentBefore} entries by modifyTimestamp`);

    // Another tool fails st7 over: in force within a poll (and its whole read).
    let written = performance.now();
    await slapd.modify(`dn: cn=st7,${LDAP_STORES_DN}\nchangetype: modify\nreplace: mailfrontCurrentMaster\nmailfrontCurrentMaster: sl7x1\n`);
    assert.ok(await until(() => master('st7') === 'sl7x1', 5_000), 'the failover written by another tool was not seen');
    const seenAfter = performance.now() - written;
    assert.ok(seenAfter < 2_000, `seen after ${Math.round(seenAfter)} ms, polling every ${POLL_MS} ms`);

    // mailfront fails st8 over: in force when the failover returns, and no later poll reports it again.
    const result = await holder.failover('st8', 'sl8x2');
    assert.equal(result.ok, true, result.error);
    assert.equal(master('st8'), 'sl8x2');
    const reported = changes.length;
    const wholeAfterFailover = counted.whole();
    await sleep(1_000);
    assert.equal(changes.length, reported, 'a poll reported the failover mailfront wrote');
    assert.ok(counted.whole() - wholeAfterFailover <= entries, 'polls after mailfront\'s failover read the whole map');

    // Another tool removes store st9: it leaves the map within the full-read interval.
    written = performance.now();
    await slapd.modify([0, 1, 2].map((j) => `dn: cn=sl9x${j},cn=st9,${LDAP_STORES_DN}\nchangetype: delete\n`).join('\n') + `\ndn: cn=st9,${LDAP_STORES_DN}\nchangetype: delete\n`);
    assert.ok(await until(() => !holder.current.stores.has('st9'), FULL_READ_MS + 3_000), 'the deleted store stayed in the map');
    assert.ok(performance.now() - written < FULL_READ_MS + 2_000);
    assert.deepEqual(changes.at(-1), { store: 'st9', from: 'sl9x0', to: null });
  } finally {
    stop();
    counted.restore();
    await source.close();
  }
});

test('a poll while the map is being loaded (a reload\'s whole read) waits for the load, and reads nothing whole itself', async () => {
  const source = new LdapStoreMapSource({ kind: 'ldap', urls: [slapd.url], bindDn: slapd.bindDn, bindPassword: slapd.bindPassword, baseDn: LDAP_STORES_DN, pollIntervalMs: POLL_MS, starttls: false, operationTimeoutMs: 2_000 }, undefined, undefined, { fullReadIntervalMs: 60_000 });
  const holder = new StoreMapHolder(source, config, createLogger('silent'), { changes: () => undefined });
  // Whole reads (the polls' searches ask for the entries changed since a value: `>=`), slowed
  // down on demand to last several poll intervals, as a whole read of 5,000 stores lasts about one.
  const original = Client.prototype.searchPaginated;
  let whole = 0;
  let slowMs = 0;
  Client.prototype.searchPaginated = async function* (this: Client, ...args: Parameters<typeof original>) {
    if (!String(args[1]?.filter ?? '').includes('>=')) {
      whole += 1;
      if (slowMs > 0) await sleep(slowMs);
    }
    yield* original.apply(this, args);
  } as typeof original;
  let stop = (): void => undefined;
  try {
    assert.equal((await holder.reload('start')).ok, true);
    stop = source.watch(() => void holder.reload('change'));
    await sleep(1_000);
    const before = whole;
    slowMs = 5 * POLL_MS;
    const reloaded = await holder.reload('signal');
    assert.equal(reloaded.ok, true, reloaded.error);
    slowMs = 0;
    await sleep(3 * POLL_MS);
    assert.equal(whole - before, 1, 'whole reads of the map during a reload and the polls meanwhile');
  } finally {
    stop();
    Client.prototype.searchPaginated = original;
    await source.close();
  }
});

test('paged searches on the connection wait for each other: two failovers asked at once and the polls meanwhile, on a map of two pages, all read it whole and both are written', async () => {
  const source = new LdapStoreMapSource({ kind: 'ldap', urls: [slapd.url], bindDn: slapd.bindDn, bindPassword: slapd.bindPassword, baseDn: LDAP_STORES_DN, pollIntervalMs: POLL_MS, starttls: false, operationTimeoutMs: 2_000 }, undefined, undefined, { fullReadIntervalMs: FULL_READ_MS });
  const holder = new StoreMapHolder(source, config, createLogger('silent'), { changes: () => undefined });
  // Every search waits 50 ms before asking for its next page (the map is 200 entries, two pages
  // of 100): a paged search started meanwhile on the same connection would end it, as slapd keeps
  // one paged search's state per connection ("paged results cookie is invalid").
  const original = Client.prototype.searchPaginated;
  let running = 0;
  let overlapped = 0;
  let pages = 0;
  Client.prototype.searchPaginated = async function* (this: Client, ...args: Parameters<typeof original>) {
    running += 1;
    if (running > 1) overlapped += 1;
    try {
      for await (const page of original.apply(this, args)) {
        pages += 1;
        yield page;
        await sleep(50);
      }
    } finally {
      running -= 1;
    }
  } as typeof original;
  const master = (store: string): string | undefined => holder.current.stores.get(store)?.currentMaster;
  let stop = (): void => undefined;
  try {
    assert.equal((await holder.reload('start')).ok, true);
    stop = source.watch(() => void holder.reload('change'));
    await sleep(3 * POLL_MS);
    const pagesBefore = pages;
    const results = await Promise.all([holder.failover('st20', 'sl20x1'), holder.failover('st21', 'sl21x2'), holder.failover('st22', 'sl22x1')]);
    for (const result of results) assert.equal(result.ok, true, result.error);
    assert.deepEqual([master('st20'), master('st21'), master('st22')], ['sl20x1', 'sl21x2', 'sl22x1']);
    // Each failover's check read both pages of the map.
    assert.ok(pages - pagesBefore >= 6, `${pages - pagesBefore} pages read`);
    assert.equal(overlapped, 0, 'a paged search began while another was under way on the connection');
  } finally {
    stop();
    Client.prototype.searchPaginated = original;
    await source.close();
  }
});

/** LDIF setting the current master of store `store`. */

/**
 * A failover written by another tool right after a whole read, within the second of the entry's
 * last change (modifyTimestamp has a granularity of a second, so it may be unchanged), is seen by
 * the next polls: by entryCSN where the server keeps it, else by reading the whole map while the
 * newest change is that recent.
 */
async function sameSecondFailovers(server: Slapd): Promise<void> {
  const source = new LdapStoreMapSource({ kind: 'ldap', urls: [server.url], bindDn: server.bindDn, bindPassword: server.bindPassword, baseDn: LDAP_STORES_DN, pollIntervalMs: POLL_MS, starttls: false, operationTimeoutMs: 2_000 });
  const master = (document: unknown): string | undefined => (document as { stores: Record<string, { current_master?: string }> } | undefined)?.stores['st3']?.current_master;
  try {
    for (const slot of ['sl3x1', 'sl3x2', 'sl3x0']) {
      await server.modify(failoverLdif('st3', slot === 'sl3x1' ? 'sl3x2' : 'sl3x1'));
      await source.load();
      await server.modify(failoverLdif('st3', slot));
      let loaded: unknown;
      const stop = source.watch(() => void source.load().then((document) => (loaded = document), () => undefined));
      try {
        assert.ok(await until(() => master(loaded) === slot, 3_000), `the failover to ${slot} written right after the load was not reported`);
      } finally {
        stop();
      }
    }
  } finally {
    await source.close();
  }
}

test('a failover written within the second of the last read is seen, by entryCSN', async () => {
  await sameSecondFailovers(slapd);
});

test('a failover written within the second of the last read is seen where entryCSN cannot be read', async () => {
  const hidden = await startSlapd({ users: [], access: ['access to attrs=entryCSN by * none'] });
  try {
    const ldif: string[] = [];
    for (let s = 0; s < 5; s++) {
      ldif.push(`dn: cn=st${s},${LDAP_STORES_DN}`, 'changetype: add', 'objectClass: mailfrontStore', `cn: st${s}`, `mailfrontCurrentMaster: sl${s}x0`, '');
      for (let j = 0; j < 3; j++) ldif.push(`dn: cn=sl${s}x${j},cn=st${s},${LDAP_STORES_DN}`, 'changetype: add', 'objectClass: mailfrontSlot', `cn: sl${s}x${j}`, 'mailfrontHost: 127.0.0.1', `mailfrontImapPort: ${10143 + j}`, '');
    }
    await hidden.modify(ldif.join('\n'));
    // The ACL holds: the service account reads modifyTimestamp, not entryCSN.
    const client = new Client({ url: hidden.url });
    try {
      await client.bind(hidden.bindDn, hidden.bindPassword);
      const { searchEntries } = await client.search(`cn=st0,${LDAP_STORES_DN}`, { scope: 'base', attributes: ['entryCSN', 'modifyTimestamp'] });
      assert.deepEqual(searchEntries[0]!['entryCSN'] ?? [], [], 'entryCSN was read');
      assert.match(String(searchEntries[0]!['modifyTimestamp']), /^\d{14}Z$/);
    } finally {
      await client.unbind();
    }
    await sameSecondFailovers(hidden);
  } finally {
    await hidden.stop();
  }
});

test('GeneralizedTime values read as the time they name: with or without seconds and fractions, in UTC or with an offset', () => {
  const at = Date.UTC(2026, 11, 5, 22, 46, 0);
  assert.equal(generalizedTimeMs('20261205224600Z'), at);
  assert.equal(generalizedTimeMs('20261205224600.5Z'), at + 500);
  assert.equal(generalizedTimeMs('20261205224600,25Z'), at + 250);
  assert.equal(generalizedTimeMs('202612052246Z'), at);
  assert.equal(generalizedTimeMs('20261205234600+0100'), at);
  assert.equal(generalizedTimeMs('20261205214600-0100'), at);
  for (const bad of ['', '2026-12-05T22:46:00Z', '20261205224600', 'x20261205224600Z']) assert.equal(generalizedTimeMs(bad), undefined, bad);
});
