// Spawning and stopping the real daemons used by the integration tests.
//
// Each daemon runs in the foreground of the process we spawn (slapd -d 0, dovecot -F, Cyrus master
// without -d), so the PID we get from spawn() is the daemon's master PID. Its stdout/stderr go to a
// log file in its temp dir. We only ever signal PIDs we started.
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync, readdirSync } from 'node:fs';
import { connect } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { portHeld } from './ports.js';
import { removeAllTmpDirsSync } from './tmp.js';

export interface ExitInfo {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export interface DaemonSpec {
  /** Used in error messages. */
  readonly name: string;
  readonly command: string;
  readonly args: readonly string[];
  /** stdout and stderr are appended to this file. */
  readonly logFile: string;
  readonly cwd?: string;
  readonly env?: NodeJS.ProcessEnv;
  /**
   * Run in a new session and process group (default false). Needed for daemons that signal their
   * whole process group on shutdown, like Cyrus master (`kill(0, SIGTERM)`), which would otherwise
   * also hit the test runner and every other daemon it started. The PID is still ours.
   */
  readonly ownProcessGroup?: boolean;
}

export interface StopOptions {
  /** How long to wait after SIGTERM before SIGKILL (default 10 s). */
  readonly timeoutMs?: number;
}

export interface Daemon {
  readonly name: string;
  readonly pid: number;
  readonly logFile: string;
  /** Resolves when the process has exited (and was reaped). */
  readonly exited: Promise<ExitInfo>;
  hasExited(): boolean;
  exitInfo(): ExitInfo | undefined;
  /** Sends a signal if the process is still running. */
  signal(signal: NodeJS.Signals): void;
  /**
   * SIGSTOP to the daemon and all its descendants, resolved once every thread of them is stopped
   * (a process-directed SIGSTOP takes effect asynchronously: without waiting, a busy daemon may
   * still accept and answer a request). The kernel keeps accepting connections; nothing answers.
   */
  pause(): Promise<void>;
  /** SIGCONT to everything pause() stopped. */
  resume(): void;
  isPaused(): boolean;
  /** SIGTERM, then SIGKILL after the deadline; resolves once the process is gone. Idempotent. */
  stop(options?: StopOptions): Promise<void>;
  /** The last lines of the log file. */
  logTail(lines?: number): string;
}

/** Daemons still running; SIGKILLed when the test process exits so nothing leaks. */
const running = new Set<ChildProcess>();
/** Processes stopped by pause(); continued at exit so none stays stopped forever. */
const pausedProcesses = new Set<ProcessIdentity>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // On SIGINT/SIGTERM/SIGHUP nobody else handles, clean up like at exit, then die of the same
  // signal. If the code under test handles the signal itself (e.g. a drain on SIGTERM), leave it
  // alone. SIGHUP is a terminal closed (a dropped ssh session): it reaches the daemons in our
  // process group as well, and Dovecot and mailfront take it as a reload and would run on.
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    const onSignal = (): void => {
      if (process.listenerCount(sig) > 1) return;
      process.removeListener(sig, onSignal);
      killEverything();
      removeAllTmpDirsSync();
      process.kill(process.pid, sig);
    };
    process.on(sig, onSignal);
  }
  process.on('exit', () => {
    killEverything();
    removeAllTmpDirsSync();
  });
}

