import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { createServer as createNetServer } from 'node:net';
import { TLSSocket, connect, createServer } from 'node:tls';
import type { ConnectionOptions, SecureVersion, Server } from 'node:tls';
import { IssueList } from '../../src/config/validate.js';
import { MailfrontError } from '../../src/errors.js';
import { INTERMEDIATE_CIPHERS, TLS_POLICY_DEFAULTS, TlsContextHolder, readTlsPolicy } from '../../src/server/tls-config.js';
import { makeCerts, run } from '../integration/servers/index.js';
import type { TestCerts } from '../integration/servers/index.js';

let dir: string;
let certs: TestCerts;
/** The test CA's server certificate as a listener names it. */
let files: { cert: string; key: string };
/** A second, self-signed certificate and key (another identity). */
let other: { cert: string; key: string };

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'mf-tls-'));
  certs = await makeCerts(dir);
  files = { cert: certs.certFile, key: certs.keyFile };
  other = { cert: join(dir, 'other.crt'), key: join(dir, 'other.key') };
  await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', other.key, '-out', other.cert, '-days', '30', '-subj', '/CN=other.test']);
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function serve(holder: TlsContextHolder): Promise<{ server: Server; port: number }> {
  const server = createServer(holder.options, (socket) => socket.end('hello\r\n'));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  return { server, port: typeof address === 'object' && address !== null ? address.port : 0 };
}

interface Handshake {
  readonly ok: boolean;
  readonly protocol?: string | null;
  readonly cipher?: string;
  readonly fingerprint?: string;
  readonly error?: string;
}

function handshake(port: number, options: ConnectionOptions = {}): Promise<Handshake> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port, rejectUnauthorized: false, ...options }, () => {
      const result: Handshake = { ok: true, protocol: socket.getProtocol(), cipher: socket.getCipher().name, fingerprint: socket.getPeerCertificate().fingerprint256 };
      socket.destroy();
      resolve(result);
    });
    socket.on('error', (error) => resolve({ ok: false, error: error.message }));
  });
}

const fingerprintOf = async (file: string): Promise<string> => new X509Certificate(await readFile(file)).fingerprint256;

test('policy: safe defaults, every key, and a cipher list OpenSSL cannot use is reported', () => {
  const issues = new IssueList();
  assert.deepEqual(readTlsPolicy(undefined, 'tls', issues), TLS_POLICY_DEFAULTS);
  assert.equal(TLS_POLICY_DEFAULTS.minVersion, 'TLSv1.2');
  assert.ok(INTERMEDIATE_CIPHERS.includes('TLS_AES_128_GCM_SHA256') && !/RC4|3DES|CBC|SHA:|NULL/.test(INTERMEDIATE_CIPHERS));
  assert.equal(TLS_POLICY_DEFAULTS.sessionTickets, true);
  assert.deepEqual(readTlsPolicy({ min_version: 'TLSv1.3', ciphers: 'TLS_AES_256_GCM_SHA384', honor_cipher_order: true, session_tickets: false }, 'tls', issues), {
    minVersion: 'TLSv1.3',
    ciphers: 'TLS_AES_256_GCM_SHA384',
    honorCipherOrder: true,
    sessionTickets: false,
  });
  assert.deepEqual(issues.issues, []);
  const bad = new IssueList();
  readTlsPolicy({ min_version: 'TLSv1', ciphers: 'NO-SUCH-CIPHER', colour: 1, session_tickets: 'no' }, 'listeners[0].tls_policy', bad);
  assert.deepEqual(bad.issues.map((i) => i.path).sort(), ['listeners[0].tls_policy.ciphers', 'listeners[0].tls_policy.colour', 'listeners[0].tls_policy.min_version', 'listeners[0].tls_policy.session_tickets']);
});

