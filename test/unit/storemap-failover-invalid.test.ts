// A failover is checked against the store map as the source gives it now, with the failover made,
// before anything is written: another store edited wrong since the map in force was read would
// have the failover written but put in force by no reload until that store is fixed, and then
// unannounced, draining the store's sessions long after the operator was told it failed.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { readBackend } from '../../src/config/schema.js';
import { IssueList } from '../../src/config/validate.js';
import { MailfrontError } from '../../src/errors.js';
import { createLogger } from '../../src/log.js';
import { StoreMapHolder } from '../../src/routing/holder.js';
import type { MasterChange } from '../../src/routing/holder.js';
import { FileStoreMapSource } from '../../src/routing/sources.js';

const config = (): ReturnType<ConstructorParameters<typeof StoreMapHolder>[1]> => ({ backend: readBackend(undefined, 'backend', (p) => p, new IssueList()), backendProfiles: new Map() });

const map = (betaMaster: string, alphaSlots = 'a1: { host: 127.0.0.1, imap_port: 10143 }, a2: { host: 127.0.0.1, imap_port: 10144 }'): string => `stores:
  alpha: { current_master: a1, slots: { ${alphaSlots} } }
  beta: { current_master: ${betaMaster}, slots: { b1: { host: 127.0.0.1, imap_port: 10145 }, b2: { host: 127.0.0.1, imap_port: 10146 } } }
`;

test('a failover that the store map as the source gives it now would not validate with is refused, naming the store at fault, and nothing is written', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mf-failover-invalid-'));
  const file = join(dir, 'stores.yaml');
  writeFileSync(file, map('b1'));
  const changes: MasterChange[] = [];
  try {
    const holder = new StoreMapHolder(new FileStoreMapSource(file, false), config, createLogger('silent'), { changes: (c) => changes.push(...c) });
    assert.equal((await holder.reload('start')).ok, true);
    // beta edited wrong: the reload rejects it, and the map in force stays.
    writeFileSync(file, map('b9'));
    assert.equal((await holder.reload('change')).ok, false);
    const broken = readFileSync(file, 'utf8');

    await assert.rejects(holder.failover('alpha', 'a2'), (error: unknown) => {
      assert.ok(error instanceof MailfrontError);
      assert.equal(error.code, 'STOREMAP_FAILOVER_REFUSED');
      assert.match(error.message, /^failover of store "alpha" to "a2" refused, nothing was written: .*\(store "beta"; fix it first\).*stores\.beta\.current_master: expected one of this store's slots \(b1, b2\), found "?b9/s);
      return true;
    });
    assert.equal(readFileSync(file, 'utf8'), broken, 'nothing was written');
    assert.equal(holder.current.stores.get('alpha')!.currentMaster, 'a1');

    // beta fixed: alpha stays where it was, and no session of it is drained.
    writeFileSync(file, map('b1'));
    assert.equal((await holder.reload('change')).ok, true);
    assert.equal(holder.current.stores.get('alpha')!.currentMaster, 'a1');
    assert.deepEqual(changes, []);

    // A slot the source no longer has for the store (the map in force still does): the store itself is at fault.
    writeFileSync(file, map('b1', 'a1: { host: 127.0.0.1, imap_port: 10143 }'));
    const withoutA2 = readFileSync(file, 'utf8');
    await assert.rejects(holder.failover('alpha', 'a2'), /refused, nothing was written: .*\(store "alpha"; fix it first\).*stores\.alpha\.current_master/s);
    assert.equal(readFileSync(file, 'utf8'), withoutA2);

    // A store map that validates with the failover: written and put in force.
    writeFileSync(file, map('b1'));
    const moved = await holder.failover('alpha', 'a2');
    assert.equal(moved.ok, true, moved.error);
    assert.equal(holder.current.stores.get('alpha')!.currentMaster, 'a2');
    assert.match(readFileSync(file, 'utf8'), /current_master: a2/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
