// The splice over real loopback sockets: both relays (direct for plain TCP, stream when an end
// is TLS), byte-identical bulk transfers both ways with a slow reader (backpressure), the order
// of pipelined and leftover bytes, the idle sweep, half-closes, and a drain notice.
import assert from 'node:assert/strict';
import { randomBytes, createHash } from 'node:crypto';
import { once } from 'node:events';
import type { Socket } from 'node:net';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { splice } from '../../src/proxy/splice.js';
import { readDirect } from '../../src/net/direct-io.js';
import { tcpPair, tlsPair, type Pair } from './socket-pairs.js';
import type { Splice } from '../../src/proxy/splice.js';
import { ImapResponseBoundary } from '../../src/protocol/imap/boundary.js';
import { unauthenticateGuard } from '../../src/proxy/command-guard.js';

/** Reads `length` bytes from `socket`, pausing now and then like a slow client; returns their SHA-256. */
function readAll(socket: Socket, length: number, slow: boolean): Promise<string> {
  const hash = createHash('sha256');
  let got = 0;
  let chunks = 0;
  return new Promise((resolve, reject) => {
    const onData = (chunk: Buffer): void => {
      hash.update(chunk);
      got += chunk.length;
      if (got > length) return reject(new Error(`${got - length} bytes more than were sent`));
      if (got === length) {
        socket.off('data', onData);
        socket.off('error', reject);
        return resolve(hash.digest('hex'));
      }
      if (slow && ++chunks % 8 === 0) {
        socket.pause();
        setTimeout(() => socket.resume(), 2);
      }
    };
    socket.on('data', onData);
    socket.on('error', reject);
  });
}

/** Writes `data` in pieces of random size, respecting backpressure. */
async function writeAll(socket: Socket, data: Buffer): Promise<void> {
  for (let at = 0; at < data.length; ) {
    const size = 1 + Math.floor(Math.random() * 200_000);
    if (!socket.write(data.subarray(at, at + size))) await once(socket, 'drain');
    at += size;
  }
}

const sha = (data: Buffer): string => createHash('sha256').update(data).digest('hex');

/** Resumes a paused client end and collects everything it receives until the connection closes. */
async function resumeUntilClosed(socket: Socket): Promise<Buffer> {
  const received: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => received.push(chunk));
  socket.resume();
  await once(socket, 'close');
  return Buffer.concat(received);
}

async function bulkBothWays(client: Pair, backend: Pair, expectRelay: Splice['relay']): Promise<void> {
  const running = splice(client.front, backend.front, new Uint8Array(), new Uint8Array(), 60_000);
  assert.equal(running.relay, expectRelay);
  const down = randomBytes(12 * 1024 * 1024);
  const up = randomBytes(5 * 1024 * 1024);
  const [downHash, upHash] = await Promise.all([
    readAll(client.user, down.length, true),
    readAll(backend.user, up.length, true),
    writeAll(backend.user, down),
    writeAll(client.user, up),
  ]);
  assert.equal(downHash, sha(down), 'backend to client arrives byte-identical');
  assert.equal(upHash, sha(up), 'client to backend arrives byte-identical');
  assert.equal(running.bytesToClient, down.length);
  assert.equal(running.bytesFromClient, up.length);
  client.user.destroy();
  assert.equal(await running.ended, 'client-closed');
  assert.ok(backend.front.destroyed, 'the backend connection is closed with the client');
}

test('plain TCP on both ends uses the direct relay: 12 MB down and 5 MB up at once, slow readers, byte-identical', async () => {
  await bulkBothWays(await tcpPair(), await tcpPair(), 'direct');
});

test('a TLS client uses the stream relay, byte-identical both ways', async () => {
  await bulkBothWays(await tlsPair(), await tcpPair(), 'stream');
});

