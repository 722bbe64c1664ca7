// A failover or maintenance switch that the store-map file's file system refuses is answered by
// the admin API with a code of its own (STOREMAP_WRITE_FAILED) naming the file, the errno and what
// it means, and that nothing changed: 503 for a passing cause (ENOSPC, EDQUOT, EIO: try again once
// fixed), 409 for the setup's (EROFS, EACCES, EPERM). They were 500 INTERNAL, ENOSPC's message
// naming no file. The errors are injected (a full or read-only file system needs a mount, and the
// suite runs as root, whom no mode refuses), except EPERM: an immutable folder refuses even root.
// A store map that may not be read is refused as one that "cannot be read", not as "not valid".
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import fsp from 'node:fs/promises';
import { createServer } from 'node:http';
import { syncBuiltinESMExports } from 'node:module';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { readBackend } from '../../src/config/schema.js';
import { IssueList } from '../../src/config/validate.js';
import { createLogger } from '../../src/log.js';
import { StoreMapHolder } from '../../src/routing/holder.js';
import { FileStoreMapSource } from '../../src/routing/sources.js';
import { createAdminHandler } from '../../src/server/admin.js';
import type { AdminContext } from '../../src/server/admin.js';
import { tmpDir } from '../integration/servers/index.js';
import type { TmpDir } from '../integration/servers/index.js';

const TOKEN = 'admin-token-for-the-file-write-errors-test';
const STORES = 'stores:\n  alpha:\n    current_master: a1\n    preferred_master: a1\n    slots:\n      a1: { host: 127.0.0.1, imap_port: 10143 }\n      a2: { host: 127.0.0.1, imap_port: 10144 }\n';
const config = (): ReturnType<ConstructorParameters<typeof StoreMapHolder>[1]> => ({ backend: readBackend(undefined, 'backend', (p) => p, new IssueList()), backendProfiles: new Map() });

let dir: TmpDir;
before(() => {
  dir = tmpDir('storemap-write-errors');
});
after(async () => {
  await dir.remove();
});

/** An errno error as node:fs gives it. */
function errno(code: string, syscall: string, path: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`${code}: injected, ${syscall} '${path}'`), { code, errno: -1, syscall, path });
}

/**
 * Runs `body` with the file system refusing, with `code`, the write's first step that `step`
 * names: 'create' (the first file a change makes in the folder: its lock, or its temporary file),
 * 'write' (the temporary file's content), 'sync' (its flush to disk), 'read' (the store map's read
 * before the change). fs/promises' exports are swapped and synced into the ESM bindings.
 */
async function refusing(step: 'create' | 'write' | 'sync' | 'read', code: string, body: () => Promise<void>): Promise<void> {
  const { open, writeFile, readFile } = fsp;
  fsp.open = (async (...args: Parameters<typeof open>) => {
    const path = String(args[0]);
    if (step === 'create' && (path.endsWith('.lock') || path.endsWith('.tmp'))) throw errno(code, 'open', path);
    const handle = await open(...args);
    if (path.endsWith('.tmp') && step === 'write') handle.writeFile = () => Promise.reject(errno(code, 'write', path));
    if (path.endsWith('.tmp') && step === 'sync') handle.sync = () => Promise.reject(errno(code, 'fsync', path));
    return handle;
  }) as typeof open;
  // Also where a write without a file handle of its own would write the temporary file.
  fsp.writeFile = (async (...args: Parameters<typeof writeFile>) => {
    const path = String(args[0]);
    if (path.endsWith('.tmp') && (step === 'create' || step === 'write')) throw errno(code, step === 'create' ? 'open' : 'write', path);
    return writeFile(...args);
  }) as typeof writeFile;
  fsp.readFile = (async (...args: Parameters<typeof readFile>) => {
    if (step === 'read' && String(args[0]).endsWith('stores.yaml')) throw errno(code, 'open', String(args[0]));
    return readFile(...args);
  }) as typeof readFile;
  syncBuiltinESMExports();
  try {
    await body();
  } finally {
    Object.assign(fsp, { open, writeFile, readFile });
    syncBuiltinESMExports();
  }
}

interface Answer {
  readonly status: number;
  readonly body: { readonly code?: string; readonly error?: string };
}

