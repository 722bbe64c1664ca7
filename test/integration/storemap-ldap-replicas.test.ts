/**
 * The LDAP store-map source against replicated slapd (a provider and a read-only consumer, or
 * two providers in mirror mode; test/integration/servers/slapd-pair.ts): a failover written
 * through an instance that reads a consumer is refused with words that say why (the consumer
 * answers a write with a referral), not as an internal error.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { readBackend } from '../../src/config/schema.js';
import { IssueList } from '../../src/config/validate.js';
import { MailfrontError } from '../../src/errors.js';
import { createLogger } from '../../src/log.js';
import { StoreMapHolder } from '../../src/routing/holder.js';
import { LdapStoreMapSource } from '../../src/routing/sources.js';
import { createAdminHandler } from '../../src/server/admin.js';
import type { AdminContext } from '../../src/server/admin.js';
import { LDAP_SERVICE_DN, LDAP_STORES_DN } from './servers/index.js';
import { startSlapdPair } from './servers/slapd-pair.js';
import type { PairMember } from './servers/slapd-pair.js';

/** Stores st1..stN, each with slots slNa (the current master) and slNb. */
function storeEntries(count: number): string {
  const ldif: string[] = [];
  for (let s = 1; s <= count; s++) {
    ldif.push(`dn: cn=st${s},${LDAP_STORES_DN}`, 'objectClass: mailfrontStore', `cn: st${s}`, `mailfrontCurrentMaster: sl${s}a`, `mailfrontPreferredMaster: sl${s}a`, '');
    for (const x of ['a', 'b']) ldif.push(`dn: cn=sl${s}${x},cn=st${s},${LDAP_STORES_DN}`, 'objectClass: mailfrontSlot', `cn: sl${s}${x}`, 'mailfrontHost: 127.0.0.1', `mailfrontImapPort: ${x === 'a' ? 10143 : 10144}`, '');
  }
  return ldif.join('\n');
}

/** The service account may fail stores over, as the README has it. */
const FAILOVER_ACCESS = [`access to dn.subtree="${LDAP_STORES_DN}" attrs=mailfrontCurrentMaster,mailfrontPreferredMaster by dn.exact="${LDAP_SERVICE_DN}" write by * break`];

const config = (): ReturnType<ConstructorParameters<typeof StoreMapHolder>[1]> => ({ backend: readBackend(undefined, 'backend', (p) => p, new IssueList()), backendProfiles: new Map() });

function sourceOf(servers: readonly PairMember[], options: { readonly pollIntervalMs?: number } = {}, log = createLogger('silent'), timing = {}): LdapStoreMapSource {
  return new LdapStoreMapSource({ kind: 'ldap', urls: servers.map((s) => s.url), bindDn: servers[0]!.bindDn, bindPassword: servers[0]!.bindPassword, baseDn: LDAP_STORES_DN, pollIntervalMs: options.pollIntervalMs ?? 200, starttls: false, operationTimeoutMs: 2_000 }, undefined, log, timing);
}

/** A logger whose lines land in `lines`, parsed. */
function capturingLogger(lines: Array<Record<string, unknown>>): ReturnType<typeof createLogger> {
  return createLogger('info', { write: (line: string) => void lines.push(JSON.parse(line) as Record<string, unknown>) });
}

test('a failover through an instance that reads a read-only consumer is refused as such (409, STOREMAP_READ_ONLY_REPLICA, a storemap.failover_failed line), not as an internal error', async () => {
  const pair = await startSlapdPair({ mode: 'consumer', entries: storeEntries(2), access: FAILOVER_ACCESS });
  const [provider, consumer] = pair.servers;
  const lines: Array<Record<string, unknown>> = [];
  const log = capturingLogger(lines);
  const source = sourceOf([consumer]);
  const holder = new StoreMapHolder(source, config, log, { changes: () => undefined });
  const server = createServer();
  try {
    assert.equal((await holder.reload('start')).ok, true);
    await assert.rejects(holder.failover('st1', 'sl1b'), (error: unknown) => {
      assert.ok(error instanceof MailfrontError, String(error));
      assert.equal(error.code, 'STOREMAP_READ_ONLY_REPLICA');
      assert.equal(error.kind, 'config');
      assert.match(error.message, /failover of store "st1" not written/);
      assert.ok(error.message.includes(`the store-map server ${consumer.url} is a read-only replica`), error.message);
      assert.match(error.message, /write the failover on the provider/);
      return true;
    });
    const failed = lines.find((l) => l['event'] === 'storemap.failover_failed');
    assert.ok(failed !== undefined, JSON.stringify(lines));
    assert.equal(failed['level'], 'warn');
    assert.equal(failed['store'], 'st1');
    assert.equal(failed['to'], 'sl1b');
    assert.equal(failed['code'], 'STOREMAP_READ_ONLY_REPLICA');
    assert.equal(holder.current.stores.get('st1')!.currentMaster, 'sl1a');

    // Through the admin API: 409 (the request is sound; this instance cannot write it), the code for scripts.
    const handler = createAdminHandler({ token: () => 'replica-test-token-0123456789', holder, log } as unknown as AdminContext);
    server.on('request', (req, res) => void handler(req, res));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const response = await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/api/stores/st1/failover`, { method: 'POST', headers: { authorization: 'Bearer replica-test-token-0123456789', 'content-type': 'application/json' }, body: JSON.stringify({ slot: 'sl1b' }) });
    const body = (await response.json()) as { error: string; code: string };
    assert.equal(response.status, 409, JSON.stringify(body));
    assert.equal(body.code, 'STOREMAP_READ_ONLY_REPLICA');
    assert.match(body.error, /read-only replica/);

    // The same failover through the provider is written.
    const direct = sourceOf([provider]);
    try {
      assert.equal(await direct.setCurrentMaster('st1', 'sl1b'), undefined);
    } finally {
      await direct.close();
    }
  } finally {
    server.close();
    await source.close();
    await pair.stop();
  }
});
