/**
 * A user held by the directory (directory.hold_attribute, mailfrontHold of the shipped schema:
 * a mailbox being moved between stores), with real servers: slapd, store alpha (Dovecot a1,
 * with ManageSieve) and store beta (Dovecot b1). A held user with the right password is refused
 * on IMAP, POP3 and ManageSieve with the hold's reason, as a store in maintenance is (no slot
 * dialled, no failure for the throttle); a wrong password still gets the usual refusal; TRUE and
 * FALSE are read in any case, and a value that cannot be told holds with the default reason and
 * is logged; a login that sees the hold closes the user's spliced sessions, told the reason; with
 * the caches on, `mailfront kick` makes the hold, and its end, seen at once.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { LineClient, ldifLine, startDovecot, startSlapd } from './servers/index.js';
import type { Dovecot, Slapd } from './servers/index.js';
import { ADMIN_TOKEN, makeMessage, registerPasswords, startFront, waitForLog } from './front.js';
import type { Front } from './front.js';

const PASSWORD = 'Hold-pw-3c5e';
const WRONG = 'Hold-wrong-pw-9d21';
const REASON = 'Mailbox moving to a new server until 06:00 UTC, please wait and try again later.';
const HOLD = 'mailfrontHold';
/** What a user held with TRUE, or with a value that cannot be told, is told (auth/directory.ts DEFAULT_HOLD_REASON). */
const DEFAULT_HOLD_REASON = 'Your mailbox is being moved, please wait and try again later.';

let slapd: Slapd;
let a1: Dovecot;
let b1: Dovecot;

/** Sets `uid`'s mailfrontHold to `value` (undefined: deleted), as an operator's ldapmodify does. */
async function setHold(uid: string, value: string | undefined): Promise<void> {
  const change = value === undefined ? `delete: ${HOLD}\n` : `replace: ${HOLD}\n${ldifLine(HOLD, value)}\n`;
  await slapd.modify(`dn: ${slapd.userDn(uid)}\nchangetype: modify\n${change}`).catch((error: unknown) => {
    // Deleting a value that is not there.
    if (value !== undefined || !String((error as { stderr?: string }).stderr ?? error).includes('No such attribute')) throw error;
  });
}

/** An IMAP LOGIN through mailfront: the tagged answer and how long it took. */
async function imapLogin(front: Front, user: string, password = PASSWORD): Promise<{ line: string; ms: number }> {
  const c = await LineClient.connect(front.imapTrustedPort);
  try {
    await c.readLine();
    const started = Date.now();
    c.send(`t1 LOGIN ${user} ${password}`);
    const line = await c.readLine();
    return { line, ms: Date.now() - started };
  } finally {
    c.close();
  }
}

/** An IMAP session logged in through mailfront, left open. */
async function imapSession(front: Front, user: string): Promise<LineClient> {
  const c = await LineClient.connect(front.imapTrustedPort);
  await c.readLine();
  c.send(`t1 LOGIN ${user} ${PASSWORD}`);
  const line = await c.readLine();
  assert.match(line, /^t1 OK /, `${user}'s login`);
  return c;
}

async function pop3Login(front: Front, user: string): Promise<string> {
  const c = await LineClient.connect(front.pop3TrustedPort);
  try {
    await c.readLine();
    await c.pop3(`USER ${user}`);
    c.send(`PASS ${PASSWORD}`);
    return await c.readLine();
  } finally {
    c.close();
  }
}

async function sieveGreeting(c: LineClient): Promise<void> {
  for (let line = await c.readLine(); !line.startsWith('OK'); line = await c.readLine());
}

async function sieveLogin(front: Front, user: string): Promise<string> {
  const c = await LineClient.connect(front.sieveTrustedPort!);
  try {
    await sieveGreeting(c);
    c.send(`AUTHENTICATE "PLAIN" "${Buffer.from(`\0${user}\0${PASSWORD}`).toString('base64')}"`);
    return await c.readLine();
  } finally {
    c.close();
  }
}

async function metric(front: Front, name: string, labels: string): Promise<number> {
  const { port } = front.mailfront.httpAddress()!;
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}}`));
  return line === undefined ? 0 : Number(line.split(' ').pop());
}

async function kick(front: Front, user: string): Promise<Record<string, unknown>> {
  const { port } = front.mailfront.httpAddress()!;
  const response = await fetch(`http://127.0.0.1:${port}/api/kick`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify({ user }) });
  assert.equal(response.status, 200);
  return (await response.json()) as Record<string, unknown>;
}

