/**
 * The splice end to end against a scripted IMAP backend that logs in and then stops reading: a
 * client that uploads until it is held back and then hangs up is not seen to go (its socket is
 * not read while the backend does not read), so the session ends as 'stalled' after the stall
 * time (the idle timeout here, which is shorter than SPLICE_STALL_TIMEOUT_MS), its slot in
 * max_sessions_per_user is free again, and session.finished says why.
 */
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer } from 'node:net';
import type { AddressInfo, Server, Socket } from 'node:net';
import { after, before, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { LineClient, startSlapd } from './servers/index.js';
import type { Slapd } from './servers/index.js';
import { ADMIN_TOKEN, registerPasswords, startFront, waitForLog } from './front.js';
import type { Front } from './front.js';

const PASSWORD = 'Stall-pw-3c3c';
registerPasswords(PASSWORD);

let slapd: Slapd;
let stuck: Server;
let front: Front;
const backendSockets: Socket[] = [];

before(async () => {
  slapd = await startSlapd({ users: [{ uid: 'stan', password: PASSWORD, store: 'stuck' }] });
  // Answers ID and the LITERAL+ LOGIN mailfront sends, then reads nothing more.
  stuck = createServer((socket) => {
    backendSockets.push(socket);
    socket.on('error', () => undefined);
    socket.write('* OK [CAPABILITY IMAP4rev1 LITERAL+ ID AUTH=PLAIN] scripted\r\n');
    let text = '';
    const onData = (chunk: Buffer): void => {
      text += chunk.toString('latin1');
      for (const [, tag] of text.matchAll(/^(\S+) ID .*\r\n/gm)) socket.write(`${tag} OK ID completed\r\n`);
      text = text.replace(/^(\S+) ID .*\r\n/gm, '');
      const login = /^(\S+) LOGIN \{\d+\+\}\r\n[^]*\{\d+\+\}\r\n[^]*\r\n$/.exec(text);
      if (login === null) return;
      socket.off('data', onData);
      socket.write(`${login[1]} OK [CAPABILITY IMAP4rev1 LITERAL+] Logged in\r\n`);
      socket.pause();
    };
    socket.on('data', onData);
  });
  await new Promise<void>((resolve) => stuck.listen(0, '127.0.0.1', resolve));
  front = await startFront({
    slapd,
    stores: { stuck: { currentMaster: 's1', slots: { s1: { imapPort: (stuck.address() as AddressInfo).port } } } },
    session: { idle_timeout_ms: 1_000 },
    connectionLimits: { max_sessions_per_user: 1 },
  });
});

after(async () => {
  await front?.stop();
  for (const socket of backendSockets) socket.destroy();
  await new Promise((resolve) => stuck?.close(resolve));
  await slapd?.stop();
});

async function login(): Promise<LineClient> {
  const client = await LineClient.connect(front.imapTrustedPort);
  await client.readLine();
  client.send(`a LOGIN stan ${PASSWORD}`);
  const answer = await client.readLine();
  assert.match(answer, /^a OK/, answer);
  return client;
}

test('a client that uploaded until a stuck backend stopped reading, then hung up: the session ends as stalled, and the user can log in again', async () => {
  const since = front.logs.length;
  const client = await login();
  const socket = client.socket;
  socket.on('error', () => undefined);
  socket.write('a2 APPEND INBOX {268435456+}\r\n');
  // Far more than the loopback buffers hold, until nothing more is taken for half a second.
  const piece = Buffer.alloc(256 * 1024, 0x79);
  let held = false;
  for (let i = 0; i < 1024 && !held; i++) {
    if (socket.write(piece)) continue;
    held = !(await Promise.race([once(socket, 'drain').then(() => true), sleep(500).then(() => false)]));
  }
  assert.ok(held, 'the upload was held back');
  socket.destroy();
  const finished = await waitForLog(front, (l) => l['event'] === 'session.finished' && l['user'] === 'stan', 10_000, since);
  assert.equal(finished['reason'], 'stalled');
  assert.equal(finished['phase'], 'spliced');
  const { port } = front.mailfront.httpAddress()!;
  const listed = (await (await fetch(`http://127.0.0.1:${port}/api/sessions?user=stan`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).json()) as { sessions: unknown[] };
  assert.equal(listed.sessions.length, 0, 'the session is no longer listed');
  // max_sessions_per_user is 1: the stalled session no longer holds the user's only slot.
  const again = await login();
  again.socket.destroy();
});
