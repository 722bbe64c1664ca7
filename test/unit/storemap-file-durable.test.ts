// A change written to a store-map file is on disk before it is answered as written: the temporary
// file synced (fsync) before its rename, the folder synced after it. Without either, a power loss
// after the 200 could lose the rename, or leave an empty or truncated store map in place (the
// rv-crash review's strace: no fsync at all). The calls are watched through fs/promises' open and
// rename and the file handles' sync.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import fsp from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import { syncBuiltinESMExports } from 'node:module';
import { basename, join } from 'node:path';
import { after, before, test } from 'node:test';
import { FileStoreMapSource } from '../../src/routing/sources.js';
import { tmpDir } from '../integration/servers/index.js';
import type { TmpDir } from '../integration/servers/index.js';

const STORES = 'stores:\n  alpha:\n    current_master: a1\n    preferred_master: a1\n    slots:\n      a1: { host: 127.0.0.1, imap_port: 10143 }\n      a2: { host: 127.0.0.1, imap_port: 10144 }\n';

let dir: TmpDir;
before(() => {
  dir = tmpDir('storemap-durable');
});
after(async () => {
  await dir.remove();
});

/** Runs `body`, and the syncs and renames made meanwhile, in order, with the names of what they touched ('folder' for the store map's). */
async function watched(folder: string, body: () => Promise<unknown>): Promise<string[]> {
  const events: string[] = [];
  const name = (path: string): string => (path === folder ? 'folder' : basename(path).replace(/\.\d+\.\d+\.tmp$/, '.tmp'));
  const { open, rename } = fsp;
  const paths = new WeakMap<FileHandle, string>();
  const probe = await open(folder, 'r');
  const prototype = Object.getPrototypeOf(probe) as { sync: (this: FileHandle) => Promise<void> };
  await probe.close();
  const { sync } = prototype;
  prototype.sync = function (this: FileHandle) {
    events.push(`sync ${paths.get(this) ?? '?'}`);
    return sync.call(this);
  };
  fsp.open = (async (...args: Parameters<typeof open>) => {
    const handle = await open(...args);
    paths.set(handle, name(String(args[0])));
    return handle;
  }) as typeof open;
  fsp.rename = (async (from: string, to: string) => {
    // The record of the change (`.<name>.written`) is not the store map: not synced.
    if (!String(to).endsWith('.written')) events.push(`rename ${name(String(from))} ${name(String(to))}`);
    return rename(from, to);
  }) as typeof rename;
  syncBuiltinESMExports();
  try {
    await body();
    events.push('answered');
  } finally {
    prototype.sync = sync;
    Object.assign(fsp, { open, rename });
    syncBuiltinESMExports();
  }
  return events;
}

test('a failover and a maintenance switch are synced to disk, file then folder, before they resolve', async () => {
  const file = join(dir.path, 'stores.yaml');
  writeFileSync(file, STORES);
  const source = new FileStoreMapSource(file, false);
  for (const change of [() => source.setCurrentMaster('alpha', 'a2'), () => source.setMaintenance('alpha', 'Upgrade, please wait')]) {
    assert.deepEqual(await watched(dir.path, change), ['sync .stores.yaml.tmp', 'rename .stores.yaml.tmp stores.yaml', 'sync folder', 'answered']);
  }
});
