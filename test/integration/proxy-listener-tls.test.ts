// TLS on listeners behind a PROXY-protocol balancer, in a running mailfront with a stand-in
// directory (no directory or backend server runs here): a balancer's health check (a LOCAL
// header, then a close or a reset, as HAProxy's check-send-proxy does) on an implicit-TLS
// listener is no failed handshake; a client that reached HAProxy over TLS (send-proxy-v2-ssl)
// gets a TLS session on a STARTTLS listener.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { connect } from 'node:net';
import { Duplex } from 'node:stream';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { readFile, writeFile } from 'node:fs/promises';
import { connect as tlsConnect } from 'node:tls';
import { stringify } from 'yaml';
import { loadConfig } from '../../src/config/load.js';
import { Mailfront } from '../../src/main.js';
import { MailfrontError } from '../../src/errors.js';
import { encodeProxyV2, encodeProxyV2Local } from '../../src/server/proxy-protocol.js';
import { registerPasswords, standInDirectory, parsedSuiteLog, standInConfigSections } from './front.js';
import { LineClient, freePort, makeCerts, startHaproxy, tmpDir } from './servers/index.js';
import type { TestCerts, TmpDir } from './servers/index.js';

registerPasswords('reader-pw-unused', 'amy-pw-9f3a');

/** Waits until `predicate` holds, polling; fails with `what` after the deadline. */
async function until(predicate: () => boolean | Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** Connects from `localAddress` and resolves once connected. */
function connectFrom(port: number, localAddress = '127.0.0.1'): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect({ port, host: '127.0.0.1', localAddress });
    socket.once('connect', () => resolve(socket));
    socket.once('error', reject);
  });
}

