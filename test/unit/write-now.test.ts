// writeNow over real loopback sockets: what the kernel does not take at once, what is queued
// before, TLS, a string with multi-byte characters and a broken connection must all arrive (or
// fail) exactly as through socket.write().
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import type { Socket } from 'node:net';
import { test } from 'node:test';
import { plainDescriptor, writeNow } from '../../src/net/write-now.js';
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
  // Nothing was queued on the stream: the kernel took it all.
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
