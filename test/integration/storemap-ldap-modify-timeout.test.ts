/**
 * A failover whose modify the store-map server does not answer in time
 * (the server hung after the read) is 503 STOREMAP_WRITE_UNCONFIRMED (it was 500 INTERNAL; the rv-diff3 review's modify-timeout repro).
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer } from 'node:http';
import { createServer as createTcpServer, connect } from 'node:net';
import type { AddressInfo, Socket } from 'node:net';
import { test } from 'node:test';
import { readBackend } from '../../src/config/schema.js';
import { IssueList } from '../../src/config/validate.js';
import { createLogger } from '../../src/log.js';
import { StoreMapHolder } from '../../src/routing/holder.js';
import { LdapStoreMapSource } from '../../src/routing/sources.js';
import { createAdminHandler } from '../../src/server/admin.js';
import type { AdminContext } from '../../src/server/admin.js';
import { LDAP_SERVICE_DN, LDAP_STORES_DN } from './servers/index.js';
import { startSlapdPair } from './servers/slapd-pair.js';

const ENTRIES = [`dn: cn=st1,${LDAP_STORES_DN}`, 'objectClass: mailfrontStore', 'cn: st1', 'mailfrontCurrentMaster: sl1a', '', ...['a', 'b'].flatMap((x) => [`dn: cn=sl1${x},cn=st1,${LDAP_STORES_DN}`, 'objectClass: mailfrontSlot', `cn: sl1${x}`, 'mailfrontHost: 127.0.0.1', 'mailfrontImapPort: 10143', ''])].join('\n');
const FAILOVER_ACCESS = [`access to dn.subtree="${LDAP_STORES_DN}" attrs=mailfrontCurrentMaster,mailfrontPreferredMaster by dn.exact="${LDAP_SERVICE_DN}" write by * break`];
const config = (): ReturnType<ConstructorParameters<typeof StoreMapHolder>[1]> => ({ backend: readBackend(undefined, 'backend', (p) => p, new IssueList()), backendProfiles: new Map() });

/** The LDAP operation tag of a request chunk (0x66: ModifyRequest). */
function opTag(chunk: Buffer): number | undefined {
  if (chunk[0] !== 0x30) return undefined;
  let i = 1;
  const l = chunk[i]!;
  i += l & 0x80 ? 1 + (l & 0x7f) : 1;
  if (chunk[i] !== 0x02) return undefined;
  i += 2 + chunk[i + 1]!;
  return chunk[i];
}

test('a failover whose modify times out answers 503', { timeout: 60_000 }, async () => {
  const pair = await startSlapdPair({ mode: 'consumer', entries: ENTRIES, access: FAILOVER_ACCESS });
  const [provider] = pair.servers;
  // A relay that swallows ModifyRequests: the server as if it hung after the read.
  const sockets: Socket[] = [];
  const relay = createTcpServer((c) => {
    const s = connect(provider.port, '127.0.0.1');
    sockets.push(c, s);
    c.on('data', (d: Buffer) => (opTag(d) === 0x66 ? undefined : s.write(d)));
    s.pipe(c);
    c.on('error', () => undefined);
    s.on('error', () => undefined);
  });
  relay.listen(0, '127.0.0.1');
  await once(relay, 'listening');
  const url = `ldap://127.0.0.1:${(relay.address() as AddressInfo).port}`;
  const source = new LdapStoreMapSource({ kind: 'ldap', urls: [url], bindDn: provider.bindDn, bindPassword: provider.bindPassword, baseDn: LDAP_STORES_DN, pollIntervalMs: 1_000, starttls: false, operationTimeoutMs: 2_000 }, undefined, createLogger('silent'));
  const log = createLogger('silent');
  const holder = new StoreMapHolder(source, config, log, { changes: () => undefined });
  const server = createServer();
  try {
    assert.equal((await holder.reload('start')).ok, true);
    const handler = createAdminHandler({ token: () => 'replica-test-token-0123456789', holder, log } as unknown as AdminContext);
    server.on('request', (req, res) => void handler(req, res));
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const response = await fetch(`http://127.0.0.1:${(server.address() as AddressInfo).port}/api/stores/st1/failover`, { method: 'POST', headers: { authorization: 'Bearer replica-test-token-0123456789', 'content-type': 'application/json' }, body: JSON.stringify({ slot: 'sl1b' }) });
    const body = await response.text();
    assert.equal(response.status, 503, body);
    const answer = JSON.parse(body) as { code?: string; error?: string; message?: string };
    assert.equal(answer.code, 'STOREMAP_WRITE_UNCONFIRMED', body);
    assert.match(body, /may or may not have been written/);
  } finally {
    server.close();
    await source.close();
    for (const s of sockets) s.destroy();
    relay.close();
    await pair.stop();
  }
});
