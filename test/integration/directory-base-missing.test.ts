/**
 * directory.urls [A, B] where A has no base_dn for the service account (an ACL hides the
 * subtree, as on a replica without it: noSuchObject, 32) and B has it. The settings are taken at
 * start (B takes them), so the directory in force must go by B too: a login's search that A
 * answers noSuchObject is tried on B, A held down, and readiness, which asks base_dn, moves on to
 * B rather than answering 503 for every instance of a fleet while B serves. Real slapd and Dovecot.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { LDAP_PEOPLE_DN, LineClient, startDovecot, startSlapd } from './servers/index.js';
import type { Dovecot, Slapd } from './servers/index.js';
import { registerPasswords, startFront } from './front.js';

const PASSWORD = 'Base-missing-pw-6d1';
let a: Slapd;
let b: Slapd;
let dovecot: Dovecot;

before(async () => {
  registerPasswords(PASSWORD);
  [a, b, dovecot] = await Promise.all([
    startSlapd({ users: [{ uid: 'dora', password: PASSWORD, store: 'alpha' }], access: [`access to dn.subtree="${LDAP_PEOPLE_DN}" by dn.exact="cn=mailfront,dc=example,dc=org" none by * break`] }),
    startSlapd({ users: [{ uid: 'dora', password: PASSWORD, store: 'alpha' }] }),
    startDovecot({ name: 'basemissing', users: [{ name: 'dora', password: PASSWORD }] }),
  ]);
});

after(async () => {
  await Promise.all([a?.stop(), b?.stop(), dovecot?.stop()]);
});

test('a first server without base_dn is passed over for one that has it: by readiness and by the logins', async () => {
  const front = await startFront({ slapd: b, stores: { alpha: { currentMaster: 'm', slots: { m: { imapPort: dovecot.imapPort } } } }, directory: { urls: [a.url, b.url], base_dn: LDAP_PEOPLE_DN } });
  try {
    const { host, port } = front.mailfront.httpAddress()!;
    const ready = await fetch(`http://${host}:${port}/readyz`);
    assert.equal(ready.status, 200, await ready.text());
    const client = await LineClient.connect(front.imapTrustedPort);
    try {
      await client.readLine();
      client.send(`a LOGIN dora ${PASSWORD}`);
      assert.match(await client.readLine(10_000), /^a OK /);
    } finally {
      client.close();
    }
    const heldDown = front.logs.find((l) => l['event'] === 'directory.server_held_down');
    assert.equal(heldDown?.['url'], a.url, 'the server without base_dn is held down');
    // Again, A held down: still ready, logins still let in.
    assert.equal((await fetch(`http://${host}:${port}/readyz`)).status, 200);
  } finally {
    await front.stop();
  }
});

test('with base_dn missing on the only server, readiness still says so (503)', async () => {
  const front = await startFront({ slapd: a, stores: { alpha: { currentMaster: 'm', slots: { m: { imapPort: dovecot.imapPort } } } }, directory: { urls: [a.url], base_dn: LDAP_PEOPLE_DN } }).catch((error: unknown) => error as Error);
  // Start refuses such settings (DIRECTORY_SETTINGS_REFUSED): there is nothing to be ready with.
  assert.ok(front instanceof Error && /noSuchObject \(32\)/.test(front.message), String(front));
});
