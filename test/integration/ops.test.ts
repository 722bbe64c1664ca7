/**
 * mailfront run as operators run it: two `mailfront serve` processes behind a real HAProxy
 * (send-proxy-v2), sharing a store map kept in LDAP, sending PROXY v2 to a Dovecot
 * `haproxy = yes` listener. Checks the real client address end to end, PROXY from untrusted
 * peers, webmail ID addresses, /metrics through promtool, /healthz and /readyz, SIGHUP
 * reload without dropping a spliced session, SIGTERM drain, and --help/--version everywhere.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync, writeFileSync } from 'node:fs';
import { connect as netConnect } from 'node:net';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { stringify } from 'yaml';
import { LDAP_STORES_DN, freePort, repoRoot, startDovecot, startHaproxy, startSlapd, tmpDir } from './servers/index.js';
import type { Dovecot, Haproxy, Slapd, TmpDir } from './servers/index.js';
import { makeMessage } from './front.js';

const run = promisify(execFile);
const PASSWORD = 'Ops-pw-7e1f';
const TOKEN = 'ops-admin-token-abcdef0123456789';
const CLI = (): string => join(repoRoot(), 'dist/src/cli/main.js');

let slapd: Slapd;
let dovecot: Dovecot;
let haproxy: Haproxy;
let dir: TmpDir;

interface Instance {
  readonly name: string;
  readonly configFile: string;
  readonly imapPort: number;
  readonly httpPort: number;
  readonly logFile: string;
  process: ChildProcess;
  /** Resolves with the exit code (registered at spawn, so an early exit is not missed). */
  readonly exited: Promise<number | null>;
  config: Record<string, unknown>;
}
const instances: Instance[] = [];

function configFor(imapPort: number, httpPort: number): Record<string, unknown> {
  return {
    log: { level: 'info' },
    listeners: [{ name: 'imap', protocol: 'imap', host: '127.0.0.1', port: imapPort, tls: 'none', plaintext_without_tls: true, proxy_protocol: { trusted_networks: ['127.0.0.1/32'], header_timeout_ms: 1000 } }],
    directory: { urls: [slapd.url], bind_dn: slapd.bindDn, bind_password: slapd.bindPassword, base_dn: slapd.usersDn, connect_timeout_ms: 500, operation_timeout_ms: 1000 },
    store_map: { ldap: { base_dn: LDAP_STORES_DN, poll_interval_ms: 200 } },
    backend: { login_mode: 'replay', proxy_protocol: 'v2', forward_client_address: false },
    trusted_networks: ['127.0.0.3/32'],
    http: { host: '127.0.0.1', port: httpPort },
    admin: { token: TOKEN },
    session: { auth_failure_delay_ms: 100 },
    health: { interval_ms: 1_000 },
    // unready_delay_ms 0: the SIGTERM test below wants the BYE before login at once (stop-unready.test.ts tests the delay behind HAProxy).
    shutdown: { drain_timeout_ms: 1500, unready_delay_ms: 0 },
  };
}

