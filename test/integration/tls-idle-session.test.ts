/**
 * What a TLS session keeps once its handshake is done, implicit or after STARTTLS
 * (docs/performance.md, "Memory per idle session"), and that what it no longer keeps changes
 * none of the ways it ends.
 *
 * - node's TLS layer sizes its input buffer, kept for the connection's life, by its first read:
 *   the listener (implicit TLS) and the session (after STARTTLS) hand it the client's first
 *   bytes read already (its ClientHello), so that the buffer is the ClientHello's size (at least
 *   1 KiB), not libuv's 64 KiB.
 * - The listeners the handshake wait put on the TLS socket are gone once it is done.
 * - A reset after the handshake (before login, and spliced), a FIN with the first bytes and a
 *   client gone before any byte still end the connection once, as they did; after a STARTTLS
 *   answered, a FIN, a reset or the pre-auth deadline before the client's first TLS byte too.
 * - A TLS record that fails after the handshake (one that does not decrypt) ends the session at
 *   once, implicit TLS or STARTTLS, spliced or before login: node keeps such an error to itself on
 *   a TLS socket no tls.Server released (src/net/tls-late-error.ts).
 *
 * The first two look inside the process (mailfront runs in it): TLSSocket.prototype._wrapHandle
 * is watched to see the socket the TLS layer is made on, and the TLS socket it makes.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { connect as netConnect } from 'node:net';
import type { Socket } from 'node:net';
import { after, before, beforeEach, describe, test } from 'node:test';
import { connect as tlsConnect, TLSSocket } from 'node:tls';
import { startDovecot, startSlapd } from './servers/index.js';
import type { Dovecot, Slapd } from './servers/index.js';
import { registerSecrets, startFront, waitForLog } from './front.js';
import type { Front } from './front.js';

const PASSWORD = 'Tilda-idle-41c7';
registerSecrets([PASSWORD]);

/** A TLS socket made on the server side, and how many bytes its socket had read already then. */
interface Wrapped {
  readonly secure: TLSSocket;
  readonly buffered: number;
}
const wrapped: Wrapped[] = [];
type WrapHandle = (this: TLSSocket, wrap: Socket | null, ...rest: unknown[]) => unknown;
const proto = TLSSocket.prototype as unknown as { _wrapHandle: WrapHandle; _tlsOptions?: { isServer?: boolean } };
const originalWrapHandle = proto._wrapHandle;

let slapd: Slapd;
let dovecot: Dovecot;
let front: Front;

before(async () => {
  proto._wrapHandle = function (this: TLSSocket, wrap: Socket | null, ...rest: unknown[]): unknown {
    const options = (this as unknown as { _tlsOptions?: { isServer?: boolean } })._tlsOptions;
    if (options?.isServer === true) wrapped.push({ secure: this, buffered: wrap?.readableLength ?? 0 });
    return originalWrapHandle.call(this, wrap, ...rest);
  };
  slapd = await startSlapd({ users: [{ uid: 'tilda', password: PASSWORD, store: 'alpha' }] });
  dovecot = await startDovecot({ name: 'tls-idle-alpha', users: [{ name: 'tilda', password: PASSWORD }] });
  front = await startFront({ slapd, stores: { alpha: { currentMaster: 'a1', slots: { a1: { imapPort: dovecot.imapPort } } } } });
});

after(async () => {
  proto._wrapHandle = originalWrapHandle;
  await front?.stop();
  await Promise.all([slapd?.stop(), dovecot?.stop()]);
});

beforeEach(() => {
  wrapped.length = 0;
});

type Client = { raw: Socket; tls: TLSSocket; lines: string[]; next(): Promise<string> };

/** A TLS handshake as a client on `raw` (a plain socket of the test's, which it can reset), the lines it reads in `lines`. */
async function tlsOn(raw: Socket): Promise<Client> {
  const tls = tlsConnect({ socket: raw, servername: 'localhost', ca: front.caPem });
  tls.on('error', () => undefined);
  await new Promise<void>((resolve, reject) => {
    tls.once('secureConnect', resolve);
    tls.once('error', reject);
  });
  const lines: string[] = [];
  let pending = '';
  let wake: (() => void) | undefined;
  tls.on('data', (chunk: Buffer) => {
    pending += chunk.toString('latin1');
    for (let at = pending.indexOf('\r\n'); at >= 0; at = pending.indexOf('\r\n')) {
      lines.push(pending.slice(0, at));
      pending = pending.slice(at + 2);
    }
    wake?.();
  });
  const next = async (): Promise<string> => {
    for (let i = 0; i < 100 && lines.length === 0; i++) await new Promise<void>((resolve) => ((wake = resolve), setTimeout(resolve, 100)));
    return lines.shift() ?? assert.fail('no line from mailfront');
  };
  return { raw, tls, lines, next };
}

