// What one client can make mailfront write to its log and count in its metrics: refusals of
// logins, of connections, ID claims, TLS handshakes, abandoned logins and PROXY headers. No
// directory or backend server runs here: the directory is a stand-in that fails as the test
// says, and the store map names a slot nobody listens on.
import { after, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { connect } from 'node:net';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { writeFile } from 'node:fs/promises';
import { stringify } from 'yaml';
import { loadConfig } from '../../src/config/load.js';
import type { Directory } from '../../src/auth/directory.js';
import { MailfrontError } from '../../src/errors.js';
import { Mailfront } from '../../src/main.js';
import { registerPasswords, registerSecrets, standInDirectory, parsedSuiteLog } from './front.js';
import { freePort, makeCerts, tmpDir } from './servers/index.js';

// Every password and secret this file sends (the suite's secret scan reads its log lines too).
registerPasswords('reader-pw-unused', 'plain-on-tls-pw', 'secret-pw', ...Array.from({ length: 100 }, (_, i) => `pw-${i}-xyz`));
registerSecrets(Array.from({ length: 100 }, (_, i) => Buffer.from(`\0user${i}\0pw-${i}-xyz`).toString('base64')));

const DELAY_MS = 300;
const PREAUTH_MS = 1_500;


interface Instance {
  readonly mailfront: Mailfront;
  readonly logs: Array<Record<string, unknown>>;
  port(listener: string): number;
  stop(): Promise<void>;
}

const running = new Set<Instance>();
after(async () => {
  for (const instance of running) await instance.stop();
});

/**
 * mailfront with plaintext listeners imap, pop3 and sieve, an implicit-TLS listener imaps, and
 * `extra` config on top; its log lines parsed in `logs`.
 */
async function start(directory: Directory, extra: Record<string, unknown> = {}, listenerExtra: Record<string, unknown> = {}): Promise<Instance> {
  const dir = tmpDir('log-volume');
  const certs = await makeCerts(dir.path);
  const names = ['imap', 'pop3', 'sieve', 'imaps'] as const;
  const ports = new Map<string, number>();
  for (const name of names) ports.set(name, await freePort());
  const plain = { host: '127.0.0.1', tls: 'none', plaintext_without_tls: true, ...listenerExtra };
  await writeFile(join(dir.path, 'stores.yaml'), stringify({ stores: { alpha: { current_master: 's1', slots: { s1: { host: '127.0.0.1', imap_port: 1, pop3_port: 1, sieve_port: 1 } } } } }));
  await writeFile(
    join(dir.path, 'mailfront.yaml'),
    stringify({
      log: { level: 'info' },
      listeners: [
        { name: 'imap', protocol: 'imap', port: ports.get('imap'), ...plain },
        { name: 'pop3', protocol: 'pop3', port: ports.get('pop3'), ...plain },
        { name: 'sieve', protocol: 'managesieve', port: ports.get('sieve'), ...plain },
        { name: 'imaps', protocol: 'imap', host: '127.0.0.1', port: ports.get('imaps'), tls: 'implicit', certificate: { cert: certs.certFile, key: certs.keyFile } },
      ],
      directory: { urls: ['ldap://127.0.0.1:1'], bind_dn: 'cn=reader', bind_password: 'reader-pw-unused', base_dn: 'dc=example' },
      store_map: { file: 'stores.yaml' },
      session: { auth_failure_delay_ms: DELAY_MS, preauth_timeout_ms: PREAUTH_MS },
      throttle: { enabled: false },
      health: { interval_ms: 0 },
      ...extra,
    }),
  );
  const logs: Array<Record<string, unknown>> = [];
  const mailfront = await Mailfront.start(loadConfig(join(dir.path, 'mailfront.yaml')), { directory, processMetrics: false, logDestination: parsedSuiteLog(logs) });
  let stopped = false;
  const instance: Instance = {
    mailfront,
    logs,
    port: (name) => ports.get(name) ?? assert.fail(`no listener ${name}`),
    async stop() {
      if (stopped) return;
      stopped = true;
      running.delete(instance);
      await mailfront.stop(0);
      await dir.remove();
    },
  };
  running.add(instance);
  return instance;
}

/** Connects, sends `input` right away, and resolves with all the server said once it closes (or after `limitMs`). */
function converse(port: number, input: string | Buffer, limitMs = 10_000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket: Socket = connect(port, '127.0.0.1');
    let got = '';
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => (got += chunk));
    socket.on('error', reject);
    socket.write(input);
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`the server did not close within ${limitMs} ms; it said ${JSON.stringify(got)}`));
    }, limitMs);
    socket.on('close', () => {
      clearTimeout(timer);
      resolve(got);
    });
  });
}

