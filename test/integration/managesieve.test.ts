/**
 * ManageSieve (RFC 5804) through mailfront against real servers: slapd, two Dovecot Pigeonhole
 * slots of store "alpha" (master and replica, replay), a Dovecot with a master user for store
 * "beta", and Cyrus timsieved (SASL authzid) for store "gamma". Clients: sieve-connect and a raw
 * socket client; every script is checked where it landed on the backend's disk.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { lstat, readdir, readFile, readlink, writeFile } from 'node:fs/promises';
import { connect as netConnect } from 'node:net';
import type { Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { connect as tlsConnect } from 'node:tls';
import type { TLSSocket } from 'node:tls';
import { LineClient, startCyrus, startDovecot, startSlapd, tmpDir } from './servers/index.js';
import type { Cyrus, Dovecot, Slapd, TmpDir } from './servers/index.js';
import { ADMIN_TOKEN, AUTH_FAILURE_DELAY_MS, assertNoRegisteredSecret, assertSameFailure, linesOfSession, loginEventsOf, registerPasswords, registerSecrets, sessionIdOf, startFront, waitForLog } from './front.js';
import type { Front, StoreSpec } from './front.js';

const PASSWORDS = { alice: 'Alice-sieve-7e21', bob: 'Bob-sieve-3c9a', carol: 'Carol-sieve-55d0', dave: 'Dave-sieve-0f0f' };
const MASTER = { name: 'sievemaster', password: 'Master-sieve-81b2' };
const CYRUS_PROXY = { name: 'proxyadmin', password: 'Cyrus-sieve-proxy-4d' };
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
let scratch: TmpDir;
let storesAtStart: Record<string, StoreSpec>;

const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');
const plainIr = (user: string, password: string, authzid = ''): string => b64(`${authzid}\0${user}\0${password}`);
const script = (marker: string): string => `require ["fileinto"];\r\n# ${marker}\r\nif header :contains "subject" "${marker}" {\r\n  fileinto "INBOX";\r\n}\r\nkeep;\r\n`;

/** One response line with its literals read whole (RFC 5804 §4 literal-s2c). */
interface SieveLine {
  readonly text: string;
  readonly literals: string[];
}

interface SieveReply {
  readonly status: 'OK' | 'NO' | 'BYE';
  readonly data: SieveLine[];
  readonly end: SieveLine;
}

/** A raw ManageSieve client: commands as written, responses read with their literals. */
class SieveClient {
  private buffer = Buffer.alloc(0);
  private closed = false;
  private waiter: (() => void) | undefined;
  private readonly onData = (chunk: Buffer): void => {
    this.buffer = Buffer.concat([this.buffer, chunk]);
    this.wake();
  };
  private readonly onEnd = (): void => {
    this.closed = true;
    this.wake();
  };

  private constructor(private socket: Socket | TLSSocket) {
    this.attach(socket);
  }

  static connect(port: number, localAddress?: string): Promise<SieveClient> {
    return new Promise((resolve, reject) => {
      const socket = netConnect({ port, host: '127.0.0.1', ...(localAddress !== undefined ? { localAddress } : {}) });
      socket.once('connect', () => resolve(new SieveClient(socket)));
      socket.once('error', reject);
    });
  }

  private attach(socket: Socket | TLSSocket): void {
    socket.on('data', this.onData);
    socket.on('close', this.onEnd);
    socket.on('error', this.onEnd);
  }

  private wake(): void {
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.();
  }