/** The lines since `mark` that show a slot dialled for a login. */
function dials(front: Front, mark: number): Array<Record<string, unknown>> {
  return front.logs.slice(mark).filter((l) => l['event'] === 'session.backend_connected' || l['event'] === 'session.backend_retry' || l['event'] === 'session.spliced');
}

before(async () => {
  registerPasswords(PASSWORD, WRONG);
  slapd = await startSlapd({
    users: [
      { uid: 'ann', password: PASSWORD, store: 'alpha' },
      { uid: 'ava', password: PASSWORD, store: 'alpha' },
      { uid: 'bea', password: PASSWORD, store: 'beta' },
    ],
  });
  [a1, b1] = await Promise.all([
    startDovecot({ name: 'hold-a1', users: [{ name: 'ann', password: PASSWORD }, { name: 'ava', password: PASSWORD }], sieve: true }),
    startDovecot({ name: 'hold-b1', users: [{ name: 'bea', password: PASSWORD }] }),
  ]);
  await a1.deliver('ann', makeMessage('I am a1'));
  await b1.deliver('bea', makeMessage('I am b1'));
});

after(async () => {
  await Promise.all([slapd?.stop(), a1?.stop(), b1?.stop()]);
});

function stores(): Parameters<typeof startFront>[0]['stores'] {
  return {
    alpha: { currentMaster: 'a1', slots: { a1: { imapPort: a1.imapPort, pop3Port: a1.pop3Port, sievePort: a1.sievePort! } } },
    beta: { currentMaster: 'b1', slots: { b1: { imapPort: b1.imapPort, pop3Port: b1.pop3Port } } },
  };
}

