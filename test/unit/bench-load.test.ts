import assert from 'node:assert/strict';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { test } from 'node:test';
import { noopRoundTrips } from '../../bench/load.js';

/**
 * A stand-in IMAP server for the bench's workloads: a greeting, OK to every tagged command, and
 * NOOP answered after `noopDelayMs`. Counts the sessions open at once.
 */
async function fakeImap(noopDelayMs: number): Promise<{ server: Server; port: number; sockets: Set<Socket> }> {
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    socket.write('* OK ready\r\n');
    let pending = '';
    socket.on('data', (chunk: Buffer) => {
      pending += chunk.toString('latin1');
      for (let at = pending.indexOf('\r\n'); at >= 0; at = pending.indexOf('\r\n')) {
        const line = pending.slice(0, at);
        pending = pending.slice(at + 2);
        const [tag, command = ''] = line.split(' ');
        const verb = command.toUpperCase();
        if (verb === 'NOOP') setTimeout(() => socket.writable && socket.write(`${tag} OK NOOP done\r\n`), noopDelayMs);
        else if (verb === 'LOGOUT') socket.end(`* BYE\r\n${tag} OK LOGOUT done\r\n`);
        else socket.write(`${tag} OK ${verb} done\r\n`);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, port: (server.address() as AddressInfo).port, sockets };
}

test('the NOOP workload stops at its time bound with the round trips done by then', { timeout: 20_000 }, async () => {
  const { server, port, sockets } = await fakeImap(20);
  try {
    const started = Date.now();
    // A million NOOPs of 20 ms each would take hours: the bound, not the count, ends the loop.
    const r = await noopRoundTrips({ a: { port, user: 'u', password: 'p' } }, 1_000_000, 5, 0.5);
    const seconds = (Date.now() - started) / 1000;
    assert.ok(seconds < 5, `took ${seconds} s with a 0.5 s bound`);
    assert.ok(r.a.ms.n > 0 && r.a.ms.n < 100, `${r.a.ms.n} timed NOOPs: some, after the 5 untimed ones, and far fewer than asked`);
    assert.ok(r.a.ms.p50 >= 15, `p50 ${r.a.ms.p50} ms: each NOOP waited for its 20 ms answer`);
  } finally {
    for (const s of sockets) s.destroy();
    server.close();
  }
});

test('the NOOP workload does the count asked when the bound allows it', { timeout: 20_000 }, async () => {
  const { server, port, sockets } = await fakeImap(0);
  try {
    const r = await noopRoundTrips({ a: { port, user: 'u', password: 'p' }, b: { port, user: 'u', password: 'p' } }, 50, 10, 60);
    assert.equal(r.a.ms.n, 50);
    assert.equal(r.b.ms.n, 50);
  } finally {
    for (const s of sockets) s.destroy();
    server.close();
  }
});
