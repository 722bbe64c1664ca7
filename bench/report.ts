/**
 * The benchmark's results as bench/main.ts records them, and the table and goal verdicts it
 * prints from them. Pure: nothing here measures, so the report can be checked on made-up results.
 */
import { median, type FetchResult, type LoginLoopResult, type NoopResult, type Percentiles } from './load.js';
import { medianPairedRatio } from './rounds.js';

export interface LoginFigure {
  /** With rounds: logins, errors and seconds summed; the rate and latencies the rounds' medians. */
  readonly loop: LoginLoopResult;
  /** The rounds the figure was taken in, when it was (each mode's rounds alternate with the others'). */
  readonly rounds?: ReadonlyArray<{ readonly perSecond: number; readonly cpuPer1000: Record<string, number> }>;
  /** CPU seconds per 1,000 logins, by process group. */
  readonly cpuPer1000: Record<string, number>;
  readonly machineBusy: number;
  /** Cores busy outside the benchmark's processes (other work, kernel threads). */
  readonly foreignCores: number;
}

/** One proxy in the `cpu` step: CPU seconds per 1,000 logins against the instant backend, per round. */
export interface CpuFigure {
  /** The proxy's own processes (mailfront; the floor; nginx's master and workers), user + system. */
  readonly own: readonly number[];
  /** The system (kernel) part of `own`; not measured for nginx (several processes). */
  readonly sys: readonly number[];
  /** nginx's auth_http service (its LDAP work); 0 for the others, whose LDAP work is in `own`. */
  readonly auth: readonly number[];
  /** The instant backend's CPU, to show it stayed small. */
  readonly backend: readonly number[];
  /** slapd's CPU: none for a warm mailfront or the floor; a search and a bind per login for mailfront with no cache and for nginx's auth_http. */
  readonly directory: readonly number[];
  readonly perSecond: readonly number[];
  readonly errors: number;
  readonly foreignCores: readonly number[];
}

export interface IdleFigure {
  readonly sessions: number;
  readonly errors: number;
  readonly firstError?: string;
  readonly openSeconds: number;
  /** RSS before the forced GC that precedes the sessions (equal to rssBeforeBytes without one); only recorded. */
  readonly rssUncollectedBytes?: number;
  /**
   * RSS before opening the sessions, after the forced GC if there was one, and after opening
   * them, as it stands (garbage from their logins included): the "as found" pair.
   */
  readonly rssBeforeBytes: number;
  readonly rssAfterBytes: number;
  readonly bytesPerSession: number;
  /** RSS after a forced full GC (mailfront; equal to the above for nginx, which has no GC); before, the same as rssBeforeBytes. */
  readonly rssBeforeGcBytes: number;
  readonly rssAfterGcBytes: number;
  readonly bytesPerSessionAfterGc: number;
  /** Whether a full GC was forced before the "after GC" samples (mailfront with an inspector). */
  readonly forcedGc: boolean;
  readonly openFilesAfter: number;
}

export interface Results {
  noop: Partial<Record<Mode | 'floor', NoopResult>>;
  /** The median round's rate; `rounds` holds each round's. */
  fetch: Partial<Record<Mode, FetchResult & { readonly foreignCores: number; readonly rounds?: readonly number[] }>>;
  /**
   * Login latency with one client at a time (the rate loops' latencies are taken at saturation,
   * mostly queueing): each mode's logins of all its rounds together.
   */
  latency: {
    imap: Partial<Record<'direct' | 'mailfront' | 'mailfront-nocache' | 'nginx' | 'floor', Percentiles>>;
    pop3: Partial<Record<Mode, Percentiles>>;
  };
  /**
   * `direct-master-user` and `nginx-master-user`: the direct and nginx rounds taken in turn with
   * the master-user ones (nginx replaying the user's password: it has no master-user login).
   */
  imap: Partial<Record<'direct' | 'mailfront-cold' | 'mailfront-nocache' | 'mailfront' | 'mailfront-master-user' | 'direct-master-user' | 'nginx-master-user' | 'nginx' | 'floor', LoginFigure>>;
  cpu: Partial<Record<'mailfront' | 'mailfront-nocache' | 'floor' | 'nginx', CpuFigure>>;
  pop3: Partial<Record<Mode, LoginFigure>>;
  idle: Partial<Record<'mailfront' | 'mailfront-tls' | 'nginx' | 'nginx-tls', IdleFigure>>;
  profiles: Record<string, string>;
}

