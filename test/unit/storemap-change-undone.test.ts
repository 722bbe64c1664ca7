// A reload that takes back a change this instance wrote a moment ago (another writer saved the
// store map as it was before the change: a hand edit, an instance without the file's lock) is
// logged at error, storemap.change_undone, naming the store, what was written and what the map
// says now. It was a reload like any other (storemap.loaded at info): the failover the operator
// was told was written was gone, and its sessions sent back, with no word anywhere.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { readBackend } from '../../src/config/schema.js';
import { IssueList } from '../../src/config/validate.js';
import { createLogger } from '../../src/log.js';
import { StoreMapHolder } from '../../src/routing/holder.js';
import { FileStoreMapSource } from '../../src/routing/sources.js';
import { tmpDir } from '../integration/servers/index.js';
import type { TmpDir } from '../integration/servers/index.js';

const config = (): ReturnType<ConstructorParameters<typeof StoreMapHolder>[1]> => ({ backend: readBackend(undefined, 'backend', (p) => p, new IssueList()), backendProfiles: new Map() });
const map = (alpha: string, beta: string, betaMaintenance = false): string => `stores:
  alpha: { current_master: ${alpha}, preferred_master: a1, slots: { a1: { host: 127.0.0.1, imap_port: 10143 }, a2: { host: 127.0.0.1, imap_port: 10144 } } }
  beta: { current_master: ${beta}, preferred_master: b1,${betaMaintenance ? ' maintenance: true,' : ''} slots: { b1: { host: 127.0.0.1, imap_port: 10145 }, b2: { host: 127.0.0.1, imap_port: 10146 } } }
`;

let dir: TmpDir;
before(() => {
  dir = tmpDir('storemap-undone');
});
after(async () => {
  await dir.remove();
});

test('a reload that takes back a failover or a maintenance switch this instance just wrote is logged at error; other reloads are not', async () => {
  const file = join(dir.path, 'stores.yaml');
  writeFileSync(file, map('a1', 'b1'));
  const lines: Array<Record<string, unknown>> = [];
  const log = createLogger('info', { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
  const holder = new StoreMapHolder(new FileStoreMapSource(file, false), config, log, { changes: () => undefined });
  assert.equal((await holder.reload('start')).ok, true);
  const undone = (): Array<Record<string, unknown>> => lines.filter((l) => l['event'] === 'storemap.change_undone');

  await holder.failover('alpha', 'a2');
  await holder.setMaintenance('beta', true);
  // Another store changed by hand: nothing this instance wrote is taken back.
  writeFileSync(file, map('a2', 'b2', true));
  await holder.reload('change');
  assert.deepEqual(undone(), []);

  // Another writer's rename of the map it read before both changes (b2 kept: its own edit).
  writeFileSync(file, map('a1', 'b2'));
  await holder.reload('change');
  assert.equal(holder.current.stores.get('alpha')!.currentMaster, 'a1', 'the reload put the map in force as the source gives it');
  const said = undone();
  assert.deepEqual(
    said.map((l) => [l['level'], l['store'], l['change'], l['written'], l['now'], l['trigger']]),
    [
      ['error', 'alpha', 'failover', 'a2', 'a1', 'change'],
      ['error', 'beta', 'maintenance', true, false, 'change'],
    ],
  );
  assert.match(String(said[0]?.['msg']), /^store "alpha": the failover to "a2" this instance wrote \d+\.\d s ago was undone by file .*stores\.yaml \(its current master is "a1" again\): another writer saved the store map as it was before it/);
  assert.ok(typeof said[0]?.['writtenMsAgo'] === 'number');

  // Said once: the same map again, and a failover back by hand later, say nothing more.
  writeFileSync(file, map('a2', 'b2'));
  await holder.reload('change');
  writeFileSync(file, map('a1', 'b2'));
  await holder.reload('change');
  assert.equal(undone().length, 2);
});