describe('implicit TLS behind a PROXY balancer', () => {
  let dir: TmpDir;
  let mailfront: Mailfront;
  const logs: Array<Record<string, unknown>> = [];
  const ports = { imaps: 0, imap: 0 };
  let httpPort = 0;
  let certs: TestCerts;

  before(async () => {
    dir = tmpDir('proxy-listener-tls');
    certs = await makeCerts(dir.path);
    ports.imaps = await freePort();
    ports.imap = await freePort();
    const directory = standInDirectory({
      authenticate: async (user) => {
        throw new MailfrontError('WRONG_PASSWORD', 'auth-failed', `wrong password for "${user}"`);
      },
    });
    await writeFile(join(dir.path, 'stores.yaml'), stringify({ stores: { alpha: { current_master: 's1', slots: { s1: { host: '127.0.0.1', imap_port: 1 } } } } }));
    await writeFile(
      join(dir.path, 'mailfront.yaml'),
      stringify({
        log: { level: 'info' },
        // Long: a connection mailfront does not close itself stays for the whole test.
        session: { preauth_timeout_ms: 60_000, auth_failure_delay_ms: 100 },
        listeners: [
          { name: 'imaps', protocol: 'imap', host: '127.0.0.1', port: ports.imaps, tls: 'implicit', certificate: { cert: certs.certFile, key: certs.keyFile }, proxy_protocol: { trusted_networks: ['127.0.0.1'] } },
          { name: 'imap', protocol: 'imap', host: '127.0.0.1', port: ports.imap, tls: 'starttls', certificate: { cert: certs.certFile, key: certs.keyFile }, proxy_protocol: { trusted_networks: ['127.0.0.1'] } },
        ],
        ...standInConfigSections(),
      }),
    );
    mailfront = await Mailfront.start(loadConfig(join(dir.path, 'mailfront.yaml')), { directory, processMetrics: false, logDestination: parsedSuiteLog(logs) });
    httpPort = mailfront.httpAddress()!.port;
  });

  after(async () => {
    await mailfront?.stop(0);
    await dir?.remove();
  });

  /** The value of a counter series in /metrics (0 when absent). */
  const counter = async (name: string, labels: string): Promise<number> => {
    const text = await (await fetch(`http://127.0.0.1:${httpPort}/metrics`)).text();
    const line = text.split('\n').find((l) => l.startsWith(`${name}{${labels}} `));
    return line === undefined ? 0 : Number(line.split(' ')[1]);
  };
  const tlsFailures = async (reason: string): Promise<number> => counter('mailfront_tls_handshake_failures_total', `listener="imaps",reason="${reason}"`);
  const localHeaders = async (): Promise<number> => counter('mailfront_proxy_headers_total', 'listener="imaps",result="local"');
  const acceptedHeaders = async (): Promise<number> => counter('mailfront_proxy_headers_total', 'listener="imaps",result="accepted"');
  const closedHeaders = async (): Promise<number> => counter('mailfront_proxy_headers_total', 'listener="imaps",result="closed"');
  const tlsFailedLines = (): number => logs.filter((l) => l['event'] === 'session.tls_failed').length;
  const headerRefusedLines = (): number => logs.filter((l) => l['event'] === 'session.proxy_header_refused').length;

  /** Resolves true once `socket` is closed, false if it is still open after `ms`. */
  const closedWithin = (socket: Socket, ms: number): Promise<boolean> =>
    new Promise((resolve) => {
      if (socket.closed) return resolve(true);
      const timer = setTimeout(() => resolve(false), ms);
      socket.once('close', () => {
        clearTimeout(timer);
        resolve(true);
      });
    });

  it('a LOCAL header then a close or a reset before any TLS byte is closed at once and counts as no failure, logging none; a client gone before its first byte is closed; bytes that are no TLS are an error', async () => {
    const before = { error: await tlsFailures('error'), closed: await tlsFailures('closed'), lines: tlsFailedLines() };
    // A balancer's check as HAProxy sends it: the header and the FIN at once. mailfront closes
    // its side at once (it waited for a handshake until the pre-auth deadline).
    const seen = await localHeaders();
    const check = await connectFrom(ports.imaps);
    check.on('error', () => undefined);
    check.end(encodeProxyV2Local());
    assert.ok(await closedWithin(check, 5_000), 'mailfront closed a check that sent its FIN with its header');
    assert.equal(await localHeaders(), seen + 1);
    // The header, then (once mailfront has read it) a reset, or a close.
    for (const end of ['reset', 'close'] as const) {
      const read = await localHeaders();
      const socket = await connectFrom(ports.imaps);
      socket.on('error', () => undefined);
      socket.write(encodeProxyV2Local());
      await until(async () => (await localHeaders()) > read, 'mailfront to read the LOCAL header');
      if (end === 'reset') socket.resetAndDestroy();
      else socket.end();
      assert.ok(await closedWithin(socket, 5_000), `closed after the ${end}`);
    }
    // A proxied client that goes before its first byte.
    const accepted = await acceptedHeaders();
    const gone = await connectFrom(ports.imaps);
    gone.on('error', () => undefined);
    gone.write(encodeProxyV2({ address: '192.0.2.7', port: 50000 }, { address: '127.0.0.1', port: ports.imaps }));
    await until(async () => (await acceptedHeaders()) > accepted, 'mailfront to read the proxied header');
    gone.resetAndDestroy();
    await until(async () => (await tlsFailures('closed')) > before.closed, 'the client gone before its first byte counted as closed');
    // A proxied client that sends what is no TLS: a failed handshake, as before.
    const plain = await connectFrom(ports.imaps);
    plain.on('error', () => undefined);
    plain.write(Buffer.concat([encodeProxyV2({ address: '192.0.2.8', port: 50001 }, { address: '127.0.0.1', port: ports.imaps }), Buffer.from('a LOGIN x y\r\n')]));
    await until(async () => (await tlsFailures('error')) > before.error, 'the bytes that are no TLS counted as an error');
    plain.destroy();
    await until(() => tlsFailedLines() > before.lines, 'the session.tls_failed line');
    assert.equal((await tlsFailures('error')) - before.error, 1, 'only the client that sent no TLS failed its handshake with an error');
    assert.equal((await tlsFailures('closed')) - before.closed, 1, 'the checks are not counted as closed either');
    assert.equal(tlsFailedLines() - before.lines, 1);
  });

  it('a check gone before mailfront accepted it (its address can no longer be read) counts as a PROXY header closed, as no failed handshake, and logs nothing', async () => {
    const before = { headers: await closedHeaders(), error: await tlsFailures('error'), closed: await tlsFailures('closed'), lines: tlsFailedLines(), refused: headerRefusedLines() };
    // As most of HAProxy's checks do: the child connects, sends a LOCAL header and resets while
    // this process, mailfront's, is blocked in spawnSync. The kernel completes the connection; node
    // accepts it only after the reset, when its peer's address is gone.
    const check = `const s = require('net').connect({ port: ${ports.imaps}, host: '127.0.0.1' }, () => s.write(Buffer.from('${encodeProxyV2Local().toString('hex')}', 'hex'), () => s.resetAndDestroy()));
s.on('error', () => undefined);
s.on('close', () => process.exit(0));`;
    const child = spawnSync(process.execPath, ['-e', check], { timeout: 10_000, encoding: 'utf8' });
    assert.equal(child.status, 0, `the check's child: ${child.stderr}`);
    await until(async () => (await closedHeaders()) > before.headers, 'the check counted as a PROXY header closed');
    assert.equal((await closedHeaders()) - before.headers, 1);
    assert.equal(await tlsFailures('error'), before.error);
    assert.equal(await tlsFailures('closed'), before.closed);
    assert.equal(tlsFailedLines(), before.lines);
    assert.equal(headerRefusedLines(), before.refused);
  });

  it("HAProxy's check-send-proxy health checks count as no failed handshake", async () => {
    const before = { error: await tlsFailures('error'), closed: await tlsFailures('closed'), accepted: await acceptedHeaders(), lines: tlsFailedLines() };
    const counted = async (): Promise<number> => (await localHeaders()) + (await closedHeaders());
    const seen = await counted();
    const open = mailfront.limiter.connections;
    const lb = await startHaproxy({
      name: 'tls-checks',
      frontends: [{ name: 'imaps', backend: 'mailfront' }],
      backends: [{ name: 'mailfront', servers: [{ name: 'mf1', port: ports.imaps, check: true, checkIntervalMs: 100 }] }],
    });
    try {
      // HAProxy checks every 100 ms and resets each check at once: most are gone before node
      // accepts them (a PROXY header closed), the few accepted sooner send their LOCAL header
      // (local). Three counted, at most one of them startHaproxy's probe of its frontend.
      await until(async () => (await counted()) >= seen + 3, 'three health checks counted', 20_000);
      assert.match(await lb.runtime('show servers state mailfront'), /mailfront \d+ mf1 127\.0\.0\.1 2 /, 'the server is up (state 2)');
    } finally {
      await lb.stop();
    }
    // A check that sent its header was admitted: once every one is closed, each was classified.
    await until(() => mailfront.limiter.connections <= open, "every check's connection closed");
    assert.equal(await tlsFailures('error'), before.error);
    // startHaproxy's probe of its frontend is a proxied client that goes before its first byte
    // (counted as closed when HAProxy got as far as sending its header); a check is not counted.
    const closed = (await tlsFailures('closed')) - before.closed;
    assert.ok(closed <= (await acceptedHeaders()) - before.accepted, `${closed} closed`);
    assert.equal(tlsFailedLines(), before.lines);
  });

  it("a ClientHello in the same write as the PROXY header: the handshake completes and the client is greeted, as the header's client", async () => {
    const accepted = await acceptedHeaders();
    const raw = await connectFrom(ports.imaps);
    raw.on('error', () => undefined);
    // The TLS client writes through this stream: its first write (the ClientHello) leaves with the
    // header in one write, so that mailfront reads both at once and finds the ClientHello already
    // in the socket's buffer when the header is parsed.
    let header: Buffer | null = encodeProxyV2({ address: '192.0.2.9', port: 50002 }, { address: '127.0.0.1', port: ports.imaps });
    const tunnel = new Duplex({
      read() {},
      write(chunk: Buffer, _encoding, done) {
        raw.write(header === null ? chunk : Buffer.concat([header, chunk]), done);
        header = null;
      },
    });
    raw.on('data', (chunk: Buffer) => tunnel.push(chunk));
    raw.on('end', () => tunnel.push(null));
    const secure = tlsConnect({ socket: tunnel, servername: 'localhost', ca: await readFile(certs.caFile) });
    secure.on('error', () => undefined);
    try {
      let text = '';
      secure.setEncoding('utf8');
      secure.on('data', (chunk: string) => (text += chunk));
      await until(() => text.includes('\r\n'), 'the greeting over TLS');
      assert.match(text, /^\* OK \[CAPABILITY IMAP4rev1/);
      assert.equal((await acceptedHeaders()) - accepted, 1);
      secure.write('a LOGIN amy amy-pw-9f3a\r\n');
      await until(() => /\r\na /.test(text), 'the answer to LOGIN');
      assert.match(text, /\r\na NO \[AUTHENTICATIONFAILED\]/);
      await until(() => logs.some((l) => l['event'] === 'session.login_failed' && l['client'] === '192.0.2.9'), "the failed login logged as the header's client");
    } finally {
      secure.destroy();
      raw.destroy();
    }
  });

  it('a client that reached HAProxy over TLS (send-proxy-v2-ssl) gets a TLS session on a STARTTLS listener: no STARTTLS, no LOGINDISABLED, LOGIN checked; one that did not is still refused', async () => {
    const pem = join(dir.path, 'haproxy.pem');
    await writeFile(pem, `${await readFile(certs.certFile, 'utf8')}\n${await readFile(certs.keyFile, 'utf8')}\n`, { mode: 0o600 });
    const lb = await startHaproxy({
      name: 'tls-ended',
      frontends: [
        { name: 'tls', backend: 'mailfront', sslPem: pem },
        { name: 'plain', backend: 'mailfront' },
      ],
      backends: [{ name: 'mailfront', servers: [{ name: 'mf1', port: ports.imap, sendProxyV2Ssl: true }] }],
    });
    try {
      // Over TLS to HAProxy, which ends it and says so in its PROXY header.
      const ca = await readFile(certs.caFile);
      const secure = tlsConnect({ host: '127.0.0.1', port: lb.port('tls'), servername: 'localhost', ca });
      const said: string[] = [];
      let buffered = '';
      secure.setEncoding('utf8');
      secure.on('data', (chunk: string) => {
        buffered += chunk;
        for (let end = buffered.indexOf('\r\n'); end >= 0; end = buffered.indexOf('\r\n')) {
          said.push(buffered.slice(0, end));
          buffered = buffered.slice(end + 2);
        }
      });
      secure.on('error', () => undefined);
      await until(() => said.length >= 1, 'the greeting over TLS through HAProxy');
      assert.match(said[0]!, /^\* OK \[CAPABILITY IMAP4rev1/);
      assert.doesNotMatch(said[0]!, /STARTTLS|LOGINDISABLED/);
      secure.write('a STARTTLS\r\n');
      await until(() => said.length >= 2, 'the answer to STARTTLS');
      assert.match(said[1]!, /^a BAD /, 'no TLS within the TLS HAProxy ended');
      secure.write('b LOGIN amy amy-pw-9f3a\r\n');
      await until(() => said.length >= 3, 'the answer to LOGIN');
      assert.match(said[2]!, /^b NO \[AUTHENTICATIONFAILED\]/, 'the password was checked (a wrong one, by the stand-in directory)');
      secure.destroy();

      // In the clear to HAProxy: its header says so, and nothing changes.
      const plain = await LineClient.connect(lb.port('plain'));
      try {
        const greeting = await plain.readLine();
        assert.match(greeting, /STARTTLS/);
        assert.match(greeting, /LOGINDISABLED/);
        plain.send('c LOGIN amy amy-pw-9f3a');
        assert.match(await plain.readLine(), /^c NO \[PRIVACYREQUIRED\]/);
      } finally {
        plain.close();
      }
    } finally {
      await lb.stop();
    }
  });

  // Only a header that says the client's TLS (PP2_CLIENT_SSL) makes the session a TLS one: a v1
  // header, or a v2 one without that TLV (HAProxy's plain send-proxy and send-proxy-v2), says
  // nothing of it, and the session stays in the clear (a review's mutant that took "not said" for
  // TLS passed every test: plain HAProxy above sends the TLV with the flag off).
  it('a header that does not say the client used TLS (v1, or v2 without PP2_CLIENT_SSL) leaves a STARTTLS listener in the clear: STARTTLS offered, LOGIN refused', async () => {
    const headers = [
      Buffer.from(`PROXY TCP4 192.0.2.10 127.0.0.1 50010 ${ports.imap}\r\n`),
      encodeProxyV2({ address: '192.0.2.11', port: 50011 }, { address: '127.0.0.1', port: ports.imap }),
    ];
    for (const header of headers) {
      const client = await LineClient.connect(ports.imap);
      try {
        client.socket.write(header);
        const greeting = await client.readLine();
        assert.match(greeting, /STARTTLS/, header.toString('latin1', 0, 5));
        assert.match(greeting, /LOGINDISABLED/);
        client.send('d LOGIN amy amy-pw-9f3a');
        assert.match(await client.readLine(), /^d NO \[PRIVACYREQUIRED\]/);
      } finally {
        client.close();
      }
    }
  });
});
