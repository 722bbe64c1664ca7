/**
 * A reload and an LDAP store-map server behind the map in force, end to end: a mailfront whose
 * store map is read from a provider and its consumer (real slapd), the consumer cut off before a
 * failover and the provider stopped. A SIGHUP's reload (Mailfront.reload(), as serve calls it)
 * and `mailfront reload` refuse the consumer's map as the polls do: a certificate's renewal or a
 * log rotation must not undo the failover (and drain the new master's sessions onto the demoted
 * one). `mailfront reload --accept-older-store-map`, what an operator runs after restoring the
 * directory from a backup, puts it in force, said at error level.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { stringify } from 'yaml';
import { loadConfig } from '../../src/config/load.js';
import { Mailfront } from '../../src/main.js';
import { ADMIN_TOKEN, registerPasswords, runCli as cli, standInDirectory, suiteLogWriter } from './front.js';
import { LDAP_STORES_DN, freePort, tmpDir } from './servers/index.js';
import { startSlapdPair } from './servers/slapd-pair.js';
import type { SlapdPair } from './servers/slapd-pair.js';
import { storeEntries, FAILOVER_ACCESS, failoverLdif } from './store-entries.js';

registerPasswords('reader-pw-unused');

/** Waits (at most `ms`) until `done`; true if it came. */
async function until(done: () => boolean, ms: number): Promise<boolean> {
  const end = performance.now() + ms;
  while (!done() && performance.now() < end) await sleep(20);
  return done();
}

/** The config of the test's mailfront, as written: the store map read from `urls`, polled every `pollIntervalMs`. */
function configOf(urls: readonly string[], bind: { readonly bindDn: string; readonly bindPassword: string }, ports: { readonly imap: number; readonly http: number }, pollIntervalMs: number, baseDn = LDAP_STORES_DN): string {
  return stringify({
    log: { level: 'info' },
    listeners: [{ name: 'imap', protocol: 'imap', host: '127.0.0.1', port: ports.imap, tls: 'none', plaintext_without_tls: true }],
    directory: { urls: ['ldap://127.0.0.1:1'], bind_dn: 'cn=reader', bind_password: 'reader-pw-unused', base_dn: 'dc=example' },
    store_map: { ldap: { urls, bind_dn: bind.bindDn, bind_password: bind.bindPassword, base_dn: baseDn, poll_interval_ms: pollIntervalMs } },
    http: { host: '127.0.0.1', port: ports.http },
    admin: { token: ADMIN_TOKEN },
    throttle: { enabled: false },
    health: { interval_ms: 0 },
    shutdown: { unready_delay_ms: 0 },
  });
}

/**
 * A mailfront whose store map is read from a provider and its consumer, polled every 100 ms, and
 * brought to the state of the tests: the consumer cut off, st1 failed over on the provider and
 * followed, then the provider stopped and the consumer found behind (storemap.source_behind).
 */
async function startBehind(name: string): Promise<{ mailfront: Mailfront; pair: SlapdPair; configFile: string; httpPort: number; rewrite: (pollIntervalMs: number, baseDn?: string) => Promise<void>; lines: Array<Record<string, unknown>>; master: (store: string) => string | undefined; stop: () => Promise<void> }> {
  const pair = await startSlapdPair({ mode: 'consumer', entries: storeEntries(2), access: FAILOVER_ACCESS });
  const [provider, consumer] = pair.servers;
  registerPasswords(provider.bindPassword);
  const dir = tmpDir(name);
  const configFile = join(dir.path, 'mailfront.yaml');
  const ports = { imap: await freePort(), http: await freePort() };
  const rewrite = (pollIntervalMs: number, baseDn?: string): Promise<void> => writeFile(configFile, configOf([provider.url, consumer.url], provider, ports, pollIntervalMs, baseDn));
  await rewrite(100);
  const lines: Array<Record<string, unknown>> = [];
  const writeSuiteLog = suiteLogWriter();
  const mailfront = await Mailfront.start(loadConfig(configFile), {
    directory: standInDirectory(),
    processMetrics: false,
    logDestination: {
      write: (line: string) => {
        lines.push(JSON.parse(line) as Record<string, unknown>);
        writeSuiteLog(line);
      },
    },
  });
  const master = (store: string): string | undefined => mailfront.currentStoreMap().stores.get(store)?.currentMaster;
  const stop = async (): Promise<void> => {
    await mailfront.stop(0);
    await dir.remove();
    await pair.stop();
  };
  try {
    pair.links[0]!.cut();
    await provider.modify(failoverLdif('st1', 'sl1b'));
    assert.ok(await until(() => master('st1') === 'sl1b', 10_000), 'the failover on the provider was not followed');
    await provider.stopOnly();
    assert.ok(await until(() => lines.some((l) => l['event'] === 'storemap.source_behind'), 15_000), 'the consumer was not found behind');
  } catch (error) {
    await stop();
    throw error;
  }
  return { mailfront, pair, configFile, httpPort: ports.http, rewrite, lines, master, stop };
}

