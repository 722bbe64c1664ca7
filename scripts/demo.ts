/**
 * `npm run demo`: a working sandbox on loopback. Starts slapd with a few users, two stores
 * each with a master and a replica Dovecot slot, and mailfront itself (as a child process,
 * exactly as an operator runs it), then prints how to connect and how to fail a store over.
 * Ctrl-C stops everything it started, and so does closing its terminal (SIGHUP).
 */
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';
import { stringify } from 'yaml';
import { makeCerts, startDovecot, startSlapd } from '../test/integration/servers/index.js';
import type { Dovecot } from '../test/integration/servers/index.js';

const ROOT = resolve(import.meta.dirname ?? new URL('.', import.meta.url).pathname, '../..');
// MAILFRONT_DEMO_SANDBOX: another folder, for a test run of the demo beside the user's own (its
// mailfront watches .sandbox/stores.yaml, which a second demo there would overwrite).
const SANDBOX = resolve(process.env['MAILFRONT_DEMO_SANDBOX'] || join(ROOT, '.sandbox'));
const PASSWORD = 'demo';
const USERS = [
  { uid: 'alice', store: 'store1' },
  { uid: 'bob', store: 'store1' },
  { uid: 'carol', store: 'store2' },
  { uid: 'dave', store: 'store2' },
];
const MASTER_USER = { name: 'proxyadmin', password: 'demo-master-secret' };

/** The wanted port when it is free, otherwise any free one. */
function portNear(wanted: number): Promise<number> {
  return new Promise((resolvePort) => {
    const probe = createServer();
    probe.once('error', () => {
      const any = createServer();
      any.listen(0, '127.0.0.1', () => {
        const { port } = any.address() as { port: number };
        any.close(() => resolvePort(port));
      });
    });
    probe.listen(wanted, '127.0.0.1', () => probe.close(() => resolvePort(wanted)));
  });
}

function message(subject: string, body: string): string {
  return `From: demo@example.org\r\nTo: you@example.org\r\nSubject: ${subject}\r\nDate: ${new Date().toUTCString()}\r\n\r\n${body}\r\n`;
}

