/**
 * Two builds of mailfront side by side: CPU per warm IMAP login (cold with COMPARE_CACHE=off) of this build against another
 * (a git ref, built into a temporary worktree), both in front of the instant backend
 * (bench/instant-backend.ts; Dovecot with COMPARE_BACKEND=dovecot) and the same slapd, loaded at
 * the same time in rounds.
 *
 * Why: the VM's speed drifts by tens of per cent within minutes, more than most single changes
 * save, so a figure from `npm run bench` before a change and one after say little about the
 * change. Here both builds take logins at the same time for a few seconds a round: whatever the
 * machine does in a round, it does to both.
 *
 * Each build runs as several processes (COMPARE_PROCESSES, default 3): two processes of the same
 * build kept CPU figures per login up to 13 % apart for their whole life (presumably what V8
 * made of their first logins), so one process per build can show a difference that is not
 * there. The result is the ratio of the two builds' means of their processes' medians, with
 * every process's median printed beside it, and the median of the rounds' ratios with their
 * range and a bootstrap interval of that median (the spread the result is read against).
 *
 * Usage: npm run build && node dist/bench/compare.js REF [ROUNDS] [SECONDS]
 *        (REF: any git ref, e.g. HEAD~1 or main; default 12 rounds of 3 s)
 * COMPARE_PROCESSES: processes per build (1 to 6).
 * COMPARE_NODE_ARGS: node options for this build's mailfront only, e.g. `--max-semi-space-size=2`;
 * with REF=HEAD it measures what an option costs.
 * COMPARE_NODE: the node binary for this build's mailfront only (the other build runs on the
 * bench's node, or BENCH_PROXY_NODE); with REF=HEAD it measures another Node.js release.
 * COMPARE_WARMUP_LOGINS: untimed logins per process before the rounds (default 6,000); a few
 * hundred, with short rounds, shows what a change costs a fresh process while V8 compiles it.
 * COMPARE_BACKEND=dovecot: both builds in front of the bench's Dovecot instead of the instant
 * backend: what a change costs where Dovecot takes most of the two cores (bench/main.ts's login
 * loops), each login a Dovecot process's.
 * COMPARE_CACHE=off: cold logins instead of warm ones: both builds' mailfront with both caches off
 * (directory.auth_cache_ttl_ms and entry_cache_ttl_ms 0, as the bench's no-cache mailfront), so
 * that every timed login is an LDAP search and a bind on slapd; what a change to that path costs.
 */
import { execFileSync } from 'node:child_process';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loginLoop, median } from './load.js';
import { cpuSeconds, machineTicks } from './procstat.js';
import { describeRoundRatios } from './rounds.js';
import { startBackends, startInstantBackend, startMailfront, type MailfrontProcess } from './setup.js';
import { buildRef } from './worktree.js';

const REPO_ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const [ref, roundsArg, secondsArg] = process.argv.slice(2);
const ROUNDS = Number(roundsArg ?? 12);
const ROUND_SECONDS = Number(secondsArg ?? 3);
const THIS_NODE_ARGS = (process.env['COMPARE_NODE_ARGS'] ?? '').split(/\s+/).filter((a) => a !== '');
const THIS_NODE = process.env['COMPARE_NODE'] || undefined;
if (ref === undefined || ref.startsWith('-') || !(ROUNDS >= 1 && ROUNDS <= 100) || !(ROUND_SECONDS > 0 && ROUND_SECONDS <= 60)) {
  process.stderr.write('usage: node dist/bench/compare.js REF [ROUNDS (1-100)] [SECONDS per round (at most 60)]\n');
  process.exit(2);
}
const CACHE = process.env['COMPARE_CACHE'] ?? 'on';
if (CACHE !== 'on' && CACHE !== 'off') {
  process.stderr.write('compare: COMPARE_CACHE must be on (warm logins, the default) or off (every login a search and a bind)\n');
  process.exit(2);
}
const COLD = CACHE === 'off';
const BACKEND = process.env['COMPARE_BACKEND'] ?? 'instant';
if (BACKEND !== 'instant' && BACKEND !== 'dovecot') {
  process.stderr.write('compare: COMPARE_BACKEND must be instant (the default) or dovecot\n');
  process.exit(2);
}
const BEHIND_DOVECOT = BACKEND === 'dovecot';
/** What the timed logins are, in what is printed. */
const KIND = COLD ? 'cold (no cache: a search and a bind each)' : 'warm';
/**
 * Untimed logins per process first, all processes at once: the JIT and the auth cache warm up.
 * Cold, the same count brings the LDAP path to its steady state (bench/main.ts's no-cache
 * mailfront needs about 2,500: V8 compiling it).
 */
const WARMUP_LOGINS = Number(process.env['COMPARE_WARMUP_LOGINS'] ?? 6000);
if (!(Number.isInteger(WARMUP_LOGINS) && WARMUP_LOGINS >= 0 && WARMUP_LOGINS <= 100_000)) {
  process.stderr.write('compare: COMPARE_WARMUP_LOGINS must be a whole number from 0 to 100000\n');
  process.exit(2);
}
const PROCESSES = Number(process.env['COMPARE_PROCESSES'] ?? 3);
if (!(Number.isInteger(PROCESSES) && PROCESSES >= 1 && PROCESSES <= 6)) {
  process.stderr.write('compare: COMPARE_PROCESSES must be a whole number from 1 to 6\n');
  process.exit(2);
}
/** Clients per process: about 20 in all, as in the bench's login loops. */
const CONCURRENCY = Math.max(2, Math.round(10 / PROCESSES));