const b64 = (s: string): string => Buffer.from(s).toString('base64');

describe('a client pipelining logins while the directory is down', () => {
  // Each protocol's way to pipeline 20 logins, and how its answers look.
  const cases = [
    { listener: 'imap', input: (i: number) => `a${i} LOGIN user${i} pw-${i}-xyz\r\n`, greeted: /^\* OK /, refusal: /^a(\d+) NO \[UNAVAILABLE\] /, last: /^\* BYE No login within the time allowed/ },
    { listener: 'pop3', input: (i: number) => `AUTH PLAIN ${b64(`\0user${i}\0pw-${i}-xyz`)}\r\n`, greeted: /^\+OK /, refusal: /^-ERR \[SYS\/TEMP\] /, last: /^-ERR No login within the time allowed/ },
    { listener: 'sieve', input: (i: number) => `AUTHENTICATE "PLAIN" "${b64(`\0user${i}\0pw-${i}-xyz`)}"\r\n`, greeted: /^OK /, refusal: /^NO \(TRYLATER\) /, last: /^BYE "No login within the time allowed\."/ },
  ];
  for (const { listener, input, greeted, refusal, last } of cases) {
    it(`${listener}: each refusal waits the failure delay, so the log gets one error line per delay; the pre-auth deadline ends the session`, async (t) => {
      const front = await start(standInDirectory());
      t.after(() => front.stop());
      let pipelined = '';
      for (let i = 0; i < 20; i++) pipelined += input(i);
      const since = front.logs.length;
      const said = await converse(front.port(listener), pipelined);
      const lines = said.split('\r\n').filter((l) => l !== '');
      const refusals = lines.filter((l) => refusal.test(l));
      const errors = front.logs.slice(since).filter((l) => l['event'] === 'session.login_failed');
      // One refusal per delay up to the deadline, and one more for a login the deadline cut short.
      const most = Math.ceil(PREAUTH_MS / DELAY_MS) + 1;
      assert.ok(refusals.length >= 2 && refusals.length <= most, `between 2 and ${most} refusals before the deadline, not one per login: ${refusals.length}`);
      assert.ok(errors.length >= refusals.length - 1 && errors.length <= refusals.length, `one error line per refused login: ${errors.length} lines, ${refusals.length} refusals`);
      for (const line of errors) assert.equal(line['level'], 'error');
      assert.deepEqual(lines.slice(lines.findIndex((l) => greeted.test(l)) + 1, -1), refusals, 'nothing but the refusals, in order, between the greeting and the last word');
      if (listener === 'imap') assert.deepEqual(refusals.map((l) => Number(refusal.exec(l)?.[1])), refusals.map((_l, i) => i), 'the pipelined logins are answered in turn');
      assert.match(lines[lines.length - 1] ?? '', last);
      const finished = front.logs.slice(since).filter((l) => l['event'] === 'session.finished');
      assert.deepEqual(finished.map((l) => l['reason']), ['timeout']);
    });
  }
});

