/**
 * Two builds of mailfront side by side: CPU per warm IMAP login of this build against another
 * (a git ref, built into a temporary worktree), both in front of the instant backend
 * (bench/instant-backend.ts) and the same slapd, loaded at the same time in rounds.
 *
 * Why: the VM's speed drifts by tens of per cent within minutes, more than most single changes
 * save, so a figure from `npm run bench` before a change and one after say little about the
 * change. Here both builds take logins at the same time, 10 clients each, for a few seconds a
 * round: whatever the machine does in a round, it does to both. Each round gives the ratio of
 * their CPU per login, and the median of those ratios is the result. The same build against
 * itself gave 0.986 (rounds from 0.94 to 1.12): differences of 2 or 3 % are within the noise.
 *
 * Usage: npm run build && node dist/bench/compare.js REF [ROUNDS] [SECONDS]
 *        (REF: any git ref, e.g. HEAD~1 or main; default 12 rounds of 3 s)
 * COMPARE_NODE_ARGS: node options for this build's mailfront only, e.g. `--max-semi-space-size=2`;
 * with REF=HEAD it measures what an option costs.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { loginLoop, median } from './load.js';
import { cpuSeconds, machineTicks } from './procstat.js';
import { startBackends, startInstantBackend, startMailfront, type MailfrontProcess } from './setup.js';

const REPO_ROOT = resolve(fileURLToPath(new URL('../..', import.meta.url)));
const [ref, roundsArg, secondsArg] = process.argv.slice(2);
const ROUNDS = Number(roundsArg ?? 12);
const ROUND_SECONDS = Number(secondsArg ?? 3);
const THIS_NODE_ARGS = (process.env['COMPARE_NODE_ARGS'] ?? '').split(/\s+/).filter((a) => a !== '');
if (ref === undefined || ref.startsWith('-') || !(ROUNDS >= 1 && ROUNDS <= 100) || !(ROUND_SECONDS > 0 && ROUND_SECONDS <= 60)) {
  process.stderr.write('usage: node dist/bench/compare.js REF [ROUNDS (1-100)] [SECONDS per round (at most 60)]\n');
  process.exit(2);
}
/** Untimed logins per build first: the JIT and the auth cache warm up. */
const WARMUP_LOGINS = 6000;
/** Clients per build. */
const CONCURRENCY = 10;

function say(text: string): void {
  process.stderr.write(`compare: ${text}\n`);
}

/** Builds `ref` into a temporary worktree (sharing this checkout's node_modules); returns its CLI and a remover. */
function buildRef(gitRef: string): { main: string; label: string; remove(): void } {
  const commit = execFileSync('git', ['-C', REPO_ROOT, 'rev-parse', '--short', `${gitRef}^{commit}`], { encoding: 'utf8' }).trim();
  const dir = mkdtempSync(join(tmpdir(), 'mailfront-compare-'));
  let removed = false;
  const remove = (): void => {
    if (removed) return;
    removed = true;
    try {
      execFileSync('git', ['-C', REPO_ROOT, 'worktree', 'remove', '--force', dir], { stdio: 'ignore' });
    } catch {
      // Not registered yet, or already gone: the directory is removed below either way.
    }
    rmSync(dir, { recursive: true, force: true });
  };
  // Also on an interrupted run (the server harness stops its daemons on SIGINT/SIGTERM itself).
  process.once('exit', remove);
  try {
    execFileSync('git', ['-C', REPO_ROOT, 'worktree', 'add', '--detach', '--force', dir, commit], { stdio: 'ignore' });
    symlinkSync(join(REPO_ROOT, 'node_modules'), join(dir, 'node_modules'), 'dir');
    say(`building ${gitRef} (${commit}) in ${dir}`);
    execFileSync(process.execPath, [join(REPO_ROOT, 'node_modules/typescript/bin/tsc'), '-p', join(dir, 'tsconfig.json')], { stdio: 'inherit' });
    const main = join(dir, 'dist/src/cli/main.js');
    if (!existsSync(main)) throw new Error(`${gitRef}: no dist/src/cli/main.js after the build`);
    return { main, label: gitRef === commit ? commit : `${gitRef} (${commit})`, remove };
  } catch (error) {
    remove();
    throw error;
  }
}

