// A step of the wall clock (an NTP step, an operator's `date -s`) in the middle of something
// mailfront times: the stop's drain, a login held while its master is down, the failed-login
// delay, the pre-auth deadline from accept (a PROXY header, an implicit-TLS handshake), and the
// duration a session's last line gives. Each runs on the monotonic clock, so a step of an hour
// either way changes nothing. Date.now is stepped here as the wall clock would be; every wait of
// the test itself runs on timers, which no step moves. No directory or mail server runs: the
// directory is a stand-in, and the backend a scripted IMAP server (or a port nobody listens on).
import { after, afterEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, createServer } from 'node:net';
import type { AddressInfo, Server, Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import { join } from 'node:path';
import { readFile, writeFile } from 'node:fs/promises';
import { stringify } from 'yaml';
import { loadConfig } from '../../src/config/load.js';
import type { Directory } from '../../src/auth/directory.js';
import { MailfrontError } from '../../src/errors.js';
import { Mailfront } from '../../src/main.js';
import { registerPasswords, standInDirectory, parsedSuiteLog } from './front.js';
import { freePort, makeCerts, refusingPort, tmpDir } from './servers/index.js';

const PASSWORD = 'Clock-step-pw-4b1d';
const WRONG = 'Clock-step-wrong-9e27';
registerPasswords(PASSWORD, WRONG);

const HOUR_MS = 3_600_000;
/** The steps tried: the wall clock set back an hour, and forward an hour. */
const STEPS = [-HOUR_MS, HOUR_MS] as const;
/** Longest any case here waits for an answer: a step the code follows would keep it an hour. */
const CAP_MS = 15_000;

const realNow = Date.now;
let offsetMs = 0;
Date.now = () => realNow.call(Date) + offsetMs;
/** Steps the wall clock (Date.now) by `ms`; afterEach puts it back. */
function stepWallClock(ms: number): void {
  offsetMs += ms;
}
afterEach(() => {
  offsetMs = 0;
});
after(() => {
  Date.now = realNow;
});

const since = (start: number): number => Math.round(performance.now() - start);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** `promise`'s value, or `fallback` once `ms` have passed (on a timer: no step of the wall clock moves it). */
function within<T, F>(promise: Promise<T>, ms: number, fallback: F): Promise<T | F> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => resolve(fallback), ms);
    promise.then(
      (value) => {
        clearTimeout(timer);
        resolve(value);
      },
      (error: unknown) => {
        clearTimeout(timer);
        reject(error instanceof Error ? error : new Error(String(error)));
      },
    );
  });
}

/** A line client whose waits run on timers only (LineClient's deadlines read Date.now, which the tests step). */
class Client {
  private text = '';
  private readonly waiting: Array<() => void> = [];
  private closedAt: number | undefined;
  readonly closed: Promise<void>;

  constructor(readonly socket: Socket) {
    socket.setEncoding('latin1');
    socket.on('data', (chunk: string) => {
      this.text += chunk;
      this.wake();
    });
    socket.on('error', () => undefined);
    this.closed = new Promise((resolve) =>
      socket.once('close', () => {
        this.closedAt = performance.now();
        this.wake();
        resolve();
      }),
    );
  }

  static async open(port: number): Promise<Client> {
    const socket = connect(port, '127.0.0.1');
    await new Promise<void>((resolve, reject) => {
      socket.once('connect', resolve);
      socket.once('error', reject);
    });
    return new Client(socket);
  }

  private wake(): void {
    for (const w of this.waiting.splice(0)) w();
  }

