// writeNow and readDirect over real loopback sockets. writeNow: what the kernel does not take at
// once, what is queued before, TLS, a string with multi-byte characters and a broken connection
// must all arrive (or fail) exactly as through socket.write(). readDirect: every byte arrives in
// order through the shared buffer, pausing works, a second call only swaps the callback, and it
// declines (changing nothing) for TLS and for bytes node holds already.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import type { Socket } from 'node:net';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { plainDescriptor, readDirect, writeNow } from '../../src/net/direct-io.js';
import { tcpPair, tlsPair } from './socket-pairs.js';

/** Everything `socket` receives until it ends. */
async function received(socket: Socket): Promise<Buffer> {
  const chunks: Buffer[] = [];
  socket.on('data', (chunk: Buffer) => chunks.push(chunk));
  await once(socket, 'end');
  return Buffer.concat(chunks);
}

/** Chunk `i` of the bulk test: 64 KiB of bytes that say which chunk they are and where. */
function chunk(i: number): Buffer {
  const data = Buffer.alloc(64 * 1024);
  for (let at = 0; at < data.length; at += 4) data.writeUInt32BE((i << 16) | (at >> 2), at);
  return data;
}

test('a plain socket: a string with multi-byte characters goes to the descriptor, its byte length is returned', async () => {
  const { front, user } = await tcpPair();
  assert.ok(plainDescriptor(front) >= 0);
  const text = '* OK [CAPABILITY IMAP4rev1] Grüße ✉ ready\r\n';
  assert.equal(writeNow(front, text), Buffer.byteLength(text));
  // It went to the descriptor, not through the stream: node counts only what the stream wrote
  // (a socket.write() of a short line would also leave writableLength at 0 by now).
  assert.equal(front.bytesWritten, 0);
  assert.equal(front.writableLength, 0);
  const got = received(user);
  front.end();
  assert.equal((await got).toString(), text);
  user.destroy();
});

test('a reader that does not read: what the kernel leaves is queued behind, in order, and nothing is lost', async () => {
  const { front, user } = await tcpPair();
  user.pause();
  const hash = createHash('sha256');
  let total = 0;
  let queuedAt = -1;
  for (let i = 0; i < 256; i++) {
    const data = chunk(i);
    hash.update(data);
    total += writeNow(front, data);
    if (queuedAt < 0 && front.writableLength > 0) queuedAt = i;
  }
  // 16 MiB against a reader that took nothing: the kernel filled up and the rest was queued.
  assert.ok(queuedAt >= 0 && queuedAt < 255, `queued from chunk ${queuedAt}`);
  assert.equal(total, 256 * 64 * 1024);
  const got = received(user);
  user.resume();
  front.end();
  const bytes = await got;
  assert.equal(bytes.length, total);
  assert.equal(createHash('sha256').update(bytes).digest('hex'), hash.digest('hex'));
  user.destroy();
});

test('bytes already queued on the stream go first: writeNow queues behind them', async () => {
  const { front, user } = await tcpPair();
  const got = received(user);
  // Corked: the first line waits on the stream while the kernel buffer is empty.
  front.cork();
  front.write('* first\r\n');
  writeNow(front, '* second\r\n');
  front.uncork();
  writeNow(front, '* third\r\n');
  front.end();
  assert.equal((await got).toString(), '* first\r\n* second\r\n* third\r\n');
  user.destroy();
});

test('TLS: no descriptor, the bytes go through the TLS stream', async () => {
  const { front, user } = await tlsPair();
  assert.equal(plainDescriptor(front), -1);
  const got = received(user);
  assert.equal(writeNow(front, 'a OK LOGIN completed\r\n'), 22);
  assert.equal(writeNow(front, Buffer.from('* BYE\r\n')), 7);
  front.end();
  assert.equal((await got).toString(), 'a OK LOGIN completed\r\n* BYE\r\n');
  user.destroy();
});

