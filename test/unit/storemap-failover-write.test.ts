// A failover written to a store-map file that cannot be replaced (here an immutable file, as
// `chattr +i` makes it) fails, and leaves no temporary file in the folder.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { FileStoreMapSource } from '../../src/routing/sources.js';

test('a failover that cannot replace the store-map file fails and leaves no temporary file', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mf-failover-write-'));
  const file = join(dir, 'stores.yaml');
  const text = 'stores:\n  alpha:\n    current_master: a1\n    slots:\n      a1: { host: 127.0.0.1, imap: 10143 }\n      a2: { host: 127.0.0.1, imap: 10144 }\n';
  writeFileSync(file, text);
  // The suite runs as root on ext4, where an immutable file refuses the rename even to root.
  execFileSync('chattr', ['+i', file]);
  try {
    const source = new FileStoreMapSource(file, false);
    for (let i = 0; i < 3; i++) await assert.rejects(source.setCurrentMaster('alpha', 'a2'), /EPERM|operation not permitted/i);
    assert.deepEqual(readdirSync(dir), ['stores.yaml'], 'the failed writes left their temporary files');
    assert.equal(readFileSync(file, 'utf8'), text);
  } finally {
    execFileSync('chattr', ['-i', file]);
    rmSync(dir, { recursive: true, force: true });
  }
});
