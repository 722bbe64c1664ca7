/**
 * With usernames.lowercase off, the throttle counts a user by the lower-cased name (every
 * spelling one user): whereis and unthrottle of the name as typed ("Frank", as the logs show it)
 * must read and clear that count, not one of their own spelling that nothing counts. Real slapd
 * and Dovecot; the CLI against the admin API.
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
const PASSWORD = 'Unthrottle-case-pw-9f1';
const WRONG = ['Unthrottle-case-w1', 'Unthrottle-case-w2', 'Unthrottle-case-w3'];
let slapd: Slapd;
let dovecot: Dovecot;
let front: Front;

before(async () => {
  registerPasswords(PASSWORD, ...WRONG);
  [slapd, dovecot] = await Promise.all([startSlapd({ users: [{ uid: 'frank', password: PASSWORD, store: 'alpha' }] }), startDovecot({ name: 'unthrottlecase', users: [{ name: 'frank', password: PASSWORD }] })]);
  front = await startFront({
    slapd,
    stores: { alpha: { currentMaster: 'a1', slots: { a1: { imapPort: dovecot.imapPort } } } },
    trustedNetworks: ['127.0.0.1/32'],
    usernames: { lowercase: false },
    throttle: { enabled: true, base_delay_ms: 10, max_delay_ms: 20, failures_per_user: 3, failures_per_address: 50, failure_window_ms: 120_000, refusal_ms: 600_000 },
  });
});

after(async () => {
  await front?.stop();
  await Promise.all([slapd?.stop(), dovecot?.stop()]);
});

async function login(user: string, password: string): Promise<string> {
  const client = await LineClient.connect(front.imapTrustedPort);
  try {
    await client.readLine();
    const result = await client.imap(`LOGIN "${user}" "${password}"`);
    return `${result.status} ${result.text}`;
  } finally {
    client.close();
  }
}

async function cli(...args: string[]): Promise<string> {
  const { port } = front.mailfront.httpAddress()!;
  const { stdout } = await run(process.execPath, [join(repoRoot(), 'dist/src/cli/main.js'), ...args, '--url', `http://127.0.0.1:${port}`, '--token', ADMIN_TOKEN]);
  return stdout;
}

test('whereis and unthrottle of a mixed-case name read and clear the count its logins made', async () => {
  for (const wrong of WRONG) assert.match(await login('Frank', wrong), /^NO /);
  assert.match(await login('Frank', PASSWORD), /^NO \[LIMIT\]/);
  assert.match(await cli('whereis', 'Frank'), /^throttle +Frank: 3 of 3 failures counted, logins refused for \d+ s more/m);
  assert.match(await cli('unthrottle', 'Frank'), /cleared 3 of 3 failures counted/);
  assert.match(await login('Frank', PASSWORD), /^OK /);
});