/** A client of the implicit-TLS port. */
async function client(): Promise<Client> {
  const raw = netConnect(front.imapsPort, '127.0.0.1');
  raw.on('error', () => undefined);
  await new Promise<void>((resolve) => raw.once('connect', resolve));
  return tlsOn(raw);
}

/** A client on the STARTTLS port that has sent STARTTLS and read its answer, before any TLS byte. */
async function startTlsAnswered(): Promise<{ raw: Socket; received: () => string }> {
  const raw = netConnect(front.imapPort, '127.0.0.1');
  raw.on('error', () => undefined);
  let text = '';
  raw.on('data', (chunk: Buffer) => (text += chunk.toString('latin1')));
  const until = async (pattern: RegExp): Promise<void> => {
    for (let i = 0; i < 100 && !pattern.test(text); i++) await new Promise((resolve) => setTimeout(resolve, 50));
    assert.match(text, pattern);
  };
  await until(/^\* OK.*\r\n/);
  raw.write('s STARTTLS\r\n');
  await until(/\r\ns OK[^\r]*\r\n$/);
  return { raw, received: () => text };
}

/** The same, then the TLS handshake: a client as client() makes one, greeted over TLS. */
async function startTlsClient(): Promise<Client> {
  const { raw } = await startTlsAnswered();
  raw.removeAllListeners('data');
  return tlsOn(raw);
}

/** Logs in and selects INBOX: the session is spliced. Returns its id. `greeted`: the greeting was read already (STARTTLS). */
async function spliced(c: Client, greeted = false): Promise<string> {
  const since = front.logs.length;
  if (!greeted) assert.match(await c.next(), /^\* OK/);
  c.tls.write(`a LOGIN tilda ${PASSWORD}\r\n`);
  for (let line = await c.next(); !line.startsWith('a '); line = await c.next());
  const event = await waitForLog(front, (l) => l['event'] === 'session.spliced' && l['user'] === 'tilda', 5_000, since);
  c.tls.write('b SELECT INBOX\r\n');
  for (let line = await c.next(); !line.startsWith('b '); line = await c.next());
  return String(event['session']);
}

/** The session.finished lines of session `id` within `ms` (waits that long for a second one). */
async function finishedLines(id: string, ms = 500): Promise<Array<Record<string, unknown>>> {
  await waitForLog(front, (l) => l['event'] === 'session.finished' && l['session'] === id, 5_000);
  await new Promise((resolve) => setTimeout(resolve, ms));
  return front.logs.filter((l) => l['event'] === 'session.finished' && l['session'] === id);
}

describe('an implicit-TLS session after its handshake', () => {
  test("the TLS layer is given the client's first bytes read already, which size its input buffer", async () => {
    const c = await client();
    await spliced(c);
    assert.equal(wrapped.length, 1);
    // A ClientHello of node's client is about 300 to 600 bytes; 0 is the TLS layer reading the
    // socket itself (its first read, and so its buffer for good, is then 64 KiB).
    assert.ok(wrapped[0]!.buffered > 0, `the socket had read ${wrapped[0]!.buffered} bytes when it was wrapped`);
    c.tls.destroy();
  });

  test('no listener of the handshake wait is left on the spliced TLS socket', async () => {
    const c = await client();
    await spliced(c);
    const secure = wrapped[0]?.secure ?? assert.fail('no server TLS socket');
    // The session and the splice listen with on(); the handshake wait's once() wrappers (a
    // `listener` property) held its closures, promise and timer for the session's life.
    for (const event of ['secure', 'error', 'close', 'end']) {
      const onces = secure.rawListeners(event).filter((l) => 'listener' in l);
      assert.equal(onces.length, 0, `${onces.length} once() listeners of '${event}' left`);
    }
    c.tls.destroy();
  });

  test('a reset once spliced ends the session once, as a client error, and frees its connection slot', async () => {
    const open = front.mailfront.limiter.connections;
    const c = await client();
    const id = await spliced(c);
    c.raw.resetAndDestroy();
    const finished = await finishedLines(id);
    assert.deepEqual(finished.map((l) => [l['reason'], l['phase']]), [['client-error', 'spliced']]);
    // (The earlier tests' connections may still be closing: at most as many as before.)
    for (let i = 0; i < 50 && front.mailfront.limiter.connections > open; i++) await new Promise((resolve) => setTimeout(resolve, 20));
    assert.ok(front.mailfront.limiter.connections <= open, `${front.mailfront.limiter.connections} connections open, ${open} before`);
  });

  test('a reset after the handshake, before login, ends the session once', async () => {
    const since = front.logs.length;
    const c = await client();
    assert.match(await c.next(), /^\* OK/);
    const started = await waitForLog(front, (l) => l['event'] === 'session.started' && l['listener'] === 'imaps', 5_000, since);
    c.raw.resetAndDestroy();
    const finished = await finishedLines(String(started['session']));
    assert.deepEqual(finished.map((l) => [l['reason'], l['phase']]), [['client-error-preauth', 'preauth']]);
  });
});