test('a connection the peer reset: writeNow does not throw, the socket reports the error and closes', async () => {
  const { front, user } = await tcpPair();
  const errors: NodeJS.ErrnoException[] = [];
  front.on('error', (error) => errors.push(error));
  // Not once(): it rejects on the 'error' this test expects.
  const closed = new Promise((resolve) => front.on('close', resolve));
  user.resetAndDestroy();
  // No turn of the event loop in between: the writes, not a read, meet the reset.
  let wrote = 0;
  for (let i = 0; i < 3; i++) wrote += writeNow(front, '* BYE\r\n');
  assert.equal(wrote, 21);
  await closed;
  assert.equal(errors.length, 1);
  assert.match(String(errors[0]!.code), /^(ECONNRESET|EPIPE)$/);
  assert.match(errors[0]!.message, /write|read/);
});

/** Collects what readDirect() hands over, copied (the shared buffer is reused), until `length` bytes. */
function collectDirect(length: number): { onRead: (length: number, buffer: Buffer) => boolean; done: Promise<Buffer> } {
  const chunks: Buffer[] = [];
  let got = 0;
  let finish: (bytes: Buffer) => void = () => {};
  const done = new Promise<Buffer>((resolve) => (finish = resolve));
  const onRead = (size: number, buffer: Buffer): boolean => {
    chunks.push(Buffer.from(buffer.subarray(0, size)));
    got += size;
    if (got >= length) finish(Buffer.concat(chunks));
    return true;
  };
  return { onRead, done };
}

test('readDirect: 16 MiB arrive in order through the shared buffer, no data event is emitted', async () => {
  const { front, user } = await tcpPair();
  const data = Buffer.concat(Array.from({ length: 256 }, (_, i) => chunk(i)));
  const { onRead, done } = collectDirect(data.length);
  let dataEvents = 0;
  front.on('data', () => dataEvents++);
  assert.equal(readDirect(front, onRead), true);
  user.end(data);
  const bytes = await done;
  assert.equal(bytes.length, data.length);
  assert.ok(bytes.equals(data));
  assert.equal(dataEvents, 0);
  front.destroy();
});

test('readDirect: a callback returning false stops reading until resume(); a second call swaps the callback', async () => {
  const { front, user } = await tcpPair();
  const first: string[] = [];
  assert.equal(
    readDirect(front, (size, buffer) => {
      first.push(buffer.toString('latin1', 0, size));
      return false;
    }),
    true,
  );
  user.write('a1 NOOP\r\n');
  while (first.length === 0) await sleep(5);
  user.write('a2 NOOP\r\n');
  await sleep(100);
  // Paused: the second line waits in the kernel.
  assert.deepEqual(first, ['a1 NOOP\r\n']);
  const { onRead, done } = collectDirect(9);
  assert.equal(readDirect(front, onRead), true);
  front.resume();
  assert.equal((await done).toString(), 'a2 NOOP\r\n');
  assert.deepEqual(first, ['a1 NOOP\r\n'], 'the first callback is no longer called');
  front.destroy();
  user.destroy();
});

test('readDirect declines for TLS and for bytes node has read but not handed out; the stream then delivers everything', async () => {
  const tls = await tlsPair();
  assert.equal(readDirect(tls.front, () => true), false);
  const gotTls = received(tls.front);
  tls.user.end('a1 LOGIN\r\n');
  assert.equal((await gotTls).toString(), 'a1 LOGIN\r\n');
  tls.user.destroy();

  const { front, user } = await tcpPair();
  // One line read and held by the paused stream (as a PROXY header's remainder would be).
  front.pause();
  user.write('PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\na1 CAPABILITY\r\n');
  front.on('readable', () => {});
  while (front.readableLength === 0) await sleep(5);
  front.removeAllListeners('readable');
  front.pause();
  assert.equal(readDirect(front, () => true), false);
  const got = received(front);
  user.end('a2 NOOP\r\n');
  front.resume();
  assert.equal((await got).toString(), 'PROXY TCP4 192.0.2.1 198.51.100.2 1 2\r\na1 CAPABILITY\r\na2 NOOP\r\n');
  user.destroy();
});