async function main(): Promise<void> {
  mkdirSync(SANDBOX, { recursive: true });
  const stoppers: Array<() => Promise<void>> = [];
  let stopping = false;
  const stopAll = async (code: number): Promise<never> => {
    if (!stopping) {
      stopping = true;
      process.stdout.write('\ndemo: stopping everything...\n');
      for (const stop of stoppers.reverse()) await stop().catch(() => undefined);
      process.stdout.write('demo: stopped.\n');
    }
    process.exit(code);
  };
  // SIGHUP too: closing the terminal sends it to the whole foreground process group, and
  // mailfront and Dovecot take it as a reload and run on, on the demo's ports, once this process
  // died of it. The terminal is gone then: writing to it fails (EIO), which must not end the stop.
  for (const stream of [process.stdout, process.stderr]) stream.on('error', () => undefined);
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) process.on(sig, () => void stopAll(0));

  try {
    process.stdout.write('demo: starting slapd (the directory)...\n');
    const slapd = await startSlapd({ users: USERS.map((u) => ({ uid: u.uid, password: PASSWORD, store: u.store })) });
    stoppers.push(() => slapd.stop());

    process.stdout.write('demo: starting four Dovecot slots (two stores, a master and a replica each)...\n');
    const slotNames = ['slot101', 'slot102', 'slot201', 'slot202'] as const;
    const slots: Record<string, Dovecot> = {};
    for (const name of slotNames) {
      const store = name.startsWith('slot1') ? 'store1' : 'store2';
      const dovecot = await startDovecot({ name, users: USERS.filter((u) => u.store === store).map((u) => ({ name: u.uid, password: PASSWORD })), masterUser: MASTER_USER });
      stoppers.push(() => dovecot.stop());
      slots[name] = dovecot;
      for (const user of USERS.filter((u) => u.store === store)) {
        await dovecot.deliver(user.uid, message(`Hello ${user.uid}, this is ${name} of ${store}`, `You are reading this from slot ${name}.`));
      }
    }

    const certs = await makeCerts(SANDBOX);
    const [imap, imaps, pop3, pop3s, http] = await Promise.all([portNear(1143), portNear(1993), portNear(1110), portNear(1995), portNear(9143)]);
    const certificate = { cert: certs.certFile, key: certs.keyFile };
    const slot = (d: Dovecot) => ({ host: '127.0.0.1', imap_port: d.imapPort, pop3_port: d.pop3Port });
    writeFileSync(join(SANDBOX, 'ldap.secret'), `${slapd.bindPassword}\n`, { mode: 0o600 });
    writeFileSync(join(SANDBOX, 'backend.secret'), `${MASTER_USER.password}\n`, { mode: 0o600 });
    writeFileSync(join(SANDBOX, 'admin.token'), `demo-admin-token-${process.pid}-0123456789\n`, { mode: 0o600 });
    writeFileSync(
      join(SANDBOX, 'stores.yaml'),
      stringify({
        stores: {
          store1: { preferred_master: 'slot101', current_master: 'slot101', slots: { slot101: slot(slots['slot101']!), slot102: slot(slots['slot102']!) } },
          store2: { preferred_master: 'slot201', current_master: 'slot201', slots: { slot201: slot(slots['slot201']!), slot202: slot(slots['slot202']!) } },
        },
      }),
    );
    writeFileSync(
      join(SANDBOX, 'mailfront.yaml'),
      stringify({
        log: { level: 'info' },
        listeners: [
          { name: 'imap', protocol: 'imap', host: '127.0.0.1', port: imap, tls: 'starttls', certificate, plaintext_without_tls: true },
          { name: 'imaps', protocol: 'imap', host: '127.0.0.1', port: imaps, tls: 'implicit', certificate },
          { name: 'pop3', protocol: 'pop3', host: '127.0.0.1', port: pop3, tls: 'starttls', certificate, plaintext_without_tls: true },
          { name: 'pop3s', protocol: 'pop3', host: '127.0.0.1', port: pop3s, tls: 'implicit', certificate },
        ],
        directory: { urls: [slapd.url], bind_dn: slapd.bindDn, bind_password_file: 'ldap.secret', base_dn: slapd.usersDn, store_attribute: 'mailStore' },
        store_map: { file: 'stores.yaml' },
        backend: { login_mode: 'master-user', proxy_user: MASTER_USER.name, proxy_password_file: 'backend.secret' },
        failover: { drain_spread_ms: 1000 },
        health: { interval_ms: 2000 },
        http: { host: '127.0.0.1', port: http },
        // No balancer watches the sandbox's /readyz: a stop need not wait for one to notice.
        shutdown: { unready_delay_ms: 0 },
        admin: { token_file: 'admin.token' },
        // A sandbox's share of descriptors: the default (10,000 connections, two descriptors
        // each) is above many shells' open-files limit, and serve would warn about it.
        connection_limits: { max_connections: 1000 },
      }),
    );

    process.stdout.write('demo: starting mailfront...\n');
    const logFile = join(SANDBOX, 'mailfront.log');
    const { openSync } = await import('node:fs');
    // A fresh log each run: the readiness check below must not find an earlier run's line.
    const out = openSync(logFile, 'w');
    const child = spawn(process.execPath, ['--enable-source-maps', join(ROOT, 'dist/src/cli/main.js'), 'serve', '-c', join(SANDBOX, 'mailfront.yaml')], { stdio: ['ignore', out, out] });
    stoppers.push(
      () =>
        new Promise<void>((done) => {
          if (child.exitCode !== null) return done();
          child.once('exit', () => done());
          child.kill('SIGTERM');
        }),
    );
    child.once('exit', (code) => {
      if (!stopping) {
        process.stderr.write(`demo: mailfront exited (${code}); its log:\n${readFileSync(logFile, 'utf8').split('\n').slice(-20).join('\n')}\n`);
        void stopAll(1);
      }
    });
    // Wait until it listens.
    const deadline = Date.now() + 10_000;
    while (!readFileSync(logFile, 'utf8').includes(`"address":"127.0.0.1:${pop3s}"`)) {
      if (Date.now() > deadline) throw new Error(`mailfront did not start; see ${logFile}`);
      await new Promise((r) => setTimeout(r, 100));
    }

    // Absolute paths: the commands work from any folder.
    const cli = `node ${join(ROOT, 'dist/src/cli/main.js')} -c ${join(SANDBOX, 'mailfront.yaml')}`;
    process.stdout.write(`
mailfront demo is running (mailfront PID ${child.pid}).

  Users: ${USERS.map((u) => `${u.uid} (${u.store})`).join(', ')} — password "${PASSWORD}"
  IMAP  127.0.0.1:${imap} (STARTTLS; plaintext allowed for the demo)   IMAPS 127.0.0.1:${imaps}
  POP3  127.0.0.1:${pop3} (STLS; plaintext allowed for the demo)       POP3S 127.0.0.1:${pop3s}
  Test CA for TLS: ${certs.caFile}

Connect a client, e.g.:
  python3 -c "import imaplib; m=imaplib.IMAP4('127.0.0.1', ${imap}); m.login('alice','${PASSWORD}'); m.select(); print(m.fetch('1', '(BODY[HEADER.FIELDS (SUBJECT)])'))"
  openssl s_client -quiet -starttls imap -connect 127.0.0.1:${imap} -CAfile ${certs.caFile}   (then: a LOGIN alice ${PASSWORD})
  Any mail client: server 127.0.0.1, port ${imaps} (SSL/TLS) or ${imap} (STARTTLS), user alice, password ${PASSWORD}
  Each mailbox holds a message saying which slot it came from.

Watch and fail over (the CLI talks to the admin API on 127.0.0.1:${http}):
  ${cli} stores
  ${cli} whereis alice
  ${cli} failover store1 slot102
  Sessions of store1 spliced to slot101 are closed within 1 s (IMAP clients get a BYE), and new
  logins of alice and bob land on slot102 (its message says so). Editing
  ${join(SANDBOX, 'stores.yaml')} does the same: the file is watched.
  ${cli} maintenance store2 on --reason "Upgrade until 06:00, please wait"
  Logins of carol and dave are then refused at once with that reason (their sessions closed);
  ${cli} maintenance store2 off lets them in again.
  Metrics: python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:${http}/metrics').read().decode())"

Logs (JSON lines): ${logFile}
Press Ctrl-C to stop everything.
`);
    await new Promise<never>(() => undefined);
  } catch (error) {
    process.stderr.write(`demo: ${error instanceof Error ? error.stack ?? error.message : String(error)}\n`);
    await stopAll(1);
  }
}

void main();
