/**
 * A burst of parallel logins from one address, each as another user (password spraying), through
 * a running mailfront (real slapd and Dovecot): failures_per_address bounds the wrong passwords
 * that reach the directory, also when they all arrive before the first is counted; once the
 * refusal has run out, one at a time again. A burst of right passwords from one address (a NAT)
 * all get in, and a trusted network stays exempt per address.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { LineClient, startDovecot, startSlapd } from './servers/index.js';
import type { Dovecot, Slapd } from './servers/index.js';
import { registerPasswords, startFront } from './front.js';
import type { Front } from './front.js';

const PASSWORD = 'Spray-pw-61d0';
const USERS = Array.from({ length: 40 }, (_, i) => `spray${i}`);
const LIMIT = 6;
const REFUSAL_MS = 1_000;

let slapd: Slapd;
let dovecot: Dovecot;
let front: Front;

before(async () => {
  slapd = await startSlapd({ users: USERS.map((uid) => ({ uid, password: PASSWORD, store: 'alpha' })) });
  dovecot = await startDovecot({ name: 'spray', users: USERS.map((name) => ({ name, password: PASSWORD })) });
  const stores = { alpha: { currentMaster: 's1', slots: { s1: { imapPort: dovecot.imapPort, pop3Port: dovecot.pop3Port } } } };
  front = await startFront({
    slapd,
    stores,
    throttle: { enabled: true, base_delay_ms: 0, max_delay_ms: 0, failures_per_user: 100, failures_per_address: LIMIT, refusal_ms: REFUSAL_MS },
    trustedNetworks: ['127.0.0.9/32'],
    session: { auth_failure_delay_ms: 100 },
  });
});
after(async () => {
  await front?.stop();
  await Promise.all([slapd?.stop(), dovecot?.stop()]);
});

/** Every user of `users` logs in at once from `localAddress` (greeted first, then every LOGIN); the answers, in order. */
async function burst(users: readonly string[], password: (i: number) => string, localAddress: string): Promise<string[]> {
  const clients = await Promise.all(users.map(() => LineClient.connect(front.imapTrustedPort, { localAddress })));
  try {
    await Promise.all(clients.map((c) => c.readLine()));
    clients.forEach((c, i) => {
      registerPasswords(password(i));
      c.send(`t1 LOGIN ${users[i]} ${password(i)}`);
    });
    return await Promise.all(clients.map((c) => c.readLine(15_000)));
  } finally {
    for (const c of clients) c.close();
  }
}

/** The logins from `client` since log line `mark` that the directory refused (WRONG_PASSWORD). */
function checked(mark: number, client: string): number {
  return front.logs.slice(mark).filter((l) => l['event'] === 'session.login_failed' && l['client'] === client && l['code'] === 'WRONG_PASSWORD').length;
}

describe('failures_per_address against parallel logins', () => {
  test('forty wrong passwords at once from one address, each as another user: at most the limit reach the directory, the rest are refused; once the refusal has run out, one at a time', async () => {
    const mark = front.logs.length;
    const answers = await burst(USERS, (i) => `spray-wrong-${i}`, '127.0.0.6');
    const wrong = checked(mark, '127.0.0.6');
    const refused = answers.filter((line) => /^t1 NO \[LIMIT\] /.test(line)).length;
    assert.ok(wrong <= LIMIT, `${wrong} of the 40 wrong passwords reached the directory (failures_per_address ${LIMIT})`);
    assert.equal(wrong + refused, USERS.length, `every other login was refused by the throttle (${refused})`);

    await new Promise((r) => setTimeout(r, REFUSAL_MS + 300));
    const again = front.logs.length;
    const second = await burst(USERS, (i) => `spray-again-${i}`, '127.0.0.6');
    assert.equal(checked(again, '127.0.0.6'), 1, 'the failures are still remembered: one check, which refuses the address again');
    assert.equal(second.filter((line) => /^t1 NO \[LIMIT\] /.test(line)).length, USERS.length - 1);
  });

  test('right passwords at once from one address (users behind a NAT), more than the limit: every login gets in', async () => {
    const users = USERS.slice(0, 3 * LIMIT);
    const answers = await burst(users, () => PASSWORD, '127.0.0.8');
    assert.deepEqual(answers.filter((line) => !/^t1 OK /.test(line)), []);
  });

  test('a trusted network is not counted per address: every wrong password of a burst reaches the directory', async () => {
    const mark = front.logs.length;
    const users = USERS.slice(0, 2 * LIMIT);
    const answers = await burst(users, (i) => `trusted-wrong-${i}`, '127.0.0.9');
    assert.equal(checked(mark, '127.0.0.9'), users.length);
    assert.deepEqual(answers.filter((line) => /\[LIMIT\]/.test(line)), []);
  });
});