function say(text: string): void {
  process.stderr.write(`compare: ${text}\n`);
}

const other = buildRef(REPO_ROOT, ref, say);
const backends = await startBackends({ userCount: 1000, storeCount: 2, fetchMessageBytes: 1000, dovecotClientLimit: 1 });
const instant = await startInstantBackend(backends);
const started: MailfrontProcess[] = [];
try {
  // startMailfront's own config keeps the auth cache for 900 s: every timed login is a cache hit.
  // Cold, both caches are off as in bench/main.ts's no-cache mailfront: every login asks slapd.
  const extraConfig = COLD ? { directory: { auth_cache_ttl_ms: 0, entry_cache_ttl_ms: 0 } } : {};
  const options = { loginMode: 'replay', extraConfig, stores: BEHIND_DOVECOT ? backends.stores : instant.stores } as const;
  const start = async (name: string, nodeArgs: readonly string[], main?: string, node?: string): Promise<MailfrontProcess> => {
    const p = await startMailfront(backends, { ...options, name, nodeArgs, ...(main !== undefined ? { main } : {}), ...(node !== undefined ? { node } : {}) });
    started.push(p);
    return p;
  };
  const thisRuns = [...(THIS_NODE !== undefined ? [`node ${execFileSync(THIS_NODE, ['--version'], { encoding: 'utf8' }).trim()}`] : []), ...THIS_NODE_ARGS];
  const labels = [thisRuns.length > 0 ? `this build (${thisRuns.join(' ')})` : 'this build', other.label] as const;
  // The builds' processes are started alternately, so that neither build gets all the early ports or PIDs.
  const processes: Array<{ build: 0 | 1; process: MailfrontProcess }> = [];
  for (let n = 0; n < PROCESSES; n++) {
    processes.push({ build: 0, process: await start(`compare-this-${n}`, THIS_NODE_ARGS, undefined, THIS_NODE) });
    processes.push({ build: 1, process: await start(`compare-other-${n}`, [], other.main) });
  }
  const users = backends.users;
  const run = (mf: MailfrontProcess, count: number, seconds: number) =>
    loginLoop({ protocol: 'imap', concurrency: CONCURRENCY, maxLogins: count, maxSeconds: seconds, target: (i) => ({ port: mf.imapPort, ...users[i % users.length]! }) });
  await Promise.all(processes.map((p) => run(p.process, WARMUP_LOGINS, 180)));
  say(`${ROUNDS} rounds of ${ROUND_SECONDS} s of ${KIND} IMAP logins, ${PROCESSES} processes of each build at once (${CONCURRENCY} clients each), in front of ${BEHIND_DOVECOT ? 'Dovecot' : 'the instant backend'}`);
  const cpu: number[][] = processes.map(() => []);
  const buildMean = (build: 0 | 1, values: readonly number[]): number => {
    const mine = values.filter((_, i) => processes[i]!.build === build);
    return mine.reduce((sum, v) => sum + v, 0) / mine.length;
  };
  const roundRatios: number[] = [];
  for (let round = 0; round < ROUNDS; round++) {
    const before = processes.map((p) => cpuSeconds(p.process.pid));
    const ticksBefore = machineTicks();
    const results = await Promise.all(processes.map((p) => run(p.process, 1_000_000, ROUND_SECONDS)));
    const ticksAfter = machineTicks();
    // Time the hypervisor gave to other guests: a round with much of it says little.
    const stolen = (ticksAfter.steal - ticksBefore.steal) / Math.max(1, ticksAfter.total - ticksBefore.total);
    const perLogin = processes.map((p, i) => {
      const r = results[i]!;
      if (r.errors > 0) throw new Error(`${labels[p.build]}: ${r.errors} failed logins, the first: ${r.firstError ?? ''}`);
      return ((cpuSeconds(p.process.pid) - before[i]!) / Math.max(1, r.logins)) * 1000;
    });
    perLogin.forEach((v, i) => cpu[i]!.push(v));
    const [a, b] = [buildMean(0, perLogin), buildMean(1, perLogin)];
    roundRatios.push(a / b);
    say(`round ${round + 1}: ${labels[0]} ${a.toFixed(3)} s, ${labels[1]} ${b.toFixed(3)} s per 1,000 logins (means of the processes); ratio ${(a / b).toFixed(3)}; ${(stolen * 100).toFixed(0)} % of the machine stolen by the hypervisor`);
  }
  const medians = cpu.map((values) => median(values));
  const [a, b] = [buildMean(0, medians), buildMean(1, medians)];
  const each = (build: 0 | 1): string => medians.filter((_, i) => processes[i]!.build === build).map((m) => m.toFixed(3)).join(', ');
  process.stdout.write(
    `CPU s per 1,000 ${KIND} IMAP logins, mean of ${PROCESSES} processes' medians over ${ROUNDS} rounds: ${labels[0]} ${a.toFixed(3)} (${each(0)}), ${labels[1]} ${b.toFixed(3)} (${each(1)})\n` +
      `${labels[0]} ÷ ${labels[1]}: ${(a / b).toFixed(3)}; ${describeRoundRatios(roundRatios)}\n`,
  );
} finally {
  for (const p of started) await p.stop();
  await instant.stop();
  await backends.stop();
  other.remove();
}