async function startInstance(name: string): Promise<Instance> {
  const [imapPort, httpPort] = [await freePort(), await freePort()];
  const configFile = join(dir.path, `${name}.yaml`);
  const config = configFor(imapPort, httpPort);
  writeFileSync(configFile, stringify(config));
  const logFile = join(dir.path, `${name}.log`);
  const out = (await import('node:fs')).openSync(logFile, 'a');
  const child = spawn(process.execPath, ['--enable-source-maps', CLI(), 'serve', '-c', configFile], { stdio: ['ignore', out, out] });
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const instance: Instance = { name, configFile, imapPort, httpPort, logFile, process: child, exited, config };
  const deadline = Date.now() + 10_000;
  while (!logLines(instance).some((l) => l['event'] === 'http.bound')) {
    if (child.exitCode !== null || Date.now() > deadline) throw new Error(`${name} did not start: ${readFileSync(logFile, 'utf8')}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return instance;
}

/** The complete lines of an instance's log so far: mailfront writes in batches, and a read may land in the middle of one. */
function logLines(instance: Instance): Array<Record<string, unknown>> {
  const lines = readFileSync(instance.logFile, 'utf8').split('\n');
  lines.pop(); // empty after a final newline, or a line still being written
  return lines.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as Record<string, unknown>);
}

async function waitFor<T>(what: string, probe: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs = 5_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value) return value;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** A raw IMAP connection from a chosen loopback address. */
class Raw {
  private buffer = '';
  closed = false;
  private constructor(readonly socket: Socket) {
    socket.setEncoding('latin1');
    socket.on('data', (d: string) => (this.buffer += d));
    socket.on('close', () => (this.closed = true));
    socket.on('error', () => undefined);
  }
  static async open(port: number, localAddress = '127.0.0.1'): Promise<Raw> {
    const socket = netConnect({ host: '127.0.0.1', port, localAddress });
    await once(socket, 'connect');
    return new Raw(socket);
  }
  async line(startsWith: string, timeoutMs = 5_000): Promise<string> {
    return waitFor(`a line starting ${startsWith}`, () => {
      const lines = this.buffer.split('\r\n');
      const index = lines.findIndex((l) => l.startsWith(startsWith));
      if (index < 0) return undefined;
      this.buffer = lines.slice(index + 1).join('\r\n');
      return lines[index];
    }, timeoutMs);
  }
  send(text: string): void {
    this.socket.write(`${text}\r\n`);
  }
  async waitClosed(timeoutMs = 5_000): Promise<void> {
    await waitFor('the connection to close', () => this.closed, timeoutMs);
  }
}

async function login(port: number, localAddress: string, extra: string[] = []): Promise<Raw> {
  const raw = await Raw.open(port, localAddress);
  await raw.line('* OK');
  for (const line of extra) raw.send(line);
  raw.send(`L1 LOGIN alice ${PASSWORD}`);
  assert.match(await raw.line('L1 '), /^L1 OK /);
  return raw;
}

before(async () => {
  dir = tmpDir('ops');
  slapd = await startSlapd({ users: [{ uid: 'alice', password: PASSWORD, store: 'alpha' }] });
  dovecot = await startDovecot({ name: 'ops-a1', users: [{ name: 'alice', password: PASSWORD }], haproxy: true });
  await dovecot.deliver('alice', makeMessage('ops hello'));
  await slapd.modify(
    [
      `dn: cn=alpha,${LDAP_STORES_DN}`,
      'changetype: add',
      'objectClass: mailfrontStore',
      'cn: alpha',
      'mailfrontCurrentMaster: a1',
      '',
      `dn: cn=a1,cn=alpha,${LDAP_STORES_DN}`,
      'changetype: add',
      'objectClass: mailfrontSlot',
      'cn: a1',
      'mailfrontHost: 127.0.0.1',
      `mailfrontImapPort: ${dovecot.imapHaproxyPort!}`,
      '',
    ].join('\n'),
  );
  instances.push(await startInstance('mf1'), await startInstance('mf2'));
  haproxy = await startHaproxy({
    frontends: [{ name: 'imap', backend: 'mailfront' }],
    backends: [{ name: 'mailfront', balance: 'roundrobin', servers: instances.map((i) => ({ name: i.name, port: i.imapPort, sendProxyV2: true })) }],
  });
});

after(async () => {
  for (const i of instances) if (i.process.exitCode === null) i.process.kill('SIGKILL');
  await haproxy?.stop();
  await Promise.all([slapd?.stop(), dovecot?.stop()]);
  await dir?.remove();
});

describe('two mailfront instances behind HAProxy with PROXY v2, Dovecot behind with haproxy = yes', () => {
  test('the real client address reaches both mailfront logs and Dovecot', async () => {
    // Round robin over two instances; a few extra logins make the spread independent of
    // HAProxy's own start-up probe.
    for (let i = 0; i < 4; i++) {
      const raw = await login(haproxy.ports['imap']!, '127.0.0.2');
      raw.send('L2 LOGOUT');
      await raw.waitClosed();
    }
    for (const instance of instances) {
      const started = await waitFor(`a proxied session on ${instance.name}`, () => logLines(instance).find((l) => l['event'] === 'session.spliced' && l['client'] === '127.0.0.2'));
      assert.equal(started['via'], '127.0.0.1');
    }
    await waitFor('rip=127.0.0.2 in the Dovecot log', async () => /Login: user=<alice>.*rip=127\.0\.0\.2/.test(await dovecot.readLog()));
  });

  test('a PROXY header from an untrusted peer closes the connection; without a header it is a normal client', async () => {
    const forged = await Raw.open(instances[0]!.imapPort, '127.0.0.5');
    forged.socket.write('PROXY TCP4 198.51.100.9 127.0.0.1 5555 143\r\n');
    await forged.waitClosed();
    // The same a byte at a time (v1), and v2's binary signature in two pieces.
    const dribbled = await Raw.open(instances[0]!.imapPort, '127.0.0.5');
    for (const byte of 'PROXY TCP4 198.51.100.9 127.0.0.1 5555 143\r\n') {
      if (dribbled.socket.destroyed) break;
      dribbled.socket.write(byte);
      await new Promise((r) => setTimeout(r, 2));
    }
    await dribbled.waitClosed();
    const v2 = await Raw.open(instances[0]!.imapPort, '127.0.0.5');
    v2.socket.write(Buffer.from([0x0d, 0x0a, 0x0d, 0x0a, 0x00]));
    await new Promise((r) => setTimeout(r, 50));
    v2.socket.write(Buffer.from([0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a, 0x21, 0x11, 0x00, 0x0c]));
    await v2.waitClosed();
    const plain = await login(instances[0]!.imapPort, '127.0.0.5');
    plain.socket.destroy();
    await waitFor('rip=127.0.0.5 in the Dovecot log', async () => /rip=127\.0\.0\.5/.test(await dovecot.readLog()));
    assert.doesNotMatch(await dovecot.readLog(), /198\.51\.100\.9/);
  });

  test('ID x-originating-ip is honoured from the trusted webmail network only', async () => {
    const id = (ip: string): string => `I1 ID ("name" "webmail" "x-originating-ip" "${ip}")`;
    const webmail = await login(instances[0]!.imapPort, '127.0.0.3', [id('192.0.2.55')]);
    webmail.socket.destroy();
    await waitFor('rip=192.0.2.55 in the Dovecot log', async () => /rip=192\.0\.2\.55/.test(await dovecot.readLog()));
    // The honoured line spells the address as every other line does (session.spliced's client),
    // with the text as sent beside it when that differs.
    const mapped = await login(instances[0]!.imapPort, '127.0.0.3', [id('::FFFF:192.0.2.57')]);
    mapped.socket.destroy();
    const honoured = await waitFor('the honoured claim in the log', () => logLines(instances[0]!).find((l) => l['event'] === 'session.client_id_honoured' && l['claimed'] === '::FFFF:192.0.2.57'));
    assert.equal(honoured['client'], '192.0.2.57');
    await waitFor('the spliced session under the same address', () => logLines(instances[0]!).find((l) => l['event'] === 'session.spliced' && l['client'] === '192.0.2.57'));
    const stranger = await login(instances[0]!.imapPort, '127.0.0.5', [id('192.0.2.66')]);
    stranger.socket.destroy();
    await waitFor('the ignored claim in the log', () => logLines(instances[0]!).find((l) => l['event'] === 'session.client_id_ignored' && l['claimed'] === '192.0.2.66'));
    assert.doesNotMatch(await dovecot.readLog(), /192\.0\.2\.66/);
  });

  test('/metrics passes promtool check metrics and counts logins; /healthz and /readyz answer', async () => {
    const base = `http://127.0.0.1:${instances[0]!.httpPort}`;
    const text = await (await fetch(`${base}/metrics`)).text();
    const file = join(dir.path, 'metrics.txt');
    writeFileSync(file, text);
    const { stdout, stderr } = await run('sh', ['-c', `promtool check metrics < ${file}`]);
    assert.equal(`${stdout}${stderr}`.trim(), '');
    assert.match(text, /^mailfront_logins_total\{protocol="imap",result="success"\} [1-9]/m);
    assert.match(text, /^mailfront_store_map_version \d+/m);
    assert.match(text, /^mailfront_proxy_headers_total\{listener="imap",result="accepted"\} [1-9]/m);
    assert.doesNotMatch(text, /alice|127\.0\.0\.2/);
    assert.equal((await fetch(`${base}/healthz`)).status, 200);
    assert.equal((await fetch(`${base}/readyz`)).status, 200);
  });

  test('/readyz stays 200 while the directory is down, which every instance shares, and says it is degraded until it is back', async () => {
    // A 503 from every instance at once would have the balancer refuse every client, cached
    // logins included, where mailfront answers a temporary failure.
    const base = `http://127.0.0.1:${instances[0]!.httpPort}`;
    await slapd.stopOnly();
    try {
      const body = await waitFor('the directory reported down', async () => {
        const r = await fetch(`${base}/readyz`);
        assert.equal(r.status, 200);
        const answer = (await r.json()) as { degraded?: Array<{ name: string; detail: string }> };
        return answer.degraded !== undefined ? answer : undefined;
      });
      assert.deepEqual(body.degraded, [{ name: 'directory', ok: false, advisory: true, detail: 'unreachable' }]);
    } finally {
      await slapd.startAgain();
    }
    await waitFor('the directory reported back', async () => {
      const r = await fetch(`${base}/readyz`);
      return r.status === 200 && ((await r.json()) as { degraded?: unknown }).degraded === undefined;
    });
  });

  test('SIGHUP re-reads the config: a spliced session stays, a listener moved to a new port is re-bound', async () => {
    const instance = instances[1]!;
    const kept = await login(instance.imapPort, '127.0.0.5');
    const newPort = await freePort();
    const config = { ...instance.config, listeners: [{ ...(instance.config['listeners'] as object[])[0], port: newPort }] };
    writeFileSync(instance.configFile, stringify(config));
    instance.process.kill('SIGHUP');
    await waitFor('config.reloaded', () => logLines(instance).find((l) => l['event'] === 'config.reloaded'));
    kept.send('K1 NOOP');
    assert.match(await kept.line('K1 '), /^K1 OK/);
    const moved = await login(newPort, '127.0.0.5');
    moved.socket.destroy();
    await assert.rejects(Raw.open(instance.imapPort, '127.0.0.5'));
    kept.socket.destroy();
  });

  test('SIGTERM: BYE before login, spliced sessions drained up to the deadline, then exit', async () => {
    const instance = instances[0]!;
    const spliced = await login(instance.imapPort, '127.0.0.5');
    const waiting = await Raw.open(instance.imapPort, '127.0.0.5');
    await waiting.line('* OK');
    const started = Date.now();
    instance.process.kill('SIGTERM');
    assert.match(await waiting.line('* BYE'), /^\* BYE/);
    // At once (no unready delay here), not at the drain's end: a client not logged in has no
    // session to finish (a review's mutant that left it to the stop's end passed this test).
    const byeAfter = Date.now() - started;
    assert.ok(byeAfter < 1_000, `the client not logged in was told BYE ${byeAfter} ms after SIGTERM, with a 1.5 s drain deadline and no unready delay`);
    await spliced.waitClosed(5_000);
    const drainedAfter = Date.now() - started;
    assert.ok(drainedAfter >= 1_200, `the spliced session was closed after ${drainedAfter} ms, before the 1.5 s drain deadline`);
    assert.equal(await instance.exited, 0);
  });
});

