/**
 * The benchmark's workloads, each bounded by a count and a time: login loops with N concurrent
 * clients, sequential NOOP round trips, FETCH of a large message, and many idle sessions.
 * Each takes the port to aim at, so the same workload runs direct, through mailfront and through
 * nginx. Knows nothing of how the servers were started.
 */
import { performance } from 'node:perf_hooks';
import { MailClient, mustBeOk, quoted, type Protocol } from './client.js';
import { seededRandom } from '../test/seeded-random.js';

export interface Account {
  readonly user: string;
  readonly password: string;
}

/** Where one login goes: the port and the name/password to send. */
export interface LoginTarget {
  readonly port: number;
  readonly user: string;
  readonly password: string;
}

export interface LoginLoopOptions {
  readonly protocol: Protocol;
  readonly concurrency: number;
  readonly maxLogins: number;
  readonly maxSeconds: number;
  /** The account for the i-th login (0-based); callers cycle over their users. */
  readonly target: (i: number) => LoginTarget;
  readonly tls?: boolean;
  /** Keep every login's time (loginSamplesMs), to pool several loops' percentiles. */
  readonly keepSamples?: boolean;
}

export interface LoginLoopResult {
  readonly logins: number;
  readonly errors: number;
  readonly firstError?: string;
  readonly seconds: number;
  readonly perSecond: number;
  /** From connect to the tagged OK / +OK of the login, in ms. */
  readonly loginMs: Percentiles;
  /** Each login's time, in the order they ended (with keepSamples). */
  readonly loginSamplesMs?: readonly number[];
  /** From connect to the logout answer, in ms. */
  readonly sessionMs: Percentiles;
  /** CPU the load generator used, as a share of one core. */
  readonly loadCpuShare: number;
}

export interface Percentiles {
  readonly p50: number;
  readonly p99: number;
  readonly mean: number;
  readonly max: number;
  readonly n: number;
}

/** The median of a list (the mean of the middle two for an even count); NaN when empty. */
export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length === 0 ? NaN : s.length % 2 === 1 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** p50/p99/mean/max of a list of samples (nearest-rank). */
export function percentiles(samples: readonly number[]): Percentiles {
  if (samples.length === 0) return { p50: NaN, p99: NaN, mean: NaN, max: NaN, n: 0 };
  const sorted = [...samples].sort((a, b) => a - b);
  const rank = (q: number): number => sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))] ?? NaN;
  return {
    p50: rank(0.5),
    p99: rank(0.99),
    mean: sorted.reduce((a, b) => a + b, 0) / sorted.length,
    max: sorted[sorted.length - 1] ?? NaN,
    n: sorted.length,
  };
}

/** One IMAP session: connect, LOGIN, SELECT INBOX, LOGOUT. Returns [login ms, session ms]. */
async function imapLogin(t: LoginTarget, tls: boolean): Promise<[number, number]> {
  const start = performance.now();
  const c = await MailClient.open('imap', { port: t.port, tls });
  try {
    mustBeOk(await c.imap(`LOGIN ${quoted(t.user)} ${quoted(t.password)}`), `LOGIN ${t.user}`);
    const loggedIn = performance.now();
    mustBeOk(await c.imap('SELECT INBOX'), 'SELECT');
    mustBeOk(await c.imap('LOGOUT'), 'LOGOUT');
    return [loggedIn - start, performance.now() - start];
  } finally {
    c.destroy();
  }
}

/** One POP3 session: connect, USER, PASS, STAT, QUIT. */
async function pop3Login(t: LoginTarget, tls: boolean): Promise<[number, number]> {
  const start = performance.now();
  const c = await MailClient.open('pop3', { port: t.port, tls });
  try {
    mustBeOk(await c.pop3(`USER ${t.user}`), `USER ${t.user}`);
    mustBeOk(await c.pop3(`PASS ${t.password}`), `PASS ${t.user}`);
    const loggedIn = performance.now();
    mustBeOk(await c.pop3('STAT'), 'STAT');
    mustBeOk(await c.pop3('QUIT'), 'QUIT');
    return [loggedIn - start, performance.now() - start];
  } finally {
    c.destroy();
  }
}

