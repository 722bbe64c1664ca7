/**
 * A config reload refused because the store map the source gives now does not build with the new
 * config (STOREMAP_CONFLICT: it drops a backend profile that map uses) still puts that map in force
 * with the config in force: the refused reload puts the map its check read in force
 * (holder.reload('signal', read)), as the check's load made it the last one loaded (the rv-diff4
 * review's point 3 took the polls for the only way it could come in force). The polls are held
 * back here, so that only that read can put it in force.
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { parse, stringify } from 'yaml';
import { LDAP_STORES_DN, startSlapd } from './servers/index.js';
import { startFront } from './front.js';
import { holdPolls } from './store-entries.js';

test('a store map read by a refused config reload\'s check is put in force by that reload, with the config in force', { timeout: 60_000 }, async () => {
  const slapd = await startSlapd({ users: [] });
  const entry = (cn: string, port: number): string[] => [`dn: cn=${cn},cn=alpha,${LDAP_STORES_DN}`, 'changetype: add', 'objectClass: mailfrontSlot', `cn: ${cn}`, 'mailfrontHost: 127.0.0.1', `mailfrontImapPort: ${port}`, ''];
  await slapd.modify([`dn: cn=alpha,${LDAP_STORES_DN}`, 'changetype: add', 'objectClass: mailfrontStore', 'cn: alpha', 'mailfrontCurrentMaster: a1', '', ...entry('a1', 10143), ...entry('a2', 10144)].join('\n'));
  const front = await startFront({ slapd, stores: {}, storeMapLdapBase: LDAP_STORES_DN });
  try {
    const config = await readFile(front.configFile, 'utf8');
    const withProfile = parse(config) as Record<string, unknown>;
    withProfile['backend_profiles'] = { p1: { login_timeout_ms: 4000 } };
    await writeFile(front.configFile, stringify(withProfile));
    const added = await front.mailfront.reload();
    assert.equal(added.ok, true, added.error);
    // The polls wait until the reload below is refused (one in flight ends first): the check is the first to read the new map.
    const release = holdPolls(front.mailfront.holder.source);
    await sleep(500);
    // Another instance fails alpha over, and has it use the profile.
    await slapd.modify([`dn: cn=alpha,${LDAP_STORES_DN}`, 'changetype: modify', 'replace: mailfrontCurrentMaster', 'mailfrontCurrentMaster: a2', '-', 'add: mailfrontBackendProfile', 'mailfrontBackendProfile: p1', ''].join('\n'));
    // A config that drops the profile: refused, the map in force and the config stay.
    await writeFile(front.configFile, config);
    const refused = await front.mailfront.reload();
    assert.equal(refused.ok, false);
    assert.match(refused.error ?? '', /store map does not build/);
    // The refused reload puts the map its check read in force, as every reload does, with the config in force: the polls, held back, have no part in it.
    assert.equal(front.mailfront.currentStoreMap().stores.get('alpha')?.currentMaster, 'a2', 'the failover on the server is in force once the reload is refused');
    assert.equal(front.mailfront.currentStoreMap().stores.get('alpha')?.backend.loginTimeoutMs, 4000, 'with the profile of the config in force');
    release();
  } finally {
    await front.stop();
    await slapd.stop();
  }
});
