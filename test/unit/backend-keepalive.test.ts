// TCP keepalive on backend connections, as the kernel shows it (ss -o): a backend host that dies
// while its client sits in IDLE sends no FIN or RST, and only keepalive probes notice it before the
// idle timeout. Plain TCP and implicit TLS (which runs over the same socket) alike.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import type { AddressInfo, Server, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TLSSocket } from 'node:tls';
import { after, before, test } from 'node:test';
import { dialSlot } from '../../src/backend/connect.js';
import type { BackendConfig } from '../../src/config/schema.js';
import type { Slot } from '../../src/routing/storemap.js';
import { testCertsPem } from '../integration/servers/certs.js';

let dir: string;
let caFile: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'mailfront-keepalive-'));
  caFile = join(dir, 'ca.crt');
  await writeFile(caFile, (await testCertsPem()).ca);
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

function backendConfig(tls: BackendConfig['tls']): BackendConfig {
  return { loginMode: 'replay', masterUserSeparator: '*', tls, caFile, tlsServername: 'localhost', forwardClientAddress: false, connectTimeoutMs: 2_000, loginTimeoutMs: 2_000, proxyProtocol: 'none' } as BackendConfig;
}

/** A backend on loopback that says nothing (implicit TLS: completes the handshake first). */
async function silentBackend(tls: boolean): Promise<{ server: Server; slot: Slot }> {
  const { cert, key } = await testCertsPem();
  const server = createServer((socket) => {
    socket.on('error', () => undefined);
    if (tls) new TLSSocket(socket, { isServer: true, cert, key }).on('error', () => undefined);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  return { server, slot: { name: 's1', store: 'st', host: '127.0.0.1', imapPort: port, imapsPort: port } as unknown as Slot };
}

/** The kernel's keepalive timer of the connection from local port `port`, in ms (ss -o), or undefined without one. */
function keepaliveTimerMs(port: number): number | undefined {
  const out = execFileSync('ss', ['-tnoH', 'state', 'established', `( sport = :${port} )`], { encoding: 'utf8' });
  const match = /timer:\(keepalive,(?:(\d+)min)?(?:(\d+)sec)?(?:(\d+)ms)?/.exec(out);
  if (match === null) return undefined;
  return Number(match[1] ?? 0) * 60_000 + Number(match[2] ?? 0) * 1000 + Number(match[3] ?? 0);
}

for (const tls of ['none', 'implicit'] as const) {
  test(`a backend connection (tls: ${tls}) has TCP keepalive on, first probing after 60 s without traffic`, async () => {
    const { server, slot } = await silentBackend(tls === 'implicit');
    let socket: Socket | undefined;
    try {
      socket = await dialSlot(slot, 'imap', backendConfig(tls), new AbortController().signal);
      const timer = keepaliveTimerMs(socket.localPort!);
      assert.notEqual(timer, undefined, 'no keepalive timer on the backend connection');
      assert.ok(timer! > 50_000 && timer! <= 60_000, `keepalive timer at ${timer} ms`);
    } finally {
      socket?.destroy();
      server.close();
    }
  });
}
