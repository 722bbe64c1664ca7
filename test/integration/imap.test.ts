/**
 * IMAP through mailfront against real servers: slapd for the directory, two Dovecot slots of
 * store "alpha" (master and replica), a Dovecot with a master user for store "beta", and Cyrus
 * (SASL authzid) for store "gamma". Clients: imapflow and raw sockets.
 */
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { ImapFlow } from 'imapflow';
import type { ImapFlowOptions } from 'imapflow';
import { LineClient, startCyrus, startDovecot, startSlapd } from './servers/index.js';
import type { Cyrus, Dovecot, Slapd } from './servers/index.js';
import { CountingClient } from './counting-client.js';
import { AUTH_FAILURE_DELAY_MS, assertNoRegisteredSecret, assertSameFailure, linesOfSession, loginEventsOf, makeMessage, registerPasswords, registerSecrets, sessionIdOf, startFront, waitForLog } from './front.js';
import type { Front, StoreSpec } from './front.js';

const PASSWORDS = {
  alice: 'Alice-pw-9f3e',
  bob: 'Bob-pw-71c2',
  carol: 'Carol-pw-5a1d',
  dave: 'Dave-pw-0b77',
  erin: 'Erin-pw-c0de',
};
const MASTER = { name: 'proxymaster', password: 'Master-pw-31aa' };
const CYRUS_PROXY = { name: 'proxyadmin', password: 'Cyrus-proxy-pw-88' };
registerSecrets([
  ...Object.values(PASSWORDS),
  MASTER.password,
  CYRUS_PROXY.password,
  ...Object.entries(PASSWORDS).map(([user, pw]) => Buffer.from(`\0${user}\0${pw}`).toString('base64')),
]);

let slapd: Slapd;
let alphaMaster: Dovecot;
let alphaReplica: Dovecot;
let beta: Dovecot;
let cyrus: Cyrus;
let front: Front;
let storesAtStart: Record<string, StoreSpec>;
const bigMessage = makeMessage('big', 10 * 1024 * 1024);

function client(port: number, user: string, password: string, extra: Partial<ImapFlowOptions> = {}): ImapFlow {
  registerPasswords(password);
  return new ImapFlow({
    host: '127.0.0.1',
    port,
    secure: false,
    doSTARTTLS: true,
    tls: { ca: front.caPem, servername: 'localhost' },
    auth: { user, pass: password },
    logger: false,
    ...extra,
  } as ImapFlowOptions);
}

