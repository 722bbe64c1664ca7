/**
 * A reload (SIGHUP, Mailfront.reload()) reads the store-map source once and builds the map once:
 * the new config's check reads the source in force and builds its map, and the reload puts that
 * in force (StoreMapHolder.read()). Before, the check and the reload each read the source and each
 * built the map: an LDAP store map was read whole twice per SIGHUP, and a file one built twice
 * (about a tenth of a second of blocked event loop each at 5,000 stores). What the reload puts in
 * force is never older than the SIGHUP: an edit or a change in LDAP made before it is in force
 * after it, and a failover written while the reload runs is not undone by the reload's map (the
 * reload reads the source again then). The polls by contextCSN go on after it.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { Client } from 'ldapts';
import { stringify } from 'yaml';
import { loadConfig } from '../../src/config/load.js';
import { Mailfront } from '../../src/main.js';
import type { StoreMapSource } from '../../src/routing/sources.js';
import { registerPasswords, standInDirectory, suiteLogWriter } from './front.js';
import { LDAP_STORES_DN, freePort, tmpDir } from './servers/index.js';
import { startSlapdPair } from './servers/slapd-pair.js';
import type { SlapdPair } from './servers/slapd-pair.js';
import { storeEntries, FAILOVER_ACCESS, failoverLdif, holdPolls } from './store-entries.js';

registerPasswords('reader-pw-unused');

/**
 * Counts the loads of `source` (each an LDAP whole read, or a read of the file) and the builds of
 * a map from the documents they give: each build (buildStoreMap) reads the document's `stores`
 * once. `afterLoad` runs once a load has given its document, before it is handed on.
 */
function counting(source: StoreMapSource): { loads: () => number; builds: () => number; afterLoad: (then: (() => void) | undefined) => void; reset: () => void } {
  const load = source.load.bind(source);
  let loads = 0;
  let builds = 0;
  let then: (() => void) | undefined;
  const proxies = new WeakMap<object, object>();
  source.load = async (trigger?: string) => {
    loads += 1;
    const doc = (await load(trigger)) as object;
    const once = then;
    then = undefined;
    once?.();
    let proxy = proxies.get(doc);
    if (proxy === undefined) {
      proxy = new Proxy(doc, {
        get(target, key, receiver) {
          if (key === 'stores') builds += 1;
          return Reflect.get(target, key, receiver) as unknown;
        },
      });
      proxies.set(doc, proxy);
    }
    return proxy;
  };
  return {
    loads: () => loads,
    builds: () => builds,
    afterLoad: (next) => (then = next),
    reset: () => {
      loads = 0;
      builds = 0;
    },
  };
}

/** A config (as written) with one plain IMAP listener, a stand-in directory's settings, and `storeMap` as its store_map. */
async function configFor(storeMap: Record<string, unknown>, backend: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
  return {
    log: { level: 'info' },
    listeners: [{ name: 'imap', protocol: 'imap', host: '127.0.0.1', port: await freePort(), tls: 'none', plaintext_without_tls: true }],
    directory: { urls: ['ldap://127.0.0.1:1'], bind_dn: 'cn=reader', bind_password: 'reader-pw-unused', base_dn: 'dc=example' },
    store_map: storeMap,
    backend,
    throttle: { enabled: false },
    health: { interval_ms: 0 },
    shutdown: { unready_delay_ms: 0 },
  };
}

const fileStores = (master: string): Record<string, unknown> => ({
  stores: Object.fromEntries([1, 2, 3].map((s) => [`st${s}`, { current_master: s === 1 ? master : `sl${s}a`, slots: { [`sl${s}a`]: { host: '127.0.0.1', imap_port: 10143 }, [`sl${s}b`]: { host: '127.0.0.1', imap_port: 10144 } } }])),
});