test('with the store map read from a consumer behind the map in force, SIGHUP and mailfront reload keep the failover in force (exit 1, the reason and the way to accept it said); mailfront reload --accept-older-store-map puts the consumer\'s map in force, as does a SIGHUP\'s reload that such a request joins', { timeout: 120_000 }, async () => {
  const { mailfront, pair, httpPort, lines, master, stop } = await startBehind('reload-accept-older');
  const [provider, consumer] = pair.servers;
  const remote = ['--url', `http://127.0.0.1:${httpPort}`, '--token', ADMIN_TOKEN];
  try {
    // SIGHUP's reload (serve calls Mailfront.reload()): the config is reloaded, the store map refused.
    const signal = await mailfront.reload();
    assert.equal(signal.storeMap.ok, false, 'a SIGHUP put the consumer\'s map in force');
    assert.match(String(signal.storeMap.error), /is behind the map in force/);
    assert.equal(master('st1'), 'sl1b');

    const plain = await cli('reload', ...remote);
    assert.equal(plain.code, 1, `${plain.stdout}${plain.stderr}`);
    assert.match(plain.stdout, /^config reloaded\nstore map rejected: the store-map server .* is behind the map in force .*mailfront reload --accept-older-store-map.*; version \d+ stays in force\n$/);
    assert.equal(master('st1'), 'sl1b');
    assert.ok(!lines.some((l) => l['event'] === 'storemap.source_behind_accepted'), 'accepted without being asked');

    // A misspelt option is a usage error: nothing is sent.
    const typo = await cli('reload', '--accept-older', ...remote);
    assert.equal(typo.code, 2, typo.stderr);
    assert.equal(master('st1'), 'sl1b');

    const accepted = await cli('reload', '--accept-older-store-map', ...remote);
    assert.equal(accepted.code, 0, `${accepted.stdout}${accepted.stderr}`);
    assert.match(accepted.stdout, /^config reloaded\nstore map version \d+ in force\n$/);
    assert.equal(master('st1'), 'sl1a', 'the consumer\'s map is not in force');
    const asked = lines.find((l) => l['event'] === 'admin.reload_accept_older');
    assert.equal(asked?.['level'], 'warn');
    const said = lines.find((l) => l['event'] === 'storemap.source_behind_accepted');
    assert.equal(said?.['level'], 'error');
    assert.equal(said?.['url'], consumer.url);
    assert.equal(said?.['trigger'], 'accept-older');
    const reloaded = lines.find((l) => l['event'] === 'storemap.loaded' && l['trigger'] === 'accept-older');
    assert.ok(reloaded !== undefined, `no storemap.loaded line of the accepting reload: ${JSON.stringify(lines.filter((l) => String(l['event']).startsWith('storemap.')).map((l) => l['event']))}`);

    // Behind again: the consumer catches up and is cut off again, a failover of st2 is written
    // on the provider and read there (the consumer stopped meanwhile), then the provider stops.
    await provider.startAgain();
    pair.links[0]!.restore();
    assert.ok(await until(() => master('st1') === 'sl1b', 20_000), 'the consumer did not catch up');
    pair.links[0]!.cut();
    await consumer.stopOnly();
    await provider.modify(failoverLdif('st2', 'sl2b'));
    assert.ok(await until(() => master('st2') === 'sl2b', 20_000), 'the failover of st2 was not followed on the provider');
    await consumer.startAgain();
    const behindBefore = lines.filter((l) => l['event'] === 'storemap.source_behind').length;
    await provider.stopOnly();
    assert.ok(await until(() => lines.filter((l) => l['event'] === 'storemap.source_behind').length > behindBefore, 15_000), 'the consumer was not found behind again');
    // The option was for its reload alone.
    const later = await mailfront.reload();
    assert.equal(later.storeMap.ok, false, 'the option outlived its reload');
    assert.equal(master('st2'), 'sl2b');
    // A request to accept that joins a reload waiting to start (a SIGHUP's) gives it the option:
    // that reload has not read the map yet, and the operator asked.
    const waiting = mailfront.reload();
    const joined = mailfront.reload({ acceptOlderStoreMap: true });
    assert.equal(joined, waiting);
    const both = await joined;
    assert.equal(both.storeMap.ok, true, both.storeMap.error);
    assert.equal(master('st2'), 'sl2a');
  } finally {
    await stop();
  }
});

