/**
 * What a resumed TLS session saves mailfront: CPU per IMAPS login (connect, LOGIN, SELECT INBOX,
 * LOGOUT) of one mailfront process in front of the instant backend (bench/instant-backend.ts; warm
 * caches, the bench's slapd and users), with clients that do a full handshake each time against
 * clients that offer their last session (a TLS 1.3 ticket) and resume it. The two kinds of round
 * alternate, in either order, so that the host's drift falls on both alike. Prints each round,
 * the medians, and the median of the ratios of the rounds taken side by side. What a shared tls.session_ticket_key_file is worth: clients
 * moved to another instance, or back after a reload, resume instead of starting over.
 * (docs/performance.md, "Session tickets".) Bounded: fixed rounds of fixed length, loopback only.
 *
 *   npm run build && node dist/bench/tls-resume.js [ROUNDS] [SECONDS]   (default 8 rounds of 8 s)
 */
import { connect } from 'node:tls';
import { median } from './load.js';
import { cpuSeconds } from './procstat.js';
import { describeRoundRatios } from './rounds.js';
import { startBackends, startInstantBackend, startMailfront } from './setup.js';
import type { BenchUser } from './setup.js';

const ROUNDS = Number(process.argv[2] ?? '8');
const SECONDS = Number(process.argv[3] ?? '8');
const CLIENTS = 5;
/** No session lasts longer than this: a stuck one fails the run instead of holding it. */
const SESSION_TIMEOUT_MS = 10_000;

interface Ended {
  readonly resumed: boolean;
  /** The last session the server gave (none after some resumptions: then the one offered is kept). */
  readonly session: Buffer | undefined;
}

/** One IMAPS session to `port` as `user`, offering `offered`. */
function imapsSession(port: number, user: BenchUser, offered: Buffer | undefined): Promise<Ended> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port, rejectUnauthorized: false, servername: 'localhost', ...(offered !== undefined ? { session: offered } : {}) });
    const timer = setTimeout(() => socket.destroy(new Error(`no end within ${SESSION_TIMEOUT_MS} ms`)), SESSION_TIMEOUT_MS);
    let last: Buffer | undefined;
    let resumed = false;
    let text = '';
    let step: 'greeting' | 'login' | 'rest' = 'greeting';
    socket.once('secureConnect', () => (resumed = socket.isSessionReused()));
    socket.on('session', (session: Buffer) => (last = session));
    socket.on('error', (error) => {
      clearTimeout(timer);
      reject(error);
    });
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => {
      text += chunk;
      if (step === 'greeting' && text.endsWith('\r\n')) {
        step = 'login';
        text = '';
        socket.write(`a LOGIN ${user.user} ${user.password}\r\n`);
      } else if (step === 'login' && /(?:^|\r\n)a [A-Z]+ [^\r\n]*\r\n$/.test(text)) {
        if (!/(?:^|\r\n)a OK /.test(text)) return void socket.destroy(new Error(`login refused: ${text.trim()}`));
        step = 'rest';
        socket.write('b SELECT INBOX\r\nc LOGOUT\r\n');
      }
    });
    socket.once('close', () => {
      clearTimeout(timer);
      if (step === 'rest') resolve({ resumed, session: last });
      else reject(new Error(`closed before the login was done (${step}): ${text.trim()}`));
    });
  });
}

/** One round of `seconds`: CLIENTS clients in turn over the users; mailfront's CPU per login. */
async function round(pid: number, port: number, users: readonly BenchUser[], resume: boolean, seconds: number): Promise<{ msPerLogin: number; logins: number; resumed: number }> {
  const cpuBefore = cpuSeconds(pid);
  const until = Date.now() + seconds * 1000;
  let logins = 0;
  let resumed = 0;
  await Promise.all(
    Array.from({ length: CLIENTS }, async (_, client) => {
      let last: Buffer | undefined;
      for (let i = client; Date.now() < until; i += CLIENTS) {
        const ended = await imapsSession(port, users[i % users.length] as BenchUser, resume ? last : undefined);
        logins++;
        if (ended.resumed) resumed++;
        last = ended.session ?? last;
      }
    }),
  );
  return { msPerLogin: ((cpuSeconds(pid) - cpuBefore) * 1000) / logins, logins, resumed };
}

const backends = await startBackends({ userCount: 1000, storeCount: 2, fetchMessageBytes: 1000, dovecotClientLimit: 1 });
try {
  const instant = await startInstantBackend(backends);
  try {
    const mailfront = await startMailfront(backends, { loginMode: 'replay', extraConfig: {}, stores: instant.stores, name: 'tls-resume', nodeArgs: [] });
    try {
      // Warm-up: the caches filled and V8's code made, both ways.
      await round(mailfront.pid, mailfront.imapsPort, backends.users, false, 5);
      await round(mailfront.pid, mailfront.imapsPort, backends.users, true, 5);
      const full: number[] = [];
      const resumed: number[] = [];
      const ratios: number[] = [];
      for (let r = 0; r < ROUNDS; r++) {
        const pair = new Map<boolean, number>();
        for (const resume of r % 2 === 0 ? [false, true] : [true, false]) {
          const result = await round(mailfront.pid, mailfront.imapsPort, backends.users, resume, SECONDS);
          (resume ? resumed : full).push(result.msPerLogin);
          pair.set(resume, result.msPerLogin);
          console.log(`${resume ? 'resuming' : 'full'}: ${result.msPerLogin.toFixed(3)} ms of CPU per login over ${result.logins} logins, ${result.resumed} resumed`);
        }
        ratios.push((pair.get(true) as number) / (pair.get(false) as number));
      }
      console.log(`median ms of CPU per IMAPS login: full handshakes ${median(full).toFixed(3)}, resuming ${median(resumed).toFixed(3)}`);
      console.log(`resuming over full, each round beside the other kind's next to it: ${describeRoundRatios(ratios)}`);
    } finally {
      await mailfront.stop();
    }
  } finally {
    await instant.stop();
  }
} finally {
  await backends.stop();
}
