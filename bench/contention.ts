/**
 * Why a proxy's CPU per login grows behind Dovecot on this machine: mailfront and the floor relay
 * (bench/floor.ts), CPU per warm IMAP login with 20 clients, behind backends that each add one
 * thing Dovecot brings:
 * - `instant`: bench/instant-backend.ts, which answers at once (the `cpu` step's backend);
 * - `delayN`: the same, every greeting and answer N ms late with no CPU spent meanwhile, so that
 *   logins arrive spread out at about Dovecot's rate (N = 8 gives about 560 logins/s here);
 *   `jitterN`: between 0 and 2N ms late, at random, as a real backend's answers spread out;
 * - `spin`, `fork`, `thrash`: the instant backend while two other processes compete for the
 *   cores: a busy loop; a shell starting /bin/true over and over; bursts of 0.5 ms over a 48 MB
 *   buffer (evicting the caches) every millisecond;
 * - `delayN+HOG`, `jitterN+HOG`: both, the late answers and the hogs (e.g. `delay8+fork`);
 * - `dovecot`: the bench's Dovecot (one process per session, as in every other step).
 * Each row also gives the proxy's context switches per login (from /proc): voluntary, when it
 * went to sleep with nothing to do; involuntary, when it was preempted.
 *
 * Usage: npm run build && node dist/bench/contention.js [LOGINS] [CONDITION,...]
 *   defaults: 6000 instant,delay8,spin,fork,thrash,dovecot,instant
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { setTimeout as sleep } from 'node:timers/promises';
import { loginLoop } from './load.js';
import { contextSwitches, cpuSeconds } from './procstat.js';
import { startBackends, startFloor, startInstantBackend, startMailfront, type Backends, type BenchUser, type Stores } from './setup.js';

const LOGINS = Number(process.argv[2] ?? 6000);
const CONDITIONS = (process.argv[3] ?? 'instant,delay8,spin,fork,thrash,dovecot,instant').split(',');
const CONCURRENCY = 20;
const WARMUP_LOGINS = 3000;
/** No hog outlives this, whatever happens to this process. */
const HOG_SECONDS = 600;

const HOGS: Record<string, readonly string[]> = {
  spin: ['bash', '-c', `end=$((SECONDS+${HOG_SECONDS})); while [ $SECONDS -lt $end ]; do :; done`],
  fork: ['bash', '-c', `end=$((SECONDS+${HOG_SECONDS})); while [ $SECONDS -lt $end ]; do /bin/true; done`],
  thrash: [
    process.execPath,
    '-e',
    `const b = Buffer.alloc(48 << 20); const end = Date.now() + ${HOG_SECONDS * 1000}; let i = 0;
     (function burst() {
       if (Date.now() > end) return;
       const t = process.hrtime.bigint();
       while (process.hrtime.bigint() - t < 500000n) for (let k = 0; k < 256; k++) { b[i]++; i = (i + 4160) % b.length; }
       setTimeout(burst, 1);
     })();`,
  ],
};

/** A condition's late answers (ms) and hog, if any. */
function parse(condition: string): { delay: string; hog: string | undefined } | undefined {
  const m = /^(?:(delay|jitter)(\d+))?(?:\+?(spin|fork|thrash))?$/.exec(condition);
  if (m === null || condition === 'dovecot' || condition === '') return undefined;
  return { delay: `${m[1] === 'jitter' ? '~' : ''}${m[2] ?? 0}`, hog: m[3] };
}

if (!(LOGINS >= 500 && LOGINS <= 100_000) || !CONDITIONS.every((c) => c === 'instant' || c === 'dovecot' || (parse(c) !== undefined && !c.startsWith('+')))) {
  process.stderr.write('usage: node dist/bench/contention.js [LOGINS (500-100000)] [instant|delayN|jitterN|spin|fork|thrash|delayN+HOG|dovecot,...]\n');
  process.exit(2);
}

function say(text: string): void {
  process.stderr.write(`contention: ${text}\n`);
}

async function measure(backends: Backends, condition: string, stores: Stores, hog: readonly string[] | undefined): Promise<string[]> {
  const rows: string[] = [];
  const mailfront = await startMailfront(backends, { name: 'contention', loginMode: 'replay', extraConfig: {}, nodeArgs: [], stores });
  const floor = await startFloor(backends, stores);
  try {
    for (const p of [{ name: 'mailfront', pid: mailfront.pid, port: mailfront.imapPort }, { name: 'floor', pid: floor.pid, port: floor.port }]) {
      const target = (i: number) => {
        const u: BenchUser = backends.users[i % backends.users.length]!;
        return { port: p.port, user: u.user, password: u.password };
      };
      const loop = (count: number) => loginLoop({ protocol: 'imap', concurrency: CONCURRENCY, maxLogins: count, maxSeconds: 120, target });
      await loop(WARMUP_LOGINS);
      const hogs: ChildProcess[] = hog === undefined ? [] : [0, 1].map(() => spawn(hog[0]!, hog.slice(1), { stdio: 'ignore' }));
      try {
        await sleep(300);
        const cs0 = contextSwitches(p.pid);
        const cpu0 = cpuSeconds(p.pid);
        const r = await loop(LOGINS);
        const cpu1 = cpuSeconds(p.pid);
        const cs1 = contextSwitches(p.pid);
        if (r.errors > 0) throw new Error(`${condition} ${p.name}: ${r.errors} failed logins, the first: ${r.firstError ?? ''}`);
        const row = `| ${condition} | ${p.name} | ${((1000 * (cpu1 - cpu0)) / r.logins).toFixed(3)} | ${(r.logins / r.seconds).toFixed(0)} | ${((cs1.voluntary - cs0.voluntary) / r.logins).toFixed(2)} | ${((cs1.involuntary - cs0.involuntary) / r.logins).toFixed(2)} |`;
        say(row);
        rows.push(row);
      } finally {
        for (const h of hogs) h.kill('SIGKILL');
      }
    }
  } finally {
    await mailfront.stop();
    await floor.stop();
  }
  return rows;
}

const backends = await startBackends({ userCount: 1000, storeCount: 2, fetchMessageBytes: 1000, dovecotClientLimit: 1 });
const rows: string[] = [];
try {
  for (const condition of CONDITIONS) {
    if (condition === 'dovecot') {
      rows.push(...(await measure(backends, condition, backends.stores, undefined)));
      continue;
    }
    const { delay, hog } = parse(condition === 'instant' ? '' : condition) ?? { delay: '0', hog: undefined };
    const instant = await startInstantBackend(backends, delay);
    try {
      rows.push(...(await measure(backends, condition, instant.stores, hog === undefined ? undefined : HOGS[hog])));
    } finally {
      await instant.stop();
    }
  }
} finally {
  await backends.stop();
}
process.stdout.write(
  [
    `${LOGINS} warm IMAP logins per row, ${CONCURRENCY} clients`,
    '',
    '| backend | proxy | CPU s per 1,000 logins | logins/s | voluntary context switches per login | involuntary |',
    '| --- | --- | ---: | ---: | ---: | ---: |',
    ...rows,
    '',
  ].join('\n'),
);
