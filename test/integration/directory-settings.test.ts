/**
 * Directory settings a server refuses (a wrong bind_password, a base_dn it does not have) are the
 * config's fault, not an outage: a reload that brings them is refused, naming the key, the server
 * and its answer, and the directory in force keeps serving logins; a start with them is refused;
 * check-config names them; and a directory in force whose server refuses its settings makes
 * /readyz 503, where one that does not answer stays advisory (a 200 with `degraded`). When no
 * server answers, the new settings are put in force untried, with a warn line. Real slapd and
 * Dovecot (the rv-rolling review's bad-reload repro: both reloads were accepted, /readyz stayed
 * 200, and the logins through the balancer to that instance failed).
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { parse, stringify } from 'yaml';
import { LDAP_BASE_DN, LDAP_SERVICE_DN, LineClient, sshaHash, startDovecot, startSlapd } from './servers/index.js';
import type { Dovecot, Slapd } from './servers/index.js';
import { registerSecrets, startFront, waitForLog } from './front.js';
import type { Front } from './front.js';
import { MailfrontError } from '../../src/errors.js';

const CLI = join(dirname(fileURLToPath(import.meta.url)), '../../src/cli/main.js');
const PASSWORD = 'Dir-settings-pw-7e1d';
/** A mistyped service password: refused by slapd, and a secret the log must never show. */
const WRONG_SERVICE_PASSWORD = 'mistyped-service-secret-3b9f';
const MISSING_BASE_DN = `ou=peopel,${LDAP_BASE_DN}`;
let slapd: Slapd;
let master: Dovecot;

before(async () => {
  slapd = await startSlapd({ users: [{ uid: 'dora', password: PASSWORD, store: 'alpha' }] });
  master = await startDovecot({ name: 'dirset-m', users: [{ name: 'dora', password: PASSWORD }] });
  registerSecrets([WRONG_SERVICE_PASSWORD]);
});
after(async () => {
  await Promise.all([slapd?.stop(), master?.stop()]);
});

function front(directory: Record<string, unknown> = {}): Promise<Front> {
  return startFront({ slapd, stores: { alpha: { currentMaster: 'm', slots: { m: { imapPort: master.imapPort } } } }, directory });
}

async function loginLine(port: number): Promise<string> {
  const c = await LineClient.connect(port);
  try {
    await c.readLine();
    c.send(`a LOGIN dora ${PASSWORD}`);
    return await c.readLine(10_000);
  } finally {
    c.close();
  }
}

/** Rewrites the front's config file with `edit` applied to its directory section. */
function editDirectory(f: Front, edit: (directory: Record<string, unknown>) => void): void {
  const doc = parse(readFileSync(f.configFile, 'utf8')) as { directory: Record<string, unknown> };
  edit(doc.directory);
  writeFileSync(f.configFile, stringify(doc));
}

async function readyz(f: Front): Promise<{ status: number; body: { ready?: boolean; notReady?: unknown[]; degraded?: unknown[] } }> {
  const { host, port } = f.mailfront.httpAddress()!;
  const response = await fetch(`http://${host}:${port}/readyz`);
  return { status: response.status, body: (await response.json()) as { notReady?: unknown[]; degraded?: unknown[] } };
}

async function readyMetric(f: Front): Promise<string | undefined> {
  const { host, port } = f.mailfront.httpAddress()!;
  return (await (await fetch(`http://${host}:${port}/metrics`)).text()).split('\n').find((l) => /^mailfront_ready\b/.test(l));
}

function checkConfig(file: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, 'check-config', file], { timeout: 30_000 }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : -1, stdout, stderr });
    });
  });
}

const directoryOf = (f: Front): unknown => (f.mailfront as unknown as { directory: unknown }).directory;

