/**
 * Client connections of a real front, IMAP and POP3, have keepalive: the kernel runs its timer on
 * each, with its first probe within 60 s. Set on the listening socket and copied by Linux to what
 * it accepts, or on each of a listener's first connections (createClientServer in
 * src/server/listeners.ts; which connections get no call of their own is
 * test/unit/client-server-options.test.ts's).
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { connect } from 'node:net';
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

test('accepted client connections have keepalive, its first probe due within 60 s', { skip: process.platform !== 'linux' }, async () => {
  const ports = [front.imapTrustedPort, front.pop3TrustedPort];
  const sockets: Socket[] = [];
  for (let i = 0; i < 3; i++) for (const port of ports) sockets.push(await greeted(port));

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
