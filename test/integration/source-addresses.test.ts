/**
 * backend.source_addresses against a real Dovecot: logins and health probes reach it from the
 * given local addresses in turn (its log's rip; forward_client_address off, so that rip is
 * mailfront's own address, not the client's), a reload that changes them applies to the next
 * connections, and an address the host does not have (192.0.2.1, only ever bound) is refused by
 * check-config, at start and at reload, naming its path. 127.0.0.2 and 127.0.0.3 are local on
 * Linux's lo.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { parse, stringify } from 'yaml';
import { ConfigError, loadConfig } from '../../src/config/load.js';
import { Mailfront } from '../../src/main.js';
import { LineClient, freePort, startDovecot, startSlapd } from './servers/index.js';
import type { Dovecot, Slapd } from './servers/index.js';
import { registerPasswords, standInDirectory, startFront, waitForLog } from './front.js';
import type { Front } from './front.js';

const CLI = join(dirname(fileURLToPath(import.meta.url)), '../../src/cli/main.js');
const PASSWORD = 'Alice-src-pw-31d7';
registerPasswords(PASSWORD);

let slapd: Slapd;
let dovecot: Dovecot;
let front: Front;

before(async () => {
  [slapd, dovecot] = await Promise.all([startSlapd({ users: [{ uid: 'alice', password: PASSWORD, store: 'alpha' }] }), startDovecot({ name: 'src', users: [{ name: 'alice', password: PASSWORD }] })]);
  front = await startFront({
    slapd,
    stores: { alpha: { currentMaster: 'slot-a1', slots: { 'slot-a1': { imapPort: dovecot.imapPort } } } },
    backend: { forward_client_address: false, source_addresses: ['127.0.0.2', '127.0.0.3'] },
  });
});

after(async () => {
  await front?.stop();
  await Promise.all([slapd?.stop(), dovecot?.stop()]);
});

/** Logs alice in through mailfront and out again. */
async function login(): Promise<void> {
  const client = await LineClient.connect(front.imapTrustedPort);
  await client.readLine();
  const answer = await client.imap(`LOGIN alice "${PASSWORD}"`);
  assert.equal(answer.status, 'OK', answer.text);
  await client.imap('LOGOUT').catch(() => undefined);
  client.socket.destroy();
}

/** The rip of each of Dovecot's logins of alice, in order. */
async function loginAddresses(): Promise<string[]> {
  const log = await dovecot.readLog();
  return [...log.matchAll(/imap-login: Info: Login: user=<alice>.*?\brip=([0-9a-f.:]+),/g)].map((m) => m[1]!);
}

/** Waits until Dovecot has logged `count` logins of alice; returns their rip. */
async function untilLogins(count: number): Promise<string[]> {
  for (let i = 0; i < 100; i++) {
    const addresses = await loginAddresses();
    if (addresses.length >= count) return addresses;
    await new Promise((r) => setTimeout(r, 50));
  }
  return loginAddresses();
}

/** Rewrites backend.source_addresses in the config file and reloads. */
async function reloadWith(sourceAddresses: readonly string[]): Promise<{ ok: boolean; error?: string }> {
  const doc = parse(await readFile(front.configFile, 'utf8')) as { backend: Record<string, unknown> };
  doc.backend['source_addresses'] = sourceAddresses;
  await writeFile(front.configFile, stringify(doc));
  return front.mailfront.reload();
}

test('logins reach Dovecot from the source addresses in turn, and a reload that changes them applies to the next ones', async () => {
  const before = (await loginAddresses()).length;
  for (let i = 0; i < 4; i++) await login();
  assert.deepEqual((await untilLogins(before + 4)).slice(before), ['127.0.0.2', '127.0.0.3', '127.0.0.2', '127.0.0.3']);
  assert.equal((await reloadWith(['127.0.0.3'])).ok, true);
  for (let i = 0; i < 2; i++) await login();
  assert.deepEqual((await untilLogins(before + 6)).slice(before + 4), ['127.0.0.3', '127.0.0.3']);
  assert.equal((await reloadWith(['127.0.0.2', '127.0.0.3'])).ok, true);
});