test('the default policy: TLS 1.3 negotiated, TLS 1.1 refused, TLS 1.2 only with forward-secret AEAD suites', async () => {
  const holder = new TlsContextHolder(files);
  const { server, port } = await serve(holder);
  try {
    const modern = await handshake(port);
    assert.equal(modern.protocol, 'TLSv1.3');
    assert.equal(modern.fingerprint, await fingerprintOf(certs.certFile));
    const old = await handshake(port, { minVersion: 'TLSv1', maxVersion: 'TLSv1.1' as SecureVersion });
    assert.equal(old.ok, false);
    const tls12 = await handshake(port, { maxVersion: 'TLSv1.2' });
    assert.equal(tls12.protocol, 'TLSv1.2');
    assert.match(tls12.cipher ?? '', /^ECDHE-ECDSA-(AES\d+-GCM|CHACHA20)/);
    const weak = await handshake(port, { maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES128-SHA:AES128-SHA' });
    assert.equal(weak.ok, false, 'CBC suites are not offered');
  } finally {
    server.close();
  }
});

test('min_version TLSv1.3 refuses TLS 1.2 clients; honor_cipher_order picks the server order', async () => {
  const strict = new TlsContextHolder(files, { ...TLS_POLICY_DEFAULTS, minVersion: 'TLSv1.3' });
  const a = await serve(strict);
  try {
    assert.equal((await handshake(a.port, { maxVersion: 'TLSv1.2' })).ok, false);
    assert.equal((await handshake(a.port)).protocol, 'TLSv1.3');
  } finally {
    a.server.close();
  }
  const ordered = new TlsContextHolder(files, { ...TLS_POLICY_DEFAULTS, ciphers: 'ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-GCM-SHA256', honorCipherOrder: true });
  const b = await serve(ordered);
  try {
    const result = await handshake(b.port, { maxVersion: 'TLSv1.2', ciphers: 'ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305' });
    assert.equal(result.cipher, 'ECDHE-ECDSA-CHACHA20-POLY1305');
  } finally {
    b.server.close();
  }
});

test('reload takes new files; a broken, mismatched, missing or expired one leaves the working context in force', async () => {
  const live = { cert: join(dir, 'live.crt'), key: join(dir, 'live.key') };
  await copyFile(certs.certFile, live.cert);
  await copyFile(certs.keyFile, live.key);
  let clock = Date.now();
  const holder = new TlsContextHolder(live, TLS_POLICY_DEFAULTS, () => clock);
  const first = holder.certificate.fingerprint256;
  const { server, port } = await serve(holder);
  try {
    assert.equal((await handshake(port)).fingerprint, first);

    // The new certificate with the old key: refused, the old pair stays.
    await copyFile(other.cert, live.cert);
    const mismatch = holder.reload();
    assert.equal(mismatch.ok, false);
    assert.ok(!mismatch.ok && mismatch.error instanceof MailfrontError && mismatch.error.kind === 'config');
    assert.match(!mismatch.ok ? mismatch.error.message : '', /key values mismatch|live\.crt/);
    assert.equal(holder.certificate.fingerprint256, first);

    // Both new files: taken; new handshakes see the new certificate once the server is told.
    await copyFile(other.key, live.key);
    const ok = holder.reload();
    assert.ok(ok.ok);
    assert.equal(ok.certificate.subject, 'CN=other.test');
    server.setSecureContext(holder.options);
    const second = await handshake(port);
    assert.equal(second.fingerprint, await fingerprintOf(other.cert));

    for (const [what, prepare] of [
      ['garbage', () => writeFile(live.cert, 'not a certificate\n')],
      ['missing', () => rm(live.cert)],
    ] as const) {
      await prepare();
      const result = holder.reload();
      assert.equal(result.ok, false, what);
      assert.equal(holder.certificate.fingerprint256, second.fingerprint, what);
    }
    await copyFile(other.cert, live.cert);
    clock = Date.now() + 31 * 86_400_000;
    const expired = holder.reload();
    assert.ok(!expired.ok);
    assert.match(expired.error.message, /expired/);
    clock = Date.now();
    assert.ok(holder.reload().ok);
    // The context for STARTTLS is the same one.
    assert.equal((await handshake(port)).fingerprint, second.fingerprint);
  } finally {
    server.close();
  }
});

/** Asks for a TLS 1.2 renegotiation on a new connection to `port`: 'renegotiated', or the code of the error the client got. */
function renegotiate(port: number): Promise<string> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port, rejectUnauthorized: false, maxVersion: 'TLSv1.2' }, () => {
      const started = socket.renegotiate({ rejectUnauthorized: false }, (error) => {
        resolve(error === null ? 'renegotiated' : String((error as NodeJS.ErrnoException).code ?? error.message));
        socket.destroy();
      });
      if (!started) resolve('not started');
    });
    // A refusal comes as an alert the client fails on, not to the renegotiate() callback.
    socket.on('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message));
    socket.setTimeout(10_000, () => {
      resolve('no answer');
      socket.destroy();
    });
  });
}

