/**
 * mailfront's benchmark: real slapd and Dovecot backends, mailfront as its own process, and the
 * same workloads aimed straight at Dovecot, through mailfront and (when installed) through nginx's
 * mail proxy, in one run. Prints each figure with its ratio to the direct connection and to nginx,
 * checks the goals of docs/performance.md, and writes the results as JSON and Markdown.
 *
 * Run with `npm run bench` (bench/run.sh). Every workload is bounded by a count and a time; the
 * settings come from BENCH_* environment variables (see SETTINGS below).
 */
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdirSync, readdirSync, statSync, writeFileSync } from 'node:fs';
import { hostname, loadavg } from 'node:os';
import { join, resolve } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { fetchThroughput, loginLatency, loginLoop, median, noopRoundTrips, openIdleSessions, percentiles, type LoginTarget, type Percentiles } from './load.js';
import { CLOCK_TICKS_PER_S, cpuSeconds, fileLimit, systemCpuSeconds, machineDescription, machineTicks, openFiles, rssBytes, treeCpuSeconds, treeRssBytes } from './procstat.js';
import { formatSummary, summariseFile } from './profile-summary.js';
import { buildReport, type IdleFigure, type LoginFigure, type Mode, type Results } from './report.js';
import { combineRounds, inTurn } from './rounds.js';
import { measureIdle } from './idle.js';
import { canForceGc, forceGc } from './inspector.js';
import { freePort } from '../test/integration/servers/index.js';
import { PINNED_STEPS, allCpus, cpuPlan, pinTree, pinnedStep } from './pin.js';
import { MAILFRONT_MAIN, PROXY_NODE, directPorts, merge, nginxMissing, startBackends, startFloor, startInstantBackend, startMailfront, startNginx, type Backends, type BenchUser, type MailfrontProcess, type NginxProcess, type Stores } from './setup.js';

const REPO_ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));

function envInt(name: string, fallback: number): number {
  const v = process.env[name];
  if (v === undefined || v === '') return fallback;
  const n = Number(v);
  if (!Number.isFinite(n) || n < 0) throw new Error(`${name} must be a non-negative number, got ${v}`);
  return Math.floor(n);
}

/** mailfront's config with both caches off: every login an LDAP search and a bind (the cold-cache figures). */
const NO_CACHE = { directory: { auth_cache_ttl_ms: 0, entry_cache_ttl_ms: 0 } };

const PHASES = ['noop', 'fetch', 'imap', 'cpu', 'master-user', 'pop3', 'idle', 'idle-tls'] as const;
type Phase = (typeof PHASES)[number];

/** Every knob, with its environment variable and default. */
const SETTINGS = {
  users: envInt('BENCH_USERS', 1000),
  stores: envInt('BENCH_STORES', 2),
  concurrency: envInt('BENCH_CONCURRENCY', 20),
  logins: envInt('BENCH_LOGINS', 3000),
  /**
   * The warm login loops are split into this many rounds, the modes taking turns, in an order
   * reversed every other round (bench/rounds.ts): with an even count a steady drift cancels.
   */
  rounds: envInt('BENCH_ROUNDS', 4),
  /**
   * The same for the FETCHes. A round of 50 takes under a second, and the VM's speed changes
   * within seconds: with 3 rounds, the median round of one mode could fall in a slow spell and
   * another's in a fast one (direct rounds of 671, 730 and 1405 MB/s in one run).
   */
  fetchRounds: envInt('BENCH_FETCH_ROUNDS', 10),
  loginSeconds: envInt('BENCH_SECONDS', 20),
  /** Logins (of users kept out of the cold pass) that warm the JIT of a fresh mailfront. */
  jitWarmupLogins: envInt('BENCH_JIT_WARMUP', 100),
  /**
   * Untimed logins that bring the no-cache mailfront (every login a search and a bind) to its
   * steady state before its rounds. Behind a scripted backend its CPU per login fell from 3.8 s
   * per 1,000 in the first 100 logins to 2.9, 1.9 and 1.5 in the next blocks of 500, and stayed
   * at about 1.2 after 2,500: V8 compiling the LDAP path.
   */
  noCacheWarmupLogins: envInt('BENCH_NOCACHE_WARMUP', 3000),
  /**
   * Logins per mode, one at a time, for the login latency (in BENCH_ROUNDS rounds, the modes in
   * turn, after the rate rounds of the IMAP and POP3 steps), and the bound on them per mode.
   */
  latencyLogins: envInt('BENCH_LATENCY_LOGINS', 400),
  latencySeconds: envInt('BENCH_LATENCY_SECONDS', 40),
  /** The `cpu` step: rounds per proxy (the proxies take turns) and logins per round. */
  cpuRounds: envInt('BENCH_CPU_ROUNDS', 4),
  cpuLogins: envInt('BENCH_CPU_LOGINS', 2250),
  /**
   * Untimed logins per proxy before the `cpu` step's rounds (at least one per user: the caches,
   * nginx's auth_http connections, the JIT). After 1,000 (one per user, the step's warm-up until
   * 2026-12-08) mailfront's first round still cost 1.6 to 1.75 times the others; after 6,000, as
   * bench/compare.ts warms each process, the rounds are flat (docs/performance.md).
   */
  cpuWarmupLogins: envInt('BENCH_CPU_WARMUP', 6000),
  /** A p99 of 10,000 round trips rests on its 100 slowest; one of 2,000 on 20, and moved by ±0.3 ms between runs. */
  noops: envInt('BENCH_NOOPS', 10_000),
  /** The bound on the NOOP step: 10,000 round trips per mode take about 10 s on a quiet machine. */
  noopSeconds: envInt('BENCH_NOOP_SECONDS', 120),
  fetches: envInt('BENCH_FETCHES', 450),
  fetchBytes: envInt('BENCH_FETCH_BYTES', 10 * 1024 * 1024),
  idleSessions: envInt('BENCH_IDLE_SESSIONS', 10_000),
  /** Fewer by default: each TLS session costs a handshake on both sides, and the figure is per session. */
  idleTlsSessions: envInt('BENCH_IDLE_TLS_SESSIONS', 5_000),
  idleSeconds: envInt('BENCH_IDLE_SECONDS', 90),
  idleConcurrency: envInt('BENCH_IDLE_CONCURRENCY', 40),
  /** client_limit of the login backends' imap/pop3 processes (1: Dovecot's default, a process per session). */
  dovecotClientLimit: envInt('BENCH_DOVECOT_CLIENT_LIMIT', 1),
  /** The same for the backends of the idle-session measure, which must hold thousands of sessions. */
  idleDovecotClientLimit: envInt('BENCH_IDLE_DOVECOT_CLIENT_LIMIT', 500),
  nginxWorkers: envInt('BENCH_NGINX_WORKERS', 1),
  /** nginx's mail proxy_buffer (default: nginx's own, one memory page). */
  nginxProxyBuffer: process.env['BENCH_NGINX_PROXY_BUFFER'] ?? '',
  timeoutSeconds: envInt('BENCH_TIMEOUT_S', 1800),
  nginx: (process.env['BENCH_NGINX'] ?? 'auto') !== '0',
  profile: process.env['BENCH_PROFILE'] === '1',
  only: (process.env['BENCH_ONLY'] ?? '').split(',').map((s) => s.trim()).filter((s) => s !== ''),
  mailfrontConfig: JSON.parse(process.env['BENCH_MAILFRONT_CONFIG'] ?? '{}') as Record<string, unknown>,
  /** Extra node options for every mailfront process, e.g. "--max-semi-space-size=4 --trace-gc". */
  mailfrontNodeArgs: (process.env['BENCH_MAILFRONT_NODE_ARGS'] ?? '').split(/\s+/).filter((a) => a !== ''),
  outDir: resolve(process.env['BENCH_OUT_DIR'] ?? join(REPO_ROOT, 'bench/results')),
  label: process.env['BENCH_LABEL'] ?? '',
  /** Wait up to this long, before starting, for the machine to be quiet (under 25 % busy over 3 s). */
  waitQuietSeconds: envInt('BENCH_WAIT_QUIET_S', 0),
  /** Dovecot on the last CPU, everything else on the others, in the login-rate steps only (bench/pin.ts). */
  pin: process.env['BENCH_PIN'] === '1',
};
const CPU_PLAN = SETTINGS.pin ? cpuPlan() : null;
if (SETTINGS.pin && CPU_PLAN === null) throw new Error('BENCH_PIN=1 needs at least 2 CPUs');