test('a reload with the store-map file unchanged reads and builds the map once; an edit of the file, and new backend settings, are in force after the reload, built once', async () => {
  const dir = tmpDir('reload-storemap-once');
  const configFile = join(dir.path, 'mailfront.yaml');
  await writeFile(join(dir.path, 'stores.yaml'), stringify(fileStores('sl1a')));
  // Not watched: no reload of the watch's comes between.
  const config = await configFor({ file: 'stores.yaml', watch: false });
  await writeFile(configFile, stringify(config));
  const writeSuiteLog = suiteLogWriter();
  const mailfront = await Mailfront.start(loadConfig(configFile), { directory: standInDirectory(), processMetrics: false, logDestination: { write: (line: string) => writeSuiteLog(line) } });
  try {
    const counted = counting(mailfront.holder.source);
    const version = mailfront.currentStoreMap().version;
    const unchanged = await mailfront.reload();
    assert.equal(unchanged.ok, true, unchanged.error);
    assert.equal(counted.loads(), 1, 'store-map loads at an unchanged reload');
    assert.equal(counted.builds(), 1, 'store-map builds at an unchanged reload');
    assert.equal(unchanged.storeMap.version, version, 'an unchanged map is no new version');

    // New backend settings reach the map, built once, with them.
    counted.reset();
    await writeFile(configFile, stringify({ ...config, backend: { login_timeout_ms: 4321 } }));
    const settings = await mailfront.reload();
    assert.equal(settings.ok, true, settings.error);
    assert.equal(mailfront.currentStoreMap().stores.get('st2')?.backend.loginTimeoutMs, 4321);
    assert.equal(counted.loads(), 1);
    assert.equal(counted.builds(), 1);

    // An edit of the file before the reload is in force after it, built once.
    counted.reset();
    await writeFile(join(dir.path, 'stores.yaml'), stringify(fileStores('sl1b')));
    const edited = await mailfront.reload();
    assert.equal(edited.ok, true, edited.error);
    assert.deepEqual(edited.storeMap.changes, [{ store: 'st1', from: 'sl1a', to: 'sl1b' }]);
    assert.equal(mailfront.currentStoreMap().stores.get('st1')?.currentMaster, 'sl1b');
    assert.equal(mailfront.currentStoreMap().stores.get('st1')?.backend.loginTimeoutMs, 4321);
    assert.equal(counted.loads(), 1);
    assert.equal(counted.builds(), 1);
  } finally {
    await mailfront.stop(0);
    await dir.remove();
  }
});


/** Counts the whole reads of the store map (the polls' searches ask for the entries changed since a value: `>=`). */
function countingWholeReads(): { readonly count: () => number; readonly restore: () => void } {
  const original = Client.prototype.searchPaginated;
  let whole = 0;
  Client.prototype.searchPaginated = function (this: Client, ...args: Parameters<typeof original>) {
    if (!String(args[1]?.filter ?? '').includes('>=')) whole += 1;
    return original.apply(this, args);
  } as typeof original;
  return { count: () => whole, restore: () => (Client.prototype.searchPaginated = original) };
}

/** Waits (at most `ms`) until `done`; true if it came. */
async function until(done: () => boolean, ms: number): Promise<boolean> {
  const end = performance.now() + ms;
  while (!done() && performance.now() < end) await sleep(20);
  return done();
}

/**
 * A mailfront (one plain IMAP listener, a stand-in directory) whose store map is three stores on
 * the provider of a slapd pair, polled every 100 ms: its syncprov overlay keeps the contextCSN the
 * polls go by. `stop()` stops mailfront, the pair and the folder.
 */
async function startLdapMailfront(name: string): Promise<{ mailfront: Mailfront; provider: SlapdPair['servers'][number]; master: (store: string) => string | undefined; stop: () => Promise<void> }> {
  const pair = await startSlapdPair({ mode: 'consumer', entries: storeEntries(3), access: FAILOVER_ACCESS });
  const [provider] = pair.servers;
  registerPasswords(provider.bindPassword);
  const dir = tmpDir(name);
  const configFile = join(dir.path, 'mailfront.yaml');
  await writeFile(configFile, stringify(await configFor({ ldap: { urls: [provider.url], bind_dn: provider.bindDn, bind_password: provider.bindPassword, base_dn: LDAP_STORES_DN, poll_interval_ms: 100 } })));
  const writeSuiteLog = suiteLogWriter();
  const mailfront = await Mailfront.start(loadConfig(configFile), { directory: standInDirectory(), processMetrics: false, logDestination: { write: (line: string) => writeSuiteLog(line) } });
  return {
    mailfront,
    provider,
    master: (store) => mailfront.currentStoreMap().stores.get(store)?.currentMaster,
    async stop() {
      await mailfront.stop(0);
      await dir.remove();
      await pair.stop();
    },
  };
}

