/**
 * Node's TLS sockets and V8's young collections, without mailfront: what survives each
 * scavenge per connection when each connection holds 16 KiB of small objects (a stand-in for a
 * session), for a server whose sockets are plaintext, TLS sockets made over the accepted ones
 * (`new TLSSocket(socket)`, as mailfront did; `tls-socket-released`: src/net/tls-sockets.ts's
 * serverTlsSocket(), as mailfront does since), or a tls.Server's. The server runs in a child
 * process under --trace-gc-nvp; 5 clients here connect, read the greeting, send a line and wait
 * for the close, for BENCH_TLS_GC_SECONDS (default 10) after 3 s of warm-up. Prints, per server
 * kind: the connections, the scavenges and mark-compacts, the mean bytes surviving and promoted
 * per scavenge, the main thread's GC pauses and CPU per connection. `plain-accessor` is the
 * plaintext server with what node's TLS layer does to each connection's TCP handle
 * (_tls_wrap.js, defineHandleReading()): an accessor `reading` whose getter and setter are
 * closures over the socket. Bounded: fixed times,
 * loopback only. (docs/performance.md, "What a full collection left behind".)
 *
 *   node dist/bench/tls-young-gc.js
 */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { connect, createServer } from 'node:net';
import type { Socket } from 'node:net';
import { createSecureContext, connect as tlsConnect, createServer as createTlsServer, TLSSocket } from 'node:tls';
import { fileURLToPath } from 'node:url';
import { serverTlsSocket } from '../src/net/tls-sockets.js';
import { testCertsPem } from '../test/integration/servers/certs.js';

type Kind = 'plain' | 'plain-accessor' | 'tls-socket' | 'tls-socket-released' | 'tls-server';
const KINDS: readonly Kind[] = ['plain', 'plain-accessor', 'tls-socket', 'tls-socket-released', 'tls-server'];
const SECONDS = Number(process.env['BENCH_TLS_GC_SECONDS'] ?? '10');
const WARMUP_MS = 3_000;
const CLIENTS = 5;
/** Objects each connection holds: 400 small ones, about 16 KiB. */
const HELD_OBJECTS = 400;

/** The child: a server of `kind` on a free loopback port, told its key and certificate on stdin. */
async function serve(kind: Kind): Promise<void> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  const { key, cert } = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { key: string; cert: string };
  const secureContext = createSecureContext({ key, cert });
  // The session's objects are reached from the socket as a session's are: through its listeners.
  const session = (socket: Socket): void => {
    const held = Array.from({ length: HELD_OBJECTS }, (_, i) => ({ i, text: `line ${i}` }));
    socket.on('error', () => undefined);
    socket.write('* OK ready\r\n');
    socket.on('data', () => {
      if (held.length > 0) socket.end('* BYE\r\n');
    });
  };
  const server =
    kind === 'tls-server'
      ? createTlsServer({ key, cert }, session)
      : createServer((raw) => {
          if (kind === 'plain') return session(raw);
          if (kind === 'plain-accessor') {
            const handle = (raw as Socket & { _handle: { reading?: unknown } | null })._handle;
            if (handle !== null) {
              let reading = handle.reading;
              Object.defineProperty(handle, 'reading', { get: () => (raw.destroyed ? false : reading), set: (value: unknown) => void (reading = value) });
            }
            return session(raw);
          }
          raw.on('error', () => undefined);
          // tls-socket-released: mailfront's own, whose sockets drop their listeners once closed
          // (src/net/tls-sockets.ts): what they reach is no longer reached from the sockets.
          const options = { isServer: true, secureContext };
          const secure = kind === 'tls-socket-released' ? serverTlsSocket(raw, options) : new TLSSocket(raw, options);
          secure.on('error', () => undefined);
          secure.once('secure', () => session(secure));
        });
  let connections = 0;
  server.on(kind === 'tls-server' ? 'secureConnection' : 'connection', () => (connections += 1));
  let mark: { readonly cpu: NodeJS.CpuUsage; readonly connections: number } | undefined;
  // SIGUSR2: the measured window begins (the parent marks the GC trace there too). SIGTERM: it ends.
  process.on('SIGUSR2', () => {
    mark = { cpu: process.cpuUsage(), connections };
    process.stdout.write('MARK\n');
  });
  process.on('SIGTERM', () => {
    if (mark !== undefined) {
      const cpu = process.cpuUsage(mark.cpu);
      process.stdout.write(`RESULT ${JSON.stringify({ connections: connections - mark.connections, cpuMs: (cpu.user + cpu.system) / 1000 })}\n`);
    }
    process.exit(0);
  });
  server.listen(0, '127.0.0.1', () => {
    const address = server.address();
    process.stdout.write(`PORT ${typeof address === 'object' && address !== null ? address.port : 0}\n`);
  });
}

