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
import { createLogger } from '../../src/log.js';
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
function directory(): { entries: Map<string, Entry>; context: string; client: unknown } {
  const dir = {
    entries: new Map<string, Entry>(),
    context: csn('100000'),
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
      if (dn === SUFFIX) return { searchEntries: [{ dn, contextCSN: [dir.context] }] };
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