for (const [name, n] of [['BENCH_ROUNDS', SETTINGS.rounds], ['BENCH_FETCH_ROUNDS', SETTINGS.fetchRounds], ['BENCH_CPU_ROUNDS', SETTINGS.cpuRounds]] as const) {
  // The order of the modes is reversed every other round: an odd count leaves one round's order unmatched.
  if (n > 1 && n % 2 === 1) process.stderr.write(`bench: ${name}=${n} is odd: a steady drift does not cancel between the modes (an even count does)\n`);
}
for (const p of SETTINGS.only) if (!(PHASES as readonly string[]).includes(p)) throw new Error(`BENCH_ONLY: unknown phase ${p} (phases: ${PHASES.join(', ')})`);
const want = (p: Phase): boolean => SETTINGS.only.length === 0 || SETTINGS.only.includes(p);

function say(text: string): void {
  process.stderr.write(`bench: ${text}\n`);
}

function version(command: string, args: string[]): string {
  // slapd -VV and nginx -v print to stderr.
  const r = spawnSync(command, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
  return `${r.stdout ?? ''}\n${r.stderr ?? ''}`.trim().split('\n')[0]?.trim() ?? '';
}

// ---------------------------------------------------------------------------------------------
// Counters sampled around each workload

interface Sampled<T> {
  readonly result: T;
  /** CPU seconds used during the workload, by process group. */
  readonly cpu: Record<string, number>;
  /** Share of the whole machine's CPU that was busy. */
  readonly machineBusy: number;
  /**
   * CPU not accounted to the benchmark's processes, in cores (busy machine time minus the groups
   * and this process): other work on the machine, kernel threads such as ksoftirqd doing
   * loopback network work, and time the hypervisor stole for other guests (/proc/stat counts it
   * as busy). High values mean the figures of that step are skewed.
   */
  readonly foreignCores: number;
}

async function sampled<T>(pids: Record<string, () => number>, work: () => Promise<T>): Promise<Sampled<T>> {
  const before = Object.fromEntries(Object.entries(pids).map(([k, f]) => [k, f()]));
  const m0 = machineTicks();
  const self0 = process.cpuUsage();
  const t0 = performance.now();
  const result = await work();
  // Give Dovecot's master a moment to reap the session processes that just ended, so their CPU
  // is counted (a child's CPU reaches the parent's cutime only once it is reaped).
  await sleep(300);
  const seconds = (performance.now() - t0) / 1000;
  const self = process.cpuUsage(self0);
  const m1 = machineTicks();
  const cpu = Object.fromEntries(Object.entries(pids).map(([k, f]) => [k, f() - (before[k] ?? 0)]));
  const busySeconds = (m1.busy - m0.busy) / CLOCK_TICKS_PER_S;
  const known = Object.entries(cpu).filter(([k]) => !k.includes('.')).reduce((n, [, v]) => n + v, 0) + (self.user + self.system) / 1e6;
  return {
    result,
    cpu,
    machineBusy: (m1.busy - m0.busy) / Math.max(1, m1.total - m0.total),
    foreignCores: Math.max(0, busySeconds - known) / Math.max(0.001, seconds),
  };
}

/**
 * With BENCH_WAIT_QUIET_S, waits (at most that long) until the machine is under 25 % busy over
 * 2 s: other work on the machine skews every figure, and the login rate most.
 */
async function quietGate(what: string): Promise<void> {
  if (SETTINGS.waitQuietSeconds <= 0) return;
  const start = Date.now();
  let lastSaid = 0;
  for (;;) {
    const m0 = machineTicks();
    await sleep(2000);
    const m1 = machineTicks();
    const busy = (m1.busy - m0.busy) / Math.max(1, m1.total - m0.total);
    if (busy < 0.25) {
      if (lastSaid > 0) say(`quiet after ${((Date.now() - start) / 1000).toFixed(0)} s`);
      return;
    }
    if (Date.now() - start > SETTINGS.waitQuietSeconds * 1000) {
      say(`the machine did not become quiet within ${SETTINGS.waitQuietSeconds} s (${(busy * 100).toFixed(0)} % busy): going on (${what})`);
      return;
    }
    if (Date.now() - lastSaid > 30_000) {
      say(`waiting for a quiet machine before ${what} (${(busy * 100).toFixed(0)} % busy)`);
      lastSaid = Date.now();
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Results

function per1000(cpu: Record<string, number>, logins: number): Record<string, number> {
  return Object.fromEntries(Object.entries(cpu).map(([k, v]) => [k, logins > 0 ? (v * 1000) / logins : NaN]));
}

// ---------------------------------------------------------------------------------------------

interface World {
  readonly backends: Backends;
  readonly nginx: NginxProcess | null;
  readonly users: readonly BenchUser[];
}

function directTarget(w: World, user: BenchUser, protocol: 'imap' | 'pop3'): LoginTarget {
  return { port: directPorts(w.backends, user)[protocol], user: user.user, password: user.password };
}

/** Process groups whose CPU is counted for a login workload. */
function cpuGroups(w: World, mailfront: MailfrontProcess | null): Record<string, () => number> {
  const groups: Record<string, () => number> = {
    dovecot: () => [...w.backends.stores.values()].reduce((n, d) => n + treeCpuSeconds(d.pid), 0),
    slapd: () => cpuSeconds(w.backends.slapd.pid),
  };
  if (mailfront !== null) {
    groups['mailfront'] = () => cpuSeconds(mailfront.pid);
    // The kernel part: on loopback a write also runs the receiver's TCP input, charged to the writer.
    groups['mailfront.sys'] = () => systemCpuSeconds(mailfront.pid);
  }
  if (w.nginx !== null) {
    const nginx = w.nginx;
    groups['nginx'] = () => treeCpuSeconds(nginx.master.pid);
    groups['authHttp'] = () => cpuSeconds(nginx.authHttp.pid);
  }
  return groups;
}

async function loginFigure(w: World, mailfront: MailfrontProcess | null, options: Parameters<typeof loginLoop>[0], extraGroups: Record<string, () => number> = {}): Promise<LoginFigure> {
  const s = await sampled({ ...cpuGroups(w, mailfront), ...extraGroups }, () => loginLoop(options));
  if (s.result.errors > 0) say(`  ${s.result.errors} errors; first: ${s.result.firstError ?? ''}`);
  return { loop: s.result, cpuPer1000: per1000(s.cpu, s.result.logins), machineBusy: s.machineBusy, foreignCores: s.foreignCores };
}

/** Login figures in rounds (inTurn); each mode's figure is the median of its rounds. */
async function loginRounds<K extends string>(modes: ReadonlyArray<readonly [K, () => Promise<LoginFigure>]>, rounds: number): Promise<Record<K, LoginFigure>> {
  const taken = await inTurn(modes, rounds, (mode, round, f) => say(`    round ${round}: ${describeLogin(mode, f)}`));
  const out = {} as Record<K, LoginFigure>;
  for (const [mode, figures] of taken) out[mode] = combineRounds(figures);
  return out;
}

/**
 * Login latency with one client at a time (loginLatency), the modes in turn in rounds as the rates
 * are; each mode's percentiles are of all its rounds' logins together. `target(i)` gives the
 * mode's i-th login; each round goes on where the mode's last one stopped.
 */
async function latencyRounds<K extends string>(protocol: 'imap' | 'pop3', modes: ReadonlyArray<readonly [K, (i: number) => LoginTarget]>): Promise<Record<K, Percentiles>> {
  const perRound = Math.ceil(SETTINGS.latencyLogins / SETTINGS.rounds);
  const offsets = new Map<K, number>();
  const taken = await inTurn(
    modes.map(([mode, target]) => [mode, async () => {
      const offset = offsets.get(mode) ?? 0;
      const r = await loginLatency({ protocol, maxLogins: perRound, maxSeconds: SETTINGS.latencySeconds / SETTINGS.rounds, target: (i) => target(offset + i) });
      offsets.set(mode, offset + r.logins + r.errors);
      return r;
    }] as const),
    SETTINGS.rounds,
    (mode, round, r) => say(`    latency round ${round}, ${mode}: ${r.logins} logins one at a time in ${r.seconds.toFixed(1)} s, p50 ${r.loginMs.p50.toFixed(2)} ms p99 ${r.loginMs.p99.toFixed(2)} ms${r.errors > 0 ? `; ${r.errors} errors, the first: ${r.firstError ?? ''}` : ''}`),
  );
  const out = {} as Record<K, Percentiles>;
  for (const [mode, rs] of taken) {
    out[mode] = percentiles(rs.flatMap((r) => r.loginSamplesMs ?? []));
    say(`  ${protocol.toUpperCase()} login latency, ${mode}, one login at a time: p50 ${out[mode].p50.toFixed(2)} ms, p99 ${out[mode].p99.toFixed(2)} ms, mean ${out[mode].mean.toFixed(2)} ms (${out[mode].n} logins)`);
  }
  return out;
}

function describeLogin(name: string, f: LoginFigure): string {
  const cpu = Object.entries(f.cpuPer1000).filter(([, v]) => v > 0.005).map(([k, v]) => `${k} ${v.toFixed(2)}`).join(', ');
  return `${name}: ${f.loop.logins} logins in ${f.loop.seconds.toFixed(1)} s = ${f.loop.perSecond.toFixed(0)}/s; login p50 ${f.loop.loginMs.p50.toFixed(2)} ms p99 ${f.loop.loginMs.p99.toFixed(2)} ms; errors ${f.loop.errors}; CPU s/1000 logins: ${cpu}; load generator ${(f.loop.loadCpuShare * 100).toFixed(0)} % of a core; machine ${(f.machineBusy * 100).toFixed(0)} % busy, ${f.foreignCores.toFixed(2)} cores busy outside the benchmark`;
}

/**
 * Memory per idle spliced session: RSS of `pid` (tree when `tree`) before and after opening
 * `count` sessions that LOGIN, SELECT and IDLE (bench/idle.ts).
 */
async function idleFigure(w: World, options: { pid: number; tree: boolean; port: number; tls: boolean; count: number; label: string; gc?: () => Promise<void> }): Promise<IdleFigure> {
  const target = (i: number): LoginTarget => {
    const u = w.users[i % w.users.length]!;
    return { port: options.port, user: u.user, password: u.password };
  };
  return measureIdle({
    count: options.count,
    label: options.label,
    rss: () => (options.tree ? treeRssBytes(options.pid) : rssBytes(options.pid)),
    ...(options.tree ? {} : { openFiles: () => openFiles(options.pid) }),
    open: (count, maxSeconds) => openIdleSessions({ count, concurrency: SETTINGS.idleConcurrency, maxSeconds, target, tls: options.tls }),
    maxSeconds: SETTINGS.idleSeconds,
    ...(options.gc !== undefined ? { gc: options.gc } : {}),
    say,
  });
}

// ---------------------------------------------------------------------------------------------

async function run(): Promise<void> {
  const startedAt = new Date();
  const machine = machineDescription();
  const limits = fileLimit();
  // mailfront holds two descriptors per spliced session; leave room for listeners, LDAP and logs.
  const idleCap = Math.floor((limits.soft - 256) / 2);
  const idleCount = Math.min(SETTINGS.idleSessions, idleCap);
  const idleTlsCount = Math.min(SETTINGS.idleTlsSessions, idleCap);
  if (idleCount < SETTINGS.idleSessions) {
    say(`the open-file limit is ${limits.soft} (hard ${limits.hard}): idle sessions capped at ${idleCount} (2 descriptors each in mailfront)`);
  }
  const versions = {
    node: PROXY_NODE === process.execPath ? process.version : `${process.version}, mailfront and the floor on ${execFileSync(PROXY_NODE, ['--version'], { encoding: 'utf8' }).trim()} (BENCH_PROXY_NODE)`,
    dovecot: version('/usr/sbin/dovecot', ['--version']),
    slapd: version('/usr/sbin/slapd', ['-VV']).replace(/^@\(#\) \$OpenLDAP: /, 'OpenLDAP ').replace(/ \(.*$/, ''),
    nginx: version('/usr/sbin/nginx', ['-v']),
    /** When the mailfront under test was built (its CLI's mtime): the commit below may have moved on since. */
    mailfrontBuiltAt: (() => {
      try {
        return statSync(MAILFRONT_MAIN).mtime.toISOString();
      } catch {
        return 'unknown';
      }
    })(),
    mailfront: (() => {
      try {
        return execFileSync('git', ['-C', REPO_ROOT, 'describe', '--always', '--dirty'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
      } catch {
        return 'unknown';
      }
    })(),
  };
  await quietGate('start');
  const loadBefore = loadavg();
  if ((loadBefore[0] ?? 0) > machine.cores * 0.5) say(`warning: the machine is busy (load average ${loadBefore.map((x) => x.toFixed(2)).join(' ')}): other work skews every figure`);
  say(`machine: ${machine.cores} × ${machine.cpu}, ${machine.memoryGiB} GiB, Linux ${machine.kernel}; ${versions.node}; ${versions.dovecot ? `Dovecot ${versions.dovecot}` : ''}`);

  // With BENCH_PIN=1, the login-rate steps run pinned and the others on every CPU (bench/pin.ts).
  // Every process the bench starts is its descendant (the daemons run in the foreground), so
  // moving this process's tree moves them all; the Dovecots are then moved to their own CPU.
  const pinnedSteps: string[] = [];
  const placeFor = (step: Phase): void => {
    if (CPU_PLAN === null) return;
    if (pinnedStep(step, true)) {
      pinTree(process.pid, CPU_PLAN.rest);
      for (const dovecot of backends.stores.values()) pinTree(dovecot.pid, CPU_PLAN.dovecot);
      pinnedSteps.push(step);
      say(`  pinned for ${step}: Dovecot on CPU ${CPU_PLAN.dovecot}, everything else (slapd included) on CPU ${CPU_PLAN.rest}`);
    } else {
      pinTree(process.pid, allCpus());
      say(`  not pinned for ${step}: every process on CPUs ${allCpus()}`);
    }
  };
  say(`starting slapd and ${SETTINGS.stores} Dovecot stores with ${SETTINGS.users} users`);
  const backends = await startBackends({
    userCount: SETTINGS.users,
    storeCount: SETTINGS.stores,
    fetchMessageBytes: SETTINGS.fetchBytes,
    dovecotClientLimit: SETTINGS.dovecotClientLimit,
  });
  if (CPU_PLAN !== null) say(`BENCH_PIN=1: the steps ${PINNED_STEPS.join(', ')} run with Dovecot on CPU ${CPU_PLAN.dovecot} and everything else on CPU ${CPU_PLAN.rest}; the others on every CPU`);
  let nginx: NginxProcess | null = null;
  const missing = nginxMissing();
  const mailfronts: MailfrontProcess[] = [];
  const results: Results = { noop: {}, fetch: {}, imap: {}, latency: { imap: {}, pop3: {} }, cpu: {}, pop3: {}, idle: {}, profiles: {} };
  const profileDir = join(SETTINGS.outDir, 'profiles');
  const nodeArgs = (name: string): string[] =>
    SETTINGS.profile ? ['--cpu-prof', `--cpu-prof-dir=${profileDir}`, `--cpu-prof-name=mailfront-${name}-${startedAt.getTime()}.cpuprofile`] : [];
  const mf = async (name: string, loginMode: 'replay' | 'master-user', stores?: Stores, extraNodeArgs: string[] = [], extraConfig: Record<string, unknown> = {}): Promise<MailfrontProcess> => {
    const p = await startMailfront(backends, { name, loginMode, extraConfig: merge(SETTINGS.mailfrontConfig, extraConfig), nodeArgs: [...SETTINGS.mailfrontNodeArgs, ...nodeArgs(name), ...extraNodeArgs], ...(stores !== undefined ? { stores } : {}) });
    mailfronts.push(p);
    return p;
  };
  const stopMailfront = async (p: MailfrontProcess, name: string): Promise<void> => {
    await p.stop();
    mailfronts.splice(mailfronts.indexOf(p), 1);
    if (SETTINGS.profile) {
      const file = readdirSync(profileDir).find((f) => f.startsWith(`mailfront-${name}-${startedAt.getTime()}`));
      if (file !== undefined) {
        results.profiles[name] = join(profileDir, file);
        say(`profile of mailfront (${name}): ${join(profileDir, file)}\n${formatSummary(summariseFile(join(profileDir, file)))}`);
      }
    }
  };
  try {
    if (missing !== null) {
      say(`nginx column skipped: ${missing}`);
    } else if (SETTINGS.nginx) {
      nginx = await startNginx(backends, { workers: SETTINGS.nginxWorkers, fileLimit: limits.soft, proxyBuffer: SETTINGS.nginxProxyBuffer });
    }
    const w: World = { backends, nginx, users: backends.users };
    const n = w.users.length;
    const userAt = (i: number): BenchUser => w.users[((i % n) + n) % n]!;
    const fetchUser = backends.fetchUser;

    // Every user logs in once, straight to Dovecot, before anything is measured: a user's first
    // SELECT creates the mailbox indexes, which would otherwise be charged to whichever mode ran first.
    const prewarm = await loginLoop({ protocol: 'imap', concurrency: SETTINGS.concurrency, maxLogins: n, maxSeconds: 120, target: (i) => directTarget(w, userAt(i), 'imap') });
    say(`backend warm-up: ${prewarm.logins} direct logins, one per user, in ${prewarm.seconds.toFixed(1)} s (${prewarm.errors} errors)`);
    if (prewarm.errors > 0) throw new Error(`backend warm-up failed: ${prewarm.firstError ?? ''}`);

    const main = await mf('main', 'replay');
    const modes: Array<[Mode, (protocol: 'imap' | 'pop3', user: BenchUser) => LoginTarget]> = [
      ['direct', (protocol, user) => directTarget(w, user, protocol)],
      ['mailfront', (protocol, user) => ({ port: protocol === 'imap' ? main.imapPort : main.pop3Port, user: user.user, password: user.password })],
      ...(nginx !== null
        ? [['nginx', (protocol: 'imap' | 'pop3', user: BenchUser) => ({ port: protocol === 'imap' ? nginx!.imapPort : nginx!.pop3Port, user: user.user, password: user.password })] as [Mode, (protocol: 'imap' | 'pop3', user: BenchUser) => LoginTarget]]
        : []),
    ];

    if (want('noop')) {
      placeFor('noop');
      await quietGate('noop');
      say(`NOOP round trips: ${SETTINGS.noops} NOOPs on one session per mode, one NOOP per mode a round in an order shuffled every round (after 200 untimed)`);
      // The floor relays through the same splice with nothing else in its process: what is left
      // between it and mailfront is mailfront's own doing (timers, probes, logs, GC).
      const floor = await startFloor(backends);
      try {
        await sleep(2000); // let the fresh mailfront settle
        const targets = {
          ...(Object.fromEntries(modes.map(([mode, target]) => [mode, target('imap', fetchUser)])) as Record<Mode, LoginTarget>),
          floor: { port: floor.port, user: fetchUser.user, password: fetchUser.password },
        };
        results.noop = await noopRoundTrips(targets, SETTINGS.noops, 200, SETTINGS.noopSeconds);
        const done = Math.min(...Object.values(results.noop).map((r) => r.ms.n));
        if (done < SETTINGS.noops) say(`  stopped after ${SETTINGS.noopSeconds} s (BENCH_NOOP_SECONDS): ${done} of ${SETTINGS.noops} NOOPs per mode`);
      } finally {
        await floor.stop();
      }
      for (const mode of [...modes.map(([m]) => m), 'floor'] as const) {
        const r = results.noop[mode]!.ms;
        say(`  ${mode}: p50 ${r.p50.toFixed(3)} ms, p99 ${r.p99.toFixed(3)} ms, mean ${r.mean.toFixed(3)} ms, max ${r.max.toFixed(3)} ms`);
      }
    }

    if (want('fetch')) {
      placeFor('fetch');
      await quietGate('fetch');
      const perRound = Math.ceil(SETTINGS.fetches / SETTINGS.fetchRounds);
      say(`FETCH: BODY.PEEK[] of a ${(SETTINGS.fetchBytes / 1048576).toFixed(0)} MiB message, ${SETTINGS.fetchRounds} rounds of ${perRound} per mode (after 1 untimed each), the modes in turn`);
      const rounds = await inTurn(
        modes.map(([mode, target]) => [mode, () => sampled(cpuGroups(w, main), () => fetchThroughput(target('imap', fetchUser), perRound, 10))] as const),
        SETTINGS.fetchRounds,
        (mode, round, s) => {
          const r = s.result;
          const cpu = Object.entries(s.cpu).filter(([, v]) => v > 0.005).map(([k, v]) => `${k} ${(v / r.seconds * 100).toFixed(0)} %`).join(', ');
          say(`  round ${round}, ${mode}: ${r.fetches} × ${(r.bytes / r.fetches / 1e6).toFixed(1)} MB in ${r.seconds.toFixed(2)} s = ${r.megabytesPerSecond.toFixed(0)} MB/s; CPU of a core: ${cpu}, load generator ${(r.loadCpuShare * 100).toFixed(0)} %; machine ${(s.machineBusy * 100).toFixed(0)} % busy, ${s.foreignCores.toFixed(2)} cores busy outside the benchmark`);
        },
      );
      for (const [mode, samples] of rounds) {
        const rs = samples.map((x) => x.result);
        const f = {
          fetches: rs.reduce((n, r) => n + r.fetches, 0),
          bytes: rs.reduce((n, r) => n + r.bytes, 0),
          seconds: rs.reduce((n, r) => n + r.seconds, 0),
          megabytesPerSecond: median(rs.map((r) => r.megabytesPerSecond)),
          loadCpuShare: median(rs.map((r) => r.loadCpuShare)),
          foreignCores: median(samples.map((x) => x.foreignCores)),
          rounds: rs.map((r) => r.megabytesPerSecond),
        };
        results.fetch[mode] = f;
        say(`  ${mode}: median of ${rs.length} rounds ${f.megabytesPerSecond.toFixed(0)} MB/s (rounds: ${f.rounds.map((x) => x.toFixed(0)).join(', ')})`);
      }
    }

    const loop = (protocol: 'imap' | 'pop3', target: (i: number) => LoginTarget, maxLogins = SETTINGS.logins) =>
      ({ protocol, concurrency: SETTINGS.concurrency, maxLogins, maxSeconds: SETTINGS.loginSeconds, target });
    const perRound = Math.ceil(SETTINGS.logins / SETTINGS.rounds);
    // Each mode's rounds start where its last one stopped, so the users keep cycling.
    const offsets = new Map<string, number>();
    /** One warm round of a mode, for loginRounds(): its next `perRound` users. */
    const roundOf = (protocol: 'imap' | 'pop3', mode: string, target: (u: BenchUser) => LoginTarget, proc: MailfrontProcess | null, group: Record<string, () => number> = {}) => async (): Promise<LoginFigure> => {
      const key = `${protocol} ${mode}`;
      const offset = offsets.get(key) ?? 0;
      const f = await loginFigure(w, proc, loop(protocol, (i) => target(userAt(offset + i)), perRound), group);
      offsets.set(key, offset + f.loop.logins + f.loop.errors);
      return f;
    };

    if (want('imap')) {
      placeFor('imap');
      await quietGate('imap');
      say(`IMAP logins (connect, LOGIN, SELECT INBOX, LOGOUT): ${SETTINGS.concurrency} clients; the warm figures in ${SETTINGS.rounds} rounds of ${Math.ceil(SETTINGS.logins / SETTINGS.rounds)} logins (or ${SETTINGS.loginSeconds} s), the modes in turn`);
      // A fresh mailfront: JIT warm-up with users kept out of the cold pass, then every other
      // user once (the cold pass: nothing cached), then the steady state (the warm rounds).
      const fresh = await mf('imap', 'replay');
      const warmup = Math.min(SETTINGS.jitWarmupLogins, Math.floor(n / 10));
      const coldUsers = n - warmup;
      await loginLoop({ ...loop('imap', (i) => ({ port: fresh.imapPort, ...account(userAt(coldUsers + i)) }), warmup) });
      const cold = await loginFigure(w, fresh, { ...loop('imap', (i) => ({ port: fresh.imapPort, ...account(userAt(i)) }), coldUsers), maxSeconds: Math.max(SETTINGS.loginSeconds, 60) });
      results.imap['mailfront-cold'] = cold;
      say(`  ${describeLogin('mailfront, cold (each user\'s first login)', cold)}`);
      // Every login a cold-cache one, in steady state: a mailfront with both caches off, so that
      // each login searches and binds, its JIT brought to the steady state by its own logins. The
      // cold pass above also pays for V8 compiling a fresh process's LDAP path.
      const nocache = await mf('imap-nocache', 'replay', undefined, [], NO_CACHE);
      await loginLoop({ ...loop('imap', (i) => ({ port: nocache.imapPort, ...account(userAt(i)) }), SETTINGS.noCacheWarmupLogins), maxSeconds: 180 });
      // The floor: the least a Node.js proxy does for the same logins (bench/floor.ts).
      const floor = await startFloor(backends);
      try {
        await loginLoop(loop('imap', (i) => ({ port: floor.port, ...account(userAt(coldUsers + i)) }), warmup));
        const at = (port: number) => (u: BenchUser): LoginTarget => ({ port, ...account(u) });
        const nx = nginx;
        const figures = await loginRounds([
          ['direct', roundOf('imap', 'direct', (u) => directTarget(w, u, 'imap'), null)],
          ['mailfront', roundOf('imap', 'mailfront', at(fresh.imapPort), fresh)],
          ['mailfront-nocache', roundOf('imap', 'mailfront-nocache', at(nocache.imapPort), nocache)],
          ...(nx !== null ? [['nginx', roundOf('imap', 'nginx', at(nx.imapPort), null)] as const] : []),
          ['floor', roundOf('imap', 'floor', at(floor.port), null, { floor: () => cpuSeconds(floor.pid) })],
        ] as const, SETTINGS.rounds);
        Object.assign(results.imap, figures);
        for (const [mode, f] of Object.entries(figures)) say(`  ${describeLogin(`${mode} (median of ${SETTINGS.rounds} rounds; latencies at saturation)`, f)}`);
        // What a login costs, apart from queueing: the rounds above keep 20 clients waiting.
        say(`IMAP login latency: ${SETTINGS.latencyLogins} logins per mode, one at a time, in ${SETTINGS.rounds} rounds (or ${SETTINGS.latencySeconds} s per mode), the modes in turn`);
        const user = (target: (u: BenchUser) => LoginTarget) => (i: number): LoginTarget => target(userAt(i));
        results.latency.imap = await latencyRounds('imap', [
          ['direct', user((u) => directTarget(w, u, 'imap'))],
          ['mailfront', user(at(fresh.imapPort))],
          ['mailfront-nocache', user(at(nocache.imapPort))],
          ...(nx !== null ? [['nginx', user(at(nx.imapPort))] as const] : []),
          ['floor', user(at(floor.port))],
        ] as const);
      } finally {
        await floor.stop();
        await stopMailfront(nocache, 'imap-nocache');
      }
      await stopMailfront(fresh, 'imap');
    }

    if (want('cpu')) {
      placeFor('cpu');
      await quietGate('cpu');
      // What each proxy itself spends on a login when nothing else competes for the CPU: behind
      // Dovecot the two cores are saturated and every process's CPU per login grows with the
      // contention. The proxies take turns, the order reversed every other round (bench/rounds.ts),
      // so a steady change in the VM's speed evens out over each pair of rounds; each figure is
      // the median of its rounds.
      say(`CPU per IMAP login against an instant backend (bench/instant-backend.ts): ${SETTINGS.cpuRounds} rounds of ${SETTINGS.cpuLogins} logins per proxy, the proxies in turn, after ${Math.max(w.users.length, SETTINGS.cpuWarmupLogins)} untimed each`);
      const instant = await startInstantBackend(backends);
      interface Proxy {
        readonly name: 'mailfront' | 'mailfront-nocache' | 'floor' | 'nginx';
        readonly port: number;
        readonly own: () => number;
        readonly sys: () => number;
        readonly auth: () => number;
        readonly stop: () => Promise<void>;
      }
      const proxies: Proxy[] = [];
      try {
        const addMailfront = async (name: 'mailfront' | 'mailfront-nocache', process: string, config: Record<string, unknown>): Promise<void> => {
          const m = await mf(process, 'replay', instant.stores, [], config);
          proxies.push({ name, port: m.imapPort, own: () => cpuSeconds(m.pid), sys: () => systemCpuSeconds(m.pid), auth: () => 0, stop: () => stopMailfront(m, process) });
        };
        await addMailfront('mailfront', 'cpu', {});
        // The cold-cache goal for the proxy alone.
        await addMailfront('mailfront-nocache', 'cpu-nocache', NO_CACHE);
        const fl = await startFloor(backends, instant.stores);
        proxies.push({ name: 'floor', port: fl.port, own: () => cpuSeconds(fl.pid), sys: () => systemCpuSeconds(fl.pid), auth: () => 0, stop: () => fl.stop() });
        if (nginx !== null) {
          const nx = await startNginx(backends, { workers: SETTINGS.nginxWorkers, fileLimit: limits.soft, proxyBuffer: SETTINGS.nginxProxyBuffer, stores: instant.stores });
          proxies.push({ name: 'nginx', port: nx.imapPort, own: () => treeCpuSeconds(nx.master.pid), sys: () => NaN, auth: () => cpuSeconds(nx.authHttp.pid), stop: () => nx.stop() });
        }
        // Untimed: every user at least once (mailfront's caches, nginx's auth_http connections),
        // then more until the JIT has settled (SETTINGS.cpuWarmupLogins).
        for (const p of proxies) await loginLoop({ ...loop('imap', (i) => ({ port: p.port, ...account(userAt(i)) }), Math.max(n, SETTINGS.cpuWarmupLogins)), maxSeconds: 120 });
        const rounds = await inTurn(
          proxies.map((p) => [p.name, async () => {
            const s = await sampled({ own: p.own, 'own.sys': p.sys, auth: p.auth, backend: () => cpuSeconds(instant.pid), directory: () => cpuSeconds(backends.slapd.pid) }, () => loginLoop(loop('imap', (i) => ({ port: p.port, ...account(userAt(i)) }), SETTINGS.cpuLogins)));
            const k = (x: number | undefined): number => ((x ?? NaN) * 1000) / Math.max(1, s.result.logins);
            return { loop: s.result, own: k(s.cpu['own']), sys: k(s.cpu['own.sys']), auth: k(s.cpu['auth']), backend: k(s.cpu['backend']), directory: k(s.cpu['directory']), foreignCores: s.foreignCores };
          }] as const),
          SETTINGS.cpuRounds,
          (name, round, r) =>
            say(`  round ${round}, ${name}: ${r.loop.logins} logins at ${r.loop.perSecond.toFixed(0)}/s; CPU s/1000 logins: ${name} ${r.own.toFixed(3)}${name === 'nginx' ? ` + auth_http ${r.auth.toFixed(3)}` : ` (system ${r.sys.toFixed(3)})`}${r.directory > 0.005 ? `, slapd ${r.directory.toFixed(3)}` : ''}, instant backend ${r.backend.toFixed(3)}; ${r.foreignCores.toFixed(2)} cores busy outside the benchmark${r.loop.errors > 0 ? `; ${r.loop.errors} errors, the first: ${r.loop.firstError ?? ''}` : ''}`),
        );
        for (const [name, rs] of rounds) {
          results.cpu[name] = {
            own: rs.map((r) => r.own),
            sys: rs.map((r) => r.sys),
            auth: rs.map((r) => r.auth),
            backend: rs.map((r) => r.backend),
            directory: rs.map((r) => r.directory),
            perSecond: rs.map((r) => r.loop.perSecond),
            errors: rs.reduce((n, r) => n + r.loop.errors, 0),
            foreignCores: rs.map((r) => r.foreignCores),
          };
        }
      } finally {
        for (const p of proxies) await p.stop().catch(() => undefined);
        await instant.stop();
      }
    }

    if (want('master-user')) {
      placeFor('master-user');
      await quietGate('master-user');
      say(`IMAP logins through a mailfront that logs in with a master user, beside direct ones${nginx !== null ? ' and nginx\'s' : ''}: ${SETTINGS.rounds} rounds of ${perRound}, in turn`);
      const master = await mf('master-user', 'master-user');
      // One untimed login per user (the JIT, the caches): the figure is a warm one, as mailfront's
      // in the IMAP step (before this pass, its first timed pass over the users went to LDAP).
      await loginLoop({ ...loop('imap', (i) => ({ port: master.imapPort, ...account(userAt(i)) }), n), maxSeconds: 120 });
      const figures = await loginRounds([
        ['direct', roundOf('imap', 'direct', (u) => directTarget(w, u, 'imap'), null)],
        ['mailfront-master-user', roundOf('imap', 'master-user', (u) => ({ port: master.imapPort, ...account(u) }), master)],
        // nginx has no master-user login: it replays the user's password, as in the IMAP step.
        // It takes its turn here so that mailfront's ratio to it is of the same minutes.
        ...(nginx !== null ? [['nginx', roundOf('imap', 'nginx-master-user', (u) => ({ port: nginx!.imapPort, ...account(u) }), null)] as const] : []),
      ] as const, SETTINGS.rounds);
      results.imap['mailfront-master-user'] = figures['mailfront-master-user'];
      results.imap['direct-master-user'] = figures.direct;
      if (nginx !== null) results.imap['nginx-master-user'] = figures.nginx;
      say(`  ${describeLogin(`mailfront, master-user login (median of ${SETTINGS.rounds} rounds)`, figures['mailfront-master-user'])}`);
      await stopMailfront(master, 'master-user');
    }

    if (want('pop3')) {
      placeFor('pop3');
      await quietGate('pop3');
      say(`POP3 logins (connect, USER, PASS, STAT, QUIT): ${SETTINGS.concurrency} clients, ${SETTINGS.rounds} rounds of ${Math.ceil(SETTINGS.logins / SETTINGS.rounds)} logins (or ${SETTINGS.loginSeconds} s), the modes in turn`);
      // An untimed pass, one login per user, makes mailfront's figure the warm one, as the IMAP
      // row's is (the cold cost is the IMAP row's).
      const mailfrontTarget = modes.find(([m]) => m === 'mailfront')![1];
      await loginLoop({ ...loop('pop3', (i) => mailfrontTarget('pop3', userAt(i)), n), maxSeconds: 120 });
      const figures = await loginRounds(modes.map(([mode, target]) => [mode, roundOf('pop3', mode, (u) => target('pop3', u), mode === 'mailfront' ? main : null)] as const), SETTINGS.rounds);
      Object.assign(results.pop3, figures);
      for (const [mode, f] of Object.entries(figures)) say(`  ${describeLogin(`${mode} (median of ${SETTINGS.rounds} rounds; latencies at saturation)`, f)}`);
      say(`POP3 login latency: ${SETTINGS.latencyLogins} logins per mode, one at a time, in ${SETTINGS.rounds} rounds (or ${SETTINGS.latencySeconds} s per mode), the modes in turn`);
      results.latency.pop3 = await latencyRounds('pop3', modes.map(([mode, target]) => [mode, (i: number) => target('pop3', userAt(i))] as const));
    }
    await stopMailfront(main, 'main');

    if (want('idle') || want('idle-tls')) {
      say(`idle spliced sessions: Dovecot instances whose processes serve ${SETTINGS.idleDovecotClientLimit} sessions each, a fresh mailfront and a fresh nginx for each measure`);
      const many = await backends.startManySessionStores(SETTINGS.idleDovecotClientLimit);
      if (!canForceGc()) say('no WebSocket client in this Node (run it with --experimental-websocket): mailfront\'s memory is measured without a forced GC');
      // mailfront's inspector, on loopback, lets the bench force a full GC before reading RSS.
      const gcArgs = (port: number): string[] => (canForceGc() ? [`--inspect=127.0.0.1:${port}`] : []);
      const gcOption = (port: number): { gc?: () => Promise<void> } => (canForceGc() ? { gc: () => forceGc(port) } : {});
      try {
        const idleNginx = async (work: (p: NginxProcess) => Promise<void>): Promise<void> => {
          if (nginx === null) return;
          const p = await startNginx(backends, { workers: SETTINGS.nginxWorkers, fileLimit: limits.soft, proxyBuffer: SETTINGS.nginxProxyBuffer, stores: many });
          try {
            await work(p);
          } finally {
            await p.stop();
          }
        };
        if (want('idle')) {
          placeFor('idle');
          await quietGate('idle');
          say(`plaintext: ${idleCount} sessions`);
          const inspect = await freePort();
          const p = await mf('idle', 'replay', many, gcArgs(inspect));
          results.idle.mailfront = await idleFigure(w, { pid: p.pid, tree: false, port: p.imapPort, tls: false, count: idleCount, label: 'mailfront', ...gcOption(inspect) });
          await stopMailfront(p, 'idle');
          await idleNginx(async (x) => {
            results.idle.nginx = await idleFigure(w, { pid: x.master.pid, tree: true, port: x.imapPort, tls: false, count: idleCount, label: 'nginx' });
          });
        }
        if (want('idle-tls')) {
          placeFor('idle-tls');
          await quietGate('idle-tls');
          say(`TLS (implicit TLS 1.3 on the client side, plaintext to Dovecot): ${idleTlsCount} sessions`);
          const inspect = await freePort();
          const p = await mf('idle-tls', 'replay', many, gcArgs(inspect));
          results.idle['mailfront-tls'] = await idleFigure(w, { pid: p.pid, tree: false, port: p.imapsPort, tls: true, count: idleTlsCount, label: 'mailfront TLS', ...gcOption(inspect) });
          await stopMailfront(p, 'idle-tls');
          await idleNginx(async (x) => {
            results.idle['nginx-tls'] = await idleFigure(w, { pid: x.master.pid, tree: true, port: x.imapsPort, tls: true, count: idleTlsCount, label: 'nginx TLS' });
          });
        }
      } finally {
        await many.stop();
      }
    }
  } finally {
    for (const p of [...mailfronts]) await p.stop().catch(() => undefined);
    await nginx?.stop().catch(() => undefined);
    await backends.stop();
  }

  const finishedAt = new Date();
  const command = process.env['BENCH_COMMAND'] ?? 'npm run bench';
  const report = buildReport(results, nginx !== null, pinnedSteps);
  const figures = [...Object.values(results.imap), ...Object.values(results.pop3)];
  const foreign = figures.length > 0 ? figures.reduce((n, f) => n + f.foreignCores, 0) / figures.length : NaN;
  const settings = { ...SETTINGS, pinnedSteps, idleSessionsMeasured: idleCount, idleTlsSessionsMeasured: idleTlsCount, fileLimit: limits };
  const doc = {
    command,
    label: SETTINGS.label,
    startedAt: startedAt.toISOString(),
    seconds: (finishedAt.getTime() - startedAt.getTime()) / 1000,
    host: hostname(),
    machine,
    loadAverage: { before: loadBefore, after: loadavg() },
    versions,
    settings,
    results,
    goals: report.goals,
  };
  mkdirSync(SETTINGS.outDir, { recursive: true });
  const stamp = startedAt.toISOString().replace(/[:.]/g, '-');
  const jsonFile = join(SETTINGS.outDir, `bench-${stamp}.json`);
  const mdFile = join(SETTINGS.outDir, `bench-${stamp}.md`);
  writeFileSync(jsonFile, `${JSON.stringify(doc, null, 2)}\n`);
  const markdown = [
    `Run ${startedAt.toISOString()} (${doc.seconds.toFixed(0)} s), \`${command}\`${SETTINGS.label ? `, ${SETTINGS.label}` : ''}; mailfront ${versions.mailfront} (built ${versions.mailfrontBuiltAt}); ${machine.cores} × ${machine.cpu}, Linux ${machine.kernel}; ${versions.node}; Dovecot ${versions.dovecot}; ${versions.slapd}; ${versions.nginx || 'no nginx'}.`,
    `${SETTINGS.waitQuietSeconds > 0 ? `Waited up to ${SETTINGS.waitQuietSeconds} s for a quiet machine before each step (BENCH_WAIT_QUIET_S). ` : 'No wait for a quiet machine (BENCH_WAIT_QUIET_S=0). '}Load average at the start ${loadBefore.map((x) => x.toFixed(2)).join(' ')}; CPU busy outside the benchmark's processes (other work, kernel threads) averaged ${Number.isNaN(foreign) ? '—' : foreign.toFixed(2)} cores during the login measures.${CPU_PLAN !== null ? ` BENCH_PIN=1: ${pinnedSteps.length > 0 ? `pinned (Dovecot on CPU ${CPU_PLAN.dovecot}, the load generator, slapd and the proxies on CPU ${CPU_PLAN.rest}) for ${pinnedSteps.join(', ')}` : 'no pinned step ran'}; every other step unpinned.` : ''}`,
    '',
    report.table,
    '',
    report.goalTable,
    '',
  ].join('\n');
  writeFileSync(mdFile, markdown);
  process.stdout.write(`\n${markdown}\n`);
  say(`results: ${jsonFile} and ${mdFile}`);
}

function account(u: BenchUser): { user: string; password: string } {
  return { user: u.user, password: u.password };
}
// ---------------------------------------------------------------------------------------------

const watchdog = setTimeout(() => {
  say(`the whole run took longer than BENCH_TIMEOUT_S=${SETTINGS.timeoutSeconds} s: stopping`);
  process.exit(2); // the harness's exit hook kills every server this process started
}, SETTINGS.timeoutSeconds * 1000);
watchdog.unref();

process.on('unhandledRejection', (error) => {
  say(`unhandled rejection: ${error instanceof Error ? error.stack : String(error)}`);
  process.exit(1);
});

run().then(
  () => process.exit(0),
  (error: unknown) => {
    say(`failed: ${error instanceof Error ? error.stack : String(error)}`);
    process.exit(1);
  },
);
