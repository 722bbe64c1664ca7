/**
 * What a stop (SIGTERM) does to a running `mailfront serve` process, as the README's
 * "SIGTERM / SIGINT" entry says: /readyz answers 503 from the moment the stop begins (a load
 * balancer takes the instance out while spliced sessions drain), a spliced IMAP session is told
 * `* BYE [UNAVAILABLE] Server shutting down` when the drain deadline passes, and the log's last
 * line, `server.stopped`, is on disk when the process has exited. And how a start that fails ends
 * as a stop does: exit 1 once the log is written or given up, whatever stdout's reader does.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { closeSync, constants, openSync, readFileSync, writeFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { stringify } from 'yaml';
import { LineClient, freePort, squatPort, startDovecot, startSlapd, tmpDir } from './servers/index.js';
import type { Dovecot, Slapd, TmpDir } from './servers/index.js';
import { makeMessage, registerPasswords, registerSecrets, suiteLogWriter } from './front.js';

const PASSWORD = 'Stop-pw-6e1f';
const DRAIN_MS = 2_000;

/** Logs sam in on `imapPort` of the `serve` child, trying again while it starts (15 s at most). */
async function loginWhileStarting(imapPort: number, child: ChildProcess): Promise<LineClient> {
  const deadline = Date.now() + 15_000;
  for (;;) {
    try {
      const client = await LineClient.connect(imapPort);
      await client.readLine();
      client.send(`a1 LOGIN sam ${PASSWORD}`);
      assert.match(await client.readLine(), /^a1 OK /);
      return client;
    } catch (error) {
      if (child.exitCode !== null || Date.now() > deadline) throw error;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

let slapd: Slapd;
let dovecot: Dovecot;
let dir: TmpDir;

before(async () => {
  slapd = await startSlapd({ users: [{ uid: 'sam', password: PASSWORD, store: 'alpha' }] });
  dovecot = await startDovecot({ name: 'stop', users: [{ name: 'sam', password: PASSWORD }] });
  await dovecot.deliver('sam', makeMessage('before the stop'));
  dir = tmpDir('stop');
  // Written once, before the cases' mailfronts (which run at once) read them.
  writeFileSync(join(dir.path, 'ldap.secret'), `${slapd.bindPassword}\n`);
  writeFileSync(join(dir.path, 'stores.yaml'), stringify({ stores: { alpha: { current_master: 's1', slots: { s1: { host: '127.0.0.1', imap_port: dovecot.imapPort } } } } }));
  registerSecrets([slapd.bindPassword]);
  registerPasswords(PASSWORD);
});
after(async () => {
  await Promise.all([slapd?.stop(), dovecot?.stop(), dir?.remove()]);
});

/** Writes a config for one IMAP listener on `imapPort`, with `extra` sections (the secret and store map before() wrote). */
function writeConfig(name: string, imapPort: number, extra: Record<string, unknown>): string {
  const file = join(dir.path, name);
  writeFileSync(
    file,
    stringify({
      log: { level: 'info' },
      listeners: [{ name: 'imap', protocol: 'imap', host: '127.0.0.1', port: imapPort, tls: 'none', plaintext_without_tls: true }],
      directory: { urls: [slapd.url], bind_dn: slapd.bindDn, bind_password_file: 'ldap.secret', base_dn: slapd.usersDn, store_attribute: 'mailStore', connect_timeout_ms: 1000, operation_timeout_ms: 2000 },
      store_map: { file: 'stores.yaml' },
      backend: { login_mode: 'replay' },
      health: { interval_ms: 0 },
      ...extra,
    }),
  );
  return file;
}

/** The complete JSON lines of a log file (a line still being written is left out). */
function logLines(file: string): Array<Record<string, unknown>> {
  const lines = readFileSync(file, 'utf8').split('\n');
  lines.pop();
  return lines.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
}

async function readyz(httpPort: number): Promise<{ status: number; body: string } | null> {
  try {
    const response = await fetch(`http://127.0.0.1:${httpPort}/readyz`, { signal: AbortSignal.timeout(2_000) });
    return { status: response.status, body: await response.text() };
  } catch {
    return null;
  }
}

/** Polls `file` until a line with `event` is in it (or `ms` pass: throws). */
async function logged(file: string, event: string, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (!logLines(file).some((l) => l['event'] === event)) {
    if (Date.now() > deadline) throw new Error(`no ${event} within ${ms} ms: ${readFileSync(file, 'utf8')}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/**
 * Runs a `serve` whose start fails (its HTTP port is in use) with `stdout`, and `signal` sent once
 * stderr has said why: how it ended within 30 s (null: still running, then SIGKILLed) and its stderr.
 */
async function failedStart(name: string, stdout: number | 'pipe', signal?: NodeJS.Signals): Promise<{ ended: { code: number | null; signal: NodeJS.Signals | null } | null; stderr: string }> {
  const [imapPort, squatter] = [await freePort(), await squatPort()];
  const configFile = writeConfig(`${name}.yaml`, imapPort, { http: { host: '127.0.0.1', port: (squatter.address() as { port: number }).port } });
  const cli = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
  const child = spawn(process.execPath, [cli, 'serve', '-c', configFile], { stdio: ['ignore', stdout, 'pipe'] });
  // The log shipper gone before the first line (`serve | head -c 100` once head has had its bytes).
  child.stdout?.destroy();
  let stderr = '';
  child.stderr!.setEncoding('utf8').on('data', (text: string) => (stderr += text));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  try {
    if (signal !== undefined) {
      const deadline = Date.now() + 15_000;
      while (!/EADDRINUSE/.test(stderr) && child.exitCode === null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      child.kill(signal);
    }
    const ended = await Promise.race([exited, new Promise<null>((r) => setTimeout(() => r(null), 30_000))]);
    // stderr's last bytes may come after the exit.
    await new Promise((r) => setTimeout(r, 200));
    return { ended, stderr };
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    squatter.close();
  }
}

/** The write end of a FIFO whose 64 KiB this process has filled and never reads (a log shipper that hung), non-blocking; close both when done. */
function stalledFifo(name: string): { out: number; reader: number } {
  const fifo = join(dir.path, `${name}.fifo`);
  execFileSync('mkfifo', [fifo]);
  const reader = openSync(fifo, 'r+');
  const out = openSync(fifo, constants.O_WRONLY | constants.O_NONBLOCK);
  const filler = Buffer.alloc(4096, 'x');
  for (;;) {
    try {
      writeSync(out, filler);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'EAGAIN') break;
      throw error;
    }
  }
  return { out, reader };
}

// The cases run at once: each runs a mailfront of its own (its config, port, log and FIFO), and
// they share only slapd and Dovecot, where each session is one more of sam's.
describe('stopping mailfront', { concurrency: true }, () => {
  test('SIGTERM: /readyz answers 503 while spliced sessions drain, a spliced IMAP session is told "Server shutting down", and the log ends with server.stopped at exit', async () => {
    const [imapPort, httpPort] = [await freePort(), await freePort()];
    const configFile = writeConfig('mailfront.yaml', imapPort, {
      http: { host: '127.0.0.1', port: httpPort },
      admin: { token: 'stop-test-admin-token-0123' },
      // No unready delay: this test is about the drain (stop-unready.test.ts tests the delay).
      shutdown: { drain_timeout_ms: DRAIN_MS, unready_delay_ms: 0 },
    });
    registerSecrets(['stop-test-admin-token-0123']);
    const logFile = join(dir.path, 'mailfront.log');
    const out = openSync(logFile, 'a');
    // The CLI of the build this test file belongs to.
    const cli = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
    const child = spawn(process.execPath, ['--enable-source-maps', cli, 'serve', '-c', configFile], { stdio: ['ignore', out, out] });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    let raw: LineClient | undefined;
    try {
      // Ready: bound, the store map loaded, the directory reachable.
      const deadline = Date.now() + 15_000;
      while ((await readyz(httpPort))?.status !== 200) {
        if (child.exitCode !== null || Date.now() > deadline) throw new Error(`mailfront did not become ready: ${readFileSync(logFile, 'utf8')}`);
        await new Promise((r) => setTimeout(r, 100));
      }
      raw = await LineClient.connect(imapPort);
      await raw.readLine();
      raw.send(`a1 LOGIN sam ${PASSWORD}`);
      assert.match(await raw.readLine(), /^a1 OK /);

      child.kill('SIGTERM');
      // The spliced session keeps the process (and its HTTP listener) up for the drain: /readyz
      // must say no from the start of the stop, long before the drain deadline.
      const stopped = Date.now();
      let answer = await readyz(httpPort);
      while (answer?.status !== 503 && Date.now() - stopped < DRAIN_MS / 2) {
        await new Promise((r) => setTimeout(r, 50));
        answer = await readyz(httpPort);
      }
      assert.equal(answer?.status, 503, `/readyz during the stop: ${JSON.stringify(answer)}`);
      assert.match(answer.body, /stopping/);
      // The session did not end on its own: at the deadline it is told why it is closed.
      assert.equal(await raw.readLine(DRAIN_MS + 5_000), '* BYE [UNAVAILABLE] Server shutting down');
      assert.equal(await raw.waitClosed(5_000), true, 'the session is closed after its BYE');
      assert.equal(await exited, 0);
      const lines = logLines(logFile);
      const stoppedLine = lines.find((l) => l['event'] === 'server.stopped');
      assert.ok(stoppedLine, `no server.stopped line; the log ends: ${lines.slice(-3).map((l) => String(l['event'])).join(', ')}`);
      // The last line logged, by its time. (Not always the file's last line: the process exits with
      // an earlier asynchronous write possibly still in flight, which then lands after it.)
      const stoppedAt = Date.parse(String(stoppedLine['time']));
      assert.deepEqual(lines.filter((l) => Date.parse(String(l['time'])) > stoppedAt).map((l) => l['event']), [], 'lines logged after server.stopped');
      const finished = lines.find((l) => l['event'] === 'session.finished' && l['user'] === 'sam');
      assert.equal(finished?.['reason'], 'shutdown', 'the spliced session was ended by the stop');
    } finally {
      raw?.close();
      if (child.exitCode === null) child.kill('SIGKILL');
      // Into the suite's secret scan.
      const write = suiteLogWriter();
      for (const line of readFileSync(logFile, 'utf8').split('\n')) if (line !== '') write(line);
    }
  });

  test('a stop while the log reader lags: every line reaches it, in order, server.stopped last', async () => {
    const [imapPort] = [await freePort()];
    const configFile = writeConfig('lagging.yaml', imapPort, { connection_limits: { max_sessions_per_user: 100 }, shutdown: { drain_timeout_ms: 300 } });
    // stdout is a FIFO (a pipe's 64 KiB) whose reader starts reading only when told: the logins'
    // lines fill it, so the server's last batches are still being written when it stops.
    const fifo = join(dir.path, 'log.fifo');
    const go = join(dir.path, 'log.go');
    const logFile = join(dir.path, 'lagging.log');
    execFileSync('mkfifo', [fifo]);
    const reader = spawn('sh', ['-c', `exec 3<"${fifo}"; n=0; while [ ! -e "${go}" ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done; cat <&3 > "${logFile}"`], { stdio: 'ignore' });
    const readerDone = new Promise<void>((resolve) => reader.once('exit', () => resolve()));
    const out = openSync(fifo, 'w');
    // stderr apart: what mailfront says there (log lines it gave up on) is the failure's reason.
    const errFile = join(dir.path, 'lagging.stderr');
    const err = openSync(errFile, 'w');
    const cli = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
    const child = spawn(process.execPath, [cli, 'serve', '-c', configFile], { stdio: ['ignore', out, err] });
    closeSync(out);
    closeSync(err);
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const held: LineClient[] = [];
    try {
      const login = (): Promise<LineClient> => loginWhileStarting(imapPort, child);
      // About 800 bytes of log per login and logout: well past what the FIFO holds.
      for (let i = 0; i < 150; i++) {
        const client = await login();
        client.send('a2 LOGOUT');
        await client.waitClosed(5_000);
        client.close();
      }
      // And sessions whose end lines the stop writes in a burst, just before server.stopped.
      for (let i = 0; i < 30; i++) held.push(await login());
      child.kill('SIGTERM');
      await new Promise((r) => setTimeout(r, 1_500));
      writeFileSync(go, '');
      assert.equal(await exited, 0);
      await readerDone;
      assert.equal(readFileSync(errFile, 'utf8'), '', 'nothing on stderr');
      const text = readFileSync(logFile, 'utf8');
      assert.ok(text.endsWith('\n'), 'the log ends inside a line');
      const lines = text.split('\n').filter((l) => l !== '');
      const events = lines.map((l) => (JSON.parse(l) as Record<string, unknown>)['event']);
      assert.equal(events.at(-1), 'server.stopped', `the log ends: ${events.slice(-3).join(', ')}`);
      assert.equal(events.filter((e) => e === 'session.spliced').length, 180);
      assert.equal(events.filter((e) => e === 'session.finished').length, 180, 'a session end line was lost');
      const write = suiteLogWriter();
      for (const line of lines) write(line);
    } finally {
      for (const client of held) client.close();
      if (child.exitCode === null) child.kill('SIGKILL');
      writeFileSync(go, '');
      if (reader.exitCode === null) reader.kill('SIGKILL');
    }
  });

  for (const second of ['SIGTERM', 'SIGINT'] as const) {
    test(`a ${second} while SIGTERM's drain goes on ends the drain: the spliced session is told BYE now, and the stop ends as usual (exit 0, server.stopped)`, async () => {
      const imapPort = await freePort();
      // A drain far longer than the test waits: only the second signal can end it in time.
      const configFile = writeConfig(`second-${second}.yaml`, imapPort, { shutdown: { drain_timeout_ms: 120_000 } });
      const logFile = join(dir.path, `second-${second}.log`);
      const out = openSync(logFile, 'a');
      const cli = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
      const child = spawn(process.execPath, [cli, 'serve', '-c', configFile], { stdio: ['ignore', out, out] });
      closeSync(out);
      const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
      let raw: LineClient | undefined;
      try {
        await logged(logFile, 'listener.bound', 15_000);
        raw = await LineClient.connect(imapPort);
        await raw.readLine();
        raw.send(`a1 LOGIN sam ${PASSWORD}`);
        assert.match(await raw.readLine(), /^a1 OK /);
        child.kill('SIGTERM');
        await logged(logFile, 'server.stopping', 10_000);
        child.kill(second);
        assert.equal(await raw.readLine(15_000), '* BYE [UNAVAILABLE] Server shutting down');
        assert.deepEqual(await exited, { code: 0, signal: null });
        const lines = logLines(logFile);
        const events = lines.map((l) => l['event']);
        assert.equal(lines.find((l) => l['event'] === 'server.drain_ended')?.['signal'], second);
        assert.equal(lines.find((l) => l['event'] === 'session.finished' && l['user'] === 'sam')?.['reason'], 'shutdown');
        assert.ok(events.includes('server.stopped'), `no server.stopped; the log ends: ${events.slice(-3).join(', ')}`);
      } finally {
        raw?.close();
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
        const write = suiteLogWriter();
        for (const line of readFileSync(logFile, 'utf8').split('\n')) if (line !== '') write(line);
      }
    });
  }

  test('a stop while the log reader has stalled for good ends: what stdout did not take within 5 s is dropped, and stderr says how much', async () => {
    const imapPort = await freePort();
    const configFile = writeConfig('stalled.yaml', imapPort, { connection_limits: { max_sessions_per_user: 100 }, shutdown: { drain_timeout_ms: 300 } });
    // stdout is a FIFO opened for reading by this process, which never reads it (a hung log
    // shipper): the logins' lines fill its 64 KiB, and no write to it ever completes again.
    const fifo = join(dir.path, 'stalled.fifo');
    execFileSync('mkfifo', [fifo]);
    const reader = openSync(fifo, 'r+');
    const out = openSync(fifo, 'w');
    const cli = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
    const child = spawn(process.execPath, [cli, 'serve', '-c', configFile], { stdio: ['ignore', out, 'pipe'] });
    closeSync(out);
    let stderr = '';
    child.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    try {
      const login = (): Promise<LineClient> => loginWhileStarting(imapPort, child);
      // About 800 bytes of log per login and logout: well past what the FIFO holds.
      for (let i = 0; i < 150; i++) {
        const client = await login();
        client.send('a2 LOGOUT');
        await client.waitClosed(5_000);
        client.close();
      }
      child.kill('SIGTERM');
      // The drain (300 ms) and the 5 s for the log; far more than that is a process that stays.
      const ended = await Promise.race([exited, new Promise<null>((r) => setTimeout(() => r(null), 30_000))]);
      assert.deepEqual(ended, { code: 0, signal: null }, `still running 30 s after SIGTERM; stderr: ${stderr}`);
      assert.match(stderr, /^mailfront: stdout took no log line for 5 s while stopping: [1-9]\d* bytes of log dropped at exit$/m);
    } finally {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      closeSync(reader);
    }
  });

  test("stdout's reader gone (EPIPE): mailfront goes on serving, says so once on stderr, and counts it in /metrics", async () => {
    const [imapPort, httpPort] = [await freePort(), await freePort()];
    const configFile = writeConfig('epipe.yaml', imapPort, { http: { host: '127.0.0.1', port: httpPort }, shutdown: { drain_timeout_ms: 0, unready_delay_ms: 0 } });
    const cli = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
    const child = spawn(process.execPath, ['--enable-source-maps', cli, 'serve', '-c', configFile], { stdio: ['ignore', 'pipe', 'pipe'] });
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    let stdout = '';
    let stderr = '';
    child.stdout!.setEncoding('utf8').on('data', (text: string) => (stdout += text));
    child.stderr!.setEncoding('utf8').on('data', (text: string) => (stderr += text));
    const login = async (): Promise<void> => {
      const raw = await LineClient.connect(imapPort);
      try {
        await raw.readLine();
        raw.send(`a1 LOGIN sam ${PASSWORD}`);
        assert.match(await raw.readLine(), /^a1 OK /);
        raw.send('a2 LOGOUT');
        assert.equal(await raw.waitClosed(5_000), true);
      } finally {
        raw.close();
      }
    };
    try {
      const deadline = Date.now() + 15_000;
      while ((await readyz(httpPort))?.status !== 200 || !stdout.includes('"http.bound"')) {
        if (child.exitCode !== null || Date.now() > deadline) throw new Error(`mailfront did not become ready: ${stdout}${stderr}`);
        await new Promise((r) => setTimeout(r, 100));
      }
      // The log shipper exits: the pipe's only reader is gone.
      child.stdout!.destroy();
      for (let i = 0; i < 3; i++) await login();
      const waitFor = Date.now() + 5_000;
      while (!/log lines cannot be written/.test(stderr) && Date.now() < waitFor) await new Promise((r) => setTimeout(r, 50));
      assert.equal(stderr.match(/log lines cannot be written/g)?.length, 1, `stderr: ${stderr}`);
      assert.match(stderr, /^mailfront: log lines cannot be written to stdout \(EPIPE: its reader has gone\); mailfront goes on serving, and log lines are lost from now on, until a restart \(mailfront_log_write_errors_total\{kind="closed"\}\)\n$/m);
      const metrics = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
      assert.match(metrics, /^mailfront_log_write_errors_total\{kind="closed"\} 1$/m);
      assert.match(metrics, /^mailfront_log_write_errors_total\{kind="failed"\} 0$/m);
      assert.match(metrics, /^mailfront_log_bytes_dropped_total 0$/m);
      // Still serving, and still said only once.
      await login();
      assert.equal(stderr.match(/log lines cannot be written/g)?.length, 1);
      child.kill('SIGTERM');
      assert.equal(await exited, 0);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
      const write = suiteLogWriter();
      for (const line of stdout.split('\n')) if (line.startsWith('{')) write(line);
    }
  });

  test('stdout on a full device (ENOSPC): mailfront goes on serving, says the lines are kept, and a stop still ends, what was not written given up', async () => {
    const [imapPort, httpPort] = [await freePort(), await freePort()];
    const configFile = writeConfig('enospc.yaml', imapPort, { http: { host: '127.0.0.1', port: httpPort }, shutdown: { drain_timeout_ms: 0, unready_delay_ms: 0 } });
    const cli = fileURLToPath(new URL('../../src/cli/main.js', import.meta.url));
    // /dev/full: every write fails with ENOSPC, as a log file on a full file system does.
    const full = openSync('/dev/full', 'w');
    const child = spawn(process.execPath, ['--enable-source-maps', cli, 'serve', '-c', configFile], { stdio: ['ignore', full, 'pipe'] });
    closeSync(full);
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    let stderr = '';
    child.stderr!.setEncoding('utf8').on('data', (text: string) => (stderr += text));
    try {
      const deadline = Date.now() + 15_000;
      while ((await readyz(httpPort))?.status !== 200) {
        if (child.exitCode !== null || Date.now() > deadline) throw new Error(`mailfront did not become ready: ${stderr}`);
        await new Promise((r) => setTimeout(r, 100));
      }
      const raw = await LineClient.connect(imapPort);
      try {
        await raw.readLine();
        raw.send(`a1 LOGIN sam ${PASSWORD}`);
        assert.match(await raw.readLine(), /^a1 OK /);
      } finally {
        raw.close();
      }
      const waitFor = Date.now() + 5_000;
      while (!/log lines cannot be written/.test(stderr) && Date.now() < waitFor) await new Promise((r) => setTimeout(r, 50));
      assert.match(stderr, /^mailfront: log lines cannot be written to stdout \(ENOSPC\); mailfront goes on serving, and keeps the lines \(up to 16777216 bytes\) to write them again once stdout takes them; past that they are dropped/m);
      const metrics = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
      assert.match(metrics, /^mailfront_log_write_errors_total\{kind="failed"\} [1-9]\d*$/m);
      assert.match(metrics, /^mailfront_log_write_errors_total\{kind="closed"\} 0$/m);
      const stopped = Date.now();
      child.kill('SIGTERM');
      // The exit's own flush retried the refused lines for ever (every 100 ms): the stop never ended.
      const code = await Promise.race([exited, new Promise<string>((r) => setTimeout(() => r('still running'), 15_000))]);
      assert.equal(code, 0, `${Date.now() - stopped} ms after SIGTERM: ${String(code)}; stderr: ${stderr}`);
      assert.match(stderr, /mailfront: stdout refused the log lines \(ENOSPC\) while stopping: \d+ bytes of log dropped at exit\n/);
    } finally {
      if (child.exitCode === null) child.kill('SIGKILL');
    }
  });
  // `mailfront serve | head -c 100` with a port in use ran on for ever: the exit's synchronous
  // flush of stdout retried the lines its reader would never take every 100 ms, and SIGTERM, kept
  // for a stop that never came, did nothing. systemd's Restart=on-failure never fired.
  test("a start that fails with stdout's reader gone (EPIPE) exits 1, the error on stderr", async () => {
    const { ended, stderr } = await failedStart('failed-start-epipe', 'pipe');
    assert.deepEqual(ended, { code: 1, signal: null }, `not ended 30 s after a failed start; stderr: ${stderr}`);
    assert.match(stderr, /^mailfront: .*EADDRINUSE/m);
    // The lost log is said as what it is during a failed start, not "goes on serving": the pipe
    // may refuse the start's first line, before the start has failed, or a later one.
    assert.match(stderr, /^mailfront: log lines cannot be written to stdout \(EPIPE: its reader has gone\); (mailfront goes on with its start, and log lines are lost from now on, until a restart|mailfront exits, as its start failed, and log lines are lost) \(mailfront_log_write_errors_total\{kind="closed"\}\)$/m);
    assert.doesNotMatch(stderr, /goes on serving/);
  });

  test('a start that fails with the log reader stalled exits 1 once stdout has taken no line for 5 s, what was not written dropped and said on stderr', async () => {
    const { out, reader } = stalledFifo('failed-start-stalled');
    try {
      const { ended, stderr } = await failedStart('failed-start-stalled', out);
      assert.deepEqual(ended, { code: 1, signal: null }, `not ended 30 s after a failed start; stderr: ${stderr}`);
      assert.match(stderr, /^mailfront: .*EADDRINUSE/m);
      assert.match(stderr, /^mailfront: stdout took no log line for 5 s after a failed start: [1-9]\d* bytes of log dropped at exit$/m);
    } finally {
      closeSync(out);
      closeSync(reader);
    }
  });

  test('a SIGTERM while a failed start waits for a stalled log reader ends the wait: exit 1, what was not written dropped and said on stderr', async () => {
    const { out, reader } = stalledFifo('failed-start-sigterm');
    try {
      const { ended, stderr } = await failedStart('failed-start-sigterm', out, 'SIGTERM');
      assert.deepEqual(ended, { code: 1, signal: null }, `not ended 30 s after SIGTERM; stderr: ${stderr}`);
      assert.match(stderr, /^mailfront: .*EADDRINUSE/m);
      assert.match(stderr, /^mailfront: SIGTERM while the log was written after a failed start: [1-9]\d* bytes of log dropped at exit$/m);
      assert.doesNotMatch(stderr, /took no log line/);
    } finally {
      closeSync(out);
      closeSync(reader);
    }
  });
});
