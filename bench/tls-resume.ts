/**
 * What a resumed TLS session saves mailfront: CPU per IMAPS login (connect, LOGIN, SELECT INBOX,
 * LOGOUT) of one mailfront process in front of the instant backend (bench/instant-backend.ts; warm
 * caches, the bench's slapd and users), with clients that do a full handshake each time against
 * clients that offer their last session (a TLS 1.3 ticket) and resume it. The two kinds of round
 * alternate, in either order, so that the host's drift falls on both alike. Prints each round,
 * the medians, and the median of the ratios of the rounds taken side by side. What a shared
 * tls.session_ticket_key_file is worth: clients moved to another instance, or back after a
 * reload, resume instead of starting over. (docs/performance.md, "Session tickets".) Bounded:
 * fixed rounds of fixed length, loopback only; each command of the bench's client has its deadline.
 *
 *   npm run build && node dist/bench/tls-resume.js [ROUNDS] [SECONDS]   (default 8 rounds of 8 s)
 */
import { once } from 'node:events';
import type { TLSSocket } from 'node:tls';
import { MailClient, mustBeOk, quoted } from './client.js';
import { median } from './load.js';
import { cpuSeconds } from './procstat.js';
import { describeRoundRatios } from './rounds.js';
import { startBackends, startInstantBackend, startMailfront } from './setup.js';
import type { BenchUser } from './setup.js';

const ROUNDS = Number(process.argv[2] ?? '8');
const SECONDS = Number(process.argv[3] ?? '8');
const CLIENTS = 5;
/** How long a session waits for mailfront's close after LOGOUT's answer before closing itself. */
const SESSION_CLOSE_MS = 5_000;

interface Ended {
  readonly resumed: boolean;
  /** The last session the server gave (none after some resumptions: then the one offered is kept). */
  readonly session: Buffer | undefined;
}

/** One IMAPS session to `port` as `user` with the bench's client (LOGIN, SELECT INBOX, LOGOUT), offering `offered`. */
async function imapsSession(port: number, user: BenchUser, offered: Buffer | undefined): Promise<Ended> {
  const client = await MailClient.open('imap', { port, tls: true, ...(offered !== undefined ? { session: offered } : {}) });
  try {
    mustBeOk(await client.imap(`LOGIN ${quoted(user.user)} ${quoted(user.password)}`), `LOGIN ${user.user}`);
    mustBeOk(await client.imap('SELECT INBOX'), 'SELECT');
    const closed = once(client.socket, 'close');
    mustBeOk(await client.imap('LOGOUT'), 'LOGOUT');
    // mailfront closes after LOGOUT, as a server does: the client waits for that, not closing first.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([closed, new Promise((resolve) => (timer = setTimeout(resolve, SESSION_CLOSE_MS)))]);
    clearTimeout(timer);
    return { resumed: (client.socket as TLSSocket).isSessionReused(), session: client.lastSession };
  } finally {
    client.destroy();
  }
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
