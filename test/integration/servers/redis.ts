// A private redis-server on a free loopback port: no persistence, its own temp dir, stopped by the
// PID we started. stopOnly()/startAgain() simulate an outage on the same port; pause()/resume()
// a hung server (the kernel still accepts connections, nothing answers).
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
        args: ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', tmp.path, '--daemonize', 'no', '--protected-mode', 'yes', ...(options.args ?? [])],
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
