/**
 * The store-map sources: the LDAP one against a real slapd, whose poll reports every difference
 * from the document it handed out last, and the file one, which looks once when its watch
 * begins. Either way a failover written between mailfront's start-up load and the start of the
 * watch is not lost.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { chmodSync, chownSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { Attribute, Change, Client, InsufficientAccessError } from 'ldapts';
import { FileStoreMapSource, LdapStoreMapSource } from '../../src/routing/sources.js';
import { StoreMapHolder } from '../../src/routing/holder.js';
import { createLogger } from '../../src/log.js';
import { readBackend } from '../../src/config/schema.js';
import { IssueList } from '../../src/config/validate.js';
import { LDAP_SERVICE_DN, LDAP_STORES_DN, connectionsTo, startSlapd, tmpDir } from './servers/index.js';
import type { Slapd } from './servers/index.js';

let slapd: Slapd;
let source: LdapStoreMapSource;
const POLL_MS = 100;

before(async () => {
  slapd = await startSlapd({ users: [] });
  await slapd.modify(
    [
      `dn: cn=gamma,${LDAP_STORES_DN}`,
      'changetype: add',
      'objectClass: mailfrontStore',
      'cn: gamma',
      'mailfrontCurrentMaster: g1',
      '',
      ...['g1', 'g2'].flatMap((slot, i) => [`dn: cn=${slot},cn=gamma,${LDAP_STORES_DN}`, 'changetype: add', 'objectClass: mailfrontSlot', `cn: ${slot}`, 'mailfrontHost: 127.0.0.1', `mailfrontImapPort: ${10143 + i}`, '']),
    ].join('\n'),
  );
  source = new LdapStoreMapSource({ kind: 'ldap', urls: [slapd.url], bindDn: slapd.rootDn, bindPassword: slapd.rootPassword, baseDn: LDAP_STORES_DN, pollIntervalMs: POLL_MS, starttls: false, operationTimeoutMs: 2_000 });
});
after(async () => {
  await source?.close();
  await slapd?.stop();
});

const masterIn = (document: unknown): unknown => (document as { stores: Record<string, { current_master: string }> }).stores['gamma']?.current_master;

/** LDIF adding store `name` (master `${name}a`) with `slots` slots under `parent`. */
const storeLdif = (name: string, slots: number, parent = LDAP_STORES_DN): string =>
  [
    `dn: cn=${name},${parent}`,
    'changetype: add',
    'objectClass: mailfrontStore',
    `cn: ${name}`,
    `mailfrontCurrentMaster: ${name}a`,
    '',
    ...Array.from({ length: slots }, (_, i) => `${name}${String.fromCharCode(97 + i)}`).flatMap((slot) => [`dn: cn=${slot},cn=${name},${parent}`, 'changetype: add', 'objectClass: mailfrontSlot', `cn: ${slot}`, 'mailfrontHost: 127.0.0.1', 'mailfrontImapPort: 143', '']),
  ].join('\n');

test('a failover written between the start-up load and the first poll is reported by that poll; an unchanged poll reports nothing', async () => {
  assert.equal(masterIn(await source.load()), 'g1');
  // The failover lands after the load, before the watch starts polling.
  await slapd.modify(`dn: cn=gamma,${LDAP_STORES_DN}\nchangetype: modify\nreplace: mailfrontCurrentMaster\nmailfrontCurrentMaster: g2\n`);
  let changes = 0;
  let loaded: unknown;
  // As the holder does: a reported change is loaded.
  const stop = source.watch(() => {
    changes++;
    void source.load().then((document) => (loaded = document));
  });
  try {
    for (let i = 0; i < 50 && loaded === undefined; i++) await sleep(POLL_MS);
    assert.equal(changes, 1, 'the first poll reported the change');
    assert.equal(masterIn(loaded), 'g2');
    await sleep(POLL_MS * 5);
    assert.equal(changes, 1, 'polls of an unchanged directory report nothing');
  } finally {
    stop();
  }
});

