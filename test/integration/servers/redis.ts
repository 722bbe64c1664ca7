// A private redis-server on a free loopback port: no persistence, its own temp dir, stopped by the
// PID we started. stopOnly()/startAgain() simulate an outage on the same port; pause()/resume()
// a hung server (the kernel still accepts connections, nothing answers). startSentinel(): a Redis
// Sentinel watching such a server, for failovers.
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { freePort, onFreshPorts } from './ports.js';
import { lifecycleOf, restartable, spawnDaemon, waitForPort } from './process.js';
import { tmpDir } from './tmp.js';

export interface Redis {
  readonly host: '127.0.0.1';
  readonly port: number;
  /** redis://127.0.0.1:PORT */
  readonly url: string;
  readonly dir: string;
  /** PID of the running redis-server (changes on startAgain). */
  readonly pid: number;
  /** Stops redis-server and removes its directory. Idempotent. */
  stop(): Promise<void>;
  /** Stops redis-server but keeps its port and directory (the data is gone: nothing is saved). */
  stopOnly(): Promise<void>;
  /** Starts redis-server again on the same port after stopOnly(). */
  startAgain(): Promise<void>;
  /** SIGSTOP: connections are accepted by the kernel, never answered. Await it. */
  pause(): Promise<void>;
  /** SIGCONT after pause(). */
  resume(): void;
  readLog(): string;
}

export interface RedisOptions {
  /** Extra `--name value` arguments for redis-server. */
  readonly args?: readonly string[];
  /** Starts it as a replica of this one (`replicaof`). */
  readonly replicaOf?: Pick<Redis, 'host' | 'port'>;
}

/** Starts redis-server (Debian's redis-server package) on 127.0.0.1 and a free port (another if that one was taken before redis-server bound it). */
export function startRedis(options: RedisOptions = {}): Promise<Redis> {
  return onFreshPorts('redis', () => startRedisOnce(options));
}

async function startRedisOnce(options: RedisOptions): Promise<Redis> {
  const tmp = tmpDir('redis');
  const port = await freePort();
  const logFile = join(tmp.path, 'redis.log');
  const life = await restartable(
    'redis',
    () =>
      spawnDaemon({
        name: 'redis-server',
        command: '/usr/bin/redis-server',
        // No config file: everything on the command line, nothing saved, nothing reachable from outside.
        args: ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', tmp.path, '--daemonize', 'no', '--protected-mode', 'yes', ...(options.replicaOf !== undefined ? ['--replicaof', options.replicaOf.host, String(options.replicaOf.port)] : []), ...(options.args ?? [])],
        logFile,
        cwd: tmp.path,
      }),
    (daemon) => waitForPort(port, { daemon }),
    () => tmp.remove(),
  );

  const redis: Redis = {
    host: '127.0.0.1',
    port,
    url: `redis://127.0.0.1:${port}`,
    dir: tmp.path,
    get pid(): number {
      return life.pid;
    },
    ...lifecycleOf(life),
    readLog: () => life.daemon?.logTail(200) ?? '',
  };
  return redis;
}

export interface Sentinel {
  readonly host: '127.0.0.1';
  readonly port: number;
  /** 127.0.0.1:PORT, as throttle.redis.sentinel.nodes names it. */
  readonly node: string;
  readonly dir: string;
  readonly pid: number;
  /** Stops the sentinel and removes its directory. Idempotent. */
  stop(): Promise<void>;
  /** Stops the sentinel but keeps its port and directory (its config file, which it rewrites with what it learnt). */
  stopOnly(): Promise<void>;
  /** Starts it again on the same port after stopOnly(). */
  startAgain(): Promise<void>;
  pause(): Promise<void>;
  resume(): void;
  readLog(): string;
}

export interface SentinelOptions {
  /** The master name the sentinel monitors the primary under. */
  readonly masterName: string;
  readonly primary: Pick<Redis, 'host' | 'port'>;
  /** Sentinels that must agree that the primary is down (default 1: one sentinel decides alone). */
  readonly quorum?: number;
  /** How long the primary must not answer before it counts as down (default 1000 ms). */
  readonly downAfterMs?: number;
  /** Sentinel's failover-timeout (default 5000 ms): also the wait before the same master is failed over again. */
  readonly failoverTimeoutMs?: number;
}

/**
 * Starts a Redis Sentinel (`redis-server sentinel.conf --sentinel`) on 127.0.0.1 and a free port,
 * monitoring `primary` (its replicas it finds itself). The config file is the sentinel's own to
 * rewrite, in its own temp dir.
 */
export function startSentinel(options: SentinelOptions): Promise<Sentinel> {
  return onFreshPorts('redis-sentinel', () => startSentinelOnce(options));
}

async function startSentinelOnce(options: SentinelOptions): Promise<Sentinel> {
  const tmp = tmpDir('redis-sentinel');
  const port = await freePort();
  const logFile = join(tmp.path, 'sentinel.log');
  const configFile = join(tmp.path, 'sentinel.conf');
  const name = options.masterName;
  writeFileSync(
    configFile,
    [
      `port ${port}`,
      'bind 127.0.0.1',
      'daemonize no',
      `dir ${tmp.path}`,
      `sentinel monitor ${name} ${options.primary.host} ${options.primary.port} ${options.quorum ?? 1}`,
      `sentinel down-after-milliseconds ${name} ${options.downAfterMs ?? 1_000}`,
      `sentinel failover-timeout ${name} ${options.failoverTimeoutMs ?? 5_000}`,
      `sentinel parallel-syncs ${name} 1`,
      '',
    ].join('\n'),
  );
  const life = await restartable(
    'redis-sentinel',
    () => spawnDaemon({ name: 'redis-sentinel', command: '/usr/bin/redis-server', args: [configFile, '--sentinel'], logFile, cwd: tmp.path }),
    (daemon) => waitForPort(port, { daemon }),
    () => tmp.remove(),
  );
  return {
    host: '127.0.0.1',
    port,
    node: `127.0.0.1:${port}`,
    dir: tmp.path,
    get pid(): number {
      return life.pid;
    },
    ...lifecycleOf(life),
    readLog: () => life.daemon?.logTail(200) ?? '',
  };
}
