/**
 * A store in maintenance, with real servers: store alpha (Dovecot a1, with ManageSieve), store
 * beta (Dovecot b1). With alpha in maintenance an authenticated IMAP, POP3 and ManageSieve login
 * is refused at once with the store's reason (no slot dialled, no hold), a wrong password still
 * gets the usual refusal; turning it on drains alpha's spliced sessions (told the reason) and
 * leaves beta's alone; a login held for alpha's master is refused when it comes on; alpha's slots
 * are not probed meanwhile; turning it off lets logins through again. The same from LDAP store
 * entries (mailfrontMaintenance), and the admin API and `mailfront maintenance` write it.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { chmod, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ImapFlow } from 'imapflow';
import type { ImapFlowOptions } from 'imapflow';
import { promisify } from 'node:util';
import { parse, stringify } from 'yaml';
import { LDAP_STORES_DN, LineClient, repoRoot, startDovecot, startSlapd } from './servers/index.js';
import type { Dovecot, Slapd } from './servers/index.js';
import { ADMIN_TOKEN, makeMessage, registerPasswords, startFront, waitForLog } from './front.js';
import type { Front } from './front.js';

const run = promisify(execFile);
const PASSWORD = 'Maintenance-pw-7a41';
const REASON = 'Mailbox migration until 06:00 UTC, please wait and try again later.';
const SPREAD_MS = 300;
const HOLD_MS = 8_000;

let slapd: Slapd;
let a1: Dovecot;
let b1: Dovecot;

/** The store map with alpha's `maintenance` as given (undefined: no key). */
function storesDocument(maintenance?: unknown): Record<string, unknown> {
  return {
    stores: {
      alpha: { current_master: 'a1', ...(maintenance !== undefined ? { maintenance } : {}), slots: { a1: { host: '127.0.0.1', imap_port: a1.imapPort, pop3_port: a1.pop3Port, sieve_port: a1.sievePort } } },
      beta: { current_master: 'b1', slots: { b1: { host: '127.0.0.1', imap_port: b1.imapPort, pop3_port: b1.pop3Port } } },
    },
  };
}

/** Writes the store map and waits until mailfront has alpha's maintenance as `reason` (null: off). */
async function setMaintenance(front: Front, maintenance: unknown, reason: string | null): Promise<void> {
  await writeFile(front.storesFile, stringify(storesDocument(maintenance)));
  await maintenanceInForce(front, reason);
}