test('the file source: an edit between the load and the start of the watch is reported at once; an unchanged file is not', async () => {
  const dir = tmpDir('storemap-file');
  const file = join(dir.path, 'stores.yaml');
  const document = (master: string): string => `stores:\n  gamma:\n    current_master: ${master}\n    slots:\n      g1: { host: 127.0.0.1, imap_port: 10143 }\n      g2: { host: 127.0.0.1, imap_port: 10144 }\n`;
  try {
    writeFileSync(file, document('g1'));
    const quiet = new FileStoreMapSource(file, true);
    assert.equal(masterIn(await quiet.load()), 'g1');
    let quietChanges = 0;
    const stopQuiet = quiet.watch(() => quietChanges++);
    await sleep(300);
    stopQuiet();
    assert.equal(quietChanges, 0, 'nothing changed, nothing reported');

    const files = new FileStoreMapSource(file, true);
    assert.equal(masterIn(await files.load()), 'g1');
    writeFileSync(file, document('g2'));
    let changes = 0;
    const stop = files.watch(() => changes++);
    try {
      assert.ok(changes >= 1, 'the edit made before the watch began is reported when it begins');
      assert.equal(masterIn(await files.load()), 'g2');
    } finally {
      stop();
    }
  } finally {
    await dir.remove();
  }
});

test('a closed LDAP source opens no connection any more: a load or poll after close() fails without one', async () => {
  const closing = new LdapStoreMapSource({ kind: 'ldap', urls: [slapd.url], bindDn: slapd.rootDn, bindPassword: slapd.rootPassword, baseDn: LDAP_STORES_DN, pollIntervalMs: POLL_MS, starttls: false, operationTimeoutMs: 2_000 });
  assert.equal(masterIn(await closing.load()), 'g2');
  // A load in flight when the source is closed (a poll caught in its connect), and one after.
  const inFlight = closing.load().then(() => 'loaded', (error: Error) => error.message);
  await closing.close();
  assert.match(await closing.load().then(() => 'loaded', (error: Error) => error.message), /closed/);
  await inFlight;
  assert.match(await closing.load().then(() => 'loaded', (error: Error) => error.message), /closed/);
});

test('a poll and a load at once share the one connection being opened: none is left bound after close()', async () => {
  const port = slapd.port;
  const before = connectionsTo(port);
  for (let round = 0; round < 3; round++) {
    const fresh = new LdapStoreMapSource({ kind: 'ldap', urls: [slapd.url], bindDn: slapd.rootDn, bindPassword: slapd.rootPassword, baseDn: LDAP_STORES_DN, pollIntervalMs: POLL_MS, starttls: false, operationTimeoutMs: 2_000 });
    // As a reload that switches to LDAP did: the watch's first poll and the holder's load, both before any connection.
    const stop = fresh.watch(() => undefined);
    assert.ok((await fresh.load()) !== undefined);
    await sleep(3 * POLL_MS);
    assert.equal(connectionsTo(port), before + 1, 'one connection while the source is open');
    stop();
    await fresh.close();
  }
  for (let i = 0; i < 50 && connectionsTo(port) !== before; i++) await sleep(20);
  assert.equal(connectionsTo(port), before, 'every connection the sources opened is closed');
});

test('failovers of several stores at once through the file source: each written and reported, none lost', async () => {
  const dir = tmpDir('storemap-failovers');
  const file = join(dir.path, 'stores.yaml');
  const names = ['s1', 's2', 's3', 's4'];
  writeFileSync(file, `stores:\n${names.map((n, i) => `  ${n}:\n    current_master: ${n}a\n    slots:\n      ${n}a: { host: 127.0.0.1, imap_port: ${11143 + 2 * i} }\n      ${n}b: { host: 127.0.0.1, imap_port: ${11144 + 2 * i} }\n`).join('')}`);
  const drained: string[] = [];
  const holder = new StoreMapHolder(new FileStoreMapSource(file, false), () => ({ backend: readBackend(undefined, 'backend', (p) => p, new IssueList()), backendProfiles: new Map() }), createLogger('silent'), { changes: (changes) => drained.push(...changes.map((c) => `${c.store}:${c.from}>${c.to}`)) });
  try {
    assert.equal((await holder.reload('start')).ok, true);
    const results = await Promise.all(names.map((n) => holder.failover(n, `${n}b`)));
    for (const [i, n] of names.entries()) assert.deepEqual(results[i]!.changes, [{ store: n, from: `${n}a`, to: `${n}b` }], `the answer to ${n}'s failover reports ${n}'s change`);
    for (const n of names) assert.equal(holder.current.stores.get(n)!.currentMaster, `${n}b`);
    assert.deepEqual(drained.sort(), names.map((n) => `${n}:${n}a>${n}b`));
    const written = (await holder.source.load()) as { stores: Record<string, { current_master: string }> };
    assert.deepEqual(names.map((n) => written.stores[n]!.current_master), names.map((n) => `${n}b`));
  } finally {
    await dir.remove();
  }
});

