// A hand edit of the store-map file saved while a failover is being written (after the failover
// read the file, before it renamed its own version onto it) is kept: the failover is made again
// on the edited file. A file that keeps changing fails the failover, naming why, after a few tries.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import fsp from 'node:fs/promises';
import { syncBuiltinESMExports } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { parse } from 'yaml';
import { FileStoreMapSource } from '../../src/routing/sources.js';

const document = (alpha: string, beta: string): string => `stores:\n  alpha:\n    current_master: ${alpha}\n    slots:\n      a1: { host: 127.0.0.1, imap_port: 10143 }\n      a2: { host: 127.0.0.1, imap_port: 10144 }\n  beta:\n    current_master: ${beta}\n    slots:\n      b1: { host: 127.0.0.1, imap_port: 10145 }\n      b2: { host: 127.0.0.1, imap_port: 10146 }\n`;
const masters = (file: string): unknown => {
  const { stores } = parse(readFileSync(file, 'utf8')) as { stores: Record<string, { current_master: string }> };
  return [stores['alpha']?.current_master, stores['beta']?.current_master];
};

/**
 * Runs `body` with `edit` called each time the failover has made its temporary file: the
 * moment between its read of the map and its rename. fs/promises' export is swapped and synced
 * into the ESM bindings, so the source under test calls it.
 */
async function withEditsDuringWrites(edit: (n: number) => void, body: () => Promise<unknown>): Promise<void> {
  const original = fsp.open;
  let n = 0;
  fsp.open = (async (...args: Parameters<typeof original>) => {
    const handle = await original(...args);
    if (String(args[0]).endsWith('.tmp')) edit(++n);
    return handle;
  }) as typeof original;
  syncBuiltinESMExports();
  try {
    await body();
  } finally {
    fsp.open = original;
    syncBuiltinESMExports();
  }
}

test('a hand edit saved while a failover is written is kept: by rename, and in place', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mf-failover-race-'));
  const file = join(dir, 'stores.yaml');
  try {
    // The operator's editor saves beta's failover by rename between mailfront's read and rename.
    writeFileSync(file, document('a1', 'b1'));
    await withEditsDuringWrites(
      (n) => {
        if (n > 1) return;
        writeFileSync(join(dir, 'edit.swp'), document('a1', 'b2'));
        renameSync(join(dir, 'edit.swp'), file);
      },
      () => new FileStoreMapSource(file, false).setCurrentMaster('alpha', 'a2'),
    );
    assert.deepEqual(masters(file), ['a2', 'b2'], 'both the failover and the hand edit are in the file');
    // The same edit written in place (same size, so only the content tells).
    writeFileSync(file, document('a1', 'b1'));
    await withEditsDuringWrites(
      (n) => n === 1 && writeFileSync(file, document('a1', 'b2')),
      () => new FileStoreMapSource(file, false).setCurrentMaster('alpha', 'a2'),
    );
    assert.deepEqual(masters(file), ['a2', 'b2'], 'both the failover and the in-place edit are in the file');
    assert.deepEqual(readdirSync(dir).filter((name) => name !== '.stores.yaml.written'), ['stores.yaml'], 'no temporary file is left');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a store-map file that changes at every try of a failover fails it, naming why; the last edit stays and no temporary file is left', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mf-failover-race-'));
  const file = join(dir, 'stores.yaml');
  try {
    writeFileSync(file, document('a1', 'b1'));
    let edits = 0;
    await withEditsDuringWrites(
      (n) => {
        edits = n;
        writeFileSync(file, document('a1', n % 2 === 0 ? 'b1' : 'b2'));
      },
      () => assert.rejects(new FileStoreMapSource(file, false).setCurrentMaster('alpha', 'a2'), /stores\.yaml changed while the failover of store "alpha" to "a2" was written, 5 times in a row; no failover written/),
    );
    assert.equal(edits, 5, 'the failover was tried 5 times');
    assert.deepEqual(masters(file), ['a1', 'b2'], 'the last hand edit is the file');
    assert.deepEqual(readdirSync(dir).filter((name) => name !== '.stores.yaml.written'), ['stores.yaml'], 'no temporary file is left');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