test('a reload with an LDAP store map reads it whole once; a change made before it is in force after it, a failover written while it runs stays in force, and the polls by contextCSN go on', { timeout: 90_000 }, async () => {
  const { mailfront, provider, master, stop } = await startLdapMailfront('reload-storemap-once-ldap');
  const whole = countingWholeReads();
  try {
    const counted = counting(mailfront.holder.source);
    // The polls settle on the contextCSN after the start's whole read; then they are held back,
    // so that they can neither read the map (a poll meets a load under way) nor be what puts a
    // change in force.
    await sleep(500);
    const release = holdPolls(mailfront.holder.source);
    await sleep(300);
    const before = whole.count();
    const unchanged = await mailfront.reload();
    assert.equal(unchanged.ok, true, unchanged.error);
    assert.equal(counted.loads(), 1, 'store-map loads at an unchanged reload');
    assert.equal(whole.count() - before, 1, 'whole reads of the store map at an unchanged reload');

    // A change made just before the reload is in force after it.
    await provider.modify(failoverLdif('st2', 'sl2b'));
    const changed = await mailfront.reload();
    assert.equal(changed.ok, true, changed.error);
    assert.equal(master('st2'), 'sl2b', 'a change made before the reload is not in force after it');

    // A failover written through this instance once the reload's check has read the map, before
    // the reload puts a map in force: in force after the reload, and still once the polls run.
    let failover: Promise<unknown> | undefined;
    counted.afterLoad(() => (failover = mailfront.holder.failover('st3', 'sl3b')));
    const during = await mailfront.reload();
    assert.equal(during.ok, true, during.error);
    assert.ok(failover !== undefined, 'no failover was written during the reload');
    await failover;
    assert.equal(master('st3'), 'sl3b', 'the failover written during the reload was undone by it');

    // The polls go on by contextCSN from the reloads' reads: nothing changed, nothing read whole
    // (after the poll held back, which took the map as it was before the reloads to compare with).
    release();
    await sleep(300);
    const released = whole.count();
    await sleep(1_000);
    assert.equal(whole.count(), released, 'polls after the reloads read the whole map');
    assert.equal(master('st3'), 'sl3b', 'the failover written during the reload was undone later');
    assert.equal(master('st2'), 'sl2b');
    // And follow a failover written by another tool.
    await provider.modify(failoverLdif('st1', 'sl1b'));
    assert.ok(await until(() => master('st1') === 'sl1b', 5_000), 'the polls did not follow a failover after the reloads');
  } finally {
    whole.restore();
    await stop();
  }
});

test('a failover written to LDAP just before a reload\'s check read is put in force by the polls while the rest of the reload runs, and stays after it', { timeout: 90_000 }, async () => {
  const { mailfront, provider, master, stop } = await startLdapMailfront('reload-storemap-check-read');
  try {
    await sleep(500);
    // The failover is written right before the check's read, which finds it.
    const source = mailfront.holder.source;
    const load = source.load.bind(source);
    source.load = async (trigger?: string) => {
      if (trigger === 'check') await provider.modify(failoverLdif('st1', 'sl1b'));
      return load(trigger);
    };
    // The rest of the reload takes its time (a directory's settings tried on a server that does
    // not answer: seconds), here until the failover is in force, 5 s at most.
    const read = mailfront.holder.read.bind(mailfront.holder);
    let inForceDuring = false;
    mailfront.holder.read = async () => {
      const checked = await read();
      inForceDuring = await until(() => master('st1') === 'sl1b', 5_000);
      return checked;
    };
    const reloaded = await mailfront.reload();
    assert.equal(reloaded.ok, true, reloaded.error);
    assert.ok(inForceDuring, 'the failover the check read found was not in force within 5 s while the reload ran (the polls every 100 ms did not report it)');
    assert.equal(master('st1'), 'sl1b', 'the failover is not in force after the reload');
    await sleep(500);
    assert.equal(master('st1'), 'sl1b', 'the failover was undone after the reload');

    // With the polls held back, a reload whose check read finds a change puts it in force itself,
    // and the source counts that read as loaded: the polls, released, read nothing whole for it.
    source.load = load;
    mailfront.holder.read = read;
    const release = holdPolls(source);
    await sleep(300);
    await provider.modify(failoverLdif('st2', 'sl2b'));
    const changed = await mailfront.reload();
    assert.equal(changed.ok, true, changed.error);
    assert.equal(master('st2'), 'sl2b', 'the change the check read found is not in force after the reload');
    const whole = countingWholeReads();
    try {
      release();
      await sleep(1_000);
      assert.equal(whole.count(), 0, 'the polls read the whole map again for the map the reload put in force');
    } finally {
      whole.restore();
    }
  } finally {
    await stop();
  }
});