test('the LDAP source reads the map in pages past a per-answer size limit; a map larger than the bind account may read fails with a message naming the limit to raise', async () => {
  // The service account (not the rootdn, which no limit binds) may get 5 entries in one answer
  // and 12 in a paged search: as Active Directory's MaxPageSize, or an OpenLDAP size.prtotal.
  const limited = await startSlapd({ users: [], limits: [`dn.exact="${LDAP_SERVICE_DN}" size.soft=5 size.hard=5 size.prtotal=12`] });
  const paged = new LdapStoreMapSource({ kind: 'ldap', urls: [limited.url], bindDn: limited.bindDn, bindPassword: limited.bindPassword, baseDn: LDAP_STORES_DN, pollIntervalMs: POLL_MS, starttls: false, operationTimeoutMs: 2_000 });
  try {
    for (const name of ['s1', 's2', 's3', 's4']) await limited.modify(storeLdif(name, 2));
    const document = (await paged.load()) as { stores: Record<string, { slots: Record<string, unknown> }> };
    assert.deepEqual(Object.keys(document.stores).sort(), ['s1', 's2', 's3', 's4'], 'all 12 entries read, 5 per answer at most');
    assert.deepEqual(Object.keys(document.stores['s4']!.slots).sort(), ['s4a', 's4b']);

    // The map grows past what the account may read at all: each poll fails, and says what to do.
    await limited.modify(storeLdif('s5', 2));
    const failure = await paged.load().then(() => 'loaded', (error: Error) => error.message);
    assert.match(failure, /size limit for cn=mailfront,dc=example,dc=org/);
    assert.ok(failure.includes(`limits dn.exact="${LDAP_SERVICE_DN}" size=unlimited`), failure);
    assert.ok(failure.includes(`389 DS: nsSizeLimit: -1, or nsPagedSizeLimit: -1, in the entry ${LDAP_SERVICE_DN}`), failure);
    const health: Array<Error | null> = [];
    const stop = paged.watch(() => undefined, (error) => health.push(error));
    try {
      for (let i = 0; i < 50 && health.length === 0; i++) await sleep(POLL_MS);
      assert.match(health[0]?.message ?? 'no failure reported', /size=unlimited/);
    } finally {
      stop();
    }
  } finally {
    await paged.close();
    await limited.stop();
  }
});

test('a map larger than the entries the bind account may look through (adminLimitExceeded: OpenLDAP size.unchecked, 389 DS nsslapd-lookthroughlimit) fails with a message naming the limit to raise', async () => {
  const limited = await startSlapd({ users: [], limits: [`dn.exact="${LDAP_SERVICE_DN}" size.unchecked=5`] });
  const source = new LdapStoreMapSource({ kind: 'ldap', urls: [limited.url], bindDn: limited.bindDn, bindPassword: limited.bindPassword, baseDn: LDAP_STORES_DN, pollIntervalMs: POLL_MS, starttls: false, operationTimeoutMs: 2_000 });
  try {
    await limited.modify(storeLdif('s1', 2));
    assert.deepEqual(Object.keys(((await source.load()) as { stores: Record<string, unknown> }).stores), ['s1']);
    await limited.modify(storeLdif('s2', 2));
    const failure = await source.load().then(() => 'loaded', (error: Error) => error.message);
    // ldapts's own text was all it said: "store-map search failed: Code: 0xb".
    assert.match(failure, /adminLimitExceeded/);
    assert.ok(failure.includes(`limits dn.exact="${LDAP_SERVICE_DN}" size.unchecked=unlimited`), failure);
    assert.ok(failure.includes(`nsPagedLookThroughLimit: -1, or nsLookThroughLimit: -1, in the entry ${LDAP_SERVICE_DN}`), failure);
  } finally {
    await source.close();
    await limited.stop();
  }
});

