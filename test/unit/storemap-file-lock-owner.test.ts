// A store-map file's lock that names a pid running on this host is not always a live writer's.
// A process restarted with the pid of the one killed before it (a container's node at a fixed pid
// under tini, same host name) took its predecessor's lock for its own live writer: every change
// for 30 s waited 10 s and failed STOREMAP_LOCKED naming itself (the rv-diffc review's
// own-pid-lock repro). A lock naming this process whose id none of its writes holds is broken at
// once; so is one whose pid runs but started at another time than the writer that wrote it (the
// pid given to another process since).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { Logger } from '../../src/log.js';
import { FileStoreMapSource } from '../../src/routing/sources.js';
import { tmpDir } from '../integration/servers/index.js';
import type { TmpDir } from '../integration/servers/index.js';

const STORES = `stores:
  alpha: { current_master: a1, slots: { a1: { host: 127.0.0.1, imap_port: 10143 }, a2: { host: 127.0.0.1, imap_port: 10144 } } }
`;

let dir: TmpDir;
before(() => {
  dir = tmpDir('storemap-lock-owner');
});
after(async () => {
  await dir.remove();
});

/** A failover of alpha to `slot` with a lock left as `lock` says: how long it took, and the lock_broken warnings. */
async function failoverPast(name: string, lock: Record<string, unknown>, slot: string): Promise<{ ms: number; broken: Array<Record<string, unknown>> }> {
  const file = join(dir.path, `${name}.yaml`);
  writeFileSync(file, STORES);
  writeFileSync(join(dir.path, `.${name}.yaml.lock`), `${JSON.stringify(lock)}\n`);
  const warnings: Array<Record<string, unknown>> = [];
  const log = { warn: (fields: Record<string, unknown>) => void warnings.push(fields), info: () => undefined } as unknown as Logger;
  const source = new FileStoreMapSource(file, false, undefined, log, { lockWaitMs: 2_000 });
  const started = performance.now();
  await source.setCurrentMaster('alpha', slot);
  const ms = performance.now() - started;
  assert.match(readFileSync(file, 'utf8'), new RegExp(`current_master: ${slot}`));
  assert.equal(existsSync(join(dir.path, `.${name}.yaml.lock`)), false, 'the lock is gone once the failover is written');
  return { ms, broken: warnings.filter((w) => w['event'] === 'storemap.lock_broken') };
}

test("a lock naming this process's pid and host that none of its writes holds is a predecessor's: broken at once", async () => {
  const since = new Date(Date.now() - 2_000).toISOString();
  const { ms, broken } = await failoverPast('own', { pid: process.pid, host: hostname(), since, id: 'dead-incarnation' }, 'a2');
  assert.ok(ms < 1_000, `the predecessor's lock held the failover up for ${Math.round(ms)} ms`);
  assert.equal(broken.length, 1);
  assert.equal(broken[0]?.['pid'], process.pid);
  assert.match(String(broken[0]?.['reason']), /names this process .*which holds no such lock/);
});

test('a lock whose pid runs but started at another time than its writer (the pid given again) is broken at once; the start is written into the lock', { skip: !existsSync('/proc/self/stat') && 'no /proc' }, async () => {
  // A process that runs, with the pid the lock names, but not the writer that took it.
  const other = spawn(process.execPath, ['-e', 'setTimeout(() => undefined, 60_000)'], { stdio: 'ignore' });
  try {
    const since = new Date(Date.now() - 2_000).toISOString();
    const { ms, broken } = await failoverPast('reused', { pid: other.pid, host: hostname(), since, id: 'killed-writer', start: 'another-boot:12345' }, 'a2');
    assert.ok(ms < 1_000, `the lock of the pid given again held the failover up for ${Math.round(ms)} ms`);
    assert.equal(broken.length, 1);
    assert.match(String(broken[0]?.['reason']), new RegExp(`pid ${other.pid} is another process now`));

    // The lock this process writes bears its start, which a later one is compared with.
    const file = join(dir.path, 'reused.yaml');
    const lock = join(dir.path, '.reused.yaml.lock');
    let seen: string | undefined;
    const source = new FileStoreMapSource(file, false);
    await source.setCurrentMaster('alpha', 'a1', () => {
      seen = readFileSync(lock, 'utf8');
    });
    const held = JSON.parse(seen ?? '{}') as { pid?: number; start?: string };
    assert.equal(held.pid, process.pid);
    const stat = readFileSync('/proc/self/stat', 'utf8');
    assert.equal(held.start?.split(':')[1], stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]);
  } finally {
    other.kill('SIGKILL');
  }
});

test("a source closed right after its watch began (a stop at once after the start) waits for the removal of a killed writer's lock and temporary files", async () => {
  const file = join(dir.path, 'stop.yaml');
  const lock = join(dir.path, '.stop.yaml.lock');
  writeFileSync(file, STORES);
  // A writer killed mid-write; its pid no process has now.
  const killed = spawn(process.execPath, ['-e', ''], { stdio: 'ignore' });
  const pid = killed.pid!;
  await new Promise((resolve) => killed.once('exit', resolve));
  writeFileSync(lock, `${JSON.stringify({ pid, host: hostname(), since: new Date().toISOString(), id: 'killed' })}\n`);
  writeFileSync(join(dir.path, `.stop.yaml.${pid}.1.tmp`), STORES);
  const source = new FileStoreMapSource(file, true);
  await source.load();
  source.watch(() => undefined);
  await source.close();
  assert.equal(existsSync(lock), false, "the killed writer's lock was left after the stop");
  assert.equal(existsSync(join(dir.path, `.stop.yaml.${pid}.1.tmp`)), false);
});

test("a lock this process is taking is its own from the start: another taker in the process never breaks it as a predecessor's", async () => {
  // The lock's text was on disk before its id was known as this process's (the close between
  // them): a watch's start (its removal of stale temporary files, under the lock) and a failover
  // in the same process at once broke a live lock (the rv-diffd review's held-locks-window repro).
  // FileHandle.writeFile's answer is held back 20 ms to widen that window, as a busy thread pool does.
  const { open } = await import('node:fs/promises');
  const probe = await open('/dev/null', 'r');
  const proto = Object.getPrototypeOf(probe) as { writeFile: (...args: unknown[]) => Promise<unknown> };
  await probe.close();
  const realWrite = proto.writeFile;
  proto.writeFile = async function (this: unknown, ...args: unknown[]) {
    const written = await realWrite.apply(this, args);
    await new Promise((r) => setTimeout(r, 20));
    return written;
  };
  const file = join(dir.path, 'window.yaml');
  writeFileSync(file, STORES);
  const warnings: Array<Record<string, unknown>> = [];
  const log = { warn: (fields: Record<string, unknown>) => void warnings.push(fields), info: () => undefined, error: () => undefined, debug: () => undefined } as unknown as Logger;
  const source = new FileStoreMapSource(file, true, undefined, log, { lockWaitMs: 2_000 });
  try {
    await source.load();
    source.watch(() => undefined);
    await new Promise((r) => setTimeout(r, 3));
    await source.setCurrentMaster('alpha', 'a2');
    assert.match(readFileSync(file, 'utf8'), /current_master: a2/);
    assert.deepEqual(warnings.filter((w) => w['event'] === 'storemap.lock_broken'), []);
  } finally {
    proto.writeFile = realWrite;
    await source.close();
  }
});
