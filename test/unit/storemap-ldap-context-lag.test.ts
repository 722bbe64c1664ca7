/**
 * The LDAP store-map source's polls when a whole read finds a store entry newer than the
 * contextCSN read after it. A syncrepl consumer writes the entries a refresh sends (after a cut,
 * or a mirror's first refresh from the other) one by one, and its contextCSN only at the refresh's
 * end: a whole read between found the first entry newer, took the contextCSN for another
 * database's, and the connection's polls went by modifyTimestamp for good. A change later in the
 * same refresh, stamped before the newest by more than the margin, then waited for the whole read
 * 30 s later (the storemap-ldap-replicas mirror case, 2 runs in 15 with the file's other cases at
 * once). A fake client plays the directory: slapd cannot be stopped at that moment on demand.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { readBackend } from '../../src/config/schema.js';
import { IssueList } from '../../src/config/validate.js';
import { MailfrontError } from '../../src/errors.js';
import { createLogger } from '../../src/log.js';
import { StoreMapHolder } from '../../src/routing/holder.js';
import { LdapStoreMapSource } from '../../src/routing/sources.js';

const SUFFIX = 'dc=example,dc=org';
const BASE = `ou=stores,${SUFFIX}`;

type Entry = Record<string, unknown> & { dn: string };

/** A CSN of server id 0 at `hhmmss` on one day, and the modifyTimestamp of that second. */
const csn = (hhmmss: string): string => `20261206${hhmmss}.000000Z#000000#000#000000`;
const stamp = (hhmmss: string): string => `20261206${hhmmss}Z`;

function store(name: string, master: string, at: string): Entry {
  return { dn: `cn=${name},${BASE}`, objectClass: ['mailfrontStore'], cn: name, mailfrontCurrentMaster: master, entryCSN: csn(at), modifyTimestamp: stamp(at) };
}
function slot(storeName: string, name: string): Entry {
  return { dn: `cn=${name},cn=${storeName},${BASE}`, objectClass: ['mailfrontSlot'], cn: name, mailfrontHost: '127.0.0.1', mailfrontImapPort: '143', entryCSN: csn('090000'), modifyTimestamp: stamp('090000') };
}

/** A directory of st1 and st2 (two slots each) whose suffix entry has the contextCSN `context`, searched as ldapts's Client is. */
function directory(): { entries: Map<string, Entry>; context: string | readonly string[]; client: unknown } {
  const dir = {
    entries: new Map<string, Entry>(),
    context: csn('100000') as string | readonly string[],
    client: undefined as unknown,
  };
  for (const e of [store('st1', 'sl1a', '090000'), slot('st1', 'sl1a'), slot('st1', 'sl1b'), store('st2', 'sl2a', '090000'), slot('st2', 'sl2a'), slot('st2', 'sl2b')]) dir.entries.set(e.dn, e);
  const matching = (filter: string): Entry[] => {
    const since = /\((modifyTimestamp|entryCSN)>=([^)]+)\)/.exec(filter);
    return [...dir.entries.values()].filter((e) => since === null || String(e[since[1]!]) >= since[2]!).map((e) => ({ ...e }));
  };
  dir.client = {
    isConnected: true,
    search: async (dn: string, options: { attributes?: string[] }) => {
      if (dn === '' && options.attributes?.includes('namingContexts')) return { searchEntries: [{ dn: '', namingContexts: [SUFFIX] }] };
      if (dn === '') return { searchEntries: [{ dn: '' }] };
      if (dn === SUFFIX) return { searchEntries: [{ dn, contextCSN: typeof dir.context === 'string' ? [dir.context] : [...dir.context] }] };
      return { searchEntries: [{ dn }] };
    },
    searchPaginated: async function* (_base: string, options: { filter: string }) {
      yield { searchEntries: matching(options.filter) };
    },
    unbind: async () => undefined,
  };
  return dir;
}

