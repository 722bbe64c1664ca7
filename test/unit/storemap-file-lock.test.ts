// Changes written to one store-map file by several processes (instances sharing the file) take
// turns through the file's lock, `.<name>.lock` beside it: each reads what the one before wrote.
// Without it, two failovers at once lost one (the rv-crash review: 7 of 40 rounds with two
// instances), both answered as written. A lock whose writer no longer runs on this host, or older
// than 30 s, is broken; a live writer's is waited for, and then the change fails, saying so.
import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync, readdirSync, utimesSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { after, before, test } from 'node:test';
import { parse } from 'yaml';
import { MailfrontError } from '../../src/errors.js';
import type { Logger } from '../../src/log.js';
import { FileStoreMapSource } from '../../src/routing/sources.js';
import { tmpDir } from '../integration/servers/index.js';
import type { TmpDir } from '../integration/servers/index.js';

const SOURCES_MODULE = pathToFileURL(join(dirname(fileURLToPath(import.meta.url)), '../../src/routing/sources.js')).href;
const STORES = `stores:
  alpha:
    current_master: a1
    preferred_master: a1
    slots:
      a1: { host: 127.0.0.1, imap_port: 10143 }
      a2: { host: 127.0.0.1, imap_port: 10144 }
  beta:
    current_master: b1
    preferred_master: b1
    slots:
      b1: { host: 127.0.0.1, imap_port: 10145 }
      b2: { host: 127.0.0.1, imap_port: 10146 }
`;

let dir: TmpDir;
before(() => {
  dir = tmpDir('storemap-lock');
});
after(async () => {
  await dir.remove();
});

const masters = (file: string): unknown => {
  const { stores } = parse(readFileSync(file, 'utf8')) as { stores: Record<string, { current_master: string }> };
  return [stores['alpha']?.current_master, stores['beta']?.current_master];
};

/** A pid no process has: one that has just ended. */
function deadPid(): number {
  const child = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
  return Number(child.stdout);
}

test('two processes failing over two stores of one file at once keep both failovers', async () => {
  const file = join(dir.path, 'two.yaml');
  writeFileSync(file, STORES);
  // The other process fails alpha over and stops just before its rename (it has read the file and
  // written its version) until told to go on: the moment another writer's change was lost.
  const script = `
    import fsp from 'node:fs/promises';
    import { syncBuiltinESMExports } from 'node:module';
    import { createInterface } from 'node:readline';
    const lines = createInterface({ input: process.stdin });
    const go = new Promise((resolve) => lines.once('line', resolve));
    const rename = fsp.rename;
    fsp.rename = async (from, to) => {
      if (String(from).endsWith('.tmp')) {
        process.stdout.write('paused\\n');
        await go;
      }
      return rename(from, to);
    };
    syncBuiltinESMExports();
    const { FileStoreMapSource } = await import(${JSON.stringify(SOURCES_MODULE)});
    await new FileStoreMapSource(${JSON.stringify(file)}, false).setCurrentMaster('alpha', 'a2');
    process.stdout.write('done\\n');
    lines.close();
  `;
  const other = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['pipe', 'pipe', 'inherit'] });
  const exited = new Promise<number | null>((resolve) => other.once('exit', resolve));
  try {
    const said = createInterface({ input: other.stdout! })[Symbol.asyncIterator]();
    assert.equal((await said.next()).value, 'paused');
    // This process fails beta over meanwhile; it must wait for the other's write, and read it.
    let settled = false;
    const ours = new FileStoreMapSource(file, false).setCurrentMaster('beta', 'b2').finally(() => {
      settled = true;
    });
    await new Promise((resolve) => setTimeout(resolve, 500));
    const waited = !settled;
    other.stdin!.write('go\n');
    assert.equal((await said.next()).value, 'done');
    await ours;
    assert.equal(await exited, 0);
    assert.deepEqual(masters(file), ['a2', 'b2'], 'both failovers are in the file');
    assert.ok(waited, "the failover of beta waited for the other process's write");
    assert.deepEqual(readdirSync(dir.path).filter((name) => name.startsWith('.two.yaml') && name !== '.two.yaml.written'), [], 'no lock or temporary file is left');
  } finally {
    other.kill('SIGKILL');
  }
});

