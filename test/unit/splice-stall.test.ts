// The splice's stall check: a direction held back by backpressure with nothing moving either way
// is ended as 'stalled' by the idle sweep (its source is not read meanwhile, so that source's
// close is never seen); a peer that reads, however slowly, is never cut. The idle timeout here is
// short (the stall time is the idle timeout when that is shorter than SPLICE_STALL_TIMEOUT_MS).
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { splice, type Splice } from '../../src/proxy/splice.js';
import { tcpPair, tlsPair } from './socket-pairs.js';

const IDLE_MS = 600;

/** Writes `total` bytes to `socket` as fast as it takes them, until it stops taking them (or `total` are out). */
function flood(socket: Socket, total: number): void {
  const piece = Buffer.alloc(256 * 1024, 0x79);
  let sent = 0;
  const pump = (): void => {
    while (sent < total && !socket.destroyed) {
      sent += piece.length;
      if (!socket.write(piece)) {
        socket.once('drain', pump);
        return;
      }
    }
  };
  socket.on('error', () => undefined);
  pump();
}

/** The splice's end, or 'not ended' after `ms` (the timer keeps the process up meanwhile). */
function endedWithin(running: Splice, ms: number): Promise<string> {
  return Promise.race([running.ended, sleep(ms).then(() => 'not ended')]);
}

for (const [name, clientPair] of [
  ['plain', tcpPair],
  ['TLS', tlsPair],
] as const) {
  test(`a ${name} client that uploaded until the backend stopped reading, then hung up: the session ends as stalled`, async () => {
    const client = await clientPair();
    const backend = await tcpPair();
    client.user.on('error', () => undefined);
    backend.user.on('error', () => undefined);
    const running = splice(client.front, backend.front, new Uint8Array(), new Uint8Array(), IDLE_MS);
    backend.user.pause();
    // An APPEND far larger than the loopback buffers: the splice stops reading the client.
    flood(client.user, 256 * 1024 * 1024);
    await sleep(300);
    client.user.destroy();
    // Unread, the client's close is not seen: only the sweep can end the session.
    assert.equal(await endedWithin(running, 10 * IDLE_MS), 'stalled');
    assert.ok(client.front.destroyed && backend.front.destroyed, 'both connections are closed');
    backend.user.destroy();
  });
}

test('a backend that sent more than a client that stopped reading takes, then closed: the session ends as stalled', async () => {
  const client = await tcpPair();
  const backend = await tcpPair();
  client.user.on('error', () => undefined);
  backend.user.on('error', () => undefined);
  const running = splice(client.front, backend.front, new Uint8Array(), new Uint8Array(), IDLE_MS);
  client.user.pause();
  flood(backend.user, 256 * 1024 * 1024);
  await sleep(300);
  backend.user.destroy();
  assert.equal(await endedWithin(running, 10 * IDLE_MS), 'stalled');
  client.user.destroy();
});

test('a direction held back is no stall while bytes move the other way', async () => {
  const client = await tcpPair();
  const backend = await tcpPair();
  client.user.on('error', () => undefined);
  backend.user.on('error', () => undefined);
  const running = splice(client.front, backend.front, new Uint8Array(), new Uint8Array(), IDLE_MS);
  backend.user.pause();
  flood(client.user, 256 * 1024 * 1024);
  client.user.on('data', () => undefined);
  // The backend still answers (untagged responses), though it reads nothing.
  for (let i = 0; i < 12; i++) {
    await sleep(150);
    backend.user.write('* OK still here\r\n');
  }
  assert.equal(await endedWithin(running, 0), 'not ended', `open after 1.8 s, past its ${IDLE_MS} ms stall time`);
  assert.equal(await endedWithin(running, 10 * IDLE_MS), 'stalled', 'stalled once the backend is quiet too');
  client.user.destroy();
  backend.user.destroy();
});

for (const [name, clientPair] of [
  ['plain', tcpPair],
  ['TLS', tlsPair],
] as const) {
  test(`a ${name} client that reads slowly is never cut, though one queued write takes it many stall times`, async () => {
    const client = await clientPair();
    const backend = await tcpPair();
    // 32 MB after the login reply stand in for a client so slow that what is queued for it takes
    // longer than the stall time to go out: the splice pauses the backend behind them.
    const leftover = Buffer.alloc(32 * 1024 * 1024, 0x78);
    client.user.pause();
    const running = splice(client.front, backend.front, new Uint8Array(), leftover, IDLE_MS);
    backend.user.write('* 1 EXISTS\r\n');
    const total = leftover.length + '* 1 EXISTS\r\n'.length;
    // It reads 1 MiB every 200 ms (about 5 MB/s) for 12 MiB, the queue moving all the while
    // (whatever it had left then sits in the loopback buffers, which the splice cannot see: the
    // rest is read at once).
    let got = 0;
    let burst = 0;
    let slow = true;
    const all = new Promise<void>((resolve) => {
      client.user.on('data', (chunk: Buffer) => {
        got += chunk.length;
        burst += chunk.length;
        if (slow && burst >= 1024 * 1024) client.user.pause();
        if (got === total) resolve();
      });
    });
    const started = Date.now();
    while (got < 12 * 1024 * 1024 && Date.now() - started < 30_000) {
      assert.equal(await endedWithin(running, 0), 'not ended', `cut after ${got} bytes, ${Date.now() - started} ms`);
      burst = 0;
      client.user.resume();
      await sleep(200);
    }
    const slowFor = Date.now() - started;
    assert.ok(slowFor > 3 * IDLE_MS, `the slow read lasted ${slowFor} ms, more than three stall times`);
    assert.equal(await endedWithin(running, 0), 'not ended', 'open after the slow read');
    slow = false;
    client.user.resume();
    await all;
    assert.equal(got, total, 'every byte arrived');
    running.close('kicked', null);
    assert.equal(await running.ended, 'kicked');
  });
}
