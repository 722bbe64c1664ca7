// A store-map file that cannot be read for a passing reason is read again on a timer until it can
// be, also when it is not watched (store_map.watch: false): here with a real EMFILE, this test
// process's own open-files soft limit lowered to 3 (below every descriptor it holds) by a helper
// process, which raises it back when told (SIGUSR1, which needs no descriptor to send).
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { closeSync, openSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { stringify } from 'yaml';
import { FileStoreMapSource } from '../../src/routing/sources.js';
import { tmpDir } from '../integration/servers/index.js';
import type { TmpDir } from '../integration/servers/index.js';

let dir: TmpDir;
let helper: ChildProcess | undefined;

before(() => {
  dir = tmpDir('storemap-retry');
});

after(async () => {
  helper?.kill('SIGUSR1');
  await dir.remove();
});

function document(master: string): string {
  return stringify({ stores: { st1: { current_master: master, slots: { s1: { host: '127.0.0.1', imap_port: 1143 }, s2: { host: '127.0.0.1', imap_port: 2143 } } } } });
}

/** True while this process can open no file. */
function outOfDescriptors(): boolean {
  try {
    closeSync(openSync('/dev/null', 'r'));
    return false;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EMFILE') return true;
    throw error;
  }
}

/**
 * Lowers this process's open-files soft limit to 3 until the returned function is called (within
 * 30 s, after which the helper raises it back by itself).
 */
async function withoutDescriptors(): Promise<() => Promise<void>> {
  const soft = execFileSync('prlimit', ['--pid', String(process.pid), '--nofile', '--output=SOFT', '--noheadings'], { encoding: 'utf8' }).trim();
  const restore = `prlimit --pid ${process.pid} --nofile=${soft}:`;
  const script = `trap '${restore}; exit 0' USR1; prlimit --pid ${process.pid} --nofile=3: || exit 1; i=0; while [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done; ${restore}`;
  const child = spawn('sh', ['-c', script], { stdio: 'ignore' });
  helper = child;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const deadline = Date.now() + 10_000;
  while (!outOfDescriptors()) {
    assert.ok(Date.now() < deadline, 'the soft limit was not lowered');
    await new Promise((r) => setTimeout(r, 20));
  }
  return async () => {
    child.kill('SIGUSR1');
    await exited;
    helper = undefined;
    assert.equal(outOfDescriptors(), false);
  };
}

test('an unwatched file read at the limit: the source is down, read again on a timer without a word, and up once it can be read; its listener is told of a change', async () => {
  const file = join(dir.path, 'stores.yaml');
  writeFileSync(file, document('s1'));
  const source = new FileStoreMapSource(file, false, undefined, undefined, { retryFirstMs: 100, retryMaxMs: 400 });
  await source.load();
  const health: Array<Error | null> = [];
  let changes = 0;
  const stop = source.watch(
    () => changes++,
    (error) => health.push(error),
  );
  try {
    assert.deepEqual(health, [null]);
    writeFileSync(file, document('s2'));
    const restore = await withoutDescriptors();
    let failure: unknown;
    try {
      failure = await source.load().then(
        () => undefined,
        (error: unknown) => error,
      );
      // Several retries, all failing.
      await new Promise((r) => setTimeout(r, 800));
    } finally {
      await restore();
    }
    assert.match(String(failure), /expected a readable file, found EMFILE/);
    assert.equal(health.length, 2, `health reports: ${health.map(String).join(' | ')}`);
    assert.match(String(health[1]), /EMFILE \(too many open files: mailfront's own limit.*read again after 0.1 s/);
    assert.equal(changes, 0, 'a change told while the file could not be read');
    const deadline = Date.now() + 5_000;
    while (changes === 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    assert.equal(changes, 1, 'the file was never read again');
    const loaded = (await source.load()) as { stores: { st1: { current_master: string } } };
    assert.equal(loaded.stores.st1.current_master, 's2');
    assert.deepEqual(health.slice(2), [null], 'the read that succeeded did not end the outage');
  } finally {
    stop();
    await source.close();
  }
});
