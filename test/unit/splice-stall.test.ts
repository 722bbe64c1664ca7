// The splice's stall check: an upload held back by a backend that does not read, with nothing
// queued for the client and nothing moving either way, is ended as 'stalled' by the idle sweep
// (the client's socket is not read meanwhile, so the client's close is never seen). Downloads
// are never checked: a client that reads, however slowly, is never cut as stalled, and a
// download held back by a client that reads nothing is left to the idle timeout. The stall time
// is scaled down here, the idle timeout not (at real defaults, 5 min and 31 min).
import assert from 'node:assert/strict';
import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import { describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { splice, type Splice } from '../../src/proxy/splice.js';
import { tcpPair, tlsPair } from './socket-pairs.js';
import type { Pair } from './socket-pairs.js';

const STALL_MS = 500;
const IDLE_MS = 60_000;

/** A splice with the stall time scaled down (and the idle timeout `idleMs`). */
function stallSplice(client: Socket, backend: Socket, leftover = new Uint8Array(), idleMs = IDLE_MS, stallMs = STALL_MS): Splice {
  return splice(client, backend, new Uint8Array(), leftover, idleMs, null, null, null, stallMs);
}

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

/** A client connection (made by `clientPair`) and a backend one, spliced with the test's stall time; errors on the far ends ignored. */
async function stallSpliced(clientPair: () => Promise<Pair>, stallMs = STALL_MS): Promise<{ client: Pair; backend: Pair; running: Splice }> {
  const client = await clientPair();
  const backend = await tcpPair();
  client.user.on('error', () => undefined);
  backend.user.on('error', () => undefined);
  return { client, backend, running: stallSplice(client.front, backend.front, undefined, IDLE_MS, stallMs) };
}

/** The splice's end, or 'not ended' after `ms` (the timer keeps the process up meanwhile). */
function endedWithin(running: Splice, ms: number): Promise<string> {
  return Promise.race([running.ended, sleep(ms).then(() => 'not ended')]);
}

/**
 * Waits until `done`, for at most 10 s, failing with `notYet`: how long the loopback buffers take
 * to fill depends on how busy the machine is (TLS: its encryption), not on a fixed time.
 */
async function filled(done: () => boolean, notYet: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!done()) {
    assert.ok(Date.now() < deadline, notYet);
    await sleep(20);
  }
}

/**
 * Waits until `front` is no longer read from the kernel: the splice has paused it (the other side
 * takes no more), and a socket read through a stream (TLS) has filled its buffer, so that node
 * stopped reading it too. Until then a close of its peer's would be read.
 */
function readingStopped(front: Socket): Promise<void> {
  const stopped = (): boolean => front.isPaused() && !(front instanceof TLSSocket && front.readableLength < front.readableHighWaterMark);
  return filled(stopped, 'the splice still reads a side after 10 s of bytes the other side does not take');
}

/**
 * Waits until the splice's writes towards `front`'s peer are held back: the kernel takes no more,
 * so the peer's receive buffer is full and unread, and the peer's close resets the connection (a
 * FIN would be read as a close, not a failure).
 */
function writeQueued(front: Socket): Promise<void> {
  return filled(() => front.writableLength > 0, 'nothing queued towards a peer that reads nothing after 10 s of a download');
}

