import assert from 'node:assert/strict';
import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { test } from 'node:test';
import { loginLatency, loginLoop, noopOrders, noopRoundTrips } from '../../bench/load.js';

/**
 * A stand-in IMAP server for the bench's workloads: a greeting, OK to every tagged command, and
 * NOOP answered after `noopDelayMs`. Counts the sessions logged in at once.
 */
async function fakeImap(noopDelayMs: number): Promise<{ server: Server; port: number; sockets: Set<Socket>; mostAtOnce: () => number }> {
  const sockets = new Set<Socket>();
  // Sessions between their LOGIN and their LOGOUT, and the most of them at once.
  let inSession = 0;
  let most = 0;
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
        else if (verb === 'LOGOUT') {
          inSession--;
          socket.end(`* BYE\r\n${tag} OK LOGOUT done\r\n`);
        } else {
          if (verb === 'LOGIN') most = Math.max(most, ++inSession);
          socket.write(`${tag} OK ${verb} done\r\n`);
        }
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, port: (server.address() as AddressInfo).port, sockets, mostAtOnce: () => most };
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

test('the NOOP rounds put each target after each other one about as often, the same orders in every run', () => {
  const keys = ['direct', 'mailfront', 'nginx', 'floor'] as const;
  const next = noopOrders(keys);
  const sequence: string[] = [];
  const rounds = 6000;
  for (let i = 0; i < rounds; i++) {
    const order = next();
    assert.deepEqual([...order].sort(), [...keys].sort(), 'each round has every target once');
    sequence.push(...order);
  }
  // Who is measured right after whom, across the rounds' ends too: a NOOP after the direct
  // connection's pays for the work Dovecot is still doing for it.
  const follows = new Map<string, number>();
  for (let i = 1; i < sequence.length; i++) follows.set(`${sequence[i - 1]}>${sequence[i]}`, (follows.get(`${sequence[i - 1]}>${sequence[i]}`) ?? 0) + 1);
  for (const after of keys) {
    const counts = keys.filter((before) => before !== after).map((before) => follows.get(`${before}>${after}`) ?? 0);
    const mean = counts.reduce((a, b) => a + b, 0) / counts.length;
    for (const c of counts) assert.ok(Math.abs(c - mean) < 0.1 * mean, `${after} follows the others ${counts.join(', ')} times: not alike`);
  }
  const [run1, run2] = [noopOrders(keys), noopOrders(keys)];
  assert.deepEqual(Array.from({ length: 50 }, () => run1()), Array.from({ length: 50 }, () => run2()), 'a fixed seed: the same orders in each run');
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

test('login latency is taken one login at a time, every login\'s time kept', { timeout: 20_000 }, async () => {
  const { server, port, sockets, mostAtOnce } = await fakeImap(0);
  try {
    const r = await loginLatency({ protocol: 'imap', maxLogins: 30, maxSeconds: 10, target: (i) => ({ port, user: `u${i}`, password: 'p' }) });
    assert.equal(r.errors, 0, r.firstError);
    assert.equal(r.logins, 30);
    assert.equal(r.loginSamplesMs?.length, 30);
    assert.equal(mostAtOnce(), 1, 'never two sessions at once: no login waits behind another');
  } finally {
    for (const s of sockets) s.destroy();
    server.close();
  }
});

test('the stand-in server sees the rate loop\'s clients at once (its count can tell)', { timeout: 20_000 }, async () => {
  const { server, port, sockets, mostAtOnce } = await fakeImap(0);
  try {
    const r = await loginLoop({ protocol: 'imap', concurrency: 5, maxLogins: 30, maxSeconds: 10, target: (i) => ({ port, user: `u${i}`, password: 'p' }) });
    assert.equal(r.logins, 30);
    assert.equal(r.loginSamplesMs, undefined, 'samples only when asked for');
    assert.ok(mostAtOnce() > 1, `${mostAtOnce()} at once`);
  } finally {
    for (const s of sockets) s.destroy();
    server.close();
  }
});