test('a reload naming an address the host does not have is rejected, naming its path; the addresses in force stay', async () => {
  const mark = front.logs.length;
  const result = await reloadWith(['127.0.0.2', '192.0.2.1']);
  assert.equal(result.ok, false);
  assert.match(result.error ?? '', /backend\.source_addresses\[1\]: expected an address of this host \(the kernel would not bind a socket to it: EADDRNOTAVAIL\), found "192\.0\.2\.1"/);
  await waitForLog(front, (l) => l['event'] === 'config.rejected', 2_000, mark);
  const before = (await loginAddresses()).length;
  await login();
  await login();
  assert.deepEqual((await untilLogins(before + 2)).slice(before), ['127.0.0.2', '127.0.0.3']);
  assert.equal((await reloadWith(['127.0.0.2', '127.0.0.3'])).ok, true);
});

test('health probes leave from the source addresses in turn', async () => {
  // A mailfront of its own, probing every second, behind a stand-in directory: its probes only read the greeting.
  const doc = parse(await readFile(front.configFile, 'utf8')) as Record<string, unknown>;
  doc['health'] = { interval_ms: 1_000, timeout_ms: 1_000 };
  doc['http'] = { host: '127.0.0.1', port: 0 };
  doc['listeners'] = [{ name: 'imap', protocol: 'imap', host: '127.0.0.1', port: await freePort(), tls: 'none', plaintext_without_tls: true }];
  const file = join(dirname(front.configFile), 'probes.yaml');
  await writeFile(file, stringify(doc));
  const logBefore = await dovecot.readLog();
  const probing = await Mailfront.start(loadConfig(file), { directory: standInDirectory(), processMetrics: false, logDestination: { write: () => undefined } });
  try {
    const probed = async (): Promise<string[]> => [...(await dovecot.readLog()).slice(logBefore.length).matchAll(/imap-login: Info: Disconnected.*?user=<>.*?\brip=([0-9a-f.:]+),/g)].map((m) => m[1]!);
    let addresses: string[] = [];
    for (let i = 0; i < 100 && addresses.length < 3; i++) {
      await new Promise((r) => setTimeout(r, 100));
      addresses = await probed();
    }
    assert.ok(addresses.length >= 3, `probes seen: ${addresses.join(', ')}`);
    assert.deepEqual(addresses.slice(0, 3), ['127.0.0.2', '127.0.0.3', '127.0.0.2']);
  } finally {
    await probing.stop(0);
  }
});

test('an address the host does not have: start refuses it, and check-config names it, in the config and in the store map', async () => {
  const doc = parse(await readFile(front.configFile, 'utf8')) as Record<string, Record<string, unknown>>;
  doc['backend']!['source_addresses'] = ['127.0.0.2', '192.0.2.1'];
  const file = join(dirname(front.configFile), 'nonlocal.yaml');
  await writeFile(file, stringify(doc));
  await assert.rejects(Mailfront.start(loadConfig(file), { directory: standInDirectory(), processMetrics: false, logDestination: { write: () => undefined } }), (error: unknown) => {
    assert.ok(error instanceof ConfigError, String(error));
    assert.deepEqual(error.issues.map((i) => [i.path, i.found]), [['backend.source_addresses[1]', '"192.0.2.1"']]);
    return true;
  });
  // A store of the store map with an address of its own that the host does not have.
  const storesFile = join(dirname(front.configFile), 'nonlocal-stores.yaml');
  const stores = parse(await readFile(front.storesFile, 'utf8')) as { stores: Record<string, Record<string, unknown>> };
  stores.stores['alpha']!['backend'] = { source_addresses: ['198.51.100.7'] };
  await writeFile(storesFile, stringify(stores));
  doc['store_map'] = { file: storesFile, watch: false };
  await writeFile(file, stringify(doc));
  const checked = await new Promise<{ code: number; stderr: string }>((resolve) => {
    execFile(process.execPath, [CLI, 'check-config', file], { timeout: 30_000 }, (error, _stdout, stderr) => resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : -1, stderr }));
  });
  assert.equal(checked.code, 1, checked.stderr);
  assert.match(checked.stderr, /backend\.source_addresses\[1\]: expected an address of this host \(the kernel would not bind a socket to it: EADDRNOTAVAIL\), found "192\.0\.2\.1"/);
  assert.match(checked.stderr, /stores\.alpha\.backend\.source_addresses\[0\]: expected an address of this host .*found "198\.51\.100\.7"/);
});
