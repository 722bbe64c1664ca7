// A change this instance wrote that another instance changed since, deliberately (an operator's
// fail-back through "any one instance"), is no undo: it was logged at error, storemap.change_undone,
// telling the operator to "write it again", which would have undone the fail-back (the rv-diffc
// review's three-race repro). Writers through mailfront record their changes beside the file
// (`.<name>.written`, under the lock): a change recorded since is said at info
// (storemap.change_superseded) naming its writer; a copy saved without the lock is still an error.
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
const map = (alpha: string, beta: string): string => `stores:
  alpha: { current_master: ${alpha}, preferred_master: a1, slots: { a1: { host: 127.0.0.1, imap_port: 10143 }, a2: { host: 127.0.0.1, imap_port: 10144 } } }
  beta: { current_master: ${beta}, preferred_master: b1, slots: { b1: { host: 127.0.0.1, imap_port: 10145 }, b2: { host: 127.0.0.1, imap_port: 10146 } } }
`;

let dir: TmpDir;
before(() => {
  dir = tmpDir('storemap-superseded');
});
after(async () => {
  await dir.remove();
});

/** An instance on `file`: its holder and the lines it logged. */
async function instance(file: string): Promise<{ holder: StoreMapHolder; lines: Array<Record<string, unknown>> }> {
  const lines: Array<Record<string, unknown>> = [];
  const log = createLogger('info', { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
  const holder = new StoreMapHolder(new FileStoreMapSource(file, false, undefined, log), config, log, { changes: () => undefined });
  assert.equal((await holder.reload('start')).ok, true);
  return { holder, lines };
}
const events = (lines: Array<Record<string, unknown>>, event: string): Array<Record<string, unknown>> => lines.filter((l) => l['event'] === event);

test("another instance's later failover or maintenance switch of a store this one wrote is no undo; a copy saved without the lock still is", async () => {
  const file = join(dir.path, 'stores.yaml');
  writeFileSync(file, map('a1', 'b1'));
  const a = await instance(file);
  const b = await instance(file);

  // A fails alpha over, B fails it back a moment later; A reads the file again (its watch).
  await a.holder.failover('alpha', 'a2');
  await b.holder.reload('change');
  await b.holder.failover('alpha', 'a1');
  await a.holder.reload('change');
  assert.equal(a.holder.current.stores.get('alpha')!.currentMaster, 'a1');
  // Maintenance on through A, off through B.
  await a.holder.setMaintenance('beta', true);
  await b.holder.reload('change');
  await b.holder.setMaintenance('beta', false);
  await a.holder.reload('change');
  assert.equal(a.holder.current.stores.get('beta')!.maintenance, null);
  assert.deepEqual(events(a.lines, 'storemap.change_undone'), []);
  const superseded = events(a.lines, 'storemap.change_superseded');
  assert.deepEqual(
    superseded.map((l) => [l['level'], l['store'], l['change'], l['written'], l['now'], (l['by'] as { pid: number }).pid]),
    [
      ['info', 'alpha', 'failover', 'a2', 'a1', process.pid],
      ['info', 'beta', 'maintenance', true, false, process.pid],
    ],
  );
  assert.match(String(superseded[0]?.['msg']), /^store "alpha": the failover to "a2" this instance wrote \d+\.\d s ago was changed since in file .*stores\.yaml \(its current master is "a1" now\) by another mailfront writer, pid \d+ on .+, at /);

  // A writer without the lock (an older mailfront, a hand edit from a copy) saves the map as it was before A's failover: an error, with no "write it again".
  await a.holder.failover('alpha', 'a2');
  writeFileSync(file, map('a1', 'b1'));
  await a.holder.reload('change');
  const undone = events(a.lines, 'storemap.change_undone');
  assert.deepEqual(
    undone.map((l) => [l['level'], l['store'], l['written'], l['now']]),
    [['error', 'alpha', 'a2', 'a1']],
  );
  assert.match(String(undone[0]?.['msg']), /no mailfront writer recorded a change of the store since: a hand edit from an old copy, or an instance writing without the store-map lock \(an older mailfront during an upgrade\); check the store map/);
  assert.doesNotMatch(String(undone[0]?.['msg']), /write it again/);
});