/** The value of one series in mailfront's exposition (0 when absent). */
async function metric(front: Instance, series: string): Promise<number> {
  const line = (await front.mailfront.metrics.exposition()).body.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? 0 : Number(line.slice(series.length + 1));
}

/** Opens `count` connections one after the other and waits until the server closed each. */
async function connectAndWaitForClose(port: number, count: number): Promise<void> {
  for (let i = 0; i < count; i++) {
    await new Promise<void>((resolve) => {
      const socket = connect(port, '127.0.0.1');
      socket.on('error', () => undefined);
      socket.resume();
      socket.on('close', () => resolve());
    });
  }
}

describe('connections refused by a connection limit', () => {
  it('are logged once, not once each, and each is counted', async (t) => {
    const front = await start(standInDirectory(), { connection_limits: { max_connections_per_address: 2 } });
    t.after(() => front.stop());
    const held = [connect(front.port('imap'), '127.0.0.1'), connect(front.port('pop3'), '127.0.0.1')];
    t.after(() => held.forEach((s) => s.destroy()));
    for (const socket of held) await new Promise((resolve) => socket.once('data', resolve));
    const since = front.logs.length;
    await connectAndWaitForClose(front.port('imap'), 30);
    await connectAndWaitForClose(front.port('pop3'), 30);
    await connectAndWaitForClose(front.port('imaps'), 30);
    assert.equal(await metric(front, 'mailfront_connections_refused_total{limit="address"}'), 90);
    const refused = front.logs.slice(since).filter((l) => l['event'] === 'session.refused');
    assert.equal(refused.length, 1, 'the first refusal is logged; the others wait for the end of the interval');
    assert.deepEqual([refused[0]?.['limit'], refused[0]?.['refused'], refused[0]?.['client']], ['address', 1, '127.0.0.1']);
    // The rest are told of when the server stops, if the interval has not ended by then.
    await front.stop();
    const after = front.logs.slice(since).filter((l) => l['event'] === 'session.refused');
    assert.deepEqual(after.map((l) => l['refused']), [1, 89]);
  });
});

describe('IMAP ID claims of a client address', () => {
  it('are logged once per session, the first, at most 64 characters, with no separator or bidi control', async (t) => {
    const front = await start(standInDirectory());
    t.after(() => front.stop());
    const odd = Buffer.from('10.0.0.1\u0085{"level":"error","event":"forged"}\u2028x\u202Eevil', 'utf8');
    let more = '';
    for (let i = 1; i < 40; i++) more += `i${i} ID ("x-originating-ip" "${'x'.repeat(1000)}")\r\n`;
    const input = Buffer.concat([Buffer.from(`i0 ID ("x-originating-ip" {${odd.length}+}\r\n`), odd, Buffer.from(`)\r\n${more}z LOGOUT\r\n`)]);
    const since = front.logs.length;
    const said = await converse(front.port('imap'), input);
    assert.equal(said.match(/^i\d+ OK ID completed/gm)?.length, 40, 'every ID is answered');
    const claims = front.logs.slice(since).filter((l) => String(l['event']).startsWith('session.client_id'));
    assert.equal(claims.length, 1, 'one line for 40 claims');
    const claimed = String(claims[0]?.['claimed']);
    assert.ok(Array.from(claimed).length <= 64, `${claimed.length} characters logged`);
    assert.equal(claimed, '10.0.0.1\ufffd{"level":"error","event":"forged"}\ufffdx\ufffdevil');
    assert.equal(claims[0]?.['claimedLength'], odd.toString('utf8').length);
    assert.equal(await metric(front, 'mailfront_client_id_addresses_total{result="ignored"}'), 40, 'every claim is counted');
  });
});

