/**
 * Client connections of a real front, IMAP and POP3, have keepalive: the kernel runs its timer on
 * each, with its first probe within 60 s. Set on the listening socket and copied by Linux to what
 * it accepts, or on each of a listener's first connections (createClientServer in
 * src/server/listeners.ts; which connections get no call of their own is
 * test/unit/client-server-options.test.ts's).
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { connect } from 'node:net';
import type { Socket } from 'node:net';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { refusingPort, startSlapd } from './servers/index.js';
import type { Slapd } from './servers/index.js';
import { startFront } from './front.js';
import { assertKeepaliveTimer } from './tcp-timers.js';
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

test('accepted client connections have keepalive, its first probe due within 60 s', { skip: process.platform !== 'linux' }, async () => {
  const ports = [front.imapTrustedPort, front.pop3TrustedPort];
  const sockets: Socket[] = [];
  for (let i = 0; i < 3; i++) for (const port of ports) sockets.push(await greeted(port));

  for (const socket of sockets) await assertKeepaliveTimer(socket.remotePort!, socket.localPort!);
  for (const socket of sockets) socket.destroy();
});