/** SIGKILLs every daemon still running and its descendants; continues paused processes first. */
function killEverything(): void {
  for (const paused of pausedProcesses) {
    if (sameProcess(paused)) {
      try {
        process.kill(paused.pid, 'SIGCONT');
      } catch {
        // gone
      }
    }
  }
  for (const child of running) {
    // Children first (Cyrus' imapd would otherwise wait in accept() forever), then the master.
    const pids = child.pid !== undefined ? descendantsOf(child.pid).map((d) => d.pid) : [];
    for (const pid of pids) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
    try {
      child.kill('SIGCONT');
      child.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
}

/** The last `lines` lines of a file ('' if it cannot be read). */
export function readTail(file: string, lines = 40): string {
  try {
    const text = readFileSync(file, 'utf8');
    return text.split('\n').slice(-lines - 1).join('\n').trimEnd();
  } catch {
    return '';
  }
}

/**
 * One daemon that a harness can stop for good, stop and start again on the same ports (an
 * outage), or pause (a hung server). What differs per server is how it is spawned, how to tell
 * it is ready, and what to clean up after the final stop.
 */
export interface Restartable {
  /** PID of the running process (changes on startAgain), -1 when there is none. */
  readonly pid: number;
  /** The process now; undefined only if the first launch failed. */
  readonly daemon: Daemon | undefined;
  /** Stops the daemon, then runs the cleanup. Idempotent. */
  stop(): Promise<void>;
  /** Stops the daemon, keeping its ports (held meanwhile by freePort()) and files. */
  stopOnly(): Promise<void>;
  /** Launches it again after stopOnly(); does nothing while it runs. */
  startAgain(): Promise<void>;
  /** SIGSTOP to the daemon and its descendants; resolves once they are stopped. */
  pause(): Promise<void>;
  /** SIGCONT after pause(). */
  resume(): void;
}

/** The lifecycle methods of a harness object, delegating to `life`; spread them in (`pid` stays a getter of its own). */
export function lifecycleOf(life: Restartable): Pick<Restartable, 'stop' | 'stopOnly' | 'startAgain' | 'pause' | 'resume'> & { restart(): Promise<void> } {
  return {
    stop: () => life.stop(),
    stopOnly: () => life.stopOnly(),
    startAgain: () => life.startAgain(),
    async restart(): Promise<void> {
      await life.stopOnly();
      await life.startAgain();
    },
    pause: () => life.pause(),
    resume: () => life.resume(),
  };
}

/**
 * Launches `spawn()` and waits for `ready()`. If the first launch fails, the process is stopped,
 * `cleanup()` runs and the error is thrown. While stopOnly() has the daemon down, its ports refuse
 * connections and no other process can draw them: freePort() holds them for as long as this
 * process runs, and startAgain() binds them again.
 */
export async function restartable(name: string, spawn: () => Daemon, ready: (daemon: Daemon) => Promise<void>, cleanup: () => Promise<void>): Promise<Restartable> {
  let daemon: Daemon | undefined;
  let stopping: Promise<void> | undefined;
  let stopped = false;
  const launch = async (): Promise<void> => {
    const d = spawn();
    daemon = d;
    await ready(d);
  };
  try {
    await launch();
  } catch (error) {
    await (daemon as Daemon | undefined)?.stop().catch(() => undefined);
    await cleanup().catch(() => undefined);
    throw error;
  }
  return {
    get pid(): number {
      return daemon?.pid ?? -1;
    },
    get daemon(): Daemon | undefined {
      return daemon;
    },
    stop(): Promise<void> {
      stopping ??= (async () => {
        stopped = true;
        try {
          await daemon?.stop();
        } finally {
          await cleanup();
        }
      })();
      return stopping;
    },
    async stopOnly(): Promise<void> {
      if (stopped) throw new Error(`${name}: stopOnly() after stop()`);
      await daemon?.stop();
    },
    async startAgain(): Promise<void> {
      if (stopped) throw new Error(`${name}: startAgain() after stop()`);
      if (daemon && !daemon.hasExited()) return;
      await launch();
    },
    async pause(): Promise<void> {
      await daemon?.pause();
    },
    resume(): void {
      daemon?.resume();
    },
  };
}

/** Starts a daemon in the foreground of a child process (detached: false unless ownProcessGroup). */
export function spawnDaemon(spec: DaemonSpec): Daemon {
  installExitHook();
  const logFd = openSync(spec.logFile, 'a');
  let child: ChildProcess;
  try {
    child = spawn(spec.command, [...spec.args], {
      cwd: spec.cwd ?? process.cwd(),
      env: spec.env ?? process.env,
      stdio: ['ignore', logFd, logFd],
      detached: spec.ownProcessGroup ?? false,
    });
  } finally {
    closeSync(logFd);
  }
  let info: ExitInfo | undefined;
  let spawnError: Error | undefined;
  const exited = new Promise<ExitInfo>((resolve) => {
    child.once('error', (err) => {
      spawnError = err;
      if (child.pid === undefined) {
        info = { code: null, signal: null };
        resolve(info);
      }
    });
    child.once('exit', (code, signal) => {
      running.delete(child);
      info = { code, signal };
      resolve(info);
    });
  });
  const pid = child.pid;
  if (pid === undefined) {
    throw new Error(`${spec.name}: could not start ${spec.command}${spawnError ? `: ${spawnError.message}` : ''}`);
  }
  running.add(child);

  let stopping: Promise<void> | undefined;
  let paused: ProcessIdentity[] = [];
  const resume = (): void => {
    for (const p of paused) {
      pausedProcesses.delete(p);
      if (sameProcess(p)) {
        try {
          process.kill(p.pid, 'SIGCONT');
        } catch {
          // gone
        }
      }
    }
    paused = [];
  };
  const daemon: Daemon = {
    name: spec.name,
    pid,
    logFile: spec.logFile,
    exited,
    hasExited: () => info !== undefined,
    exitInfo: () => info,
    signal(signal: NodeJS.Signals): void {
      if (info !== undefined) return;
      try {
        child.kill(signal);
      } catch {
        // raced with exit
      }
    },
    async pause(): Promise<void> {
      if (info !== undefined || paused.length > 0) return;
      const self = statFields(pid)?.[19];
      if (self === undefined) return;
      // The master first, so it forks nothing new; then everything below it.
      const targets: ProcessIdentity[] = [{ pid, startTime: self }];
      daemon.signal('SIGSTOP');
      for (const d of descendantsOf(pid)) {
        try {
          process.kill(d.pid, 'SIGSTOP');
          targets.push(d);
        } catch {
          // gone
        }
      }
      paused = targets;
      for (const t of targets) pausedProcesses.add(t);
      await waitAllStopped(targets.map((t) => t.pid), 5_000);
    },
    resume,
    isPaused: () => paused.length > 0,
    stop(options?: StopOptions): Promise<void> {
      stopping ??= (async () => {
        resume();
        if (info !== undefined) return;
        const timeoutMs = options?.timeoutMs ?? 10_000;
        // Children (Cyrus imapd/pop3d, Dovecot's helpers) may outlive the master for a moment and
        // keep the listening sockets open; wait for them too, so a restart can bind the same ports.
        const descendants = descendantsOf(pid);
        daemon.signal('SIGTERM');
        daemon.signal('SIGCONT'); // in case it was paused with SIGSTOP
        let timer: NodeJS.Timeout | undefined;
        const timeout = new Promise<'timeout'>((resolve) => {
          timer = setTimeout(() => resolve('timeout'), timeoutMs);
        });
        const first = await Promise.race([exited.then(() => 'exited' as const), timeout]);
        clearTimeout(timer);
        if (first === 'timeout') {
          daemon.signal('SIGKILL');
          await exited;
        }
        const left = await waitGone(
          descendants.filter((d) => sameProcess(d)).map((d) => d.pid),
          timeoutMs,
        );
        for (const d of descendants) {
          if (left.includes(d.pid) && sameProcess(d)) {
            try {
              process.kill(d.pid, 'SIGKILL');
            } catch {
              // gone
            }
          }
        }
        if (left.length > 0) await waitGone(left, 2_000);
      })();
      return stopping;
    },
    logTail: (lines?: number) => readTail(spec.logFile, lines),
  };
  return daemon;
}

function tryConnect(host: string, port: number, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host, port });
    const done = (ok: boolean): void => {
      socket.removeAllListeners();
      socket.on('error', () => undefined);
      socket.destroy();
      resolve(ok);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.once('connect', () => done(true));
    socket.once('error', () => done(false));
  });
}

