/**
 * What a support desk asks of the admin API and the CLI, with real slapd and Dovecot: a user who
 * logs in with an alias (a.smith@example.com, which the user filter matches; the entry's own name
 * is alice) is found by whereis and sessions under the name typed (the one a ticket quotes), and
 * the login name (the logs' `user`) is shown.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { LineClient, repoRoot, startDovecot, startSlapd } from './servers/index.js';
import type { Dovecot, Slapd } from './servers/index.js';
import { ADMIN_TOKEN, registerPasswords, startFront } from './front.js';
import type { Front } from './front.js';

const run = promisify(execFile);
const PASSWORD = 'Alias-pw-83d1f';
const ALIAS = 'a.smith@example.com';

let slapd: Slapd;
let dovecot: Dovecot;
let front: Front;

before(async () => {
  registerPasswords(PASSWORD);
  [slapd, dovecot] = await Promise.all([
    startSlapd({ users: [{ uid: 'alice', password: PASSWORD, store: 'alpha', mail: ALIAS }, { uid: 'bob', password: PASSWORD, store: 'alpha' }] }),
    startDovecot({ name: 'alias', users: [{ name: 'alice', password: PASSWORD }, { name: 'bob', password: PASSWORD }] }),
  ]);
  front = await startFront({
    slapd,
    stores: { alpha: { currentMaster: 'a1', slots: { a1: { imapPort: dovecot.imapPort } } } },
    // Alice's entry is found by her uid or her mail address; the login goes on with her uid.
    directory: { user_filter: '(&(objectClass=inetOrgPerson)(|(uid={user})(mail={user})))', login_attribute: 'uid' },
  });
});

after(async () => {
  await front?.stop();
  await Promise.all([slapd?.stop(), dovecot?.stop()]);
});

/** An IMAP LOGIN through mailfront, kept open: the tagged answer and the client. */
async function login(user: string): Promise<{ line: string; client: LineClient }> {
  const client = await LineClient.connect(front.imapTrustedPort);
  await client.readLine();
  const result = await client.imap(`LOGIN "${user}" "${PASSWORD}"`);
  return { line: `${result.status} ${result.text}`, client };
}

/** Runs `mailfront ARGS` against the admin API. */
async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const { port } = front.mailfront.httpAddress()!;
  try {
    const { stdout, stderr } = await run(process.execPath, [join(repoRoot(), 'dist/src/cli/main.js'), ...args, '--url', `http://127.0.0.1:${port}`, '--token', ADMIN_TOKEN]);
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

async function get(path: string): Promise<Record<string, any>> {
  const { port } = front.mailfront.httpAddress()!;
  const response = await fetch(`http://127.0.0.1:${port}${path}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
  assert.equal(response.status, 200, path);
  return (await response.json()) as Record<string, any>;
}

test('whereis and sessions find the session of a user logged in with an alias under the name typed, and show the login name', async () => {
  const alice = await login(ALIAS);
  const bob = await login('bob');
  try {
    assert.match(alice.line, /^OK /);
    assert.match(bob.line, /^OK /);
    const whereis = await cli('whereis', ALIAS);
    assert.equal(whereis.code, 0, whereis.stderr);
    assert.match(whereis.stdout, /^user +a\.smith@example\.com$/m);
    assert.match(whereis.stdout, /^login name +alice$/m);
    assert.match(whereis.stdout, /^\S+ +imap +alice +alpha +a1 +127\.0\.0\.1 /m, whereis.stdout);
    assert.doesNotMatch(whereis.stdout, /no sessions|bob/);

    const json = await get(`/api/whereis/${encodeURIComponent(ALIAS)}`);
    assert.equal(json['loginName'], 'alice');
    assert.deepEqual(json['sessions'].map((s: { user: string }) => s.user), ['alice']);
    // By the login name, as before.
    const byName = await get('/api/whereis/alice');
    assert.equal(byName['loginName'], 'alice');
    assert.equal(byName['sessions'].length, 1);

    const sessions = await cli('sessions', '--user', ALIAS);
    assert.equal(sessions.code, 0, sessions.stderr);
    assert.match(sessions.stdout, /^\S+ +imap +alice +alpha +a1 /m, sessions.stdout);
    assert.doesNotMatch(sessions.stdout, /bob/);
    assert.equal(sessions.stderr, '');
    const listed = await get(`/api/sessions?user=${encodeURIComponent(ALIAS)}`);
    assert.equal(listed['sessions'].length, 1);
    assert.deepEqual(listed['entry'], { dn: slapd.userDn('alice'), loginName: 'alice' });
    // The other filters still apply.
    assert.equal((await get(`/api/sessions?user=${encodeURIComponent(ALIAS)}&store=beta`))['sessions'].length, 0);
    assert.equal((await get('/api/sessions'))['sessions'].length, 2);
  } finally {
    alice.client.close();
    bob.client.close();
  }
});