/** Runs logins with `concurrency` clients until `maxLogins` are done or `maxSeconds` have passed. */
export async function loginLoop(options: LoginLoopOptions): Promise<LoginLoopResult> {
  const run = options.protocol === 'imap' ? imapLogin : pop3Login;
  const tls = options.tls ?? false;
  const loginMs: number[] = [];
  const sessionMs: number[] = [];
  let next = 0;
  let errors = 0;
  let firstError: string | undefined;
  const start = performance.now();
  const cpuStart = process.cpuUsage();
  const deadline = start + options.maxSeconds * 1000;
  const worker = async (): Promise<void> => {
    while (next < options.maxLogins && performance.now() < deadline) {
      const i = next++;
      try {
        const [l, s] = await run(options.target(i), tls);
        loginMs.push(l);
        sessionMs.push(s);
      } catch (error) {
        errors++;
        firstError ??= error instanceof Error ? error.message : String(error);
      }
    }
  };
  await Promise.all(Array.from({ length: options.concurrency }, worker));
  const seconds = (performance.now() - start) / 1000;
  const cpu = process.cpuUsage(cpuStart);
  return {
    logins: loginMs.length,
    errors,
    ...(firstError !== undefined ? { firstError } : {}),
    seconds,
    perSecond: loginMs.length / seconds,
    loginMs: percentiles(loginMs),
    ...(options.keepSamples === true ? { loginSamplesMs: loginMs } : {}),
    sessionMs: percentiles(sessionMs),
    loadCpuShare: (cpu.user + cpu.system) / 1e6 / seconds,
  };
}

/**
 * What a login costs when nothing queues: one client, each login after the last one ended, so
 * every time is the login's own path (connect, greeting, the login through the proxy or not),
 * not time spent waiting behind other clients. The rate loops run 20 clients at saturation, where
 * a login's time is mostly its wait in the queue: about 20 ÷ the rate, whatever the proxy costs.
 */
export function loginLatency(options: Omit<LoginLoopOptions, 'concurrency' | 'keepSamples'>): Promise<LoginLoopResult> {
  return loginLoop({ ...options, concurrency: 1, keepSamples: true });
}

/** A logged-in IMAP client with INBOX selected. */
export async function imapSession(t: LoginTarget, tls = false): Promise<MailClient> {
  const c = await MailClient.open('imap', { port: t.port, tls, timeoutMs: 60_000 });
  try {
    mustBeOk(await c.imap(`LOGIN ${quoted(t.user)} ${quoted(t.password)}`), `LOGIN ${t.user}`);
    mustBeOk(await c.imap('SELECT INBOX'), 'SELECT');
    return c;
  } catch (error) {
    c.destroy();
    throw error;
  }
}

export interface NoopResult {
  readonly ms: Percentiles;
}

/**
 * The order of the targets in each round of NOOPs: shuffled afresh every round (Fisher–Yates,
 * from a fixed seed, so that every run draws the same orders), so that each target follows each
 * other one about as often. Kept in one order, the target right after the direct connection paid
 * for it (presumably the direct session's Dovecot process still at work after its answer, on two
 * vCPUs): behind Dovecot, the proxy placed right after direct measured 0.15 to 0.47 ms more at
 * p99 than in the place after it, whichever proxy it was (docs/performance.md, NOOP round trip).
 */
export function noopOrders<K>(keys: readonly K[], seed = 1): () => K[] {
  const random = seededRandom(seed);
  return () => {
    const order = [...keys];
    for (let i = order.length - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [order[i], order[j]] = [order[j]!, order[i]!];
    }
    return order;
  };
}

/**
 * NOOP round trips on one session per target, interleaved (one NOOP on each target per round, in
 * an order drawn afresh each round by noopOrders(); `count` rounds after `warmup` untimed ones),
 * so that the machine's noise, and the work the NOOP before leaves behind, fall on every target
 * alike. Each NOOP waits for its answer before the next is sent. Stops after `maxSeconds`
 * (warm-up included) with the rounds done by then: each result's `ms.n` says how many.
 */
