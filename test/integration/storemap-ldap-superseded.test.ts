/**
 * An LDAP store map is written one store entry at a time, by mailfront or an operator: a later
 * value of a store this instance failed over is a later write, never a stale copy saved whole. It
 * was logged at error as an undo (storemap.change_undone, "write it again"), with compose's two
 * instances on LDAP, whenever the operator failed a store back through the other one.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { readBackend } from '../../src/config/schema.js';
import { IssueList } from '../../src/config/validate.js';
import { createLogger } from '../../src/log.js';
import { StoreMapHolder } from '../../src/routing/holder.js';
import { LdapStoreMapSource } from '../../src/routing/sources.js';
import { LDAP_STORES_DN, startSlapd } from './servers/index.js';
import type { Slapd } from './servers/index.js';

const config = (): ReturnType<ConstructorParameters<typeof StoreMapHolder>[1]> => ({ backend: readBackend(undefined, 'backend', (p) => p, new IssueList()), backendProfiles: new Map() });

let slapd: Slapd;
before(async () => {
  slapd = await startSlapd({ users: [] });
  await slapd.modify(
    [
      `dn: cn=gamma,${LDAP_STORES_DN}`,
      'changetype: add',
      'objectClass: mailfrontStore',
      'cn: gamma',
      'mailfrontCurrentMaster: g1',
      'mailfrontPreferredMaster: g1',
      '',
      ...['g1', 'g2'].flatMap((slot, i) => [`dn: cn=${slot},cn=gamma,${LDAP_STORES_DN}`, 'changetype: add', 'objectClass: mailfrontSlot', `cn: ${slot}`, 'mailfrontHost: 127.0.0.1', `mailfrontImapPort: ${10143 + i}`, '']),
    ].join('\n'),
  );
});
after(async () => {
  await slapd?.stop();
});

test("another instance's later failover or maintenance switch of a store in LDAP is no undo", async () => {
  const instances = [0, 1].map(() => {
    const lines: Array<Record<string, unknown>> = [];
    const log = createLogger('info', { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
    const source = new LdapStoreMapSource({ kind: 'ldap', urls: [slapd.url], bindDn: slapd.rootDn, bindPassword: slapd.rootPassword, baseDn: LDAP_STORES_DN, pollIntervalMs: 100, starttls: false, operationTimeoutMs: 2_000 });
    return { holder: new StoreMapHolder(source, config, log, { changes: () => undefined }), source, lines };
  });
  const [a, b] = instances as [(typeof instances)[0], (typeof instances)[0]];
  try {
    for (const i of instances) assert.equal((await i.holder.reload('start')).ok, true);
    await a.holder.failover('gamma', 'g2');
    await b.holder.reload('change');
    await b.holder.failover('gamma', 'g1');
    await a.holder.setMaintenance('gamma', true);
    await b.holder.reload('change');
    await b.holder.setMaintenance('gamma', false);
    await a.holder.reload('change');
    assert.equal(a.holder.current.stores.get('gamma')!.currentMaster, 'g1');
    assert.equal(a.holder.current.stores.get('gamma')!.maintenance, null);
    assert.deepEqual(a.lines.filter((l) => l['event'] === 'storemap.change_undone'), []);
    assert.deepEqual(
      a.lines.filter((l) => l['event'] === 'storemap.change_superseded').map((l) => [l['level'], l['change'], l['written'], l['now']]),
      [
        ['info', 'failover', 'g2', 'g1'],
        ['info', 'maintenance', true, false],
      ],
    );
  } finally {
    for (const i of instances) await i.source.close();
  }
});
