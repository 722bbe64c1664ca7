/**
 * POP3 through mailfront against real servers: slapd, a Dovecot slot (replay), a Dovecot with
 * a master user, and Cyrus pop3d (SASL authzid). Clients: python3 poplib and raw sockets; a
 * scripted backend only to inject a locked mailbox. A second Cyrus with popminpoll refuses a
 * login too soon after the user's last one.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { createServer } from 'node:net';
import type { Server } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { LineClient, repoRoot, startCyrus, startDovecot, startSlapd } from './servers/index.js';
import type { Cyrus, Dovecot, Slapd } from './servers/index.js';
import { CountingClient } from './counting-client.js';
import { AUTH_FAILURE_DELAY_MS, assertNoRegisteredSecret, assertSameFailure, linesOfSession, loginEventsOf, makeMessage, registerPasswords, registerSecrets, sessionIdOf, startFront, waitForLog } from './front.js';
import type { Front } from './front.js';

const run = promisify(execFile);
const PASSWORDS = { alice: 'Alice-pop-4411', bob: 'Bob-pop-7d2e', carol: 'Carol-pop-90fa', lena: 'Lena-pop-1c1c', dora: 'Dora-pop-3e3e' };
const MASTER = { name: 'popmaster', password: 'Master-pop-5b5b' };
const CYRUS_PROXY = { name: 'proxyadmin', password: 'Cyrus-pop-proxy-66' };
registerSecrets([
  ...Object.values(PASSWORDS),
  MASTER.password,
  CYRUS_PROXY.password,
  ...Object.entries(PASSWORDS).map(([user, pw]) => Buffer.from(`\0${user}\0${pw}`).toString('base64')),
]);

let slapd: Slapd;
let alpha: Dovecot;
let beta: Dovecot;
let cyrus: Cyrus;
let polled: Cyrus;
let locked: Server;
let front: Front;
const bigMessage = makeMessage('pop big', 10 * 1024 * 1024);

interface PopResult {
  welcome?: string;
  login?: string;
  results?: unknown[];
  quit?: string;
  error?: string;
}

async function poplib(request: { port: number; user: string; password: string; mode: 'plain' | 'stls' | 'ssl'; actions?: string[] }): Promise<PopResult> {
  registerPasswords(request.password);
  const script = join(repoRoot(), 'test/integration/clients/pop3client.py');
  const { stdout } = await run('python3', [script, JSON.stringify({ cafile: front.certs.caFile, ...request })], { timeout: 60_000, maxBuffer: 1 << 20 });
  return JSON.parse(stdout) as PopResult;
}

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

before(async () => {
  slapd = await startSlapd({
    users: [
      { uid: 'alice', password: PASSWORDS.alice, store: 'alpha' },
      { uid: 'bob', password: PASSWORDS.bob, store: 'beta' },
      { uid: 'carol', password: PASSWORDS.carol, store: 'gamma' },
      { uid: 'lena', password: PASSWORDS.lena, store: 'locked' },
      { uid: 'dora', password: PASSWORDS.dora, store: 'delta' },
    ],
  });
  [alpha, beta, cyrus, polled] = await Promise.all([
    startDovecot({ name: 'pop-alpha', users: [{ name: 'alice', password: PASSWORDS.alice }], tls: true }),
    startDovecot({ name: 'pop-beta', users: [{ name: 'bob', password: 'bob-backend-only' }], masterUser: MASTER }),
    startCyrus({ users: [{ name: 'carol', password: 'carol-backend-only' }], proxyAdmin: CYRUS_PROXY }),
    // At most one POP3 login a minute per user (only the test below logs in as dora).
    startCyrus({ users: [{ name: 'dora', password: 'dora-backend-only' }], proxyAdmin: CYRUS_PROXY, popMinPollMinutes: 1 }),
  ]);
  // A backend whose mailbox is always locked: real servers only say so under a race.
  locked = createServer((socket) => {
    socket.write('+OK fake ready.\r\n');
    socket.on('data', (data: Buffer) => {
      for (const line of data.toString('latin1').split('\r\n').filter(Boolean)) {
        if (/^CAPA/i.test(line)) socket.write('+OK\r\nUSER\r\nRESP-CODES\r\n.\r\n');
        else if (/^USER/i.test(line)) socket.write('+OK\r\n');
        else if (/^PASS/i.test(line)) socket.write('-ERR [IN-USE] Mailbox is locked by another POP3 session\r\n');
        else socket.write('-ERR\r\n');
      }
    });
    socket.on('error', () => undefined);
  });
  await new Promise<void>((r) => locked.listen(0, '127.0.0.1', r));
  await alpha.deliver('alice', makeMessage('pop alpha one'));
  await alpha.deliver('alice', bigMessage);
  await alpha.deliver('alice', makeMessage('pop alpha three'));
  await beta.deliver('bob', makeMessage('pop beta'));
  await cyrus.deliver('carol', makeMessage('pop gamma'));
  front = await startFront({
    slapd,
    stores: {
      alpha: { currentMaster: 'pa1', slots: { pa1: { imapPort: alpha.imapPort, pop3Port: alpha.pop3Port, pop3sPort: alpha.pop3sPort! } } },
      beta: {
        currentMaster: 'pb1',
        slots: { pb1: { imapPort: beta.imapPort, pop3Port: beta.pop3Port } },
        backend: { login_mode: 'master-user', proxy_user: MASTER.name, proxy_password: MASTER.password },
      },
      gamma: {
        currentMaster: 'pc1',
        slots: { pc1: { imapPort: cyrus.imapPort, pop3Port: cyrus.pop3Port } },
        backend: { login_mode: 'sasl-authzid', proxy_user: CYRUS_PROXY.name, proxy_password: CYRUS_PROXY.password },
      },
      delta: {
        currentMaster: 'pd1',
        slots: { pd1: { imapPort: polled.imapPort, pop3Port: polled.pop3Port } },
        backend: { login_mode: 'sasl-authzid', proxy_user: CYRUS_PROXY.name, proxy_password: CYRUS_PROXY.password },
      },
      locked: { currentMaster: 'pl1', slots: { pl1: { pop3Port: (locked.address() as { port: number }).port } } },
    },
  });
});

after(async () => {
  await front?.stop();
  await new Promise((r) => locked?.close(r));
  await Promise.all([slapd?.stop(), alpha?.stop(), beta?.stop(), cyrus?.stop(), polled?.stop()]);
});

describe('POP3 sessions through mailfront (python3 poplib)', () => {
  test('STLS: STAT, LIST, UIDL and RETR of a 10 MB message byte-identical', async () => {
    const r = await poplib({ port: front.pop3Port, user: 'alice', password: PASSWORDS.alice, mode: 'stls', actions: ['stat', 'list', 'uidl', 'retr:2'] });
    assert.equal(r.error, undefined, r.error);
    assert.match(r.login ?? '', /^\+OK/);
    const [stat, list, uidl, retr] = r.results as [[number, number], string[], string[], { size: number; sha256: string }];
    assert.equal(stat[0], 3);
    assert.equal(list.length, 3);
    assert.equal(uidl.length, 3);
    assert.equal(retr.size, bigMessage.length);
    assert.equal(retr.sha256, sha256(bigMessage));
  });

  test('POP3S (implicit TLS) works and DELE + QUIT really deletes on the backend', async () => {
    const newDir = join(alpha.mailDir('alice'), 'cur');
    const r = await poplib({ port: front.pop3sPort, user: 'alice', password: PASSWORDS.alice, mode: 'ssl', actions: ['dele:3'] });
    assert.equal(r.error, undefined, r.error);
    assert.match(r.quit ?? '', /^\+OK/);
    const after = await poplib({ port: front.pop3TrustedPort, user: 'alice', password: PASSWORDS.alice, mode: 'plain', actions: ['stat'] });
    assert.equal((after.results?.[0] as number[])[0], 2);
    const files = [...(await readdir(newDir).catch(() => [])), ...(await readdir(join(alpha.mailDir('alice'), 'new')).catch(() => []))];
    assert.equal(files.length, 2);
  });

  test('master-user mode (Dovecot) and SASL authzid mode (Cyrus pop3d) land on their stores', async () => {
    const b = await poplib({ port: front.pop3Port, user: 'bob', password: PASSWORDS.bob, mode: 'stls', actions: ['stat'] });
    assert.equal(b.error, undefined, b.error);
    assert.equal((b.results?.[0] as number[])[0], 1);
    const c = await poplib({ port: front.pop3Port, user: 'carol', password: PASSWORDS.carol, mode: 'stls', actions: ['stat', 'retr:1'] });
    assert.equal(c.error, undefined, c.error);
    assert.equal((c.results?.[0] as number[])[0], 1);
    assert.equal((c.results?.[1] as { sha256: string }).sha256, sha256(makeMessage('pop gamma')));
  });

  test('CAPA before login lists TOP and UIDL, as Dovecot and Cyrus pop3d do, and TOP works after login', async () => {
    const preLogin = async (port: number): Promise<string[]> => {
      const c = await LineClient.connect(port);
      try {
        await c.readLine();
        return await c.pop3Multi('CAPA');
      } finally {
        c.close();
      }
    };
    // Thunderbird decides from this list whether to fetch headers only (TOP) and how to read a failed UIDL.
    for (const [name, port] of [['Dovecot', alpha.pop3Port], ['Cyrus', cyrus.pop3Port], ['mailfront', front.pop3TrustedPort]] as const) {
      const capa = await preLogin(port);
      assert.ok(capa.includes('TOP') && capa.includes('UIDL'), `${name}: ${JSON.stringify(capa)}`);
    }
    const raw = await LineClient.connect(front.pop3TrustedPort);
    try {
      await raw.readLine();
      await raw.pop3('USER carol');
      await raw.pop3(`PASS ${PASSWORDS.carol}`);
      const top = await raw.pop3Multi('TOP 1 0');
      assert.ok(top.some((l) => /^Subject: pop gamma$/i.test(l)), JSON.stringify(top));
      assert.equal(top.at(-1), '', 'the header and the blank line, no body');
      await raw.pop3('QUIT');
    } finally {
      raw.close();
    }
  });

  test('AUTH PLAIN with an initial response, and pipelined commands after it are kept', async () => {
    const raw = await LineClient.connect(front.pop3TrustedPort);
    try {
      await raw.readLine();
      raw.write(`AUTH PLAIN ${Buffer.from(`\0alice\0${PASSWORDS.alice}`).toString('base64')}\r\nSTAT\r\nQUIT\r\n`);
      assert.match(await raw.readLine(), /^\+OK/);
      assert.match(await raw.readLine(), /^\+OK \d+ \d+$/);
      assert.match(await raw.readLine(), /^\+OK/);
    } finally {
      raw.close();
    }
  });

  for (const outcome of ['spliced', 'refused'] as const) {
    test(`the session end counts every byte each way exactly once (${outcome === 'spliced' ? 'a login with a pipelined STAT' : 'a wrong password, then QUIT'})`, async () => {
      const mark = front.logs.length;
      const client = await CountingClient.connect(front.pop3TrustedPort);
      if (outcome === 'spliced') {
        // STAT rides behind PASS: read before the login completes, relayed by the splice.
        client.send(`USER alice\r\nPASS ${PASSWORDS.alice}\r\nSTAT\r\n`);
        await client.until(/^\+OK \d+ \d+\r\n/m);
      } else {
        registerPasswords('not-the-password');
        client.send('USER alice\r\nPASS not-the-password\r\n');
        await client.until(/^-ERR \[AUTH\]/m);
      }
      client.send('QUIT\r\n');
      await client.closed;
      // Other tests' sessions for alice may end while this one runs: the client port tells this one apart.
      const entry = await waitForLog(front, (l) => l['event'] === 'session.finished' && l['clientPort'] === client.port, 10_000, mark);
      assert.equal(entry['phase'], outcome === 'spliced' ? 'spliced' : 'preauth');
      assert.equal(entry['bytesFromClient'], client.sent);
      assert.equal(entry['bytesToClient'], client.received);
    });
  }

  test('the client address and session id reach Dovecot through XCLIENT', async () => {
    // From 127.0.0.2: mailfront itself connects to Dovecot from 127.0.0.1, so Dovecot can only
    // name 127.0.0.2 as the remote address if mailfront forwarded it.
    const mark = front.logs.length;
    const raw = await LineClient.connect(front.pop3TrustedPort, { localAddress: '127.0.0.2' });
    try {
      await raw.readLine();
      await raw.pop3('USER alice');
      await raw.pop3(`PASS ${PASSWORDS.alice}`);
      await raw.pop3('QUIT');
    } finally {
      raw.close();
    }
    const spliced = await waitForLog(front, (l) => l['event'] === 'session.spliced' && l['store'] === 'alpha' && l['client'] === '127.0.0.2', 5_000, mark);
    const session = String(spliced['session']);
    const deadline = Date.now() + 3_000;
    while (!(await alpha.readLog()).includes(`session=<${session}>`) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    const login = (await alpha.readLog()).split('\n').find((l) => l.includes(`session=<${session}>`)) ?? '';
    assert.match(login, /pop3-login: Info: Login: user=<alice>/, login);
    assert.match(login, /\brip=127\.0\.0\.2,/, login);
  });
});

describe('POP3 failures', () => {
  async function rawPass(user: string, password: string): Promise<{ line: string; ms: number }> {
    registerPasswords(password);
    const raw = await LineClient.connect(front.pop3TrustedPort);
    try {
      await raw.readLine();
      raw.write(`USER ${user}\r\n`);
      await raw.readLine();
      const started = Date.now();
      raw.write(`PASS ${password}\r\n`);
      return { line: await raw.readLine(), ms: Date.now() - started };
    } finally {
      raw.close();
    }
  }

  test('wrong password and unknown user: the same -ERR [AUTH] after the same delay', async () => {
    await assertSameFailure(rawPass, ['alice', 'nope-not-it'], ['nobody', 'nope-not-it'], '-ERR [AUTH] Authentication failed.');
  });

  test('a locked mailbox is relayed as -ERR [IN-USE]', async () => {
    const { line } = await rawPass('lena', PASSWORDS.lena);
    assert.match(line, /^-ERR \[IN-USE\] /);
  });

  test('a login sooner than Cyrus popminpoll allows is relayed as -ERR [LOGIN-DELAY], logged at info and counted apart', async () => {
    const first = await LineClient.connect(front.pop3TrustedPort);
    try {
      await first.readLine();
      await first.pop3('USER dora');
      assert.match(await first.pop3(`PASS ${PASSWORDS.dora}`), /^\+OK/);
      await first.pop3('QUIT');
    } finally {
      first.close();
    }
    const mark = front.logs.length;
    // RFC 2449 §8.1.2: the client polls too often. fetchmail waits on [LOGIN-DELAY]; a
    // [SYS/TEMP] with another text it reads as a failed password.
    const { line } = await rawPass('dora', PASSWORDS.dora);
    assert.match(line, /^-ERR \[LOGIN-DELAY\] /);
    const failed = await waitForLog(front, (l) => l['event'] === 'session.login_failed' && l['user'] === 'dora', 5_000, mark);
    assert.equal(failed['kind'], 'login-delay');
    assert.equal(failed['code'], 'BACKEND_LOGIN_DELAY');
    assert.equal(failed['level'], 'info', 'the user polling too often is no fault of the fleet');
    const exposition = (await front.mailfront.metrics.exposition()).body;
    assert.match(exposition, /^mailfront_logins_total\{protocol="pop3",result="login-delay"\} 1$/m);
    assert.match(exposition, /^mailfront_backend_login_duration_seconds_count\{result="login-delay"\} 1$/m);
    assert.match(exposition, /^mailfront_backend_logins_total\{store="delta",result="login-delay"\} 1$/m);
  });

  test('a stopped backend and a stopped directory are -ERR [SYS/TEMP]', async () => {
    await beta.stop();
    try {
      assert.match((await rawPass('bob', PASSWORDS.bob)).line, /^-ERR \[SYS\/TEMP\] /);
    } finally {
      beta = await startDovecot({ name: 'pop-beta', users: [{ name: 'bob', password: 'bob-backend-only' }], masterUser: MASTER });
    }
    await slapd.stopOnly();
    try {
      assert.match((await rawPass('alice', PASSWORDS.alice)).line, /^-ERR \[SYS\/TEMP\] /);
    } finally {
      await slapd.startAgain();
    }
  });

  test('plaintext USER/PASS without TLS is refused on a listener that requires TLS', async () => {
    const raw = await LineClient.connect(front.pop3Port);
    try {
      await raw.readLine();
      const capa = await raw.pop3Multi('CAPA');
      assert.ok(capa.includes('STLS'));
      assert.ok(!capa.some((l) => l.startsWith('SASL') || l === 'USER'));
      raw.send('USER alice');
      assert.match(await raw.readLine(), /^-ERR \[AUTH\] /);
    } finally {
      raw.close();
    }
  });
});

describe('hostile POP3 input', () => {
  test('commands smuggled after STLS in the same packet are discarded', async () => {
    const mark = front.logs.length;
    const c = await CountingClient.connect(front.pop3Port);
    const session = await sessionIdOf(front, c.port, mark);
    c.send(`STLS\r\nUSER alice\r\nPASS ${PASSWORDS.alice}\r\nSTAT\r\n`);
    await c.until(/^\+OK Begin TLS negotiation\r\n/m);
    const plain = c.text;
    // The greeting and the STLS answer, nothing else.
    assert.equal(plain.split('\r\n').filter(Boolean).length, 2, plain);
    // Over TLS, the first answer must be to the first command sent over TLS: smuggled commands
    // executed after the handshake would be answered first (USER's +OK), or hold CAPA behind a login.
    await c.startTls(front.caPem);
    c.send('CAPA\r\n');
    await c.until(/\r\n\.\r\n/);
    const overTls = c.text.slice(plain.length);
    assert.match(overTls, /^\+OK Capability list follows\r\n(?:[^\r.][^\r]*\r\n)*\.\r\n$/, overTls);
    assert.match(overTls, /\r\nUSER\r\n/, 'the capabilities are those after TLS');
    c.send('QUIT\r\n');
    await c.closed;
    assert.equal(c.text.slice(plain.length + overTls.length), '+OK Logging out\r\n');
    const finished = await waitForLog(front, (l) => l['event'] === 'session.finished' && l['session'] === session, 5_000, mark);
    assert.equal(finished['phase'], 'preauth');
    assert.equal(finished['reason'], 'logout');
    assert.deepEqual(loginEventsOf(front, session), [], 'the smuggled USER/PASS was never attempted');
  });

  test('CR/LF inside AUTH PLAIN credentials is refused before any backend', async () => {
    const mark = front.logs.length;
    const raw = await LineClient.connect(front.pop3TrustedPort);
    try {
      await raw.readLine();
      const session = await sessionIdOf(front, raw.socket.localPort!, mark);
      const blob = Buffer.from(`\0alice\0${PASSWORDS.alice}\r\nDELE 1`).toString('base64');
      const started = Date.now();
      raw.send(`AUTH PLAIN ${blob}`);
      // The protocol layer's own answer; a login that reached the directory would end in
      // "-ERR [AUTH] Authentication failed." after the auth failure delay.
      assert.equal(await raw.readLine(), '-ERR [AUTH] Invalid characters in credentials');
      const ms = Date.now() - started;
      assert.ok(ms < AUTH_FAILURE_DELAY_MS, `answered after ${ms} ms: the auth failure delay of a login that was attempted`);
      // Every login the session attempts logs its outcome before the answer: there was none.
      assert.deepEqual(loginEventsOf(front, session), [], JSON.stringify(linesOfSession(front, session)));
    } finally {
      raw.close();
    }
  });

  test('an overlong line ends the connection', async () => {
    const raw = await LineClient.connect(front.pop3TrustedPort);
    try {
      await raw.readLine();
      raw.write(`USER ${'x'.repeat(100_000)}\r\n`);
      assert.match(await raw.readLine(), /^-ERR/);
      assert.ok(await raw.waitClosed(3_000));
    } finally {
      raw.close();
    }
  });
});

test('no password (right or wrong), proxy secret or SASL blob appears in any log line', () => {
  assert.ok(front.rawLogs.length > 50, 'the suite produced logs');
  // Every secret this file registered: the users' passwords, the wrong ones the tests sent, the
  // proxy and bind secrets, in every form the suite scan knows (base64 at each alignment too).
  assertNoRegisteredSecret(front.rawLogs);
});
