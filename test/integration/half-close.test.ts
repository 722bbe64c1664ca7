/**
 * Clients that half-close (shutdown(SHUT_WR), `nc -N`, `printf … | nc`): their FIN ends what they
 * send, not what they are sent. Through mailfront they get every answer they would get from
 * Dovecot directly, before login (the whole dialogue in one write) and after it, over plain TCP
 * and TLS (with and without a close_notify); a backend that answers but never closes after the
 * FIN does not keep the session past the bound (the idle timeout here, shorter than 60 s). Also:
 * accepted client sockets have TCP keepalive on, and the listen backlog holds a burst of connects.
 * Backends: slapd, a Dovecot with TLS, and a scripted IMAP backend for the one that never closes.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { readdir } from 'node:fs/promises';
import { connect, createServer } from 'node:net';
import type { AddressInfo, Server, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import { startDovecot, startSlapd } from './servers/index.js';
import type { Dovecot, Slapd } from './servers/index.js';
import { connectionsReleased, makeMessage, registerSecrets, startFront, waitForLog } from './front.js';
import type { Front } from './front.js';

const run = promisify(execFile);
const PASSWORDS = { hana: 'Hana-half-41c2', hugo: 'Hugo-half-93d7', hedy: 'Hedy-half-0b5e' };
registerSecrets(Object.values(PASSWORDS));
/** session.idle_timeout_ms here: the bound on a half-closed splice is the idle timeout when shorter than 60 s. */
const IDLE_MS = 2_000;

let slapd: Slapd;
let dovecot: Dovecot;
let silent: Server;
const silentSockets: Socket[] = [];
let front: Front;

before(async () => {
  slapd = await startSlapd({
    users: [
      { uid: 'hana', password: PASSWORDS.hana, store: 'dove' },
      { uid: 'hugo', password: PASSWORDS.hugo, store: 'dove' },
      { uid: 'hedy', password: PASSWORDS.hedy, store: 'silent' },
    ],
  });
  dovecot = await startDovecot({ name: 'half', users: [{ name: 'hana', password: PASSWORDS.hana }, { name: 'hugo', password: PASSWORDS.hugo }], tls: true });
  // Logs in, answers NOOP, and answers the client's FIN with a BYE, but never closes.
  silent = createServer({ allowHalfOpen: true }, (socket) => {
    silentSockets.push(socket);
    socket.on('error', () => undefined);
    socket.write('* OK [CAPABILITY IMAP4rev1 LITERAL+ ID AUTH=PLAIN] scripted\r\n');
    let text = '';
    socket.on('data', (chunk: Buffer) => {
      text += chunk.toString('latin1');
      for (const [, tag] of text.matchAll(/^(\S+) ID .*\r\n/gm)) socket.write(`${tag} OK ID completed\r\n`);
      text = text.replace(/^(\S+) ID .*\r\n/gm, '');
      const login = /^(\S+) LOGIN \{\d+\+\}\r\n[^]*\{\d+\+\}\r\n[^]*?\r\n/.exec(text);
      if (login !== null) {
        socket.write(`${login[1]} OK [CAPABILITY IMAP4rev1 LITERAL+] Logged in\r\n`);
        text = text.slice(login[0].length);
      }
      for (const [, tag] of text.matchAll(/^(\S+) NOOP\r\n/gm)) socket.write(`${tag} OK NOOP completed\r\n`);
      text = text.replace(/^(\S+) NOOP\r\n/gm, '');
    });
    socket.on('end', () => socket.write('* BYE the client is gone, and this backend stays\r\n'));
  });
  await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
  front = await startFront({
    slapd,
    stores: {
      dove: { currentMaster: 'd1', slots: { d1: { imapPort: dovecot.imapPort, pop3Port: dovecot.pop3Port } } },
      silent: { currentMaster: 's1', slots: { s1: { imapPort: (silent.address() as AddressInfo).port } } },
    },
    session: { idle_timeout_ms: IDLE_MS },
  });
});