test('--help and --version work on every subcommand', async () => {
  for (const command of ['', 'serve', 'check-config', 'stores', 'whereis', 'failover', 'maintenance', 'sessions', 'kick', 'unthrottle', 'reload']) {
    const args = command === '' ? [] : [command];
    const help = await run(process.execPath, [CLI(), ...args, '--help']);
    assert.match(help.stdout, /^Usage: mailfront/);
    const version = await run(process.execPath, [CLI(), ...args, '--version']);
    assert.match(version.stdout, /^mailfront \d+\.\d+\.\d+/);
  }
});

test('kick takes one of USER, --slot and --session: two are a usage error, not one of them silently', async () => {
  for (const args of [['alice', '--slot', 'a2'], ['alice', 'bob'], ['--slot', 'a2', '--session', '7']]) {
    // No server is asked: the URL would refuse the connection if it were.
    const result = await run(process.execPath, [CLI(), 'kick', ...args, '--url', 'http://127.0.0.1:9', '--token', 'x']).then(
      (done) => ({ code: 0, stderr: done.stderr }),
      (failed: { code: number; stderr: string }) => ({ code: failed.code, stderr: failed.stderr }),
    );
    assert.equal(result.code, 2, `kick ${args.join(' ')}: ${result.stderr}`);
    assert.match(result.stderr, /give one of USER, --slot SLOT or --session ID, not 2/);
  }
});

// The mailfront processes above log to files of their own, which startFront's capture never
// sees: scan them here, and hand their lines to the suite-wide scan (zz-secrets.test.ts).
test("no password, admin token or bind secret appears in the mailfront processes' log files", async () => {
  const { assertNoRegisteredSecret, registerSecrets, suiteLogWriter } = await import('./front.js');
  registerSecrets([PASSWORD, TOKEN, slapd.bindPassword]);
  const writeSuiteLog = suiteLogWriter();
  let count = 0;
  for (const instance of instances) {
    const lines = readFileSync(instance.logFile, 'utf8').split('\n').filter((l) => l !== '');
    count += lines.length;
    for (const line of lines) writeSuiteLog(line);
    assertNoRegisteredSecret(lines, instance.logFile);
  }
  assert.ok(count > 0, 'the instances logged nothing: the scan would pass on nothing');
});