async function maintenanceInForce(front: Front, reason: string | null, timeoutMs = 5_000): Promise<void> {
  const inForce = (): boolean => front.mailfront.currentStoreMap().stores.get('alpha')?.maintenance === reason;
  const deadline = Date.now() + timeoutMs;
  while (!inForce() && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  assert.ok(inForce(), `alpha's maintenance in force is ${JSON.stringify(front.mailfront.currentStoreMap().stores.get('alpha')?.maintenance)}, not ${JSON.stringify(reason)}`);
}

/** Runs `mailfront ARGS` against `front`'s admin API: exit code, stdout, stderr. */
async function cli(front: Front, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  const { port } = front.mailfront.httpAddress()!;
  try {
    const { stdout, stderr } = await run(process.execPath, [join(repoRoot(), 'dist/src/cli/main.js'), ...args, '--url', `http://127.0.0.1:${port}`, '--token', ADMIN_TOKEN]);
    return { code: 0, stdout, stderr };
  } catch (error) {
    const e = error as { code: number; stdout: string; stderr: string };
    return { code: e.code, stdout: e.stdout, stderr: e.stderr };
  }
}

async function api(front: Front, path: string, body: unknown): Promise<{ status: number; json: Record<string, unknown> }> {
  const { port } = front.mailfront.httpAddress()!;
  const response = await fetch(`http://127.0.0.1:${port}${path}`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}`, 'content-type': 'application/json' }, body: JSON.stringify(body) });
  return { status: response.status, json: (await response.json()) as Record<string, unknown> };
}

function client(front: Front, user: string): ImapFlow {
  return new ImapFlow({ host: '127.0.0.1', port: front.imapTrustedPort, secure: false, doSTARTTLS: false, auth: { user, pass: PASSWORD }, logger: false, maxIdleTime: 0 } as ImapFlowOptions);
}

/** An IMAP LOGIN through mailfront: the tagged answer and how long it took. */
async function imapLogin(front: Front, user: string, password = PASSWORD): Promise<{ line: string; ms: number }> {
  const c = await LineClient.connect(front.imapTrustedPort);
  try {
    await c.readLine();
    const started = Date.now();
    c.send(`t1 LOGIN ${user} ${password}`);
    const line = await c.readLine(HOLD_MS + 5_000);
    return { line, ms: Date.now() - started };
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

before(async () => {
  registerPasswords(PASSWORD);
  slapd = await startSlapd({ users: [{ uid: 'ann', password: PASSWORD, store: 'alpha' }, { uid: 'ava', password: PASSWORD, store: 'alpha' }, { uid: 'bea', password: PASSWORD, store: 'beta' }] });
  [a1, b1] = await Promise.all([
    startDovecot({ name: 'mt-a1', users: [{ name: 'ann', password: PASSWORD }, { name: 'ava', password: PASSWORD }], sieve: true }),
    startDovecot({ name: 'mt-b1', users: [{ name: 'bea', password: PASSWORD }] }),
  ]);
  await a1.deliver('ann', makeMessage('I am a1'));
  await b1.deliver('bea', makeMessage('I am b1'));
});

after(async () => {
  await Promise.all([slapd?.stop(), a1?.stop(), b1?.stop()]);
});

describe('maintenance from the store map file', () => {
  let front: Front;
  before(async () => {
    front = await startFront({
      slapd,
      stores: { alpha: { currentMaster: 'a1', slots: { a1: { imapPort: a1.imapPort } } } },
      sieve: true,
      failover: { drain_spread_ms: SPREAD_MS, hold_ms: HOLD_MS },
      health: { interval_ms: 1_000, timeout_ms: 500 },
    });
    await setMaintenance(front, undefined, null);
  });
  after(async () => {
    await front?.stop();
  });

  test('a store in maintenance refuses an authenticated IMAP, POP3 and ManageSieve login at once with its reason; a wrong password gets the usual refusal', async () => {
    await setMaintenance(front, REASON, REASON);
    // Its master is stopped, as for a Dovecot upgrade: nothing is dialled, so nothing is held.
    await a1.stopOnly();
    try {
      const mark = front.logs.length;
      const before = await metric(front, 'mailfront_logins_total', 'protocol="imap",result="maintenance"');
      const imap = await imapLogin(front, 'ann');
      assert.equal(imap.line, `t1 NO [UNAVAILABLE] ${REASON}`);
      assert.ok(imap.ms < 2_000, `refused after ${imap.ms} ms (the hold is ${HOLD_MS} ms)`);
      assert.equal(await metric(front, 'mailfront_logins_total', 'protocol="imap",result="maintenance"'), before + 1);
      const failed = await waitForLog(front, (l) => l['event'] === 'session.login_failed' && l['user'] === 'ann', 5_000, mark);
      assert.equal(failed['kind'], 'maintenance');
      assert.equal(failed['code'], 'STORE_MAINTENANCE');
      assert.equal(failed['store'], 'alpha');
      assert.equal(failed['level'], 'info', 'an info line: the operator asked for it');
      const noise = front.logs.slice(mark).filter((l) => l['event'] === 'session.backend_retry' || l['event'] === 'session.backend_connected');
      assert.deepEqual(noise, [], 'no slot was dialled');

      // An unauthenticated client learns nothing of the store.
      assert.equal((await imapLogin(front, 'ann', 'wrong-password')).line, 't1 NO [AUTHENTICATIONFAILED] Authentication failed.');

      const pop3 = await LineClient.connect(front.pop3TrustedPort);
      try {
        await pop3.readLine();
        await pop3.pop3('USER ann');
        pop3.send(`PASS ${PASSWORD}`);
        assert.equal(await pop3.readLine(), `-ERR [SYS/TEMP] ${REASON}`);
      } finally {
        pop3.close();
      }

      const sieve = await LineClient.connect(front.sieveTrustedPort!);
      try {
        for (let line = await sieve.readLine(); !line.startsWith('OK'); line = await sieve.readLine());
        sieve.send(`AUTHENTICATE "PLAIN" "${Buffer.from(`\0ann\0${PASSWORD}`).toString('base64')}"`);
        assert.equal(await sieve.readLine(), `NO (TRYLATER) "${REASON}"`);
      } finally {
        sieve.close();
      }
    } finally {
      await a1.startAgain();
      await setMaintenance(front, false, null);
    }
  });

  test('turning maintenance on drains the store\'s spliced sessions, told its reason, and leaves another store\'s alone; off lets logins through again', async () => {
    const alpha = client(front, 'ann');
    const beta = client(front, 'bea');
    let alphaClosed = false;
    let betaClosed = false;
    alpha.on('close', () => (alphaClosed = true));
    beta.on('close', () => (betaClosed = true));
    alpha.on('error', () => undefined);
    beta.on('error', () => undefined);
    const raw = await LineClient.connect(front.imapTrustedPort);
    try {
      await Promise.all([alpha.connect(), beta.connect()]);
      await Promise.all([alpha.mailboxOpen('INBOX'), beta.mailboxOpen('INBOX')]);
      void alpha.idle().catch(() => undefined);
      await raw.readLine();
      raw.send(`t1 LOGIN ava ${PASSWORD}`);
      assert.match(await raw.readLine(), /^t1 OK /);
      assert.equal(front.mailfront.registry.onSlot('a1').length, 2);

      const mark = front.logs.length;
      await setMaintenance(front, REASON, REASON);
      const event = await waitForLog(front, (l) => l['event'] === 'storemap.maintenance' && l['store'] === 'alpha', 5_000, mark);
      assert.equal(event['maintenance'], true);
      assert.equal(event['reason'], REASON);
      assert.equal(event['sessions'], 2);
      assert.equal(await raw.readLine(SPREAD_MS + 5_000), `* BYE [UNAVAILABLE] ${REASON}`);
      assert.equal(await raw.waitClosed(5_000), true);
      const deadline = Date.now() + SPREAD_MS + 5_000;
      while (!alphaClosed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
      assert.equal(alphaClosed, true, 'the imapflow session of the store in maintenance is closed');
      const drained = front.logs.slice(mark).filter((l) => l['event'] === 'session.drained');
      assert.deepEqual(drained.map((l) => [l['user'], l['maintenance']]).sort(), [['ann', true], ['ava', true]]);
      // beta's session is untouched and still works.
      assert.equal(betaClosed, false);
      await beta.noop();
      assert.equal((await imapLogin(front, 'ann')).line, `t1 NO [UNAVAILABLE] ${REASON}`);

      const offMark = front.logs.length;
      await setMaintenance(front, false, null);
      const off = await waitForLog(front, (l) => l['event'] === 'storemap.maintenance' && l['store'] === 'alpha', 5_000, offMark);
      assert.equal(off['maintenance'], false);
      assert.equal(off['level'], 'info');
      assert.match((await imapLogin(front, 'ann')).line, /^t1 OK /);
      assert.deepEqual(front.logs.slice(offMark).filter((l) => l['event'] === 'session.drained'), [], 'turning it off drains nothing');
    } finally {
      raw.close();
      await Promise.all([alpha, beta].map((c) => c.logout().catch(() => c.close())));
    }
  });

  test('a login held for the store\'s master is refused when maintenance comes on; the store\'s slots are not probed meanwhile', async () => {
    await a1.pause();
    const c = await LineClient.connect(front.imapTrustedPort);
    try {
      await c.readLine();
      const mark = front.logs.length;
      c.send(`t1 LOGIN ann ${PASSWORD}`);
      // Connecting to a master that never greets.
      await waitForLog(front, (l) => l['event'] === 'session.authenticated' && l['user'] === 'ann', 5_000, mark);
      await new Promise((r) => setTimeout(r, 300));
      const started = Date.now();
      await setMaintenance(front, true, (await import('../../src/routing/storemap.js')).DEFAULT_MAINTENANCE_REASON);
      const line = await c.readLine(HOLD_MS);
      assert.equal(line, 't1 NO [UNAVAILABLE] Your mailbox is down for maintenance, please wait and try again later.');
      assert.ok(Date.now() - started < 2_000, `refused ${Date.now() - started} ms after maintenance came on`);
      const event = await waitForLog(front, (l) => l['event'] === 'storemap.maintenance' && l['store'] === 'alpha', 5_000, mark);
      assert.equal(event['logins'], 1);
      // Probes of a1 (every second, 500 ms to answer) pause: no "slot is down" about it.
      const quiet = front.logs.length;
      await new Promise((r) => setTimeout(r, 2_500));
      assert.deepEqual(front.logs.slice(quiet).filter((l) => l['event'] === 'slot.health' && l['slot'] === 'a1'), []);
      const stores = (await (await fetch(`http://127.0.0.1:${front.mailfront.httpAddress()!.port}/api/stores`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).json()) as { stores: Array<{ store: string; maintenance: boolean; maintenanceReason: string | null; slots: Array<{ health: string }> }> };
      const alpha = stores.stores.find((s) => s.store === 'alpha')!;
      assert.equal(alpha.maintenance, true);
      assert.equal(alpha.maintenanceReason, 'Your mailbox is down for maintenance, please wait and try again later.');
      assert.deepEqual(alpha.slots.map((s) => s.health), ['paused']);
      const whereis = (await (await fetch(`http://127.0.0.1:${front.mailfront.httpAddress()!.port}/api/whereis/ann`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).json()) as Record<string, unknown>;
      assert.equal(whereis['maintenance'], alpha.maintenanceReason);
      assert.match(String(whereis['problem']), /^store "alpha" is in maintenance/);
      assert.equal(await metric(front, 'mailfront_store_maintenance', 'store="alpha"'), 1);
      assert.equal(await metric(front, 'mailfront_store_maintenance', 'store="beta"'), 0);
    } finally {
      c.close();
      a1.resume();
      await setMaintenance(front, false, null);
    }
  });
});