const other = buildRef(ref);
const backends = await startBackends({ userCount: 1000, storeCount: 2, fetchMessageBytes: 1000, dovecotClientLimit: 1 });
const instant = await startInstantBackend(backends);
const started: MailfrontProcess[] = [];
try {
  const options = { loginMode: 'replay', extraConfig: { directory: { auth_cache_ttl_ms: 900_000 } }, stores: instant.stores } as const;
  const start = async (name: string, nodeArgs: readonly string[], main?: string): Promise<MailfrontProcess> => {
    const p = await startMailfront(backends, { ...options, name, nodeArgs, ...(main !== undefined ? { main } : {}) });
    started.push(p);
    return p;
  };
  const builds = [
    { label: THIS_NODE_ARGS.length > 0 ? `this build (${THIS_NODE_ARGS.join(' ')})` : 'this build', process: await start('compare-this', THIS_NODE_ARGS) },
    { label: other.label, process: await start('compare-other', [], other.main) },
  ] as const;
  const users = backends.users;
  const run = (mf: MailfrontProcess, count: number, seconds: number) =>
    loginLoop({ protocol: 'imap', concurrency: CONCURRENCY, maxLogins: count, maxSeconds: seconds, target: (i) => ({ port: mf.imapPort, ...users[i % users.length]! }) });
  for (const b of builds) await run(b.process, WARMUP_LOGINS, 120);
  say(`${ROUNDS} rounds of ${ROUND_SECONDS} s of warm IMAP logins, both builds at once (${CONCURRENCY} clients each)`);
  const cpu: [number[], number[]] = [[], []];
  for (let round = 0; round < ROUNDS; round++) {
    const before = builds.map((b) => cpuSeconds(b.process.pid));
    const ticksBefore = machineTicks();
    const results = await Promise.all(builds.map((b) => run(b.process, 1_000_000, ROUND_SECONDS)));
    const ticksAfter = machineTicks();
    // Time the hypervisor gave to other guests: a round with much of it says little.
    const stolen = (ticksAfter.steal - ticksBefore.steal) / Math.max(1, ticksAfter.total - ticksBefore.total);
    builds.forEach((b, i) => {
      const r = results[i]!;
      if (r.errors > 0) throw new Error(`${b.label}: ${r.errors} failed logins, the first: ${r.firstError ?? ''}`);
      cpu[i as 0 | 1].push(((cpuSeconds(b.process.pid) - before[i]!) / r.logins) * 1000);
    });
    const [a, b] = [cpu[0][round] as number, cpu[1][round] as number];
    say(`round ${round + 1}: ${builds[0].label} ${a.toFixed(3)} s (${results[0]!.logins} logins), ${other.label} ${b.toFixed(3)} s (${results[1]!.logins}) per 1,000 logins; ratio ${(a / b).toFixed(3)}; ${(stolen * 100).toFixed(0)} % of the machine stolen by the hypervisor`);
  }
  const ratios = cpu[0].map((a, i) => a / (cpu[1][i] as number));
  process.stdout.write(
    `CPU s per 1,000 warm IMAP logins (median of ${ROUNDS} rounds): ${builds[0].label} ${median(cpu[0]).toFixed(3)}, ${other.label} ${median(cpu[1]).toFixed(3)}\n` +
      `${builds[0].label} ÷ ${other.label}, median of the rounds' ratios: ${median(ratios).toFixed(3)} (rounds: ${ratios.map((r) => r.toFixed(2)).join(', ')})\n`,
  );
} finally {
  for (const p of started) await p.stop();
  await instant.stop();
  await backends.stop();
  other.remove();
}
