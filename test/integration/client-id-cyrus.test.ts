/**
 * The client's own IMAP ID forwarded to Cyrus (backend.forward_client_id, sasl-authzid): Cyrus
 * 3.6 closes the connection on an ID with a NIL value, which mailfront pipelines ahead of the
 * login, so a client whose ID has one (RFC 2971 allows it) would fail every login; such pairs are
 * left out. The ID keeps to RFC 2971's 30 pairs with mailfront's own three (Cyrus refuses a longer
 * one whole).
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { LineClient, startCyrus, startSlapd } from './servers/index.js';
import type { Cyrus, Slapd } from './servers/index.js';
import { makeMessage, registerPasswords, registerSecrets, startFront } from './front.js';
import type { Front } from './front.js';

const PASSWORD = 'Carol-idfwd-pw-5b9d';
const CYRUS_PROXY = { name: 'proxyadmin', password: 'Cyrus-idfwd-proxy-pw-07' };
registerPasswords(PASSWORD);
registerSecrets([CYRUS_PROXY.password]);

let slapd: Slapd;
let cyrus: Cyrus;
let front: Front;

before(async () => {
  [slapd, cyrus] = await Promise.all([
    startSlapd({ users: [{ uid: 'carol', password: PASSWORD, store: 'gamma' }] }),
    startCyrus({ users: [{ name: 'carol', password: 'carol-backend-only-pw' }], proxyAdmin: CYRUS_PROXY }),
  ]);
  await cyrus.deliver('carol', makeMessage('gamma idfwd'));
  front = await startFront({
    slapd,
    stores: {
      gamma: {
        currentMaster: 'c1',
        slots: { c1: { imapPort: cyrus.imapPort } },
        backend: { login_mode: 'sasl-authzid', proxy_user: CYRUS_PROXY.name, proxy_password: CYRUS_PROXY.password },
      },
    },
  });
});

after(async () => {
  await front?.stop();
  await Promise.all([slapd?.stop(), cyrus?.stop()]);
});

test('a client whose ID has a NIL value, and 30 pairs, logs in to Cyrus through mailfront', async () => {
  for (const id of ['("name" "Thunderbird" "os" NIL "version" "128.3")', `(${Array.from({ length: 30 }, (_, i) => `"k${i}" "v"`).join(' ')})`]) {
    const client = await LineClient.connect(front.imapTrustedPort);
    try {
      await client.readLine();
      assert.equal((await client.imap(`ID ${id}`)).status, 'OK');
      const login = await client.imap(`LOGIN carol "${PASSWORD}"`);
      assert.equal(login.status, 'OK', `${id.slice(0, 60)}: ${login.text}`);
      const selected = await client.imap('SELECT INBOX');
      assert.equal(selected.status, 'OK');
      assert.ok(selected.untagged.includes('* 1 EXISTS'), selected.untagged.join(' | '));
      await client.imap('LOGOUT');
    } finally {
      client.close();
    }
  }
});