export interface WaitForPortOptions {
  readonly host?: string;
  /** Overall deadline (default 20 s). */
  readonly timeoutMs?: number;
  /** Poll interval (default 50 ms). */
  readonly intervalMs?: number;
  /** Fail early, with its log tail, if this daemon exits while we wait. */
  readonly daemon?: Daemon;
}

function describeExit(daemon: Daemon): string {
  const info = daemon.exitInfo();
  const how = info?.signal ? `signal ${info.signal}` : `code ${String(info?.code)}`;
  return `${daemon.name} (pid ${daemon.pid}) exited early with ${how}; log ${daemon.logFile}:\n${daemon.logTail()}`;
}

/** How long waitForPort() waits for a port before it asks whether another socket holds it, and how often after. */
const HELD_CHECK_AFTER_MS = 1_000;
const HELD_CHECK_EVERY_MS = 500;

/** Says so (EADDRINUSE, for onFreshPorts()) when another socket holds 127.0.0.1:`port`, which refused a connection. */
async function heldBySomeoneElse(host: string, port: number): Promise<string> {
  return host === '127.0.0.1' && (await portHeld(port)) && !(await tryConnect(host, port, 1_000)) ? `; ${host}:${port} is held by another socket (EADDRINUSE)` : '';
}

/**
 * Waits until host:port accepts TCP connections. A port that another socket holds (onFreshPorts())
 * fails the wait with EADDRINUSE in the error: when the daemon exits (slapd at -d 0 does
 * not say why), or, for one that runs on without it (Cyrus master only logs to syslog), from a
 * second on, rather than at the deadline.
 */
