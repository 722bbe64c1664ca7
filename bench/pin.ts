/**
 * `BENCH_PIN=1`: every Dovecot, with every process it forks, runs on the machine's last CPU, and
 * everything else the bench starts (the load generator, slapd, mailfront, nginx and its
 * auth_http service, the floor relay) on the others.
 *
 * Why: on a shared 2-core machine every millisecond of CPU a proxy spends is taken from
 * Dovecot, so the login rates measure how much CPU the proxy uses. In production mailfront runs
 * on hosts of its own, and the rate goal's own words are "the backend is the limit; the proxy
 * must not be". With Dovecot on a CPU of its own the rates answer that question: a proxy that
 * does not limit the rate reaches what Dovecot's CPU allows, as a direct connection does. slapd
 * stays with the proxies: in production the directory is not on the mail store's host either,
 * and a proxy that asks it on every login should not be charged for it in Dovecot's CPU.
 *
 * Only the login-rate steps are pinned (PINNED_STEPS); the bench puts every process back on all
 * CPUs for the others. FETCH, NOOP and idle memory measure the relay, not whether the backend
 * limits a rate: pinned, the load generator and mailfront would share one CPU while a direct
 * connection had it to itself. The `cpu` step measures a proxy's own CPU per login against the
 * instant backend, not Dovecot: pinned, the proxy, slapd, the load generator and that backend
 * would all share CPU 0 while Dovecot's CPU stood idle.
 *
 * Uses `taskset` (util-linux, in every Debian). Children inherit their parent's CPUs, so a
 * Dovecot's later processes stay where their master is put.
 */
import { execFileSync } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { descendantsOf } from '../test/integration/servers/index.js';

/** Which CPUs Dovecot gets and which the rest get, as taskset lists. */
export interface CpuPlan {
  readonly dovecot: string;
  readonly rest: string;
}

/** The steps measured pinned under BENCH_PIN=1: those whose figures are login rates behind Dovecot. */
export const PINNED_STEPS: readonly string[] = ['imap', 'master-user', 'pop3'];

/** Whether `step` runs pinned when `pin` (BENCH_PIN=1) is asked for. */
export function pinnedStep(step: string, pin: boolean): boolean {
  return pin && PINNED_STEPS.includes(step);
}

/** Every CPU, as a taskset list: where the unpinned steps run. */
export function allCpus(cores = availableParallelism()): string {
  return cores <= 1 ? '0' : `0-${cores - 1}`;
}

/** The last CPU for Dovecot, the others for the rest; null on a single CPU. */
export function cpuPlan(cores = availableParallelism()): CpuPlan | null {
  if (cores < 2) return null;
  return { dovecot: String(cores - 1), rest: cores === 2 ? '0' : `0-${cores - 2}` };
}

/**
 * Puts `pid`, all its threads and every live descendant on `cpus`. A process that exits
 * meanwhile is skipped; returns how many were pinned.
 */
export function pinTree(pid: number, cpus: string): number {
  let pinned = 0;
  for (const target of [pid, ...descendantsOf(pid).map((d) => d.pid)]) {
    try {
      execFileSync('taskset', ['-a', '-c', '-p', cpus, String(target)], { stdio: 'ignore' });
      pinned++;
    } catch {
      // Gone already (a short-lived login process), or never ours to move.
    }
  }
  return pinned;
}
