/**
 * System calls and wake-ups per warm login: mailfront and the floor relay (bench/floor.ts), IMAP
 * and POP3, both in front of the instant backend (bench/instant-backend.ts) as in the `cpu` step.
 *
 * For each proxy and protocol, after untimed logins (the JIT, mailfront's auth cache):
 * - a loop of LOGINS warm logins with `strace -c -f -p PID` attached (every thread of the
 *   proxy), its summary divided by the logins: calls per login by name;
 * - the same loop without strace, with the context switches of the proxy's threads read from
 *   /proc before and after (voluntary: the thread slept, in epoll_wait or a futex; involuntary:
 *   it was preempted), per login;
 * - with TRACE, `strace -f -tt` of a few logins one at a time, written to a file, to read the
 *   order of the calls.
 *
 * The syscall counts include whatever the proxy does between logins while strace is attached
 * (timers, log flushes): the idle process is counted for as long as the loop took and given
 * beside it.
 *
 * Usage: npm run build && node dist/bench/syscalls.js [LOGINS] [imap|pop3|both] [TRACE_DIR]
 */
import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { loginLoop } from './load.js';
import { contextSwitches } from './procstat.js';
import { startBackends, startFloor, startInstantBackend, startMailfront, type BenchUser } from './setup.js';

const LOGINS = Number(process.argv[2] ?? 2000);
const WHICH = process.argv[3] ?? 'both';
const TRACE_DIR = process.argv[4];
// Past a listener's first 4,097 connections (LISTEN_BACKLOG + 1), which get their socket options
// set each (createClientServer in src/server/listeners.ts): the loops count what a listener pays for good.
const WARMUP_LOGINS = 5000;
const CONCURRENCY = 3;
const TRACED_LOGINS = 4;

if (!(LOGINS >= 100 && LOGINS <= 50_000) || !['imap', 'pop3', 'both'].includes(WHICH)) {
  process.stderr.write('usage: node dist/bench/syscalls.js [LOGINS (100-50000)] [imap|pop3|both] [TRACE_DIR]\n');
  process.exit(2);
}
// strace writes its file there but does not make the folder.
if (TRACE_DIR !== undefined) mkdirSync(TRACE_DIR, { recursive: true });

function say(text: string): void {
  process.stderr.write(`syscalls: ${text}\n`);
}

/** Calls by name from an `strace -c` summary. */
function parseSummary(text: string): Map<string, number> {
  const calls = new Map<string, number>();
  for (const line of text.split('\n')) {
    const f = line.trim().split(/\s+/);
    // % time, seconds, usecs/call, calls, [errors], syscall
    if (f.length < 5 || !/^\d/.test(f[0] ?? '') || f.at(-1) === 'total') continue;
    const name = f.at(-1)!;
    const count = Number(f[3]);
    if (Number.isFinite(count)) calls.set(name, count);
  }
  return calls;
}