export async function waitForPort(port: number, options: WaitForPortOptions = {}): Promise<void> {
  const host = options.host ?? '127.0.0.1';
  const started = Date.now();
  const deadline = started + (options.timeoutMs ?? 20_000);
  const interval = options.intervalMs ?? 50;
  let heldCheckAt = started + HELD_CHECK_AFTER_MS;
  for (;;) {
    if (options.daemon?.hasExited()) throw new Error(`${describeExit(options.daemon)}${await heldBySomeoneElse(host, port)}`);
    if (await tryConnect(host, port, 1_000)) {
      if (options.daemon?.hasExited()) throw new Error(describeExit(options.daemon));
      return;
    }
    if (Date.now() >= heldCheckAt) {
      heldCheckAt = Date.now() + HELD_CHECK_EVERY_MS;
      const held = await heldBySomeoneElse(host, port);
      if (held !== '') throw new Error(`${options.daemon?.name ?? 'server'}: ${host}:${port} did not accept connections${held}`);
    }
    if (Date.now() > deadline) {
      const tail = options.daemon ? `; log ${options.daemon.logFile}:\n${options.daemon.logTail()}` : '';
      throw new Error(`${options.daemon?.name ?? 'server'}: ${host}:${port} did not accept connections in time${tail}`);
    }
    await sleep(interval);
  }
}

/** Waits until every port accepts connections. */
export async function waitForPorts(ports: readonly number[], options: WaitForPortOptions = {}): Promise<void> {
  await Promise.all(ports.map((port) => waitForPort(port, options)));
}

/** True when every thread of the process is stopped (or the process is gone). */
function allThreadsStopped(pid: number): boolean {
  let tasks: string[];
  try {
    tasks = readdirSync(`/proc/${pid}/task`);
  } catch {
    return true;
  }
  for (const task of tasks) {
    try {
      const stat = readFileSync(`/proc/${pid}/task/${task}/stat`, 'utf8');
      const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
      if (state !== 'T' && state !== 't' && state !== 'Z' && state !== 'X') return false;
    } catch {
      // thread went away
    }
  }
  return true;
}

async function waitAllStopped(pids: readonly number[], timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!pids.every(allThreadsStopped)) {
    if (Date.now() > deadline) throw new Error(`pause: processes ${pids.join(', ')} did not stop in time`);
    await sleep(2);
  }
}