  private async more(deadline: number): Promise<void> {
    if (this.closed) throw new Error(`connection closed; unread: ${JSON.stringify(this.buffer.toString('latin1'))}`);
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`timed out; unread: ${JSON.stringify(this.buffer.toString('latin1'))}`);
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, left);
      this.waiter = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  private async line(deadline: number): Promise<string> {
    for (;;) {
      const lf = this.buffer.indexOf(0x0a);
      if (lf >= 0) {
        const line = this.buffer.subarray(0, lf > 0 && this.buffer[lf - 1] === 0x0d ? lf - 1 : lf).toString('utf8');
        this.buffer = this.buffer.subarray(lf + 1);
        return line;
      }
      await this.more(deadline);
    }
  }

  private async exactly(count: number, deadline: number): Promise<string> {
    while (this.buffer.length < count) await this.more(deadline);
    const data = this.buffer.subarray(0, count).toString('utf8');
    this.buffer = this.buffer.subarray(count);
    return data;
  }

  private async logicalLine(deadline: number): Promise<SieveLine> {
    let text = '';
    const literals: string[] = [];
    for (;;) {
      const line = await this.line(deadline);
      text += line;
      const literal = /\{(\d+)\+?\}$/.exec(line);
      if (literal === null) return { text, literals };
      const data = await this.exactly(Number(literal[1]), deadline);
      literals.push(data);
      text += `\r\n${data}`;
    }
  }

  /** Reads one response: data lines up to an OK, NO or BYE line. */
  async response(timeoutMs = 10_000): Promise<SieveReply> {
    const deadline = Date.now() + timeoutMs;
    const data: SieveLine[] = [];
    for (;;) {
      const line = await this.logicalLine(deadline);
      const status = /^(OK|NO|BYE)(?: |$)/i.exec(line.text)?.[1]?.toUpperCase();
      if (status === 'OK' || status === 'NO' || status === 'BYE') return { status, data, end: line };
      data.push(line);
    }
  }

  write(data: string): void {
    this.socket.write(data);
  }

  async command(line: string): Promise<SieveReply> {
    this.write(`${line}\r\n`);
    return this.response();
  }

  async ok(line: string): Promise<SieveReply> {
    const reply = await this.command(line);
    assert.equal(reply.status, 'OK', `${line.split(' ')[0] ?? ''}: ${reply.end.text}`);
    return reply;
  }

  /** The local port: the `clientPort` of this session's log lines. */
  get localPort(): number {
    return this.socket.localPort ?? 0;
  }

  /** STARTTLS, the handshake, and the capabilities the server must re-send (RFC 5804 §2.2). */
  async starttls(ca: string): Promise<SieveReply> {
    await this.ok('STARTTLS');
    return this.handshake(ca);
  }

  /** The TLS handshake after the server said yes to STARTTLS; then the capabilities it re-sends. Unread plaintext is dropped. */
  async handshake(ca: string): Promise<SieveReply> {
    const plain = this.socket;
    plain.off('data', this.onData);
    plain.off('close', this.onEnd);
    plain.off('error', this.onEnd);
    const secure = tlsConnect({ socket: plain, ca, servername: 'localhost' });
    await new Promise<void>((resolve, reject) => {
      secure.once('secureConnect', resolve);
      secure.once('error', reject);
    });
    this.socket = secure;
    this.buffer = Buffer.alloc(0);
    this.attach(secure);
    return this.response();
  }

  /** Everything the server sends until it closes; fails if it does not close in time. */
  async untilClosed(timeoutMs = 3_000): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed) await this.more(deadline);
    return this.buffer.toString('latin1');
  }

  /** Waits until the unread bytes end with `text` (a challenge, say), without consuming them. */
  async waitFor(text: string, timeoutMs = 5_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!this.buffer.toString('utf8').endsWith(text)) await this.more(deadline);
  }

  /** Bytes received within `ms`, without consuming them. */
  async peek(ms: number): Promise<string> {
    await new Promise((r) => setTimeout(r, ms));
    return this.buffer.toString('latin1');
  }

  close(): void {
    this.socket.destroy();
  }
}

/** Connects to the trusted (plaintext) listener and logs in with SASL PLAIN. */
async function loggedIn(user: string, password: string, port = front.sieveTrustedPort!, localAddress?: string): Promise<SieveClient> {
  registerPasswords(password);
  const client = await SieveClient.connect(port, localAddress);
  await client.response();
  await client.ok(`AUTHENTICATE "PLAIN" "${plainIr(user, password)}"`);
  return client;
}

