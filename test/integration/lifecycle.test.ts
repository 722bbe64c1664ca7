/**
 * Session and process lifecycle with real servers: the idle deadline of a spliced session, slot
 * health probes as the admin API and metrics show them, certificates re-read on reload (a broken
 * one leaves the working one in place), and what a reload takes at once or rejects whole.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { copyFileSync, readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { connect as netConnect, createServer } from 'node:net';
import type { Socket } from 'node:net';
import { after, before, test } from 'node:test';
import { connect as tlsConnect } from 'node:tls';
import { parse, stringify } from 'yaml';
import { LDAP_STORES_DN, LineClient, connectionsTo, freePort, refusingPort, run, squatPort, startDovecot, startSlapd, tmpDir } from './servers/index.js';
import type { Dovecot, Slapd } from './servers/index.js';
import { ADMIN_TOKEN, registerPasswords, startFront, waitForLog } from './front.js';
import { loadConfig } from '../../src/config/load.js';
import { Mailfront } from '../../src/main.js';
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
    health: { interval_ms: 1_000, timeout_ms: 1_000 },
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
    // Named as check-config names it: the listener's config path, then the files.
    assert.match(broken.error ?? '', /(^|; )listeners\[1\] \("imaps"\)\.certificate: cannot use certificate \S+ with key /);
    assert.equal(await servedFingerprint(front.imapsPort), after);
    // Readiness says what happened: the listener is bound, serving the certificate it had (advisory, no 503).
    const readiness = await front.mailfront.readiness({ directory: false });
    assert.equal(readiness.checks.find((c) => c.name === 'listeners_not_bound_by_reload'), undefined, 'a listener serving its old certificate reported as not bound');
    // Every listener naming the file: the STARTTLS ones share it with the implicit-TLS ones.
    assert.deepEqual(readiness.checks.find((c) => c.name === 'listener_certificates_not_reloaded'), { name: 'listener_certificates_not_reloaded', ok: false, advisory: true, detail: 'imap, imaps, pop3, pop3s' });
    assert.equal(readiness.ready, true);
    // Usable files again: nothing to report.
    copyFileSync(cert, front.certs.certFile);
    const fixed = await front.mailfront.reload();
    assert.equal(fixed.ok, true, fixed.error);
    assert.equal((await front.mailfront.readiness({ directory: false })).checks.find((c) => c.name === 'listener_certificates_not_reloaded'), undefined);
  } finally {
    await dir.remove();
  }
});

test('a certificate that cannot be used stops serve with an error naming the listener and its config path', async () => {
  const dir = tmpDir('badcert');
  try {
    const config = parse(readFileSync(front.configFile, 'utf8')) as Record<string, unknown>;
    const broken = join(dir.path, 'broken.pem');
    writeFileSync(broken, 'not a certificate\n');
    const port = await freePort();
    config['listeners'] = [
      { name: 'webmail', protocol: 'imap', host: '127.0.0.1', port: await freePort(), tls: 'none', plaintext_without_tls: true },
      { name: 'imaps-broken', protocol: 'imap', host: '127.0.0.1', port, tls: 'implicit', certificate: { cert: broken, key: front.certs.keyFile } },
    ];
    config['store_map'] = { file: front.storesFile };
    delete config['http'];
    const file = join(dir.path, 'mailfront.yaml');
    writeFileSync(file, stringify(config));
    writeFileSync(join(dir.path, 'ldap.secret'), readFileSync(join(dirname(front.configFile), 'ldap.secret')));
    await assert.rejects(Mailfront.start(loadConfig(file), { logDestination: { write: () => undefined }, processMetrics: false }), /^MailfrontError: listeners\[1\] \("imaps-broken"\)\.certificate: cannot use certificate .*broken\.pem with key /);
  } finally {
    await dir.remove();
  }
});

/** Resolves to the TLS version negotiated, or to the handshake's error message. */
function handshake(port: number, maxVersion: 'TLSv1.2' | 'TLSv1.3'): Promise<string> {
  return new Promise((resolve) => {
    const socket = tlsConnect({ host: '127.0.0.1', port, rejectUnauthorized: false, maxVersion }, () => {
      resolve(socket.getProtocol() ?? 'unknown');
      socket.destroy();
    });
    socket.on('error', (error) => resolve(`error: ${error.message}`));
  });
}

async function loginLine(port: number, password: string, host = '127.0.0.1'): Promise<string> {
  const raw = await LineClient.connect(port, { host });
  try {
    await raw.readLine();
    raw.send(`a LOGIN liz ${password}`);
    return await raw.readLine(10_000);
  } finally {
    raw.close();
  }
}

/** Writes the config with `change` made to its listeners (a parse of `original`, the file as the test found it). */
function writeListeners(original: string, change: (listeners: Array<Record<string, unknown>>) => void): void {
  const config = parse(original) as Record<string, unknown>;
  change(config['listeners'] as Array<Record<string, unknown>>);
  writeFileSync(front.configFile, stringify(config));
}

/** A session of liz logged in through the trusted listener (spliced to the master). */
async function splicedSession(): Promise<LineClient> {
  const spliced = await LineClient.connect(front.imapTrustedPort);
  await spliced.readLine();
  spliced.send(`s LOGIN liz ${PASSWORD}`);
  assert.match(await spliced.readLine(), /^s OK/);
  return spliced;
}

/** Puts the file back as the test found it and reloads it. */
async function restoreConfig(original: string): Promise<void> {
  writeFileSync(front.configFile, original);
  const restored = await front.mailfront.reload();
  assert.equal(restored.ok, true, restored.error);
}

test('a reload takes the throttle, the TLS policy and listener settings at once, and a directory that cannot be set up rejects it whole', async () => {
  // The certificate test above leaves a broken certificate behind: start from a good one.
  const dir = tmpDir('reloadcert');
  const original = readFileSync(front.configFile, 'utf8');
  const write = (change: (config: Record<string, unknown>) => void): void => {
    const config = parse(original) as Record<string, unknown>;
    change(config);
    writeFileSync(front.configFile, stringify(config));
  };
  try {
    const [cert, key] = [join(dir.path, 'cert.pem'), join(dir.path, 'key.pem')];
    await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=localhost']);
    copyFileSync(cert, front.certs.certFile);
    copyFileSync(key, front.certs.keyFile);
    assert.equal((await front.mailfront.reload()).ok, true);
    assert.equal(await handshake(front.imapsPort, 'TLSv1.2'), 'TLSv1.2');

    // One reload: the throttle (refuse a user after one failure) and TLS 1.3 only.
    write((config) => {
      config['throttle'] = { enabled: true, base_delay_ms: 0, failures_per_user: 1, failures_per_address: 1000, refusal_ms: 60_000 };
      config['tls'] = { min_version: 'TLSv1.3' };
    });
    const applied = await front.mailfront.reload();
    assert.equal(applied.ok, true, applied.error);
    assert.match(await handshake(front.imapsPort, 'TLSv1.2'), /^error: /, 'the new TLS policy applies to the next handshake');
    assert.equal(await handshake(front.imapsPort, 'TLSv1.3'), 'TLSv1.3');
    assert.match(await loginLine(front.imapTrustedPort, 'not-the-password'), /^a NO \[AUTHENTICATIONFAILED\]/);
    assert.match(await loginLine(front.imapTrustedPort, PASSWORD), /^a NO \[LIMIT\]/, 'the new throttle refuses the user after one failure');

    // A directory whose CA file cannot be read: the whole config is rejected, the process lives,
    // and the running config stays (the throttle and the TLS policy too, though the file drops them).
    const linesBefore = front.logs.length;
    write((config) => {
      (config['directory'] as Record<string, unknown>)['ca_file'] = join(dir.path, 'missing-ca.pem');
    });
    const rejected = await front.mailfront.reload();
    assert.equal(rejected.ok, false);
    assert.match(rejected.error ?? '', /missing-ca\.pem|ENOENT/);
    await waitForLog(front, (l) => l['event'] === 'config.rejected', 5_000, linesBefore);
    assert.match(await handshake(front.imapsPort, 'TLSv1.2'), /^error: /);
    assert.match(await loginLine(front.imapTrustedPort, PASSWORD), /^a NO \[LIMIT\]/);

    // A certificate that cannot be used holds back nothing else: plaintext logins on the
    // STARTTLS listener are allowed by the same reload that reports the certificate.
    write((config) => {
      const listeners = config['listeners'] as Array<Record<string, unknown>>;
      const imap = listeners.find((l) => l['name'] === 'imap');
      assert.ok(imap);
      imap['plaintext_without_tls'] = true;
    });
    writeFileSync(front.certs.certFile, 'not a certificate\n');
    const partial = await front.mailfront.reload();
    assert.equal(partial.ok, false);
    assert.match(partial.error ?? '', /certificate|cert/i);
    assert.match(await loginLine(front.imapPort, PASSWORD), /^a OK /, 'plaintext_without_tls took effect despite the certificate');
    // The working certificate is still served, and the next reload tries the files again.
    assert.equal(await handshake(front.imapsPort, 'TLSv1.3'), 'TLSv1.3');
    copyFileSync(cert, front.certs.certFile);
    writeFileSync(front.configFile, original);
    const restored = await front.mailfront.reload();
    assert.equal(restored.ok, true, restored.error);
    assert.equal(await handshake(front.imapsPort, 'TLSv1.2'), 'TLSv1.2');
    assert.match(await loginLine(front.imapTrustedPort, PASSWORD), /^a OK /, 'the restored config has no throttle');
    assert.match(await loginLine(front.imapPort, PASSWORD), /^a NO \[PRIVACYREQUIRED\]/);
  } finally {
    writeFileSync(front.configFile, original);
    await dir.remove();
  }
});

