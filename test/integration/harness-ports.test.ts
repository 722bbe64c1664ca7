// Self-test of the harness's free ports: a port that another socket takes between freePort() and
// the daemon's bind (here, as a connection's local port, which connect() draws from the range that
// port 0 does) makes the daemon start again on fresh ports, whether it exits (Redis, slapd,
// HAProxy, Dovecot) or runs on without the port (Cyrus master).
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, connect } from 'node:net';
import type { AddressInfo, Server, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { handOutNext, portHeld, procNetPort, procNetTcpRows, startCyrus, startDovecot, startHaproxy, startRedis, startSlapd } from './servers/index.js';

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

/**
 * What the kernel says of the sockets on local port `port` (/proc/net/tcp: state in hex, 01
 * established, 0A listening; remote address) and of the connection of ours that holds it.
 */
function holderState(port: number): { socket: string; kernel: string[] } {
  const socket = held.find((s) => s.localPort === port);
  const local = `:${procNetPort(port)}`;
  const kernel = procNetTcpRows()
    .filter((cols) => cols[1]!.endsWith(local))
    .map((cols) => `local ${cols[1]} remote ${cols[2]} state ${cols[3]} inode ${cols[9]}`);
  return { socket: socket === undefined ? 'none' : socket.destroyed ? 'destroyed' : `open (${socket.readyState})`, kernel };
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
      // Seen once in a full run, never alone: Redis listening on the port held. What to look at then.
      assert.notEqual(redis.port, taken, `the holding connection ${JSON.stringify(holderState(taken))}; redis's log:\n${redis.readLog()}`);
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

/**
 * In a network namespace whose port range is 40000 to 40007: a port refusingPort() holds, and one
 * freePort() handed out (held too, for the server it is for), then every port that listens on
 * port 0 and connect()s draw from the range, as another test file running at the same time would;
 * then a server binds the port freePort() handed out.
 */
const DRAWS = `
import { createServer, connect } from 'node:net';
const { freePort, refusingPort } = await import(process.argv[2]);
const refused = (port) => new Promise((resolve) => {
  const socket = connect({ host: '127.0.0.1', port });
  socket.once('connect', () => (socket.destroy(), resolve(false)));
  socket.once('error', (error) => resolve(error.code === 'ECONNREFUSED'));
});
const held = await refusingPort();
const free = await freePort();
const heldRefused = await refused(held);
const freeRefused = await refused(free);
const drawn = [];
const target = createServer();
await new Promise((resolve) => target.listen(5000, '127.0.0.1', resolve));
for (let i = 0; i < 8; i++) {
  const server = createServer();
  const port = await new Promise((resolve) => { server.once('error', () => resolve(null)); server.listen(0, '127.0.0.1', () => resolve(server.address().port)); });
  if (port === null) break;
  drawn.push(port);
  if (i % 2 === 1) continue;
  // Every other one let go of again, for a connection's local port.
  await new Promise((resolve) => server.close(resolve));
  const socket = connect({ host: '127.0.0.1', port: 5000 });
  const local = await new Promise((resolve) => { socket.once('connect', () => resolve(socket.localPort)); socket.once('error', () => resolve(null)); });
  if (local !== null) drawn.push(local);
}
const bound = await new Promise((resolve) => { const server = createServer(); server.once('error', (error) => resolve(error.code)); server.listen(free, '127.0.0.1', () => resolve(server.address().port === free)); });
console.log(JSON.stringify({ free, held, heldRefused, freeRefused, drawn, bound }));
process.exit(0);
`;

it('ports refusingPort() and freePort() hand out refuse connections, no listen on port 0 or connect() draws them, and a server told the port binds it (a network namespace of eight ports)', async (t) => {
  if (process.getuid?.() !== 0) return t.skip('a network namespace needs root (unshare -n)');
  const dir = await mkdtemp(join(tmpdir(), 'mf-refusing-port-'));
  try {
    const script = join(dir, 'draws.mjs');
    await writeFile(script, DRAWS);
    const ports = new URL('./servers/ports.js', import.meta.url).href;
    const shell = `ip link set lo up && echo "40000 40007" > /proc/sys/net/ipv4/ip_local_port_range && exec "${process.execPath}" "${script}" "${ports}"`;
    const run = await new Promise<{ error: Error | null; stdout: string; stderr: string }>((resolve) => execFile('unshare', ['-n', 'sh', '-c', shell], { timeout: 30_000 }, (error, stdout, stderr) => resolve({ error, stdout, stderr })));
    if (run.error !== null && /unshare|Operation not permitted|ip: not found/.test(run.stderr)) return t.skip(`no network namespace here: ${run.stderr.trim()}`);
    assert.equal(run.error, null, run.stderr);
    const { free, held, heldRefused, freeRefused, drawn, bound } = JSON.parse(run.stdout) as { free: number; held: number; heldRefused: boolean; freeRefused: boolean; drawn: number[]; bound: unknown };
    assert.ok(heldRefused, `a connection to the refusing port is refused: ${run.stdout}`);
    assert.ok(freeRefused, `a connection to the free port, before its server binds it, is refused: ${run.stdout}`);
    assert.ok(!drawn.includes(held), `the port refusingPort() holds is not drawn: ${run.stdout}`);
    assert.ok(!drawn.includes(free), `the port freePort() handed out is not drawn: ${run.stdout}`);
    // Every port of the range but the holding connection's listener's was drawn or held: the held ones were passed over, not missed.
    assert.equal(new Set([...drawn, held, free]).size, 8 - 1, run.stdout);
    assert.equal(bound, true, `a server binds the port freePort() handed out: ${run.stdout}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

/**
 * In a network namespace whose port range is 40000 to 40007: Redis (its port drawn from the
 * range) stopped with stopOnly(), every port listens on port 0 draw from the range meanwhile, as
 * another test file running at the same time would, then startAgain().
 */
const STOPPED = `
import { createServer, connect } from 'node:net';
const { startRedis } = await import(process.argv[2]);
const redis = await startRedis();
await redis.stopOnly();
const refused = await new Promise((resolve) => {
  const socket = connect({ host: '127.0.0.1', port: redis.port });
  socket.once('connect', () => (socket.destroy(), resolve(false)));
  socket.once('error', (error) => resolve(error.code === 'ECONNREFUSED'));
});
const drawn = [];
const listeners = [];
for (let i = 0; i < 8; i++) {
  const server = createServer();
  const port = await new Promise((resolve) => { server.once('error', () => resolve(null)); server.listen(0, '127.0.0.1', () => resolve(server.address().port)); });
  if (port === null) break;
  drawn.push(port);
  listeners.push(server);
}
let again = 'started again';
try {
  await redis.startAgain();
} catch (error) {
  again = String(error.message).split('\\n')[0];
}
for (const server of listeners) server.close();
await redis.stop();
console.log(JSON.stringify({ port: redis.port, refused, drawn, again }));
process.exit(0);
`;

it('a daemon stopped by stopOnly() holds its port: refused meanwhile, drawn by no listen on port 0, and bound again by startAgain() (a network namespace of eight ports)', async (t) => {
  if (process.getuid?.() !== 0) return t.skip('a network namespace needs root (unshare -n)');
  const dir = await mkdtemp(join(tmpdir(), 'mf-stopped-port-'));
  try {
    const script = join(dir, 'stopped.mjs');
    await writeFile(script, STOPPED);
    const servers = new URL('./servers/index.js', import.meta.url).href;
    const shell = `ip link set lo up && echo "40000 40007" > /proc/sys/net/ipv4/ip_local_port_range && exec "${process.execPath}" "${script}" "${servers}"`;
    const run = await new Promise<{ error: Error | null; stdout: string; stderr: string }>((resolve) => execFile('unshare', ['-n', 'sh', '-c', shell], { timeout: 60_000 }, (error, stdout, stderr) => resolve({ error, stdout, stderr })));
    if (run.error !== null && /unshare|Operation not permitted|ip: not found/.test(run.stderr)) return t.skip(`no network namespace here: ${run.stderr.trim()}`);
    assert.equal(run.error, null, run.stderr);
    const { port, refused, drawn, again } = JSON.parse(run.stdout) as { port: number; refused: boolean; drawn: number[]; again: string };
    assert.ok(refused, `a connection to the stopped daemon's port is refused: ${run.stdout}`);
    assert.ok(drawn.length > 0 && !drawn.includes(port), `the stopped daemon's port is not drawn: ${run.stdout}`);
    assert.equal(again, 'started again', run.stdout);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