/** Runs sieve-connect (the Debian package) with the password on stdin. */
function sieveConnect(user: string, password: string, action: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  registerPasswords(password);
  const args = ['--server', '127.0.0.1', '--port', String(front.sievePort), '--nosrv', '--user', user, '--passwordfd', '0', '--authmech', 'PLAIN', '--tlscafile', front.certs.caFile, '--tlshostname', 'localhost', ...action];
  return new Promise((resolve, reject) => {
    const child = spawn('sieve-connect', args, { stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
    child.stdin.end(`${password}\n`);
  });
}

/** The Sieve scripts a Dovecot user has on disk (sieve = file:~/sieve;active=~/.dovecot.sieve). */
async function dovecotScripts(dovecot: Dovecot, user: string): Promise<{ files: Map<string, string>; active: string | null }> {
  const home = join(dovecot.dir, 'home', user);
  const files = new Map<string, string>();
  for (const name of await readdir(join(home, 'sieve')).catch(() => [] as string[])) {
    if (name.endsWith('.sieve')) files.set(name.slice(0, -'.sieve'.length), await readFile(join(home, 'sieve', name), 'utf8'));
  }
  const link = await readlink(join(home, '.dovecot.sieve')).catch(() => null);
  return { files, active: link === null ? null : link.replace(/^sieve\//, '').replace(/\.sieve$/, '') };
}

/** Carol's mailbox id on Cyrus (RFC 8474 MAILBOXID), which names her directory under sievedir. */
async function cyrusMailboxId(user: string): Promise<string> {
  const client = await LineClient.connect(cyrus.imapPort);
  try {
    await client.readLine();
    const auth = await client.authenticatePlain(user, CYRUS_PROXY.name, CYRUS_PROXY.password);
    assert.equal(auth.status, 'OK', auth.text);
    const status = await client.imapOk('STATUS INBOX (MAILBOXID)');
    const id = /MAILBOXID \(([^)]+)\)/.exec(status.untagged.join(' '))?.[1];
    assert.ok(id, status.untagged.join(' '));
    return id;
  } finally {
    client.close();
  }
}

before(async () => {
  slapd = await startSlapd({
    users: [
      { uid: 'alice', password: PASSWORDS.alice, store: 'alpha' },
      { uid: 'bob', password: PASSWORDS.bob, store: 'beta' },
      { uid: 'carol', password: PASSWORDS.carol, store: 'gamma' },
      { uid: 'dave', password: PASSWORDS.dave }, // no store
    ],
  });
  [alphaMaster, alphaReplica, beta, cyrus] = await Promise.all([
    startDovecot({ name: 'sieve-alpha-master', users: [{ name: 'alice', password: PASSWORDS.alice }], tls: true, sieve: true }),
    startDovecot({ name: 'sieve-alpha-replica', users: [{ name: 'alice', password: PASSWORDS.alice }], sieve: true }),
    startDovecot({ name: 'sieve-beta', users: [{ name: 'bob', password: 'bob-backend-only' }], masterUser: MASTER, sieve: true }),
    startCyrus({ users: [{ name: 'carol', password: 'carol-backend-only' }], proxyAdmin: CYRUS_PROXY, sieve: true }),
  ]);
  storesAtStart = {
    alpha: {
      currentMaster: 'sa1',
      preferredMaster: 'sa1',
      slots: {
        sa1: { imapPort: alphaMaster.imapPort, sievePort: alphaMaster.sievePort! },
        sa2: { imapPort: alphaReplica.imapPort, sievePort: alphaReplica.sievePort! },
      },
    },
    beta: {
      currentMaster: 'sb1',
      slots: { sb1: { sievePort: beta.sievePort! } },
      backend: { login_mode: 'master-user', proxy_user: MASTER.name, proxy_password: MASTER.password },
    },
    gamma: {
      currentMaster: 'sc1',
      slots: { sc1: { sievePort: cyrus.sievePort! } },
      backend: { login_mode: 'sasl-authzid', proxy_user: CYRUS_PROXY.name, proxy_password: CYRUS_PROXY.password },
    },
  };
  front = await startFront({ slapd, stores: storesAtStart, sieve: true });
  scratch = tmpDir('sieve-client');
});

after(async () => {
  await front?.stop();
  await scratch?.remove();
  await Promise.all([slapd?.stop(), alphaMaster?.stop(), alphaReplica?.stop(), beta?.stop(), cyrus?.stop()]);
});

describe('ManageSieve through mailfront: scripts land in the right store', () => {
  test('raw client over STARTTLS, replay to Dovecot: PUTSCRIPT, SETACTIVE, LISTSCRIPTS, GETSCRIPT', async () => {
    const client = await SieveClient.connect(front.sievePort!);
    try {
      const greeting = await client.response();
      assert.equal(greeting.status, 'OK');
      const lines = greeting.data.map((l) => l.text);
      assert.ok(lines.includes('"STARTTLS"'), lines.join(' | '));
      assert.ok(lines.includes('"SASL" ""'), 'no mechanism before TLS');
      assert.ok(lines.includes('"VERSION" "1.0"'));
      const afterTls = await client.starttls(front.caPem);
      assert.equal(afterTls.status, 'OK');
      assert.ok(afterTls.data.some((l) => l.text === '"SASL" "PLAIN LOGIN"'), 'mechanisms after TLS');
      assert.ok(!afterTls.data.some((l) => l.text === '"STARTTLS"'));
      const auth = await client.ok(`AUTHENTICATE "PLAIN" "${plainIr('alice', PASSWORDS.alice)}"`);
      assert.equal(auth.end.text, 'OK "Logged in."');
      // After login CAPABILITY is the backend's own answer.
      const caps = await client.ok('CAPABILITY');
      assert.ok(caps.data.some((l) => /^"IMPLEMENTATION" "Dovecot/.test(l.text)), caps.data.map((l) => l.text).join(' | '));
      assert.ok(caps.data.some((l) => l.text.startsWith('"MAXREDIRECTS"')));
      const body = script('alpha-raw');
      await client.ok(`PUTSCRIPT "mf-alpha" {${Buffer.byteLength(body)}+}\r\n${body}`);
      await client.ok('SETACTIVE "mf-alpha"');
      const list = await client.ok('LISTSCRIPTS');
      assert.deepEqual(list.data.map((l) => l.text), ['"mf-alpha" ACTIVE']);
      const got = await client.ok('GETSCRIPT "mf-alpha"');
      assert.deepEqual(got.data[0]?.literals, [body]);
      await client.ok('LOGOUT');
    } finally {
      client.close();
    }
    const onMaster = await dovecotScripts(alphaMaster, 'alice');
    assert.equal(onMaster.files.get('mf-alpha'), script('alpha-raw'));
    assert.equal(onMaster.active, 'mf-alpha');
    assert.equal((await dovecotScripts(alphaReplica, 'alice')).files.size, 0, 'nothing on the replica');
  });

  test('Dovecot offers no UNAUTHENTICATE: its sessions are not guarded, and a vacation text that says STARTTLS or UNAUTHENTICATE is uploaded', async () => {
    const client = await SieveClient.connect(front.sievePort!);
    try {
      await client.response();
      await client.starttls(front.caPem);
      await client.ok(`AUTHENTICATE "PLAIN" "${plainIr('alice', PASSWORDS.alice)}"`);
      const body = 'require "vacation";\r\nvacation :subject "Away" "Our server requires STARTTLS now; UNAUTHENTICATE is gone.";\r\n';
      await client.ok(`PUTSCRIPT "mf-words" {${Buffer.byteLength(body)}+}\r\n${body}`);
      const got = await client.ok('GETSCRIPT "mf-words"');
      assert.deepEqual(got.data[0]?.literals, [body]);
      await client.ok('DELETESCRIPT "mf-words"');
      await client.ok('LOGOUT');
    } finally {
      client.close();
    }
  });

  test('sieve-connect, master-user login to Dovecot: upload, activate, list, download', async () => {
    const local = join(scratch.path, 'beta.sieve');
    const body = script('beta-sieve-connect');
    await writeFile(local, body);
    const upload = await sieveConnect('bob', PASSWORDS.bob, ['--upload', '--localsieve', local, '--remotesieve', 'mf-beta']);
    assert.equal(upload.code, 0, upload.stderr);
    const activate = await sieveConnect('bob', PASSWORDS.bob, ['--activate', '--remotesieve', 'mf-beta']);
    assert.equal(activate.code, 0, activate.stderr);
    const list = await sieveConnect('bob', PASSWORDS.bob, ['--list']);
    assert.equal(list.code, 0, list.stderr);
    // sieve-connect prints the LISTSCRIPTS lines as the server sent them.
    assert.match(list.stdout, /^"mf-beta" ACTIVE$/m);
    const downloaded = join(scratch.path, 'beta-back.sieve');
    const download = await sieveConnect('bob', PASSWORDS.bob, ['--download', '--localsieve', downloaded, '--remotesieve', 'mf-beta']);
    assert.equal(download.code, 0, download.stderr);
    assert.equal(await readFile(downloaded, 'utf8'), body);
    const onBeta = await dovecotScripts(beta, 'bob');
    assert.equal(onBeta.files.get('mf-beta'), body);
    assert.equal(onBeta.active, 'mf-beta');
    assert.match(await beta.readLog(), /Master user logging in as bob/);
  });

  test('SASL authzid login to Cyrus timsieved (proxyservers), by sieve-connect and by the raw client', async () => {
    const local = join(scratch.path, 'gamma.sieve');
    const body = script('gamma-sieve-connect');
    await writeFile(local, body);
    const upload = await sieveConnect('carol', PASSWORDS.carol, ['--upload', '--localsieve', local, '--remotesieve', 'mfgamma']);
    assert.equal(upload.code, 0, upload.stderr);
    const client = await loggedIn('carol', PASSWORDS.carol);
    try {
      const caps = await client.ok('CAPABILITY');
      // OWNER (RFC 5804 §1.7) is the authorization identity: Cyrus acts as carol, not as the proxy account.
      assert.ok(caps.data.some((l) => l.text === '"OWNER" "carol"'), caps.data.map((l) => l.text).join(' | '));
      await client.ok('SETACTIVE "mfgamma"');
      const list = await client.ok('LISTSCRIPTS');
      assert.deepEqual(list.data.map((l) => l.text), ['"mfgamma" ACTIVE']);
      const got = await client.ok('GETSCRIPT "mfgamma"');
      assert.deepEqual(got.data[0]?.literals, [body]);
      await client.ok('LOGOUT');
    } finally {
      client.close();
    }
    // Cyrus 3.6 keeps the compiled script in sievedir/uuid/<a>/<b>/<carol's mailbox id>/ and the
    // active one as the defaultbc link.
    const id = await cyrusMailboxId('carol');
    const userDir = join(cyrus.sieveDir, 'uuid', id.charAt(0), id.charAt(1), id);
    assert.ok((await lstat(join(userDir, 'mfgamma.bc'))).isFile(), `${userDir}/mfgamma.bc`);
    assert.equal(await readlink(join(userDir, 'defaultbc')), 'mfgamma.bc');
  });

  test('UNAUTHENTICATE, which Cyrus offers, never reaches it: the session closes with a BYE, split or pipelined alike', async () => {
    // Passed on, it would take the backend connection back to the non-authenticated state, and
    // the client could authenticate there as anyone Cyrus knows (carol's backend-only password,
    // guesses the throttle never sees), from mailfront's address.
    const notice = 'BYE "UNAUTHENTICATE, STARTTLS and COMPRESS are not available through this proxy once logged in; log in again on a new connection"\r\n';
    const split = await loggedIn('carol', PASSWORDS.carol);
    const mark = front.logs.length;
    try {
      const caps = await split.ok('CAPABILITY');
      assert.ok(caps.data.some((l) => l.text === '"UNAUTHENTICATE"'), 'Cyrus offers it: the guard has something to guard');
      split.write('unauth');
      await new Promise((r) => setTimeout(r, 100));
      split.write(`enticate\r\nAUTHENTICATE "PLAIN" "${plainIr('carol', 'carol-backend-only')}"\r\n`);
      assert.equal(await split.untilClosed(), notice);
    } finally {
      split.close();
    }
    const refused = await waitForLog(front, (l) => l['event'] === 'session.command_refused', 3_000, mark);
    assert.equal(refused['user'], 'carol');
    assert.equal(refused['command'], 'UNAUTHENTICATE');
    assert.equal((await waitForLog(front, (l) => l['event'] === 'session.finished' && l['session'] === refused['session'], 3_000, mark))['reason'], 'command-refused');
    // Pipelined in the login's own packet: stopped before the splice passes anything on.
    const pipelined = await SieveClient.connect(front.sieveTrustedPort!);
    try {
      await pipelined.response();
      pipelined.write(`AUTHENTICATE "PLAIN" "${plainIr('carol', PASSWORDS.carol)}"\r\nUNAUTHENTICATE\r\n`);
      assert.equal(await pipelined.untilClosed(), `OK "Logged in."\r\n${notice}`);
    } finally {
      pipelined.close();
    }
    // timsieved goes on lexing in the middle of a line after a syntax error: the word is
    // refused wherever it stands, not only at a line's start.
    // Nor behind a literal, whose data ends a token there: "X" is a string, UNAUTHENTICATE the
    // next command (and STARTTLS would hide all that follows from the guard), whatever literals
    // timsieved takes or refuses before it.
    const hiddenBehindLiterals = ['{1+}\r\nXUNAUTHENTICATE', '{1+}\r\nXSTARTTLS', '{0000000000000001+}\r\nXUNAUTHENTICATE', '{50}\r\n{1+}\r\nXUNAUTHENTICATE', '{50+}\n{1+}\r\nXUNAUTHENTICATE', '"{50+}\r\n{1+}\r\nXUNAUTHENTICATE'];
    for (const hidden of ['*UNAUTHENTICATE', '1UNAUTHENTICATE', 'LISTSCRIPTS(UNAUTHENTICATE', ...hiddenBehindLiterals]) {
      const client = await loggedIn('carol', PASSWORDS.carol);
      try {
        client.write(`${hidden}\r\nAUTHENTICATE "PLAIN" "${plainIr('carol', 'carol-backend-only')}"\r\n`);
        assert.equal(await client.untilClosed(), notice, hidden);
      } finally {
        client.close();
      }
    }
    // Other commands, and longer words that contain it, pass.
    const client = await loggedIn('carol', PASSWORDS.carol);
    try {
      const body = '# unauthenticated users get nothing\r\nkeep;\r\n';
      await client.ok(`PUTSCRIPT "mfguard" {${Buffer.byteLength(body)}+}\r\n${body}`);
      await client.ok('DELETESCRIPT "mfguard"');
      await client.ok('LOGOUT');
    } finally {
      client.close();
    }
  });

  test('AUTHENTICATE PLAIN without an initial response, and LOGIN step by step; commands pipelined after it reach the backend', async () => {
    const plainStep = await SieveClient.connect(front.sieveTrustedPort!);
    try {
      await plainStep.response();
      plainStep.write('AUTHENTICATE "PLAIN"\r\n');
      await plainStep.waitFor('""\r\n');
      plainStep.write(`"${plainIr('alice', PASSWORDS.alice)}"\r\n`);
      const auth = await plainStep.response();
      assert.deepEqual(auth.data.map((l) => l.text), ['""']);
      assert.equal(auth.end.text, 'OK "Logged in."');
    } finally {
      plainStep.close();
    }
    const loginStep = await SieveClient.connect(front.sieveTrustedPort!);
    try {
      await loginStep.response();
      loginStep.write('AUTHENTICATE "LOGIN"\r\n');
      await loginStep.waitFor('"VXNlcm5hbWU6"\r\n');
      loginStep.write(`"${b64('alice')}"\r\n`);
      await loginStep.waitFor('"UGFzc3dvcmQ6"\r\n');
      loginStep.write(`{${b64(PASSWORDS.alice).length}+}\r\n${b64(PASSWORDS.alice)}\r\nLISTSCRIPTS\r\n`);
      const auth = await loginStep.response();
      assert.deepEqual(auth.data.map((l) => l.text), ['"VXNlcm5hbWU6"', '"UGFzc3dvcmQ6"']);
      assert.equal(auth.end.text, 'OK "Logged in."');
      const list = await loginStep.response();
      assert.equal(list.status, 'OK');
      assert.ok(list.data.some((l) => l.text === '"mf-alpha" ACTIVE'), list.data.map((l) => l.text).join(' | '));
    } finally {
      loginStep.close();
    }
  });

  test('the client address and session id reach Dovecot through XCLIENT', async () => {
    // From 127.0.0.2: mailfront itself connects to Dovecot from 127.0.0.1, so Dovecot can only
    // name 127.0.0.2 as the remote address if mailfront forwarded it.
    const mark = front.logs.length;
    const client = await loggedIn('alice', PASSWORDS.alice, front.sieveTrustedPort!, '127.0.0.2');
    await client.ok('LOGOUT');
    client.close();
    const spliced = await waitForLog(front, (l) => l['event'] === 'session.spliced' && l['user'] === 'alice' && l['client'] === '127.0.0.2', 5_000, mark);
    const session = String(spliced['session']);
    const deadline = Date.now() + 3_000;
    while (!(await alphaMaster.readLog()).includes(`session=<${session}>`) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    const login = (await alphaMaster.readLog()).split('\n').find((l) => l.includes(`session=<${session}>`)) ?? '';
    assert.match(login, /managesieve-login: Info: Login: user=<alice>/, login);
    assert.match(login, /\brip=127\.0\.0\.2,/, login);
  });

  for (const tls of ['starttls', 'implicit'] as const) {
    test(`backend tls ${tls}: STARTTLS to Dovecot's sieve_port (ManageSieve has no implicit-TLS port), verified against the CA file`, async () => {
      await front.writeStores({
        ...storesAtStart,
        alpha: { ...storesAtStart['alpha']!, backend: { tls, ca_file: alphaMaster.caFile!, tls_servername: 'localhost' } },
      });
      await front.mailfront.reloadStoreMap();
      const logBefore = (await alphaMaster.readLog()).length;
      try {
        const client = await loggedIn('alice', PASSWORDS.alice);
        const list = await client.ok('LISTSCRIPTS');
        assert.ok(list.data.some((l) => l.text === '"mf-alpha" ACTIVE'));
        client.close();
        assert.match((await alphaMaster.readLog()).slice(logBefore), /managesieve-login: Info: Login: user=<alice>, method=PLAIN, .*\bTLS\b/);
      } finally {
        await front.writeStores(storesAtStart);
        await front.mailfront.reloadStoreMap();
      }
    });
  }
});

describe('ManageSieve failures', () => {
  async function authenticate(user: string, password: string): Promise<{ line: string; ms: number }> {
    registerPasswords(password);
    const client = await SieveClient.connect(front.sieveTrustedPort!);
    try {
      await client.response();
      const started = Date.now();
      const reply = await client.command(`AUTHENTICATE "PLAIN" "${plainIr(user, password)}"`);
      return { line: reply.end.text, ms: Date.now() - started };
    } finally {
      client.close();
    }
  }

  test('wrong password and unknown user: the same fixed NO after the same delay', async () => {
    await assertSameFailure(authenticate, ['alice', 'not-the-password'], ['nosuchuser', 'whatever-pw'], 'NO "Authentication failed."');
  });

  test('a user without a store gets NO (TRYLATER)', async () => {
    assert.match((await authenticate('dave', PASSWORDS.dave)).line, /^NO \(TRYLATER\) "/);
  });

  test('plaintext AUTHENTICATE without TLS is refused with ENCRYPT-NEEDED', async () => {
    const client = await SieveClient.connect(front.sievePort!);
    try {
      await client.response();
      const reply = await client.command(`AUTHENTICATE "PLAIN" "${plainIr('alice', PASSWORDS.alice)}"`);
      assert.equal(reply.end.text, 'NO (ENCRYPT-NEEDED) "Plaintext authentication is not allowed without TLS."');
    } finally {
      client.close();
    }
  });

  test('a stopped backend gives NO (TRYLATER) and a log naming the slot', async () => {
    const mark = front.logs.length;
    await beta.stopOnly();
    try {
      assert.match((await authenticate('bob', PASSWORDS.bob)).line, /^NO \(TRYLATER\) "/);
      // Either the failed login itself or the retries while the login was held name the slot.
      const log = await waitForLog(front, (l) => (l['event'] === 'session.login_failed' || l['event'] === 'session.backend_retry') && /sb1/.test(JSON.stringify(l)), 5_000, mark);
      assert.ok(log['level'] === 'error' || log['level'] === 'warn', String(log['level']));
    } finally {
      await beta.startAgain();
    }
  });

  test('a failover drains the spliced session with BYE (TRYLATER); the next login lands on the new master', async () => {
    const client = await loggedIn('alice', PASSWORDS.alice);
    const mark = front.logs.length;
    try {
      await client.ok('NOOP');
      await front.writeStores({ ...storesAtStart, alpha: { ...storesAtStart['alpha']!, currentMaster: 'sa2' } });
      await front.mailfront.reloadStoreMap();
      const rest = await client.untilClosed(8_000);
      assert.equal(rest, 'BYE (TRYLATER) "Mailbox moved to another server, please reconnect"\r\n');
      await waitForLog(front, (l) => l['event'] === 'session.finished' && l['reason'] === 'drained', 5_000, mark);
      const again = await loggedIn('alice', PASSWORDS.alice);
      const body = script('after-failover');
      await again.ok(`PUTSCRIPT "mf-failover" {${Buffer.byteLength(body)}+}\r\n${body}`);
      again.close();
      assert.equal((await dovecotScripts(alphaReplica, 'alice')).files.get('mf-failover'), body);
      assert.equal((await dovecotScripts(alphaMaster, 'alice')).files.has('mf-failover'), false);
    } finally {
      client.close();
      await front.writeStores(storesAtStart);
      await front.mailfront.reloadStoreMap();
    }
  });
});

/** The second front of the kick test (its logs are scanned for secrets too). */
let heldFront: Front | undefined;

describe('kicking a ManageSieve login under way', () => {
  // A front of its own: logins are held 30 s, long enough to restart the master meanwhile.
  let held: Front;
  before(async () => {
    held = await startFront({ slapd, stores: storesAtStart, sieve: true, failover: { hold_ms: 30_000 } });
    heldFront = held;
  });
  after(async () => {
    await held?.stop();
  });

  test('held while the master is down, a LOGOUT pipelined behind it: BYE (TRYLATER), closed, never spliced, the LOGOUT never run', async () => {
    const { port } = held.mailfront.httpAddress()!;
    await beta.stopOnly();
    let restarted = false;
    const client = await SieveClient.connect(held.sieveTrustedPort!);
    try {
      await client.response();
      client.write(`AUTHENTICATE "PLAIN" "${plainIr('bob', PASSWORDS.bob)}"\r\nLOGOUT\r\n`);
      await waitForLog(held, (l) => l['event'] === 'session.backend_retry' && l['slot'] === 'sb1', 10_000);
      const kickedAt = Date.now();
      const response = await fetch(`http://127.0.0.1:${port}/api/kick`, { method: 'POST', headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, body: JSON.stringify({ user: 'bob' }) });
      assert.equal(response.status, 200, await response.clone().text());
      assert.deepEqual(((await response.json()) as { kicked: unknown[] }).kicked, [], 'nothing of his is spliced yet');
      await beta.startAgain();
      restarted = true;
      // Everything the client reads up to the close: the last word alone (no OK for the
      // AUTHENTICATE, nothing from the backend for the LOGOUT).
      assert.equal(await client.untilClosed(30_000), 'BYE (TRYLATER) "Disconnected by an administrator"\r\n');
      const kicked = await waitForLog(held, (l) => l['event'] === 'session.kicked' && l['user'] === 'bob', 5_000);
      assert.equal(kicked['phase'], 'backend-login');
      const finished = await waitForLog(held, (l) => l['event'] === 'session.finished' && l['session'] === kicked['session'], 5_000);
      assert.equal(finished['reason'], 'kicked');
      assert.deepEqual(held.logs.filter((l) => l['event'] === 'session.spliced' && Date.parse(String(l['time'])) >= kickedAt), [], 'no session was spliced after the kick');
    } finally {
      client.close();
      if (!restarted) await beta.startAgain();
    }
  });
});

describe('hostile ManageSieve input', () => {
  test('commands injected after STARTTLS in the same packet are never executed', async () => {
    const mark = front.logs.length;
    const client = await SieveClient.connect(front.sievePort!);
    try {
      await client.response();
      const session = await sessionIdOf(front, client.localPort, mark);
      client.write(`STARTTLS\r\nAUTHENTICATE "PLAIN" "${plainIr('alice', PASSWORDS.alice)}"\r\nLISTSCRIPTS\r\nLOGOUT\r\n`);
      await client.waitFor('OK "Begin TLS negotiation now."\r\n');
      assert.equal(await client.peek(0), 'OK "Begin TLS negotiation now."\r\n');
      await client.response();
      // Over TLS: the capabilities the server must re-send, then the answer to the first command
      // sent over TLS. Injected commands executed after the handshake would be answered in between
      // (AUTHENTICATE's OK "Logged in.", then the backend's answers).
      const capabilities = await client.handshake(front.caPem);
      assert.equal(capabilities.end.text, 'OK "TLS negotiation successful."');
      assert.ok(capabilities.data.some((l) => l.text === '"SASL" "PLAIN LOGIN"'), capabilities.data.map((l) => l.text).join(' | '));
      const probe = await client.command('NOOP "probe"');
      assert.deepEqual(probe.data.map((l) => l.text), []);
      assert.equal(probe.end.text, 'OK (TAG "probe") "Done"');
      assert.equal((await client.command('LOGOUT')).end.text, 'OK "Logout completed."');
      const finished = await waitForLog(front, (l) => l['event'] === 'session.finished' && l['session'] === session, 5_000, mark);
      assert.equal(finished['phase'], 'preauth');
      assert.equal(finished['reason'], 'logout');
      assert.deepEqual(loginEventsOf(front, session), [], 'the injected AUTHENTICATE was never attempted');
    } finally {
      client.close();
    }
  });

  test('a {4294967296+} literal ends the connection and its bytes are never read as commands', async () => {
    const client = await SieveClient.connect(front.sieveTrustedPort!);
    try {
      await client.response();
      client.write(`AUTHENTICATE "PLAIN" {4294967296+}\r\nAUTHENTICATE "PLAIN" "${plainIr('alice', PASSWORDS.alice)}"\r\nLOGOUT\r\n`);
      assert.equal(await client.untilClosed(), 'BYE "Literal too big."\r\n');
    } finally {
      client.close();
    }
  });

  test('an overlong line ends the connection with a BYE', async () => {
    const client = await SieveClient.connect(front.sieveTrustedPort!);
    try {
      await client.response();
      client.write(`NOOP "${'x'.repeat(70_000)}"\r\n`);
      assert.equal(await client.untilClosed(), 'BYE "Line too long."\r\n');
    } finally {
      client.close();
    }
  });

  test('CR/LF inside SASL-decoded credentials is refused and nothing reaches the directory', async () => {
    const mark = front.logs.length;
    const client = await SieveClient.connect(front.sieveTrustedPort!);
    try {
      await client.response();
      const session = await sessionIdOf(front, client.localPort, mark);
      const timed = async (command: string): Promise<{ text: string; ms: number }> => {
        const started = Date.now();
        const reply = await client.command(command);
        return { text: reply.end.text, ms: Date.now() - started };
      };
      // The right password with a command behind it, and a user name with a LF in it.
      const crlf = await timed(`AUTHENTICATE "PLAIN" "${plainIr('alice', `${PASSWORDS.alice}\r\nDELETESCRIPT "mf-alpha"`)}"`);
      const lf = await timed(`AUTHENTICATE "PLAIN" "${plainIr('ali\nce', PASSWORDS.alice)}"`);
      for (const reply of [crlf, lf]) {
        assert.equal(reply.text, 'NO "Authentication failed."');
        // Refused by the protocol layer, before any login: a login that reached the session
        // (and the directory) is answered only after the auth failure delay.
        assert.ok(reply.ms < AUTH_FAILURE_DELAY_MS, `answered after ${reply.ms} ms: the auth failure delay of a login that was attempted`);
      }
      // Every login the session attempts logs its outcome before the answer: there was none.
      assert.deepEqual(loginEventsOf(front, session), [], JSON.stringify(linesOfSession(front, session)));
    } finally {
      client.close();
    }
  });

  test('HTTP and SMTP on the ManageSieve port are closed without a word', async () => {
    for (const request of ['GET / HTTP/1.1\r\nHost: localhost\r\n\r\n', 'EHLO attacker.example\r\n']) {
      const client = await SieveClient.connect(front.sieveTrustedPort!);
      try {
        await client.response();
        client.write(request);
        assert.equal(await client.untilClosed(), '', request);
      } finally {
        client.close();
      }
    }
  });
});

test('no password (right or wrong), proxy secret or SASL blob appears in any log line', () => {
  assert.ok(front.rawLogs.length > 50, 'the suite produced logs');
  // Every secret this file registered: the users' passwords, the wrong ones the tests sent, the
  // proxy and bind secrets, in every form the suite scan knows (base64 at each alignment too).
  assertNoRegisteredSecret(front.rawLogs);
  assertNoRegisteredSecret(heldFront?.rawLogs ?? []);
});

test('over a connection limit a ManageSieve client gets BYE (TRYLATER) (RFC 5804 §1.3), and the connection is closed', async () => {
  const limited = await startFront({ slapd, stores: storesAtStart, sieve: true, connectionLimits: { max_connections_per_address: 1 } });
  const held = await SieveClient.connect(limited.sieveTrustedPort!, '127.0.0.31');
  try {
    assert.equal((await held.response()).status, 'OK', 'the first connection is greeted');
    const refused = await SieveClient.connect(limited.sieveTrustedPort!, '127.0.0.31');
    try {
      assert.match(await refused.untilClosed(), /^BYE \(TRYLATER\) "[^"\r\n]+"\r\n$/);
    } finally {
      refused.close();
    }
  } finally {
    held.close();
    await limited.stop();
  }
});