describe('implicit-TLS handshakes that fail', () => {
  it('are counted by reason (error, timeout, closed), and an error or a timeout is logged at info', async (t) => {
    const front = await start(standInDirectory());
    t.after(() => front.stop());
    const port = front.port('imaps');
    const since = front.logs.length;
    // Plaintext on the TLS port: a handshake error.
    await converse(port, 'a LOGIN bob plain-on-tls-pw\r\n');
    // A client that closes before saying anything.
    await new Promise<void>((resolve) => {
      const socket = connect(port, '127.0.0.1', () => socket.end());
      socket.on('error', () => undefined);
      socket.resume();
      socket.on('close', () => resolve());
    });
    // A client that says nothing: the pre-auth deadline ends the handshake.
    await converse(port, '');
    const count = (reason: string): Promise<number> => metric(front, `mailfront_tls_handshake_failures_total{listener="imaps",reason="${reason}"}`);
    assert.deepEqual([await count('error'), await count('closed'), await count('timeout')], [1, 1, 1]);
    const failed = front.logs.slice(since).filter((l) => l['event'] === 'session.tls_failed');
    assert.deepEqual(failed.map((l) => [l['level'], l['reason'], l['listener']]), [['info', 'error', 'imaps'], ['info', 'timeout', 'imaps']]);
  });
});

describe('a login abandoned', () => {
  it('because the client hung up or the server stopped is counted in mailfront_logins_total as aborted', async (t) => {
    let asked = 0;
    // A directory that answers only when the login is cancelled.
    const front = await start(
      standInDirectory({ authenticate: (_user, _password, signal) => {
        asked++;
        return new Promise((_resolve, reject) => signal.addEventListener('abort', () => reject(new MailfrontError('ABORTED', 'aborted', 'cancelled')), { once: true }));
      } }),
    );
    t.after(() => front.stop());
    const aborted = (): Promise<number> => metric(front, 'mailfront_logins_total{protocol="imap",result="aborted"}');
    const waitFor = async (what: string, done: () => boolean | Promise<boolean>): Promise<void> => {
      for (let i = 0; i < 250 && !(await done()); i++) await new Promise((resolve) => setTimeout(resolve, 20));
      assert.ok(await done(), what);
    };
    const hangsUp = connect(front.port('imap'), '127.0.0.1');
    hangsUp.on('error', () => undefined);
    hangsUp.write('a LOGIN bob secret-pw\r\n');
    await waitFor('the directory is asked', () => asked === 1);
    // A reset: after a FIN alone (a half-close) the login would go on, to the pre-auth deadline.
    hangsUp.resetAndDestroy();
    await waitFor('the login the client left is counted', async () => (await aborted()) === 1);
    const stays = connect(front.port('pop3'), '127.0.0.1');
    stays.on('error', () => undefined);
    stays.resume();
    stays.write(`AUTH PLAIN ${b64('\0carl\0other-pw')}\r\n`);
    await waitFor('the directory is asked', () => asked === 2);
    await front.stop();
    assert.equal(await metric(front, 'mailfront_logins_total{protocol="pop3",result="aborted"}'), 1, 'the login the stop cut short is counted');
    assert.equal(await aborted(), 1);
  });
});

describe('PROXY headers from a peer outside the trusted networks', () => {
  it('are counted as untrusted once each, and a connection that sends none is not counted', async (t) => {
    const front = await start(standInDirectory(), {}, { proxy_protocol: { trusted_networks: ['127.0.0.2/32'] } });
    t.after(() => front.stop());
    const untrusted = (): Promise<number> => metric(front, 'mailfront_proxy_headers_total{listener="imap",result="untrusted"}');
    const said = await converse(front.port('imap'), 'a LOGOUT\r\n');
    assert.match(said, /^a OK /m, 'a client without a header is served');
    assert.equal(await untrusted(), 0, 'no header, nothing counted');
    const refused = await converse(front.port('imap'), 'PROXY TCP4 192.0.2.7 127.0.0.1 4000 143\r\na LOGOUT\r\n');
    assert.doesNotMatch(refused, /^a OK /m, 'the connection that sent a header is closed');
    assert.equal(await untrusted(), 1, 'one header, counted once');
  });
});