test("a lock whose writer no longer runs is broken at once; a live writer's is waited for, then the change fails naming it; one older than 30 s is broken", async () => {
  const file = join(dir.path, 'held.yaml');
  const lock = join(dir.path, '.held.yaml.lock');
  writeFileSync(file, STORES);
  const warnings: Array<Record<string, unknown>> = [];
  const log = { warn: (fields: Record<string, unknown>) => void warnings.push(fields), info: () => undefined } as unknown as Logger;
  const source = new FileStoreMapSource(file, false, undefined, log, { lockWaitMs: 400 });

  // Left by a writer killed on this host: broken, and the failover written without waiting.
  const dead = deadPid();
  writeFileSync(lock, JSON.stringify({ pid: dead, host: hostname(), since: new Date().toISOString(), id: 'x' }));
  const started = performance.now();
  await source.setCurrentMaster('alpha', 'a2');
  assert.ok(performance.now() - started < 1_000, `the dead writer's lock held the failover up for ${Math.round(performance.now() - started)} ms`);
  assert.deepEqual(masters(file), ['a2', 'b1']);
  assert.equal(existsSync(lock), false, 'the lock is gone once the failover is written');
  assert.deepEqual(
    warnings.filter((w) => w['event'] === 'storemap.lock_broken').map((w) => [w['pid'], w['lock']]),
    [[dead, lock]],
  );

  // A live writer's (the test runner stands for one: this process's own pid is a lock none of its writes holds), on this host and on another: waited for, then refused.
  for (const holder of [{ pid: process.ppid, host: hostname() }, { pid: 1, host: 'another-host.invalid' }]) {
    const text = JSON.stringify({ ...holder, since: '2030-01-01T00:00:00.000Z', id: 'live' });
    writeFileSync(lock, text);
    const before = readFileSync(file, 'utf8');
    await assert.rejects(source.setCurrentMaster('beta', 'b2'), (error: unknown) => {
      assert.ok(error instanceof MailfrontError);
      assert.equal(error.code, 'STOREMAP_LOCKED');
      assert.equal(error.kind, 'in-use');
      assert.ok(error.message.includes(`pid ${holder.pid} on ${holder.host}`), error.message);
      assert.ok(error.message.includes(lock), error.message);
      assert.match(error.message, /nothing was changed, try again/);
      return true;
    });
    assert.equal(readFileSync(file, 'utf8'), before, 'nothing was written');
    assert.equal(readFileSync(lock, 'utf8'), text, "the other writer's lock is left alone");
  }

  // The same lock 40 s old: its writer hangs, or runs on a host that cannot be asked.
  const old = (Date.now() - 40_000) / 1000;
  utimesSync(lock, old, old);
  await source.setCurrentMaster('beta', 'b2');
  assert.deepEqual(masters(file), ['a2', 'b2']);
  assert.equal(existsSync(lock), false);
  assert.deepEqual(readdirSync(dir.path).filter((name) => name.startsWith('.held.yaml') && name !== '.held.yaml.written'), []);
});

test("a writer whose lock was broken and taken by another writer while it wrote renames nothing, and leaves the other's lock in place", async () => {
  const file = join(dir.path, 'taken.yaml');
  const lock = join(dir.path, '.taken.yaml.lock');
  writeFileSync(file, STORES);
  const source = new FileStoreMapSource(file, false, undefined, undefined, { lockWaitMs: 400 });
  // This writer held its lock past 30 s (a hung disk, a stopped process): another writer (the test
  // runner stands for one, live on this host) broke it and holds the lock now, its turn under way.
  const other = JSON.stringify({ pid: process.ppid, host: hostname(), since: new Date().toISOString(), id: 'other' });
  let checks = 0;
  const takenMeanwhile = (): void => {
    checks += 1;
    if (checks === 1) writeFileSync(lock, other);
  };
  await assert.rejects(source.setCurrentMaster('alpha', 'a2', takenMeanwhile), (error: unknown) => {
    assert.ok(error instanceof MailfrontError);
    // Not written over the other writer's turn; made again, it waits for the other's lock.
    assert.equal(error.code, 'STOREMAP_LOCKED');
    assert.ok(error.message.includes(`pid ${process.ppid} on ${hostname()}`), error.message);
    return true;
  });
  assert.equal(checks, 1, 'the change was not made again past the lock');
  assert.deepEqual(masters(file), ['a1', 'b1'], 'nothing was renamed into place');
  assert.equal(readFileSync(lock, 'utf8'), other, "the other writer's lock is left alone");
  assert.deepEqual(readdirSync(dir.path).filter((name) => name.startsWith('.taken.yaml') && name !== '.taken.yaml.lock'), [], 'no temporary file, no record of a change that was not made');
});
