/**
 * Failover convergence: N idle IMAP sessions (default 1,000, in IDLE) are spliced through a
 * `mailfront serve` process to store alpha's master slot a1; then the store fails over to a2
 * through the admin API. Measures, from the moment the failover request is sent:
 *   - the first login that lands on the new master (a prober logs in back to back; the slot is
 *     told apart by the number of messages it holds),
 *   - the last old session closed by mailfront (the drain is spread over drain_spread_ms).
 * Goal (issue 4): both under 1 s plus the configured spread window.
 * Bounded: N sessions, one failover, a 60 s deadline for every wait. Loopback only.
 *
 *   node dist/bench/failover.js            (BENCH_FAILOVER_SESSIONS, BENCH_FAILOVER_SPREAD_MS)
 */
import { spawn } from 'node:child_process';
import { openSync, readFileSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { freePort, repoRoot, startDovecot, startSlapd, tmpDir } from '../test/integration/servers/index.js';

const SESSIONS = Number(process.env['BENCH_FAILOVER_SESSIONS'] ?? '1000');
const SPREAD_MS = Number(process.env['BENCH_FAILOVER_SPREAD_MS'] ?? '2000');
const USERS = 100;
const PASSWORD = 'bench-failover-pw';
const TOKEN = 'bench-failover-token-0123456789';
const DEADLINE_MS = 60_000;

function message(subject: string): string {
  return `From: bench@example.org\r\nSubject: ${subject}\r\n\r\nbody\r\n`;
}

/** A raw IMAP connection that logs in and reports the message count of INBOX. */
function openSession(port: number, user: string, idle: boolean): Promise<{ socket: Socket; exists: number; closedAt: () => number | null }> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port });
    let buffered = '';
    let closedAt: number | null = null;
    let step = 0;
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`login of ${user} did not finish`));
    }, DEADLINE_MS);
    socket.setEncoding('latin1');
    socket.on('error', () => undefined);
    socket.on('close', () => {
      closedAt = Date.now();
      if (step < 3) {
        clearTimeout(timer);
        reject(new Error(`connection of ${user} closed during login`));
      }
    });
    socket.on('data', (data: string) => {
      buffered += data;
      if (step === 0 && buffered.includes('\r\n')) {
        step = 1;
        buffered = '';
        socket.write(`a LOGIN ${user} ${PASSWORD}\r\nb EXAMINE INBOX\r\n`);
      } else if (step === 1 && /\r\nb (OK|NO|BAD)/.test(`\r\n${buffered}`)) {
        step = 2;
        const exists = Number(/\* (\d+) EXISTS/.exec(buffered)?.[1] ?? -1);
        if (!/^a OK/m.test(buffered)) {
          clearTimeout(timer);
          socket.destroy();
          return reject(new Error(`login of ${user} failed: ${buffered.slice(0, 200)}`));
        }
        buffered = '';
        if (idle) socket.write('c IDLE\r\n');
        step = 3;
        clearTimeout(timer);
        resolve({ socket, exists, closedAt: () => closedAt });
      }
    });
  });
}

