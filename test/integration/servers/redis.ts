// A private redis-server on a free loopback port: no persistence, its own temp dir, stopped by the
// PID we started. stopOnly()/startAgain() simulate an outage on the same port; pause()/resume()
// a hung server (the kernel still accepts connections, nothing answers).
import { join } from 'node:path';
import { freePort } from './ports.js';
import { spawnDaemon, waitForPort, type Daemon } from './process.js';
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

/** Starts redis-server (Debian's redis-server package) on 127.0.0.1 and a free port. */
export async function startRedis(options: RedisOptions = {}): Promise<Redis> {
  const tmp = tmpDir('redis');
  const port = await freePort();
  const logFile = join(tmp.path, 'redis.log');
  let daemon: Daemon | undefined;
  let stopping: Promise<void> | undefined;
  let stopped = false;

  const launch = async (): Promise<void> => {
    const d = spawnDaemon({
      name: 'redis-server',
      command: '/usr/bin/redis-server',
      // No config file: everything on the command line, nothing saved, nothing reachable from outside.
      args: ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', tmp.path, '--daemonize', 'no', '--protected-mode', 'yes', ...(options.args ?? [])],
      logFile,
      cwd: tmp.path,
    });
    daemon = d;
    await waitForPort(port, { daemon: d });
  };

  try {
    await launch();
  } catch (error) {
    await (daemon as Daemon | undefined)?.stop().catch(() => undefined);
    await tmp.remove().catch(() => undefined);
    throw error;
  }

  const redis: Redis = {
    host: '127.0.0.1',
    port,
    url: `redis://127.0.0.1:${port}`,
    dir: tmp.path,
    get pid(): number {
      return daemon?.pid ?? -1;
    },
    stop(): Promise<void> {
      stopping ??= (async () => {
        stopped = true;
        try {
          await daemon?.stop();
        } finally {
          await tmp.remove();
        }
      })();
      return stopping;
    },
    async stopOnly(): Promise<void> {
      if (stopped) throw new Error('redis: stopOnly() after stop()');
      await daemon?.stop();
    },
    async startAgain(): Promise<void> {
      if (stopped) throw new Error('redis: startAgain() after stop()');
      if (daemon && !daemon.hasExited()) return;
      await launch();
    },
    async pause(): Promise<void> {
      await daemon?.pause();
    },
    resume(): void {
      daemon?.resume();
    },
    readLog: () => daemon?.logTail(200) ?? '',
  };
  return redis;
}