describe('maintenance written through the admin API and the CLI (file store map)', () => {
  let front: Front;
  before(async () => {
    front = await startFront({ slapd, stores: { alpha: { currentMaster: 'a1', slots: { a1: { imapPort: a1.imapPort } } } }, failover: { drain_spread_ms: SPREAD_MS } });
    await setMaintenance(front, undefined, null);
  });
  after(async () => {
    await front?.stop();
  });

  test('`mailfront maintenance alpha on --reason` writes the reason into the file (comments and mode kept) and refuses logins; `off` removes it', async () => {
    await writeFile(front.storesFile, `# the operator's comment\n${stringify(storesDocument())}`);
    await chmod(front.storesFile, 0o640);
    await front.mailfront.reloadStoreMap();
    const mark = front.logs.length;
    const on = await cli(front, 'maintenance', 'alpha', 'on', '--reason', REASON);
    assert.equal(on.code, 0, on.stderr);
    assert.match(on.stdout, /^store alpha: maintenance on \(store map version \d+\)$/m);
    const text = await readFile(front.storesFile, 'utf8');
    assert.match(text, /^# the operator's comment$/m);
    assert.equal((parse(text) as { stores: { alpha: { maintenance: unknown } } }).stores.alpha.maintenance, REASON);
    assert.equal((await stat(front.storesFile)).mode & 0o777, 0o640);
    assert.equal(front.mailfront.currentStoreMap().stores.get('alpha')?.maintenance, REASON, 'in force when the command returns');
    const written = await waitForLog(front, (l) => l['event'] === 'storemap.maintenance_written', 5_000, mark);
    assert.equal(written['store'], 'alpha');
    assert.equal((await imapLogin(front, 'ann')).line, `t1 NO [UNAVAILABLE] ${REASON}`);

    const stores = await cli(front, 'stores');
    assert.match(stores.stdout, /MAINTENANCE/);
    assert.ok(stores.stdout.includes(`store alpha in maintenance, logins refused: ${REASON}`), stores.stdout);

    const off = await cli(front, 'maintenance', 'alpha', 'off');
    assert.equal(off.code, 0, off.stderr);
    assert.equal((parse(await readFile(front.storesFile, 'utf8')) as { stores: { alpha: Record<string, unknown> } }).stores.alpha['maintenance'], undefined);
    assert.match((await imapLogin(front, 'ann')).line, /^t1 OK /);
  });

  test('the API takes {"on": true} for the default text, refuses a reason the store map would refuse (400, nothing written) and an unknown store (404)', async () => {
    const { DEFAULT_MAINTENANCE_REASON } = await import('../../src/routing/storemap.js');
    const on = await api(front, '/api/stores/alpha/maintenance', { on: true });
    assert.equal(on.status, 200, JSON.stringify(on.json));
    assert.equal((parse(await readFile(front.storesFile, 'utf8')) as { stores: { alpha: { maintenance: unknown } } }).stores.alpha.maintenance, true);
    assert.equal(front.mailfront.currentStoreMap().stores.get('alpha')?.maintenance, DEFAULT_MAINTENANCE_REASON);
    const before = await readFile(front.storesFile, 'utf8');
    const bad = await api(front, '/api/stores/alpha/maintenance', { on: true, reason: '[ALERT] forged\r\nA1 OK' });
    assert.equal(bad.status, 400);
    assert.match(String(bad.json['error']), /maintenance of store "alpha" not written: expected false, true, or the reason clients are told/);
    assert.equal(await readFile(front.storesFile, 'utf8'), before, 'nothing written');
    assert.equal((await api(front, '/api/stores/nowhere/maintenance', { on: true })).status, 404);
    assert.equal((await api(front, '/api/stores/alpha/maintenance', { on: false, reason: 'x' })).status, 400);
    assert.equal((await cli(front, 'maintenance', 'alpha', 'off', '--reason', 'x')).code, 2);
    assert.equal((await api(front, '/api/stores/alpha/maintenance', { on: false })).status, 200);
    assert.equal(front.mailfront.currentStoreMap().stores.get('alpha')?.maintenance, null);
  });
});

describe('maintenance from LDAP store entries (mailfrontMaintenance)', () => {
  let front: Front;
  const storeDn = `cn=alpha,${LDAP_STORES_DN}`;
  before(async () => {
    await slapd.modify(
      [
        `dn: ${storeDn}`,
        'changetype: add',
        'objectClass: mailfrontStore',
        'cn: alpha',
        'mailfrontCurrentMaster: a1',
        '',
        `dn: cn=a1,${storeDn}`,
        'changetype: add',
        'objectClass: mailfrontSlot',
        'cn: a1',
        'mailfrontHost: 127.0.0.1',
        `mailfrontImapPort: ${a1.imapPort}`,
        '',
      ].join('\n'),
    );
    front = await startFront({ slapd, stores: { alpha: { currentMaster: 'a1', slots: { a1: { imapPort: a1.imapPort } } } }, storeMapLdapBase: LDAP_STORES_DN, failover: { drain_spread_ms: SPREAD_MS } });
  });
  after(async () => {
    await front?.stop();
  });

  test('the polls see mailfrontMaintenance added (TRUE: the default text), replaced by a reason, and deleted', async () => {
    assert.match((await imapLogin(front, 'ann')).line, /^t1 OK /);
    const { DEFAULT_MAINTENANCE_REASON } = await import('../../src/routing/storemap.js');
    await slapd.modify(`dn: ${storeDn}\nchangetype: modify\nadd: mailfrontMaintenance\nmailfrontMaintenance: TRUE\n`);
    await maintenanceInForce(front, DEFAULT_MAINTENANCE_REASON);
    assert.equal((await imapLogin(front, 'ann')).line, `t1 NO [UNAVAILABLE] ${DEFAULT_MAINTENANCE_REASON}`);
    await slapd.modify(`dn: ${storeDn}\nchangetype: modify\nreplace: mailfrontMaintenance\nmailfrontMaintenance: ${REASON}\n`);
    await maintenanceInForce(front, REASON);
    assert.equal((await imapLogin(front, 'ann')).line, `t1 NO [UNAVAILABLE] ${REASON}`);
    await slapd.modify(`dn: ${storeDn}\nchangetype: modify\ndelete: mailfrontMaintenance\n`);
    await maintenanceInForce(front, null);
    assert.match((await imapLogin(front, 'ann')).line, /^t1 OK /);
  });

  test('the admin API writes maintenance as a modify of mailfrontMaintenance, and off deletes it', async () => {
    const search = async (): Promise<string> => (await run('ldapsearch', ['-x', '-LLL', '-o', 'ldif-wrap=no', '-H', slapd.url, '-D', slapd.rootDn, '-w', slapd.rootPassword, '-b', storeDn, '-s', 'base', 'mailfrontMaintenance'])).stdout;
    const on = await api(front, '/api/stores/alpha/maintenance', { on: true, reason: REASON });
    assert.equal(on.status, 200, JSON.stringify(on.json));
    assert.ok((await search()).includes(`mailfrontMaintenance: ${REASON}`), await search());
    assert.equal(front.mailfront.currentStoreMap().stores.get('alpha')?.maintenance, REASON);
    assert.equal((await api(front, '/api/stores/alpha/maintenance', { on: true, reason: 'FALSE' })).status, 400, 'a reason LDAP would read back as off');
    const off = await api(front, '/api/stores/alpha/maintenance', { on: false });
    assert.equal(off.status, 200, JSON.stringify(off.json));
    assert.doesNotMatch(await search(), /mailfrontMaintenance/);
    assert.equal(front.mailfront.currentStoreMap().stores.get('alpha')?.maintenance, null);
    assert.equal((await api(front, '/api/stores/alpha/maintenance', { on: false })).status, 200, 'off when off writes nothing and fails nothing');
  });
});