test('a client already read through the shared buffer (as before login) and a TLS backend: byte-identical both ways', async () => {
  const client = await tcpPair();
  // The session reads a plain client through the shared buffer from the greeting on; the splice
  // takes the reads over (the client's direction stays direct, the TLS backend's is a stream).
  assert.equal(readDirect(client.front, () => true), true);
  await bulkBothWays(client, await tlsPair(), 'stream');
});

for (const [name, clientPair] of [
  ['plain', tcpPair],
  ['TLS', tlsPair],
] as const) {
  test(`a ${name} client that stops reading stops the backend being read (bounded buffering), and nothing is lost when it resumes`, async () => {
    const client = await clientPair();
    const backend = await tcpPair();
    const running = splice(client.front, backend.front, new Uint8Array(), new Uint8Array(), 60_000);
    client.user.pause();
    const data = randomBytes(64 * 1024 * 1024);
    let sent = false;
    const sending = writeAll(backend.user, data).then(() => (sent = true));
    await sleep(500);
    assert.equal(sent, false, 'backpressure reached the backend: 64 MB do not fit in the socket buffers');
    // One chunk of the shared buffer at most; through TLS, plus what filled the stream to its mark.
    const bound = 128 * 1024 + client.front.writableHighWaterMark;
    assert.ok(client.front.writableLength <= bound, `mailfront buffers at most one chunk (${client.front.writableLength} bytes queued)`);
    const got = readAll(client.user, data.length, false);
    client.user.resume();
    await sending;
    assert.equal(await got, sha(data));
    running.close('kicked', null);
    assert.equal(await running.ended, 'kicked');
  });
}

test('pipelined bytes reach the backend and leftover bytes the client before anything relayed', async () => {
  const client = await tcpPair();
  const backend = await tcpPair();
  const running = splice(client.front, backend.front, Buffer.from('a2 SELECT INBOX\r\n'), Buffer.from('* 3 EXISTS\r\n'), 60_000);
  client.user.write('a3 NOOP\r\n');
  backend.user.write('a2 OK done\r\n');
  const toBackend = readAll(backend.user, 26, false);
  const toClient = readAll(client.user, 24, false);
  assert.equal(await toBackend, sha(Buffer.from('a2 SELECT INBOX\r\na3 NOOP\r\n')));
  assert.equal(await toClient, sha(Buffer.from('* 3 EXISTS\r\na2 OK done\r\n')));
  backend.user.end();
  assert.equal(await running.ended, 'backend-closed', 'a half-close by the backend ends the session');
  await once(client.user, 'close');
});

test('a client socket destroyed without an error before a backend read is written: the splice ends, nothing goes to its closed descriptor', async () => {
  const client = await tcpPair();
  const backend = await tcpPair();
  // The ends are reset when the splice closes with bytes unread.
  client.user.on('error', () => {});
  backend.user.on('error', () => {});
  // destroy() closes the descriptor at once and emits 'close' only later. The tracker sees each
  // chunk for the client just before it is written: destroying the client there is the window
  // in which a descriptor kept from the start would be written to, closed (EBADF, ending the
  // session as a client error) or already another connection's.
  const tracker = { observe: () => client.front.destroy(), atBoundary: () => true };
  const running = splice(client.front, backend.front, new Uint8Array(0), new Uint8Array(0), 60_000, tracker);
  assert.equal(running.relay, 'direct');
  backend.user.write('* 1 EXISTS\r\n');
  assert.equal(await running.ended, 'client-closed');
  client.user.destroy();
  backend.user.destroy();
});

test('the idle sweep ends a quiet session, and traffic either way keeps it open', async () => {
  const client = await tcpPair();
  const backend = await tcpPair();
  const started = Date.now();
  const running = splice(client.front, backend.front, new Uint8Array(), new Uint8Array(), 400);
  let ended: string | null = null;
  void running.ended.then((r) => (ended = r));
  client.user.resume();
  backend.user.resume();
  for (let i = 0; i < 6; i++) {
    await sleep(150);
    (i % 2 === 0 ? backend.user : client.user).write('x');
  }
  assert.equal(ended, null, 'a session with traffic every 150 ms stays open past its 400 ms idle timeout');
  assert.equal(await running.ended, 'idle-timeout');
  const quietFor = Date.now() - started - 900;
  assert.ok(quietFor >= 350 && quietFor < 2_000, `closed after ${quietFor} ms of quiet`);
});