  /** The next line, or null when the connection closed or nothing came within `ms`. */
  async line(ms = CAP_MS): Promise<string | null> {
    const deadline = performance.now() + ms;
    for (;;) {
      const end = this.text.indexOf('\r\n');
      if (end >= 0) {
        const line = this.text.slice(0, end);
        this.text = this.text.slice(end + 2);
        return line;
      }
      const left = deadline - performance.now();
      if (this.closedAt !== undefined || left <= 0) return null;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiting.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
  }

  send(line: string): void {
    this.socket.write(`${line}\r\n`);
  }

  /** When the server closed the connection (performance.now()), waiting up to `ms`; undefined if it did not. */
  async closedWithin(ms: number): Promise<number | undefined> {
    await within(this.closed, ms, undefined);
    return this.closedAt;
  }
}

/**
 * A scripted IMAP backend: greets, takes LOGIN (literals, as mailfront sends them) and answers
 * every other command OK; LOGOUT ends the connection.
 */
async function scriptedBackend(): Promise<{ readonly port: number; close(): Promise<void> }> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => undefined);
    socket.write('* OK [CAPABILITY IMAP4rev1 LITERAL+] scripted\r\n');
    let text = '';
    socket.on('data', (chunk: Buffer) => {
      text += chunk.toString('latin1');
      for (;;) {
        const login = /^(\S+) LOGIN \{\d+\+\}\r\n[^]*?\{\d+\+\}\r\n[^]*?\r\n/.exec(text);
        const other = login === null ? /^(\S+) (\S+)[^\r\n]*\r\n/.exec(text) : null;
        const line = login ?? other;
        if (line === null) return;
        text = text.slice(line[0].length);
        const tag = line[1] ?? '';
        if (login !== null) socket.write(`${tag} OK [CAPABILITY IMAP4rev1 LITERAL+] Logged in\r\n`);
        else if (other?.[2]?.toUpperCase() === 'LOGOUT') socket.end(`* BYE logging out\r\n${tag} OK LOGOUT completed\r\n`);
        else socket.write(`${tag} OK done\r\n`);
      }
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** A loopback port nobody listens on (held: see refusingPort()): a master that is down. */
const deadPort = refusingPort;

/** A directory that knows every user, with PASSWORD; `beforeAnswer` runs as it answers (a step of the clock mid-login). */
function directoryOf(beforeAnswer: () => Promise<void> = async () => undefined): Directory {
  return standInDirectory({
    authenticate: async (user, password) => {
      await beforeAnswer();
      if (password !== PASSWORD) throw new MailfrontError('WRONG_PASSWORD', 'auth-failed', `wrong password for "${user}"`);
      return { user, dn: `uid=${user},ou=people,dc=example`, store: 'alpha' };
    },
  });
}

interface Instance {
  readonly mailfront: Mailfront;
  readonly logs: Array<Record<string, unknown>>;
  readonly port: number;
  readonly imapsPort: number;
  readonly caFile: string;
  stop(): Promise<void>;
}

const running = new Set<Instance>();
after(async () => {
  for (const instance of running) await instance.stop();
});

/**
 * mailfront in this process with a plaintext IMAP listener (`port`) and an implicit-TLS one
 * (`imapsPort`), both behind PROXY headers from loopback, one store whose master is `slotPort`,
 * and `extra` config on top.
 */
async function start(directory: Directory, slotPort: number, extra: Record<string, unknown> = {}): Promise<Instance> {
  const dir = tmpDir('clock-steps');
  const certs = await makeCerts(dir.path);
  const port = await freePort();
  const imapsPort = await freePort();
  const proxyProtocol = { trusted_networks: ['127.0.0.0/8'] };
  await writeFile(join(dir.path, 'stores.yaml'), stringify({ stores: { alpha: { current_master: 's1', slots: { s1: { host: '127.0.0.1', imap_port: slotPort } } } } }));
  await writeFile(
    join(dir.path, 'mailfront.yaml'),
    stringify({
      log: { level: 'info' },
      listeners: [
        { name: 'imap', protocol: 'imap', host: '127.0.0.1', port, tls: 'none', plaintext_without_tls: true, proxy_protocol: proxyProtocol },
        { name: 'imaps', protocol: 'imap', host: '127.0.0.1', port: imapsPort, tls: 'implicit', certificate: { cert: certs.certFile, key: certs.keyFile }, proxy_protocol: proxyProtocol },
      ],
      directory: { urls: ['ldap://127.0.0.1:1'], bind_dn: 'cn=reader', bind_password: 'reader-pw-unused', base_dn: 'dc=example' },
      store_map: { file: 'stores.yaml' },
      throttle: { enabled: false },
      health: { interval_ms: 0 },
      ...extra,
    }),
  );
  const logs: Array<Record<string, unknown>> = [];
  const mailfront = await Mailfront.start(loadConfig(join(dir.path, 'mailfront.yaml')), { directory, processMetrics: false, logDestination: parsedSuiteLog(logs) });
  let stopped = false;
  const instance: Instance = {
    mailfront,
    logs,
    port,
    imapsPort,
    caFile: certs.caFile,
    async stop() {
      if (stopped) return;
      stopped = true;
      running.delete(instance);
      // A stop still draining (the case failed): ended now, as a second SIGTERM would.
      mailfront.endDrain('SIGTERM');
      await within(mailfront.stop(0), CAP_MS, undefined);
      await dir.remove();
    },
  };
  running.add(instance);
  return instance;
}

/** A PROXY v1 header naming a client; mailfront's listeners here take one from loopback. */
const PROXY_HEADER = 'PROXY TCP4 192.0.2.7 127.0.0.1 40000 143\r\n';

/** A client through the plaintext listener, greeted. */
async function greeted(front: Instance): Promise<Client> {
  const client = await Client.open(front.port);
  client.socket.write(PROXY_HEADER);
  assert.match((await client.line()) ?? 'closed', /^\* OK /);
  return client;
}

const stepName = (stepMs: number): string => (stepMs < 0 ? 'set back an hour' : 'set forward an hour');

describe('the wall clock stepped during a stop\'s drain', () => {
  // A drain timed by the wall clock would end at the step (200 ms in) or an hour later.
  const DRAIN_MS = 1_000;
  for (const stepMs of STEPS) {
    test(`${stepName(stepMs)}: the spliced session still gets shutdown.drain_timeout_ms, then BYE, and the stop ends; its duration is counted on the monotonic clock`, async () => {
      const backend = await scriptedBackend();
      const front = await start(directoryOf(), backend.port, { shutdown: { drain_timeout_ms: DRAIN_MS } });
      try {
        const client = await greeted(front);
        client.send(`a LOGIN ann ${PASSWORD}`);
        assert.match((await client.line()) ?? 'closed', /^a OK /);
        const began = performance.now();
        const stopping = front.mailfront.stop();
        await sleep(200);
        stepWallClock(stepMs);
        const stopped = await within(stopping.then(() => 'stopped'), CAP_MS, 'still stopping');
        const took = since(began);
        assert.equal(stopped, 'stopped', `the stop had not ended after ${took} ms (drain ${DRAIN_MS} ms)`);
        assert.ok(took >= DRAIN_MS - 300 && took < DRAIN_MS + 5_000, `the stop took ${took} ms with a drain of ${DRAIN_MS} ms`);
        assert.match((await client.line(1_000)) ?? 'closed', /^\* BYE \[UNAVAILABLE\] Server shutting down/);
        const closedAt = await client.closedWithin(1_000);
        assert.ok(closedAt !== undefined, 'the spliced session was not closed');
        assert.ok(closedAt - began >= DRAIN_MS - 300, `the spliced session was closed ${Math.round(closedAt - began)} ms into a drain of ${DRAIN_MS} ms`);
        const finished = front.logs.find((l) => l['event'] === 'session.finished' && l['reason'] === 'shutdown');
        const durationMs = Number(finished?.['durationMs']);
        assert.ok(durationMs >= DRAIN_MS - 300 && durationMs < DRAIN_MS + 10_000, `session.finished durationMs ${durationMs}`);
      } finally {
        await front.stop();
        await backend.close();
      }
    });
  }
});

describe('the wall clock stepped while a login is held (its master down)', () => {
  // A hold timed by the wall clock would end at the first retry after the step (at most 1 s after
  // it, 1.3 s in: below HOLD_MS - 300) or an hour later.
  const HOLD_MS = 2_000;
  for (const stepMs of STEPS) {
    test(`${stepName(stepMs)}: the login is held failover.hold_ms all the same, then answered NO [UNAVAILABLE]`, async () => {
      const front = await start(directoryOf(), await deadPort(), {
        failover: { hold_ms: HOLD_MS },
        session: { auth_failure_delay_ms: 0, preauth_timeout_ms: 60_000 },
      });
      try {
        const client = await greeted(front);
        const began = performance.now();
        client.send(`a LOGIN ann ${PASSWORD}`);
        await sleep(300);
        stepWallClock(stepMs);
        const answer = await client.line();
        const took = since(began);
        assert.match(answer ?? `nothing within ${CAP_MS} ms`, /^a NO \[UNAVAILABLE\] /);
        assert.ok(took >= HOLD_MS - 300 && took < HOLD_MS + 5_000, `answered after ${took} ms with hold_ms ${HOLD_MS}`);
        client.socket.destroy();
      } finally {
        await front.stop();
      }
    });
  }
});

describe('the wall clock stepped while the directory checks a wrong password', () => {
  // A delay timed by the wall clock would end at the step (300 ms in) or an hour later.
  const DELAY_MS = 1_000;
  for (const stepMs of STEPS) {
    test(`${stepName(stepMs)}: the failure is answered session.auth_failure_delay_ms after the login began, no sooner and no later`, async () => {
      const directory = directoryOf(async () => {
        await sleep(300);
        stepWallClock(stepMs);
      });
      const front = await start(directory, await deadPort(), { session: { auth_failure_delay_ms: DELAY_MS, preauth_timeout_ms: 60_000 } });
      try {
        const client = await greeted(front);
        const began = performance.now();
        client.send(`a LOGIN ann ${WRONG}`);
        const answer = await client.line();
        const took = since(began);
        assert.match(answer ?? `nothing within ${CAP_MS} ms`, /^a NO \[AUTHENTICATIONFAILED\] /);
        assert.ok(took >= DELAY_MS - 300 && took < DELAY_MS + 5_000, `answered after ${took} ms with a delay of ${DELAY_MS} ms`);
        client.socket.destroy();
      } finally {
        await front.stop();
      }
    });
  }
});

describe('the wall clock stepped between accept and the session (while the PROXY header is awaited)', () => {
  // A deadline timed by the wall clock would fire at the step (200 ms in) or an hour later.
  const PREAUTH_MS = 1_000;
  for (const stepMs of STEPS) {
    test(`${stepName(stepMs)}: the pre-auth deadline still runs preauth_timeout_ms from accept, on a plaintext listener`, async () => {
      const front = await start(directoryOf(), await deadPort(), { session: { preauth_timeout_ms: PREAUTH_MS } });
      try {
        const began = performance.now();
        const client = await Client.open(front.port);
        await sleep(200);
        stepWallClock(stepMs);
        client.socket.write(PROXY_HEADER);
        assert.match((await client.line()) ?? 'closed', /^\* OK /);
        client.send('a NOOP');
        assert.match((await client.line()) ?? 'closed', /^a OK /, 'the session was timed out at once');
        const closedAt = await client.closedWithin(CAP_MS);
        assert.ok(closedAt !== undefined, `not closed within ${CAP_MS} ms of a pre-auth deadline of ${PREAUTH_MS} ms`);
        const took = Math.round(closedAt - began);
        assert.ok(took >= PREAUTH_MS - 300 && took < PREAUTH_MS + 5_000, `closed ${took} ms after accept with a pre-auth deadline of ${PREAUTH_MS} ms`);
      } finally {
        await front.stop();
      }
    });

    test(`${stepName(stepMs)}: an implicit-TLS handshake gets the pre-auth time from accept, no less and no more`, async () => {
      const front = await start(directoryOf(), await deadPort(), { session: { preauth_timeout_ms: PREAUTH_MS } });
      try {
        const ca = await readFile(front.caFile);
        // A client that shakes hands at once after its header is greeted.
        const raw = await Client.open(front.imapsPort);
        await sleep(200);
        stepWallClock(stepMs);
        raw.socket.write(PROXY_HEADER);
        const secure = new Client(tlsConnect({ socket: raw.socket, ca, servername: 'localhost' }));
        assert.match((await secure.line()) ?? 'closed', /^\* OK /, 'the handshake was cut short at once');
        secure.socket.destroy();
        stepWallClock(-stepMs);
        // A client that never begins its handshake is closed at the deadline.
        const began = performance.now();
        const idle = await Client.open(front.imapsPort);
        await sleep(200);
        stepWallClock(stepMs);
        idle.socket.write(PROXY_HEADER);
        const closedAt = await idle.closedWithin(CAP_MS);
        assert.ok(closedAt !== undefined, `not closed within ${CAP_MS} ms of a pre-auth deadline of ${PREAUTH_MS} ms`);
        const took = Math.round(closedAt - began);
        assert.ok(took >= PREAUTH_MS - 300 && took < PREAUTH_MS + 5_000, `closed ${took} ms after accept with a pre-auth deadline of ${PREAUTH_MS} ms`);
      } finally {
        await front.stop();
      }
    });
  }
});

// Without a step: a client slow to send its PROXY header or to shake hands gets what is left of
// preauth_timeout_ms, not the whole of it again from the session's start (the cases above allow
// seconds of lateness, which a deadline counted from the session's start would pass; found by a
// review's mutant). The header or handshake comes 3 s into a 4 s deadline: the close is due 1 s
// after it, and one counted from there would come 4 s after it.
describe('the pre-auth deadline from accept, a late PROXY header or handshake', () => {
  const PREAUTH_MS = 4_000;
  const LATE_MS = 3_000;
  const assertClosedOnTime = async (client: Client, lateAt: number): Promise<void> => {
    const closedAt = await client.closedWithin(CAP_MS);
    assert.ok(closedAt !== undefined, `not closed within ${CAP_MS} ms`);
    const after = Math.round(closedAt - lateAt);
    // Due 1,000 ms after the late bytes; 1.5 s more allowed for a loaded machine, 4,000 ms if counted from them.
    assert.ok(after < PREAUTH_MS - LATE_MS + 1_500, `closed ${after} ms after the late bytes came ${LATE_MS} ms into a pre-auth deadline of ${PREAUTH_MS} ms`);
  };

  test('a PROXY header sent late leaves the session what is left of the deadline', async () => {
    const front = await start(directoryOf(), await deadPort(), { session: { preauth_timeout_ms: PREAUTH_MS } });
    try {
      const client = await Client.open(front.port);
      await sleep(LATE_MS);
      const lateAt = performance.now();
      client.socket.write(PROXY_HEADER);
      assert.match((await client.line()) ?? 'closed', /^\* OK /);
      await assertClosedOnTime(client, lateAt);
    } finally {
      await front.stop();
    }
  });

  test('an implicit-TLS handshake begun late leaves the session what is left of the deadline', async () => {
    const front = await start(directoryOf(), await deadPort(), { session: { preauth_timeout_ms: PREAUTH_MS } });
    try {
      const ca = await readFile(front.caFile);
      const raw = await Client.open(front.imapsPort);
      raw.socket.write(PROXY_HEADER);
      await sleep(LATE_MS);
      const lateAt = performance.now();
      const secure = new Client(tlsConnect({ socket: raw.socket, ca, servername: 'localhost' }));
      assert.match((await secure.line()) ?? 'closed', /^\* OK /);
      await assertClosedOnTime(secure, lateAt);
    } finally {
      await front.stop();
    }
  });
});

describe('the wall clock stepped during a spliced session', () => {
  for (const stepMs of STEPS) {
    test(`${stepName(stepMs)}: session.finished's durationMs is the time the session lasted`, async () => {
      const backend = await scriptedBackend();
      const front = await start(directoryOf(), backend.port);
      try {
        const began = performance.now();
        const client = await greeted(front);
        client.send(`a LOGIN ann ${PASSWORD}`);
        assert.match((await client.line()) ?? 'closed', /^a OK /);
        await sleep(300);
        stepWallClock(stepMs);
        client.send('b LOGOUT');
        assert.ok((await client.closedWithin(CAP_MS)) !== undefined, 'LOGOUT did not end the session');
        const lasted = since(began);
        await within(
          (async () => {
            while (!front.logs.some((l) => l['event'] === 'session.finished')) await sleep(20);
          })(),
          CAP_MS,
          undefined,
        );
        const durationMs = Number(front.logs.find((l) => l['event'] === 'session.finished')?.['durationMs']);
        assert.ok(durationMs >= 250 && durationMs <= lasted + 50, `durationMs ${durationMs} for a session of ${lasted} ms`);
      } finally {
        await front.stop();
        await backend.close();
      }
    });
  }
});
