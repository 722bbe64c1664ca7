// Self-test of the harness's free ports: a port that another socket takes between freePort() and
// the daemon's bind (here, as a connection's local port, which connect() draws from the range that
// port 0 does) makes the daemon start again on fresh ports, whether it exits (Redis, slapd,
// HAProxy, Dovecot) or runs on without the port (Cyrus master).
import assert from 'node:assert/strict';
import { createServer, connect } from 'node:net';
import type { AddressInfo, Server, Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { handOutNext, portHeld, startCyrus, startDovecot, startHaproxy, startRedis, startSlapd } from './servers/index.js';

/** Accepts connections; the other end of the connections that hold ports. */
let server: Server;
const held: Socket[] = [];

before(async () => {
  server = createServer((socket) => socket.on('error', () => undefined));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
});

after(async () => {
  for (const socket of held) socket.destroy();
  await new Promise((resolve) => server.close(resolve));
});

/** A port held as the local port of a connection of ours, which freePort() hands out next. */
async function takenPort(): Promise<number> {
  const socket = connect({ host: '127.0.0.1', port: (server.address() as AddressInfo).port });
  socket.on('error', () => undefined);
  held.push(socket);
  await new Promise((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  const port = socket.localPort!;
  assert.ok(await portHeld(port), `port ${port} is held`);
  handOutNext(port);
  return port;
}

/** Whether 127.0.0.1:`port` accepts a connection. */
function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port });
    socket.once('connect', () => (socket.destroy(), resolve(true)));
    socket.once('error', () => resolve(false));
  });
}

describe('a port taken before the daemon bound it', () => {
  it('Redis starts again on another port', async () => {
    const taken = await takenPort();
    const redis = await startRedis();
    try {
      assert.notEqual(redis.port, taken);
      assert.ok(await accepts(redis.port));
    } finally {
      await redis.stop();
    }
  });

  it('slapd starts again on another port (it exits, and says nothing why at -d 0)', async () => {
    const taken = await takenPort();
    const slapd = await startSlapd({ users: [] });
    try {
      assert.notEqual(slapd.port, taken);
      assert.ok(await accepts(slapd.port));
    } finally {
      await slapd.stop();
    }
  });

  it('HAProxy starts again on other ports', async () => {
    const taken = await takenPort();
    const lb = await startHaproxy({ name: 'taken', frontends: [{ name: 'front', backend: 'back' }], backends: [{ name: 'back', servers: [{ name: 's1', port: 1 }] }] });
    try {
      assert.notEqual(lb.port('front'), taken);
      assert.ok(await accepts(lb.port('front')));
    } finally {
      await lb.stop();
    }
  });

  it('Dovecot starts again on other ports', async () => {
    const taken = await takenPort();
    const dovecot = await startDovecot({ name: 'taken', users: [] });
    try {
      assert.notEqual(dovecot.imapPort, taken);
      assert.ok(await accepts(dovecot.imapPort));
      assert.ok(await accepts(dovecot.pop3Port));
    } finally {
      await dovecot.stop();
    }
  });

  it('Cyrus starts again on other ports, within seconds (its master runs on without the port)', async () => {
    const taken = await takenPort();
    const started = Date.now();
    const cyrus = await startCyrus({ users: [], proxyAdmin: { name: 'proxyadmin', password: 'proxy-pw-unused' } });
    try {
      assert.ok(Date.now() - started < 15_000, `started in ${Date.now() - started} ms (waitForPort's deadline is 20 s)`);
      assert.notEqual(cyrus.imapPort, taken);
      assert.ok(await accepts(cyrus.imapPort));
      assert.ok(await accepts(cyrus.pop3Port));
    } finally {
      await cyrus.stop();
    }
  });
});