/** A quiet splice of plain TCP pairs with a 1 s idle timeout (swept every 100 ms), and its end once known. */
async function quietSplice(): Promise<{ running: Splice; ended: () => string | null; close: () => void }> {
  const client = await tcpPair();
  const backend = await tcpPair();
  const running = splice(client.front, backend.front, new Uint8Array(), new Uint8Array(), 1_000);
  let ended: string | null = null;
  void running.ended.then((r) => (ended = r));
  client.user.resume();
  backend.user.resume();
  return {
    running,
    ended: () => ended,
    close: () => {
      client.user.destroy();
      backend.user.destroy();
    },
  };
}

test('the idle sweep goes by a monotonic clock: a wall clock stepped an hour forward ends no session', async (t) => {
  const wall = Date.now.bind(Date);
  const quiet = await quietSplice();
  t.mock.method(Date, 'now', () => wall() + 3_600_000);
  await sleep(500);
  assert.equal(quiet.ended(), null, 'a session quiet for 0.5 s of its 1 s ended when the clock jumped an hour ahead');
  quiet.close();
  await quiet.running.ended;
});

test('the idle sweep goes by a monotonic clock: a wall clock stepped an hour back keeps no session past its timeout', async (t) => {
  const wall = Date.now.bind(Date);
  const quiet = await quietSplice();
  t.mock.method(Date, 'now', () => wall() - 3_600_000);
  assert.equal(await Promise.race([quiet.running.ended, sleep(3_000).then(() => 'still open 3 s after its 1 s timeout')]), 'idle-timeout');
  quiet.close();
});

test('a drain notice is written at a response boundary, never inside a literal', async () => {
  for (const [sent, expectNotice] of [['* 1 EXISTS\r\n', true], ['* 1 FETCH (BODY[] {100}\r\nhalf', false]] as const) {
    const client = await tcpPair();
    const backend = await tcpPair();
    const running = splice(client.front, backend.front, new Uint8Array(), new Uint8Array(), 60_000, new ImapResponseBoundary());
    const received: Buffer[] = [];
    client.user.on('data', (chunk: Buffer) => received.push(chunk));
    backend.user.write(sent);
    while (Buffer.concat(received).length < sent.length) await sleep(5);
    running.close('drained', '* BYE [UNAVAILABLE] moved\r\n');
    await once(client.user, 'close');
    assert.equal(await running.ended, 'drained');
    assert.equal(Buffer.concat(received).toString('latin1'), expectNotice ? `${sent}* BYE [UNAVAILABLE] moved\r\n` : sent);
  }
});

/**
 * The splice's end, waited for with a timer that keeps the process up: a refused client's socket
 * stops being read, and the timer that closes it after its notice does not hold the process.
 */
async function endedWithin(running: Splice, ms = 3_000): Promise<string> {
  return Promise.race([running.ended, sleep(ms).then(() => 'not ended')]);
}

for (const [name, pair] of [['plain', tcpPair], ['TLS', tlsPair]] as const) {
  test(`a command the guard refuses (${name} client): the backend never gets its line end, the client gets the notice, the splice ends as command-refused`, async () => {
    const client = await pair();
    const backend = await tcpPair();
    const running = splice(client.front, backend.front, new Uint8Array(), new Uint8Array(), 60_000, new ImapResponseBoundary(), unauthenticateGuard(), '* BYE refused\r\n');
    const toBackend: Buffer[] = [];
    backend.user.on('data', (chunk: Buffer) => toBackend.push(chunk));
    backend.user.on('error', () => undefined);
    const toClient: Buffer[] = [];
    client.user.on('data', (chunk: Buffer) => toClient.push(chunk));
    client.user.write('a1 NOOP\r\nb2 UNAUTHEN');
    while (Buffer.concat(toBackend).length < 19) await sleep(5);
    client.user.write('TICATE\r\nc3 LOGIN other secret\r\n');
    assert.equal(await endedWithin(running), 'command-refused');
    assert.equal(Buffer.concat(toBackend).toString('latin1'), 'a1 NOOP\r\nb2 UNAUTHEN');
    assert.equal(Buffer.concat(toClient).toString('latin1'), '* BYE refused\r\n');
  });
}