describe('an implicit-TLS connection that ends before its handshake', () => {
  const failures = (): Array<Record<string, unknown>> => front.logs.filter((l) => l['event'] === 'session.tls_failed');

  test('a client that sends the start of a ClientHello and its FIN at once is closed at once, no session begun', async () => {
    const before = { failed: failures().length, started: front.logs.filter((l) => l['event'] === 'session.started').length };
    const raw = netConnect(front.imapsPort, '127.0.0.1');
    raw.on('error', () => undefined);
    raw.resume();
    await new Promise<void>((resolve) => raw.once('connect', resolve));
    // A TLS record header announcing a 512-byte handshake message, and 5 bytes of it.
    raw.end(Buffer.from([0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03]));
    const closed = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), 5_000);
      raw.once('close', () => (clearTimeout(timer), resolve(true)));
    });
    assert.ok(closed, 'mailfront closed the connection (it did not wait for the pre-auth deadline)');
    assert.equal(failures().length, before.failed, 'a client gone is not logged as a failed handshake');
    assert.equal(front.logs.filter((l) => l['event'] === 'session.started').length, before.started);
  });

  test('a client gone before its first byte leaves nothing open', async () => {
    const open = front.mailfront.limiter.connections;
    for (const end of ['close', 'reset'] as const) {
      const raw = netConnect(front.imapsPort, '127.0.0.1');
      raw.on('error', () => undefined);
      raw.resume();
      await new Promise<void>((resolve) => raw.once('connect', resolve));
      await new Promise((resolve) => setTimeout(resolve, 100));
      if (end === 'reset') raw.resetAndDestroy();
      else raw.end();
      await new Promise<void>((resolve) => (raw.closed ? resolve() : raw.once('close', () => resolve())));
    }
    for (let i = 0; i < 100 && front.mailfront.limiter.connections > open; i++) await new Promise((resolve) => setTimeout(resolve, 20));
    assert.ok(front.mailfront.limiter.connections <= open, `${front.mailfront.limiter.connections} connections open, ${open} before`);
  });
});