test('the pre-auth deadline ends a session whose login is still running: the login is answered as unavailable, then the timeout answer', async () => {
  // A backend that accepts and never greets: the backend login would wait login_timeout_ms (5 s),
  // longer than the session's 1 s from accept to a successful login.
  const held: Socket[] = [];
  const silent = createServer((socket) => void held.push(socket));
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  const address = silent.address();
  assert.ok(address !== null && typeof address === 'object');
  const slow = await startFront({
    slapd,
    stores: { alpha: { currentMaster: 's', slots: { s: { imapPort: address.port, pop3Port: address.port } } } },
    session: { preauth_timeout_ms: 1_000 },
  });
  try {
    for (const [port, login, refused, timeout] of [
      [slow.imapTrustedPort, `a LOGIN liz ${PASSWORD}`, /^a NO \[UNAVAILABLE\] /, /^\* BYE No login within the time allowed/],
      [slow.pop3TrustedPort, null, /^-ERR \[SYS\/TEMP\] /, /^-ERR No login within the time allowed/],
    ] as const) {
      const raw = await LineClient.connect(port);
      const accepted = Date.now();
      await raw.readLine();
      if (login !== null) raw.send(login);
      else {
        raw.send('USER liz');
        assert.match(await raw.readLine(), /^\+OK/);
        raw.send(`PASS ${PASSWORD}`);
      }
      assert.match(await raw.readLine(5_000), refused);
      assert.match(await raw.readLine(1_000), timeout);
      assert.ok(await raw.waitClosed(2_000), 'the session was closed at the deadline');
      const elapsed = Date.now() - accepted;
      assert.ok(elapsed >= 900 && elapsed < 3_000, `closed ${elapsed} ms after accept`);
      raw.close();
    }
    // Logged and counted as what held the login, the backend that never greeted: not as a client that went away.
    const failed = await waitForLog(slow, (l) => l['event'] === 'session.login_failed' && l['code'] === 'PREAUTH_DEADLINE');
    assert.equal(failed['kind'], 'backend-login');
    await waitForLog(slow, (l) => l['event'] === 'session.finished' && l['reason'] === 'timeout');
  } finally {
    await slow.stop();
    for (const socket of held) socket.destroy();
    silent.close();
  }
});

test('the pre-auth deadline during the failure delay of a refused login: the refusal decided (a wrong password), then the timeout answer, at the deadline', async () => {
  // The failure delay (10 s) outlasts the deadline (1.5 s from accept): a wrong password is
  // refused by the directory at once, and its answer waits for the delay when the deadline comes.
  const delayed = await startFront({ slapd, sieve: true, stores: { alpha: { currentMaster: 'm', slots: { m: { imapPort: master.imapPort } } } }, session: { preauth_timeout_ms: 1_500, auth_failure_delay_ms: 10_000 } });
  const plain = Buffer.from(`\0liz\0not-${PASSWORD}`).toString('base64');
  try {
    const cases = [
      { port: delayed.imapTrustedPort, login: ['a LOGIN liz wrong-pw'], refused: /^a NO \[AUTHENTICATIONFAILED\] /, timeout: /^\* BYE No login within the time allowed/ },
      { port: delayed.pop3TrustedPort, login: ['USER liz', 'PASS wrong-pw'], refused: /^-ERR \[AUTH\] /, timeout: /^-ERR No login within the time allowed/ },
      { port: delayed.sieveTrustedPort!, login: [`AUTHENTICATE "PLAIN" "${plain}"`], refused: /^NO "Authentication failed\."/, timeout: /^BYE "No login within the time allowed\."/ },
    ];
    await Promise.all(
      cases.map(async ({ port, login, refused, timeout }) => {
        const raw = await LineClient.connect(port);
        const accepted = Date.now();
        // The greeting (ManageSieve's capabilities end with OK); POP3's USER is answered at once.
        for (let line = await raw.readLine(); !/^(\* OK|\+OK|OK)/.test(line); line = await raw.readLine());
        for (const [i, line] of login.entries()) {
          raw.send(line);
          if (i < login.length - 1) assert.match(await raw.readLine(), /^\+OK/);
        }
        // Not NO [UNAVAILABLE], -ERR [SYS/TEMP], NO (TRYLATER): a wrong password is no outage.
        assert.match(await raw.readLine(5_000), refused);
        assert.match(await raw.readLine(1_000), timeout);
        assert.ok(await raw.waitClosed(2_000), 'the session was closed at the deadline');
        const elapsed = Date.now() - accepted;
        assert.ok(elapsed >= 1_400 && elapsed < 6_000, `closed ${elapsed} ms after accept: at the deadline, not after the failure delay`);
        raw.close();
      }),
    );
    // Logged as the refusal it was, each session ended by the deadline.
    for (const protocol of ['imap', 'pop3', 'managesieve']) {
      const failed = await waitForLog(delayed, (l) => l['event'] === 'session.login_failed' && l['protocol'] === protocol);
      assert.equal(failed['code'], 'WRONG_PASSWORD');
      assert.equal(failed['kind'], 'auth-failed');
      await waitForLog(delayed, (l) => l['event'] === 'session.finished' && l['protocol'] === protocol && l['reason'] === 'timeout');
    }
  } finally {
    await delayed.stop();
  }
});

