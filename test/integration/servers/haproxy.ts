// A private HAProxy (2.6, mode tcp) on free loopback ports, in the foreground (-db), stopped by its PID.
// Frontends and backends are given as data; servers get `send-proxy-v2` unless told otherwise.
import { connect } from 'node:net';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { freePort, onFreshPorts } from './ports.js';
import { run, spawnDaemon, waitForPort, type Daemon } from './process.js';
import { tmpDir, type TmpDir } from './tmp.js';

export interface HaproxyServer {
  /** Server name inside its backend (also used in runtime commands: `backend/name`). */
  readonly name: string;
  readonly host?: string;
  readonly port: number;
  /** Announce the client with PROXY v2 (default true). */
  readonly sendProxyV2?: boolean;
  /** With it, the PP2_TYPE_SSL TLV: whether the client reached HAProxy over TLS (`send-proxy-v2-ssl`). */
  readonly sendProxyV2Ssl?: boolean;
  /** Health checks (TCP connect, or with `check-send-proxy` a PROXY LOCAL header first) every `checkIntervalMs`. */
  readonly check?: boolean;
  readonly checkIntervalMs?: number;
  /** Failed checks in a row before the server is marked down (default 1). */
  readonly checkFall?: number;
  /** The port checks go to instead of the server's (with the backend's `httpCheck`: mailfront's HTTP listener). */
  readonly checkPort?: number;
  /** Only used when every non-backup server is down. */
  readonly backup?: boolean;
}

export interface HaproxyBackend {
  readonly name: string;
  /** Default roundrobin; `first` fills servers in order (deterministic tests). */
  readonly balance?: 'roundrobin' | 'first' | 'leastconn' | 'source';
  /** Checks ask `GET <path>` and want a 200 (`option httpchk`), with no PROXY header, as docker/haproxy/haproxy.cfg's ask /readyz. */
  readonly httpCheck?: string;
  readonly servers: readonly HaproxyServer[];
}

export interface HaproxyFrontend {
  readonly name: string;
  readonly backend: string;
  /** Port to bind on 127.0.0.1 (default: a free one). */
  readonly port?: number;
  /** This frontend itself expects a PROXY header (`accept-proxy`). */
  readonly acceptProxy?: boolean;
  /** HAProxy ends the clients' TLS with this PEM file (certificate, then key: `ssl crt`). */
  readonly sslPem?: string;
}

export interface HaproxyOptions {
  readonly name?: string;
  readonly frontends: readonly HaproxyFrontend[];
  readonly backends: readonly HaproxyBackend[];
  /** timeout client/server (default 1 h: spliced IMAP sessions idle for a long time). */
  readonly idleTimeoutMs?: number;
  /** Global maxconn (default 1000); HAProxy needs about twice as many file descriptors and refuses to start without them. */
  readonly maxconn?: number;
}

export interface Haproxy {
  readonly host: '127.0.0.1';
  /** The bound port of each frontend, by frontend name. */
  readonly ports: Readonly<Record<string, number>>;
  /** The bound port of a frontend (throws on an unknown name). */
  port(frontend: string): number;
  readonly pid: number;
  readonly dir: string;
  readonly configFile: string;
  /** HAProxy's stdout/stderr, with one `option tcplog` line per connection. */
  readonly logFile: string;
  /** Sends a command to the admin runtime socket (e.g. `disable server be/s1`), returns the answer. */
  runtime(command: string): Promise<string>;
  readLog(): Promise<string>;
  /** Stops HAProxy (SIGTERM, then SIGKILL) and removes its directory. Idempotent. */
  stop(): Promise<void>;
}

const NAME = /^[A-Za-z0-9_.-]+$/;

function serverLine(server: HaproxyServer, httpCheck: boolean): string {
  const parts = [`    server ${server.name} ${server.host ?? '127.0.0.1'}:${server.port}`];
  if (server.sendProxyV2 ?? true) parts.push(server.sendProxyV2Ssl ? 'send-proxy-v2-ssl' : 'send-proxy-v2');
  if (server.check) {
    parts.push('check', `inter ${server.checkIntervalMs ?? 1000}`, 'rise 1', `fall ${server.checkFall ?? 1}`, ...(server.checkPort !== undefined ? [`port ${server.checkPort}`] : []));
    if ((server.sendProxyV2 ?? true) && !httpCheck) parts.push('check-send-proxy');
  }
  if (server.backup) parts.push('backup');
  return parts.join(' ');
}

function haproxyConfig(options: HaproxyOptions, ports: Record<string, number>, statsSocket: string): string {
  const idle = options.idleTimeoutMs ?? 3_600_000;
  const lines = [
    '# mailfront test HAProxy',
    'global',
    '    log stdout format raw local0 info',
    `    stats socket ${statsSocket} mode 600 level admin`,
    `    maxconn ${options.maxconn ?? 1000}`,
    'defaults',
    '    mode tcp',
    '    log global',
    '    option tcplog',
    '    timeout connect 5s',
    `    timeout client ${idle}ms`,
    `    timeout server ${idle}ms`,
  ];
  for (const frontend of options.frontends) {
    lines.push(`frontend ${frontend.name}`, `    bind 127.0.0.1:${ports[frontend.name]}${frontend.acceptProxy ? ' accept-proxy' : ''}${frontend.sslPem !== undefined ? ` ssl crt ${frontend.sslPem}` : ''}`, `    default_backend ${frontend.backend}`);
  }
  for (const backend of options.backends) {
    lines.push(`backend ${backend.name}`, `    balance ${backend.balance ?? 'roundrobin'}`);
    if (backend.httpCheck !== undefined) lines.push(`    option httpchk GET ${backend.httpCheck}`, '    http-check expect status 200');
    lines.push(...backend.servers.map((server) => serverLine(server, backend.httpCheck !== undefined)));
  }
  return `${lines.join('\n')}\n`;
}

