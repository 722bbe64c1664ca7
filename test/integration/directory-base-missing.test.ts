/**
 * directory.urls [A, B] where A has no base_dn for the service account (an ACL hides the
 * subtree, as on a replica without it: noSuchObject, 32) and B has it. The settings are taken at
 * start (B takes them), so the directory in force must go by B too: a login's search that A
 * answers noSuchObject is tried on B, A held down, and readiness, which asks base_dn, moves on to
 * B rather than answering 503 for every instance of a fleet while B serves. Real slapd and Dovecot.
 */
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { LdapDirectory } from '../../src/auth/ldap.js';
import type { Metrics } from '../../src/metrics.js';
import { createLogger } from '../../src/log.js';
import { LDAP_PEOPLE_DN, LineClient, directoryConfigOf, startDovecot, startSlapd } from './servers/index.js';
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

test('a user bind answered noSuchObject holds no server down: it is about the user, not base_dn', async () => {
  // slapd's retcode overlay stands in for a server that answers a bind to a DN it lacks with 32.
  const users = [{ uid: 'stale', password: PASSWORD, store: 'alpha' }];
  const odd = await startSlapd({ users, access: ['access to * by * manage', 'moduleload retcode', 'overlay retcode', 'retcode-parent "ou=retcode,dc=example,dc=org"', 'retcode-indir'] });
  const lines: Array<Record<string, unknown>> = [];
  const directory = new LdapDirectory(directoryConfigOf(odd, { urls: [odd.url, b.url] }), createLogger('debug', { write: (line: string) => lines.push(JSON.parse(line) as Record<string, unknown>) > 0 }));
  try {
    await odd.modify(`dn: uid=stale,${LDAP_PEOPLE_DN}\nchangetype: modify\nadd: objectClass\nobjectClass: errAuxObject\n-\nadd: errCode\nerrCode: 32\n-\nadd: errOp\nerrOp: bind\n`);
    const result = await directory.authenticate('stale', PASSWORD, new AbortController().signal).then(
      () => 'ok',
      (error: { code?: string }) => String(error.code),
    );
    assert.equal(result, 'LDAP_BIND_FAILED', 'the bind\'s answer stands');
    assert.deepEqual(lines.filter((l) => l['event'] === 'directory.server_held_down'), []);
  } finally {
    await directory.close();
    await odd.stop();
  }
});

test('with base_dn missing on the only server, a login asks it once, not again on a fresh connection', async () => {
  const counts = new Map<string, number>();
  const metrics = { ldapRequest: (op: string, result: string) => counts.set(`${op} ${result}`, (counts.get(`${op} ${result}`) ?? 0) + 1), directoryCacheLookup: () => undefined } as unknown as Metrics;
  const directory = new LdapDirectory(directoryConfigOf(a, { searchConnections: 1 }), createLogger('silent'), metrics);
  try {
    for (let i = 0; i < 3; i++) {
      const code = await directory.authenticate('dora', PASSWORD, new AbortController().signal).then(
        () => 'ok',
        (error: { code?: string }) => String(error.code),
      );
      assert.equal(code, 'LDAP_SEARCH_FAILED');
    }
  } finally {
    await directory.close();
  }
  assert.equal(counts.get('search error'), 3, JSON.stringify([...counts]));
});