// The cases run at once: each splices socket pairs of its own, and each waits on the splice's
// clocks (a few stall times, the idle timeout), so together they take about the longest.
describe('the splice\'s stall check', { concurrency: true }, () => {
  for (const [name, clientPair] of [
    ['plain', tcpPair],
    ['TLS', tlsPair],
  ] as const) {
    test(`a ${name} client that uploaded until the backend stopped reading, then hung up: the session ends as stalled`, async () => {
      const { client, backend, running } = await stallSpliced(clientPair);
      backend.user.pause();
      // An APPEND far larger than the loopback buffers: the splice stops reading the client.
      flood(client.user, 256 * 1024 * 1024);
      await readingStopped(client.front);
      client.user.destroy();
      // Unread, the client's close is not seen: only the sweep can end the session.
      assert.equal(await endedWithin(running, 10 * STALL_MS), 'stalled');
      assert.ok(client.front.destroyed && backend.front.destroyed, 'both connections are closed');
      backend.user.destroy();
    });
  }

  test('an upload held back is no stall while bytes move the other way', async () => {
    // A stall time of 2 s, not 500 ms: the answers below go out every 150 ms on this process's
    // clock, which the flood keeps busy, and two suites at once on two cores once made a gap of
    // more than 500 ms, a stall by any measure.
    const stallMs = 4 * STALL_MS;
    const { client, backend, running } = await stallSpliced(tcpPair, stallMs);
    backend.user.pause();
    flood(client.user, 256 * 1024 * 1024);
    client.user.on('data', () => undefined);
    // The backend still answers (untagged responses), though it reads nothing.
    const until = Date.now() + 1.5 * stallMs;
    while (Date.now() < until) {
      await sleep(150);
      backend.user.write('* OK still here\r\n');
    }
    assert.equal(await endedWithin(running, 0), 'not ended', `open after ${1.5 * stallMs} ms, past its ${stallMs} ms stall time`);
    assert.equal(await endedWithin(running, 10 * stallMs), 'stalled', 'stalled once the backend is quiet too');
    client.user.destroy();
    backend.user.destroy();
  });

  // The review's case: the backend sends without end (a large FETCH) and the client reads it at a
  // steady 100 KiB/s. What mailfront queues for the client moves only when libuv writes again, once
  // the kernel has taken about a third of the socket's send buffer (which grows to tcp_wmem's
  // maximum, 4 MiB by default: some 13 s at this rate); the check before this one took that for a
  // stall and cut the client after one stall time (at real defaults: 3,000 bytes a second, cut
  // after 5 min). With its upload held back too (the backend reads nothing while it writes), the
  // client is still no stall.
  for (const [name, clientPair, uploading] of [
    ['plain', tcpPair, false],
    ['TLS', tlsPair, false],
    ['plain', tcpPair, true],
  ] as const) {
    test(`a ${name} client reading a download steadily at 100 KiB/s${uploading ? ', its upload held back by the backend,' : ''} is never cut over eight stall times`, async () => {
      const { client, backend, running } = await stallSpliced(clientPair);
      flood(backend.user, 2 * 1024 * 1024 * 1024);
      if (uploading) {
        backend.user.pause();
        flood(client.user, 256 * 1024 * 1024);
      }
      client.user.pause();
      let got = 0;
      // 100 KiB/s by the clock, not by the count of ticks: on a busy machine (another test file
      // beside this one) the ticks come late, and a tick that reads only 2 KiB fell behind the rate.
      const reading = performance.now();
      const tick = setInterval(() => {
        const owed = Math.floor(((performance.now() - reading) / 1_000) * 100 * 1024) - got;
        if (owed <= 0) return;
        const chunk = client.user.read(Math.min(owed, client.user.readableLength)) as Buffer | null;
        if (chunk !== null) got += chunk.length;
      }, 20);
      try {
        assert.equal(await endedWithin(running, 8 * STALL_MS), 'not ended', `cut after ${got} bytes read`);
      } finally {
        clearInterval(tick);
      }
      assert.ok(got > 200 * 1024, `the client read ${got} bytes meanwhile`);
      assert.ok(running.bytesToClient < 1024 * 1024 * 1024, 'the backend was held back');
      running.close('kicked', null);
      assert.equal(await running.ended, 'kicked');
      client.user.destroy();
      backend.user.destroy();
    });
  }

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
      const running = stallSplice(client.front, backend.front, leftover);
      backend.user.write('* 1 EXISTS\r\n');
      const total = leftover.length + '* 1 EXISTS\r\n'.length;
      // It reads 1 MiB every 200 ms (about 5 MB/s) for 12 MiB (whatever it had left then sits in
      // the loopback buffers: the rest is read at once).
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
      assert.ok(slowFor > 3 * STALL_MS, `the slow read lasted ${slowFor} ms, more than three stall times`);
      assert.equal(await endedWithin(running, 0), 'not ended', 'open after the slow read');
      slow = false;
      client.user.resume();
      await all;
      assert.equal(got, total, 'every byte arrived');
      running.close('kicked', null);
      assert.equal(await running.ended, 'kicked');
    });
  }

  test('a download held back by a client that reads nothing is no stall: the idle timeout ends it', async () => {
    const idleMs = 8 * STALL_MS;
    const client = await tcpPair();
    const backend = await tcpPair();
    client.user.on('error', () => undefined);
    backend.user.on('error', () => undefined);
    const running = stallSplice(client.front, backend.front, new Uint8Array(), idleMs);
    client.user.pause();
    flood(backend.user, 256 * 1024 * 1024);
    await writeQueued(client.front);
    await readingStopped(backend.front);
    // Unread behind the client, the backend's close is not seen either (as before the stall check).
    backend.user.destroy();
    assert.equal(await endedWithin(running, 4 * STALL_MS), 'not ended', 'open past four stall times');
    assert.equal(await endedWithin(running, idleMs), 'idle-timeout');
    client.user.destroy();
  });

  for (const [name, clientPair] of [
    ['plain', tcpPair],
    ['TLS', tlsPair],
  ] as const) {
    test(`a ${name} client held back both ways hangs up: the write under way towards it fails, and the session ends at once`, async () => {
      const { client, backend, running } = await stallSpliced(clientPair);
      // The backend answers without end and reads nothing; the client reads nothing and uploads.
      client.user.pause();
      backend.user.pause();
      flood(backend.user, 256 * 1024 * 1024);
      flood(client.user, 256 * 1024 * 1024);
      await writeQueued(client.front);
      await readingStopped(client.front);
      client.user.destroy();
      // Within one stall time, so not the stall check: the hang-up is seen without reading the client.
      assert.equal(await endedWithin(running, STALL_MS), 'client-error');
      backend.user.destroy();
    });
  }
});