test('TLS 1.2 renegotiation is refused, on sockets wrapped with the context (implicit TLS, STARTTLS) and on a server built from the options', async () => {
  const holder = new TlsContextHolder(files);
  // listeners.ts (implicit TLS) and session.ts (STARTTLS) both wrap the plain socket this way.
  const wrapping = createNetServer((raw) => {
    const secure = new TLSSocket(raw, { isServer: true, secureContext: holder.context });
    secure.on('error', () => undefined);
  });
  await new Promise<void>((resolve) => wrapping.listen(0, '127.0.0.1', resolve));
  const wrappingPort = (wrapping.address() as { port: number }).port;
  // serve()'s server ends each connection at once; this one keeps it open for the request.
  const server = createServer(holder.options, (secure) => secure.on('error', () => undefined));
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as { port: number }).port;
  try {
    assert.equal(await renegotiate(wrappingPort), 'ERR_SSL_NO_RENEGOTIATION', 'wrapped socket');
    assert.equal(await renegotiate(port), 'ERR_SSL_NO_RENEGOTIATION', 'server from the options');
    // A reloaded context keeps the policy's options.
    assert.ok(holder.reload().ok);
    server.setSecureContext(holder.options);
    assert.equal(await renegotiate(wrappingPort), 'ERR_SSL_NO_RENEGOTIATION', 'wrapped socket after a reload');
    assert.equal(await renegotiate(port), 'ERR_SSL_NO_RENEGOTIATION', 'server from the options after a reload');
    // The connection itself is fine before the request: TLS 1.2 is still offered.
    assert.equal((await handshake(wrappingPort, { maxVersion: 'TLSv1.2' })).protocol, 'TLSv1.2');
  } finally {
    wrapping.close();
    server.close();
  }
});

/** Connects twice to `port`, the second time with the first connection's last session; whether the second resumed it. */
async function resumes(port: number, maxVersion: SecureVersion): Promise<boolean> {
  const once = (session?: Buffer): Promise<{ reused: boolean; session?: Buffer }> =>
    new Promise((resolve, reject) => {
      let last: Buffer | undefined;
      const socket = connect({ host: '127.0.0.1', port, rejectUnauthorized: false, maxVersion, ...(session !== undefined ? { session } : {}) });
      let reused = false;
      socket.once('secureConnect', () => (reused = socket.isSessionReused()));
      socket.on('session', (s: Buffer) => (last = s));
      socket.on('error', reject);
      // The server ends the connection after its line: every ticket it sent has been read by the close.
      socket.resume();
      socket.once('close', () => resolve({ reused, ...(last !== undefined ? { session: last } : {}) }));
    });
  const first = await once();
  assert.equal(first.reused, false);
  // No session at all (TLS 1.2 without a ticket or an ID): nothing to offer, so nothing resumed.
  if (first.session === undefined) return false;
  return (await once(first.session)).reused;
}

test('session tickets: clients resume by default, on sockets wrapped with the context; with session_tickets false none does, TLS 1.3 or 1.2', async () => {
  for (const sessionTickets of [true, false]) {
    const holder = new TlsContextHolder(files, { ...TLS_POLICY_DEFAULTS, sessionTickets });
    // As listeners.ts and session.ts wrap an accepted socket; the line leaves once the handshake is done.
    const wrapping = createNetServer((raw) => {
      const secure = new TLSSocket(raw, { isServer: true, secureContext: holder.context });
      secure.on('error', () => undefined);
      secure.once('secure', () => secure.end('* OK\r\n'));
    });
    await new Promise<void>((resolve) => wrapping.listen(0, '127.0.0.1', resolve));
    const port = (wrapping.address() as { port: number }).port;
    try {
      for (const version of ['TLSv1.3', 'TLSv1.2'] as const) {
        assert.equal(await resumes(port, version), sessionTickets, `${version}, session_tickets ${sessionTickets}`);
      }
      // A reload keeps the policy: tickets (or none) as before.
      assert.ok(holder.reload().ok);
      assert.equal(await resumes(port, 'TLSv1.3'), sessionTickets, `after a reload, session_tickets ${sessionTickets}`);
    } finally {
      wrapping.close();
    }
  }
});

