/**
 * Clients that pipeline more than MAX_PIPELINED_BYTES behind their login (RFC 9051 §5.5, RFC 2449
 * §6.6 PIPELINING, which mailfront offers before login): every command is answered, in order,
 * through mailfront as by Dovecot directly, over plain TCP, after STARTTLS and over implicit TLS.
 * While the login is pending mailfront stops reading the client instead of ending the session;
 * a login a backend never answers still holds no more than the bound (plus a read) of what the
 * client sent, and the pre-auth deadline ends it as before.
 * ManageSieve too, on its plaintext listener.
 * Backends: slapd, a Dovecot with TLS and ManageSieve, and scripted IMAP and POP3 backends that never answer a login.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect, createServer } from 'node:net';
import type { AddressInfo, Server, Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { after, before, describe, test } from 'node:test';
import { MAX_PIPELINED_BYTES } from '../../src/limits.js';
import { startDovecot, startSlapd } from './servers/index.js';
import type { Dovecot, Slapd } from './servers/index.js';
import { makeMessage, registerSecrets, startFront, waitForLog } from './front.js';
import type { Front } from './front.js';

const PASSWORDS = { pia: 'Pia-pipe-6d0a', held: 'Held-pipe-2b9c' };
registerSecrets(Object.values(PASSWORDS));
/** session.preauth_timeout_ms here: it ends the logins the scripted backends never answer. */
const PREAUTH_MS = 3_000;
/** The most mailfront reads in one go (net/direct-io.ts, and libuv's read size for the stream path). */
const ONE_READ_BYTES = 64 * 1024;

let slapd: Slapd;
let dovecot: Dovecot;
const silentServers: Server[] = [];
const silentSockets: Socket[] = [];
let silentImapPort: number;
let silentPop3Port: number;
let front: Front;

/** A backend that greets, answers ID (the client address forwarded), and never answers a login. */
async function silentBackend(greeting: string): Promise<number> {
  const server = createServer((socket) => {
    silentSockets.push(socket);
    socket.on('error', () => undefined);
    socket.write(greeting);
    socket.on('data', (chunk: Buffer) => {
      for (const [, tag] of chunk.toString('latin1').matchAll(/^(\S+) ID .*\r\n/gm)) socket.write(`${tag} OK ID completed\r\n`);
    });
  });
  silentServers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return (server.address() as AddressInfo).port;
}

before(async () => {
  slapd = await startSlapd({
    users: [
      { uid: 'pia', password: PASSWORDS.pia, store: 'dove' },
      { uid: 'held', password: PASSWORDS.held, store: 'silent' },
    ],
  });
  dovecot = await startDovecot({ name: 'pipe', users: [{ name: 'pia', password: PASSWORDS.pia }], tls: true, sieve: true });
  await dovecot.deliver('pia', makeMessage('pipelined', 200));
  silentImapPort = await silentBackend('* OK [CAPABILITY IMAP4rev1 LITERAL+ ID AUTH=PLAIN] scripted\r\n');
  silentPop3Port = await silentBackend('+OK scripted\r\n');
  front = await startFront({
    slapd,
    stores: {
      dove: { currentMaster: 'd1', slots: { d1: { imapPort: dovecot.imapPort, pop3Port: dovecot.pop3Port, sievePort: dovecot.sievePort! } } },
      silent: { currentMaster: 's1', slots: { s1: { imapPort: silentImapPort, pop3Port: silentPop3Port } } },
    },
    session: { preauth_timeout_ms: PREAUTH_MS },
    sieve: true,
  });
});

after(async () => {
  await front?.stop();
  for (const socket of silentSockets) socket.destroy();
  await Promise.all(silentServers.map((server) => new Promise((resolve) => server.close(resolve))));
  await Promise.all([slapd?.stop(), dovecot?.stop()]);
});

type Wire = 'plain' | 'starttls' | 'implicit';

/** A raw client: what it received as latin1 text, until the server closes. */
class RawClient {
  text = '';
  readonly closed: Promise<void>;
  private wake: (() => void) | undefined;
  private markClosed!: () => void;

  private constructor(private socket: Socket) {
    this.closed = new Promise((resolve) => (this.markClosed = resolve));
    this.listen(socket);
  }