/** Dovecot's login line for mailfront's `session` (mailfront names it through ID), waited for up to 3 s ('' if none). */
async function dovecotLogin(dovecot: Dovecot, session: string): Promise<string> {
  const deadline = Date.now() + 3_000;
  while (!(await dovecot.readLog()).includes(`session=<${session}>`) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  return (await dovecot.readLog()).split('\n').find((l) => l.includes(`session=<${session}>`)) ?? '';
}

async function subjects(c: ImapFlow): Promise<string[]> {
  const lock = await c.getMailboxLock('INBOX');
  try {
    const out: string[] = [];
    for await (const m of c.fetch('1:*', { envelope: true })) out.push(m.envelope?.subject ?? '');
    return out;
  } finally {
    lock.release();
  }
}

before(async () => {
  slapd = await startSlapd({
    users: [
      { uid: 'alice', password: PASSWORDS.alice, store: 'alpha' },
      { uid: 'bob', password: PASSWORDS.bob, store: 'beta' },
      { uid: 'carol', password: PASSWORDS.carol, store: 'gamma' },
      { uid: 'dave', password: PASSWORDS.dave }, // no store
      { uid: 'erin', password: PASSWORDS.erin, store: 'nowhere' }, // unknown store
    ],
  });
  [alphaMaster, alphaReplica, beta, cyrus] = await Promise.all([
    startDovecot({ name: 'alpha-master', users: [{ name: 'alice', password: PASSWORDS.alice }], tls: true }),
    startDovecot({ name: 'alpha-replica', users: [{ name: 'alice', password: PASSWORDS.alice }] }),
    startDovecot({ name: 'beta', users: [{ name: 'bob', password: 'bob-backend-only' }], masterUser: MASTER }),
    startCyrus({ users: [{ name: 'carol', password: 'carol-backend-only' }], proxyAdmin: CYRUS_PROXY }),
  ]);
  await alphaMaster.deliver('alice', makeMessage('alpha master hello'));
  await alphaMaster.deliver('alice', bigMessage);
  await alphaReplica.deliver('alice', makeMessage('alpha REPLICA must never be seen'));
  await beta.deliver('bob', makeMessage('beta hello'));
  await cyrus.deliver('carol', makeMessage('gamma hello'));
  storesAtStart = {
      alpha: {
        currentMaster: 'slot-a1',
        preferredMaster: 'slot-a1',
        slots: {
          'slot-a1': { imapPort: alphaMaster.imapPort, imapsPort: alphaMaster.imapsPort!, pop3Port: alphaMaster.pop3Port },
          'slot-a2': { imapPort: alphaReplica.imapPort, pop3Port: alphaReplica.pop3Port },
        },
      },
      beta: {
        currentMaster: 'slot-b1',
        slots: { 'slot-b1': { imapPort: beta.imapPort, pop3Port: beta.pop3Port } },
        backend: { login_mode: 'master-user', proxy_user: MASTER.name, proxy_password: MASTER.password },
      },
      gamma: {
        currentMaster: 'slot-c1',
        slots: { 'slot-c1': { imapPort: cyrus.imapPort, pop3Port: cyrus.pop3Port } },
        backend: { login_mode: 'sasl-authzid', proxy_user: CYRUS_PROXY.name, proxy_password: CYRUS_PROXY.password },
      },
  };
  front = await startFront({ slapd, stores: storesAtStart });
});

after(async () => {
  await front?.stop();
  await Promise.all([slapd?.stop(), alphaMaster?.stop(), alphaReplica?.stop(), beta?.stop(), cyrus?.stop()]);
});

describe('IMAP sessions through mailfront', () => {
  test('LOGIN over STARTTLS reaches the current master: SELECT, FETCH 10 MB byte-identical, APPEND', async () => {
    const c = client(front.imapPort, 'alice', PASSWORDS.alice);
    await c.connect();
    try {
      assert.deepEqual((await subjects(c)).slice(0, 1), ['alpha master hello']);
      const lock = await c.getMailboxLock('INBOX');
      try {
        const { content } = await c.download("2", undefined, { uid: false });
        assert.ok(content);
        const chunks: Buffer[] = [];
        for await (const chunk of content) chunks.push(chunk as Buffer);
        const body = Buffer.concat(chunks);
        assert.equal(body.length, bigMessage.length);
        assert.equal(createHash('sha256').update(body).digest('hex'), createHash('sha256').update(bigMessage).digest('hex'));
      } finally {
        lock.release();
      }
      await c.append('INBOX', makeMessage('appended through mailfront'));
      assert.ok((await subjects(c)).includes('appended through mailfront'));
    } finally {
      await c.logout();
    }
    // The APPEND landed on the master slot's disk, not anywhere else.
    assert.ok((await subjectsDirect(alphaMaster.imapPort, 'alice', PASSWORDS.alice)).includes('appended through mailfront'));
    assert.ok(!(await subjectsDirect(alphaReplica.imapPort, 'alice', PASSWORDS.alice)).includes('appended through mailfront'));
  });

  test('AUTHENTICATE PLAIN over implicit TLS', async () => {
    const c = client(front.imapsPort, 'alice', PASSWORDS.alice, { secure: true, doSTARTTLS: false, auth: { user: 'alice', pass: PASSWORDS.alice, loginMethod: 'AUTH=PLAIN' } } as Partial<ImapFlowOptions>);
    await c.connect();
    try {
      assert.equal((await subjects(c))[0], 'alpha master hello');
    } finally {
      await c.logout();
    }
    const line = await waitForLog(front, (l) => l['event'] === 'session.authenticated' && l['mechanism'] === 'PLAIN');
    assert.equal(line['user'], 'alice');
  });

  test('an IDLE notification arrives through the splice', async () => {
    const c = client(front.imapPort, 'alice', PASSWORDS.alice);
    await c.connect();
    try {
      await c.mailboxOpen('INBOX');
      const before = (c.mailbox as { exists: number }).exists;
      const arrived = new Promise<number>((resolve) => c.on('exists', (e: { count: number }) => resolve(e.count)));
      const idle = c.idle();
      await new Promise((r) => setTimeout(r, 300));
      await alphaMaster.deliver('alice', makeMessage('delivered during IDLE'));
      const count = await Promise.race([arrived, new Promise<number>((_, reject) => setTimeout(() => reject(new Error('no EXISTS within 10 s')), 10_000))]);
      assert.ok(count > before);
      void idle;
    } finally {
      await c.logout();
    }
  });

  test('master-user login mode: store beta user lands on beta (checked by content)', async () => {
    const mark = front.logs.length;
    const logBefore = (await beta.readLog()).length;
    const c = client(front.imapPort, 'bob', PASSWORDS.bob);
    await c.connect();
    try {
      assert.deepEqual(await subjects(c), ['beta hello']);
    } finally {
      await c.logout();
    }
    // This login, in beta's log: the master user logged in as bob (bob's own backend password is
    // one mailfront never knew), and the login line carries this session's id.
    const spliced = await waitForLog(front, (l) => l['event'] === 'session.spliced' && l['user'] === 'bob', 5_000, mark);
    const session = String(spliced['session']);
    const deadline = Date.now() + 3_000;
    while (!(await beta.readLog()).slice(logBefore).includes(`session=<${session}>`) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    const log = (await beta.readLog()).slice(logBefore);
    assert.match(log, /Master user logging in as bob\b/);
    assert.match(log, new RegExp(`imap-login: Info: Login: user=<bob>.*session=<${session}>`));
  });

  test('SASL PLAIN authzid login mode against Cyrus: store gamma user lands on Cyrus', async () => {
    const c = client(front.imapPort, 'carol', PASSWORDS.carol);
    await c.connect();
    try {
      assert.deepEqual(await subjects(c), ['gamma hello']);
    } finally {
      await c.logout();
    }
  });

  test('commands pipelined after LOGIN are forwarded, with the backend capabilities in the tagged OK', async () => {
    const raw = await LineClient.connect(front.imapTrustedPort);
    try {
      await raw.readLine();
      raw.write(`a1 LOGIN alice "${PASSWORDS.alice}"\r\na2 SELECT INBOX\r\na3 LOGOUT\r\n`);
      const lines: string[] = [];
      for (;;) {
        const line = await raw.readLine();
        lines.push(line);
        if (line.startsWith('a3 ')) break;
      }
      assert.match(lines.find((l) => l.startsWith('a1 ')) ?? '', /^a1 OK \[CAPABILITY IMAP4rev1 .*\] /);
      assert.match(lines.find((l) => l.startsWith('a2 ')) ?? '', /^a2 OK \[READ-WRITE\]/);
      assert.ok(lines.some((l) => /^\* \d+ EXISTS$/.test(l)));
    } finally {
      raw.close();
    }
  });

  test('the session end is logged once with user, store, slot, client, bytes, duration and reason; no secret is logged', async () => {
    const mark = front.logs.length;
    // A raw client that waits for the server to close after LOGOUT (a client library closes as
    // soon as it reads the OK, racing the backend's close): the reason is then the backend's.
    const raw = await LineClient.connect(front.imapTrustedPort);
    let session: string;
    try {
      session = await sessionIdOf(front, raw.socket.localPort!, mark);
      await raw.readLine();
      raw.send(`a1 LOGIN alice "${PASSWORDS.alice}"`);
      assert.match(await raw.readLine(), /^a1 OK /);
      raw.send('a2 LOGOUT');
      for (let line = await raw.readLine(); !line.startsWith('a2 '); line = await raw.readLine());
      assert.equal(await raw.waitClosed(5_000), true, 'the backend closes the connection after LOGOUT');
    } finally {
      raw.close();
    }
    // This session's line (an earlier test's session of alice may end after the mark too).
    const finished = await waitForLog(front, (l) => l['event'] === 'session.finished' && l['session'] === session, 5_000, mark);
    assert.equal(finished['user'], 'alice');
    assert.equal(finished['phase'], 'spliced');
    assert.equal(front.logs.slice(mark).filter((l) => l['event'] === 'session.finished' && l['session'] === finished['session']).length, 1);
    assert.equal(finished['store'], 'alpha');
    assert.equal(finished['slot'], 'slot-a1');
    assert.equal(finished['client'], '127.0.0.1');
    assert.equal(typeof finished['bytesFromClient'], 'number');
    assert.ok((finished['bytesToClient'] as number) > 0);
    assert.equal(typeof finished['durationMs'], 'number');
    assert.equal(finished['reason'], 'backend-closed', 'the backend ended the session in answer to LOGOUT');
    assert.equal(typeof finished['session'], 'string');
    // Every line this login wrote (from the mark on), in every form the suite scan knows.
    const lines = front.rawLogs.slice(mark);
    assert.ok(lines.some((l) => l.includes(String(finished['session']))), 'the scanned lines include this session');
    assertNoRegisteredSecret(lines, 'the lines of this login');
  });

  for (const starttls of [false, true]) {
    test(`the session end counts every byte each way, a pipelined login included, exactly once (${starttls ? 'after STARTTLS' : 'plain TCP'})`, async () => {
      const mark = front.logs.length;
      const client = await CountingClient.connect(starttls ? front.imapPort : front.imapTrustedPort);
      if (starttls) {
        client.send('s1 STARTTLS\r\n');
        await client.until(/^s1 OK/m);
        await client.startTls(front.caPem);
      }
      // The commands behind LOGIN are read before the login completes and handed to the splice.
      client.send(`a1 LOGIN alice "${PASSWORDS.alice}"\r\na2 SELECT INBOX\r\na3 NOOP\r\n`);
      await client.until(/^a3 OK/m);
      // And one after the splice is up.
      client.send('a4 LOGOUT\r\n');
      await client.closed;
      assert.match(client.text, /^a4 OK/m);
      // Other tests' sessions for alice may end while this one runs: the client port tells this one apart.
      const entry = await waitForLog(front, (l) => l['event'] === 'session.finished' && l['user'] === 'alice' && l['clientPort'] === client.port, 10_000, mark);
      assert.equal(entry['phase'], 'spliced');
      // Dovecot closes after its LOGOUT answer; the end of the socket under TLS is not mistaken for a client leaving before login.
      assert.equal(entry['reason'], 'backend-closed');
      assert.equal(entry['bytesFromClient'], client.sent);
      assert.equal(entry['bytesToClient'], client.received);
    });
  }
});

describe('IMAP towards TLS backends and address forwarding', () => {
  const alphaWith = (backend: Record<string, unknown>) => ({
    alpha: {
      currentMaster: 'slot-a1',
      slots: { 'slot-a1': { imapPort: alphaMaster.imapPort, imapsPort: alphaMaster.imapsPort!, pop3Port: alphaMaster.pop3Port, pop3sPort: alphaMaster.pop3sPort! } },
      backend,
    },
  });

  async function restoreStores(): Promise<void> {
    await front.writeStores(storesAtStart);
    await front.mailfront.reloadStoreMap();
  }

  for (const tls of ['starttls', 'implicit'] as const) {
    test(`backend TLS (${tls}) verified against the CA file`, async () => {
      await front.writeStores(alphaWith({ tls, ca_file: alphaMaster.caFile!, tls_servername: 'localhost' }));
      await front.mailfront.reloadStoreMap();
      try {
        await loginThroughTlsBackend(tls);
      } finally {
        await restoreStores();
      }
    });
  }

  async function loginThroughTlsBackend(tls: 'starttls' | 'implicit'): Promise<void> {
      const loggedIn = front.logs.length;
      const c = client(front.imapPort, 'alice', PASSWORDS.alice);
      await c.connect();
      try {
        assert.equal((await subjects(c))[0], 'alpha master hello');
      } finally {
        await c.logout();
      }
      // Over TLS to Dovecot: its login line for the session (named to it through ID) says so.
      const spliced = await waitForLog(front, (l) => l['event'] === 'session.spliced' && l['user'] === 'alice' && l['slot'] === 'slot-a1', 5_000, loggedIn);
      const login = await dovecotLogin(alphaMaster, String(spliced['session']));
      assert.match(login, /imap-login: Info: Login: user=<alice>/, login);
      assert.match(login, /, TLS,/, `the login to Dovecot went over TLS: ${login}`);
      // Without the CA the backend's certificate is not trusted: the login fails as unavailable.
      await front.writeStores(alphaWith({ tls }));
      await front.mailfront.reloadStoreMap();
      // From here on: the line of the other TLS mode's refusal must not count for this one.
      const mark = front.logs.length;
      const refused = client(front.imapPort, 'alice', PASSWORDS.alice);
      await assert.rejects(refused.connect(), (e: { serverResponseCode?: string }) => e.serverResponseCode === 'UNAVAILABLE');
      await waitForLog(front, (l) => l['event'] === 'session.login_failed' && /certificate/i.test(String(l['reason'])), 5_000, mark);
  }

  test('the client address and session id reach Dovecot through ID', async () => {
    // From 127.0.0.2: mailfront itself connects to Dovecot from 127.0.0.1, so Dovecot can only
    // name 127.0.0.2 as the remote address if mailfront forwarded it.
    const mark = front.logs.length;
    const c = await CountingClient.connect(front.imapPort, '127.0.0.2');
    c.send('s1 STARTTLS\r\n');
    await c.until(/^s1 OK/m);
    await c.startTls(front.caPem);
    c.send(`a1 LOGIN alice "${PASSWORDS.alice}"\r\n`);
    await c.until(/^a1 OK/m);
    c.send('a2 LOGOUT\r\n');
    await c.closed;
    const spliced = await waitForLog(front, (l) => l['event'] === 'session.spliced' && l['user'] === 'alice' && l['client'] === '127.0.0.2', 5_000, mark);
    const login = await dovecotLogin(alphaMaster, String(spliced['session']));
    assert.match(login, /imap-login: Info: Login: user=<alice>/, login);
    assert.match(login, /\brip=127\.0\.0\.2,/, login);
  });
});

describe('IMAP failures', () => {
  async function rawLogin(user: string, password: string, port = front.imapTrustedPort): Promise<{ line: string; ms: number }> {
    registerPasswords(password);
    const raw = await LineClient.connect(port);
    try {
      await raw.readLine();
      const started = Date.now();
      raw.write(`t1 LOGIN {${Buffer.byteLength(user)}+}\r\n${user} {${Buffer.byteLength(password)}+}\r\n${password}\r\n`);
      for (;;) {
        const line = await raw.readLine();
        if (line.startsWith('t1 ')) return { line, ms: Date.now() - started };
      }
    } finally {
      raw.close();
    }
  }

  test('wrong password and unknown user get the same answer after the same delay', async () => {
    await assertSameFailure(rawLogin, ['alice', 'not-the-password'], ['nosuchuser', 'whatever-pw'], 't1 NO [AUTHENTICATIONFAILED] Authentication failed.');
  });

  test('an empty password is refused (an LDAP unauthenticated bind would "succeed")', async () => {
    assert.equal((await rawLogin('alice', '')).line, 't1 NO [AUTHENTICATIONFAILED] Authentication failed.');
  });

  test('LDAP filter metacharacters in the user name never match another entry', async () => {
    for (const user of ['*', 'al*', ')(uid=*', 'alice)(uid=*', 'a\\2a', 'alice\\']) {
      const { line } = await rawLogin(user, PASSWORDS.alice);
      assert.equal(line, 't1 NO [AUTHENTICATIONFAILED] Authentication failed.', `user ${JSON.stringify(user)}`);
    }
  });

  test('a NUL in the user name is refused before the directory', async () => {
    const mark = front.logs.length;
    const raw = await LineClient.connect(front.imapTrustedPort);
    try {
      await raw.readLine();
      const session = await sessionIdOf(front, raw.socket.localPort!, mark);
      const started = Date.now();
      raw.write(`t1 LOGIN {6+}\r\nal\0ice {${PASSWORDS.alice.length}+}\r\n${PASSWORDS.alice}\r\n`);
      const line = await raw.readLine();
      const ms = Date.now() - started;
      assert.equal(line, 't1 NO [AUTHENTICATIONFAILED] Authentication failed.');
      // Refused by the protocol layer: no login was started, so nothing went to the directory
      // (a login that was would have logged its outcome before the answer, and been answered
      // only after the auth failure delay).
      assert.deepEqual(loginEventsOf(front, session), [], JSON.stringify(linesOfSession(front, session)));
      assert.ok(ms < AUTH_FAILURE_DELAY_MS, `answered after ${ms} ms: the auth failure delay of a login that was attempted`);
    } finally {
      raw.close();
    }
  });

  test('a user without a store, and a user of an unknown store, get NO [UNAVAILABLE] and an error log', async () => {
    const noStore = await rawLogin('dave', PASSWORDS.dave);
    assert.match(noStore.line, /^t1 NO \[UNAVAILABLE\] /);
    const unknownStore = await rawLogin('erin', PASSWORDS.erin);
    assert.match(unknownStore.line, /^t1 NO \[UNAVAILABLE\] /);
    const log = await waitForLog(front, (l) => l['event'] === 'session.login_failed' && l['code'] === 'UNKNOWN_STORE');
    assert.equal(log['level'], 'error');
    assert.match(String(log['reason']), /nowhere/);
  });

  test('SASL PLAIN with an authorization identity: the same user is fine, another user is refused (RFC 4616 §2)', async () => {
    const plain = (authzid: string): string => Buffer.from(`${authzid}\0alice\0${PASSWORDS.alice}`).toString('base64');
    const raw = await LineClient.connect(front.imapTrustedPort);
    try {
      await raw.readLine();
      const mark = front.logs.length;
      const other = await raw.imap(`AUTHENTICATE PLAIN ${plain('bob')}`);
      assert.equal(other.status, 'NO');
      assert.match(other.text, /^\[AUTHENTICATIONFAILED\]/);
      await waitForLog(front, (l) => l['event'] === 'session.login_failed' && l['code'] === 'AUTHZID_REFUSED', 5_000, mark);
      // The refused identity is the client's own text: a line separator or a bidi override in it
      // could fake or reorder lines in a log viewer, so the log shows them as U+FFFD.
      const forging = `x\u2028{"event":"session.spliced","user":"root"}\u202e\u0085`;
      const marked = front.logs.length;
      assert.equal((await raw.imap(`AUTHENTICATE PLAIN ${plain(forging)}`)).status, 'NO');
      const refused = await waitForLog(front, (l) => l['event'] === 'session.login_failed' && l['code'] === 'AUTHZID_REFUSED', 5_000, marked);
      const reason = String(refused['reason']);
      assert.doesNotMatch(reason, /[\u2028\u202e\u0085]/u, reason);
      assert.match(reason, /x\ufffd\{/u);
      const same = await raw.imap(`AUTHENTICATE PLAIN ${plain('alice')}`);
      assert.equal(same.status, 'OK', same.text);
    } finally {
      raw.close();
    }
  });

  test('plaintext LOGIN without TLS is refused with LOGINDISABLED / PRIVACYREQUIRED', async () => {
    const raw = await LineClient.connect(front.imapPort);
    try {
      const greeting = await raw.readLine();
      assert.match(greeting, /LOGINDISABLED/);
      assert.match(greeting, /STARTTLS/);
      const result = await raw.imap(`LOGIN alice "${PASSWORDS.alice}"`);
      assert.equal(result.status, 'NO');
      assert.match(result.text, /^\[PRIVACYREQUIRED\]/);
      const auth = await raw.imap(`AUTHENTICATE PLAIN ${Buffer.from(`\0alice\0${PASSWORDS.alice}`).toString('base64')}`);
      assert.equal(auth.status, 'NO');
      assert.match(auth.text, /^\[PRIVACYREQUIRED\]/);
    } finally {
      raw.close();
    }
  });

  test('a stopped backend gives NO [UNAVAILABLE] and an error log naming the slot', async () => {
    await beta.stop();
    try {
      const { line } = await rawLogin('bob', PASSWORDS.bob);
      assert.match(line, /^t1 NO \[UNAVAILABLE\] /);
      const log = await waitForLog(front, (l) => l['event'] === 'session.login_failed' && /slot-b1/.test(String(l['reason'])));
      assert.equal(log['kind'], 'connect');
      assert.equal(log['level'], 'error');
    } finally {
      beta = await startDovecot({ name: 'beta', users: [{ name: 'bob', password: 'bob-backend-only' }], masterUser: MASTER });
    }
  });

  test('a stopped directory gives NO [UNAVAILABLE], not an authentication failure', async () => {
    await slapd.stopOnly();
    try {
      const { line } = await rawLogin('alice', PASSWORDS.alice);
      assert.match(line, /^t1 NO \[UNAVAILABLE\] /);
      await waitForLog(front, (l) => l['event'] === 'session.login_failed' && l['kind'] === 'auth-tempfail');
    } finally {
      await slapd.startAgain();
    }
    const { line } = await rawLogin('alice', PASSWORDS.alice);
    assert.match(line, /^t1 OK /);
  });
});

describe('hostile IMAP input', () => {
  test('a {4294967296} literal is refused and its bytes are never read as commands', async () => {
    const raw = await LineClient.connect(front.imapTrustedPort);
    try {
      await raw.readLine();
      raw.write(`a LOGIN {4294967296}\r\nb LOGIN alice "${PASSWORDS.alice}"\r\n`);
      const lines = await linesUntilClosed(raw);
      assert.ok(lines.some((l) => /^(a BAD|\* BYE)/.test(l)), lines.join(' | '));
      assert.ok(!lines.some((l) => l.startsWith('b ')), lines.join(' | '));
    } finally {
      raw.close();
    }
  });

  test('an overlong line ends the connection with a BYE', async () => {
    const raw = await LineClient.connect(front.imapTrustedPort);
    try {
      await raw.readLine();
      raw.write(`a NOOP ${'x'.repeat(70_000)}\r\n`);
      const line = await raw.readLine();
      assert.match(line, /^(\* BYE|a BAD)/);
      assert.ok(await raw.waitClosed(3_000));
    } finally {
      raw.close();
    }
  });

  test('commands smuggled after STARTTLS in the same packet are discarded', async () => {
    const mark = front.logs.length;
    const c = await CountingClient.connect(front.imapPort);
    const session = await sessionIdOf(front, c.port, mark);
    c.send(`s1 STARTTLS\r\ns2 LOGIN alice "${PASSWORDS.alice}"\r\ns3 CAPABILITY\r\n`);
    await c.until(/^s1 OK/m);
    const plain = c.text;
    assert.doesNotMatch(plain, /^s[23] /m);
    // Over TLS, the first answer must be to the first command sent over TLS: a smuggled command
    // executed after the handshake would be answered first (s3), or hold t1 behind a login (s2).
    await c.startTls(front.caPem);
    c.send('t1 CAPABILITY\r\n');
    await c.until(/^t1 /m);
    const overTls = c.text.slice(plain.length);
    assert.match(overTls, /^\* CAPABILITY [^\r]*\r\nt1 OK [^\r]*\r\n$/, overTls);
    assert.match(overTls, /AUTH=PLAIN/, 'the capabilities are those after TLS');
    c.send('t2 LOGOUT\r\n');
    await c.closed;
    assert.doesNotMatch(c.text, /^s[23] /m);
    const finished = await waitForLog(front, (l) => l['event'] === 'session.finished' && l['session'] === session, 5_000, mark);
    assert.equal(finished['phase'], 'preauth');
    assert.equal(finished['reason'], 'logout');
    assert.deepEqual(loginEventsOf(front, session), [], 'the smuggled LOGIN was never attempted');
  });

  test('CR/LF inside SASL-decoded credentials is refused and nothing reaches a backend', async () => {
    const mark = front.logs.length;
    const raw = await LineClient.connect(front.imapTrustedPort);
    try {
      await raw.readLine();
      const session = await sessionIdOf(front, raw.socket.localPort!, mark);
      const timed = async (command: string): Promise<{ status: string; text: string; ms: number }> => {
        const started = Date.now();
        const result = await raw.imap(command);
        return { status: result.status, text: result.text, ms: Date.now() - started };
      };
      // The right password with a command behind it, and a user name with a LF in it.
      const crlf = await timed(`AUTHENTICATE PLAIN ${Buffer.from(`\0alice\0${PASSWORDS.alice}\r\nx2 DELETE INBOX`).toString('base64')}`);
      const lf = await timed(`AUTHENTICATE PLAIN ${Buffer.from(`\0alice\nx\0${PASSWORDS.alice}`).toString('base64')}`);
      for (const result of [crlf, lf]) {
        assert.equal(`${result.status} ${result.text}`, 'NO [AUTHENTICATIONFAILED] Authentication failed.');
        // Refused by the protocol layer, before any login: a login that reached the session
        // (and the directory) is answered only after the auth failure delay.
        assert.ok(result.ms < AUTH_FAILURE_DELAY_MS, `answered after ${result.ms} ms: the auth failure delay of a login that was attempted`);
      }
      // Every login the session attempts logs its outcome before the answer: there was none.
      assert.deepEqual(loginEventsOf(front, session), [], JSON.stringify(linesOfSession(front, session)));
    } finally {
      raw.close();
    }
  });
});

/** Every line the server sends until it closes the connection (fails if it does not within 3 s). */
async function linesUntilClosed(raw: LineClient): Promise<string[]> {
  const lines: string[] = [];
  for (;;) {
    try {
      lines.push(await raw.readLine(3_000));
    } catch (error) {
      assert.match(String(error), /connection closed/, `the server kept the connection open; lines so far: ${lines.join(' | ')}`);
      return lines;
    }
  }
}

/** Subjects in INBOX read directly from a backend (not through mailfront). */
async function subjectsDirect(port: number, user: string, password: string): Promise<string[]> {
  const c = new ImapFlow({ host: '127.0.0.1', port, secure: false, doSTARTTLS: false, auth: { user, pass: password }, logger: false } as ImapFlowOptions);
  await c.connect();
  try {
    return await subjects(c);
  } finally {
    await c.logout();
  }
}

test('no password (right or wrong), proxy secret or SASL blob appears in any log line', () => {
  assert.ok(front.rawLogs.length > 50, 'the suite produced logs');
  // Every secret this file registered: the users' passwords, the wrong ones the tests sent, the
  // proxy and bind secrets, in every form the suite scan knows (base64 at each alignment too).
  assertNoRegisteredSecret(front.rawLogs);
});
