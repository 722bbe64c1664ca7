// A failover or maintenance switch whose search for the store entry (after its check, before the
// modify) fails: nothing was written. Not answered, STOREMAP_LDAP_BUSY (auth-tempfail: 503); an
// LDAP result, STOREMAP_WRITE_FAILED (409). The raw ldapts error came through: 500 INTERNAL
// "SearchRequest: Operation timed out" (the rv-diff4 review's entry-search repro).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { InsufficientAccessError } from 'ldapts';
import { readBackend } from '../../src/config/schema.js';
import { IssueList } from '../../src/config/validate.js';
import { asMailfrontError } from '../../src/errors.js';
import { createLogger } from '../../src/log.js';
import { StoreMapHolder } from '../../src/routing/holder.js';
import { LdapStoreMapSource } from '../../src/routing/sources.js';

const config = (): ReturnType<ConstructorParameters<typeof StoreMapHolder>[1]> => ({ backend: readBackend(undefined, 'backend', (p) => p, new IssueList()), backendProfiles: new Map() });
const doc = { stores: { alpha: { current_master: 'a1', slots: { a1: { host: '127.0.0.1', imap_port: 10143 }, a2: { host: '127.0.0.1', imap_port: 10144 } } } } };

test('a store-map write whose store entry search is not answered is 503-passing, one refused with an LDAP result 409; nothing written', async () => {
  const source = new LdapStoreMapSource({ kind: 'ldap', urls: ['ldap://127.0.0.1:1'], bindDn: 'cn=x', bindPassword: 'x', baseDn: 'ou=stores,dc=example,dc=com', pollIntervalMs: 1000, operationTimeoutMs: 1000, starttls: false });
  source.load = async () => doc;
  let failure: Error = new Error('SearchRequest: Operation timed out');
  let modified = 0;
  const fake = {
    search: async () => {
      throw failure;
    },
    modify: async () => {
      modified += 1;
    },
  };
  (source as unknown as { connection: () => Promise<unknown> }).connection = async () => fake;
  const holder = new StoreMapHolder(source, config, createLogger('silent'), { changes: () => undefined });
  assert.equal((await holder.reload('start')).ok, true);
  const cases: Array<[Error, string, string, RegExp]> = [
    [new Error('SearchRequest: Operation timed out'), 'STOREMAP_LDAP_BUSY', 'auth-tempfail', /did not answer the search .*nothing was written/],
    [new Error('Connection closed'), 'STOREMAP_LDAP_BUSY', 'auth-tempfail', /nothing was written/],
    [new InsufficientAccessError(''), 'STOREMAP_WRITE_FAILED', 'config', /refused the search for its entry with LDAP result 50/],
  ];
  for (const [error, code, kind, words] of cases) {
    failure = error;
    for (const write of [() => holder.failover('alpha', 'a2'), () => holder.setMaintenance('alpha', true)]) {
      const caught = asMailfrontError(await write().then(() => assert.fail('no error'), (e: unknown) => e));
      assert.equal(caught.code, code, caught.message);
      assert.equal(caught.kind, kind);
      assert.match(caught.message, words);
    }
  }
  assert.equal(modified, 0);
  assert.equal(holder.current.stores.get('alpha')?.currentMaster, 'a1');
});