test('a refused command pipelined behind the login never reaches the backend', async () => {
  const client = await tcpPair();
  const backend = await tcpPair();
  const toBackend: Buffer[] = [];
  backend.user.on('data', (chunk: Buffer) => toBackend.push(chunk));
  backend.user.on('error', () => undefined);
  const running = splice(client.front, backend.front, Buffer.from('b2 UNAUTHENTICATE\r\n'), new Uint8Array(), 60_000, new ImapResponseBoundary(), unauthenticateGuard(), '* BYE refused\r\n');
  assert.equal(await endedWithin(running), 'command-refused');
  assert.equal(Buffer.concat(toBackend).length, 0);
});

test('a drain notice reaches a client that is behind: what is queued for it goes out first, then the notice', async () => {
  const client = await tcpPair();
  const backend = await tcpPair();
  // Whole response lines, far more than the loopback buffers hold while the client does not
  // read (as the backend's bytes after its login reply, so that all of them are the splice's at
  // once): most of them stay queued on mailfront's socket.
  const leftover = Buffer.from(`* OK ${'x'.repeat(94)}\r\n`.repeat(160_000));
  client.user.pause();
  const running = splice(client.front, backend.front, new Uint8Array(), leftover, 60_000, new ImapResponseBoundary());
  await sleep(50);
  assert.ok(client.front.writableLength > 0, 'the client is behind');
  running.close('drained', '* BYE [UNAVAILABLE] moved\r\n');
  await sleep(100);
  const all = await resumeUntilClosed(client.user);
  assert.equal(await running.ended, 'drained');
  assert.equal(all.length, leftover.length + '* BYE [UNAVAILABLE] moved\r\n'.length, 'every queued byte and the notice arrived');
  assert.equal(all.subarray(all.length - 30).toString('latin1'), 'x\r\n* BYE [UNAVAILABLE] moved\r\n');
});

for (const [name, clientPair] of [
  ['plain', tcpPair],
  ['TLS', tlsPair],
] as const) {
  test(`a backend that sends its last bytes and closes at once (FETCH and LOGOUT pipelined): a ${name} client that is behind still gets every byte`, async () => {
    const client = await clientPair();
    const backend = await tcpPair();
    const running = splice(client.front, backend.front, new Uint8Array(), new Uint8Array(), 60_000);
    client.user.pause();
    // Far more than the loopback buffers hold (they took about 4 MB here), so that part of it
    // waits while the backend's close arrives; the last line is the one a client needs most.
    const data = Buffer.concat([randomBytes(16 * 1024 * 1024 + 15_000), Buffer.from('\r\n* BYE Logging out\r\na3 OK Logout completed\r\n')]);
    backend.user.end(data);
    await sleep(300);
    assert.ok(running.bytesToClient < data.length, `the client is behind: the backend's close is not read yet (${running.bytesToClient} of ${data.length} bytes relayed)`);
    const all = await resumeUntilClosed(client.user);
    assert.equal(await running.ended, 'backend-closed');
    assert.equal(all.length, data.length, 'every byte the backend sent before closing reached the client');
    assert.equal(sha(all), sha(data));
  });
}

