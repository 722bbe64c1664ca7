// The store-map file source looks at its file's identity (stat: device, inode, size, times) every
// few seconds besides its watch, whose events can be lost (libuv drops an inotify queue overflow
// without a word) or end. A change the watch never heard of is read all the same. Such a change is
// made here by writing the file through a hard link in another folder: inotify reports a write to
// the folder of the name it was made through, and the watch is on the store-map file's folder.
import assert from 'node:assert/strict';
import { linkSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { stringify } from 'yaml';
import { FileStoreMapSource } from '../../src/routing/sources.js';
import { tmpDir } from '../integration/servers/index.js';
import type { TmpDir } from '../integration/servers/index.js';

let dir: TmpDir;

before(() => {
  dir = tmpDir('storemap-look');
});

after(async () => {
  await dir.remove();
});

function document(master: string): string {
  return stringify({ stores: { st1: { current_master: master, slots: { s1: { host: '127.0.0.1', imap_port: 1143 }, s2: { host: '127.0.0.1', imap_port: 2143 } } } } });
}

/** A store-map file in a folder of its own, with a hard link to it in another folder. */
function fileWithLink(name: string): { file: string; link: string } {
  mkdirSync(join(dir.path, name, 'etc'), { recursive: true });
  mkdirSync(join(dir.path, name, 'elsewhere'));
  const file = join(dir.path, name, 'etc', 'stores.yaml');
  writeFileSync(file, document('s1'));
  const link = join(dir.path, name, 'elsewhere', 'stores.yaml');
  linkSync(file, link);
  return { file, link };
}

/** Resolves true once `hit` has been called, false when `ms` pass first. */
function calledWithin(ms: number, start: (hit: () => void) => void): Promise<boolean> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(false), ms);
    start(() => {
      clearTimeout(timer);
      resolve(true);
    });
  });
}

test('premise: a write through a hard link in another folder raises no event in the watch (the look turned off)', async () => {
  const { file, link } = fileWithLink('premise');
  const source = new FileStoreMapSource(file, true, undefined, undefined, { checkIntervalMs: 0 });
  await source.load();
  let stop = (): void => undefined;
  try {
    const heard = await calledWithin(1_500, (hit) => {
      stop = source.watch(hit);
      setTimeout(() => writeFileSync(link, document('s2')), 100);
    });
    assert.equal(heard, false, 'the watch heard the write: this test shows nothing on this system');
  } finally {
    stop();
    await source.close();
  }
});

test('a change of the file that no watch event told of is found by the look, and read as a change', async () => {
  const { file, link } = fileWithLink('missed');
  const source = new FileStoreMapSource(file, true, undefined, undefined, { checkIntervalMs: 200 });
  await source.load();
  let stop = (): void => undefined;
  try {
    // Unchanged, the looks report nothing.
    const early = await calledWithin(700, (hit) => {
      stop = source.watch(hit);
    });
    assert.equal(early, false, 'a change reported for an unchanged file');
    stop();
    const heard = await calledWithin(5_000, (hit) => {
      stop = source.watch(hit);
      writeFileSync(link, document('s2'));
    });
    assert.ok(heard, 'the change was never reported');
    const loaded = (await source.load()) as { stores: { st1: { current_master: string } } };
    assert.equal(loaded.stores.st1.current_master, 's2');
  } finally {
    stop();
    await source.close();
  }
});

test('each look that finds the watched file unchanged is a good look for its health', async () => {
  const { file } = fileWithLink('health');
  const source = new FileStoreMapSource(file, true, undefined, undefined, { checkIntervalMs: 100 });
  await source.load();
  const reports: Array<Error | null> = [];
  const stop = source.watch(
    () => undefined,
    (error) => reports.push(error),
  );
  try {
    await new Promise((r) => setTimeout(r, 1_000));
    assert.ok(reports.length >= 5, `${reports.length} reports in 1 s`);
    assert.ok(reports.every((r) => r === null), String(reports.find((r) => r !== null)));
  } finally {
    stop();
    await source.close();
  }
});
