/**
 * The store-map metrics as /metrics shows them across reloads: a load's outcome
 * (`mailfront_store_map_last_load_success`, the loads counter, the last-load time) follows each
 * load of the source, whether or not it changed the map in force, and only those: the map in
 * force built again by a config reload is no load. A store removed from the map has its sessions
 * drained but had no failover: no failover is counted, and no series of it comes back.
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { after, before, test } from 'node:test';
import { parse, stringify } from 'yaml';
import { LDAP_STORES_DN, LineClient, startDovecot, startSlapd } from './servers/index.js';
import type { Dovecot, Slapd } from './servers/index.js';
import { registerSecrets, startFront, waitForLog } from './front.js';
import type { Front, StoreSpec } from './front.js';

const PASSWORD = 'Smmetrics-pw-4d1e';
registerSecrets([PASSWORD]);
let slapd: Slapd;
let dovecot: Dovecot;
let front: Front;
let stores: Record<string, StoreSpec>;

before(async () => {
  slapd = await startSlapd({ users: [{ uid: 'sam', password: PASSWORD, store: 'alpha' }, { uid: 'gus', password: PASSWORD, store: 'gone' }] });
  dovecot = await startDovecot({ name: 'smm', users: [{ name: 'sam', password: PASSWORD }, { name: 'gus', password: PASSWORD }] });
  stores = { alpha: { currentMaster: 'a1', slots: { a1: { imapPort: dovecot.imapPort } } } };
  front = await startFront({ slapd, stores });
});
after(async () => {
  await front?.stop();
  await Promise.all([slapd?.stop(), dovecot?.stop()]);
});

/** Every sample of /metrics, by name and labels as exposed. */
async function samples(of: Front = front): Promise<Map<string, number>> {
  const { host, port } = of.mailfront.httpAddress()!;
  const body = await (await fetch(`http://${host}:${port}/metrics`)).text();
  const out = new Map<string, number>();
  for (const line of body.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const space = line.lastIndexOf(' ');
    out.set(line.slice(0, space), Number(line.slice(space + 1)));
  }
  return out;
}

const SUCCESS = 'mailfront_store_map_loads_total{result="success"}';
const FAILURE = 'mailfront_store_map_loads_total{result="failure"}';
const LAST_SUCCESS = 'mailfront_store_map_last_load_success';
const LAST_TIME = 'mailfront_store_map_last_load_timestamp_seconds';

test('a store map fixed back to the map in force is a successful load: the gauge, the success count and the time move', async () => {
  await writeFile(front.storesFile, 'stores: [this is: not valid\n');
  assert.equal((await front.mailfront.reloadStoreMap('test')).ok, false);
  const rejected = await samples();
  assert.equal(rejected.get(LAST_SUCCESS), 0);
  const version = front.mailfront.currentStoreMap().version;
  // The timestamp has a resolution finer than this, but not by much on a fast machine.
  await new Promise((r) => setTimeout(r, 20));
  await front.writeStores(stores);
  const fixed = await front.mailfront.reloadStoreMap('test');
  assert.deepEqual([fixed.ok, fixed.version], [true, version], 'the same map: no new version');
  const after = await samples();
  assert.equal(after.get(LAST_SUCCESS), 1, 'the last load succeeded');
  assert.ok(after.get(SUCCESS)! > rejected.get(SUCCESS)!, 'a success is counted');
  assert.ok(after.get(LAST_TIME)! > rejected.get(LAST_TIME)!, 'the time of the last load moved');
  assert.equal(after.get('mailfront_store_map_version'), version);
});

test('a config reload while the store map is broken rebuilds the map in force without counting a load: the gauge stays 0', async () => {
  const config = await readFile(front.configFile, 'utf8');
  try {
    await writeFile(front.storesFile, 'stores: [broken\n');
    assert.equal((await front.mailfront.reloadStoreMap('test')).ok, false);
    const rejected = await samples();
    const mark = front.logs.length;
    const changed = parse(config) as { backend: Record<string, unknown> };
    changed.backend['login_timeout_ms'] = Number(changed.backend['login_timeout_ms']) + 1;
    await writeFile(front.configFile, stringify(changed));
    const reloaded = await front.mailfront.reload();
    assert.equal(reloaded.ok, true, reloaded.error);
    assert.equal(reloaded.storeMap.ok, false);
    const after = await samples();
    assert.equal(after.get('mailfront_store_map_version'), front.mailfront.currentStoreMap().version, 'the rebuilt map is the version in force');
    assert.ok(after.get('mailfront_store_map_version')! > rejected.get('mailfront_store_map_version')!, 'the map in force was rebuilt');
    assert.equal(after.get(LAST_SUCCESS), 0, 'the source is still broken');
    assert.equal(after.get(SUCCESS), rejected.get(SUCCESS), 'no success counted');
    assert.ok(after.get(FAILURE)! > rejected.get(FAILURE)!, "the reload's load of the source was rejected");
    const events = front.logs.slice(mark).map((l) => String(l['event'])).filter((e) => e.startsWith('storemap.'));
    assert.ok(events.includes('storemap.rebuilt'), events.join(', '));
    assert.ok(!events.includes('storemap.loaded'), `no load is logged: ${events.join(', ')}`);
  } finally {
    await front.writeStores(stores);
    await writeFile(front.configFile, config);
    assert.equal((await front.mailfront.reload()).ok, true);
  }
  assert.equal((await samples()).get(LAST_SUCCESS), 1);
});