test('a reload whose store_map section changed but reads the same base DN (poll_interval_ms, a CA file renewed) refuses the consumer behind the map in force as the source in force did: the rest of the config is taken, the failover stays; one asked to accept an older map puts the consumer\'s in force', { timeout: 120_000 }, async () => {
  const { mailfront, rewrite, lines, master, stop } = await startBehind('reload-accept-older-section');
  try {
    await rewrite(150);
    const changed = await mailfront.reload();
    assert.equal(changed.ok, true, changed.error);
    assert.ok(lines.some((l) => l['event'] === 'storemap.source_changed'), 'the source was not set up anew');
    assert.equal(changed.storeMap.ok, false, 'the new source put the consumer\'s map in force');
    assert.match(String(changed.storeMap.error), /is behind the map in force/);
    assert.equal(master('st1'), 'sl1b');
    // The new source's polls refuse it too.
    await sleep(1_000);
    assert.equal(master('st1'), 'sl1b', 'the new source\'s polls put the consumer\'s map in force');
    assert.ok(!lines.some((l) => l['event'] === 'storemap.source_behind_accepted'));

    await rewrite(200);
    const accepted = await mailfront.reload({ acceptOlderStoreMap: true });
    assert.equal(accepted.ok, true, accepted.error);
    assert.equal(accepted.storeMap.ok, true, accepted.storeMap.error);
    assert.equal(master('st1'), 'sl1a');
    assert.equal(lines.find((l) => l['event'] === 'storemap.source_behind_accepted')?.['trigger'], 'accept-older');
  } finally {
    await stop();
  }
});

test('a reload that widens store_map.ldap.base_dn to its parent reads the same store entries and refuses the consumer behind the map in force as the source in force did', { timeout: 120_000 }, async () => {
  const { mailfront, rewrite, lines, master, stop } = await startBehind('reload-accept-older-wider');
  try {
    const parent = LDAP_STORES_DN.slice(LDAP_STORES_DN.indexOf(',') + 1);
    await rewrite(100, parent);
    const widened = await mailfront.reload();
    assert.equal(widened.ok, true, widened.error);
    assert.ok(lines.some((l) => l['event'] === 'storemap.source_changed'), 'the source was not set up anew');
    assert.equal(widened.storeMap.ok, false, 'the new source put the consumer\'s map in force');
    assert.match(String(widened.storeMap.error), /is behind the map in force/);
    assert.equal(master('st1'), 'sl1b');
    await sleep(1_000);
    assert.equal(master('st1'), 'sl1b', 'the new source\'s polls put the consumer\'s map in force');
  } finally {
    await stop();
  }
});