for (const [direction, clientKind, backendKind] of [
  ['down', 'plain', 'plain'],
  ['down', 'TLS', 'plain'],
  ['down', 'plain', 'TLS'],
  ['up', 'plain', 'plain'],
  ['up', 'TLS', 'plain'],
  ['up', 'plain', 'TLS'],
] as const) {
  const [writerName, readerName] = direction === 'down' ? ['backend', `${clientKind} client`] : ['client', `${backendKind} backend`];
  test(`a ${writerName} that writes a few KiB at a time to a ${readerName} that is behind, then its last line and its close: nothing is lost`, async () => {
    const pair = (kind: 'plain' | 'TLS'): Promise<Pair> => (kind === 'TLS' ? tlsPair() : tcpPair());
    const client = await pair(clientKind);
    const backend = await pair(backendKind);
    const running = splice(client.front, backend.front, new Uint8Array(), new Uint8Array(), 60_000);
    const [writer, reader, readerFront] = direction === 'down' ? [backend.user, client.user, client.front] : [client.user, backend.user, backend.front];
    reader.pause();
    // Writes below the mark of the socket mailfront writes to: its relay goes on reading the
    // writer while some of them wait, so the close can be read before they have left. First
    // until the reader's socket buffers are full, then a few more, each read on its own.
    const sent: Buffer[] = [];
    const write = (): void => {
      const piece = randomBytes(1024);
      sent.push(piece);
      writer.write(piece);
    };
    for (let i = 0; i < 20_000 && readerFront.writableLength === 0; i++) {
      write();
      await new Promise((resolve) => setImmediate(resolve));
    }
    assert.ok(readerFront.writableLength > 0, 'premise: mailfront holds bytes queued for the reader');
    for (let i = 0; i < 8; i++) {
      write();
      await sleep(2);
    }
    const last = Buffer.from(direction === 'down' ? '\r\n* BYE Autologout; idle for too long\r\n' : 'a9 LOGOUT\r\n');
    sent.push(last);
    writer.end(last);
    await sleep(300);
    const all = await resumeUntilClosed(reader);
    assert.equal(await running.ended, direction === 'down' ? 'backend-closed' : 'client-closed');
    const want = Buffer.concat(sent);
    assert.equal(all.length, want.length, 'every byte written before the close arrived');
    assert.equal(sha(all), sha(want));
  });
}

/**
 * How the client's end of a session closed by the splice reads: 'end' (a FIN, after every byte
 * sent to it) or the error's code (ECONNRESET: a reset, and whatever it had not read is lost).
 */
function endOf(socket: Socket): Promise<string> {
  return new Promise((resolve) => {
    socket.once('end', () => resolve('end'));
    socket.once('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message));
  });
}

for (const [name, notice] of [
  ['POP3 (no notice)', null],
  ['IMAP (a notice)', '* BYE [UNAVAILABLE] moved\r\n'],
] as const) {
  test(`a session drained with the client's bytes unread (${name}): the client reads a FIN, not a reset`, async () => {
    // As mailfront accepts clients: half-open allowed.
    const client = await tcpPair(true);
    const backend = await tcpPair();
    // The backend reads nothing: the upload fills its buffers, and then the splice stops reading
    // the client, whose next bytes wait unread in mailfront's socket, as a command on its way does
    // when the drain comes.
    backend.user.pause();
    const running = splice(client.front, backend.front, new Uint8Array(), new Uint8Array(), 60_000, notice !== null ? new ImapResponseBoundary() : null);
    const received: Buffer[] = [];
    client.user.on('data', (chunk: Buffer) => received.push(chunk));
    const ended = endOf(client.user);
    client.user.write(Buffer.alloc(48 * 1024 * 1024, 0x61));
    await sleep(300);
    assert.ok(client.user.writableLength > 0, 'the client is held back: bytes wait unread');
    running.close('drained', notice);
    assert.equal(await Promise.race([ended, sleep(3_000).then(() => 'nothing within 3 s')]), 'end');
    assert.equal(Buffer.concat(received).toString('latin1'), notice ?? '');
    assert.equal(await endedWithin(running), 'drained');
    client.user.destroy();
  });
}
