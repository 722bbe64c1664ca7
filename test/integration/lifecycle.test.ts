/**
 * Session and process lifecycle with real servers: the idle deadline of a spliced session, slot
 * health probes as the admin API and metrics show them, and certificates re-read on reload
 * (a broken one leaves the working one in place).
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { copyFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { connect as tlsConnect } from 'node:tls';
import { LineClient, run, startDovecot, startSlapd, tmpDir } from './servers/index.js';
import type { Dovecot, Slapd } from './servers/index.js';
import { ADMIN_TOKEN, startFront, waitForLog } from './front.js';
import type { Front } from './front.js';

const PASSWORD = 'Lifecycle-pw-6a6a';
let slapd: Slapd;
let master: Dovecot;
let replica: Dovecot;
let front: Front;

before(async () => {
  slapd = await startSlapd({ users: [{ uid: 'liz', password: PASSWORD, store: 'alpha' }] });
  [master, replica] = await Promise.all([
    startDovecot({ name: 'life-m', users: [{ name: 'liz', password: PASSWORD }] }),
    startDovecot({ name: 'life-r', users: [{ name: 'liz', password: PASSWORD }] }),
  ]);
  front = await startFront({
    slapd,
    stores: { alpha: { currentMaster: 'm', slots: { m: { imapPort: master.imapPort }, r: { imapPort: replica.imapPort } } } },
    session: { idle_timeout_ms: 1_000 },
    health: { interval_ms: 200, timeout_ms: 1_000 },
  });
});
after(async () => {
  await front?.stop();
  await Promise.all([slapd?.stop(), master?.stop(), replica?.stop()]);
});

test('a spliced session with no traffic either way is closed at the idle deadline', async () => {
  const raw = await LineClient.connect(front.imapTrustedPort);
  await raw.readLine();
  raw.send(`a LOGIN liz ${PASSWORD}`);
  assert.match(await raw.readLine(), /^a OK/);
  const started = Date.now();
  assert.ok(await raw.waitClosed(5_000), 'the idle session was not closed');
  assert.ok(Date.now() - started >= 900, `closed after ${Date.now() - started} ms`);
  await waitForLog(front, (l) => l['event'] === 'session.finished' && l['reason'] === 'idle-timeout');
});

test('slot health: probes show up and down in the admin API and in metrics, without changing routing', async () => {
  const { port } = front.mailfront.httpAddress()!;
  const stores = async (): Promise<Array<{ slots: Array<{ slot: string; health: string }> }>> =>
    ((await (await fetch(`http://127.0.0.1:${port}/api/stores`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).json()) as { stores: Array<{ slots: Array<{ slot: string; health: string }> }> }).stores;
  const health = async (slot: string): Promise<string | undefined> => (await stores())[0]?.slots.find((s) => s.slot === slot)?.health;
  const until = async (what: string, probe: () => Promise<boolean>): Promise<void> => {
    const deadline = Date.now() + 5_000;
    while (!(await probe())) {
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  };
  await until('both slots up', async () => (await health('m')) === 'up' && (await health('r')) === 'up');
  await replica.stopOnly();
  try {
    await until('the replica down', async () => (await health('r')) === 'down');
    const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    assert.match(metrics, /^mailfront_slot_up\{store="alpha",slot="r"\} 0$/m);
    assert.match(metrics, /^mailfront_slot_up\{store="alpha",slot="m"\} 1$/m);
    assert.equal(front.mailfront.currentStoreMap().stores.get('alpha')?.currentMaster, 'm');
  } finally {
    await replica.startAgain();
  }
  await until('the replica up again', async () => (await health('r')) === 'up');
});

/** SHA-256 fingerprint of the certificate the IMAPS listener presents. */
function servedFingerprint(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = tlsConnect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => {
      resolve(createHash('sha256').update(socket.getPeerCertificate().raw).digest('hex'));
      socket.destroy();
    });
    socket.on('error', reject);
  });
}

test('reload re-reads the certificate; an unusable one is reported and the working one stays', async () => {
  const before = await servedFingerprint(front.imapsPort);
  const dir = tmpDir('newcert');
  try {
    const [cert, key] = [join(dir.path, 'cert.pem'), join(dir.path, 'key.pem')];
    await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=localhost']);
    copyFileSync(cert, front.certs.certFile);
    copyFileSync(key, front.certs.keyFile);
    const reloaded = await front.mailfront.reload();
    assert.equal(reloaded.ok, true, reloaded.error);
    const after = await servedFingerprint(front.imapsPort);
    assert.notEqual(after, before);
    writeFileSync(front.certs.certFile, 'not a certificate\n');
    const broken = await front.mailfront.reload();
    assert.equal(broken.ok, false);
    assert.match(broken.error ?? '', /imaps|certificate|cert/i);
    assert.equal(await servedFingerprint(front.imapsPort), after);
  } finally {
    await dir.remove();
  }
});