test('a stop during the failure delay of a refused login: the refusal decided (a wrong password), then the stop\'s goodbye, at once; a login still at its backend gets NO [UNAVAILABLE] first', async () => {
  // The failure delay (10 s) outlasts the test's wait: a wrong password is refused by the
  // directory at once, and its answer waits for the delay when the stop comes. The store's
  // backend accepts and never greets: a right password's login is still under way then.
  const held: Socket[] = [];
  const silent = createServer((socket) => void held.push(socket));
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  const address = silent.address();
  assert.ok(address !== null && typeof address === 'object');
  const delayed = await startFront({ slapd, sieve: true, stores: { alpha: { currentMaster: 's', slots: { s: { imapPort: address.port } } } }, session: { auth_failure_delay_ms: 10_000 } });
  const plain = Buffer.from(`\0liz\0not-${PASSWORD}`).toString('base64');
  const clients: LineClient[] = [];
  let stopped: Promise<void> | undefined;
  try {
    const cases = [
      { port: delayed.imapTrustedPort, login: ['a LOGIN liz wrong-pw'], answer: /^a NO \[AUTHENTICATIONFAILED\] /, goodbye: /^\* BYE \[UNAVAILABLE\] Server shutting down/ },
      { port: delayed.pop3TrustedPort, login: ['USER liz', 'PASS wrong-pw'], answer: /^-ERR \[AUTH\] /, goodbye: /^-ERR \[SYS\/TEMP\] Server shutting down/ },
      { port: delayed.sieveTrustedPort!, login: [`AUTHENTICATE "PLAIN" "${plain}"`], answer: /^NO "Authentication failed\."/, goodbye: /^BYE \(TRYLATER\) "Server shutting down\."/ },
      // Not the BYE alone, its tag never answered.
      { port: delayed.imapTrustedPort, login: [`b LOGIN liz ${PASSWORD}`], answer: /^b NO \[UNAVAILABLE\] /, goodbye: /^\* BYE \[UNAVAILABLE\] Server shutting down/ },
    ];
    await Promise.all(
      cases.map(async ({ port, login }, at) => {
        const raw = await LineClient.connect(port);
        clients[at] = raw;
        // The greeting (ManageSieve's capabilities end with OK); POP3's USER is answered at once.
        for (let line = await raw.readLine(); !/^(\* OK|\+OK|OK)/.test(line); line = await raw.readLine());
        for (const [i, line] of login.entries()) {
          raw.send(line);
          if (i < login.length - 1) assert.match(await raw.readLine(), /^\+OK/);
        }
      }),
    );
    // Each wrong password refused (logged before the delay), and the right one at its backend.
    for (const protocol of ['imap', 'pop3', 'managesieve']) {
      const failed = await waitForLog(delayed, (l) => l['event'] === 'session.login_failed' && l['protocol'] === protocol);
      assert.equal(failed['code'], 'WRONG_PASSWORD');
    }
    const deadline = Date.now() + 5_000;
    while (held.length === 0) {
      assert.ok(Date.now() < deadline, 'the backend was never dialled');
      await new Promise((r) => setTimeout(r, 20));
    }
    const stopping = Date.now();
    stopped = delayed.mailfront.stop(500, 0);
    await Promise.all(
      cases.map(async ({ answer, goodbye }, at) => {
        const raw = clients[at]!;
        // Not -ERR [SYS/TEMP] nor BYE (TRYLATER) alone: a wrong password is no outage.
        assert.match(await raw.readLine(5_000), answer);
        assert.match(await raw.readLine(1_000), goodbye);
        assert.ok(await raw.waitClosed(2_000), 'the session was closed at the stop');
        const elapsed = Date.now() - stopping;
        assert.ok(elapsed < 3_000, `closed ${elapsed} ms after the stop: at once, not after the failure delay`);
      }),
    );
    await stopped;
    for (const protocol of ['imap', 'pop3', 'managesieve']) {
      await waitForLog(delayed, (l) => l['event'] === 'session.finished' && l['protocol'] === protocol && l['reason'] === 'shutdown');
    }
  } finally {
    for (const raw of clients) raw?.close();
    await stopped;
    await delayed.stop();
    for (const socket of held) socket.destroy();
    silent.close();
  }
});

test('a backend CA file: relative to the config folder, re-read on reload when it changed in place, and an unreadable one refuses logins without harm', async () => {
  const secure = await startDovecot({ name: 'life-tls', tls: true, users: [{ name: 'liz', password: PASSWORD }] });
  const dir = tmpDir('backendca');
  // A relative name in the store map resolves against the config file's folder.
  const ca = join(dirname(front.configFile), 'backend-ca.pem');
  const atStart = { alpha: { currentMaster: 'm', slots: { m: { imapPort: master.imapPort }, r: { imapPort: replica.imapPort } } } };
  const tlsStore = (caFile: string) => ({ alpha: { currentMaster: 't', slots: { t: { imapPort: secure.imapPort, imapsPort: secure.imapsPort! } }, backend: { tls: 'implicit', ca_file: caFile, tls_servername: 'localhost' } } });
  try {
    assert.ok(secure.caFile !== undefined && secure.imapsPort !== undefined);
    // A CA file that is not there: the login is refused as unavailable, and the process lives.
    await front.writeStores(tlsStore('no-such-ca.pem'));
    assert.equal((await front.mailfront.reloadStoreMap('test')).ok, true);
    const before = front.logs.length;
    assert.match(await loginLine(front.imapTrustedPort, PASSWORD), /^a NO \[UNAVAILABLE\] /);
    const failed = await waitForLog(front, (l) => l['event'] === 'session.login_failed' && l['code'] === 'BACKEND_CA_UNREADABLE', 5_000, before);
    assert.match(String(failed['reason']), new RegExp(`${dirname(front.configFile)}/no-such-ca\\.pem`));
    copyFileSync(secure.caFile, ca);
    await front.writeStores(tlsStore('backend-ca.pem'));
    assert.equal((await front.mailfront.reloadStoreMap('test')).ok, true);
    assert.match(await loginLine(front.imapTrustedPort, PASSWORD), /^a OK /);
    // Another CA in the same file: after a reload the backend's certificate is no longer trusted.
    await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', join(dir.path, 'other.key'), '-out', ca, '-days', '2', '-subj', '/CN=Another CA']);
    const mark = front.logs.length;
    assert.equal((await front.mailfront.reload()).storeMap.ok, true);
    assert.match(await loginLine(front.imapTrustedPort, PASSWORD), /^a NO \[UNAVAILABLE\] /);
    await waitForLog(front, (l) => l['event'] === 'session.login_failed' && /certificate/i.test(String(l['reason'])), 5_000, mark);
    copyFileSync(secure.caFile, ca);
    await front.mailfront.reload();
    assert.match(await loginLine(front.imapTrustedPort, PASSWORD), /^a OK /);
  } finally {
    await front.writeStores(atStart);
    await front.mailfront.reloadStoreMap('test');
    await secure.stop();
    await dir.remove();
  }
});

