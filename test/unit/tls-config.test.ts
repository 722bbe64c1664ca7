import assert from 'node:assert/strict';
import { X509Certificate, randomBytes } from 'node:crypto';
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { inspect } from 'node:util';
import { createServer as createNetServer } from 'node:net';
import { TLSSocket, connect, createServer } from 'node:tls';
import type { ConnectionOptions, SecureVersion, Server } from 'node:tls';
import { IssueList } from '../../src/config/validate.js';
import { MailfrontError } from '../../src/errors.js';
import { INTERMEDIATE_CIPHERS, TICKET_KEY_BYTES, TLS_POLICY_DEFAULTS, TicketKey, TlsContextHolder, readTlsPolicy } from '../../src/server/tls-config.js';
import type { TlsPolicy } from '../../src/server/tls-config.js';
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

/** One connection to `port` offering `session`: whether it was resumed, and the last session the server gave. */
function tlsConnection(port: number, maxVersion: SecureVersion, session?: Buffer): Promise<{ reused: boolean; session?: Buffer }> {
  return new Promise((resolve, reject) => {
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
}

/** Connects to `port`, then to `then` (the same by default) with the first connection's last session; whether the second resumed it. */
async function resumes(port: number, maxVersion: SecureVersion, then = port): Promise<boolean> {
  const first = await tlsConnection(port, maxVersion);
  assert.equal(first.reused, false);
  // No session at all (TLS 1.2 without a ticket or an ID): nothing to offer, so nothing resumed.
  if (first.session === undefined) return false;
  return (await tlsConnection(then, maxVersion, first.session)).reused;
}

/** A listener that wraps accepted sockets with `holder`'s context, as listeners.ts and session.ts do; the line leaves once the handshake is done. */
async function wrappingServer(holder: TlsContextHolder): Promise<{ server: ReturnType<typeof createNetServer>; port: number }> {
  const server = createNetServer((raw) => {
    const secure = new TLSSocket(raw, { isServer: true, secureContext: holder.context });
    secure.on('error', () => undefined);
    secure.once('secure', () => secure.end('* OK\r\n'));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, port: (server.address() as { port: number }).port };
}

test('session tickets: clients resume by default, on sockets wrapped with the context; with session_tickets false none does, TLS 1.3 or 1.2', async () => {
  for (const sessionTickets of [true, false]) {
    const holder = new TlsContextHolder(files, { ...TLS_POLICY_DEFAULTS, sessionTickets });
    const { server: wrapping, port } = await wrappingServer(holder);
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

/** A policy read from config with `tls.session_ticket_key_file: file` (no issue expected). */
function policyWithKeyFile(file: string): TlsPolicy {
  const issues = new IssueList();
  const policy = readTlsPolicy({ session_ticket_key_file: file }, 'tls', issues);
  assert.deepEqual(issues.issues, []);
  return policy;
}

test('session_ticket_key_file: 48 bytes read, its name resolved, the bytes never shown; anything else is an issue at the key', async () => {
  const key = randomBytes(TICKET_KEY_BYTES);
  await writeFile(join(dir, 'ticket.key'), key);
  const issues = new IssueList();
  const policy = readTlsPolicy({ session_ticket_key_file: 'ticket.key' }, 'tls', issues, (p) => join(dir, p));
  assert.deepEqual(issues.issues, []);
  assert.equal(policy.ticketKey?.file, join(dir, 'ticket.key'));
  assert.ok(policy.ticketKey.equals(new TicketKey('elsewhere', key)));
  assert.ok(!policy.ticketKey.equals(new TicketKey(join(dir, 'ticket.key'), randomBytes(TICKET_KEY_BYTES))));
  // Whatever shows the policy shows the file, not the key.
  for (const shown of [JSON.stringify(policy), inspect(policy, { depth: null, showHidden: true })]) {
    assert.ok(shown.includes('ticket.key'), shown);
    for (const form of [key.toString('hex'), key.toString('base64'), key.subarray(0, 8).toString('hex'), [...key.subarray(0, 4)].join(', ')]) assert.ok(!shown.includes(form), `${form} in ${shown}`);
  }
  // A copy goes out: changing it changes nothing.
  policy.ticketKey.bytes.fill(0);
  assert.ok(policy.ticketKey.equals(new TicketKey('elsewhere', key)));

  await writeFile(join(dir, 'ticket.b64'), `${key.toString('base64')}\n`);
  await writeFile(join(dir, 'ticket.short'), key.subarray(0, 32));
  const cases: Array<[Record<string, unknown>, string, RegExp]> = [
    [{ session_ticket_key_file: join(dir, 'nope.key') }, 'ENOENT', /^a readable file \(.*nope\.key\)$/],
    [{ session_ticket_key_file: join(dir, 'ticket.b64') }, '65 bytes, text (the key is the random bytes themselves, not their base64 or hex)', /^a file of exactly 48 random bytes, as `openssl rand 48 > FILE` writes \(.*ticket\.b64\)$/],
    [{ session_ticket_key_file: join(dir, 'ticket.short') }, '32 bytes', /^a file of exactly 48 random bytes/],
    [{ session_ticket_key_file: join(dir, 'ticket.key'), session_tickets: false }, 'a key file', /^no ticket key file while session_tickets is false/],
  ];
  for (const [section, found, expected] of cases) {
    const bad = new IssueList();
    const read = readTlsPolicy(section, 'tls', bad);
    assert.equal(read.ticketKey, undefined);
    assert.equal(bad.issues.length, 1, JSON.stringify(bad.issues));
    assert.equal(bad.issues[0]?.path, 'tls.session_ticket_key_file');
    assert.equal(bad.issues[0]?.found, found);
    assert.match(bad.issues[0]?.expected ?? '', expected);
  }
});

test('session_ticket_key_file: a ticket is good on every holder with the key (another listener, another instance) and across reloads, until the key changes', async () => {
  const keyFile = join(dir, 'shared-ticket.key');
  await writeFile(keyFile, randomBytes(TICKET_KEY_BYTES));
  const shared = policyWithKeyFile(keyFile);
  // Two instances with the key, one without (a key of its own, made by node at random).
  const a = new TlsContextHolder(files, shared);
  const b = new TlsContextHolder([files, other], policyWithKeyFile(keyFile));
  const own = new TlsContextHolder(files);
  const servers = await Promise.all([a, b, own].map(wrappingServer));
  const [pa, pb, pown] = servers.map((s) => s.port) as [number, number, number];
  try {
    for (const version of ['TLSv1.3', 'TLSv1.2'] as const) {
      assert.equal(await resumes(pa, version, pb), true, `${version}: a ticket from one resumes on the other`);
      assert.equal(await resumes(pb, version, pa), true, `${version}: and back`);
      assert.equal(await resumes(pa, version, pown), false, `${version}: not on one without the key`);
    }
    // A reload with the same key: tickets from before it are still good.
    const before = await tlsConnection(pa, 'TLSv1.3');
    assert.ok(a.reload(policyWithKeyFile(keyFile)).ok);
    assert.equal((await tlsConnection(pa, 'TLSv1.3', before.session)).reused, true, 'the same key after a reload');
    // Without a key file node makes a new key at each reload: a ticket from before is not taken.
    const beforeOwn = await tlsConnection(pown, 'TLSv1.3');
    assert.ok(own.reload().ok);
    assert.equal((await tlsConnection(pown, 'TLSv1.3', beforeOwn.session)).reused, false, 'a random key, after a reload');
    // A new key (the file rotated, then a reload): tickets sealed with the old one are not taken, new ones are.
    await writeFile(keyFile, randomBytes(TICKET_KEY_BYTES));
    const rotated = policyWithKeyFile(keyFile);
    assert.ok(!rotated.ticketKey?.equals(shared.ticketKey));
    assert.ok(a.reload(rotated).ok);
    assert.equal((await tlsConnection(pa, 'TLSv1.3', before.session)).reused, false, 'a ticket sealed with the old key');
    assert.equal(await resumes(pa, 'TLSv1.3'), true, 'tickets sealed with the new key');
    // The new key reaches the contexts even when the certificate cannot be read again (it stays, under the new policy).
    await copyFile(files.cert, join(dir, 'kept.crt'));
    const kept = new TlsContextHolder({ cert: join(dir, 'kept.crt'), key: files.key }, shared);
    const { server: keptServer, port: pk } = await wrappingServer(kept);
    try {
      const old = await tlsConnection(pk, 'TLSv1.3');
      await rm(join(dir, 'kept.crt'));
      assert.equal(kept.reload(rotated).ok, false);
      assert.equal((await tlsConnection(pk, 'TLSv1.3', old.session)).reused, false, 'the old key is gone after a failed re-read');
      assert.equal(await resumes(pa, 'TLSv1.3', pk), true, 'the new key is in force');
    } finally {
      keptServer.close();
    }
  } finally {
    for (const { server } of servers) server.close();
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
