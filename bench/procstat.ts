/**
 * What the benchmark reads from /proc about the processes it started: CPU time, resident memory,
 * open files, and the whole machine's CPU. Reads only; never signals anything.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { descendantsOf } from '../test/integration/servers/index.js';

/** Clock ticks per second of utime/stime in /proc (USER_HZ; 100 on Linux, checked once). */
export const CLOCK_TICKS_PER_S = ((): number => {
  try {
    return Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
  } catch {
    return 100;
  }
})();

/** Fields after the command name in /proc/PID/stat (index 0 is the state, field 3). */
function statFields(pid: number): string[] | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  } catch {
    return undefined;
  }
}

/** CPU seconds a process has used (user + system, all threads). With `children`, also its reaped children's. */
export function cpuSeconds(pid: number, children = false): number {
  const f = statFields(pid);
  if (f === undefined) return 0;
  // utime is field 14, stime 15, cutime 16, cstime 17 of the stat line; f[0] is field 3.
  const ticks = Number(f[11]) + Number(f[12]) + (children ? Number(f[13]) + Number(f[14]) : 0);
  return ticks / CLOCK_TICKS_PER_S;
}

/** System (kernel) CPU seconds of a process, all threads. */
export function systemCpuSeconds(pid: number): number {
  const f = statFields(pid);
  return f === undefined ? 0 : Number(f[12]) / CLOCK_TICKS_PER_S;
}

/**
 * CPU seconds of a process tree: the root with its reaped children (a daemon's master reaps the
 * workers it forked) plus every live descendant.
 */
export function treeCpuSeconds(pid: number): number {
  let total = cpuSeconds(pid, true);
  for (const d of descendantsOf(pid)) total += cpuSeconds(d.pid, true);
  return total;
}

/** Resident set size in bytes (VmRSS), 0 when the process is gone. */
export function rssBytes(pid: number): number {
  try {
    const m = /^VmRSS:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m?.[1] !== undefined ? Number(m[1]) * 1024 : 0;
  } catch {
    return 0;
  }
}

/** RSS of a process and all its live descendants (nginx: master and workers). */
export function treeRssBytes(pid: number): number {
  return rssBytes(pid) + descendantsOf(pid).reduce((n, d) => n + rssBytes(d.pid), 0);
}

/**
 * Context switches of every thread of `pid`: voluntary (it slept, in epoll_wait or a futex) and
 * involuntary (it was preempted).
 */
export function contextSwitches(pid: number): { voluntary: number; involuntary: number } {
  let voluntary = 0;
  let involuntary = 0;
  for (const task of readdirSync(`/proc/${pid}/task`)) {
    try {
      const status = readFileSync(`/proc/${pid}/task/${task}/status`, 'utf8');
      voluntary += Number(/^voluntary_ctxt_switches:\s+(\d+)/m.exec(status)?.[1] ?? 0);
      involuntary += Number(/^nonvoluntary_ctxt_switches:\s+(\d+)/m.exec(status)?.[1] ?? 0);
    } catch {
      // A thread gone meanwhile.
    }
  }
  return { voluntary, involuntary };
}

/** Number of open file descriptors of a process. */
export function openFiles(pid: number): number {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return 0;
  }
}

/**
 * Busy and total CPU ticks of the whole machine, summed over all cores (/proc/stat), and of those
 * the ticks stolen by the hypervisor for other guests (busy for us, yet no work of ours).
 */
export function machineTicks(): { busy: number; total: number; steal: number } {
  const line = readFileSync('/proc/stat', 'utf8').split('\n', 1)[0] ?? '';
  const v = line.trim().split(/\s+/).slice(1).map(Number);
  const total = v.reduce((a, b) => a + b, 0);
  const idle = (v[3] ?? 0) + (v[4] ?? 0); // idle + iowait
  return { busy: total - idle, total, steal: v[7] ?? 0 };
}

/** A description of the machine for the results: CPU model, cores, memory, kernel. */
export function machineDescription(): { cpu: string; cores: number; memoryGiB: number; kernel: string } {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  const cpu = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1] ?? 'unknown';
  const cores = (cpuinfo.match(/^processor\s*:/gm) ?? []).length;
  const memKb = Number(/^MemTotal:\s+(\d+)/m.exec(readFileSync('/proc/meminfo', 'utf8'))?.[1] ?? 0);
  const kernel = readFileSync('/proc/sys/kernel/osrelease', 'utf8').trim();
  return { cpu, cores, memoryGiB: Math.round((memKb / 1024 / 1024) * 10) / 10, kernel };
}

/** The soft and hard RLIMIT_NOFILE of this process (from /proc/self/limits). */
export function fileLimit(): { soft: number; hard: number } {
  const m = /^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
  const n = (s: string | undefined): number => (s === undefined ? 1024 : s === 'unlimited' ? Number.MAX_SAFE_INTEGER : Number(s));
  return { soft: n(m?.[1]), hard: n(m?.[2]) };
}