  /** Connects to the listener of `wire` and, after STARTTLS/STLS where needed, is ready for a login. */
  static async open(protocol: 'imap' | 'pop3' | 'managesieve', wire: Wire): Promise<RawClient> {
    if (protocol === 'managesieve') {
      assert.equal(wire, 'plain', 'ManageSieve: the plaintext listener only here');
      const client = new RawClient(connect({ port: front.sieveTrustedPort!, host: '127.0.0.1' }));
      // The greeting is a capability list ended by OK.
      await client.until(/^OK/m);
      client.port = client.socket.localPort ?? 0;
      return client;
    }
    const ports = protocol === 'imap' ? { plain: front.imapTrustedPort, starttls: front.imapPort, implicit: front.imapsPort } : { plain: front.pop3TrustedPort, starttls: front.pop3Port, implicit: front.pop3sPort };
    const socket = wire === 'implicit' ? tlsConnect({ port: ports.implicit, host: '127.0.0.1', ca: front.caPem, servername: 'localhost' }) : connect({ port: ports[wire], host: '127.0.0.1' });
    const client = new RawClient(socket);
    await client.until(/\r\n/);
    client.port = socket.localPort ?? 0;
    if (wire === 'starttls') {
      client.socket.write(protocol === 'imap' ? 's STARTTLS\r\n' : 'STLS\r\n');
      await client.until(protocol === 'imap' ? /^s OK/m : /\r\n\+OK/);
      client.socket.removeAllListeners('data');
      client.socket.removeAllListeners('close');
      const secure = tlsConnect({ socket: client.socket, ca: front.caPem, servername: 'localhost' });
      await once(secure, 'secureConnect');
      client.socket = secure;
      client.listen(secure);
    }
    return client;
  }

  /** The local port: the `clientPort` of this session's log lines (kept: a closed socket has none). */
  port = 0;

  /** Writes `data` in one write; does not wait for it to be taken. */
  write(data: string): void {
    this.socket.write(data);
  }

  until(pattern: RegExp): Promise<void> {
    return new Promise((resolve) => {
      this.wake = () => {
        if (pattern.test(this.text)) resolve();
      };
      this.wake();
    });
  }

  destroy(): void {
    this.socket.destroy();
  }

  private listen(socket: Socket): void {
    socket.on('data', (chunk: Buffer) => {
      this.text += chunk.toString('latin1');
      this.wake?.();
    });
    socket.on('error', () => undefined);
    socket.on('close', () => this.markClosed());
  }
}

const WIRES: readonly Wire[] = ['plain', 'starttls', 'implicit'];

describe('IMAP: more than MAX_PIPELINED_BYTES pipelined behind LOGIN', () => {
  const COMMANDS = 3_000;
  const commands = Array.from({ length: COMMANDS }, (_, i) => `n${i} UID FETCH 1 FLAGS\r\n`).join('');
  const payload = `a LOGIN pia "${PASSWORDS.pia}"\r\nb SELECT INBOX\r\n${commands}z LOGOUT\r\n`;

  test('the payload is more than the bound', () => {
    assert.ok(Buffer.byteLength(payload) > MAX_PIPELINED_BYTES, `${Buffer.byteLength(payload)} bytes`);
  });

  for (const wire of WIRES) {
    test(`every command is answered OK, in order (${wire})`, { timeout: 30_000 }, async () => {
      const mark = front.logs.length;
      const client = await RawClient.open('imap', wire);
      client.write(payload);
      // Dovecot closes after its LOGOUT answer.
      await client.closed;
      const tagged = client.text.split('\r\n').filter((line) => line !== '' && !line.startsWith('*') && !line.startsWith('s '));
      const tags = tagged.map((line) => line.split(' ')[0]);
      assert.equal(tags.length, COMMANDS + 3, `${tags.length} tagged answers; the last lines: ${JSON.stringify(client.text.slice(-300))}`);
      assert.deepEqual(tags, ['a', 'b', ...Array.from({ length: COMMANDS }, (_, i) => `n${i}`), 'z']);
      for (const line of tagged) assert.match(line, /^\S+ OK /);
      assert.doesNotMatch(client.text, /\* BYE \[LIMIT\]/);
      const finished = await waitForLog(front, (l) => l['event'] === 'session.finished' && l['user'] === 'pia' && l['clientPort'] === client.port, 10_000, mark);
      assert.equal(finished['phase'], 'spliced');
    });
  }
});

describe('IMAP: more than MAX_PIPELINED_BYTES pipelined behind a login that is refused', () => {
  const COMMANDS = 3_000;
  // Ten ID commands of 7 KB (under the line bound, ten of the commands allowed before login): run
  // before login once the first one is refused, then a second login and what follows it.
  const pairs = Array.from({ length: 7 }, (_, k) => `"k${k}" "${'x'.repeat(1000)}"`).join(' ');
  const ids = Array.from({ length: 10 }, (_, i) => `c${i} ID (${pairs})\r\n`).join('');
  const commands = Array.from({ length: COMMANDS }, (_, i) => `n${i} UID FETCH 1 FLAGS\r\n`).join('');
  const payload = `a LOGIN pia wrong-password\r\n${ids}b LOGIN pia "${PASSWORDS.pia}"\r\nd SELECT INBOX\r\n${commands}z LOGOUT\r\n`;

  for (const wire of ['plain', 'starttls'] as const) {
    test(`mailfront reads on: what followed runs before login, and the next login is spliced with what follows it (${wire})`, { timeout: 30_000 }, async () => {
      assert.ok(Buffer.byteLength(ids) > MAX_PIPELINED_BYTES);
      const client = await RawClient.open('imap', wire);
      client.write(payload);
      await client.closed;
      const tagged = client.text.split('\r\n').filter((line) => line !== '' && !line.startsWith('*') && !line.startsWith('s '));
      const tags = tagged.map((line) => line.split(' ')[0]);
      assert.deepEqual(tags, ['a', ...Array.from({ length: 10 }, (_, i) => `c${i}`), 'b', 'd', ...Array.from({ length: COMMANDS }, (_, i) => `n${i}`), 'z']);
      assert.match(tagged[0] ?? '', /^a NO \[AUTHENTICATIONFAILED\]/);
      for (const line of tagged.slice(1)) assert.match(line, /^\S+ OK /);
    });
  }
});

