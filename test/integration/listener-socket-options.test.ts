/**
 * Client connections get TCP_NODELAY and keepalive from the listening socket (Linux copies a
 * listener's options to what it accepts): mailfront sets no socket option on an accepted
 * connection once its listener is past the first turn that accepted any (createClientServer in
 * src/server/listeners.ts), and the kernel's keepalive timer runs on the connection all the same.
 * Before, node's server options set five options on each (setNoDelay and setKeepAlive on its
 * handle): five setsockopt calls of a warm login's 45.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import type { Socket } from 'node:net';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { refusingPort, startSlapd } from './servers/index.js';
import type { Slapd } from './servers/index.js';
import { startFront } from './front.js';
import type { Front } from './front.js';

let slapd: Slapd;
let front: Front;

before(async () => {
  slapd = await startSlapd({ users: [] });
  front = await startFront({ slapd, stores: { none: { currentMaster: 'n1', slots: { n1: { imapPort: await refusingPort(), pop3Port: await refusingPort() } } } } });
});

after(async () => {
  await front?.stop();
  await slapd?.stop();
});

/** Connects to `port` and waits for the greeting's first line. */
async function greeted(port: number): Promise<Socket> {
  const socket = connect({ port, host: '127.0.0.1' });
  let text = '';
  socket.on('data', (chunk: Buffer) => (text += chunk.toString('latin1')));
  await once(socket, 'connect');
  for (let i = 0; i < 200 && !text.includes('\r\n'); i++) await sleep(10);
  assert.match(text, /^(\* OK|\+OK)/, `greeting on port ${port}`);
  return socket;
}

/** The TCP timer of the connection mailfront accepted on `listenerPort` from `clientPort` (/proc/net/tcp's "tr:tm->when"). */
function timerOf(listenerPort: number, clientPort: number): string | undefined {
  const hex = (port: number): string => port.toString(16).toUpperCase().padStart(4, '0');
  const rows = ['/proc/net/tcp', '/proc/net/tcp6']
    .flatMap((file) => readFileSync(file, 'utf8').split('\n').slice(1))
    .map((line) => line.trim().split(/\s+/))
    .filter((f) => f[1]?.endsWith(`:${hex(listenerPort)}`) && f[2]?.endsWith(`:${hex(clientPort)}`));
  assert.equal(rows.length, 1, 'the accepted connection is listed');
  return rows[0]![5];
}

test('accepted client connections get no socket option of their own, and have keepalive from the listener', { skip: process.platform !== 'linux' }, async () => {
  const ports = [front.imapTrustedPort, front.pop3TrustedPort];
  // The first turn of a listener that accepts sets them on each (its connections may predate the listener's options).
  for (const port of ports) (await greeted(port)).destroy();
  await new Promise((resolve) => setImmediate(resolve));

  // Every TCP handle in this process, mailfront's included, shares node's TCP prototype.
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const tcp = Object.getPrototypeOf((probe as unknown as { _handle: object })._handle) as Record<'setNoDelay' | 'setKeepAlive', (...args: unknown[]) => number>;
  probe.close();
  const calls: string[] = [];
  const original = { setNoDelay: tcp.setNoDelay, setKeepAlive: tcp.setKeepAlive };
  for (const name of ['setNoDelay', 'setKeepAlive'] as const) {
    tcp[name] = function (this: unknown, ...args: unknown[]): number {
      calls.push(`${name}(${args.join(', ')})`);
      return original[name].apply(this, args);
    };
  }
  const sockets: Socket[] = [];
  try {
    for (let i = 0; i < 3; i++) for (const port of ports) sockets.push(await greeted(port));
  } finally {
    Object.assign(tcp, original);
  }
  assert.deepEqual(calls, [], 'socket options set on accepted connections');

  // The keepalive timer (tr 2, sk_timer) runs on each, its first probe due within 60 s: the
  // listener's TCP_KEEPIDLE. While the greeting waits for its (delayed) ACK, the retransmission timer (1) shows instead.
  for (const socket of sockets) {
    const listenerPort = socket.remotePort!;
    let field = timerOf(listenerPort, socket.localPort!);
    for (let i = 0; i < 40 && !field?.startsWith('02:'); i++) {
      await sleep(50);
      field = timerOf(listenerPort, socket.localPort!);
    }
    const [timer, when] = field!.split(':');
    assert.equal(timer, '02', `the keepalive timer runs (${field})`);
    const seconds = Number.parseInt(when!, 16) / 100;
    assert.ok(seconds > 50 && seconds <= 60, `the first probe is due in ${seconds} s`);
  }
  for (const socket of sockets) socket.destroy();
});
