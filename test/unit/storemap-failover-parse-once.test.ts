// A failover with a file store map reads and parses the file once: the holder loaded it to check
// the failover, the write parsed it again to edit it, the reload after the write read it a third
// time, and the watch's event for the write a fourth (and the watch's start a second time after
// the start-up load). At 500 stores that blocked the event loop for about 0.5 s per failover, and
// the parse grows faster than the file. The document written is put in force as written; the
// watch's event for it reads the file's bytes only, and a later edit is still read.
//
// A reload (SIGHUP) loaded the source twice too, to check the new config against the map and to
// put it in force (once since, see reload-storemap-once): an unchanged file is parsed once (at
// 5,000 stores the two parses blocked the event loop for 0.9 to 1.4 s), and not again at the next
// load, unless the map holds a secret file's content, which is read again.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { Composer } from 'yaml';
import { buildStoreMap, readStoreMapFile } from '../../src/config/load.js';
import { readBackend } from '../../src/config/schema.js';
import { IssueList } from '../../src/config/validate.js';
import { createLogger } from '../../src/log.js';
import { StoreMapHolder } from '../../src/routing/holder.js';
import type { MasterChange } from '../../src/routing/holder.js';
import { FileStoreMapSource } from '../../src/routing/sources.js';

const config = (): ReturnType<ConstructorParameters<typeof StoreMapHolder>[1]> => ({ backend: readBackend(undefined, 'backend', (p) => p, new IssueList()), backendProfiles: new Map() });

/** A store map of `stores` stores of 3 slots, with a comment the failover's edit must keep. */
function storeMap(stores: number): string {
  let text = '# kept by failovers\nstores:\n';
  for (let s = 0; s < stores; s++) {
    text += `  st${s}:\n    current_master: sl${s}x0 # the master\n    slots:\n`;
    for (let j = 0; j < 3; j++) text += `      sl${s}x${j}: { host: 127.0.0.1, imap_port: ${10143 + j} }\n`;
  }
  return text;
}

/** Counts YAML documents parsed (every parse of the library composes through Composer) while `body` runs. */
async function countingParses<T>(body: (parses: () => number) => Promise<T>): Promise<T> {
  const original = Composer.prototype.compose;
  let parses = 0;
  Composer.prototype.compose = function* (this: Composer, ...args: Parameters<typeof original>) {
    parses++;
    return yield* original.apply(this, args);
  } as typeof original;
  try {
    return await body(() => parses);
  } finally {
    Composer.prototype.compose = original;
  }
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

test('a failover parses the store-map file once, the watch of the file included; the map in force is the file as written, and a later edit is read', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mf-failover-parse-once-'));
  const file = join(dir, 'stores.yaml');
  writeFileSync(file, storeMap(20));
  const source = new FileStoreMapSource(file, true);
  const changes: MasterChange[] = [];
  const holder = new StoreMapHolder(source, config, createLogger('silent'), { changes: (c) => changes.push(...c) });
  let stopWatch = (): void => undefined;
  try {
    const counted = await countingParses(async (parses) => {
      assert.equal((await holder.reload('start')).ok, true);
      stopWatch = source.watch(() => void holder.reload('change'));
      const start = parses();
      const failovers: number[] = [];
      for (const [store, slot] of [['st7', 'sl7x1'], ['st8', 'sl8x2']] as const) {
        const before = parses();
        const result = await holder.failover(store, slot);
        assert.equal(result.ok, true, result.error);
        assert.deepEqual(result.changes, [{ store, from: `${store.replace('st', 'sl')}x0`, to: slot }]);
        // The watch's event for the write (debounced 100 ms) comes and goes.
        await sleep(600);
        failovers.push(parses() - before);
      }
      return { start, failovers };
    });
    assert.deepEqual(counted, { start: 1, failovers: [1, 1] }, 'parses of the file: at start-up (the load and the start of the watch), and per failover (its watch event included)');
    // In force: the file as written (preferred master added, comments kept), as a fresh read gives it.
    const text = readFileSync(file, 'utf8');
    assert.match(text, /^# kept by failovers\n/);
    assert.match(text, /  st7:\n    current_master: sl7x1 # the master\n    preferred_master: sl7x0\n/);
    const fresh = buildStoreMap(readStoreMapFile(file), file, 0, config());
    for (const [name, store] of fresh.stores) {
      const inForce = holder.current.stores.get(name);
      assert.equal(inForce?.currentMaster, store.currentMaster, name);
      assert.equal(inForce?.preferredMaster, store.preferredMaster, name);
    }
    assert.equal(holder.current.stores.get('st8')?.preferredMaster, 'sl8x0');
    assert.equal(changes.length, 2);

    // An edit by hand after the failovers is read (the file's bytes are no longer those written).
    writeFileSync(file, text.replace('current_master: sl8x2', 'current_master: sl8x1'));
    for (let i = 0; i < 50 && holder.current.stores.get('st8')?.currentMaster !== 'sl8x1'; i++) await sleep(100);
    assert.equal(holder.current.stores.get('st8')?.currentMaster, 'sl8x1', 'the hand edit was not read');
  } finally {
    stopWatch();
    await source.close();
    rmSync(dir, { recursive: true, force: true });
  }
});

test('loading an unchanged store-map file again parses it once; a map naming a secret file is parsed at each load, the secret read again', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mf-reload-parse-once-'));
  const file = join(dir, 'stores.yaml');
  const secretStore = '  sx:\n    current_master: a\n    backend: { login_mode: master-user, proxy_user: admin, proxy_password_file: proxy.secret }\n    slots:\n      a: { host: 127.0.0.1, imap_port: 10143 }\n';
  type Doc = { stores: Record<string, { backend?: { proxy_password?: string } }> };
  try {
    writeFileSync(file, storeMap(20));
    const source = new FileStoreMapSource(file, false);
    await countingParses(async (parses) => {
      // As a reload's check and then its reload.
      const first = (await source.load()) as Doc;
      const second = (await source.load()) as Doc;
      assert.equal(parses(), 1);
      assert.deepEqual(second, first);
      writeFileSync(file, storeMap(21));
      assert.equal(Object.keys(((await source.load()) as Doc).stores).length, 21);
      assert.equal(parses(), 2);
      writeFileSync(join(dir, 'proxy.secret'), 'first\n');
      writeFileSync(file, storeMap(2) + secretStore);
      assert.equal(((await source.load()) as Doc).stores['sx']?.backend?.proxy_password, 'first');
      writeFileSync(join(dir, 'proxy.secret'), 'second\n');
      assert.equal(((await source.load()) as Doc).stores['sx']?.backend?.proxy_password, 'second');
      assert.equal(parses(), 4);
    });
    await source.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