async function waitFor(what: string, probe: () => boolean): Promise<void> {
  const deadline = Date.now() + DEADLINE_MS;
  while (!probe()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

async function main(): Promise<void> {
  const dir = tmpDir('bench-failover');
  const users = Array.from({ length: USERS }, (_, i) => `fo${i}`);
  const slapd = await startSlapd({ users: users.map((uid) => ({ uid, password: PASSWORD, store: 'alpha' })) });
  const dovecotUsers = users.map((name) => ({ name, password: PASSWORD }));
  const [a1, a2] = await Promise.all([
    startDovecot({ name: 'bench-a1', users: dovecotUsers, mailProcessClientLimit: 1000 }),
    startDovecot({ name: 'bench-a2', users: dovecotUsers, mailProcessClientLimit: 1000 }),
  ]);
  let child: ReturnType<typeof spawn> | undefined;
  try {
    // a1 holds one message per user, a2 two: EXAMINE tells which slot answered.
    for (const user of users) {
      await a1.deliver(user, message('on a1'));
      await a2.deliver(user, message('on a2'));
      await a2.deliver(user, message('on a2 too'));
    }
    const [imapPort, httpPort] = [await freePort(), await freePort()];
    writeFileSync(join(dir.path, 'stores.yaml'), stringify({ stores: { alpha: { current_master: 'a1', slots: { a1: { host: '127.0.0.1', imap_port: a1.imapPort }, a2: { host: '127.0.0.1', imap_port: a2.imapPort } } } } }));
    writeFileSync(
      join(dir.path, 'mailfront.yaml'),
      stringify({
        log: { level: 'warn' },
        listeners: [{ name: 'imap', protocol: 'imap', host: '127.0.0.1', port: imapPort, plaintext_without_tls: true }],
        directory: { urls: [slapd.url], bind_dn: slapd.bindDn, bind_password: slapd.bindPassword, base_dn: slapd.usersDn },
        store_map: { file: 'stores.yaml' },
        failover: { drain_spread_ms: SPREAD_MS },
        throttle: { enabled: false },
        connection_limits: { max_connections: 100_000, max_connections_per_address: 100_000, max_sessions_per_user: 100_000 },
        health: { interval_ms: 0 },
        http: { host: '127.0.0.1', port: httpPort },
        // No balancer watches /readyz here: the stop need not wait for one to notice.
        shutdown: { unready_delay_ms: 0 },
        admin: { token: TOKEN },
      }),
    );
    const log = openSync(join(dir.path, 'mailfront.log'), 'a');
    child = spawn(process.execPath, [join(repoRoot(), 'dist/src/cli/main.js'), 'serve', '-c', join(dir.path, 'mailfront.yaml')], { stdio: ['ignore', log, log] });
    await waitFor('mailfront to listen', () => {
      try {
        return readFileSync(join(dir.path, 'mailfront.log'), 'utf8').length >= 0 && child!.exitCode === null && tryConnect(imapPort);
      } catch {
        return false;
      }
    });
    await new Promise((r) => setTimeout(r, 300));

    process.stdout.write(`failover bench: opening ${SESSIONS} idle sessions on a1 through mailfront...\n`);
    const sessions: Array<Awaited<ReturnType<typeof openSession>>> = [];
    for (let i = 0; i < SESSIONS; i += 50) {
      sessions.push(...(await Promise.all(Array.from({ length: Math.min(50, SESSIONS - i) }, (_, j) => openSession(imapPort, users[(i + j) % USERS]!, true)))));
    }
    if (sessions.some((s) => s.exists !== 1)) throw new Error('a session did not land on a1');

    const changedAt = Date.now();
    const failover = fetch(`http://127.0.0.1:${httpPort}/api/stores/alpha/failover`, { method: 'POST', headers: { authorization: `Bearer ${TOKEN}` }, body: JSON.stringify({ slot: 'a2' }) });
    // Prober: log in back to back until one lands on a2.
    let firstOnNewMaster = -1;
    let probes = 0;
    while (firstOnNewMaster < 0 && Date.now() - changedAt < DEADLINE_MS) {
      const probe = await openSession(imapPort, users[probes % USERS]!, false);
      probes++;
      probe.socket.destroy();
      if (probe.exists === 2) firstOnNewMaster = Date.now() - changedAt;
    }
    const response = await failover;
    if (!response.ok) throw new Error(`failover request failed: ${response.status} ${await response.text()}`);
    await waitFor('every old session to close', () => sessions.every((s) => s.closedAt() !== null));
    const lastClosed = Math.max(...sessions.map((s) => s.closedAt()!)) - changedAt;
    const firstClosed = Math.min(...sessions.map((s) => s.closedAt()!)) - changedAt;
    const goal = 1_000 + SPREAD_MS;
    const result = {
      sessions: SESSIONS,
      spreadMs: SPREAD_MS,
      firstLoginOnNewMasterMs: firstOnNewMaster,
      probesUntilThen: probes,
      firstOldSessionClosedMs: firstClosed,
      lastOldSessionClosedMs: lastClosed,
      goalMs: goal,
      met: firstOnNewMaster < goal && lastClosed < goal,
    };
    process.stdout.write(
      `\n| measure | ms | goal (1 s + ${SPREAD_MS} ms spread) |\n|---|---|---|\n` +
        `| change → first login on the new master | ${firstOnNewMaster} | ${firstOnNewMaster < goal ? 'met' : 'MISSED'} |\n` +
        `| change → first old session closed | ${firstClosed} | |\n` +
        `| change → last of ${SESSIONS} old sessions closed | ${lastClosed} | ${lastClosed < goal ? 'met' : 'MISSED'} |\n\n` +
        `${JSON.stringify(result)}\n`,
    );
    writeFileSync(join(repoRoot(), 'bench/results/failover.json'), `${JSON.stringify({ date: new Date().toISOString(), ...result }, null, 2)}\n`);
    for (const s of sessions) s.socket.destroy();
  } finally {
    if (child && child.exitCode === null) {
      child.kill('SIGTERM');
      await new Promise((r) => child!.once('exit', r));
    }
    await Promise.all([slapd.stop(), a1.stop(), a2.stop()]);
    await dir.remove();
  }
}

/** True when something accepts connections on the port (checked synchronously enough for a poll). */
let listening = false;
function tryConnect(port: number): boolean {
  if (listening) return true;
  const socket = connect({ host: '127.0.0.1', port });
  socket.on('connect', () => {
    listening = true;
    socket.destroy();
  });
  socket.on('error', () => undefined);
  return false;
}

main().then(
  () => process.exit(0),
  (error: unknown) => {
    process.stderr.write(`failover bench: ${error instanceof Error ? error.stack ?? error.message : String(error)}\n`);
    process.exit(1);
  },
);
