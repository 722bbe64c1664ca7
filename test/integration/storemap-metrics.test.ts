/**
 * The store-map metrics as /metrics shows them across reloads: a load's outcome
 * (`mailfront_store_map_last_load_success`, the loads counter, the last-load time) follows each
 * load of the source, whether or not it changed the map in force.
 */
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { after, before, test } from 'node:test';
import { startDovecot, startSlapd } from './servers/index.js';
import type { Dovecot, Slapd } from './servers/index.js';
import { registerSecrets, startFront } from './front.js';
import type { Front, StoreSpec } from './front.js';

const PASSWORD = 'Smmetrics-pw-4d1e';
registerSecrets([PASSWORD]);
let slapd: Slapd;
let dovecot: Dovecot;
let front: Front;
let stores: Record<string, StoreSpec>;

before(async () => {
  slapd = await startSlapd({ users: [{ uid: 'sam', password: PASSWORD, store: 'alpha' }] });
  dovecot = await startDovecot({ name: 'smm', users: [{ name: 'sam', password: PASSWORD }] });
  stores = { alpha: { currentMaster: 'a1', slots: { a1: { imapPort: dovecot.imapPort } } } };
  front = await startFront({ slapd, stores });
});
after(async () => {
  await front?.stop();
  await Promise.all([slapd?.stop(), dovecot?.stop()]);
});

/** Every sample of /metrics, by name and labels as exposed. */
async function samples(): Promise<Map<string, number>> {
  const { host, port } = front.mailfront.httpAddress()!;
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