export type Mode = 'direct' | 'mailfront' | 'nginx';

export interface Goal {
  readonly goal: string;
  readonly measured: string;
  readonly met: boolean | null;
  readonly by: string;
}

/** Each mode's per-round values of a row, for the rounds' own ratios. */
interface PerRound {
  readonly direct?: readonly number[] | undefined;
  readonly mailfront?: readonly number[] | undefined;
  readonly nginx?: readonly number[] | undefined;
}

/**
 * `pinnedSteps`: the steps that ran with Dovecot on a CPU of its own (BENCH_PIN=1); the goals
 * measured in them say so, since a pinned rate answers another question than a shared one.
 */
export function buildReport(r: Results, haveNginx: boolean, pinnedSteps: readonly string[] = []): { table: string; goalTable: string; goals: Goal[] } {
  const rows: string[][] = [];
  const fmt = (x: number | undefined, digits = 0): string => (x === undefined || Number.isNaN(x) ? '—' : x.toFixed(digits));
  const ratio = (a: number | undefined, b: number | undefined): string => (a === undefined || b === undefined || !(b > 0) || Number.isNaN(a) ? '—' : `${(a / b).toFixed(2)}×`);
  /** Beside a ratio of medians, the median of the rounds' own ratios (each round's modes measured in turn). */
  const withPaired = (text: string, a: readonly number[] | undefined, b: readonly number[] | undefined): string => {
    const p = medianPairedRatio(a, b);
    return text === '—' || Number.isNaN(p) ? text : `${text} (rounds' median ${p.toFixed(2)}×)`;
  };
  const row = (measure: string, direct: number | undefined, mailfront: number | undefined, nginx: number | undefined, digits: number, rounds: PerRound = {}): void => {
    rows.push([
      measure,
      fmt(direct, digits),
      fmt(mailfront, digits),
      haveNginx ? fmt(nginx, digits) : 'n/a',
      withPaired(ratio(mailfront, direct), rounds.mailfront, rounds.direct),
      haveNginx ? withPaired(ratio(mailfront, nginx), rounds.mailfront, rounds.nginx) : 'n/a',
    ]);
  };
  const rates = (f: LoginFigure | undefined): readonly number[] | undefined => f?.rounds?.map((x) => x.perSecond);
  const cpuOf = (f: LoginFigure | undefined, keys: string[]): number | undefined => (f === undefined ? undefined : keys.reduce((n, k) => n + (f.cpuPer1000[k] ?? 0), 0));
  const im = r.imap;
  row('IMAP logins/s (connect, LOGIN, SELECT, LOGOUT; mailfront warm)', im.direct?.loop.perSecond, im.mailfront?.loop.perSecond, im.nginx?.loop.perSecond, 0, { direct: rates(im.direct), mailfront: rates(im.mailfront), nginx: rates(im.nginx) });
  row('IMAP logins/s, mailfront with no cache (every login an LDAP search and bind; steady state)', im.direct?.loop.perSecond, im['mailfront-nocache']?.loop.perSecond, im.nginx?.loop.perSecond, 0, { direct: rates(im.direct), mailfront: rates(im['mailfront-nocache']), nginx: rates(im.nginx) });
  row('IMAP logins/s, a fresh mailfront\'s first logins (each user once; its JIT still compiling; taken before the rounds, so its ratios are to direct and nginx of later minutes)', im.direct?.loop.perSecond, im['mailfront-cold']?.loop.perSecond, im.nginx?.loop.perSecond, 0);
  // Direct and nginx from the master-user rounds, not the IMAP step's, minutes earlier; nginx
  // there replays the user's password (it has no master-user login). No such rounds: no ratio.
  row('IMAP logins/s, mailfront master-user login (direct and nginx: the same rounds; nginx replays the password)', im['direct-master-user']?.loop.perSecond, im['mailfront-master-user']?.loop.perSecond, im['nginx-master-user']?.loop.perSecond, 0, { direct: rates(im['direct-master-user']), mailfront: rates(im['mailfront-master-user']), nginx: rates(im['nginx-master-user']) });
  const li = r.latency.imap;
  row('IMAP login latency p50, ms (connect → LOGIN OK; one login at a time)', li.direct?.p50, li.mailfront?.p50, li.nginx?.p50, 2);
  row('IMAP login latency p99, ms (one login at a time)', li.direct?.p99, li.mailfront?.p99, li.nginx?.p99, 2);
  row('  the same, mailfront with no cache (an LDAP search and bind per login): p50, ms', li.direct?.p50, li['mailfront-nocache']?.p50, li.nginx?.p50, 2);
  row('  the same, mailfront with no cache: p99, ms', li.direct?.p99, li['mailfront-nocache']?.p99, li.nginx?.p99, 2);
  row('  the floor (bench/floor.ts): p50, ms', li.direct?.p50, li.floor?.p50, undefined, 2);
  row(`  at saturation, in the rate loops (mostly queueing: about clients ÷ rate): p50, ms`, im.direct?.loop.loginMs.p50, im.mailfront?.loop.loginMs.p50, im.nginx?.loop.loginMs.p50, 2);
  row('  at saturation: p99, ms', im.direct?.loop.loginMs.p99, im.mailfront?.loop.loginMs.p99, im.nginx?.loop.loginMs.p99, 2);
  row('proxy CPU s per 1,000 IMAP logins, cold cache (mailfront with no cache; nginx: + auth_http)', undefined, cpuOf(im['mailfront-nocache'], ['mailfront']), cpuOf(im.nginx, ['nginx', 'authHttp']), 2);
  row('  the same, a fresh mailfront\'s first logins', undefined, cpuOf(im['mailfront-cold'], ['mailfront']), undefined, 2);
  row('proxy CPU s per 1,000 IMAP logins, warm (nginx: + auth_http)', undefined, cpuOf(im.mailfront, ['mailfront']), cpuOf(im.nginx, ['nginx', 'authHttp']), 2);
  row('  the floor: a minimal Node.js relay (bench/floor.ts), CPU s per 1,000 IMAP logins', undefined, cpuOf(im.floor, ['floor']), undefined, 2);
  const cpuMedian = (f: CpuFigure | undefined, part: 'own' | 'sys' | 'auth' | 'both'): number | undefined =>
    f === undefined ? undefined : part === 'both' ? median(f.own.map((x, i) => x + (f.auth[i] ?? 0))) : median(f[part]);
  row(`proxy CPU s per 1,000 IMAP logins, instant backend (median of ${r.cpu.mailfront?.own.length ?? '—'} rounds; nginx: workers only)`, undefined, cpuMedian(r.cpu.mailfront, 'own'), cpuMedian(r.cpu.nginx, 'own'), 3);
  row('  the same, nginx + auth_http', undefined, cpuMedian(r.cpu.mailfront, 'own'), cpuMedian(r.cpu.nginx, 'both'), 3);
  row('  the floor (bench/floor.ts), instant backend', undefined, cpuMedian(r.cpu.floor, 'own'), undefined, 3);
  row('  mailfront with no cache (every login an LDAP search and bind), instant backend; nginx + auth_http', undefined, cpuMedian(r.cpu['mailfront-nocache'], 'own'), cpuMedian(r.cpu.nginx, 'both'), 3);
  row('slapd CPU s per 1,000 IMAP logins (warm)', cpuOf(im.direct, ['slapd']), cpuOf(im.mailfront, ['slapd']), cpuOf(im.nginx, ['slapd']), 2);
  row('Dovecot CPU s per 1,000 IMAP logins (warm)', cpuOf(im.direct, ['dovecot']), cpuOf(im.mailfront, ['dovecot']), cpuOf(im.nginx, ['dovecot']), 2);
  const p3 = r.pop3;
  row('POP3 logins/s (connect, USER, PASS, STAT, QUIT; mailfront warm)', p3.direct?.loop.perSecond, p3.mailfront?.loop.perSecond, p3.nginx?.loop.perSecond, 0, { direct: rates(p3.direct), mailfront: rates(p3.mailfront), nginx: rates(p3.nginx) });
  const lp = r.latency.pop3;
  row('POP3 login latency p50, ms (connect → PASS +OK; one login at a time)', lp.direct?.p50, lp.mailfront?.p50, lp.nginx?.p50, 2);
  row('POP3 login latency p99, ms (one login at a time)', lp.direct?.p99, lp.mailfront?.p99, lp.nginx?.p99, 2);
  row('  at saturation, in the rate loops (mostly queueing): p50, ms', p3.direct?.loop.loginMs.p50, p3.mailfront?.loop.loginMs.p50, p3.nginx?.loop.loginMs.p50, 2);
  row('  at saturation: p99, ms', p3.direct?.loop.loginMs.p99, p3.mailfront?.loop.loginMs.p99, p3.nginx?.loop.loginMs.p99, 2);
  row('proxy CPU s per 1,000 POP3 logins (nginx: + auth_http)', undefined, cpuOf(p3.mailfront, ['mailfront']), cpuOf(p3.nginx, ['nginx', 'authHttp']), 2);
  row('FETCH of a 10 MiB message, MB/s', r.fetch.direct?.megabytesPerSecond, r.fetch.mailfront?.megabytesPerSecond, r.fetch.nginx?.megabytesPerSecond, 0, { direct: r.fetch.direct?.rounds, mailfront: r.fetch.mailfront?.rounds, nginx: r.fetch.nginx?.rounds });
  row('NOOP round trip p50, ms', r.noop.direct?.ms.p50, r.noop.mailfront?.ms.p50, r.noop.nginx?.ms.p50, 3);
  row('NOOP round trip p99, ms', r.noop.direct?.ms.p99, r.noop.mailfront?.ms.p99, r.noop.nginx?.ms.p99, 3);
  row('  the floor: a minimal Node.js relay (bench/floor.ts), NOOP p50, ms', r.noop.direct?.ms.p50, r.noop.floor?.ms.p50, undefined, 3);
  row('  the floor, NOOP p99, ms', r.noop.direct?.ms.p99, r.noop.floor?.ms.p99, undefined, 3);
  const kib = (f: IdleFigure | undefined): number | undefined => (f === undefined ? undefined : f.bytesPerSession / 1024);
  // nginx has no GC: its RSS is its figure in both rows. mailfront's "after GC" needs a forced GC.
  const kibGc = (f: IdleFigure | undefined, gcBased: boolean): number | undefined =>
    f === undefined || (gcBased && !f.forcedGc) ? undefined : f.bytesPerSessionAfterGc / 1024;
  row(`memory per idle spliced session, KiB RSS (plaintext, ${r.idle.mailfront?.sessions ?? '—'} sessions; mailfront after a full GC)`, undefined, kibGc(r.idle.mailfront, true), kibGc(r.idle.nginx, false), 2);
  row('  same, RSS as found (from the same base; garbage from the sessions\' logins included)', undefined, kib(r.idle.mailfront), kib(r.idle.nginx), 2);
  row(`memory per idle spliced session, KiB RSS (TLS, ${r.idle['mailfront-tls']?.sessions ?? '—'} sessions; mailfront after a full GC)`, undefined, kibGc(r.idle['mailfront-tls'], true), kibGc(r.idle['nginx-tls'], false), 2);
  row('  same, RSS as found', undefined, kib(r.idle['mailfront-tls']), kib(r.idle['nginx-tls']), 2);
  const header = ['measure', 'direct', 'mailfront', 'nginx', 'mailfront ÷ direct', 'mailfront ÷ nginx'];
  const md = (cells: string[][]): string => [
    `| ${header.join(' | ')} |`,
    `| ${header.map((_, i) => (i === 0 ? '---' : '---:')).join(' | ')} |`,
    ...cells.map((c) => `| ${c.join(' | ')} |`),
  ].join('\n');

  const goals: Goal[] = [];
  /** Met on the ratio of the medians; the median of the rounds' ratios is shown beside it. */
  const atLeast = (goal: string, a: number | undefined, b: number | undefined, min: number, aRounds?: readonly number[], bRounds?: readonly number[]): void => {
    if (a === undefined || b === undefined) return void goals.push({ goal, measured: '—', met: null, by: 'not measured' });
    const x = a / b;
    goals.push({ goal, measured: withPaired(`${x.toFixed(2)}×`, aRounds, bRounds), met: x >= min, by: x >= min ? `+${((x / min - 1) * 100).toFixed(0)} %` : `${((x / min - 1) * 100).toFixed(0)} % (needs ${(min * b).toFixed(0)}, has ${a.toFixed(0)})` });
  };
  const atMost = (goal: string, v: number | undefined, max: number, unit: string, digits: number): void => {
    if (v === undefined || Number.isNaN(v)) return void goals.push({ goal, measured: '—', met: null, by: 'not measured' });
    goals.push({ goal, measured: `${v.toFixed(digits)} ${unit}`, met: v <= max, by: v <= max ? `${(max - v).toFixed(digits)} ${unit} to spare` : `${(v - max).toFixed(digits)} ${unit} over (${(v / max).toFixed(2)}× the goal)` });
  };
  atLeast('IMAP login rate ≥ 0.95× direct', im.mailfront?.loop.perSecond, im.direct?.loop.perSecond, 0.95, rates(im.mailfront), rates(im.direct));
  atLeast('IMAP login rate ≥ 1.2× nginx', im.mailfront?.loop.perSecond, im.nginx?.loop.perSecond, 1.2, rates(im.mailfront), rates(im.nginx));
  atLeast('POP3 login rate ≥ 0.95× direct', p3.mailfront?.loop.perSecond, p3.direct?.loop.perSecond, 0.95, rates(p3.mailfront), rates(p3.direct));
  atLeast('POP3 login rate ≥ 1.2× nginx', p3.mailfront?.loop.perSecond, p3.nginx?.loop.perSecond, 1.2, rates(p3.mailfront), rates(p3.nginx));
  atMost('CPU per 1,000 IMAP logins, cold cache ≤ 0.6 s', cpuOf(im['mailfront-nocache'], ['mailfront']), 0.6, 's', 2);
  atMost('CPU per 1,000 IMAP logins, cold cache ≤ 0.6 s (instant backend: the proxy alone)', cpuMedian(r.cpu['mailfront-nocache'], 'own'), 0.6, 's', 3);
  atMost('CPU per 1,000 IMAP logins, cold cache ≤ 0.6 s (a fresh mailfront\'s first logins)', cpuOf(im['mailfront-cold'], ['mailfront']), 0.6, 's', 2);
  atMost('CPU per 1,000 IMAP logins, warm cache ≤ 0.3 s', cpuOf(im.mailfront, ['mailfront']), 0.3, 's', 2);
  atMost('CPU per 1,000 IMAP logins, warm cache ≤ 0.3 s (instant backend: the proxy alone)', cpuMedian(r.cpu.mailfront, 'own'), 0.3, 's', 3);
  atLeast('FETCH ≥ 0.9× direct', r.fetch.mailfront?.megabytesPerSecond, r.fetch.direct?.megabytesPerSecond, 0.9, r.fetch.mailfront?.rounds, r.fetch.direct?.rounds);
  atLeast('FETCH ≥ 1.25× nginx', r.fetch.mailfront?.megabytesPerSecond, r.fetch.nginx?.megabytesPerSecond, 1.25, r.fetch.mailfront?.rounds, r.fetch.nginx?.rounds);
  // The issue asks for 9 KB: 9,000 bytes, not 9 KiB (9,216), though the table gives KiB.
  const bytes = (kibs: number | undefined): number | undefined => (kibs === undefined ? undefined : kibs * 1024);
  atMost('memory per idle plaintext session ≤ 9 KB, 9,000 bytes (after a full GC)', bytes(kibGc(r.idle.mailfront, true)), 9000, 'bytes', 0);
  atMost('memory per idle plaintext session ≤ 9 KB, 9,000 bytes (RSS as found)', bytes(kib(r.idle.mailfront)), 9000, 'bytes', 0);
  atMost('NOOP p99 added over direct ≤ 0.2 ms', r.noop.mailfront !== undefined && r.noop.direct !== undefined ? r.noop.mailfront.ms.p99 - r.noop.direct.ms.p99 : undefined, 0.2, 'ms', 3);
  // Which step each goal's figure comes from, for the pinned ones.
  const stepOf = (goal: string): string => (goal.startsWith('IMAP login rate') || (goal.startsWith('CPU per 1,000 IMAP logins') && !goal.includes('instant backend')) ? 'imap' : goal.startsWith('POP3') ? 'pop3' : '');
  for (const [i, g] of goals.entries()) {
    if (pinnedSteps.includes(stepOf(g.goal))) goals[i] = { ...g, goal: `${g.goal} [pinned: Dovecot on a CPU of its own]` };
  }
  const goalTable = [
    '| goal | measured | met | margin |',
    '| --- | ---: | :---: | --- |',
    ...goals.map((g) => `| ${g.goal} | ${g.measured} | ${g.met === null ? '—' : g.met ? 'yes' : '**no**'} | ${g.by} |`),
  ].join('\n');
  return { table: md(rows), goalTable, goals };
}
