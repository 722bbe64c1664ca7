// A failover of a store whose file names no preferred_master writes the master failed over from
// as its preferred master, next to current_master and keeping the operator's comments: the
// preferred master defaults to the current one, and without it would move with the failover, the
// store never showing as backwards. An explicit preferred_master is left as it is.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { readBackend } from '../../src/config/schema.js';
import { IssueList } from '../../src/config/validate.js';
import { createLogger } from '../../src/log.js';
import { StoreMapHolder } from '../../src/routing/holder.js';
import { FileStoreMapSource } from '../../src/routing/sources.js';
import { StoreMap } from '../../src/routing/storemap.js';

const config = (): ReturnType<ConstructorParameters<typeof StoreMapHolder>[1]> => ({ backend: readBackend(undefined, 'backend', (p) => p, new IssueList()), backendProfiles: new Map() });

const MAP = `# stores of the first rack
stores:
  alpha:
    # promoted by hand on 12 May
    current_master: a1   # the only slot logins go to
    slots:
      a1: { host: 127.0.0.1, imap_port: 10143 }
      a2: { host: 127.0.0.1, imap_port: 10144 }
  beta: { current_master: b1, slots: { b1: { host: 127.0.0.1, imap_port: 10145 }, b2: { host: 127.0.0.1, imap_port: 10146 } } }
  gamma:
    preferred_master: g2
    current_master: g1
    slots:
      g1: { host: 127.0.0.1, imap_port: 10147 }
      g2: { host: 127.0.0.1, imap_port: 10148 }
`;

test('a failover of a store without preferred_master writes the master failed over from as preferred, and the store shows as backwards', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mf-failover-preferred-'));
  const file = join(dir, 'stores.yaml');
  writeFileSync(file, MAP);
  try {
    const holder = new StoreMapHolder(new FileStoreMapSource(file, false), config, createLogger('silent'), { changes: () => undefined });
    assert.equal((await holder.reload('start')).ok, true);
    for (const [store, slot] of [['alpha', 'a2'], ['beta', 'b2'], ['gamma', 'g2']] as const) {
      const result = await holder.failover(store, slot);
      assert.equal(result.ok, true, result.error);
    }
    const alpha = holder.current.stores.get('alpha')!;
    assert.deepEqual([alpha.currentMaster, alpha.preferredMaster, StoreMap.isBackwards(alpha)], ['a2', 'a1', true], 'alpha is backwards');
    const beta = holder.current.stores.get('beta')!;
    assert.deepEqual([beta.currentMaster, beta.preferredMaster, StoreMap.isBackwards(beta)], ['b2', 'b1', true], 'beta (a flow mapping) is backwards');
    const gamma = holder.current.stores.get('gamma')!;
    assert.deepEqual([gamma.currentMaster, gamma.preferredMaster, StoreMap.isBackwards(gamma)], ['g2', 'g2', false], 'an explicit preferred_master is kept');
    const text = readFileSync(file, 'utf8');
    assert.match(text, /# promoted by hand on 12 May\n {4}current_master: a2 +# the only slot logins go to\n {4}preferred_master: a1\n/, 'preferred_master is written after current_master, the comments kept');
    assert.match(text, /^# stores of the first rack$/m);
    assert.match(text, /beta:\s+\{\s*current_master: b2,\s+preferred_master: b1,\s+slots:/);
    assert.equal(text.match(/preferred_master: g2/g)?.length, 1, 'gamma has its one preferred_master');

    // Back to the preferred master: it stays as written, and the store is no longer backwards.
    assert.equal((await holder.failover('alpha', 'a1')).ok, true);
    const back = holder.current.stores.get('alpha')!;
    assert.deepEqual([back.currentMaster, back.preferredMaster, StoreMap.isBackwards(back)], ['a1', 'a1', false]);
    assert.equal(readFileSync(file, 'utf8').match(/preferred_master: a1/g)?.length, 1);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