export async function noopRoundTrips<K extends string>(targets: Record<K, LoginTarget>, count: number, warmup: number, maxSeconds: number): Promise<Record<K, NoopResult>> {
  const keys = Object.keys(targets) as K[];
  const clients = new Map<K, MailClient>();
  const deadline = performance.now() + maxSeconds * 1000;
  const nextOrder = noopOrders(keys);
  try {
    for (const k of keys) clients.set(k, await imapSession(targets[k]));
    const samples = new Map<K, number[]>(keys.map((k) => [k, []]));
    for (let i = 0; i < warmup + count && performance.now() < deadline; i++) {
      for (const k of nextOrder()) {
        const t0 = performance.now();
        mustBeOk(await clients.get(k)!.imap('NOOP'), 'NOOP');
        if (i >= warmup) samples.get(k)!.push(performance.now() - t0);
      }
    }
    for (const c of clients.values()) mustBeOk(await c.imap('LOGOUT'), 'LOGOUT');
    return Object.fromEntries(keys.map((k) => [k, { ms: percentiles(samples.get(k)!) }])) as Record<K, NoopResult>;
  } finally {
    for (const c of clients.values()) c.destroy();
  }
}

export interface FetchResult {
  readonly fetches: number;
  readonly bytes: number;
  readonly seconds: number;
  /** 10^6 bytes per second. */
  readonly megabytesPerSecond: number;
  /** CPU the load generator used, as a share of one core (includes the untimed first fetch's login). */
  readonly loadCpuShare: number;
}

/** FETCH 1 BODY.PEEK[] `count` times (after one untimed fetch), bounded by `maxSeconds`. */
export async function fetchThroughput(t: LoginTarget, count: number, maxSeconds: number): Promise<FetchResult> {
  const c = await imapSession(t);
  try {
    const first = mustBeOk(await c.imap('FETCH 1 BODY.PEEK[]'), 'FETCH');
    if (first.literalBytes === 0) throw new Error('FETCH returned no literal: is the message there?');
    let bytes = 0;
    let fetches = 0;
    const cpuStart = process.cpuUsage();
    const start = performance.now();
    const deadline = start + maxSeconds * 1000;
    while (fetches < count && performance.now() < deadline) {
      bytes += mustBeOk(await c.imap('FETCH 1 BODY.PEEK[]'), 'FETCH').literalBytes;
      fetches++;
    }
    const seconds = (performance.now() - start) / 1000;
    const cpu = process.cpuUsage(cpuStart);
    mustBeOk(await c.imap('LOGOUT'), 'LOGOUT');
    return { fetches, bytes, seconds, megabytesPerSecond: bytes / 1e6 / seconds, loadCpuShare: (cpu.user + cpu.system) / 1e6 / seconds };
  } finally {
    c.destroy();
  }
}

export interface IdleSessions {
  readonly clients: MailClient[];
  readonly errors: number;
  readonly firstError?: string;
  readonly seconds: number;
  closeAll(): void;
}

/**
 * Opens `count` sessions that LOGIN, SELECT INBOX and IDLE, `concurrency` at a time, and keeps
 * them open. Stops opening after `maxSeconds`.
 */
export async function openIdleSessions(options: {
  readonly count: number;
  readonly concurrency: number;
  readonly maxSeconds: number;
  readonly target: (i: number) => LoginTarget;
  readonly tls: boolean;
}): Promise<IdleSessions> {
  const clients: MailClient[] = [];
  let next = 0;
  let errors = 0;
  let firstError: string | undefined;
  const start = performance.now();
  const deadline = start + options.maxSeconds * 1000;
  const worker = async (): Promise<void> => {
    while (next < options.count && performance.now() < deadline && errors < 100) {
      const i = next++;
      try {
        const c = await imapSession(options.target(i), options.tls);
        const idling = await c.idle();
        if (!idling.ok) throw new Error(`IDLE: ${idling.line}`);
        clients.push(c);
      } catch (error) {
        errors++;
        firstError ??= error instanceof Error ? error.message : String(error);
      }
    }
  };
  await Promise.all(Array.from({ length: options.concurrency }, worker));
  return {
    clients,
    errors,
    ...(firstError !== undefined ? { firstError } : {}),
    seconds: (performance.now() - start) / 1000,
    closeAll() {
      for (const c of clients.splice(0)) c.destroy();
    },
  };
}