/** Runs `body` with strace attached to `pid` (all threads); the strace's output file, once it has stopped. */
async function traced(pid: number, args: readonly string[], out: string, body: () => Promise<void>): Promise<string> {
  const strace = spawn('strace', [...args, '-f', '-o', out, '-p', String(pid)], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  strace.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<void>((resolve) => strace.once('exit', () => resolve()));
  // Attached once it says so for the process (and its threads), then a moment.
  for (let i = 0; i < 100 && !stderr.includes('attached'); i++) await sleep(50);
  await sleep(300);
  try {
    await body();
  } finally {
    strace.kill('SIGINT');
    await exited;
  }
  return readFileSync(out, 'utf8');
}

const backends = await startBackends({ userCount: 1000, storeCount: 2, fetchMessageBytes: 1000, dovecotClientLimit: 1 });
const instant = await startInstantBackend(backends);
const stops: Array<() => Promise<void>> = [];
try {
  const mailfront = await startMailfront(backends, { name: 'syscalls', loginMode: 'replay', extraConfig: {}, nodeArgs: [], stores: instant.stores });
  stops.push(() => mailfront.stop());
  const floor = await startFloor(backends, instant.stores);
  stops.push(() => floor.stop());
  const protocols = WHICH === 'both' ? (['imap', 'pop3'] as const) : ([WHICH] as const as readonly ('imap' | 'pop3')[]);
  const users = backends.users;
  const target = (port: number) => (i: number) => {
    const u: BenchUser = users[i % users.length]!;
    return { port, user: u.user, password: u.password };
  };
  const proxies = [
    { name: 'mailfront', pid: mailfront.pid, port: { imap: mailfront.imapPort, pop3: mailfront.pop3Port } },
    { name: 'floor', pid: floor.pid, port: { imap: floor.port, pop3: floor.pop3Port } },
  ];
  const rows: string[] = [];
  const perName = new Map<string, Map<string, number>>();
  for (const protocol of protocols) {
    for (const p of proxies) {
      const loop = (count: number, concurrency = CONCURRENCY) => loginLoop({ protocol, concurrency, maxLogins: count, maxSeconds: 300, target: target(p.port[protocol]) });
      const warm = await loop(WARMUP_LOGINS);
      if (warm.errors > 0) throw new Error(`${p.name} ${protocol}: ${warm.errors} failed logins, the first: ${warm.firstError ?? ''}`);
      // Context switches, untraced.
      const cs0 = contextSwitches(p.pid);
      const plain = await loop(LOGINS);
      const cs1 = contextSwitches(p.pid);
      // Calls, traced.
      let logins = 0;
      let seconds = 0;
      const summary = await traced(p.pid, ['-c'], `/tmp/syscalls-${p.name}-${protocol}.txt`, async () => {
        const r = await loop(LOGINS);
        if (r.errors > 0) throw new Error(`${p.name} ${protocol} under strace: ${r.errors} failed logins, the first: ${r.firstError ?? ''}`);
        logins = r.logins;
        seconds = r.seconds;
      });
      // The idle process over as long: what the count holds that is not the logins'.
      const idle = await traced(p.pid, ['-c'], `/tmp/syscalls-${p.name}-${protocol}-idle.txt`, () => sleep(seconds * 1000));
      const calls = parseSummary(summary);
      const idleCalls = [...parseSummary(idle).values()].reduce((a, b) => a + b, 0);
      const total = [...calls.values()].reduce((a, b) => a + b, 0);
      const key = `${p.name} ${protocol}`;
      perName.set(key, new Map([...calls].map(([n, c]) => [n, c / logins])));
      rows.push(`| ${key} | ${(total / logins).toFixed(2)} | ${(((calls.get('epoll_wait') ?? 0) + (calls.get('epoll_pwait') ?? 0)) / logins).toFixed(2)} | ${((cs1.voluntary - cs0.voluntary) / plain.logins).toFixed(2)} | ${((cs1.involuntary - cs0.involuntary) / plain.logins).toFixed(2)} | ${idleCalls} in ${seconds.toFixed(1)} s |`);
      say(`${key}: ${logins} logins traced, ${plain.logins} untraced`);
      if (TRACE_DIR !== undefined) {
        await traced(p.pid, ['-tt', '-s', '64'], join(TRACE_DIR, `${p.name}-${protocol}.strace`), async () => {
          await loop(TRACED_LOGINS, 1);
        });
      }
    }
  }
  const names = [...new Set([...perName.values()].flatMap((m) => [...m.keys()]))].sort();
  const keys = [...perName.keys()];
  const out = [
    '| proxy | system calls per login | epoll_wait per login (loop turns) | voluntary context switches per login | involuntary | the idle process, strace -c |',
    '| --- | ---: | ---: | ---: | ---: | --- |',
    ...rows,
    '',
    `| call | ${keys.join(' | ')} |`,
    `| --- | ${keys.map(() => '---:').join(' | ')} |`,
    ...names.map((n) => `| ${n} | ${keys.map((k) => (perName.get(k)!.get(n) ?? 0).toFixed(2)).join(' | ')} |`),
  ];
  process.stdout.write(`${out.join('\n')}\n`);
} finally {
  for (const stop of stops.reverse()) await stop().catch(() => undefined);
  await instant.stop();
  await backends.stop();
}
