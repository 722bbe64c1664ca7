// What the store-map holder puts in force, and when: everything it does with the map in force
// (reloads, failovers, maintenance switches) runs in turn, one after the other, so that a reload
// that read the source before a failover was written never puts what it read in force after that
// failover (undoing it in force, and draining the new master's sessions back onto the old one).
// And a map built for the check of a new config is put in force only while that config is the
// one in force: a refused config's backend settings never reach a login.
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { parse } from 'yaml';
import { readBackend } from '../../src/config/schema.js';
import { IssueList } from '../../src/config/validate.js';
import { createLogger } from '../../src/log.js';
import { StoreMapHolder } from '../../src/routing/holder.js';
import type { MasterChange } from '../../src/routing/holder.js';
import { FileStoreMapSource } from '../../src/routing/sources.js';
import { tmpDir } from '../integration/servers/index.js';
import type { TmpDir } from '../integration/servers/index.js';

type HolderConfig = ReturnType<ConstructorParameters<typeof StoreMapHolder>[1]>;
const configWith = (backend: Record<string, unknown> | undefined): HolderConfig => ({ backend: readBackend(backend, 'backend', (p) => p, new IssueList()), backendProfiles: new Map() });
const map = (alpha: string): string => `stores:
  alpha: { current_master: ${alpha}, preferred_master: a1, slots: { a1: { host: 127.0.0.1, imap_port: 10143 }, a2: { host: 127.0.0.1, imap_port: 10144 } } }
`;

let dir: TmpDir;
before(() => {
  dir = tmpDir('storemap-turns');
});
after(async () => {
  await dir.remove();
});

test('a reload that read the store map before a failover was written puts nothing in force after that failover: the failover stays in force, and no change back is reported', async () => {
  const file = join(dir.path, 'turns.yaml');
  writeFileSync(file, map('a1'));
  const source = new FileStoreMapSource(file, false);
  const changes: MasterChange[] = [];
  const inForce = configWith(undefined);
  const holder = new StoreMapHolder(source, () => inForce, createLogger('silent'), { changes: (c) => void changes.push(...c) });
  assert.equal((await holder.reload('start')).ok, true);

  // The watch's reload reads the file (a1) and is slow to hand it on (a large map, a busy event loop).
  const load = source.load.bind(source);
  let handOn!: () => void;
  const handedOn = new Promise<void>((resolve) => (handOn = resolve));
  source.load = async (trigger?: string) => {
    const doc = await load();
    if (trigger === 'change') await handedOn;
    return doc;
  };
  const reload = holder.reload('change');
  const failover = holder.failover('alpha', 'a2');
  // In turn, the failover waits for the reload; out of turn, it is written and put in force meanwhile.
  await Promise.race([failover, sleep(300)]);
  handOn();
  const [reloaded, failedOver] = await Promise.all([reload, failover]);
  assert.equal(reloaded.ok, true);
  assert.equal(failedOver.ok, true);
  assert.equal((parse(readFileSync(file, 'utf8')) as { stores: { alpha: { current_master: string } } }).stores.alpha.current_master, 'a2', 'the failover is in the file');
  assert.equal(holder.current.stores.get('alpha')!.currentMaster, 'a2', 'and in force: the reload that read a1 before it did not put a1 back');
  assert.deepEqual(changes, [{ store: 'alpha', from: 'a1', to: 'a2' }], 'one change reported, the failover; none back to a1');
  await source.close();
});

test("a map built for a new config's check is put in force only with that config in force: a refused config's backend settings never reach the map", async () => {
  const file = join(dir.path, 'checked.yaml');
  writeFileSync(file, map('a1'));
  const source = new FileStoreMapSource(file, false);
  let inForce = configWith(undefined);
  const holder = new StoreMapHolder(source, () => inForce, createLogger('silent'), { changes: () => undefined });
  assert.equal((await holder.reload('start')).ok, true);
  const defaultTimeout = holder.current.stores.get('alpha')!.backend.loginTimeoutMs;
  assert.notEqual(defaultTimeout, 4321);

  // A SIGHUP: the check of the new config reads the source and builds its map with it; the config
  // is then refused for another reason (a JWKS file that is no JWKS, say), and the reload puts the
  // source's map in force with the config that stays in force.
  const refused = configWith({ login_timeout_ms: 4321 });
  const refusedRead = await holder.read();
  assert.equal(refusedRead.build(refused).stores.get('alpha')!.backend.loginTimeoutMs, 4321);
  const afterRefusal = await holder.reload('signal', refusedRead);
  assert.equal(afterRefusal.ok, true);
  assert.equal(holder.current.stores.get('alpha')!.backend.loginTimeoutMs, defaultTimeout, 'the refused config built the map for its check only');

  // The same config taken: the map built for its check is the one put in force.
  const taken = configWith({ login_timeout_ms: 4321 });
  const takenRead = await holder.read();
  const built = takenRead.build(taken);
  inForce = taken;
  await holder.reload('signal', takenRead);
  assert.equal(holder.current.stores.get('alpha')!.backend.loginTimeoutMs, 4321);
  assert.equal(holder.current.stores.get('alpha'), built.stores.get('alpha'), 'the check built it, the reload took it');
  await source.close();
});
