// A failover written to a store-map file whose group mailfront may not give the new file (a group
// it is no member of, or chown refused outright, as the shipped unit's system call filter did): the
// file is written, and a warning says the group was not kept, once per failover. Without it the
// file changed group silently, and the people its mode lets read it with it.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chownSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { test } from 'node:test';
import type { Logger } from '../../src/log.js';
import { FileStoreMapSource } from '../../src/routing/sources.js';

const SOURCES_MODULE = pathToFileURL(join(dirname(fileURLToPath(import.meta.url)), '../../src/routing/sources.js')).href;
const STORES = 'stores:\n  alpha:\n    current_master: a1\n    slots:\n      a1: { host: 127.0.0.1, imap_port: 10143 }\n      a2: { host: 127.0.0.1, imap_port: 10144 }\n';
/** A group root is no member of (nogroup on Debian). */
const FOREIGN_GID = 65534;

/** Fails the store over in a child process running as root without CAP_CHOWN; what it logged at warn, one object per call. */
function failoverWithoutChown(file: string): Array<Record<string, unknown>> {
  const script = `
    import { FileStoreMapSource } from ${JSON.stringify(SOURCES_MODULE)};
    const log = { warn: (fields, message) => process.stdout.write(JSON.stringify({ ...fields, msg: message }) + '\\n') };
    await new FileStoreMapSource(${JSON.stringify(file)}, false, undefined, log).setCurrentMaster('alpha', 'a2');
  `;
  // setpriv (util-linux): the capability to give a file away is dropped for the child and all it runs.
  const child = spawnSync('setpriv', ['--inh-caps=-chown', '--bounding-set=-chown', process.execPath, '--input-type=module', '-e', script], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(child.status, 0, child.stderr);
  return child.stdout.split('\n').filter((line) => line !== '').map((line) => JSON.parse(line) as Record<string, unknown>);
}

test('a failover that cannot keep the store-map file\'s group writes the file and warns once, naming the file and the group', { skip: (process.getuid?.() !== 0 || process.getgroups?.().includes(FOREIGN_GID)) && 'needs root, outside group 65534, to give the file a group the child cannot' }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'mf-failover-group-'));
  const file = join(dir, 'stores.yaml');
  try {
    writeFileSync(file, STORES, { mode: 0o640 });
    chownSync(file, 0, FOREIGN_GID);
    const warnings = failoverWithoutChown(file);
    assert.match(readFileSync(file, 'utf8'), /current_master: a2/, 'the failover is written all the same');
    assert.notEqual(statSync(file).gid, FOREIGN_GID, 'the group was not kept (else nothing is checked here)');
    assert.equal(warnings.length, 1, JSON.stringify(warnings));
    const [warning] = warnings;
    assert.equal(warning?.['event'], 'storemap.failover_group_not_kept');
    assert.equal(warning?.['file'], file);
    assert.equal(warning?.['gid'], FOREIGN_GID);
    assert.equal(warning?.['group'], statSync(file).gid);
    assert.match(String(warning?.['err']), /EPERM|not permitted/);
    assert.match(String(warning?.['msg']), new RegExp(`without its group ${FOREIGN_GID}`));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a failover that keeps the store-map file\'s group says nothing about it', { skip: process.getuid?.() !== 0 && 'needs root to give the file a group of another' }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mf-failover-group-'));
  const file = join(dir, 'stores.yaml');
  try {
    writeFileSync(file, STORES, { mode: 0o640 });
    chownSync(file, 0, FOREIGN_GID);
    const warnings: unknown[] = [];
    const log = { warn: (fields: unknown) => warnings.push(fields) } as unknown as Logger;
    await new FileStoreMapSource(file, false, undefined, log).setCurrentMaster('alpha', 'a2');
    assert.equal(statSync(file).gid, FOREIGN_GID);
    assert.deepEqual(warnings, []);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
