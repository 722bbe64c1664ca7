// A process killed while it writes a change to a store-map file leaves its temporary file
// (`.<name>.<pid>.<n>.tmp`) and its lock behind. The temporary files stayed for ever (the rv-crash
// review: 15 of 15 kills); now the watch's start (serve's start) and each change written remove
// those whose writer no longer runs, or older than a minute, never a live writer's; the dead
// writer's lock holds nothing up. Real kills, of a process stopped just before its rename.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, readdirSync, utimesSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { after, before, test } from 'node:test';
import type { Logger } from '../../src/log.js';
import { FileStoreMapSource } from '../../src/routing/sources.js';
import { tmpDir } from '../integration/servers/index.js';
import type { TmpDir } from '../integration/servers/index.js';

const SOURCES_MODULE = pathToFileURL(join(dirname(fileURLToPath(import.meta.url)), '../../src/routing/sources.js')).href;
const STORES = 'stores:\n  alpha:\n    current_master: a1\n    preferred_master: a1\n    slots:\n      a1: { host: 127.0.0.1, imap_port: 10143 }\n      a2: { host: 127.0.0.1, imap_port: 10144 }\n';

let dir: TmpDir;
before(() => {
  dir = tmpDir('storemap-temps');
});
after(async () => {
  await dir.remove();
});

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** The dot files of the folder (temporary files, locks), sorted. */
// The records of the changes written (`.<name>.written`) stay: no temporary file.
const leftovers = (folder: string): string[] => readdirSync(folder).filter((name) => name.startsWith('.') && !name.endsWith('.written')).sort();

/** Fails alpha over in another process, SIGKILLed once its temporary file is written (before its rename). */
async function killedMidWrite(file: string): Promise<void> {
  const script = `
    import fsp from 'node:fs/promises';
    import { syncBuiltinESMExports } from 'node:module';
    const rename = fsp.rename;
    fsp.rename = async (from, to) => {
      if (!from.endsWith('.tmp')) return rename(from, to);
      process.stdout.write('written ' + from + '\\n');
      await new Promise(() => undefined);
    };
    syncBuiltinESMExports();
    const { FileStoreMapSource } = await import(${JSON.stringify(SOURCES_MODULE)});
    await new FileStoreMapSource(${JSON.stringify(file)}, false).setCurrentMaster('alpha', 'a2');
  `;
  const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'] });
  const exited = new Promise((resolve) => child.once('exit', resolve));
  const said = await createInterface({ input: child.stdout! })[Symbol.asyncIterator]().next();
  assert.match(String(said.value), /^written .*\.tmp$/);
  child.kill('SIGKILL');
  await exited;
}

/** A process that runs until killed (a live writer stands for one): its pid. */
function liveProcess(): { readonly pid: number; readonly stop: () => void } {
  const child = spawn(process.execPath, ['-e', 'setInterval(() => undefined, 1 << 30)'], { stdio: 'ignore' });
  return { pid: child.pid!, stop: () => child.kill('SIGKILL') };
}

test("the watch's start removes the temporary files of writers killed, or older than a minute, never a live writer's", async () => {
  const folder = join(dir.path, 'watched');
  mkdirSync(folder);
  const file = join(folder, 'stores.yaml');
  writeFileSync(file, STORES);
  await killedMidWrite(file);
  // Its temporary file, and its lock.
  const killed = leftovers(folder).filter((name) => name.endsWith('.tmp'));
  assert.equal(killed.length, 1, `the killed write left its temporary file: ${leftovers(folder).join(' ')}`);
  const live = liveProcess();
  try {
    const fresh = `.stores.yaml.${live.pid}.1.tmp`;
    const stale = `.stores.yaml.${live.pid}.2.tmp`;
    writeFileSync(join(folder, fresh), 'being written');
    writeFileSync(join(folder, stale), 'left long ago');
    const old = (Date.now() - 120_000) / 1000;
    utimesSync(join(folder, stale), old, old);
    const warnings: Array<Record<string, unknown>> = [];
    const log = { warn: (fields: Record<string, unknown>) => void warnings.push(fields), info: () => undefined } as unknown as Logger;
    const source = new FileStoreMapSource(file, true, undefined, log);
    await source.load();
    const stop = source.watch(() => undefined);
    try {
      for (let i = 0; i < 50 && leftovers(folder).length > 1; i++) await sleep(50);
      assert.deepEqual(leftovers(folder), [fresh], "only the live writer's temporary file is left");
      const removed = warnings.find((w) => w['event'] === 'storemap.temp_files_removed');
      assert.deepEqual([...((removed?.['files'] as string[] | undefined) ?? [])].sort(), [...killed, stale].sort());
      assert.equal(readFileSync(file, 'utf8'), STORES, 'the store map is as it was');
    } finally {
      stop();
      await source.close();
    }
  } finally {
    live.stop();
  }
});

test("a change written after a writer was killed removes its temporary file, and the dead writer's lock holds it up no longer than it takes to break", async () => {
  const folder = join(dir.path, 'unwatched');
  mkdirSync(folder);
  const file = join(folder, 'stores.yaml');
  writeFileSync(file, STORES);
  await killedMidWrite(file);
  assert.equal(leftovers(folder).filter((name) => name.endsWith('.tmp')).length, 1, leftovers(folder).join(' '));
  const started = performance.now();
  await new FileStoreMapSource(file, false).setMaintenance('alpha', true);
  assert.ok(performance.now() - started < 2_000, `held up ${Math.round(performance.now() - started)} ms`);
  assert.match(readFileSync(file, 'utf8'), /maintenance: true/);
  assert.doesNotMatch(readFileSync(file, 'utf8'), /current_master: a2/, "the killed write's failover was never made");
  assert.deepEqual(leftovers(folder), []);
});
