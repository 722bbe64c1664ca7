/**
 * POP3 through mailfront to backends that take no password on a connection without TLS: a real
 * Dovecot with disable_plaintext_auth = yes (mailfront neither in its login_trusted_networks nor
 * on its own address: a relay in between connects from 127.0.0.2) and a real Cyrus with
 * allowplaintext: no, both with backend.tls none. The relay records every byte mailfront sends:
 * AUTH PLAIN (the proxy account's password in sasl-authzid mode, the user's own for replayed
 * credentials over 900 bytes) must never leave; CAPA, whose SASL line lists no PLAIN there, is
 * all they get, and the client is told to come back later. USER/PASS is refused at USER, before
 * the password. Under TLS (STLS) the same login goes through, with no CAPA.
 */
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { connect, createServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { LineClient, startCyrus, startDovecot, startSlapd } from './servers/index.js';
import type { Cyrus, Dovecot, Slapd } from './servers/index.js';
import { registerSecrets, startFront, waitForLog } from './front.js';
import type { Front } from './front.js';

const PROXY = { name: 'popproxy', password: 'Proxy-pop-Master-7c21' };
const CYRUS_PROXY = { name: 'proxyadmin', password: 'Cyrus-pop-proxy-3d9a' };
const PASSWORDS = { alice: 'Alice-strict-5e61', rita: 'Rita-strict-0b7d', tess: 'Tess-strict-44c2', carl: 'Carl-strict-91aa' };
/** Over LONG_CREDENTIALS_BYTES with the name: replayed as AUTH PLAIN. */
const LONG_PASSWORD = `Lena-long-${'k4Z'.repeat(400)}`.slice(0, 1200);
const plain = (authzid: string, authcid: string, password: string): string => Buffer.from(`${authzid}\0${authcid}\0${password}`).toString('base64');
const SASL_SECRETS = [plain('alice', PROXY.name, PROXY.password), plain('tess', PROXY.name, PROXY.password), plain('carl', CYRUS_PROXY.name, CYRUS_PROXY.password), plain('', 'lena', LONG_PASSWORD)];
registerSecrets([...Object.values(PASSWORDS), LONG_PASSWORD, PROXY.password, CYRUS_PROXY.password, ...SASL_SECRETS]);

const UNAVAILABLE = /^-ERR \[SYS\/TEMP\] /;

/** A TCP relay to `port` that connects from 127.0.0.2 and keeps what its clients sent, per relay. */
interface Recorder {
  readonly port: number;
  /** Everything sent through the relay since the last take(), as Latin-1. */
  take(): string;
  close(): Promise<void>;
}

async function recorder(port: number): Promise<Recorder> {
  let seen = '';
  const sockets = new Set<Socket>();
  const server: Server = createServer((client) => {
    // rip 127.0.0.2 against lip 127.0.0.1: Dovecot does not count the connection as secured.
    const backend = connect({ port, host: '127.0.0.1', localAddress: '127.0.0.2' });
    for (const s of [client, backend]) {
      sockets.add(s);
      s.on('close', () => sockets.delete(s));
    }
    client.on('data', (d: Buffer) => {
      seen += d.toString('latin1');
      backend.write(d);
    });
    backend.on('data', (d: Buffer) => client.write(d));
    client.on('error', () => backend.destroy());
    backend.on('error', () => client.destroy());
    client.on('close', () => backend.destroy());
    backend.on('close', () => client.destroy());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as { port: number }).port,
    take() {
      const taken = seen;
      seen = '';
      return taken;
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}

/** Rewrites one line of a stopped daemon's configuration, failing when it is not there. */
async function rewrite(file: string, from: string, to: string): Promise<void> {
  const text = await readFile(file, 'utf8');
  assert.ok(text.includes(from), `${file} has "${from}"`);
  await writeFile(file, text.replace(from, to));
}

let slapd: Slapd;
let dovecot: Dovecot;
let cyrus: Cyrus;
let front: Front;
let toDovecot: Recorder;
let toDovecotTls: Recorder;
let toCyrus: Recorder;

before(async () => {
  slapd = await startSlapd({
    users: [
      { uid: 'alice', password: PASSWORDS.alice, store: 'authzid' },
      { uid: 'rita', password: PASSWORDS.rita, store: 'replay' },
      { uid: 'lena', password: LONG_PASSWORD, store: 'replay' },
      { uid: 'tess', password: PASSWORDS.tess, store: 'authzidtls' },
      { uid: 'carl', password: PASSWORDS.carl, store: 'cyrus' },
    ],
  });
  [dovecot, cyrus] = await Promise.all([
    startDovecot({
      name: 'strict',
      users: [
        { name: 'alice', password: PASSWORDS.alice },
        { name: 'rita', password: PASSWORDS.rita },
        { name: 'lena', password: LONG_PASSWORD },
        { name: 'tess', password: PASSWORDS.tess },
      ],
      masterUser: PROXY,
      tls: true,
      trustedNetworks: '10.255.0.0/16',
    }),
    startCyrus({ users: [{ name: 'carl', password: 'carl-backend-only' }], proxyAdmin: CYRUS_PROXY }),
  ]);
  // Neither harness has an option for it; both read their configuration at start.
  await dovecot.stopOnly();
  await rewrite(join(dovecot.dir, 'dovecot.conf'), 'disable_plaintext_auth = no', 'disable_plaintext_auth = yes');
  await dovecot.startAgain();
  await cyrus.stopOnly();
  await rewrite(join(cyrus.dir, 'imapd.conf'), 'allowplaintext: yes', 'allowplaintext: no');
  await cyrus.startAgain();
  [toDovecot, toDovecotTls, toCyrus] = await Promise.all([recorder(dovecot.pop3Port), recorder(dovecot.pop3Port), recorder(cyrus.pop3Port)]);
  const authzid = { login_mode: 'sasl-authzid', proxy_user: PROXY.name, proxy_password: PROXY.password, tls: 'none' };
  front = await startFront({
    slapd,
    stores: {
      authzid: { currentMaster: 'a1', slots: { a1: { pop3Port: toDovecot.port } }, backend: authzid },
      replay: { currentMaster: 'r1', slots: { r1: { pop3Port: toDovecot.port } }, backend: { login_mode: 'replay', tls: 'none' } },
      authzidtls: { currentMaster: 't1', slots: { t1: { pop3Port: toDovecotTls.port } }, backend: { ...authzid, tls: 'starttls', ca_file: dovecot.caFile!, tls_servername: 'localhost' } },
      cyrus: {
        currentMaster: 'c1',
        slots: { c1: { pop3Port: toCyrus.port } },
        backend: { login_mode: 'sasl-authzid', proxy_user: CYRUS_PROXY.name, proxy_password: CYRUS_PROXY.password, tls: 'none' },
      },
    },
  });
});

after(async () => {
  await front?.stop();
  await Promise.all([toDovecot?.close(), toDovecotTls?.close(), toCyrus?.close()]);
  await Promise.all([slapd?.stop(), dovecot?.stop(), cyrus?.stop()]);
});

/** The last line the client got for a USER/PASS login through mailfront's plaintext POP3 listener. */
async function userPass(user: string, password: string): Promise<string> {
  const client = await LineClient.connect(front.pop3TrustedPort);
  try {
    assert.match(await client.readLine(), /^\+OK/);
    assert.match(await client.pop3(`USER ${user}`), /^\+OK/);
    client.send(`PASS ${password}`);
    return await client.readLine();
  } finally {
    client.close();
  }
}

/** The answer to AUTH PLAIN with an initial response, from mailfront's plaintext POP3 listener. */
async function authPlain(user: string, password: string): Promise<string> {
  const client = await LineClient.connect(front.pop3TrustedPort);
  try {
    assert.match(await client.readLine(), /^\+OK/);
    client.send(`AUTH PLAIN ${plain('', user, password)}`);
    return await client.readLine();
  } finally {
    client.close();
  }
}

async function loginFailure(user: string, since: number): Promise<Record<string, unknown>> {
  return waitForLog(front, (l) => l['event'] === 'session.login_failed' && l['user'] === user, 5_000, since);
}

function assertNoSecret(sent: string): void {
  for (const secret of [...SASL_SECRETS, PROXY.password, CYRUS_PROXY.password, LONG_PASSWORD, ...Object.values(PASSWORDS)]) {
    assert.ok(!sent.includes(secret), `a secret went to the backend: ${JSON.stringify(sent)}`);
  }
  assert.doesNotMatch(sent, /AUTH|PASS/);
}

describe('POP3 to a backend that takes no password without TLS', () => {
  test('Dovecot, sasl-authzid: only CAPA goes out, not the proxy password, and the client is told to come back later', async () => {
    toDovecot.take();
    const mark = front.logs.length;
    assert.match(await authPlain('alice', PASSWORDS.alice), UNAVAILABLE);
    const failed = await loginFailure('alice', mark);
    const sent = toDovecot.take();
    assert.equal(sent, 'CAPA\r\n');
    assertNoSecret(sent);
    assert.equal(failed['code'], 'BACKEND_UNAVAILABLE');
    assert.match(String(failed['reason']), /offers neither SASL PLAIN nor USER \(it takes no password on a connection without TLS\): set backend\.tls to starttls or implicit/);
  });

  test('Dovecot, replayed credentials over 900 bytes: only CAPA goes out, not the user\'s password', async () => {
    toDovecot.take();
    const mark = front.logs.length;
    assert.match(await userPass('lena', LONG_PASSWORD), UNAVAILABLE);
    const failed = await loginFailure('lena', mark);
    const sent = toDovecot.take();
    assert.equal(sent, 'CAPA\r\n');
    assertNoSecret(sent);
    assert.equal(failed['code'], 'BACKEND_UNAVAILABLE');
    assert.match(String(failed['reason']), /set backend\.tls/);
  });

  test('Dovecot, replayed USER/PASS: refused at USER, PASS never goes out (and no CAPA is asked)', async () => {
    toDovecot.take();
    const mark = front.logs.length;
    assert.match(await userPass('rita', PASSWORDS.rita), /^-ERR /);
    const failed = await loginFailure('rita', mark);
    const sent = toDovecot.take();
    assert.equal(sent, 'USER rita\r\n');
    assertNoSecret(sent);
    assert.match(String(failed['reason']), /Plaintext authentication disallowed/);
  });

  test('Dovecot under STLS, sasl-authzid: logs in, with no CAPA asked', async () => {
    toDovecotTls.take();
    const client = await LineClient.connect(front.pop3TrustedPort);
    try {
      assert.match(await client.readLine(), /^\+OK/);
      assert.match(await client.pop3(`AUTH PLAIN ${plain('', 'tess', PASSWORDS.tess)}`), /^\+OK/);
      assert.match(await client.pop3('STAT'), /^\+OK 0 0$/);
    } finally {
      client.close();
    }
    // STLS in clear, then only the TLS handshake and records.
    const sent = toDovecotTls.take();
    assert.ok(sent.startsWith('STLS\r\n\x16\x03'), JSON.stringify(sent.slice(0, 16)));
    assertNoSecret(sent);
  });

  test('Cyrus with allowplaintext: no, sasl-authzid: only CAPA goes out, not the proxy password', async () => {
    toCyrus.take();
    const mark = front.logs.length;
    assert.match(await authPlain('carl', PASSWORDS.carl), UNAVAILABLE);
    const failed = await loginFailure('carl', mark);
    const sent = toCyrus.take();
    assert.equal(sent, 'CAPA\r\n');
    assertNoSecret(sent);
    assert.equal(failed['code'], 'BACKEND_UNAVAILABLE');
    assert.match(String(failed['reason']), /set backend\.tls/);
  });
});