test('mailfront_proxied_bytes_total follows a spliced session while it lasts, counts each byte once, and the admin API shows the bytes', async () => {
  const { port } = front.mailfront.httpAddress()!;
  const proxied = async (): Promise<{ up: number; down: number }> => {
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    const value = (direction: string): number => Number(new RegExp(`^mailfront_proxied_bytes_total\\{direction="${direction}"\\} (\\d+)$`, 'm').exec(text)?.[1] ?? 0);
    return { up: value('client-to-backend'), down: value('backend-to-client') };
  };
  /** Sends `command` with `tag` and returns every line up to the tagged one, CRLF counted. */
  const command = async (raw: LineClient, tag: string, text: string): Promise<number> => {
    raw.send(`${tag} ${text}`);
    let bytes = 0;
    for (;;) {
      const line = await raw.readLine();
      bytes += line.length + 2;
      if (line.startsWith(`${tag} `)) return bytes;
    }
  };
  // Sessions of earlier tests end asynchronously: start from none.
  for (let i = 0; front.mailfront.registry.size > 0 && i < 100; i++) await new Promise((r) => setTimeout(r, 50));
  const initial = await proxied();
  const raw = await LineClient.connect(front.imapTrustedPort);
  try {
    await raw.readLine();
    raw.send(`a LOGIN liz ${PASSWORD}`);
    assert.match(await raw.readLine(), /^a OK/);
    const received = await command(raw, 's1', 'SELECT INBOX');
    const open = await proxied();
    assert.equal(open.up - initial.up, 's1 SELECT INBOX\r\n'.length, 'the bytes sent so far are counted while the session is open');
    assert.equal(open.down - initial.down, received, 'the bytes received so far are counted while the session is open');
    const listed = (await (await fetch(`http://127.0.0.1:${port}/api/sessions?user=liz`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).json()) as { sessions: Array<{ bytesFromClient: number; bytesToClient: number }> };
    assert.deepEqual(listed.sessions.map((s) => [s.bytesFromClient, s.bytesToClient]), [['s1 SELECT INBOX\r\n'.length, received]]);
    // A name that is no user is refused, not taken for "every session".
    const invalid = await fetch(`http://127.0.0.1:${port}/api/sessions?user=%20`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    assert.equal(invalid.status, 400);
    assert.equal(((await invalid.json()) as { code: string }).code, 'INVALID_USERNAME');
    await command(raw, 's2', 'NOOP');
    raw.send('s3 LOGOUT');
    assert.ok(await raw.waitClosed(5_000));
    await waitForLog(front, (l) => l['event'] === 'session.finished' && l['user'] === 'liz' && l['phase'] === 'spliced');
    // The end adds only what the scrape had not taken: every byte sent after login, once.
    const final = await proxied();
    assert.equal(final.up - initial.up, 's1 SELECT INBOX\r\ns2 NOOP\r\ns3 LOGOUT\r\n'.length);
  } finally {
    raw.close();
  }
});

test('a reload takes a changed store_map section (another file, watched from then on) and new health timings', async () => {
  const original = readFileSync(front.configFile, 'utf8');
  const otherStores = join(dirname(front.configFile), 'other-stores.yaml');
  const storesDoc = (current: string): string =>
    stringify({ stores: { alpha: { current_master: current, slots: { m: { host: '127.0.0.1', imap_port: master.imapPort }, r: { host: '127.0.0.1', imap_port: replica.imapPort } } } } });
  const write = (change: (config: Record<string, unknown>) => void): void => {
    const config = parse(original) as Record<string, unknown>;
    change(config);
    writeFileSync(front.configFile, stringify(config));
  };
  const checkedAt = (): number => front.mailfront.health.get('m')?.checkedAt ?? 0;
  try {
    writeFileSync(otherStores, storesDoc('r'));
    write((config) => {
      config['store_map'] = { file: 'other-stores.yaml' };
      config['health'] = { interval_ms: 0 };
    });
    const applied = await front.mailfront.reload();
    assert.equal(applied.ok, true, applied.error);
    assert.equal(applied.storeMap.ok, true, applied.storeMap.error);
    assert.equal(front.mailfront.currentStoreMap().stores.get('alpha')?.currentMaster, 'r', 'the new file is in force');
    // Watched: an edit of the new file is a failover.
    writeFileSync(otherStores, storesDoc('m'));
    for (let i = 0; i < 100 && front.mailfront.currentStoreMap().stores.get('alpha')?.currentMaster !== 'm'; i++) await new Promise((r) => setTimeout(r, 50));
    assert.equal(front.mailfront.currentStoreMap().stores.get('alpha')?.currentMaster, 'm', 'the new file is watched');
    // health.interval_ms 0: no more probes. A probe in flight at the reload still ends, within
    // the 1 s timeout_ms it began with, and sets checkedAt: no change for longer than that and a
    // 1 s interval besides shows probing stopped.
    let stoppedAt = checkedAt();
    let stillSince = performance.now();
    for (const giveUp = performance.now() + 10_000; performance.now() - stillSince < 2_200; ) {
      assert.ok(performance.now() < giveUp, `probes went on after interval_ms became 0 (checkedAt ${checkedAt()})`);
      await new Promise((r) => setTimeout(r, 50));
      if (checkedAt() !== stoppedAt) {
        stoppedAt = checkedAt();
        stillSince = performance.now();
      }
    }
  } finally {
    writeFileSync(front.configFile, original);
    const restored = await front.mailfront.reload();
    assert.equal(restored.ok, true, restored.error);
  }
  // Back to the first file and 1 s probes.
  assert.equal(front.mailfront.currentStoreMap().stores.get('alpha')?.currentMaster, 'm');
  const resumedFrom = checkedAt();
  for (let i = 0; i < 40 && checkedAt() === resumedFrom; i++) await new Promise((r) => setTimeout(r, 50));
  assert.ok(checkedAt() > resumedFrom, 'probing resumed with the restored interval');
});

test('a reload whose store map cannot be read puts its backend settings in force all the same: the map in force is built again with them', async () => {
  const original = readFileSync(front.configFile, 'utf8');
  const stores = readFileSync(front.storesFile, 'utf8');
  const alpha = () => front.mailfront.currentStoreMap().stores.get('alpha')!;
  const timeout = alpha().backend.connectTimeoutMs;
  try {
    // The source gives nothing usable (as an LDAP store map does while its servers are down).
    writeFileSync(front.storesFile, 'stores: [\n');
    const config = parse(original) as Record<string, Record<string, unknown>>;
    config['backend']!['connect_timeout_ms'] = timeout + 1;
    writeFileSync(front.configFile, stringify(config));
    const reloaded = await front.mailfront.reload();
    assert.equal(reloaded.ok, true, reloaded.error);
    assert.equal(reloaded.storeMap.ok, false);
    assert.equal(alpha().backend.connectTimeoutMs, timeout + 1, 'the new backend settings are in force');
    assert.equal(alpha().currentMaster, 'm');
    assert.match(await loginLine(front.imapTrustedPort, PASSWORD), /^a OK /);
  } finally {
    writeFileSync(front.storesFile, stores);
    await restoreConfig(original);
  }
  assert.equal(alpha().backend.connectTimeoutMs, timeout);
});

test('a reload that drops a backend profile a store uses is rejected whole: the config and the map in force stay, and store-map reloads and failovers go on', async () => {
  const original = readFileSync(front.configFile, 'utf8');
  const stores = readFileSync(front.storesFile, 'utf8');
  const alpha = () => front.mailfront.currentStoreMap().stores.get('alpha')!;
  const withProfile = parse(original) as Record<string, unknown>;
  withProfile['backend_profiles'] = { fast: { connect_timeout_ms: 777 } };
  try {
    writeFileSync(front.configFile, stringify(withProfile));
    assert.equal((await front.mailfront.reload()).ok, true);
    const doc = parse(stores) as { stores: Record<string, Record<string, unknown>> };
    doc.stores['alpha']!['backend_profile'] = 'fast';
    writeFileSync(front.storesFile, stringify(doc));
    assert.equal((await front.mailfront.reloadStoreMap('test')).ok, true);
    assert.equal(alpha().backend.connectTimeoutMs, 777);
    writeFileSync(front.configFile, original);
    const dropped = await front.mailfront.reload();
    assert.equal(dropped.ok, false);
    assert.match(dropped.error ?? '', /stores\.alpha\.backend_profile: expected one of the config's backend_profiles/);
    assert.equal(alpha().backend.connectTimeoutMs, 777);
    // The config in force still has the profile: the map builds, and a failover is put in force.
    assert.equal((await front.mailfront.reloadStoreMap('test')).ok, true);
    const moved = await front.mailfront.holder.failover('alpha', 'r');
    assert.equal(moved.ok, true, moved.error);
    assert.equal(alpha().currentMaster, 'r');
  } finally {
    writeFileSync(front.storesFile, stores);
    await front.mailfront.reloadStoreMap('test');
    await restoreConfig(original);
  }
  assert.equal(alpha().currentMaster, 'm');
});

test('a reload whose new store-map source cannot be read for good (no such file, a bind or a base the LDAP server refuses) is rejected whole; one that is down is taken', async () => {
  const original = readFileSync(front.configFile, 'utf8');
  const stores = readFileSync(front.storesFile, 'utf8');
  const alpha = () => front.mailfront.currentStoreMap().stores.get('alpha')!;
  const timeout = alpha().backend.connectTimeoutMs;
  const source = front.mailfront.holder.source.description;
  const wrongPassword = 'Wrong-storemap-pw-5c5c';
  registerPasswords(wrongPassword);
  const ldap = (settings: Record<string, unknown>) => ({ ldap: { base_dn: LDAP_STORES_DN, bind_dn: slapd.rootDn, bind_password: slapd.rootPassword, poll_interval_ms: 100, ...settings } });
  const write = (storeMap: unknown): void => {
    const config = parse(original) as Record<string, Record<string, unknown>>;
    config['store_map'] = storeMap as Record<string, unknown>;
    config['backend']!['connect_timeout_ms'] = timeout + 1;
    writeFileSync(front.configFile, stringify(config));
  };
  try {
    for (const [storeMap, expected] of [
      [{ file: 'stores.yml' }, /store_map\.file: the new store-map source cannot be read \(file .*stores\.yml\).*expected a readable file, found ENOENT/s],
      [ldap({ bind_password: wrongPassword }), /store_map\.ldap: the new store-map source cannot be read .*invalidCredentials: store_map\.ldap\.bind_dn and bind_password/s],
      [ldap({ base_dn: `ou=nowhere,${LDAP_STORES_DN}` }), /store_map\.ldap: the new store-map source cannot be read .*noSuchObject: store_map\.ldap\.base_dn/s],
    ] as const) {
      write(storeMap);
      const rejected = await front.mailfront.reload();
      assert.equal(rejected.ok, false, JSON.stringify(storeMap));
      assert.match(rejected.error ?? '', expected);
      assert.equal(front.mailfront.holder.source.description, source, 'the source in force stays');
      assert.equal(alpha().backend.connectTimeoutMs, timeout, 'nothing of the config is taken');
    }
    // The file in force is still watched: an edit of it is a failover.
    writeFileSync(front.storesFile, stores.replace('current_master: m', 'current_master: r'));
    for (let i = 0; i < 100 && alpha().currentMaster !== 'r'; i++) await new Promise((r) => setTimeout(r, 50));
    assert.equal(alpha().currentMaster, 'r', 'the store-map file in force is watched');
    writeFileSync(front.storesFile, stores);
    for (let i = 0; i < 100 && alpha().currentMaster !== 'm'; i++) await new Promise((r) => setTimeout(r, 50));

    // A server that is down may be up at the next poll: the config is taken, and the map in force stays until it is.
    write(ldap({ urls: [`ldap://127.0.0.1:${await refusingPort()}`] }));
    const down = await front.mailfront.reload();
    assert.equal(down.ok, true, down.error);
    assert.equal(down.storeMap.ok, false);
    assert.equal(alpha().backend.connectTimeoutMs, timeout + 1);
    assert.equal(alpha().currentMaster, 'm');
  } finally {
    writeFileSync(front.storesFile, stores);
    await restoreConfig(original);
  }
  assert.equal(alpha().backend.connectTimeoutMs, timeout);
});

test('reloads that switch the store map to LDAP and back keep one LDAP connection while it is the source, and none after', async () => {
  const original = readFileSync(front.configFile, 'utf8');
  const ldap = parse(original) as Record<string, unknown>;
  ldap['store_map'] = { ldap: { base_dn: LDAP_STORES_DN, bind_dn: slapd.rootDn, bind_password: slapd.rootPassword, poll_interval_ms: 100 } };
  await slapd.modify(
    [`dn: cn=alpha,${LDAP_STORES_DN}`, 'changetype: add', 'objectClass: mailfrontStore', 'cn: alpha', 'mailfrontCurrentMaster: m', '',
     `dn: cn=m,cn=alpha,${LDAP_STORES_DN}`, 'changetype: add', 'objectClass: mailfrontSlot', 'cn: m', 'mailfrontHost: 127.0.0.1', `mailfrontImapPort: ${master.imapPort}`, ''].join('\n'),
  );
  const before = connectionsTo(slapd.port);
  const settle = async (expected: number): Promise<number> => {
    for (let i = 0; i < 50 && connectionsTo(slapd.port) !== expected; i++) await new Promise((r) => setTimeout(r, 20));
    return connectionsTo(slapd.port);
  };
  try {
    for (let round = 0; round < 3; round++) {
      writeFileSync(front.configFile, stringify(ldap));
      const switched = await front.mailfront.reload();
      assert.equal(switched.storeMap.ok, true, switched.storeMap.error);
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(await settle(before + 1), before + 1, `round ${round}: one connection to the LDAP store map`);
      await restoreConfig(original);
      assert.equal(await settle(before), before, `round ${round}: back to the file, no LDAP connection left`);
    }
  } finally {
    writeFileSync(front.configFile, original);
    await front.mailfront.reload();
    await slapd.modify(`dn: cn=m,cn=alpha,${LDAP_STORES_DN}\nchangetype: delete\n\ndn: cn=alpha,${LDAP_STORES_DN}\nchangetype: delete\n`);
  }
});

test('a listener a reload moved to another port is let go of once its last session ends; port flips do not pile up stopped listeners', async () => {
  const original = readFileSync(front.configFile, 'utf8');
  const count = front.mailfront.listeners.length;
  const otherPort = await freePort();
  const moveWebmail = (port: number): void =>
    writeListeners(original, (listeners) => {
      for (const l of listeners) if (l['name'] === 'imap-webmail') l['port'] = port;
    });
  try {
    for (let i = 0; i < 5; i++) {
      moveWebmail(i % 2 === 0 ? otherPort : front.imapTrustedPort);
      assert.equal((await front.mailfront.reload()).ok, true);
      assert.equal(front.mailfront.listeners.length, count, `flip ${i}: no stopped listener kept`);
    }
    // On the other port now; a session there keeps its listener until it ends.
    const spliced = await LineClient.connect(otherPort);
    await spliced.readLine();
    spliced.send(`s LOGIN liz ${PASSWORD}`);
    assert.match(await spliced.readLine(), /^s OK/);
    moveWebmail(front.imapTrustedPort);
    assert.equal((await front.mailfront.reload()).ok, true);
    assert.equal(front.mailfront.listeners.length, count + 1, 'the stopped listener stays while its session lasts');
    spliced.send('n NOOP');
    assert.match(await spliced.readLine(), /^n OK/);
    spliced.close();
    for (let i = 0; i < 100 && front.mailfront.listeners.length !== count; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(front.mailfront.listeners.length, count, 'let go of once its session ended');
  } finally {
    await restoreConfig(original);
  }
});

test('a backend profile renamed in the config and the store map at once is taken by one reload: the new config is checked against the map as the source gives it now', async () => {
  const original = readFileSync(front.configFile, 'utf8');
  const stores = readFileSync(front.storesFile, 'utf8');
  const alpha = () => front.mailfront.currentStoreMap().stores.get('alpha')!;
  const config = (profiles: Record<string, unknown>, timeout?: number): string => {
    const doc = parse(original) as Record<string, Record<string, unknown>>;
    doc['backend_profiles'] = profiles;
    if (timeout !== undefined) doc['backend']!['connect_timeout_ms'] = timeout;
    return stringify(doc);
  };
  const map = (profile: string): string => {
    const doc = parse(stores) as { stores: Record<string, Record<string, unknown>> };
    doc.stores['alpha']!['backend_profile'] = profile;
    return stringify(doc);
  };
  const timeout = alpha().backend.connectTimeoutMs;
  try {
    writeFileSync(front.configFile, config({ fast: { connect_timeout_ms: 777 } }));
    assert.equal((await front.mailfront.reload()).ok, true);
    writeFileSync(front.storesFile, map('fast'));
    assert.equal((await front.mailfront.reloadStoreMap('test')).ok, true);
    assert.equal(alpha().backend.connectTimeoutMs, 777);
    // The rename, in both files, then one SIGHUP: each side must not be checked against the other's old version.
    writeFileSync(front.storesFile, map('quick'));
    writeFileSync(front.configFile, config({ quick: { connect_timeout_ms: 888 } }));
    const renamed = await front.mailfront.reload();
    assert.equal(renamed.ok, true, renamed.error);
    assert.equal(renamed.storeMap.ok, true, renamed.storeMap.error);
    assert.equal(alpha().backend.connectTimeoutMs, 888);
    // A store map broken on its own (a profile no config has) leaves the map in force, which
    // builds with the new config: the config is taken, and the map in force built with it.
    writeFileSync(front.storesFile, map('nowhere'));
    writeFileSync(front.configFile, config({ quick: { connect_timeout_ms: 889 } }));
    const beside = await front.mailfront.reload();
    assert.equal(beside.ok, true, beside.error);
    assert.equal(beside.storeMap.ok, false);
    assert.equal(alpha().backend.connectTimeoutMs, 889);
    // The source as it is now does build with the config in force: a config it does not build with is refused.
    writeFileSync(front.storesFile, map('quick'));
    writeFileSync(front.configFile, config({ fast: { connect_timeout_ms: 777 } }, 1_999));
    const dropped = await front.mailfront.reload();
    assert.equal(dropped.ok, false);
    assert.match(dropped.error ?? '', /stores\.alpha\.backend_profile: expected one of the config's backend_profiles/);
    assert.equal(alpha().backend.connectTimeoutMs, 889);
  } finally {
    writeFileSync(front.storesFile, stores);
    await front.mailfront.reloadStoreMap('test');
    await restoreConfig(original);
  }
  assert.equal(alpha().backend.connectTimeoutMs, timeout);
});

test('the admin API answers a path with a broken percent-escape with 400, after the token check', async () => {
  const { port } = front.mailfront.httpAddress()!;
  const unauthorised = await fetch(`http://127.0.0.1:${port}/api/whereis/%E0%A4%A`);
  assert.equal(unauthorised.status, 401);
  const answer = await fetch(`http://127.0.0.1:${port}/api/whereis/%E0%A4%A`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
  assert.equal(answer.status, 400);
  assert.equal(((await answer.json()) as { code: string }).code, 'ADMIN_BAD_REQUEST');
});

test('a reload that renames a listener keeps its socket and its sessions; one that changes its TLS mode on the same port binds it anew', async () => {
  const original = readFileSync(front.configFile, 'utf8');
  const write = (change: (listeners: Array<Record<string, unknown>>) => void): void => writeListeners(original, change);
  const spliced = await splicedSession();
  try {
    write((listeners) => {
      listeners.find((l) => l['name'] === 'imap-webmail')!['name'] = 'imap-webmail-renamed';
    });
    const renamed = await front.mailfront.reload();
    assert.equal(renamed.ok, true, renamed.error);
    assert.match(await loginLine(front.imapTrustedPort, PASSWORD), /^a OK /, 'the renamed listener still accepts');
    spliced.send('s2 NOOP');
    assert.match(await spliced.readLine(), /^s2 OK/, 'the session on it goes on');

    // The same port, plaintext allowed no more and STARTTLS offered: a listener of another kind.
    write((listeners) => {
      const webmail = listeners.find((l) => l['name'] === 'imap-webmail')!;
      webmail['tls'] = 'starttls';
      webmail['plaintext_without_tls'] = false;
      webmail['certificate'] = listeners.find((l) => l['name'] === 'imap')!['certificate'];
    });
    const rebound = await front.mailfront.reload();
    assert.equal(rebound.ok, true, rebound.error);
    assert.match(await loginLine(front.imapTrustedPort, PASSWORD), /^a NO \[PRIVACYREQUIRED\]/, 'the port is served by the new listener');
    spliced.send('s3 NOOP');
    assert.match(await spliced.readLine(), /^s3 OK/, 'the session accepted by the old listener goes on');

    // Implicit TLS on the same port with a key that is no key: refused, and the port stays served.
    write((listeners) => {
      const webmail = listeners.find((l) => l['name'] === 'imap-webmail')!;
      webmail['tls'] = 'implicit';
      webmail['certificate'] = { cert: front.certs.certFile, key: front.certs.caFile };
    });
    const broken = await front.mailfront.reload();
    assert.equal(broken.ok, false);
    assert.match(await loginLine(front.imapTrustedPort, PASSWORD), /^a NO \[PRIVACYREQUIRED\]/, 'the listener in force still serves the port');
  } finally {
    spliced.close();
    await restoreConfig(original);
  }
  assert.match(await loginLine(front.imapTrustedPort, PASSWORD), /^a OK /);
});

test('a reload that moves a listener to an address sharing its port (a wildcard and a host, or an IPv4-mapped twin) lets go of the port first, and the port stays served', async () => {
  // ::ffff:127.0.0.1 is 127.0.0.1 to the kernel, as 0.0.0.0 covers it: the new socket cannot
  // bind while the old one holds the port (loopback only here; the wildcard case is the same code).
  const original = readFileSync(front.configFile, 'utf8');
  const spliced = await splicedSession();
  try {
    writeListeners(original, (listeners) => {
      listeners.find((l) => l['name'] === 'imap-webmail')!['host'] = '::ffff:127.0.0.1';
    });
    const moved = await front.mailfront.reload();
    assert.equal(moved.ok, true, moved.error);
    assert.match(await loginLine(front.imapTrustedPort, PASSWORD), /^a OK /, 'the moved listener serves the port');
    spliced.send('s2 NOOP');
    assert.match(await spliced.readLine(), /^s2 OK/, 'the session accepted before the move goes on');
  } finally {
    spliced.close();
    await restoreConfig(original);
  }
  assert.match(await loginLine(front.imapTrustedPort, PASSWORD), /^a OK /);
});

test('a reload whose wildcard listener cannot take over the port of two host listeners leaves both serving it', async () => {
  // 127.0.0.1 and 127.0.0.2 on one port, then 0.0.0.0 on it: both old listeners let go of the
  // port, and the wildcard cannot bind while a socket of this test holds 127.0.0.3 on it. Both must
  // take the port back (only the first used to; the second was then stopped as removed). The
  // wildcard never binds here, so nothing listens beyond loopback.
  const original = readFileSync(front.configFile, 'utf8');
  const port = front.imapTrustedPort;
  const squatter = createServer((socket) => socket.destroy());
  try {
    writeListeners(original, (listeners) => {
      const webmail = listeners.find((l) => l['name'] === 'imap-webmail')!;
      listeners.push({ ...webmail, name: 'imap-webmail-2', host: '127.0.0.2' });
    });
    const paired = await front.mailfront.reload();
    assert.equal(paired.ok, true, paired.error);
    assert.match(await loginLine(port, PASSWORD, '127.0.0.2'), /^a OK /, 'the second host listener serves the port');
    await new Promise<void>((resolve, reject) => {
      squatter.once('error', reject);
      squatter.listen(port, '127.0.0.3', resolve);
    });

    writeListeners(original, (listeners) => {
      listeners.find((l) => l['name'] === 'imap-webmail')!['host'] = '0.0.0.0';
    });
    const takeover = await front.mailfront.reload();
    assert.equal(takeover.ok, false, 'the wildcard could not bind');
    assert.match(takeover.error ?? '', /EADDRINUSE/);
    assert.match(await loginLine(port, PASSWORD, '127.0.0.1'), /^a OK /, 'the first host listener took the port back');
    assert.match(await loginLine(port, PASSWORD, '127.0.0.2'), /^a OK /, 'so did the second');
  } finally {
    await new Promise<void>((resolve) => squatter.close(() => resolve()));
    await restoreConfig(original);
  }
  assert.match(await loginLine(port, PASSWORD), /^a OK /);
});

test('a listener a reload could not bind leaves the instance ready, reported as not bound by the reload until a later one binds it', async () => {
  // A config pushed to a fleet with a port in use everywhere must not take every instance out of
  // the balancer: each serves what it served before. A listener lost otherwise still counts.
  const original = readFileSync(front.configFile, 'utf8');
  const squatter = await squatPort();
  const port = (squatter.address() as { port: number }).port;
  try {
    writeListeners(original, (listeners) => {
      const webmail = listeners.find((l) => l['name'] === 'imap-webmail')!;
      listeners.push({ ...webmail, name: 'imap-extra', port });
    });
    const failed = await front.mailfront.reload();
    assert.equal(failed.ok, false);
    assert.match(failed.error ?? '', /EADDRINUSE/);
    const readiness = await front.mailfront.readiness();
    assert.equal(readiness.ready, true, JSON.stringify(readiness));
    assert.deepEqual(readiness.checks.find((c) => c.name === 'listeners_not_bound_by_reload'), { name: 'listeners_not_bound_by_reload', ok: false, advisory: true, detail: 'imap-extra' });

    await new Promise<void>((resolve) => squatter.close(() => resolve()));
    const bound = await front.mailfront.reload();
    assert.equal(bound.ok, true, bound.error);
    assert.match(await loginLine(port, PASSWORD), /^a OK /, 'the listener is bound now');
    const after = await front.mailfront.readiness();
    assert.equal(after.ready, true);
    assert.equal(after.checks.find((c) => c.name === 'listeners_not_bound_by_reload'), undefined);
  } finally {
    if (squatter.listening) await new Promise<void>((resolve) => squatter.close(() => resolve()));
    await restoreConfig(original);
  }
  assert.equal((await front.mailfront.readiness()).ready, true);
});

test('a reload that moves a listener to a port in use leaves it serving the port it served, and the instance ready, reporting the port not bound by the reload', async () => {
  const original = readFileSync(front.configFile, 'utf8');
  const squatter = await squatPort();
  const taken = (squatter.address() as { port: number }).port;
  try {
    writeListeners(original, (listeners) => {
      listeners.find((l) => l['name'] === 'imap-webmail')!['port'] = taken;
    });
    const moved = await front.mailfront.reload();
    assert.equal(moved.ok, false);
    assert.match(moved.error ?? '', /EADDRINUSE/);
    assert.match(await loginLine(front.imapTrustedPort, PASSWORD), /^a OK /, 'the old port is still served');
    // The old listener of that name serves on: the new port it could not take is reported all the same.
    const readiness = await front.mailfront.readiness();
    assert.equal(readiness.ready, true, JSON.stringify(readiness));
    assert.deepEqual(readiness.checks.find((c) => c.name === 'listeners_not_bound_by_reload'), { name: 'listeners_not_bound_by_reload', ok: false, advisory: true, detail: 'imap-webmail' });

    // The same move, with a POP3 listener of the new config on the address it would leave: that
    // one takes the address over, whatever the order of the two in the file.
    for (const popFirst of [false, true]) {
      writeListeners(original, (listeners) => {
        listeners.find((l) => l['name'] === 'imap-webmail')!['port'] = taken;
        const pop = { name: 'pop3-new', protocol: 'pop3', host: '127.0.0.1', port: front.imapTrustedPort, tls: 'none', plaintext_without_tls: true };
        if (popFirst) listeners.unshift(pop);
        else listeners.push(pop);
      });
      const replaced = await front.mailfront.reload();
      assert.equal(replaced.ok, false);
      assert.doesNotMatch(replaced.error ?? '', /pop3-new/, `pop3 listed ${popFirst ? 'first' : 'last'}`);
      const greeting = await LineClient.connect(front.imapTrustedPort);
      try {
        assert.match(await greeting.readLine(), /^\+OK /, 'the address is served by the POP3 listener');
      } finally {
        greeting.close();
      }
      await restoreConfig(original);
    }
  } finally {
    await new Promise<void>((resolve) => squatter.close(() => resolve()));
    await restoreConfig(original);
  }
  assert.match(await loginLine(front.imapTrustedPort, PASSWORD), /^a OK /);
});

test('a reload that moves a listener with a default name to a port in use leaves it serving the port it served; one that leaves a protocol unserved is not ready', async () => {
  // Without `name:` a listener is <protocol>-<port>: moving it renames it, and the one it
  // replaces must still be told from one the new config removed. Two of one protocol and TLS
  // mode, one moved: the other is no stand-in for it.
  const original = readFileSync(front.configFile, 'utf8');
  const squatter = await squatPort();
  const taken = (squatter.address() as { port: number }).port;
  const second = await freePort();
  const unnamed = (port: number) => ({ protocol: 'imap', host: '127.0.0.1', port, tls: 'none', plaintext_without_tls: true });
  try {
    writeListeners(original, (listeners) => {
      listeners.splice(listeners.findIndex((l) => l['name'] === 'imap-webmail'), 1, unnamed(front.imapTrustedPort), unnamed(second));
    });
    const unnamedNow = await front.mailfront.reload();
    assert.equal(unnamedNow.ok, true, unnamedNow.error);

    writeListeners(original, (listeners) => {
      listeners.splice(listeners.findIndex((l) => l['name'] === 'imap-webmail'), 1, unnamed(taken), unnamed(second));
    });
    const moved = await front.mailfront.reload();
    assert.equal(moved.ok, false);
    assert.match(moved.error ?? '', /EADDRINUSE/);
    assert.match(await loginLine(front.imapTrustedPort, PASSWORD), /^a OK /, 'the old port is still served');
    assert.match(await loginLine(second, PASSWORD), /^a OK /, 'the other listener of its protocol goes on');
    const readiness = await front.mailfront.readiness();
    assert.equal(readiness.ready, true, JSON.stringify(readiness));
    assert.deepEqual(readiness.checks.find((c) => c.name === 'listeners_not_bound_by_reload')?.detail, `imap-${taken}`);

    // The move made again once the port is free: the new port is served, the old one no more.
    await new Promise<void>((resolve) => squatter.close(() => resolve()));
    const bound = await front.mailfront.reload();
    assert.equal(bound.ok, true, bound.error);
    assert.match(await loginLine(taken, PASSWORD), /^a OK /, 'the new port is served');
    await assert.rejects(LineClient.connect(front.imapTrustedPort), /ECONNREFUSED/, 'the old port is let go of');
  } finally {
    if (squatter.listening) await new Promise<void>((resolve) => squatter.close(() => resolve()));
    await restoreConfig(original);
  }
  assert.match(await loginLine(front.imapTrustedPort, PASSWORD), /^a OK /);

  // A ManageSieve listener, the config's only one, on a port in use: no listener serves the
  // protocol, and a balancer sending its clients here would find the port closed.
  const squatted = createServer((socket) => socket.destroy());
  await new Promise<void>((resolve, reject) => {
    squatted.once('error', reject);
    squatted.listen(0, '127.0.0.1', resolve);
  });
  try {
    writeListeners(original, (listeners) => {
      listeners.push({ protocol: 'managesieve', host: '127.0.0.1', port: (squatted.address() as { port: number }).port, tls: 'none', plaintext_without_tls: true });
    });
    const failed = await front.mailfront.reload();
    assert.equal(failed.ok, false);
    const readiness = await front.mailfront.readiness();
    assert.equal(readiness.ready, false, JSON.stringify(readiness));
    assert.match(readiness.checks.find((c) => c.name === 'listeners')?.detail ?? '', /no managesieve listener bound/);
  } finally {
    await new Promise<void>((resolve) => squatted.close(() => resolve()));
    await restoreConfig(original);
  }
  assert.equal((await front.mailfront.readiness()).ready, true);
});

test('a reload that replaces the directory lets the logins already asking the old one finish there', async () => {
  const original = readFileSync(front.configFile, 'utf8');
  assert.match(await loginLine(front.imapTrustedPort, PASSWORD), /^a OK /, 'the service connection is open');
  const raw = await LineClient.connect(front.imapTrustedPort);
  try {
    await raw.readLine();
    // slapd stopped: the login's search waits on the old directory's connection.
    await slapd.pause();
    raw.send(`a LOGIN liz ${PASSWORD}`);
    await new Promise((r) => setTimeout(r, 200));
    const config = parse(original) as Record<string, unknown>;
    (config['directory'] as Record<string, unknown>)['operation_timeout_ms'] = 2_500;
    writeFileSync(front.configFile, stringify(config));
    const reloaded = await front.mailfront.reload();
    assert.equal(reloaded.ok, true, reloaded.error);
    await new Promise((r) => setTimeout(r, 300));
    slapd.resume();
    assert.match(await raw.readLine(10_000), /^a OK /, 'the login in flight finished on the old directory');
  } finally {
    slapd.resume();
    raw.close();
    writeFileSync(front.configFile, original);
    assert.equal((await front.mailfront.reload()).ok, true);
  }
  assert.match(await loginLine(front.imapTrustedPort, PASSWORD), /^a OK /);
});

test('a reload that removes the http section says it takes a restart, and the HTTP listener goes on', async () => {
  const original = readFileSync(front.configFile, 'utf8');
  const { port } = front.mailfront.httpAddress()!;
  try {
    const config = parse(original) as Record<string, unknown>;
    delete config['http'];
    writeFileSync(front.configFile, stringify(config));
    const result = await front.mailfront.reload();
    assert.equal(result.ok, false);
    assert.match(result.error ?? '', /http section was removed.*restart/);
    assert.equal((await fetch(`http://127.0.0.1:${port}/healthz`)).status, 200);
  } finally {
    writeFileSync(front.configFile, original);
  }
  const restored = await front.mailfront.reload();
  assert.equal(restored.ok, true, restored.error);
});

test('a reload while the server stops is refused and binds nothing', async () => {
  const stopping = await startFront({ slapd, stores: { alpha: { currentMaster: 'm', slots: { m: { imapPort: master.imapPort } } } } });
  const spliced = await LineClient.connect(stopping.imapTrustedPort);
  let stopped: Promise<void> | undefined;
  try {
    await spliced.readLine();
    spliced.send(`s LOGIN liz ${PASSWORD}`);
    assert.match(await spliced.readLine(), /^s OK/);
    // The spliced session keeps the stop draining (up to drain_timeout_ms) while the reload comes.
    const early = await new Promise<Socket>((resolve, reject) => {
      const socket = netConnect(stopping.imapsPort, '127.0.0.1', () => resolve(socket));
      socket.once('error', reject);
    });
    stopped = stopping.mailfront.stop(5_000);
    await waitForLog(stopping, (l) => l['event'] === 'server.stopping', 5_000);
    const reload = await stopping.mailfront.reload();
    assert.equal(reload.ok, false);
    assert.match(reload.error ?? '', /stopping/);
    await assert.rejects(LineClient.connect(stopping.imapTrustedPort), /ECONNREFUSED/, 'no listener was bound again');
    // A connection accepted before the stop that finishes its TLS handshake during it is not
    // greeted as a new session (it could log in after the stop's BYE to those not logged in).
    const late = tlsConnect({ socket: early, ca: stopping.caPem, servername: 'localhost' });
    const said: Buffer[] = [];
    late.on('data', (chunk: Buffer) => said.push(chunk));
    late.on('error', () => undefined);
    await new Promise((resolve) => late.once('close', resolve));
    assert.match(Buffer.concat(said).toString('latin1'), /^\* BYE \[UNAVAILABLE\] Server shutting down/);
  } finally {
    spliced.close();
    await stopped;
    await stopping.stop();
  }
});

test('a stop during a reload that waits on the store-map source stops accepting at once; the reload gives the read up and commits nothing', async () => {
  const stopping = await startFront({ slapd, stores: { alpha: { currentMaster: 'm', slots: { m: { imapPort: master.imapPort } } } } });
  // An LDAP server that accepts and never answers: the bind waits for the operation timeout.
  const held: Socket[] = [];
  const blackhole = createServer((socket) => held.push(socket));
  await new Promise<void>((resolve, reject) => {
    blackhole.once('error', reject);
    blackhole.listen(0, '127.0.0.1', resolve);
  });
  let stopped: Promise<void> | undefined;
  try {
    const config = parse(readFileSync(stopping.configFile, 'utf8')) as Record<string, unknown>;
    config['store_map'] = { ldap: { urls: [`ldap://127.0.0.1:${(blackhole.address() as { port: number }).port}`], base_dn: LDAP_STORES_DN, bind_dn: slapd.rootDn, bind_password: slapd.rootPassword, operation_timeout_ms: 60_000 } };
    writeFileSync(stopping.configFile, stringify(config));
    const reload = stopping.mailfront.reload();
    for (let i = 0; i < 250 && held.length === 0; i++) await new Promise((r) => setTimeout(r, 20));
    assert.equal(held.length, 1, 'the reload reads the new source');
    let readGoesOn = true;
    held[0]!.once('close', () => (readGoesOn = false));

    stopped = stopping.mailfront.stop(500);
    await assert.rejects(LineClient.connect(stopping.imapTrustedPort), /ECONNREFUSED/, 'no longer accepting');
    const result = await reload;
    assert.equal(result.ok, false);
    assert.match(result.error ?? '', /stopping/);
    assert.ok(readGoesOn, 'the reload gave the read up; it did not wait for it to end');
    await stopped;
    assert.equal(stopping.mailfront.holder.source.description, `file ${stopping.storesFile}`, 'the new source was not put in force');
    assert.deepEqual(stopping.logs.filter((l) => l['event'] === 'config.reloaded' || l['event'] === 'storemap.source_changed'), [], 'nothing was committed');
  } finally {
    for (const socket of held) socket.destroy();
    await new Promise<void>((resolve) => blackhole.close(() => resolve()));
    await stopped;
    await stopping.stop();
  }
});

test('the certificate a listener serves is logged: at bind, and when a reload points it at other files', async () => {
  const hex = (fingerprint: unknown): string => String(fingerprint).replace(/:/g, '').toLowerCase();
  const bound = front.logs.find((l) => l['event'] === 'listener.bound' && l['listener'] === 'imaps');
  assert.ok(bound !== undefined, 'no listener.bound line for imaps');
  assert.ok(typeof bound['subject'] === 'string' && typeof bound['validTo'] === 'string' && typeof bound['fingerprint'] === 'string');
  // The last line naming imaps's certificate names the one served (tests before this one may have renewed it).
  const last = front.logs.filter((l) => (l['event'] === 'listener.bound' || l['event'] === 'listener.certificate_reloaded') && l['listener'] === 'imaps').at(-1)!;
  assert.equal(hex(last['fingerprint']), await servedFingerprint(front.imapsPort));

  const dir = tmpDir('othercert');
  const original = readFileSync(front.configFile, 'utf8');
  try {
    const [cert, key] = [join(dir.path, 'other.pem'), join(dir.path, 'other.key')];
    await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=other-files.test']);
    writeListeners(original, (listeners) => {
      listeners.find((l) => l['name'] === 'imaps')!['certificate'] = { cert, key };
    });
    const mark = front.logs.length;
    const reloaded = await front.mailfront.reload();
    assert.equal(reloaded.ok, true, reloaded.error);
    const line = front.logs.slice(mark).find((l) => l['event'] === 'listener.certificate_reloaded' && l['listener'] === 'imaps');
    assert.ok(line !== undefined, 'no listener.certificate_reloaded line for the new files');
    assert.equal(line['subject'], 'CN=other-files.test');
    assert.equal(hex(line['fingerprint']), await servedFingerprint(front.imapsPort));
  } finally {
    await restoreConfig(original);
    await dir.remove();
  }
});

test('a STARTTLS handshake that fails is logged with the listener and the client, as an implicit-TLS one is', async () => {
  const mark = front.logs.length;
  const raw = await LineClient.connect(front.imapPort);
  try {
    await raw.readLine();
    raw.send('a STARTTLS');
    assert.match(await raw.readLine(), /^a OK /);
    // Plaintext where a ClientHello should be.
    raw.send('b LOGIN liz not-a-handshake');
    await raw.waitClosed(5_000);
  } finally {
    raw.close();
  }
  const failed = await waitForLog(front, (l) => l['event'] === 'session.tls_failed', 5_000, mark);
  assert.deepEqual([failed['listener'], failed['client'], failed['reason']], ['imap', '127.0.0.1', 'error']);
});

test('a reload that names other certificate files refuses an expired certificate, and the working one stays', async () => {
  const dir = tmpDir('expiredcert');
  const original = readFileSync(front.configFile, 'utf8');
  try {
    // A CA signs a certificate valid for one day of 2020 (openssl ca takes the dates as given).
    const file = (name: string): string => join(dir.path, name);
    await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', file('ca.key'), '-out', file('ca.pem'), '-days', '2', '-subj', '/CN=expired-test-ca']);
    await run('openssl', ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', file('key.pem'), '-out', file('req.csr'), '-subj', '/CN=localhost']);
    writeFileSync(file('index.txt'), '');
    writeFileSync(file('serial'), '01\n');
    writeFileSync(file('ca.cnf'), `[ca]\ndefault_ca = d\n[d]\ndatabase = ${file('index.txt')}\nserial = ${file('serial')}\nnew_certs_dir = ${dir.path}\ndefault_md = sha256\npolicy = p\n[p]\ncommonName = supplied\n`);
    await run('openssl', ['ca', '-batch', '-config', file('ca.cnf'), '-cert', file('ca.pem'), '-keyfile', file('ca.key'), '-in', file('req.csr'), '-out', file('cert.pem'), '-startdate', '20200101000000Z', '-enddate', '20200102000000Z']);
    const before = await servedFingerprint(front.imapsPort);
    const config = parse(original) as Record<string, unknown>;
    (config['listeners'] as Array<Record<string, unknown>>).find((l) => l['name'] === 'imaps')!['certificate'] = { cert: file('cert.pem'), key: file('key.pem') };
    writeFileSync(front.configFile, stringify(config));
    const refused = await front.mailfront.reload();
    assert.equal(refused.ok, false);
    assert.match(refused.error ?? '', /expired/);
    assert.equal(await servedFingerprint(front.imapsPort), before, 'the working certificate is still served');
  } finally {
    writeFileSync(front.configFile, original);
    const restored = await front.mailfront.reload();
    assert.equal(restored.ok, true, restored.error);
    await dir.remove();
  }
});

test('an admin API reload that moves the HTTP listener answers its caller, and the new address serves from then on', async () => {
  const original = readFileSync(front.configFile, 'utf8');
  const before = front.mailfront.httpAddress()!;
  const port = await freePort();
  try {
    const config = parse(original) as Record<string, unknown>;
    config['http'] = { host: '127.0.0.1', port };
    writeFileSync(front.configFile, stringify(config));
    const answer = await fetch(`http://127.0.0.1:${before.port}/api/reload`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    assert.equal(answer.status, 200);
    assert.equal(((await answer.json()) as { ok: boolean }).ok, true);
    assert.equal(front.mailfront.httpAddress()!.port, port);
    assert.equal((await fetch(`http://127.0.0.1:${port}/healthz`)).status, 200);
  } finally {
    writeFileSync(front.configFile, original);
    const restored = await front.mailfront.reload();
    assert.equal(restored.ok, true, restored.error);
  }
});