describe('POP3: more than MAX_PIPELINED_BYTES pipelined behind USER/PASS', () => {
  const COMMANDS = 9_000;
  const payload = `USER pia\r\nPASS ${PASSWORDS.pia}\r\n${'LIST 1\r\n'.repeat(COMMANDS)}QUIT\r\n`;

  test('the payload is more than the bound', () => {
    assert.ok(Buffer.byteLength(payload) > MAX_PIPELINED_BYTES, `${Buffer.byteLength(payload)} bytes`);
  });

  for (const wire of WIRES) {
    test(`every command is answered +OK, in order (${wire})`, { timeout: 30_000 }, async () => {
      const client = await RawClient.open('pop3', wire);
      const before = client.text.length;
      client.write(payload);
      await client.closed;
      const lines = client.text.slice(before).split('\r\n').filter((line) => line !== '');
      assert.equal(lines.length, COMMANDS + 3, `${lines.length} answers; the last lines: ${JSON.stringify(client.text.slice(-300))}`);
      assert.match(lines[0] ?? '', /^\+OK/, 'USER');
      assert.match(lines[1] ?? '', /^\+OK Logged in/, 'PASS');
      for (const line of lines.slice(2, -1)) assert.match(line, /^\+OK 1 \d+$/);
      assert.match(lines.at(-1) ?? '', /^\+OK/, 'QUIT');
    });
  }
});

describe('ManageSieve: more than MAX_PIPELINED_BYTES pipelined behind AUTHENTICATE', () => {
  const COMMANDS = 12_000;
  const plain = Buffer.from(`\0pia\0${PASSWORDS.pia}`).toString('base64');
  const payload = `AUTHENTICATE "PLAIN" "${plain}"\r\n${'NOOP\r\n'.repeat(COMMANDS)}LOGOUT\r\n`;

  test('every command is answered OK, in order (plain)', { timeout: 30_000 }, async () => {
    assert.ok(Buffer.byteLength(payload) > MAX_PIPELINED_BYTES);
    const client = await RawClient.open('managesieve', 'plain');
    const before = client.text.length;
    client.write(payload);
    await client.closed;
    const answers = client.text.slice(before).split('\r\n').filter((line) => /^(OK|NO|BYE)/.test(line));
    assert.equal(answers.length, COMMANDS + 2, `${answers.length} answers; the last lines: ${JSON.stringify(client.text.slice(-300))}`);
    for (const line of answers) assert.match(line, /^OK/);
  });
});

// The four run at once: each waits out PREAUTH_MS on a session of its own (found by its client
// port), so together they take one deadline rather than four.
describe('a login the backend never answers, with megabytes pipelined behind it', { concurrency: true }, () => {
  const FLOOD_BYTES = 4 * 1024 * 1024;

  for (const protocol of ['imap', 'pop3'] as const) {
    for (const wire of ['plain', 'implicit'] as const) {
      test(`${protocol} (${wire}): mailfront reads no more than the bound and a read, and the deadline ends the login`, { timeout: 30_000 }, async () => {
        const mark = front.logs.length;
        const client = await RawClient.open(protocol, wire);
        const login = protocol === 'imap' ? `a LOGIN held "${PASSWORDS.held}"\r\n` : `USER held\r\nPASS ${PASSWORDS.held}\r\n`;
        const filler = protocol === 'imap' ? 'n NOOP\r\n' : 'NOOP\r\n';
        client.write(login + filler.repeat(Math.ceil(FLOOD_BYTES / filler.length)));
        await client.closed;
        const finished = await waitForLog(front, (l) => l['event'] === 'session.finished' && l['clientPort'] === client.port, 10_000, mark);
        // Ended by the deadline with the login pending, not by the amount pipelined.
        assert.equal(finished['reason'], 'timeout');
        if (protocol === 'imap') assert.match(client.text, /^a NO \[UNAVAILABLE\] [^\r\n]*\r\n\* BYE No login within the time allowed/m);
        else assert.match(client.text, /\r\n-ERR \[SYS\/TEMP\][^\r\n]*\r\n-ERR No login within the time allowed/);
        const read = finished['bytesFromClient'] as number;
        const bound = Buffer.byteLength(login) + MAX_PIPELINED_BYTES + ONE_READ_BYTES;
        assert.ok(read <= bound, `mailfront read ${read} bytes of the client's ${FLOOD_BYTES} before login (bound ${bound})`);
        assert.ok(read >= MAX_PIPELINED_BYTES, `mailfront read ${read} bytes: the bound's worth is read before it stops`);
        client.destroy();
      });
    }
  }
});
