// Free TCP ports on 127.0.0.1, picked at run time, and the connections this process holds to one.
import { connect, createServer } from 'node:net';
import type { Server } from 'node:net';
import { readFileSync, readdirSync, readlinkSync } from 'node:fs';

/** Ports handed out by this process; never hand out the same port twice. */
const handedOut = new Set<number>();
/** Ports freePort() hands out before it looks for one (handOutNext()). */
const handOutFirst: number[] = [];

/** A server on a free loopback port that takes connections and drops them: a port in use. */
export async function squatPort(): Promise<Server> {
  const squatter = createServer((socket) => socket.destroy());
  await new Promise<void>((resolve, reject) => {
    squatter.once('error', reject);
    squatter.listen(0, '127.0.0.1', resolve);
  });
  return squatter;
}

/** Makes freePort() hand out `port` next, free or not: for the harness's own test of a port taken. */
export function handOutNext(port: number): void {
  handOutFirst.push(port);
}

function probe(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0, exclusive: true }, () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close((err) => (err ? reject(err) : resolve(port)));
    });
  });
}

/**
 * The listener that the connections holding ports go to (holdPort()); one per process, never
 * closed (unref'd). Opened by the first freePort(), before any port is handed out: opened later,
 * it could draw a port handed out and let go of meanwhile (a daemon stopped), and then hold it.
 */
let holdingListener: Promise<number> | undefined;
/** Its port, once it listens. */
let holdingListenerPortNumber = 0;

function holdingListenerPort(): Promise<number> {
  holdingListener ??= new Promise((resolve, reject) => {
    const server = createServer((socket) => {
      socket.on('error', () => undefined);
      socket.unref();
    });
    server.unref();
    server.once('error', reject);
    server.listen({ host: '127.0.0.1', port: 0 }, () => {
      holdingListenerPortNumber = (server.address() as { port: number }).port;
      resolve(holdingListenerPortNumber);
    });
  });
  return holdingListener;
}

/**
 * A TCP port on 127.0.0.1 for a server to listen on: free when drawn (a listen on port 0), then
 * held by this process until it exits (holdPort()), so that no other process can draw it meanwhile,
 * neither for a listen on port 0 nor as a connection's local port: another test file runs at the
 * same time and makes thousands of connections. The server told the port binds it all the same
 * (SO_REUSEADDR: node's listeners, slapd, Dovecot, Cyrus master, Redis, HAProxy, 389 DS), and
 * until it does, and after it stops, a connection to the port is refused.
 */
export async function freePort(): Promise<number> {
  await holdingListenerPort();
  const next = handOutFirst.shift();
  if (next !== undefined) {
    handedOut.add(next);
    return next;
  }
  for (let attempt = 0; attempt < 50; attempt++) {
    const port = await probe();
    if (handedOut.has(port)) continue;
    try {
      await holdPort(port);
    } catch (error) {
      // Drawn by another socket between probe() and the bind.
      if (isPortTaken(error)) continue;
      throw error;
    }
    handedOut.add(port);
    return port;
  }
  throw new Error('freePort: could not hold a fresh port on 127.0.0.1');
}

/**
 * Holds 127.0.0.1:`port` with a connection of this process's own, bound to it explicitly
 * (localPort) and made to a listener of its own, until the returned release() (a reset: no
 * TIME_WAIT is left on the port). Nothing listens on a port held so: a connection to it is refused
 * (ECONNREFUSED). The kernel draws it neither for a listen on port 0 nor as a connect()'s local
 * port, in any process; a daemon told the port binds it all the same (SO_REUSEADDR). A port free
 * a moment ago, and let go of, may be drawn by any process meanwhile: another test file running at
 * the same time, for a listener of its own or as a connection's local port. Rejects with
 * EADDRINUSE when a socket holds the port already.
 */
export async function holdPort(port: number): Promise<() => void> {
  const target = await holdingListenerPort();
  const socket = connect({ host: '127.0.0.1', port: target, localAddress: '127.0.0.1', localPort: port });
  try {
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
  } catch (error) {
    socket.destroy();
    throw error;
  }
  socket.on('error', () => undefined);
  socket.unref();
  return () => void socket.resetAndDestroy();
}

