import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { connect, createServer, type AddressInfo } from 'node:net';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

const SCRIPT = fileURLToPath(new URL('../../bench/instant-backend.js', import.meta.url));

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

/** Connects to the script on `port`, retrying while it starts (at most 10 s). */
async function dial(port: number): Promise<import('node:net').Socket> {
  for (let i = 0; ; i++) {
    const socket = connect(port, '127.0.0.1');
    try {
      await once(socket, 'connect');
      return socket;
    } catch (error) {
      socket.destroy();
      if (i >= 100) throw error;
      await sleep(100);
    }
  }
}

for (const delay of ['0', '~15']) {
  test(`instant backend with delay ${delay}: answers in the order asked, however late each leaves`, { timeout: 30_000 }, async () => {
    const port = await freePort();
    const pop3Port = await freePort();
    const child = spawn(process.execPath, [SCRIPT, String(port), String(pop3Port), delay], { stdio: 'ignore' });
    try {
      const socket = await dial(port);
      let text = '';
      socket.on('data', (chunk: Buffer) => (text += chunk.toString('latin1')));
      const tags = Array.from({ length: 20 }, (_, i) => `t${i}`);
      // Each command in a write of its own, so each answer draws its own delay.
      for (const tag of tags) {
        socket.write(`${tag} NOOP\r\n`);
        await sleep(1);
      }
      socket.write('z LOGOUT\r\n');
      await once(socket, 'close');
      const order = [...text.matchAll(/^(t\d+|z) OK/gm)].map((m) => m[1]);
      assert.match(text, /^\* OK \[CAPABILITY /);
      assert.deepEqual(order, [...tags, 'z']);
    } finally {
      child.kill();
    }
  });
}