/**
 * Starts HAProxy with the given frontends and backends; resolves once every frontend accepts
 * connections. On fresh ports (again on others if one was taken before HAProxy bound it), unless a
 * frontend names its port.
 */
export function startHaproxy(options: HaproxyOptions): Promise<Haproxy> {
  if (options.frontends.some((f) => f.port !== undefined)) return startHaproxyOnce(options);
  return onFreshPorts(`haproxy ${options.name ?? 'lb'}`, () => startHaproxyOnce(options));
}

async function startHaproxyOnce(options: HaproxyOptions): Promise<Haproxy> {
  const names = [...options.frontends.map((f) => f.name), ...options.backends.map((b) => b.name), ...options.backends.flatMap((b) => b.servers.map((s) => s.name))];
  for (const name of names) if (!NAME.test(name)) throw new Error(`haproxy: names must be [A-Za-z0-9_.-]+, got ${JSON.stringify(name)}`);
  const backendNames = new Set(options.backends.map((b) => b.name));
  for (const f of options.frontends) if (!backendNames.has(f.backend)) throw new Error(`haproxy: frontend ${f.name} names an unknown backend ${f.backend}`);

  const tmp: TmpDir = tmpDir(`haproxy-${options.name ?? 'lb'}`);
  let daemon: Daemon | undefined;
  try {
    const ports: Record<string, number> = {};
    for (const f of options.frontends) ports[f.name] = f.port ?? (await freePort());
    const configFile = join(tmp.path, 'haproxy.cfg');
    const statsSocket = join(tmp.path, 'admin.sock');
    const logFile = join(tmp.path, 'haproxy.log');
    await writeFile(configFile, haproxyConfig(options, ports, statsSocket));
    // A config error is reported here, with HAProxy's own message, rather than as a port that never opens.
    await run('/usr/sbin/haproxy', ['-c', '-q', '-f', configFile]);
    const d = spawnDaemon({ name: `haproxy ${options.name ?? 'lb'}`, command: '/usr/sbin/haproxy', args: ['-f', configFile, '-db'], logFile, cwd: tmp.path });
    daemon = d;
    for (const port of Object.values(ports)) await waitForPort(port, { daemon: d });
    // A bound port accepts connections before HAProxy may have made its stats socket: on a busy
    // machine the first runtime command found no admin.sock (ENOENT). Ready once it answers too.
    await waitForRuntime(statsSocket, d);
    let stopping: Promise<void> | undefined;
    return {
      host: '127.0.0.1',
      ports,
      port(frontend: string): number {
        const port = ports[frontend];
        if (port === undefined) throw new Error(`haproxy: no frontend named ${frontend}`);
        return port;
      },
      pid: d.pid,
      dir: tmp.path,
      configFile,
      logFile,
      runtime: (command: string) => runtimeCommand(statsSocket, command),
      readLog: () => readFile(logFile, 'utf8').catch(() => ''),
      stop(): Promise<void> {
        stopping ??= (async () => {
          try {
            await d.stop();
          } finally {
            await tmp.remove();
          }
        })();
        return stopping;
      },
    };
  } catch (error) {
    await daemon?.stop().catch(() => undefined);
    await tmp.remove().catch(() => undefined);
    throw error;
  }
}

/** Waits until the stats socket answers `show info`, for at most 20 s (as waitForPort() waits for a port). */
async function waitForRuntime(socketPath: string, daemon: Daemon): Promise<void> {
  const deadline = Date.now() + 20_000;
  for (;;) {
    if (daemon.hasExited()) throw new Error(`${daemon.name}: exited before its stats socket answered; log ${daemon.logFile}:\n${daemon.logTail()}`);
    try {
      if (/^Pid: \d+$/m.test(await runtimeCommand(socketPath, 'show info'))) return;
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      // Not made yet, or made and not yet listened on.
      if (code !== 'ENOENT' && code !== 'ECONNREFUSED') throw error;
    }
    if (Date.now() > deadline) throw new Error(`${daemon.name}: its stats socket ${socketPath} did not answer in time; log ${daemon.logFile}:\n${daemon.logTail()}`);
    await sleep(50);
  }
}

function runtimeCommand(socketPath: string, command: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect(socketPath);
    const chunks: Buffer[] = [];
    socket.setTimeout(5_000, () => socket.destroy(new Error(`haproxy runtime command timed out: ${command}`)));
    socket.on('data', (c: Buffer) => chunks.push(c));
    socket.once('error', reject);
    socket.once('close', () => resolve(Buffer.concat(chunks).toString('utf8')));
    socket.end(`${command}\n`);
  });
}