/** A port on 127.0.0.1 that refuses connections for as long as this process runs: a freePort() no server is told, for a server that is down, a slot nobody serves. */
export function refusingPort(): Promise<number> {
  return freePort();
}

/** Whether `error` says a port a server was to listen on was taken: its own (EADDRINUSE), or a daemon's exit with its log tail. */
export function isPortTaken(error: unknown): boolean {
  return /EADDRINUSE|Address already in use/i.test(error instanceof Error ? error.message : String(error));
}

/**
 * Whether a socket holds 127.0.0.1:`port`, so that a server cannot bind it: a bind of our own to
 * it fails (EADDRINUSE). Ours is that of a connection to the closed port 1, refused at once, with
 * SO_REUSEADDR (libuv sets it), so a server binding the port meanwhile with SO_REUSEADDR too (slapd,
 * Cyrus master, Dovecot, Redis, HAProxy do) is not hindered. A port a server listens on is held too:
 * ask only about one that refused a connection.
 */
export function portHeld(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port: 1, localAddress: '127.0.0.1', localPort: port });
    const done = (held: boolean): void => {
      socket.destroy();
      resolve(held);
    };
    socket.once('error', (error: NodeJS.ErrnoException) => done(error.code === 'EADDRINUSE'));
    socket.once('connect', () => done(false));
  });
}

/** Launches onFreshPorts() makes in all, the first included. */
const PORT_ATTEMPTS = 3;

/**
 * Runs `start`, which takes its ports from freePort(), again while it fails because one of them
 * was taken before the server bound it. freePort() holds its ports, so that is rare: a socket of
 * another process bound to the port with SO_REUSEADDR, not listening yet, when freePort() held it
 * (a listen on port 0 is a bind, then a listen), or a port handOutNext() gave. `start` must leave
 * nothing behind when it fails (no process, no directory).
 */
export async function onFreshPorts<T>(name: string, start: () => Promise<T>): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await start();
    } catch (error) {
      if (attempt >= PORT_ATTEMPTS || !isPortTaken(error)) throw error;
      process.stderr.write(`harness: ${name}: a port was taken before it was bound; starting again on fresh ports (launch ${attempt + 1} of ${PORT_ATTEMPTS})\n`);
    }
  }
}

/** Several distinct free ports. */
export async function freePorts(count: number): Promise<number[]> {
  const ports: number[] = [];
  for (let i = 0; i < count; i++) ports.push(await freePort());
  return ports;
}

/** A port as /proc/net/tcp writes it in an address (`0100007F:1F90`): four hex digits, capitals. */
export function procNetPort(port: number): string {
  return port.toString(16).toUpperCase().padStart(4, '0');
}

/**
 * The socket rows of /proc/net/tcp (IPv4; with `ipv6`, tcp6's too), each split into its columns:
 * [1] local address, [2] remote address (`0100007F:1F90`), [3] state in hex (01 established, 0A
 * listening), [5] timer (`tr:tm->when`), [9] inode.
 */
export function procNetTcpRows(ipv6 = false): string[][] {
  return (ipv6 ? ['/proc/net/tcp', '/proc/net/tcp6'] : ['/proc/net/tcp'])
    .flatMap((file) => readFileSync(file, 'utf8').split('\n').slice(1))
    .map((line) => line.trim().split(/\s+/))
    .filter((cols) => cols.length > 9);
}

/**
 * Whether a row of procNetTcpRows() is the holding listener's side of a connection that holds a
 * port (holdPort()): its remote port is the port held, and it is no client of the server there.
 */
export function onHoldingListener(cols: readonly string[]): boolean {
  return holdingListenerPortNumber !== 0 && cols[1] === `0100007F:${procNetPort(holdingListenerPortNumber)}`;
}

/** Connections of this process established to `port` on the loopback (from /proc: the sockets among its own descriptors). */
export function connectionsTo(port: number): number {
  const inodes = new Set<string>();
  for (const fd of readdirSync('/proc/self/fd')) {
    try {
      const socket = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/self/fd/${fd}`));
      if (socket) inodes.add(socket[1]!);
    } catch {
      // Closed meanwhile.
    }
  }
  const remote = `:${procNetPort(port)}`;
  return procNetTcpRows().filter((cols) => cols[2]!.endsWith(remote) && cols[3] === '01' && inodes.has(cols[9]!) && !onHoldingListener(cols)).length;
}