describe('a user held by the directory, caches off', () => {
  let front: Front;
  before(async () => {
    front = await startFront({
      slapd,
      stores: stores(),
      sieve: true,
      directory: { hold_attribute: HOLD },
      // Two distinct wrong passwords refuse the user: a held login counted as a failure would be the second.
      throttle: { enabled: true, failures_per_user: 2, failures_per_address: 1000, base_delay_ms: 50, max_delay_ms: 50 },
      failover: { hold_ms: 3_000 },
    });
  });
  after(async () => {
    await front?.stop();
  });

  test('a held user with the right password is refused on IMAP, POP3 and ManageSieve with the reason, no slot dialled, no failure for the throttle; a wrong password is the usual refusal', async () => {
    await setHold('ann', REASON);
    // The user's slot is stopped, as during a move: nothing is dialled, so nothing is held for it.
    await a1.stopOnly();
    try {
      const mark = front.logs.length;
      assert.equal((await imapLogin(front, 'ann', WRONG)).line, 't1 NO [AUTHENTICATIONFAILED] Authentication failed.', 'a client without the password learns nothing of the hold');
      const before = await metric(front, 'mailfront_logins_total', 'protocol="imap",result="held"');
      const imap = await imapLogin(front, 'ann');
      assert.equal(imap.line, `t1 NO [UNAVAILABLE] ${REASON}`);
      assert.ok(imap.ms < 2_000, `refused after ${imap.ms} ms (the hold for an unreachable master is 3000 ms)`);
      assert.equal(await metric(front, 'mailfront_logins_total', 'protocol="imap",result="held"'), before + 1);
      const failed = await waitForLog(front, (l) => l['event'] === 'session.login_failed' && l['kind'] === 'held', 5_000, mark);
      assert.equal(failed['code'], 'USER_HELD');
      assert.equal(failed['user'], 'ann');
      assert.equal(failed['store'], 'alpha');
      assert.equal(failed['level'], 'info', 'an info line: the operator asked for it');
      assert.match(String(failed['reason']), /holds the user \(directory\.hold_attribute mailfrontHold\)/);

      assert.equal(await pop3Login(front, 'ann'), `-ERR [SYS/TEMP] ${REASON}`);
      assert.equal(await sieveLogin(front, 'ann'), `NO (TRYLATER) "${REASON}"`);
      // Held logins are no failed passwords: one wrong password and these leave ann below the limit of two.
      assert.equal((await imapLogin(front, 'ann')).line, `t1 NO [UNAVAILABLE] ${REASON}`);
      assert.equal(await metric(front, 'mailfront_logins_total', 'protocol="pop3",result="held"'), 1);
      assert.equal(await metric(front, 'mailfront_logins_total', 'protocol="managesieve",result="held"'), 1);
      assert.deepEqual(dials(front, mark), [], 'no slot was dialled');
      assert.deepEqual(front.logs.slice(mark).filter((l) => l['event'] === 'throttle.refusing'), []);
      assert.equal(front.logs.slice(mark).filter((l) => l['event'] === 'session.login_failed' && l['kind'] === 'held').length, 4);
      // whereis says why the user's logins are refused.
      const { port } = front.mailfront.httpAddress()!;
      const whereis = (await (await fetch(`http://127.0.0.1:${port}/api/whereis/ann`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).json()) as Record<string, unknown>;
      assert.equal(whereis['held'], REASON);
      assert.equal(whereis['problem'], `the directory holds the user (directory.hold_attribute): its logins are refused with "${REASON}"`);
    } finally {
      await a1.startAgain();
      await setHold('ann', undefined);
    }
    // The hold cleared (no cache): the next login goes through, not throttled.
    assert.match((await imapLogin(front, 'ann')).line, /^t1 OK /);
  });

  test('TRUE and FALSE in any case; a value that cannot be told holds with the default reason, and is logged once', async () => {
    try {
      for (const on of ['TRUE', 'true', 'True']) {
        await setHold('ann', on);
        assert.equal((await imapLogin(front, 'ann')).line, `t1 NO [UNAVAILABLE] ${DEFAULT_HOLD_REASON}`, on);
      }
      for (const off of ['FALSE', 'false', 'fAlSe']) {
        await setHold('ann', off);
        assert.match((await imapLogin(front, 'ann')).line, /^t1 OK /, off);
      }
      const mark = front.logs.length;
      await setHold('ann', 'Umzug läuft, bitte warten');
      assert.equal((await imapLogin(front, 'ann')).line, `t1 NO [UNAVAILABLE] ${DEFAULT_HOLD_REASON}`, 'not ASCII');
      const warning = await waitForLog(front, (l) => l['event'] === 'directory.hold_value_refused', 5_000, mark);
      assert.equal(warning['level'], 'warn');
      assert.equal(warning['user'], 'ann');
      assert.equal(warning['attribute'], HOLD);
      assert.equal(warning['dn'], slapd.userDn('ann'));
      for (const bad of ['moving\tplease wait', 'x'.repeat(201), '[ALERT] moving, please wait', 'off']) {
        await setHold('ann', bad);
        assert.equal((await imapLogin(front, 'ann')).line, `t1 NO [UNAVAILABLE] ${DEFAULT_HOLD_REASON}`, JSON.stringify(bad));
      }
      assert.equal(front.logs.slice(mark).filter((l) => l['event'] === 'directory.hold_value_refused').length, 1, 'one warning a minute per entry, not one per login');
    } finally {
      await setHold('ann', undefined);
    }
  });

  test('a login that sees the hold closes the user\'s spliced sessions, told the reason; another user\'s stay', async () => {
    const imap = await imapSession(front, 'ann');
    const other = await imapSession(front, 'bea');
    const sieve = await LineClient.connect(front.sieveTrustedPort!);
    try {
      await sieveGreeting(sieve);
      sieve.send(`AUTHENTICATE "PLAIN" "${Buffer.from(`\0ann\0${PASSWORD}`).toString('base64')}"`);
      assert.match(await sieve.readLine(), /^OK/);
      assert.equal(front.mailfront.registry.ofUser('ann').length, 2);

      await setHold('ann', REASON);
      const mark = front.logs.length;
      assert.equal((await imapLogin(front, 'ann')).line, `t1 NO [UNAVAILABLE] ${REASON}`);
      assert.equal(await imap.readLine(5_000), `* BYE [UNAVAILABLE] ${REASON}`);
      assert.equal(await imap.waitClosed(5_000), true);
      assert.equal(await sieve.readLine(5_000), `BYE (TRYLATER) "${REASON}"`);
      assert.equal(await sieve.waitClosed(5_000), true);
      const kicked = front.logs.slice(mark).filter((l) => l['event'] === 'session.kicked');
      assert.deepEqual(kicked.map((l) => [l['user'], l['held']]), [['ann', true], ['ann', true]]);
      const failed = front.logs.slice(mark).find((l) => l['event'] === 'session.login_failed' && l['kind'] === 'held');
      assert.match(String(failed?.['reason']), /the user's 2 spliced sessions were closed$/);
      assert.equal(front.mailfront.registry.ofUser('ann').length, 0);
      // bea is not held: her session goes on.
      const noop = await other.imap('NOOP');
      assert.equal(noop.status, 'OK');
    } finally {
      imap.close();
      other.close();
      sieve.close();
      await setHold('ann', undefined);
    }
  });
});

describe('a user held by the directory, caches on', () => {
  let front: Front;
  before(async () => {
    front = await startFront({ slapd, stores: stores(), directory: { hold_attribute: HOLD, entry_cache_ttl_ms: 60_000, auth_cache_ttl_ms: 60_000 } });
  });
  after(async () => {
    await front?.stop();
  });

  test('a cached login does not see a hold set later until mailfront kick; a held answer is never cached as a login; the hold cleared is seen after a kick', async () => {
    try {
      assert.match((await imapLogin(front, 'ava')).line, /^t1 OK /);
      await setHold('ava', REASON);
      // Served from the cache of logins, as the README says: the hold is not seen yet.
      const cached = await imapSession(front, 'ava');
      try {
        const kicking = await kick(front, 'ava');
        assert.equal((kicking['kicked'] as unknown[]).length, 1);
        assert.ok(Number(kicking['forgotten']) >= 1, `forgotten: ${String(kicking['forgotten'])}`);
        assert.equal(await cached.waitClosed(5_000), true);
      } finally {
        cached.close();
      }
      // The directory read afresh: held, and held again (no login was cached for it).
      assert.equal((await imapLogin(front, 'ava')).line, `t1 NO [UNAVAILABLE] ${REASON}`);
      const mark = front.logs.length;
      assert.equal((await imapLogin(front, 'ava')).line, `t1 NO [UNAVAILABLE] ${REASON}`);
      assert.deepEqual(dials(front, mark), []);
      // The hold cleared: the entry cache still holds the held entry (at most entry_cache_ttl_ms), until a kick.
      await setHold('ava', undefined);
      assert.equal((await imapLogin(front, 'ava')).line, `t1 NO [UNAVAILABLE] ${REASON}`);
      await kick(front, 'ava');
      assert.match((await imapLogin(front, 'ava')).line, /^t1 OK /);
    } finally {
      await setHold('ava', undefined);
    }
  });
});

describe('a user held by the directory, the cache of logins keyed by protocol', () => {
  let front: Front;
  before(async () => {
    // {protocol} in the filter (matching every user here) keys the cache of logins by protocol:
    // an IMAP login cached says nothing of a POP3 one, which asks the directory.
    front = await startFront({ slapd, stores: stores(), directory: { hold_attribute: HOLD, user_filter: '(&(objectClass=inetOrgPerson)(uid={user})(!(description={protocol})))', entry_cache_ttl_ms: 0, auth_cache_ttl_ms: 60_000 } });
  });
  after(async () => {
    await front?.stop();
  });

  test('a login that sees the hold closes the sessions the cache let in, and the cache forgets the user, so that their clients do not come back in through it', async () => {
    try {
      assert.match((await imapLogin(front, 'ava')).line, /^t1 OK /);
      await setHold('ava', REASON);
      const cached = await imapSession(front, 'ava');
      try {
        assert.equal(await pop3Login(front, 'ava'), `-ERR [SYS/TEMP] ${REASON}`);
        assert.equal(await cached.readLine(5_000), `* BYE [UNAVAILABLE] ${REASON}`);
        assert.equal(await cached.waitClosed(5_000), true);
      } finally {
        cached.close();
      }
      // The client reconnects with the password the cache knew: the directory is asked.
      assert.equal((await imapLogin(front, 'ava')).line, `t1 NO [UNAVAILABLE] ${REASON}`);
    } finally {
      await setHold('ava', undefined);
    }
  });
});