after(async () => {
  await front?.stop();
  for (const socket of silentSockets) socket.destroy();
  await new Promise((resolve) => silent?.close(resolve));
  await Promise.all([slapd?.stop(), dovecot?.stop()]);
});

/** A raw client whose socket stays readable after it has sent its FIN. */
class HalfCloseClient {
  private received = Buffer.alloc(0);
  private wake: (() => void) | undefined;
  /** How the connection ended: its FIN ('end'), a reset or other error, and when. */
  readonly ended: Promise<{ how: string; at: number }>;

  /** The client's own port (session.finished's clientPort), kept past the socket's close. */
  readonly port: number;

  constructor(readonly socket: Socket) {
    this.port = socket.localPort!;
    socket.on('data', (chunk: Buffer) => {
      this.received = Buffer.concat([this.received, chunk]);
      this.wake?.();
    });
    this.ended = new Promise((resolve) => {
      socket.once('end', () => resolve({ how: 'end', at: Date.now() }));
      socket.once('error', (error: NodeJS.ErrnoException) => resolve({ how: error.code ?? error.message, at: Date.now() }));
    });
  }

  static async connect(port: number): Promise<HalfCloseClient> {
    const socket = connect({ port, host: '127.0.0.1', allowHalfOpen: true });
    await once(socket, 'connect');
    return new HalfCloseClient(socket);
  }

  get text(): string {
    return this.received.toString('latin1');
  }