test('the LDAP source goes back first to the server that answered last: a reconnect does not read a lagging replica listed before it', async () => {
  // Two servers of the same tree that do not replicate: the first one listed plays a replica
  // that was down while the failover was written to the second, and lags behind it.
  const [first, second] = await Promise.all([startSlapd({ users: [] }), startSlapd({ users: [] })]);
  // The service account, whose password both servers share.
  const sticky = new LdapStoreMapSource({ kind: 'ldap', urls: [first.url, second.url], bindDn: first.bindDn, bindPassword: first.bindPassword, baseDn: LDAP_STORES_DN, pollIntervalMs: POLL_MS, starttls: false, operationTimeoutMs: 2_000 });
  const loadSoon = async (): Promise<unknown> => {
    let failure: unknown;
    for (let i = 0; i < 10; i++) {
      try {
        return await sticky.load();
      } catch (error) {
        failure = error;
        await sleep(100);
      }
    }
    throw failure;
  };
  try {
    for (const server of [first, second]) await server.modify(storeLdif('gamma', 2));
    assert.equal(masterIn(await loadSoon()), 'gammaa', 'read from the first server');
    await first.stopOnly();
    assert.equal(masterIn(await loadSoon()), 'gammaa', 'read from the second server');
    await second.modify(`dn: cn=gamma,${LDAP_STORES_DN}\nchangetype: modify\nreplace: mailfrontCurrentMaster\nmailfrontCurrentMaster: gammab\n`);
    assert.equal(masterIn(await loadSoon()), 'gammab', 'the failover, read from the second server');
    // The first server is back, without the failover; the connection to the second drops.
    await first.startAgain();
    await second.restart();
    assert.equal(masterIn(await loadSoon()), 'gammab', 'the reconnect went to the second server again');
  } finally {
    await sticky.close();
    await Promise.all([first.stop(), second.stop()]);
  }
});

test('one store name on two LDAP entries: the map is rejected naming both, the map in force stays, the source stays healthy, and no failover is written', async () => {
  // A tree of its own, beside ou=stores (which the other tests' source reads).
  const base = `ou=duplicates,${slapd.baseDn}`;
  await slapd.modify(`dn: ${base}\nchangetype: add\nobjectClass: organizationalUnit\nou: duplicates\n\ndn: ou=east,${base}\nchangetype: add\nobjectClass: organizationalUnit\nou: east\n`);
  await slapd.modify(storeLdif('delta', 2, base));
  const ldap = new LdapStoreMapSource({ kind: 'ldap', urls: [slapd.url], bindDn: slapd.rootDn, bindPassword: slapd.rootPassword, baseDn: base, pollIntervalMs: POLL_MS, starttls: false, operationTimeoutMs: 2_000 });
  const rejected: string[] = [];
  const holder = new StoreMapHolder(ldap, () => ({ backend: readBackend(undefined, 'backend', (p) => p, new IssueList()), backendProfiles: new Map() }), createLogger('silent'), { changes: () => undefined, rejected: (error) => rejected.push(error) });
  const health: Array<Error | null> = [];
  let stop = (): void => undefined;
  try {
    assert.equal((await holder.reload('start')).ok, true);
    stop = ldap.watch(() => void holder.reload('change'), (error) => health.push(error));
    // A second "delta", its master another slot, elsewhere under the base.
    await slapd.modify(storeLdif('delta', 2, `ou=east,${base}`).replace(/deltaa/g, 'deltac').replace(/deltab/g, 'deltad'));
    for (let i = 0; i < 50 && rejected.length === 0; i++) await sleep(POLL_MS);
    await sleep(POLL_MS * 5);
    assert.equal(rejected.length, 1, 'rejected once: later polls of the same entries report no change');
    assert.ok(rejected[0]!.includes(`store "delta" has 2 entries: cn=delta,ou=duplicates,dc=example,dc=org and cn=delta,ou=east,ou=duplicates,dc=example,dc=org`), rejected[0]);
    assert.equal(holder.current.stores.get('delta')!.currentMaster, 'deltaa', 'the map in force stays');
    assert.ok(health.length > 1 && health.every((h) => h === null), 'the directory answered every poll');
    await assert.rejects(ldap.setCurrentMaster('delta', 'deltab'), /store "delta" has 2 entries .*no failover written/);
    await assert.rejects(holder.failover('delta', 'deltab'), /failover of store "delta" to "deltab" refused, nothing was written: the store map in ldap .* is not valid: store "delta" has 2 entries/);
    assert.equal(holder.current.stores.get('delta')!.currentMaster, 'deltaa');

    // The duplicate removed: the next poll loads the map again.
    await slapd.modify(['deltac', 'deltad'].map((s) => `dn: cn=${s},cn=delta,ou=east,${base}\nchangetype: delete\n`).join('\n') + `\ndn: cn=delta,ou=east,${base}\nchangetype: delete\n`);
    for (let i = 0; i < 50 && holder.last?.ok !== true; i++) await sleep(POLL_MS);
    assert.deepEqual(holder.last, { ok: true, version: 1, changes: [] });
  } finally {
    stop();
    await ldap.close();
  }
});