describe('a session after STARTTLS', () => {
  test("the TLS layer is given the client's first bytes read already, and no listener of the handshake stays", async () => {
    const c = await startTlsClient();
    await spliced(c, true);
    assert.equal(wrapped.length, 1);
    assert.ok(wrapped[0]!.buffered > 0, `the socket had read ${wrapped[0]!.buffered} bytes when it was wrapped`);
    const secure = wrapped[0]!.secure;
    for (const event of ['secure', 'error', 'close', 'end']) {
      const onces = secure.rawListeners(event).filter((l) => 'listener' in l);
      assert.equal(onces.length, 0, `${onces.length} once() listeners of '${event}' left`);
    }
    c.tls.destroy();
  });

  test('a FIN after the STARTTLS answer, before any TLS byte, ends the session at once and frees its connection slot', async () => {
    const since = front.logs.length;
    // The earlier tests' connections close first (within their 1 s grace at most).
    for (let i = 0; i < 300 && front.mailfront.limiter.connections > 0; i++) await new Promise((resolve) => setTimeout(resolve, 10));
    const { raw } = await startTlsAnswered();
    const started = await waitForLog(front, (l) => l['event'] === 'session.started' && l['listener'] === 'imap', 5_000, since);
    raw.end();
    const ended = performance.now();
    await waitForLog(front, (l) => l['event'] === 'session.finished' && l['session'] === started['session'], 5_000, since);
    // No TLS socket made on a socket whose FIN was read: it would hear no end, and the session's
    // end would wait the 1 s grace to destroy it, its slot held (max_connections_per_address).
    assert.equal(wrapped.length, 0, 'no TLS socket made for a client gone');
    for (let i = 0; i < 300 && front.mailfront.limiter.connections > 0; i++) await new Promise((resolve) => setTimeout(resolve, 10));
    const freedMs = performance.now() - ended;
    assert.ok(freedMs < 800, `the connection slot was freed ${Math.round(freedMs)} ms after the FIN, not at once`);
    const finished = await finishedLines(String(started['session']));
    assert.deepEqual(finished.map((l) => [l['reason'], l['phase']]), [['client-closed-preauth', 'preauth']]);
    assert.equal(front.logs.slice(since).filter((l) => l['event'] === 'session.tls_failed').length, 0);
  });

  test('a reset after the STARTTLS answer, before any TLS byte, is a failed handshake, logged once', async () => {
    const since = front.logs.length;
    const { raw } = await startTlsAnswered();
    const started = await waitForLog(front, (l) => l['event'] === 'session.started' && l['listener'] === 'imap', 5_000, since);
    raw.resetAndDestroy();
    const finished = await finishedLines(String(started['session']));
    assert.deepEqual(finished.map((l) => [l['reason'], l['phase']]), [['tls-failed', 'preauth']]);
    const failed = front.logs.slice(since).filter((l) => l['event'] === 'session.tls_failed');
    assert.deepEqual(failed.map((l) => [l['reason'], l['listener'], l['err']]), [['error', 'imap', 'read ECONNRESET']]);
  });

  test('the pre-auth deadline after the STARTTLS answer, before any TLS byte, closes the connection with no plaintext after the answer', async () => {
    const since = front.logs.length;
    const { raw, received } = await startTlsAnswered();
    const answered = received().length;
    const started = await waitForLog(front, (l) => l['event'] === 'session.started' && l['listener'] === 'imap', 5_000, since);
    const closed = await new Promise<boolean>((resolve) => {
      const timer = setTimeout(() => resolve(false), 15_000);
      raw.once('close', () => (clearTimeout(timer), resolve(true)));
    });
    assert.ok(closed, 'closed after the pre-auth deadline');
    assert.equal(received().length, answered, 'nothing in plaintext after the STARTTLS answer');
    const finished = await finishedLines(String(started['session']), 100);
    assert.equal(finished.length, 1);
    assert.equal(finished[0]!['phase'], 'preauth');
  });
});

/** A TLS 1.3 application-data record of garbage: OpenSSL cannot decrypt it ("bad record mac"). */
function badRecord(): Buffer {
  return Buffer.concat([Buffer.from([0x17, 0x03, 0x03, 0x00, 0x40]), randomBytes(64)]);
}

describe('a TLS record that fails after the handshake', () => {
  const ways = [
    { name: 'implicit TLS', connect: client, greeted: false },
    { name: 'STARTTLS', connect: startTlsClient, greeted: true },
  ] as const;
  for (const way of ways) {
    test(`${way.name}: spliced, the session ends at once, as a client error`, async () => {
      const c = await way.connect();
      const id = await spliced(c, way.greeted);
      c.raw.write(badRecord());
      const finished = await finishedLines(id);
      assert.deepEqual(finished.map((l) => [l['reason'], l['phase']]), [['client-error', 'spliced']]);
      c.raw.destroy();
    });
  }

  test('implicit TLS: before login, the session ends at once, as a client error', async () => {
    const since = front.logs.length;
    const c = await client();
    assert.match(await c.next(), /^\* OK/);
    const started = await waitForLog(front, (l) => l['event'] === 'session.started' && l['listener'] === 'imaps', 5_000, since);
    c.raw.write(badRecord());
    const finished = await finishedLines(String(started['session']));
    assert.deepEqual(finished.map((l) => [l['reason'], l['phase']]), [['client-error-preauth', 'preauth']]);
    c.raw.destroy();
  });
});