/** True if a process with this PID exists and is not a zombie. */
export function isAlive(pid: number): boolean {
  let stat: string;
  try {
    stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return false;
  }
  // "pid (comm) S ..." — comm may contain spaces and parentheses; the state follows the last ')'.
  const state = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  return state !== 'Z' && state !== 'X';
}

export interface ProcessIdentity {
  readonly pid: number;
  /** Start time in clock ticks since boot (field 22 of /proc/PID/stat): tells a reused PID apart. */
  readonly startTime: string;
}

function statFields(pid: number): string[] | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // "pid (comm) S ppid ..." — comm may contain spaces; fields after it start with the state.
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

function sameProcess(id: ProcessIdentity): boolean {
  return isAlive(id.pid) && statFields(id.pid)?.[19] === id.startTime;
}

/** All live descendants of a process, with their start times (one scan of /proc). */
export function descendantsOf(pid: number): ProcessIdentity[] {
  const children = new Map<number, ProcessIdentity[]>();
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return [];
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    const fields = statFields(Number(entry));
    const ppid = Number(fields?.[1]);
    const startTime = fields?.[19];
    if (startTime === undefined || fields?.[0] === 'Z') continue;
    const list = children.get(ppid) ?? [];
    list.push({ pid: Number(entry), startTime });
    children.set(ppid, list);
  }
  const found: ProcessIdentity[] = [];
  const queue = [pid];
  for (let next = queue.shift(); next !== undefined; next = queue.shift()) {
    for (const child of children.get(next) ?? []) {
      found.push(child);
      queue.push(child.pid);
    }
  }
  return found;
}

/** Direct children of a process (from /proc). */
export function childPids(pid: number): number[] {
  const children: number[] = [];
  let entries: string[];
  try {
    entries = readdirSync('/proc');
  } catch {
    return children;
  }
  for (const entry of entries) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[1]) === pid) children.push(Number(entry));
    } catch {
      // process went away
    }
  }
  return children;
}

/** PIDs of the live processes whose command line contains `text` (e.g. an instance's temp dir). */
export function pidsMentioning(text: string): number[] {
  const pids: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const cmdline = readFileSync(`/proc/${entry}/cmdline`, 'utf8').replace(/\0/g, ' ');
      if (cmdline.includes(text) && isAlive(Number(entry))) pids.push(Number(entry));
    } catch {
      // process went away
    }
  }
  return pids;
}

/** Waits (polling) until none of the PIDs is alive; returns those still alive at the deadline. */
export async function waitGone(pids: readonly number[], timeoutMs = 5_000): Promise<number[]> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const alive = pids.filter(isAlive);
    if (alive.length === 0 || Date.now() > deadline) return alive;
    await sleep(50);
  }
}

export interface RunOptions {
  readonly input?: string | Buffer;
  readonly env?: NodeJS.ProcessEnv;
  readonly cwd?: string;
  readonly timeoutMs?: number;
}

export interface RunResult {
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs a short command to completion; rejects with its output if it fails. */
export function run(command: string, args: readonly string[], options: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, [...args], {
      cwd: options.cwd ?? process.cwd(),
      env: options.env ?? process.env,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (chunk: Buffer) => out.push(chunk));
    child.stderr.on('data', (chunk: Buffer) => err.push(chunk));
    const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs ?? 30_000);
    child.once('error', (error) => {
      clearTimeout(timer);
      reject(new Error(`${command}: ${error.message}`));
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      const stdout = Buffer.concat(out).toString('utf8');
      const stderr = Buffer.concat(err).toString('utf8');
      if (code === 0) resolve({ stdout, stderr });
      else {
        const how = signal ? `signal ${signal}` : `exit code ${String(code)}`;
        reject(new Error(`${command} ${args.join(' ')} failed with ${how}\n${stderr}${stdout}`.trimEnd()));
      }
    });
    child.stdin.on('error', () => undefined);
    child.stdin.end(options.input ?? '');
  });
}