test('a failover written to an LDAP store without mailfrontPreferredMaster adds the master failed over from as its preferred master; an explicit one is kept', async () => {
  // A tree of its own, beside ou=stores (which the other tests' source reads).
  const base = `ou=preferred,${slapd.baseDn}`;
  await slapd.modify(`dn: ${base}\nchangetype: add\nobjectClass: organizationalUnit\nou: preferred\n`);
  await slapd.modify(storeLdif('pone', 2, base));
  await slapd.modify(storeLdif('ptwo', 2, base).replace('mailfrontCurrentMaster: ptwoa', 'mailfrontCurrentMaster: ptwoa\nmailfrontPreferredMaster: ptwob'));
  const ldap = new LdapStoreMapSource({ kind: 'ldap', urls: [slapd.url], bindDn: slapd.rootDn, bindPassword: slapd.rootPassword, baseDn: base, pollIntervalMs: POLL_MS, starttls: false, operationTimeoutMs: 2_000 });
  const stores = async (): Promise<Record<string, { current_master?: string; preferred_master?: string }>> => ((await ldap.load()) as { stores: Record<string, { current_master?: string; preferred_master?: string }> }).stores;
  try {
    assert.equal((await stores())['pone']!.preferred_master, undefined);
    await ldap.setCurrentMaster('pone', 'poneb');
    await ldap.setCurrentMaster('ptwo', 'ptwob');
    const after = await stores();
    assert.deepEqual([after['pone']!.current_master, after['pone']!.preferred_master], ['poneb', 'ponea'], 'the master failed over from is the preferred one');
    assert.deepEqual([after['ptwo']!.current_master, after['ptwo']!.preferred_master], ['ptwob', 'ptwob'], 'an explicit preferred master is kept');
    // Back again: the preferred master stays.
    await ldap.setCurrentMaster('pone', 'ponea');
    const back = await stores();
    assert.deepEqual([back['pone']!.current_master, back['pone']!.preferred_master], ['ponea', 'ponea']);
  } finally {
    await ldap.close();
  }
});

test('a failover through a bind account that may write mailfrontCurrentMaster only is written without the preferred master, and says so; with the access the README gives, it is added', async () => {
  // As the ACLs of a directory set up before failovers wrote the preferred master: the service
  // account may write the current master of the store entries and read the rest.
  const restricted = await startSlapd({ users: [], access: [`access to dn.subtree="${LDAP_STORES_DN}" attrs=mailfrontCurrentMaster by dn.exact="${LDAP_SERVICE_DN}" write by * break`] });
  // As the README says to grant it.
  const granted = await startSlapd({ users: [], access: [`access to dn.subtree="${LDAP_STORES_DN}" attrs=mailfrontCurrentMaster,mailfrontPreferredMaster by dn.exact="${LDAP_SERVICE_DN}" write by * break`] });
  const logs: Array<Record<string, unknown>> = [];
  const ldap = new LdapStoreMapSource({ kind: 'ldap', urls: [restricted.url], bindDn: restricted.bindDn, bindPassword: restricted.bindPassword, baseDn: LDAP_STORES_DN, pollIntervalMs: POLL_MS, starttls: false, operationTimeoutMs: 2_000 }, undefined, createLogger('info', { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) }));
  const stores = async (): Promise<Record<string, { current_master?: string; preferred_master?: string }>> => ((await ldap.load()) as { stores: Record<string, { current_master?: string; preferred_master?: string }> }).stores;
  try {
    await restricted.modify(storeLdif('rone', 2));
    await restricted.modify(storeLdif('rtwo', 2).replace('mailfrontCurrentMaster: rtwoa', 'mailfrontCurrentMaster: rtwoa\nmailfrontPreferredMaster: rtwoa'));
    // The ACL holds: this account may not add the preferred master on its own.
    const client = new Client({ url: restricted.url });
    try {
      await client.bind(restricted.bindDn, restricted.bindPassword);
      await assert.rejects(client.modify(`cn=rone,${LDAP_STORES_DN}`, [new Change({ operation: 'add', modification: new Attribute({ type: 'mailfrontPreferredMaster', values: ['ronea'] }) })]), InsufficientAccessError);
    } finally {
      await client.unbind();
    }
    await ldap.setCurrentMaster('rone', 'roneb');
    const after = await stores();
    assert.deepEqual([after['rone']!.current_master, after['rone']!.preferred_master], ['roneb', undefined], 'the failover is written, the preferred master is not');
    const warned = logs.filter((l) => l['event'] === 'storemap.failover_preferred_master_not_written');
    assert.equal(warned.length, 1, JSON.stringify(logs));
    assert.equal(warned[0]!['level'], 'warn');
    assert.equal(warned[0]!['store'], 'rone');
    assert.match(String(warned[0]!['msg']), /store "rone" written without adding its preferred master ronea: the bind account may not write mailfrontPreferredMaster \(insufficientAccessRights\)/);
    // A store with a preferred master needs no more than the account may write: nothing to say.
    await ldap.setCurrentMaster('rtwo', 'rtwob');
    assert.deepEqual([(await stores())['rtwo']!.current_master, (await stores())['rtwo']!.preferred_master], ['rtwob', 'rtwoa']);
    assert.equal(logs.length, 1, JSON.stringify(logs));

    const allowed = new LdapStoreMapSource({ kind: 'ldap', urls: [granted.url], bindDn: granted.bindDn, bindPassword: granted.bindPassword, baseDn: LDAP_STORES_DN, pollIntervalMs: POLL_MS, starttls: false, operationTimeoutMs: 2_000 }, undefined, createLogger('info', { write: (line: string) => void logs.push(JSON.parse(line) as Record<string, unknown>) }));
    try {
      await granted.modify(storeLdif('rone', 2));
      await allowed.setCurrentMaster('rone', 'roneb');
      const store = ((await allowed.load()) as { stores: Record<string, { current_master?: string; preferred_master?: string }> }).stores['rone']!;
      assert.deepEqual([store.current_master, store.preferred_master], ['roneb', 'ronea'], 'the master failed over from is the preferred one');
      assert.equal(logs.length, 1, JSON.stringify(logs));
    } finally {
      await allowed.close();
    }
  } finally {
    await ldap.close();
    await Promise.all([restricted.stop(), granted.stop()]);
  }
});

