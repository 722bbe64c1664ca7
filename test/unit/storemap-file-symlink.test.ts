// A store-map file reached through a symbolic link (/etc/mailfront/stores.yaml ->
// /var/lib/mailfront/stores.yaml, as configuration management lays it out): edits of the file the
// link names are heard, in place or by rename, as is the link being pointed at another file; and
// a failover is written to that file, leaving the link a link. A link on the way replaced (a
// Kubernetes ConfigMap's ..data) is heard as well, update after update.
import assert from 'node:assert/strict';
import { lstatSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, readlinkSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { FileStoreMapSource } from '../../src/routing/sources.js';

const document = (master: string): string => `stores:\n  alpha:\n    current_master: ${master}\n    slots:\n      a1: { host: 127.0.0.1, imap_port: 10143 }\n      a2: { host: 127.0.0.1, imap_port: 10144 }\n`;
const masterIn = (loaded: unknown): unknown => (loaded as { stores: Record<string, { current_master: string }> }).stores['alpha']?.current_master;

/** A folder with lib/stores.yaml and etc/stores.yaml, a symbolic link to it. */
function linkedMap(): { dir: string; target: string; link: string } {
  const dir = mkdtempSync(join(tmpdir(), 'mf-storemap-link-'));
  mkdirSync(join(dir, 'lib'));
  mkdirSync(join(dir, 'etc'));
  const target = join(dir, 'lib', 'stores.yaml');
  writeFileSync(target, document('a1'));
  const link = join(dir, 'etc', 'stores.yaml');
  symlinkSync(target, link);
  return { dir, target, link };
}

/** Resolves once `onChange` is called; rejects after 5 s (no event at all, not a slow one). */
function nextChange(): { onChange: () => void; heard: (what: string) => Promise<void> } {
  let wake: (() => void) | undefined;
  let pending = 0;
  return {
    onChange: () => {
      pending++;
      wake?.();
    },
    heard: async (what) => {
      for (let i = 0; i < 50 && pending === 0; i++) await new Promise<void>((r) => { wake = r; setTimeout(r, 100); });
      assert.ok(pending > 0, `the watch reported ${what}`);
      pending = 0;
    },
  };
}

test('a symlinked store-map file: edits of the file it names are heard, in place and by rename, and after the link is pointed elsewhere', async () => {
  const { dir, target, link } = linkedMap();
  const source = new FileStoreMapSource(link, true);
  const { onChange, heard } = nextChange();
  try {
    assert.equal(masterIn(await source.load()), 'a1');
    const stop = source.watch(onChange);
    try {
      writeFileSync(target, document('a2'));
      await heard('an edit of the target in place');
      assert.equal(masterIn(await source.load()), 'a2');
      writeFileSync(join(dir, 'lib', '.stores.yaml.swp'), document('a1'));
      renameSync(join(dir, 'lib', '.stores.yaml.swp'), target);
      await heard('an edit of the target saved by rename');
      assert.equal(masterIn(await source.load()), 'a1');
      // The link pointed at another file (a new release of the configuration, say).
      mkdirSync(join(dir, 'lib2'));
      const other = join(dir, 'lib2', 'stores.yaml');
      writeFileSync(other, document('a2'));
      symlinkSync(other, join(dir, 'etc', '.stores.yaml.new'));
      renameSync(join(dir, 'etc', '.stores.yaml.new'), link);
      await heard('the link pointed at another file');
      assert.equal(masterIn(await source.load()), 'a2');
      writeFileSync(other, document('a1'));
      await heard('an edit of the file the link now names');
      assert.equal(masterIn(await source.load()), 'a1');
    } finally {
      stop();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a store-map file published as a Kubernetes ConfigMap volume (stores.yaml -> ..data/stores.yaml, ..data -> ..<timestamp>): each update is heard, not only the first', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mf-storemap-configmap-'));
  let published = 0;
  // As the kubelet's atomic writer does: the new content in a new timestamped folder, a
  // temporary link to it renamed over ..data, then the old folder removed. The link named by the
  // configuration is never touched; only ..data changes, and the folder the file was in goes.
  const publish = (master: string): void => {
    const folder = `..2024_01_01_00_00_0${++published}.000000001`;
    mkdirSync(join(dir, folder));
    writeFileSync(join(dir, folder, 'stores.yaml'), document(master));
    const old = published > 1 ? readlinkSync(join(dir, '..data')) : undefined;
    symlinkSync(folder, join(dir, '..data_tmp'));
    renameSync(join(dir, '..data_tmp'), join(dir, '..data'));
    if (old !== undefined) rmSync(join(dir, old), { recursive: true });
  };
  publish('a1');
  const file = join(dir, 'stores.yaml');
  symlinkSync('..data/stores.yaml', file);
  const source = new FileStoreMapSource(file, true);
  const { onChange, heard } = nextChange();
  const health: Array<Error | null> = [];
  try {
    assert.equal(masterIn(await source.load()), 'a1');
    const stop = source.watch(onChange, (error) => health.push(error));
    try {
      for (const [update, master] of ['a2', 'a1', 'a2'].entries()) {
        publish(master);
        await heard(`update ${update + 1} of the ConfigMap`);
        assert.equal(masterIn(await source.load()), master);
      }
      assert.deepEqual(health, [null], 'the watch was never reported lost');
    } finally {
      stop();
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a failover written through a symlinked store-map file is written to the file it names; the link stays a link', async () => {
  const { dir, target, link } = linkedMap();
  try {
    await new FileStoreMapSource(link, false).setCurrentMaster('alpha', 'a2');
    assert.ok(lstatSync(link).isSymbolicLink(), 'the link was replaced by a file');
    assert.equal(readlinkSync(link), target);
    assert.match(readFileSync(target, 'utf8'), /current_master: a2/);
    assert.deepEqual(readdirSync(join(dir, 'etc')), ['stores.yaml'], 'no temporary file is left next to the link');
    assert.deepEqual(readdirSync(join(dir, 'lib')).filter((name) => name !== '.stores.yaml.written'), ['stores.yaml'], 'no temporary file is left next to the file');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