test('a reload with a bind_password the server refuses is rejected naming the key and the answer; the directory in force keeps serving logins', async () => {
  const f = await front();
  try {
    assert.match(await loginLine(f.imapTrustedPort), /^a OK /);
    const inForce = directoryOf(f);
    const since = f.logs.length;
    // The password's file, as an operator rolling out a mistyped secret.
    writeFileSync(join(dirname(f.configFile), 'ldap.secret'), `${WRONG_SERVICE_PASSWORD}\n`);
    const reloaded = await f.mailfront.reload();
    assert.equal(reloaded.ok, false, 'the reload is refused');
    assert.match(reloaded.error ?? '', new RegExp(`directory\\.bind_password: ${slapd.url.replace(/[./]/g, '\\$&')} answered invalidCredentials \\(49\\) to the service bind \\(a wrong bind_password, or a bind_dn the server does not have: it answers both alike\\)`));
    const rejected = f.logs.slice(since).find((l) => l['event'] === 'config.rejected');
    assert.ok(rejected, 'config.rejected is logged');
    assert.equal(rejected['level'], 'error');
    assert.ok(!f.logs.slice(since).some((l) => l['event'] === 'config.reloaded' || l['event'] === 'directory.reconfigured'), 'nothing was put in force');
    assert.equal(directoryOf(f), inForce, 'the directory in force stays');
    for (let i = 0; i < 3; i++) assert.match(await loginLine(f.imapTrustedPort), /^a OK /, `login ${i}`);
    assert.ok(!f.rawLogs.some((l) => l.includes(WRONG_SERVICE_PASSWORD)), 'the password is never logged');
    const ready = await readyz(f);
    assert.equal(ready.status, 200);
    assert.equal(ready.body.notReady, undefined);
    // check-config says the same of the file.
    const checked = await checkConfig(f.configFile);
    assert.equal(checked.code, 1, checked.stdout);
    assert.ok(checked.stderr.includes(`directory.bind_password: expected settings the directory server takes (the service bind), found ${slapd.url} answered invalidCredentials (49) (a wrong bind_password, or a bind_dn the server does not have: it answers both alike)`), checked.stderr);
    assert.ok(!checked.stderr.includes(WRONG_SERVICE_PASSWORD) && !checked.stdout.includes(WRONG_SERVICE_PASSWORD));
  } finally {
    writeFileSync(join(dirname(f.configFile), 'ldap.secret'), `${slapd.bindPassword}\n`);
    await f.stop();
  }
});

test('a reload with a base_dn the server does not have is rejected naming the key and noSuchObject (32); check-config names it too', async () => {
  const f = await front();
  try {
    const inForce = directoryOf(f);
    editDirectory(f, (d) => {
      d['base_dn'] = MISSING_BASE_DN;
    });
    const reloaded = await f.mailfront.reload();
    assert.equal(reloaded.ok, false, 'the reload is refused');
    assert.match(reloaded.error ?? '', /directory\.base_dn: ldap:\/\/127\.0\.0\.1:\d+ answered noSuchObject \(32\)/);
    assert.equal(directoryOf(f), inForce);
    assert.match(await loginLine(f.imapTrustedPort), /^a OK /);
    const checked = await checkConfig(f.configFile);
    assert.equal(checked.code, 1, checked.stdout);
    assert.ok(checked.stderr.includes(`directory.base_dn: expected settings the directory server takes (the base search of base_dn), found ${slapd.url} answered noSuchObject (32)`), checked.stderr);
  } finally {
    await f.stop();
  }
});