test('a change the file system refuses: 503 when it passes, 409 when the setup must change, naming the file and the errno; nothing written', async () => {
  const folder = join(dir.path, 'maps');
  await fsp.mkdir(folder);
  const file = join(folder, 'stores.yaml');
  writeFileSync(file, STORES);
  const lines: Array<Record<string, unknown>> = [];
  const log = createLogger('info', { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
  const holder = new StoreMapHolder(new FileStoreMapSource(file, false), config, log, { changes: () => undefined });
  assert.equal((await holder.reload('start')).ok, true);
  const handler = createAdminHandler({ token: () => TOKEN, log, holder } as unknown as AdminContext);
  const server = createServer((req, res) => void handler(req, res));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/api/stores/alpha`;
  const ask = async (action: 'failover' | 'maintenance', body: unknown): Promise<Answer> => {
    const response = await fetch(`${base}/${action}`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
    return { status: response.status, body: (await response.json()) as Answer['body'] };
  };
  try {
    const cases: Array<[step: 'create' | 'write' | 'sync', code: string, status: number, meaning: RegExp]> = [
      ['write', 'ENOSPC', 503, /no space left/],
      ['write', 'EDQUOT', 503, /disk quota/],
      ['sync', 'EIO', 503, /I\/O error/],
      ['create', 'EROFS', 409, /read-only/],
      ['create', 'EACCES', 409, /may not write to its folder.*StateDirectory=mailfront/],
    ];
    for (const [step, code, status, meaning] of cases) {
      for (const [action, body] of [
        ['failover', { slot: 'a2' }],
        ['maintenance', { on: true }],
      ] as const) {
        let got: Answer | undefined;
        await refusing(step, code, async () => {
          got = await ask(action, body);
        });
        const label = `${action} refused with ${code} at ${step}`;
        assert.equal(got?.status, status, `${label}: ${JSON.stringify(got)}`);
        assert.equal(got?.body.code, 'STOREMAP_WRITE_FAILED', label);
        assert.ok(got?.body.error?.includes(`${file} could not be written (${code}: `), `${label}: ${got?.body.error}`);
        assert.match(got?.body.error ?? '', meaning, label);
        assert.match(got?.body.error ?? '', /nothing was changed/, label);
        assert.equal(readFileSync(file, 'utf8'), STORES, `${label}: nothing was written`);
        assert.deepEqual(readdirSync(folder), ['stores.yaml'], `${label}: no lock or temporary file is left`);
      }
    }
    const failed = lines.filter((l) => l['event'] === 'storemap.failover_failed' || l['event'] === 'storemap.maintenance_failed');
    assert.equal(failed.length, cases.length * 2, 'each refused write is logged where the operator looks');
    assert.ok(failed.every((l) => l['code'] === 'STOREMAP_WRITE_FAILED'));

    // A real refusal: an immutable folder (chattr +i) refuses even root any new file in it.
    execFileSync('chattr', ['+i', folder]);
    try {
      const got = await ask('failover', { slot: 'a2' });
      assert.equal(got.status, 409, JSON.stringify(got));
      assert.equal(got.body.code, 'STOREMAP_WRITE_FAILED');
      assert.ok(got.body.error?.includes(`${file} could not be written (EPERM: not permitted: the file or its folder is immutable`), got.body.error);
    } finally {
      execFileSync('chattr', ['-i', folder]);
    }

    // Synced, renamed, but the folder's sync fails: in the file, not known to be on disk (503).
    const { open } = fsp;
    fsp.open = (async (...args: Parameters<typeof open>) => {
      const handle = await open(...args);
      if (String(args[0]) === folder) handle.sync = () => Promise.reject(errno('EIO', 'fsync', folder));
      return handle;
    }) as typeof open;
    syncBuiltinESMExports();
    let unconfirmed: Answer;
    try {
      unconfirmed = await ask('failover', { slot: 'a2' });
    } finally {
      fsp.open = open;
      syncBuiltinESMExports();
    }
    assert.equal(unconfirmed.status, 503, JSON.stringify(unconfirmed));
    assert.equal(unconfirmed.body.code, 'STOREMAP_WRITE_UNCONFIRMED');
    assert.match(unconfirmed.body.error ?? '', /holds it, but its folder could not be synced to disk \(EIO: .*a power loss may undo it/);
    assert.match(readFileSync(file, 'utf8'), /current_master: a2/);
    // Beside it, the record of the changes written (.stores.yaml.written): no temporary file left.
    assert.deepEqual(readdirSync(folder).sort(), ['.stores.yaml.written', 'stores.yaml']);
  } finally {
    server.close();
  }
});

test('a store map that may not be read refuses a failover as one that cannot be read, not as one that is not valid', async () => {
  const file = join(dir.path, 'stores.yaml');
  writeFileSync(file, STORES);
  const holder = new StoreMapHolder(new FileStoreMapSource(file, false), config, createLogger('silent'), { changes: () => undefined });
  assert.equal((await holder.reload('start')).ok, true);
  await refusing('read', 'EACCES', () =>
    assert.rejects(holder.failover('alpha', 'a2'), (error: unknown) => {
      assert.match(String((error as Error).message), /^failover of store "alpha" to "a2" refused, nothing was written: the store map in file .*stores\.yaml cannot be read: .*EACCES/s);
      return true;
    }),
  );
  assert.equal(readFileSync(file, 'utf8'), STORES);
});
