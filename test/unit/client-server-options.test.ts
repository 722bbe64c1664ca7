/**
 * createClientServer (src/server/listeners.ts): client connections get TCP_NODELAY and keepalive
 * from the listening socket on Linux, and set on each only for the first connections a listener
 * accepts: those may have completed their handshake before the listener had the options, and wait
 * in the accept queue (backlog + 1 at most, first in, first out) without them. node accepts one
 * connection per loop turn, so "the first turn's" was not enough: a listener started while 20
 * clients connected left 19 of them without TCP_NODELAY and without keepalive, noticed gone only by
 * the idle timeout (the review's case).
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { LISTEN_BACKLOG, createClientServer } from '../../src/server/listeners.js';
import { assertKeepaliveTimer } from '../integration/tcp-timers.js';

const linux = process.platform === 'linux';

/** A setNoDelay or setKeepAlive call, and the handle it was made on. */
interface OptionCall {
  readonly name: 'setNoDelay' | 'setKeepAlive';
  readonly handle: unknown;
}

/** The calls made on accepted sockets: not on `server`'s listening handle. */
function onAccepted(calls: readonly OptionCall[], server: Server): string[] {
  const listening = (server as unknown as { _handle: unknown })._handle;
  return calls.filter((c) => c.handle !== listening).map((c) => c.name);
}

/** Records setNoDelay and setKeepAlive on every TCP handle of this process (they share node's TCP prototype) while `body` runs. */
async function countingOptionCalls<T>(body: (calls: OptionCall[]) => Promise<T>): Promise<T> {
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const tcp = Object.getPrototypeOf((probe as unknown as { _handle: object })._handle) as Record<'setNoDelay' | 'setKeepAlive', (...args: unknown[]) => number>;
  probe.close();
  const calls: OptionCall[] = [];
  const original = { setNoDelay: tcp.setNoDelay, setKeepAlive: tcp.setKeepAlive };
  for (const name of ['setNoDelay', 'setKeepAlive'] as const) {
    tcp[name] = function (this: unknown, ...args: unknown[]): number {
      calls.push({ name, handle: this });
      return original[name].apply(this, args);
    };
  }
  try {
    return await body(calls);
  } finally {
    Object.assign(tcp, original);
  }
}

/** Asserts that the kernel runs the keepalive timer of each accepted socket, its first probe due within 60 s. */
async function assertKeepalive(accepted: readonly Socket[]): Promise<void> {
  for (const socket of accepted) await assertKeepaliveTimer(socket.localPort!, socket.remotePort!);
}

async function until(what: string, done: () => boolean, ms = 10_000): Promise<void> {
  for (const end = Date.now() + ms; !done(); await sleep(10)) if (Date.now() > end) throw new Error(`${what}: not within ${ms} ms`);
}

function close(server: Server, accepted: readonly Socket[]): Promise<void> {
  for (const socket of accepted) socket.destroy();
  return new Promise((resolve) => server.close(() => resolve()));
}

test('connections queued while the listener started get the options each, in whatever turn they are accepted', { skip: !linux, timeout: 60_000 }, async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mailfront-client-server-'));
  const ready = join(dir, 'connected');
  const accepted: Socket[] = [];
  const server = createClientServer((raw) => accepted.push(raw));
  // Before createClientServer's own 'listening' listener sets the listening socket's options: the
  // loop is held while another process completes 20 handshakes against the bare listener.
  let client: ReturnType<typeof spawn> | undefined;
  server.prependOnceListener('listening', () => {
    const { port } = server.address() as { port: number };
    const script = `const net = require('node:net'); const fs = require('node:fs'); let n = 0; const all = [];
      for (let i = 0; i < 20; i++) { const s = net.connect(${port}, '127.0.0.1', () => { if (++n === 20) fs.writeFileSync(${JSON.stringify(ready)}, ''); }); s.on('error', () => {}); all.push(s); }
      setTimeout(() => process.exit(0), 20000);`;
    client = spawn(process.execPath, ['-e', script], { stdio: 'ignore' });
    const wait = new Int32Array(new SharedArrayBuffer(4));
    for (const end = Date.now() + 10_000; !existsSync(ready) && Date.now() < end; ) Atomics.wait(wait, 0, 0, 10);
    assert.ok(existsSync(ready), 'the 20 connections completed their handshakes while the loop was held');
  });
  try {
    await countingOptionCalls(async (calls) => {
      await new Promise<void>((resolve) => server.listen({ host: '127.0.0.1', port: 0, backlog: LISTEN_BACKLOG }, resolve));
      await until('20 connections accepted', () => accepted.length === 20);
      const names = onAccepted(calls, server);
      assert.equal(names.filter((c) => c === 'setNoDelay').length, 20, 'TCP_NODELAY set on each queued connection');
      assert.equal(names.filter((c) => c === 'setKeepAlive').length, 20, 'keepalive set on each queued connection');
      assert.equal(calls.length, 42, 'and once each on the listening socket');
    });
    await assertKeepalive(accepted);
  } finally {
    client?.kill();
    await close(server, accepted);
    rmSync(dir, { recursive: true, force: true });
  }
});

test('past its first connections, a listener sets no option on what it accepts, and the kernel gives them keepalive', { skip: !linux, timeout: 60_000 }, async () => {
  const accepted: Socket[] = [];
  const server = createClientServer((raw) => accepted.push(raw), 2);
  await new Promise<void>((resolve) => server.listen({ host: '127.0.0.1', port: 0, backlog: LISTEN_BACKLOG }, resolve));
  const { port } = server.address() as { port: number };
  const clients: Socket[] = [];
  try {
    await countingOptionCalls(async (calls) => {
      for (let i = 0; i < 5; i++) {
        clients.push(await new Promise<Socket>((resolve, reject) => {
          const socket = connect(port, '127.0.0.1', () => resolve(socket));
          socket.once('error', reject);
        }));
        await until(`connection ${i + 1} accepted`, () => accepted.length === i + 1);
      }
      assert.deepEqual(onAccepted(calls, server), ['setNoDelay', 'setKeepAlive', 'setNoDelay', 'setKeepAlive'], 'options set on the first two only');
    });
    await assertKeepalive(accepted);
  } finally {
    for (const socket of clients) socket.destroy();
    await close(server, accepted);
  }
});