function sourceOn(dir: ReturnType<typeof directory>, lines: Array<Record<string, unknown>>, fullReadIntervalMs?: number): LdapStoreMapSource {
  const log = createLogger('info', { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
  const source = new LdapStoreMapSource({ kind: 'ldap', urls: ['ldap://127.0.0.1:1'], bindDn: `cn=mailfront,${SUFFIX}`, bindPassword: 'secret', baseDn: BASE, pollIntervalMs: 20, starttls: false, operationTimeoutMs: 2_000 }, undefined, log, { recentMarginMs: 1_000, ...(fullReadIntervalMs === undefined ? {} : { fullReadIntervalMs }) });
  (source as unknown as { connection: () => Promise<unknown> }).connection = async () => dir.client;
  return source;
}

/** Waits (at most `ms`) until `done`; true if it came. */
async function until(done: () => boolean, ms: number): Promise<boolean> {
  const end = performance.now() + ms;
  while (!done() && performance.now() < end) await sleep(10);
  return done();
}

test('a whole read in the middle of a refresh (an entry newer than the contextCSN): once the contextCSN covers the entries, a change that came later in the refresh, stamped before the newest, is followed at the next poll', async () => {
  const dir = directory();
  const lines: Array<Record<string, unknown>> = [];
  const source = sourceOn(dir, lines);
  // The refresh has written st1 (10:00:10), not yet st2 (10:00:05), nor the contextCSN (10:00:00).
  dir.entries.set(`cn=st1,${BASE}`, store('st1', 'sl1b', '100010'));
  let changes = 0;
  let stop = (): void => undefined;
  try {
    await source.load();
    stop = source.watch(() => void (changes++, source.load()));
    await sleep(200);
    assert.equal(changes, 0);
    // The refresh's end: st2, stamped 5 s before the newest (out of reach of polls by
    // modifyTimestamp, from 1 s before it), then the contextCSN.
    dir.entries.set(`cn=st2,${BASE}`, store('st2', 'sl2b', '100005'));
    dir.context = csn('100010');
    assert.ok(await until(() => changes > 0, 2_000), 'the change was not followed (the polls went by modifyTimestamp)');
    assert.deepEqual(lines.filter((l) => l['event'] === 'storemap.context_csn_not_used'), []);
  } finally {
    stop();
    await source.close();
  }
});

test('a contextCSN that stays behind a store entry (another database\'s): the polls go by modifyTimestamp, and a whole read that finds it so a full-read interval after the first says so, once', async () => {
  const dir = directory();
  const lines: Array<Record<string, unknown>> = [];
  // Whole reads every 400 ms: a finding that old comes within the test's time.
  const source = sourceOn(dir, lines, 400);
  dir.entries.set(`cn=st1,${BASE}`, store('st1', 'sl1b', '100010'));
  let changes = 0;
  let stop = (): void => undefined;
  try {
    await source.load();
    assert.deepEqual(lines.filter((l) => l['event'] === 'storemap.context_csn_not_used'), [], 'said at the first');
    stop = source.watch(() => void (changes++, source.load()));
    await sleep(100);
    // Stamped the newest: found by modifyTimestamp.
    dir.entries.set(`cn=st2,${BASE}`, store('st2', 'sl2b', '100011'));
    assert.ok(await until(() => changes > 0, 2_000), 'the change was not followed');
    await sleep(500);
    dir.entries.set(`cn=st1,${BASE}`, store('st1', 'sl1a', '100012'));
    assert.ok(await until(() => changes > 1, 2_000), 'the second change was not followed');
    await sleep(100);
    const said = lines.filter((l) => l['event'] === 'storemap.context_csn_not_used');
    assert.equal(said.length, 1);
    assert.equal(said[0]!['contextCsn'], csn('100000'));
  } finally {
    stop();
    await source.close();
  }
});

test('a glued stores database whose parent is written: the second whole read on a connection that finds the contextCSN behind a store entry gives it up for good, so a parent\'s write does not send the polls back to it, and a store change after it is followed at the next poll', async () => {
  const dir = directory();
  const lines: Array<Record<string, unknown>> = [];
  // Whole reads every 400 ms: the second finding comes within the test's time.
  const source = sourceOn(dir, lines, 400);
  dir.entries.set(`cn=st1,${BASE}`, store('st1', 'sl1b', '100010'));
  let changes = 0;
  let latest = '';
  let stop = (): void => undefined;
  const notUsed = (): number => lines.filter((l) => l['event'] === 'storemap.context_csn_not_used').length;
  try {
    await source.load();
    stop = source.watch(() => void (changes++, source.load().then((doc) => void (latest = JSON.stringify(doc)))));
    await sleep(100);
    // The parent is written: its contextCSN covers the store entries, the polls go by it.
    dir.context = csn('100020');
    await sleep(100);
    assert.equal(notUsed(), 0);
    // A store change: the parent's contextCSN does not move. The next whole read finds the store
    // entry newer than it, the second time on this connection.
    dir.entries.set(`cn=st2,${BASE}`, store('st2', 'sl2b', '100030'));
    assert.ok(await until(() => notUsed() > 0, 3_000), 'the second finding was not said');
    assert.equal(notUsed(), 1);
    // The parent is written again: its contextCSN covers the store entries once more.
    dir.context = csn('100040');
    await sleep(100);
    const before = changes;
    // A store change, stamped the newest: polls by modifyTimestamp see it at once. Had the parent's
    // write sent the polls back to its contextCSN, it would wait for the whole read (400 ms).
    dir.entries.set(`cn=st1,${BASE}`, store('st1', 'sl1a', '100050'));
    assert.ok(await until(() => changes > before, 150), 'the store change was not followed at the next poll');
    assert.ok(await until(() => latest.includes('sl1a'), 2_000));
    assert.equal(notUsed(), 1, 'said once');
  } finally {
    stop();
    await source.close();
  }
});

test('two whole reads within one refresh that find the contextCSN behind a store entry (no catching up between them) keep the polls waiting for it, and a change stamped before the newest is followed at the refresh\'s end', async () => {
  const dir = directory();
  for (const e of [store('st3', 'sl3a', '090000'), slot('st3', 'sl3a'), slot('st3', 'sl3b')]) dir.entries.set(e.dn, e);
  const lines: Array<Record<string, unknown>> = [];
  const source = sourceOn(dir, lines);
  // The refresh has written st1 (10:00:10), not yet st2 nor st3, nor the contextCSN (10:00:00).
  dir.entries.set(`cn=st1,${BASE}`, store('st1', 'sl1b', '100010'));
  let changes = 0;
  let latest = '';
  let stop = (): void => undefined;
  try {
    await source.load();
    stop = source.watch(() => void (changes++, source.load().then((doc) => void (latest = JSON.stringify(doc)))));
    await sleep(100);
    // st2, stamped the newest: followed by modifyTimestamp; the whole read it brings finds the
    // contextCSN behind again, the refresh still going.
    dir.entries.set(`cn=st2,${BASE}`, store('st2', 'sl2b', '100011'));
    assert.ok(await until(() => changes > 0 && latest.includes('sl2b'), 2_000), 'st2 was not followed');
    await sleep(100);
    // The refresh's end: st3, stamped 6 s before the newest (out of reach of modifyTimestamp
    // polls), then the contextCSN.
    dir.entries.set(`cn=st3,${BASE}`, store('st3', 'sl3b', '100005'));
    dir.context = csn('100011');
    assert.ok(await until(() => latest.includes('sl3b'), 2_000), 'st3 was not followed at the refresh\'s end (the polls gave the contextCSN up)');
    assert.deepEqual(lines.filter((l) => l['event'] === 'storemap.context_csn_not_used'), []);
  } finally {
    stop();
    await source.close();
  }
});

/** A CSN of server id 1 at `hhmmss`. */
const csnOfSid1 = (hhmmss: string): string => `20261206${hhmmss}.000000Z#000000#001#000000`;

/** Polls `source` (loaded first, as the holder does), counting the changes it reports and keeping the health it reports. */
async function watching(source: LdapStoreMapSource): Promise<{ changes: () => number; healths: Array<Error | null>; stop: () => void }> {
  await source.load();
  let changes = 0;
  const healths: Array<Error | null> = [];
  const stop = source.watch(
    () => void (changes++, source.load().catch(() => undefined)),
    (error) => void healths.push(error),
  );
  return { changes: () => changes, healths, stop };
}

test('polls by modifyTimestamp (no contextCSN): a store entry deleted within the full-read interval is followed at the next poll', async () => {
  const dir = directory();
  dir.context = [];
  const source = sourceOn(dir, []);
  const polls = await watching(source);
  try {
    await sleep(200);
    assert.equal(polls.changes(), 0);
    // Every entry is recent (stamped within the margin of the newest): one fewer is a deletion.
    dir.entries.delete(`cn=sl1b,cn=st1,${BASE}`);
    assert.ok(await until(() => polls.changes() > 0, 1_000), 'the deletion waited for the next whole read');
  } finally {
    polls.stop();
    await source.close();
  }
});

test('polls by contextCSN: a contextCSN that went back (a restore from a backup) is read whole, and a server behind the map in force is reported as such', async () => {
  const dir = directory();
  const source = sourceOn(dir, []);
  const polls = await watching(source);
  try {
    await sleep(200);
    assert.deepEqual(polls.healths.filter((h) => h !== null), []);
    // Restored from a backup taken before st1's failover to sl1a (in force, 09:00:00).
    dir.context = csn('080000');
    dir.entries.set(`cn=st1,${BASE}`, store('st1', 'sl1b', '080000'));
    assert.ok(await until(() => polls.healths.some((h) => h instanceof MailfrontError && h.code === 'STOREMAP_LDAP_BEHIND'), 1_000), `not read again: ${polls.healths.map((h) => h?.message ?? 'up').join('; ')}`);
    assert.equal(polls.changes(), 0, 'nothing put in force');
  } finally {
    polls.stop();
    await source.close();
  }
});

test("polls by contextCSN: a contextCSN that lost a server id's value (another server behind the URL) is read whole, and a change there followed", async () => {
  const dir = directory();
  dir.context = [csn('100000'), csnOfSid1('100000')];
  const source = sourceOn(dir, []);
  const polls = await watching(source);
  try {
    await sleep(200);
    assert.equal(polls.changes(), 0);
    // Another server: server id 0's value as before, none of server id 1's, and st1 failed over there.
    dir.context = [csn('100000')];
    dir.entries.set(`cn=st1,${BASE}`, store('st1', 'sl1b', '095000'));
    assert.ok(await until(() => polls.changes() > 0, 1_000), 'the change waited for the next whole read');
  } finally {
    polls.stop();
    await source.close();
  }
});

test('a reload that reads a server behind the map in force: the source could not be read (storemap.read_failed, at warn), no map rejected; the map in force stays', async () => {
  const dir = directory();
  const lines: Array<Record<string, unknown>> = [];
  const source = sourceOn(dir, []);
  const log = createLogger('info', { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
  const config = { backend: readBackend(undefined, 'backend', (p) => p, new IssueList()), backendProfiles: new Map() };
  const holder = new StoreMapHolder(source, () => config, log, { changes: () => undefined });
  try {
    assert.equal((await holder.reload('start')).ok, true);
    // Restored from a backup taken before st1's failover to sl1a (in force, 09:00:00).
    dir.context = csn('080000');
    dir.entries.set(`cn=st1,${BASE}`, store('st1', 'sl1b', '080000'));
    const reloaded = await holder.reload('signal');
    assert.equal(reloaded.ok, false);
    assert.match(reloaded.error ?? '', /is behind the map in force/);
    assert.equal(holder.current.stores.get('st1')!.currentMaster, 'sl1a');
    assert.deepEqual(
      lines.filter((l) => l['event'] === 'storemap.read_failed' || l['event'] === 'storemap.rejected').map((l) => [l['event'], l['level']]),
      [['storemap.read_failed', 'warn']],
    );
  } finally {
    await source.close();
  }
});