test('with no directory server answering, a reload of new directory settings is accepted with a warn line, and check-config notes it without failing', async () => {
  const f = await front();
  try {
    await slapd.stopOnly();
    try {
      const since = f.logs.length;
      editDirectory(f, (d) => {
        d['urls'] = [slapd.url, slapd.url.replace('127.0.0.1', '127.0.0.2')];
      });
      const reloaded = await f.mailfront.reload();
      assert.equal(reloaded.ok, true, reloaded.error);
      const warned = f.logs.slice(since).find((l) => l['event'] === 'directory.settings_untried');
      assert.ok(warned, 'directory.settings_untried is logged');
      assert.equal(warned['level'], 'warn');
      assert.match(String(warned['err']), /ECONNREFUSED/);
      assert.ok(f.logs.slice(since).some((l) => l['event'] === 'directory.reconfigured'));
      const ready = await readyz(f);
      assert.equal(ready.status, 200, 'an outage is advisory');
      assert.deepEqual(ready.body.degraded, [{ name: 'directory', ok: false, advisory: true, detail: 'unreachable' }]);
      const checked = await checkConfig(f.configFile);
      assert.equal(checked.code, 0, checked.stderr);
      assert.match(checked.stdout, /: OK \(.*\)\ndirectory: no server answered \(.*ECONNREFUSED.*\); its service bind and base_dn were not tried\n$/);
    } finally {
      await slapd.startAgain();
    }
    assert.match(await loginLine(f.imapTrustedPort), /^a OK /, 'the new settings work once the server is back');
  } finally {
    await f.stop();
  }
});

test('/readyz is 503 while the server refuses the service bind in force, and 200 again once it takes it; mailfront_ready follows', async () => {
  const f = await front();
  const setServicePassword = (password: string): Promise<void> => slapd.modify([`dn: ${LDAP_SERVICE_DN}`, 'changetype: modify', 'replace: userPassword', `userPassword: ${sshaHash(password)}`, ''].join('\n'));
  try {
    assert.equal((await readyz(f)).status, 200);
    await setServicePassword('rotated-in-the-directory-only');
    // A connection bound before keeps its identity: the restart cuts it, and the next one binds anew.
    await slapd.restart();
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    const refused = await readyz(f);
    assert.equal(refused.status, 503, JSON.stringify(refused.body));
    assert.deepEqual(refused.body.notReady, [{ name: 'directory', ok: false, detail: 'service bind refused: invalidCredentials (49)' }]);
    assert.equal(await readyMetric(f), 'mailfront_ready 0');
    assert.ok(f.logs.some((l) => l['event'] === 'directory.service_bind_refused' && l['url'] === slapd.url && l['code'] === 49));
    // A login meanwhile says what is wrong, not that the directory is unreachable.
    const since = f.logs.length;
    assert.match(await loginLine(f.imapTrustedPort), /^a NO \[UNAVAILABLE\] /);
    const failed = await waitForLog(f, (l) => l['event'] === 'session.login_failed', 5_000, since);
    assert.equal(failed['code'], 'LDAP_SERVICE_BIND_REFUSED');
    await setServicePassword(slapd.bindPassword);
    await new Promise((resolve) => setTimeout(resolve, 1_100));
    assert.equal((await readyz(f)).status, 200);
    assert.equal(await readyMetric(f), 'mailfront_ready 1');
  } finally {
    await setServicePassword(slapd.bindPassword);
    await f.stop();
  }
});

test('a start with a base_dn the server does not have is refused; one while no server answers starts, and /readyz is 503 once the server answers noSuchObject', async () => {
  await assert.rejects(front({ base_dn: MISSING_BASE_DN }), (error: unknown) => {
    assert.ok(error instanceof MailfrontError);
    assert.equal(error.code, 'DIRECTORY_SETTINGS_REFUSED');
    assert.match(error.message, /directory\.base_dn: ldap:\/\/127\.0\.0\.1:\d+ answered noSuchObject \(32\)/);
    return true;
  });
  await slapd.stopOnly();
  let f: Front;
  try {
    f = await front({ base_dn: MISSING_BASE_DN });
  } finally {
    await slapd.startAgain();
  }
  try {
    assert.ok(f.logs.some((l) => l['event'] === 'directory.settings_untried' && l['when'] === 'start'));
    const ready = await readyz(f);
    assert.equal(ready.status, 503, JSON.stringify(ready.body));
    assert.deepEqual(ready.body.notReady, [{ name: 'directory', ok: false, detail: 'base_dn not found: noSuchObject (32)' }]);
  } finally {
    await f.stop();
  }
});