test('unusable files at start-up are a config error naming them', () => {
  assert.throws(
    () => new TlsContextHolder({ cert: join(dir, 'nope.crt'), key: join(dir, 'nope.key') }),
    (error: unknown) => error instanceof MailfrontError && error.kind === 'config' && error.code === 'TLS_FILES_UNUSABLE' && /nope\.crt/.test(error.message),
  );
  assert.throws(() => new TlsContextHolder({ cert: certs.certFile, key: other.key }), /TLS|key values mismatch|cannot use/);
});

test('a key of another type than its certificate, or a chain file in the wrong order, is refused (OpenSSL loads both, and every handshake fails)', async () => {
  // An RSA certificate with an EC key: a move to ECDSA half done.
  const rsa = { cert: join(dir, 'rsa.crt'), key: join(dir, 'rsa.key') };
  await run('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', rsa.key, '-out', rsa.cert, '-days', '30', '-subj', '/CN=rsa.test']);
  assert.throws(() => new TlsContextHolder({ cert: rsa.cert, key: other.key }), /the key does not belong to the certificate/);
  assert.throws(() => new TlsContextHolder({ cert: other.cert, key: rsa.key }), /the key does not belong to the certificate/);
  // The chain before the server's certificate.
  const reversed = join(dir, 'reversed.crt');
  await writeFile(reversed, (await readFile(certs.caFile, 'utf8')) + (await readFile(certs.certFile, 'utf8')));
  assert.throws(() => new TlsContextHolder({ cert: reversed, key: certs.keyFile }), /the key does not belong to the certificate/);
  // The right order serves, and each pair of its own type still loads.
  const chained = join(dir, 'chained.crt');
  await writeFile(chained, (await readFile(certs.certFile, 'utf8')) + (await readFile(certs.caFile, 'utf8')));
  assert.equal(new TlsContextHolder({ cert: chained, key: certs.keyFile }).certificate.fingerprint256, new X509Certificate(await readFile(certs.certFile)).fingerprint256);
  assert.equal(new TlsContextHolder(rsa).certificate.subject, 'CN=rsa.test');
});

test('a reload whose files cannot be used still takes the new TLS policy, with the certificate and key in force', async () => {
  const live = { cert: join(dir, 'policy-live.crt'), key: join(dir, 'policy-live.key') };
  await copyFile(certs.certFile, live.cert);
  await copyFile(certs.keyFile, live.key);
  const holder = new TlsContextHolder(live, TLS_POLICY_DEFAULTS);
  const first = holder.certificate.fingerprint256;
  // As listeners.ts does: each connection takes the holder's context of the moment.
  const wrapping = createNetServer((raw) => {
    const secure = new TLSSocket(raw, { isServer: true, secureContext: holder.context });
    secure.on('error', () => undefined);
    secure.on('secure', () => secure.end());
  });
  await new Promise<void>((resolve) => wrapping.listen(0, '127.0.0.1', resolve));
  const port = (wrapping.address() as { port: number }).port;
  try {
    assert.equal((await handshake(port, { maxVersion: 'TLSv1.2' })).protocol, 'TLSv1.2');
    // The certificate file is gone (a renewal half done) when tls.min_version: TLSv1.3 is reloaded.
    await rm(live.cert);
    const strict = { ...TLS_POLICY_DEFAULTS, minVersion: 'TLSv1.3' as const };
    const result = holder.reload(strict);
    const refused = await handshake(port, { maxVersion: 'TLSv1.2' });
    assert.equal(refused.ok, false, 'TLS 1.2 is refused from the next connection');
    const taken = await handshake(port);
    assert.equal(taken.protocol, 'TLSv1.3');
    assert.equal(taken.fingerprint, first, 'with the certificate in force');
    assert.equal(holder.certificate.fingerprint256, first);
    assert.ok(!result.ok);
    assert.match(result.error.message, /^cannot use certificate \S+policy-live\.crt with key \S+: ENOENT; the certificate in force stays, with the new TLS policy$/);
    // The same policy again, the files still gone: nothing else changes, and it says so.
    const again = holder.reload(strict);
    assert.ok(!again.ok);
    assert.match(again.error.message, /: ENOENT; the certificate in force stays$/);
    // The files back: taken, under the policy in force.
    await copyFile(certs.certFile, live.cert);
    assert.ok(holder.reload(strict).ok);
    assert.equal((await handshake(port, { maxVersion: 'TLSv1.2' })).ok, false);
  } finally {
    wrapping.close();
  }
});