test('a store removed by a reload has its sessions drained, but no failover is counted and none of its series comes back', async () => {
  const { imapPort } = dovecot;
  await front.writeStores({ alpha: { currentMaster: 'a1', slots: { a1: { imapPort }, a2: { imapPort } } }, gone: { currentMaster: 'g1', slots: { g1: { imapPort } } }, empty: { currentMaster: 'e1', slots: { e1: { imapPort } } } });
  assert.equal((await front.mailfront.reloadStoreMap('test')).ok, true);
  const client = await LineClient.connect(front.imapTrustedPort);
  try {
    await client.readLine();
    const login = await client.imap(`LOGIN gus "${PASSWORD}"`);
    assert.equal(login.status, 'OK', login.text);
    const before = await samples();
    assert.ok([...before.keys()].some((k) => k.includes('store="gone"')), 'the store has series while in the map');
    const mark = front.logs.length;
    // In one reload: alpha fails over to a2 (a failover), and gone leaves the map (none).
    await front.writeStores({ alpha: { currentMaster: 'a2', slots: { a1: { imapPort }, a2: { imapPort } } } });
    assert.equal((await front.mailfront.reloadStoreMap('test')).ok, true);
    const drained = await waitForLog(front, (l) => l['event'] === 'failover.drain' && l['store'] === 'gone', 5_000, mark);
    assert.deepEqual([drained['to'], drained['sessions'], drained['level'], drained['msg']], [null, 1, 'warn', 'store left the store map; draining its sessions']);
    // A store removed with nothing on it is no warning (200 removed stores made 200).
    const empty = await waitForLog(front, (l) => l['event'] === 'failover.drain' && l['store'] === 'empty', 5_000, mark);
    assert.deepEqual([empty['to'], empty['sessions'], empty['logins'], empty['level'], empty['msg']], [null, 0, 0, 'info', 'store left the store map; nothing was on it']);
    assert.ok(await client.waitClosed(5_000), "the removed store's session is drained");
    const after = await samples();
    assert.deepEqual([...after.keys()].filter((k) => k.includes('store="gone"')), [], 'no series of the removed store');
    assert.equal(after.get('mailfront_failovers_total{store="alpha"}'), (before.get('mailfront_failovers_total{store="alpha"}') ?? 0) + 1);
  } finally {
    client.close();
  }
});

test('an LDAP store map unreadable at a reload: the next poll that reads it again, unchanged, is a successful load', async () => {
  await slapd.modify([`dn: cn=alpha,${LDAP_STORES_DN}`, 'changetype: add', 'objectClass: mailfrontStore', 'cn: alpha', 'mailfrontCurrentMaster: a1', '', `dn: cn=a1,cn=alpha,${LDAP_STORES_DN}`, 'changetype: add', 'objectClass: mailfrontSlot', 'cn: a1', 'mailfrontHost: 127.0.0.1', `mailfrontImapPort: ${dovecot.imapPort}`, ''].join('\n'));
  const ldapFront = await startFront({ slapd, stores, storeMapLdapBase: LDAP_STORES_DN });
  try {
    const metricsOf = (): Promise<Map<string, number>> => samples(ldapFront);
    assert.equal((await metricsOf()).get(LAST_SUCCESS), 1);
    await slapd.stopOnly();
    try {
      assert.equal((await ldapFront.mailfront.reloadStoreMap('test')).ok, false);
      assert.equal((await metricsOf()).get(LAST_SUCCESS), 0);
    } finally {
      await slapd.startAgain();
    }
    // No reload asked for: the poll (every 100 ms here) finds the same map and has it loaded.
    const deadline = Date.now() + 10_000;
    while ((await metricsOf()).get(LAST_SUCCESS) !== 1 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    assert.equal((await metricsOf()).get(LAST_SUCCESS), 1, 'the gauge stayed at 0 after LDAP came back');
  } finally {
    await ldapFront.stop();
  }
});
