// What the admin API answers for a failover whose store-map write failed: refused by the server
// for any LDAP result (STOREMAP_WRITE_FAILED, as a read-only replica is) 409, nothing written;
// not answered (STOREMAP_WRITE_UNCONFIRMED: a timeout, a connection cut) 503, passing. Both were 500.
// So were a file that kept changing under the write (503) and a store the map names twice (409).
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { MailfrontError } from '../../src/errors.js';
import { createLogger } from '../../src/log.js';
import { createAdminHandler } from '../../src/server/admin.js';
import type { AdminContext } from '../../src/server/admin.js';
import { failoverWriteError } from '../../src/routing/sources.js';
import { NoSuchObjectError } from 'ldapts';

const TOKEN = 'admin-token-for-the-write-status-test';

test('a failover whose LDAP write failed: 409 when refused, 503 when not answered', async () => {
  let failure: unknown;
  const context = {
    token: () => TOKEN,
    log: createLogger('silent'),
    holder: {
      current: { version: 1, stores: new Map() },
      last: undefined,
      failover: async () => {
        throw failure;
      },
    },
  } as unknown as AdminContext;
  const handler = createAdminHandler(context);
  const server = createServer((req, res) => void handler(req, res));
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  try {
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/api/stores/st1/failover`;
    const cases: Array<[unknown, number, string]> = [
      [failoverWriteError(new NoSuchObjectError(''), 'st1', 'cn=st1,ou=stores', 'ldap://127.0.0.1:3899'), 409, 'STOREMAP_WRITE_FAILED'],
      [failoverWriteError(new Error('ModifyRequest: Operation timed out'), 'st1', 'cn=st1,ou=stores', 'ldap://127.0.0.1:3899'), 503, 'STOREMAP_WRITE_UNCONFIRMED'],
      [failoverWriteError(new Error('Connection closed'), 'st1', 'cn=st1,ou=stores', 'ldap://127.0.0.1:3899'), 503, 'STOREMAP_WRITE_UNCONFIRMED'],
      // The file kept changing under the write: it passes, nothing written. A store named twice: the map is at fault. Both were 500.
      [new MailfrontError('STOREMAP_FILE_CHANGING', 'config', 'stores.yaml changed while the failover was written, 5 times in a row; no failover written'), 503, 'STOREMAP_FILE_CHANGING'],
      [new MailfrontError('STOREMAP_DUPLICATE_STORE', 'config', 'store "st1" has 2 keys in stores.yaml; no failover written'), 409, 'STOREMAP_DUPLICATE_STORE'],
    ];
    for (const [error, status, code] of cases) {
      assert.ok(error instanceof MailfrontError);
      failure = error;
      const response = await fetch(url, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ slot: 'sl1b' }) });
      const body = await response.text();
      assert.equal(response.status, status, body);
      assert.equal(JSON.parse(body).code, code, body);
    }
  } finally {
    server.close();
  }
});
