// PROXY protocol against real peers: HAProxy 2.6 (send-proxy-v2) in front of our header reader,
// and Dovecot's `haproxy = yes` listener behind our encoder.
import { after, before, describe, it } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { connect, createServer } from 'node:net';
import type { AddressInfo, Server, Socket } from 'node:net';
import { TLSSocket, connect as tlsConnect, createSecureContext } from 'node:tls';
import { acceptProxyHeader, encodeProxyV1, encodeProxyV2 } from '../../src/server/proxy-protocol.js';
import type { ConnectionEndpoints } from '../../src/server/proxy-protocol.js';
import { LineClient, makeCerts, startDovecot, startHaproxy, tmpDir } from './servers/index.js';
import type { Dovecot, Haproxy, TestCerts, TmpDir } from './servers/index.js';

/** Waits until `predicate` holds, polling; fails with `what` after the deadline. */
async function until(predicate: () => boolean | Promise<boolean>, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A loopback server that runs `onSocket` for each connection and remembers the endpoints it found. */
async function listen(onSocket: (socket: Socket) => void): Promise<{ server: Server; port: number; sockets: Set<Socket>; close: () => Promise<void> }> {
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    onSocket(socket);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    server,
    port: (server.address() as AddressInfo).port,
    sockets,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Lines of the Dovecot log that record a login of `user`. */
async function loginLines(dovecot: Dovecot, user: string): Promise<string[]> {
  const log = await readFile(dovecot.logFile, 'utf8').catch(() => '');
  return log.split('\n').filter((l) => l.includes('Login:') && l.includes(`user=<${user}>`));
}

describe('PROXY protocol with real HAProxy and Dovecot', () => {
  let dovecot: Dovecot;
  let haproxy: Haproxy | undefined;
  let certs: TestCerts;
  let dir: TmpDir;
  const stoppers: Array<() => Promise<void>> = [];

  before(async () => {
    dir = tmpDir('proxy-protocol');
    certs = await makeCerts(dir.path);
    dovecot = await startDovecot({ name: 'pp', users: [{ name: 'alice', password: 'alice-pw' }, { name: 'bob', password: 'bob-pw' }, { name: 'carol', password: 'carol-pw' }], haproxy: true });
  });

  after(async () => {
    for (const stop of stoppers.reverse()) await stop().catch(() => undefined);
    await haproxy?.stop();
    await dovecot?.stop();
    await dir?.remove();
  });

  it('Dovecot takes the client address from our PROXY v2 header (IPv4 and IPv6) and v1 header', async () => {
    const port = dovecot.imapHaproxyPort;
    assert.ok(port);
    const cases: Array<[string, Buffer, string]> = [
      ['alice', encodeProxyV2({ address: '192.0.2.7', port: 50123 }, { address: '127.0.0.1', port }), '192.0.2.7'],
      ['bob', encodeProxyV2({ address: '2001:db8::7', port: 50124 }, { address: '2001:db8::1', port: 143 }), '2001:db8::7'],
      ['carol', encodeProxyV1({ address: '198.51.100.23', port: 50125 }, { address: '127.0.0.1', port }), '198.51.100.23'],
    ];
    for (const [user, header, rip] of cases) {
      const client = await LineClient.connect(port);
      try {
        client.write(header);
        assert.match(await client.readLine(), /^\* OK .*pp ready\./);
        await client.imapOk(`LOGIN ${user} ${user}-pw`);
        await client.imapOk('LOGOUT');
      } finally {
        client.close();
      }
      await until(async () => (await loginLines(dovecot, user)).length > 0, `Dovecot's login line for ${user}`);
      const [line] = await loginLines(dovecot, user);
      assert.match(line ?? '', new RegExp(`rip=${rip.replace(/[.:]/g, '\\$&')}[,\\s]`), line);
    }
  });

  it('HAProxy (send-proxy-v2) → our reader → our encoder → Dovecot: the real client address arrives at the end', async () => {
    const port = dovecot.imapHaproxyPort;
    assert.ok(port);
    const seen: ConnectionEndpoints[] = [];
    // A stand-in for a mailfront listener with PROXY protocol: trust HAProxy (127.0.0.1), then relay
    // to Dovecot with the client announced in a v2 header, the way a backend connection will.
    const relay = await listen((socket) => {
      void acceptProxyHeader(socket, { timeoutMs: 5_000, isTrusted: (ip) => ip === '127.0.0.1' }).then(
        (endpoints) => {
          seen.push(endpoints);
          // A probe that already hung up has no addresses left to encode.
          if (socket.destroyed || endpoints.client.address === 'unknown' || endpoints.local.address === 'unknown') return void socket.destroy();
          const backend = connect({ host: '127.0.0.1', port });
          backend.on('error', () => socket.destroy());
          backend.write(encodeProxyV2(endpoints.client, endpoints.local));
          socket.pipe(backend).pipe(socket);
        },
        () => socket.destroy(),
      );
    });
    stoppers.push(relay.close);
    haproxy = await startHaproxy({
      name: 'pp',
      frontends: [{ name: 'imap', backend: 'mailfront' }],
      backends: [{ name: 'mailfront', servers: [{ name: 'mf1', port: relay.port }] }],
    });
    const frontendPort = haproxy.port('imap');
    // The client comes from 127.0.0.2 so that its address differs from HAProxy's own (127.0.0.1).
    const socket = connect({ host: '127.0.0.1', port: frontendPort, localAddress: '127.0.0.2' });
    await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
    const clientPort = socket.localPort;
    const lines: string[] = [];
    let buffered = '';
    socket.on('data', (c: Buffer) => {
      buffered += c.toString('utf8');
      for (let nl = buffered.indexOf('\r\n'); nl >= 0; nl = buffered.indexOf('\r\n')) {
        lines.push(buffered.slice(0, nl));
        buffered = buffered.slice(nl + 2);
      }
    });
    try {
      await until(() => lines.length > 0, 'the greeting through HAProxy');
      assert.match(lines[0] ?? '', /pp ready/);
      socket.write('a1 LOGIN alice alice-pw\r\n');
      await until(() => lines.some((l) => l.startsWith('a1 ')), 'the LOGIN answer');
      assert.match(lines.find((l) => l.startsWith('a1 ')) ?? '', /^a1 OK/);
    } finally {
      socket.destroy();
    }
    // The other connections are startHaproxy's own probes of the frontend port, from 127.0.0.1.
    const ours = seen.filter((e) => e.client.address !== '127.0.0.1' && e.client.address !== 'unknown');
    assert.equal(ours.length, 1);
    assert.deepEqual(ours[0]?.client, { address: '127.0.0.2', port: clientPort });
    assert.deepEqual(ours[0]?.local, { address: '127.0.0.1', port: frontendPort });
    assert.equal(ours[0]?.peer.address, '127.0.0.1');
    assert.equal(ours[0]?.header?.version, 2);
    await until(async () => (await loginLines(dovecot, 'alice')).some((l) => l.includes('rip=127.0.0.2')), 'a login of alice from 127.0.0.2 in the Dovecot log');
  });

  it('HAProxy health checks with check-send-proxy arrive as LOCAL headers (the peer speaks for itself)', async () => {
    const seen: ConnectionEndpoints[] = [];
    const target = await listen((socket) => {
      void acceptProxyHeader(socket, { timeoutMs: 5_000, isTrusted: () => true }).then(
        (endpoints) => {
          seen.push(endpoints);
          socket.end('* OK ready\r\n');
        },
        () => socket.destroy(),
      );
    });
    stoppers.push(target.close);
    const lb = await startHaproxy({
      name: 'checks',
      frontends: [{ name: 'imap', backend: 'pool' }],
      backends: [{ name: 'pool', servers: [{ name: 's1', port: target.port, check: true, checkIntervalMs: 100 }] }],
    });
    stoppers.push(lb.stop);
    // startHaproxy's probes of the frontend arrive as proxied connections; the checks come as LOCAL.
    const checks = (): ConnectionEndpoints[] => seen.filter((e) => e.header?.kind === 'local');
    await until(() => checks().length >= 2, 'two health checks');
    for (const endpoints of checks()) {
      assert.equal(endpoints.header?.version, 2);
      assert.deepEqual(endpoints.client, endpoints.peer);
    }
    assert.ok(seen.every((e) => e.header?.kind === 'local' || e.header?.kind === 'proxied'));
    assert.match(await lb.runtime('show servers state pool'), /pool \d+ s1 127\.0\.0\.1 2 /, 'the server is up (state 2)');
  });

  it('an implicit-TLS listener behind HAProxy: the header comes off first, then TLS gets every byte after it', async () => {
    const secureContext = createSecureContext({ cert: await readFile(certs.certFile), key: await readFile(certs.keyFile) });
    const seen: ConnectionEndpoints[] = [];
    const tlsListener = await listen((socket) => {
      void acceptProxyHeader(socket, { timeoutMs: 5_000, isTrusted: (ip) => ip === '127.0.0.1' }).then(
        (endpoints) => {
          seen.push(endpoints);
          const secure = new TLSSocket(socket, { isServer: true, secureContext });
          secure.on('error', () => socket.destroy());
          secure.once('secure', () => secure.write(`* OK hello ${endpoints.client.address}\r\n`));
        },
        () => socket.destroy(),
      );
    });
    stoppers.push(tlsListener.close);
    const lb = await startHaproxy({
      name: 'tls',
      frontends: [{ name: 'imaps', backend: 'mailfront' }],
      backends: [{ name: 'mailfront', servers: [{ name: 'mf1', port: tlsListener.port }] }],
    });
    stoppers.push(lb.stop);
    const ca = await readFile(certs.caFile);
    const greeting = await new Promise<string>((resolve, reject) => {
      const raw = connect({ host: '127.0.0.1', port: lb.port('imaps'), localAddress: '127.0.0.3' });
      const client = tlsConnect({ socket: raw, servername: 'localhost', ca });
      client.once('data', (c: Buffer) => {
        resolve(c.toString('utf8'));
        client.destroy();
      });
      client.once('error', reject);
    });
    assert.equal(greeting, '* OK hello 127.0.0.3\r\n');
    assert.ok(seen.some((e) => e.client.address === '127.0.0.3'));
  });
});