test('the file source with watch off reports a good look at the start of its "watch" and at each good read, so its health does not read as down for ever', async () => {
  const dir = tmpDir('storemap-unwatched');
  const file = join(dir.path, 'stores.yaml');
  const document = (master: string): string => `stores:\n  gamma:\n    current_master: ${master}\n    slots:\n      g1: { host: 127.0.0.1, imap_port: 10143 }\n      g2: { host: 127.0.0.1, imap_port: 10144 }\n`;
  try {
    writeFileSync(file, document('g1'));
    const unwatched = new FileStoreMapSource(file, false);
    assert.equal(masterIn(await unwatched.load()), 'g1');
    const health: Array<Error | null> = [];
    let changes = 0;
    const stop = unwatched.watch(() => changes++, (error) => health.push(error));
    assert.deepEqual(health, [null], 'the start-up load was a good look');
    writeFileSync(file, document('g2'));
    assert.equal(masterIn(await unwatched.load()), 'g2');
    assert.deepEqual(health, [null, null], 'a read (SIGHUP) is a good look');
    writeFileSync(file, 'stores: [');
    await assert.rejects(unwatched.load());
    assert.deepEqual(health, [null, null], 'a broken file is a rejected map, not a good look');
    stop();
    writeFileSync(file, document('g1'));
    await unwatched.load();
    assert.deepEqual(health, [null, null], 'nothing told once the watch is stopped');
    assert.equal(changes, 0, 'an unwatched file reports no change');
  } finally {
    await dir.remove();
  }
});

test('a failover written to the file keeps the file\'s permissions and owner (a store map with a password inline stays private)', async () => {
  const dir = tmpDir('storemap-mode');
  const file = join(dir.path, 'stores.yaml');
  const umask = process.umask(0o022);
  try {
    writeFileSync(file, 'stores:\n  gamma:\n    current_master: g1\n    backend: { login_mode: master-user, proxy_user: m, proxy_password: Inline-pw-1 }\n    slots:\n      g1: { host: 127.0.0.1, imap_port: 10143 }\n      g2: { host: 127.0.0.1, imap_port: 10144 }\n', { mode: 0o600 });
    chmodSync(file, 0o600);
    // The suite runs as root: a file of another owner and group (nobody, nogroup) stays theirs.
    chownSync(file, 65534, 65534);
    await new FileStoreMapSource(file, false).setCurrentMaster('gamma', 'g2');
    assert.equal(statSync(file).mode & 0o777, 0o600);
    assert.deepEqual([statSync(file).uid, statSync(file).gid], [65534, 65534], 'the owner and group are kept');
    assert.match(readFileSync(file, 'utf8'), /current_master: g2/);
  } finally {
    process.umask(umask);
    await dir.remove();
  }
});