/** One client connection: greeting, a line, then the server's close. */
function oneConnection(port: number, tls: boolean): Promise<void> {
  return new Promise((resolve) => {
    const socket = tls ? tlsConnect({ port, host: '127.0.0.1', rejectUnauthorized: false }) : connect(port, '127.0.0.1');
    let sent = false;
    socket.on('data', () => {
      if (!sent) {
        sent = true;
        socket.write('a LOGOUT\r\n');
      }
    });
    socket.on('error', () => resolve());
    socket.on('close', () => resolve());
  });
}

/** CLIENTS loops of connections for `ms`. */
async function load(port: number, tls: boolean, ms: number): Promise<void> {
  const end = performance.now() + ms;
  await Promise.all(
    Array.from({ length: CLIENTS }, async () => {
      while (performance.now() < end) await oneConnection(port, tls);
    }),
  );
}

interface Measured {
  readonly kind: Kind;
  readonly connections: number;
  readonly cpuMs: number;
  readonly scavenges: number;
  readonly markCompacts: number;
  readonly survivedBytes: number;
  readonly promotedBytes: number;
  readonly pauseMs: number;
}

/** The fields of one --trace-gc-nvp line. */
function nvp(line: string): Map<string, string> {
  return new Map([...line.matchAll(/([\w.]+)=([^\s]+)/g)].map((m) => [m[1]!, m[2]!]));
}

async function measure(kind: Kind, pem: { key: string; cert: string }): Promise<Measured> {
  const child = spawn(process.execPath, ['--trace-gc-nvp', fileURLToPath(import.meta.url), '--server', kind], { stdio: ['pipe', 'pipe', 'inherit'] });
  child.stdin.end(JSON.stringify(pem));
  const lines: string[] = [];
  let partial = '';
  let portSeen: (port: number) => void = () => undefined;
  const port = new Promise<number>((resolve) => (portSeen = resolve));
  child.stdout.setEncoding('utf8').on('data', (text: string) => {
    const all = (partial + text).split('\n');
    partial = all.pop() ?? '';
    for (const line of all) {
      lines.push(line);
      const found = /^PORT (\d+)$/.exec(line);
      if (found) portSeen(Number(found[1]));
    }
  });
  const exited = once(child, 'exit');
  try {
    const listening = await Promise.race([port, new Promise<number>((_, reject) => setTimeout(() => reject(new Error(`the ${kind} server did not listen within 10 s`)), 10_000).unref())]);
    const tls = kind.startsWith('tls');
    await load(listening, tls, WARMUP_MS);
    child.kill('SIGUSR2');
    await load(listening, tls, SECONDS * 1000);
  } finally {
    child.kill('SIGTERM');
    await exited;
  }
  const from = lines.indexOf('MARK');
  const window = lines.slice(from + 1);
  const result = window.find((l) => l.startsWith('RESULT '));
  if (from < 0 || result === undefined) throw new Error(`the ${kind} server said nothing of its window`);
  const { connections, cpuMs } = JSON.parse(result.slice('RESULT '.length)) as { connections: number; cpuMs: number };
  const gcs = window.filter((l) => l.includes(' gc=')).map(nvp);
  const scavenges = gcs.filter((g) => g.get('gc') === 's');
  const mean = (key: string): number => scavenges.reduce((sum, g) => sum + Number(g.get(key) ?? 0), 0) / Math.max(1, scavenges.length);
  return {
    kind,
    connections,
    cpuMs,
    scavenges: scavenges.length,
    markCompacts: gcs.filter((g) => g.get('gc') === 'mc').length,
    survivedBytes: mean('new_space_survived'),
    promotedBytes: mean('promoted'),
    pauseMs: gcs.reduce((sum, g) => sum + Number(g.get('pause') ?? 0), 0),
  };
}

if (process.argv[2] === '--server') {
  await serve(process.argv[3] as Kind);
} else {
  const { key, cert } = await testCertsPem();
  console.log(`node ${process.version}; 5 clients, ${SECONDS} s per server after ${WARMUP_MS / 1000} s of warm-up; each connection holds ${HELD_OBJECTS} small objects (about 16 KiB)`);
  console.log('server       connections  scavenges  mark-compacts  KiB survived/scavenge  KiB promoted/scavenge  connections/scavenge  GC pause ms/connection  CPU ms/connection');
  for (const kind of KINDS) {
    const m = await measure(kind, { key, cert });
    const perScavenge = m.connections / Math.max(1, m.scavenges);
    console.log(
      [
        kind.padEnd(11),
        String(m.connections).padStart(11),
        String(m.scavenges).padStart(10),
        String(m.markCompacts).padStart(14),
        (m.survivedBytes / 1024).toFixed(0).padStart(22),
        (m.promotedBytes / 1024).toFixed(0).padStart(22),
        perScavenge.toFixed(0).padStart(21),
        (m.pauseMs / Math.max(1, m.connections)).toFixed(4).padStart(23),
        (m.cpuMs / Math.max(1, m.connections)).toFixed(3).padStart(18),
      ].join('  '),
    );
  }
}