  /** Waits until what was received matches `pattern`. */
  async until(pattern: RegExp, timeoutMs = 10_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!pattern.test(this.text)) {
      if (Date.now() > deadline) throw new Error(`no ${pattern} within ${timeoutMs} ms; received ${JSON.stringify(this.text.slice(-300))}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 50);
        this.wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  /** Sends `data` and a FIN (shutdown(SHUT_WR)), then everything received until the connection ends (or 10 s). */
  async sendAndHalfClose(data: string): Promise<{ text: string; how: string }> {
    const before = this.received.length;
    this.socket.end(data);
    const ended = await Promise.race([this.ended, sleep(10_000).then(() => ({ how: 'still open after 10 s', at: Date.now() }))]);
    this.socket.destroy();
    return { text: this.received.subarray(before).toString('latin1'), how: ended.how };
  }
}

async function messagesOf(user: string): Promise<number> {
  const dir = dovecot.mailDir(user);
  const [fresh, seen] = await Promise.all([readdir(join(dir, 'new')), readdir(join(dir, 'cur'))]);
  return fresh.length + seen.length;
}

/** The session.finished line of the session whose client used local port `clientPort`. */
function finishedOf(clientPort: number, timeoutMs = 5_000): Promise<Record<string, unknown>> {
  return waitForLog(front, (l) => l['event'] === 'session.finished' && l['clientPort'] === clientPort, timeoutMs);
}

describe('POP3 against Dovecot', () => {
  test('RETR, DELE and QUIT, then a half-close after login: the message and every +OK arrive, and the deletion is committed', async () => {
    const message = makeMessage('half-close retr', 20_000);
    await dovecot.deliver('hana', message);
    await dovecot.deliver('hana', makeMessage('half-close stays'));
    assert.equal(await messagesOf('hana'), 2);
    const client = await HalfCloseClient.connect(front.pop3TrustedPort);
    await client.until(/^\+OK.*\r\n/);
    client.socket.write('USER hana\r\n');
    await client.until(/\+OK\r\n$/);
    client.socket.write(`PASS ${PASSWORDS.hana}\r\n`);
    await client.until(/Logged in\.\r\n$/);
    const { text, how } = await client.sendAndHalfClose('RETR 1\r\nDELE 1\r\nQUIT\r\n');
    assert.equal(how, 'end', 'mailfront closes the connection once Dovecot has');
    assert.match(text, /^\+OK \d+ octets\r\n/, 'the RETR answer');
    assert.ok(text.includes('Subject: half-close retr'), 'the message');
    assert.ok(text.length > message.length, `the whole message (${text.length} bytes of at least ${message.length})`);
    assert.match(text, /\r\n\.\r\n\+OK[^\r\n]*\r\n\+OK[^\r\n]*\r\n$/, 'the message end, then the +OK of DELE and of QUIT');
    assert.equal(await messagesOf('hana'), 1, 'Dovecot deleted the message the client got');
    const finished = await finishedOf(client.port);
    assert.equal(finished['reason'], 'client-closed');
    assert.equal(finished['phase'], 'spliced');
  });

  test('the whole dialogue in one write, then a half-close before login: the login, the message and every +OK arrive', async () => {
    await dovecot.deliver('hugo', makeMessage('half-close preauth', 5_000));
    const before = await messagesOf('hugo');
    const client = await HalfCloseClient.connect(front.pop3TrustedPort);
    await client.until(/^\+OK.*\r\n/);
    const { text, how } = await client.sendAndHalfClose(`USER hugo\r\nPASS ${PASSWORDS.hugo}\r\nRETR 1\r\nDELE 1\r\nQUIT\r\n`);
    assert.equal(how, 'end');
    assert.match(text, /^\+OK\r\n\+OK Logged in\.\r\n\+OK \d+ octets\r\n/);
    assert.ok(text.includes('Subject: half-close preauth'), 'the message');
    assert.match(text, /\r\n\.\r\n\+OK[^\r\n]*\r\n\+OK[^\r\n]*\r\n$/, 'the +OK of DELE and of QUIT');
    assert.equal(await messagesOf('hugo'), before - 1);
  });
});

describe('IMAP against Dovecot', () => {
  async function loggedIn(user: 'hana' | 'hugo'): Promise<HalfCloseClient> {
    const client = await HalfCloseClient.connect(front.imapTrustedPort);
    await client.until(/^\* OK.*\r\n/);
    client.socket.write(`l LOGIN ${user} ${PASSWORDS[user]}\r\n`);
    await client.until(/\r\nl OK [^\r\n]*\r\n$/);
    return client;
  }

  test('LOGOUT, then a half-close: the BYE and the tagged OK arrive', async () => {
    const client = await loggedIn('hana');
    const { text, how } = await client.sendAndHalfClose('a LOGOUT\r\n');
    assert.equal(how, 'end');
    assert.match(text, /^\* BYE [^\r\n]*\r\na OK [^\r\n]*\r\n$/);
    const finished = await finishedOf(client.port);
    assert.equal(finished['reason'], 'client-closed');
  });

  test('SELECT, FETCH of 50 KB and LOGOUT, then a half-close: every answer arrives', async () => {
    await dovecot.deliver('hugo', makeMessage('half-close fetch', 50_000));
    const client = await loggedIn('hugo');
    const { text, how } = await client.sendAndHalfClose('a SELECT INBOX\r\nb FETCH 1:* BODY.PEEK[]\r\nc LOGOUT\r\n');
    assert.equal(how, 'end');
    assert.match(text, /\r\na OK \[READ-WRITE\] [^\r\n]*\r\n/);
    assert.ok(text.length > 50_000, `the message (${text.length} bytes)`);
    assert.match(text, /\r\nb OK [^\r\n]*\r\n\* BYE [^\r\n]*\r\nc OK [^\r\n]*\r\n$/);
  });

  test('a login with LOGOUT pipelined behind it, then a half-close before the login is answered: the login OK, the BYE and the LOGOUT OK', async () => {
    const client = await HalfCloseClient.connect(front.imapTrustedPort);
    await client.until(/^\* OK.*\r\n/);
    const { text, how } = await client.sendAndHalfClose(`a LOGIN hana ${PASSWORDS.hana}\r\nb LOGOUT\r\n`);
    assert.equal(how, 'end');
    assert.match(text, /^a OK [^\r\n]*Logged in\r\n\* BYE [^\r\n]*\r\nb OK [^\r\n]*\r\n$/);
    const finished = await finishedOf(client.port);
    assert.equal(finished['reason'], 'client-closed');
    assert.equal(finished['phase'], 'spliced');
  });

  test('a login, then a half-close: the login OK, then the close (Dovecot closes on the FIN)', async () => {
    const client = await HalfCloseClient.connect(front.imapTrustedPort);
    await client.until(/^\* OK.*\r\n/);
    const { text, how } = await client.sendAndHalfClose(`a LOGIN hugo ${PASSWORDS.hugo}\r\n`);
    assert.equal(how, 'end');
    assert.match(text, /^a OK [^\r\n]*Logged in\r\n/);
  });

  test('a wrong password with LOGOUT pipelined behind it, then a half-close: the NO, the BYE and the LOGOUT OK', async () => {
    const client = await HalfCloseClient.connect(front.imapTrustedPort);
    await client.until(/^\* OK.*\r\n/);
    const { text, how } = await client.sendAndHalfClose('a LOGIN hana not-the-password\r\nb LOGOUT\r\n');
    assert.equal(how, 'end');
    assert.match(text, /^a NO \[AUTHENTICATIONFAILED\][^\r\n]*\r\n\* BYE [^\r\n]*\r\nb OK [^\r\n]*\r\n$/);
    const finished = await finishedOf(client.port);
    assert.equal(finished['reason'], 'logout');
  });

  test('a half-close with nothing pending before login: the connection closes at once', async () => {
    const client = await HalfCloseClient.connect(front.imapTrustedPort);
    await client.until(/^\* OK.*\r\n/);
    const started = Date.now();
    const { text, how } = await client.sendAndHalfClose('');
    assert.equal(how, 'end');
    assert.equal(text, '');
    assert.ok(Date.now() - started < 1_000, `closed after ${Date.now() - started} ms`);
    const finished = await finishedOf(client.port);
    assert.equal(finished['reason'], 'client-closed-preauth');
  });

  test('IMAPS: LOGOUT, then a half-close without a close_notify (python3 ssl): the BYE and the tagged OK arrive, then a close_notify', async () => {
    // python3's ssl with suppress_ragged_eofs off reports a close without close_notify as an error.
    const script = `
import json, socket, ssl, sys
port, ca, user, password = sys.argv[1:5]
ctx = ssl.create_default_context(cafile=ca)
s = ctx.wrap_socket(socket.create_connection(('127.0.0.1', int(port)), timeout=10), server_hostname='localhost', suppress_ragged_eofs=False)
got = b''
while not got.endswith(b'\\r\\n'): got += s.recv(4096)
s.sendall(('l LOGIN %s %s\\r\\n' % (user, password)).encode())
got = b''
while b'l OK' not in got: got += s.recv(4096)
s.sendall(b'a LOGOUT\\r\\n')
socket.socket.shutdown(s, socket.SHUT_WR)
got = b''; end = 'close_notify'
try:
    while True:
        d = s.recv(4096)
        if not d: break
        got += d
except Exception as e: end = repr(e)[:80]
print(json.dumps({'got': got.decode('latin1'), 'end': end}))
`;
    const { stdout } = await run('python3', ['-c', script, String(front.imapsPort), front.certs.caFile, 'hana', PASSWORDS.hana], { timeout: 30_000 });
    const result = JSON.parse(stdout) as { got: string; end: string };
    assert.match(result.got, /^\* BYE [^\r\n]*\r\na OK [^\r\n]*\r\n$/, JSON.stringify(result));
    assert.equal(result.end, 'close_notify');
  });
});

test('a half-closed TLS client (node, close_notify then FIN) gets the answers to what it sent', async () => {
  // The TLS socket is half-open as the TCP socket under it is.
  const plain = connect({ port: front.imapsPort, host: '127.0.0.1', allowHalfOpen: true });
  await once(plain, 'connect');
  const socket = tlsConnect({ socket: plain, servername: 'localhost', ca: front.caPem });
  await once(socket, 'secureConnect');
  assert.equal(socket.allowHalfOpen, true);
  const client = new HalfCloseClient(socket);
  await client.until(/^\* OK.*\r\n/);
  socket.write(`l LOGIN hugo ${PASSWORDS.hugo}\r\n`);
  await client.until(/\r\nl OK [^\r\n]*\r\n$/);
  const { text, how } = await client.sendAndHalfClose('a NOOP\r\nb LOGOUT\r\n');
  assert.equal(how, 'end');
  assert.match(text, /^a OK [^\r\n]*\r\n\* BYE [^\r\n]*\r\nb OK [^\r\n]*\r\n$/);
});

test('a backend that never closes after the client’s FIN: its answers reach the client, and the session ends once nothing has moved for the bound', async () => {
  const client = await HalfCloseClient.connect(front.imapTrustedPort);
  await client.until(/^\* OK.*\r\n/);
  client.socket.write(`l LOGIN hedy ${PASSWORDS.hedy}\r\n`);
  await client.until(/\r\nl OK [^\r\n]*\r\n$/);
  const backendsBefore = silentSockets.filter((s) => !s.destroyed).length;
  assert.equal(backendsBefore, 1);
  const sent = Date.now();
  const { text, how } = await client.sendAndHalfClose('a NOOP\r\n');
  const closedAfterMs = Date.now() - sent;
  assert.equal(how, 'end', 'mailfront ends the connection with a FIN');
  assert.equal(text, 'a OK NOOP completed\r\n* BYE the client is gone, and this backend stays\r\n', 'the answers to the NOOP and to the FIN');
  assert.ok(closedAfterMs >= IDLE_MS - 200 && closedAfterMs < IDLE_MS + 3_000, `closed ${closedAfterMs} ms after the FIN (bound ${IDLE_MS} ms)`);
  const finished = await finishedOf(client.port);
  assert.equal(finished['reason'], 'client-closed');
  assert.equal(finished['phase'], 'spliced');
  // mailfront's end of the backend connection is gone: what the backend sends now is refused (a reset).
  const backend = silentSockets[silentSockets.length - 1]!;
  const closed = new Promise((resolve) => backend.once('close', resolve));
  for (let i = 0; i < 20 && !backend.destroyed; i++) {
    backend.write('* OK still here\r\n');
    await Promise.race([closed, sleep(100)]);
  }
  assert.ok(backend.destroyed, 'the backend connection is closed too');
});

describe('a FIN during a TLS handshake closes the connection at once, not at the pre-auth deadline', () => {
  async function closedWithin(socket: Socket): Promise<number> {
    const started = Date.now();
    socket.on('error', () => undefined);
    socket.resume();
    socket.end();
    await Promise.race([new Promise((resolve) => socket.once('close', resolve)), sleep(4_000)]);
    assert.ok(socket.destroyed, 'still open 4 s after the FIN');
    return Date.now() - started;
  }

  test('implicit TLS, before any byte', async () => {
    const socket = connect({ port: front.imapsPort, host: '127.0.0.1', allowHalfOpen: true });
    await once(socket, 'connect');
    const ms = await closedWithin(socket);
    assert.ok(ms < 1_000, `closed after ${ms} ms`);
  });

  test('STARTTLS, after the OK', async () => {
    const socket = connect({ port: front.imapPort, host: '127.0.0.1', allowHalfOpen: true });
    await once(socket, 'connect');
    const client = new HalfCloseClient(socket);
    await client.until(/^\* OK.*\r\n/);
    socket.write('s STARTTLS\r\n');
    await client.until(/\r\ns OK [^\r\n]*\r\n$/);
    const ms = await closedWithin(socket);
    assert.ok(ms < 1_000, `closed after ${ms} ms`);
    const finished = await finishedOf(client.port);
    assert.equal(finished['reason'], 'client-closed-preauth');
  });
});

test('the listen backlog holds 1,500 connections made at once while mailfront takes none (4096, capped by net.core.somaxconn)', { skip: process.platform !== 'linux' }, async () => {
  const count = 1_500;
  const somaxconn = Number(readFileSync('/proc/sys/net/core/somaxconn', 'utf8'));
  // The kernel completes a handshake while the accept queue has room (backlog + 1 entries) and
  // drops the SYN otherwise (ListenOverflows: the client sends it again a second later).
  const expected = Math.min(count, Math.min(4096, somaxconn) + 1);
  const dir = mkdtempSync(join(tmpdir(), 'mailfront-backlog-'));
  const result = join(dir, 'connected');
  const script = `
import socket, sys, time
port, count, result = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
socks = []
for _ in range(count):
    s = socket.socket(); s.setblocking(False)
    try: s.connect(('127.0.0.1', port))
    except BlockingIOError: pass
    socks.append(s)
time.sleep(0.5)
connected = 0
for s in socks:
    try: s.getpeername(); connected += 1
    except OSError: pass
with open(result + '.tmp', 'w') as f: f.write(str(connected))
import os; os.rename(result + '.tmp', result)
time.sleep(1)
`;
  const child = execFile('python3', ['-c', script, String(front.imapTrustedPort), String(count), result]);
  // mailfront runs in this process: while it is blocked, it accepts nothing, and every connection
  // completed meanwhile waits in the listen backlog.
  const blockedUntil = Date.now() + 15_000;
  while (!existsSync(result) && Date.now() < blockedUntil) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
  const connected = Number(readFileSync(result, 'utf8'));
  await new Promise((resolve) => child.once('exit', resolve));
  rmSync(dir, { recursive: true, force: true });
  assert.equal(connected, expected, `${connected} of ${count} connections completed while mailfront accepted none (somaxconn ${somaxconn})`);
});

test('no connection is counted once every client has gone', async () => {
  await connectionsReleased(front);
});

test('accepted client connections have TCP keepalive on, after 60 s of quiet', { skip: process.platform !== 'linux' }, async () => {
  const client = await HalfCloseClient.connect(front.imapTrustedPort);
  await client.until(/^\* OK.*\r\n/);
  const hex = (port: number): string => port.toString(16).toUpperCase().padStart(4, '0');
  // /proc/net/tcp: "sl local rem st tx:rx tr:tm->when …"; tr 2 is the keepalive timer (sk_timer),
  // when in clock ticks (USER_HZ, 100 on Linux). mailfront's end: local is the listener's port.
  const timerField = (): string | undefined => {
    const rows = ['/proc/net/tcp', '/proc/net/tcp6']
      .flatMap((file) => readFileSync(file, 'utf8').split('\n').slice(1))
      .map((line) => line.trim().split(/\s+/))
      .filter((f) => f[1]?.endsWith(`:${hex(front.imapTrustedPort)}`) && f[2]?.endsWith(`:${hex(client.port)}`));
    assert.equal(rows.length, 1, 'the accepted connection is listed');
    return rows[0]![5];
  };
  // While the greeting waits for its (delayed) ACK, the retransmission timer (1) shows instead.
  let field = timerField();
  for (let i = 0; i < 40 && !field?.startsWith('02:'); i++) {
    await sleep(50);
    field = timerField();
  }
  const [timer, when] = field!.split(':');
  assert.equal(timer, '02', `the keepalive timer runs (${field})`);
  const seconds = Number.parseInt(when!, 16) / 100;
  assert.ok(seconds > 50 && seconds <= 60, `the first probe is due in ${seconds} s`);
  client.socket.destroy();
});
