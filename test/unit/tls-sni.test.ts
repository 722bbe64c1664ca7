// A listener's several certificates, picked by the client's SNI server name (TlsContextHolder):
// which names a certificate is for, exact names before wildcards, the first certificate for a
// name and by default, one TLS policy for every certificate, and reloads that take all the files
// or none. Real handshakes with node's TLS client against sockets wrapped as listeners.ts and
// session.ts wrap them.
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer as createNetServer } from 'node:net';
import type { Server } from 'node:net';
import { after, before, test } from 'node:test';
import { TLSSocket, connect } from 'node:tls';
import type { ConnectionOptions } from 'node:tls';
import { MailfrontError } from '../../src/errors.js';
import { TLS_POLICY_DEFAULTS, TlsContextHolder, TlsFilesError } from '../../src/server/tls-config.js';
import type { TlsPolicy } from '../../src/server/tls-config.js';
import { run } from '../integration/servers/index.js';

let dir: string;

interface Pair {
  readonly cert: string;
  readonly key: string;
}

/** A self-signed EC certificate: `subject` (e.g. /CN=x) and, when given, a subjectAltName. */
async function makeCert(name: string, subject: string, san?: string, days = 30): Promise<Pair> {
  const pair = { cert: join(dir, `${name}.crt`), key: join(dir, `${name}.key`) };
  await run('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', pair.key, '-out', pair.cert, '-days', String(days), '-subj', subject,
    ...(san !== undefined ? ['-addext', `subjectAltName=${san}`] : []),
  ]);
  return pair;
}

const fingerprintOf = async (pair: Pair): Promise<string> => new X509Certificate(await readFile(pair.cert)).fingerprint256;

let a: Pair; // the default: mail.example.com
let b: Pair; // imap.example.org and *.example.net
let c: Pair; // no subjectAltName: its CN, pop.example.com
let d: Pair; // a subjectAltName DNS entry, sieve.example.com: its CN (ignored.example.com) is not used
let e: Pair; // x.example.net, exactly, under b's wildcard
let f: Pair; // mail.example.com (a's: a wins it) and other.example.com
let wild: Pair; // *.example.com only

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'mf-sni-'));
  [a, b, c, d, e, f, wild] = await Promise.all([
    makeCert('a', '/CN=mail.example.com', 'DNS:mail.example.com'),
    makeCert('b', '/CN=b', 'DNS:imap.example.org,DNS:*.example.net,IP:127.0.0.1'),
    makeCert('c', '/O=tests/CN=pop.example.com'),
    makeCert('d', '/CN=ignored.example.com', 'DNS:Sieve.Example.COM'),
    makeCert('e', '/CN=e', 'DNS:x.example.net'),
    makeCert('f', '/CN=f', 'DNS:mail.example.com,DNS:other.example.com'),
    makeCert('wild', '/CN=wild', 'DNS:*.example.com'),
  ]);
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A server that wraps each connection as listeners.ts (implicit TLS) and session.ts (STARTTLS) do, with the holder of the moment. */
async function wrapping(holder: () => TlsContextHolder): Promise<{ server: Server; port: number }> {
  const server = createNetServer((raw) => {
    const tls = holder();
    const SNICallback = tls.sniCallback;
    const secure = new TLSSocket(raw, { isServer: true, secureContext: tls.context, ...(SNICallback !== undefined ? { SNICallback } : {}) });
    secure.on('error', () => undefined);
    secure.on('secure', () => secure.end());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { server, port: (server.address() as { port: number }).port };
}

/** The fingerprint of the certificate a handshake got (with `servername`, or none), or 'refused: …'. */
function served(port: number, servername: string | undefined, options: ConnectionOptions = {}): Promise<string> {
  return new Promise((resolve) => {
    // An empty servername sends no SNI (node sends none for an IP address either).
    const socket = connect({ host: '127.0.0.1', port, rejectUnauthorized: false, servername: servername ?? '', ...options }, () => {
      resolve(socket.getPeerCertificate().fingerprint256);
      socket.destroy();
    });
    socket.on('error', (error) => resolve(`refused: ${error.message}`));
  });
}

test('the names a certificate is for: its subjectAltName DNS entries, lower-cased; its CN only when it has none', () => {
  const holder = new TlsContextHolder([a, b, c, d]);
  assert.deepEqual(holder.certificates.map((x) => x.names), [['mail.example.com'], ['imap.example.org', '*.example.net'], ['pop.example.com'], ['sieve.example.com']]);
  assert.deepEqual(holder.certificates.map((x) => x.file), [a.cert, b.cert, c.cert, d.cert]);
  assert.equal(holder.certificate.file, a.cert, 'the first is the default');
  assert.ok(holder.sniCallback !== undefined);
  // One certificate needs no SNICallback: a `certificate:` listener handshakes as before.
  assert.equal(new TlsContextHolder(a).sniCallback, undefined);
  assert.equal(new TlsContextHolder([a]).sniCallback, undefined);
});

test('a handshake gets the certificate for the name it asks: exact names first, then a one-label wildcard, else the first; any case', async () => {
  const holder = new TlsContextHolder([a, b, c, d, e, f]);
  const { server, port } = await wrapping(() => holder);
  const [fa, fb, fc, fd, fe, ff] = await Promise.all([a, b, c, d, e, f].map(fingerprintOf));
  try {
    const expected: Array<[string | undefined, string, string]> = [
      [undefined, fa!, 'no SNI: the first'],
      ['mail.example.com', fa!, 'exact'],
      ['imap.example.org', fb!, 'exact, the second certificate'],
      ['IMAP.Example.ORG', fb!, 'in any case'],
      ['imap.example.org.', fb!, 'with a final dot'],
      ['a.example.net', fb!, 'the wildcard *.example.net'],
      ['x.example.net', fe!, 'an exact name of a later certificate before an earlier wildcard'],
      ['example.net', fa!, 'a wildcard is not for the name under it'],
      ['a.b.example.net', fa!, 'nor for two labels'],
      ['pop.example.com', fc!, 'the CN of a certificate without subjectAltName'],
      ['sieve.example.com', fd!, 'a subjectAltName DNS entry'],
      ['ignored.example.com', fa!, 'not the CN of a certificate that has subjectAltName DNS entries'],
      ['other.example.com', ff!, 'the later certificate for its own name'],
      ['unknown.test', fa!, 'a name no certificate is for: the first'],
    ];
    for (const [name, fingerprint, why] of expected) assert.equal(await served(port, name), fingerprint, `${name ?? '(no SNI)'}: ${why}`);
  } finally {
    server.close();
  }
  // A wildcard first: the exact names of a later certificate are still its own.
  const wildFirst = new TlsContextHolder([wild, f]);
  const second = await wrapping(() => wildFirst);
  try {
    assert.equal(await served(second.port, 'mail.example.com'), ff);
    assert.equal(await served(second.port, 'www.example.com'), await fingerprintOf(wild));
    assert.equal(await served(second.port, 'example.com'), await fingerprintOf(wild), 'the default');
  } finally {
    second.server.close();
  }
});

test('a certificate no client would be given is refused, naming its place in the list', async () => {
  // A renewed certificate listed after the one it replaces: every name of it taken before.
  const renewed = await makeCert('a-renewed', '/CN=mail.example.com', 'DNS:mail.example.com');
  assert.throws(
    () => new TlsContextHolder([a, b, renewed]),
    (error: unknown) => error instanceof TlsFilesError && error.configKey === 'certificates[2]' && error.code === 'TLS_FILES_UNUSABLE' && error.kind === 'config' && error.message.includes(renewed.cert) && /no client would be given it: every name it is for \(mail\.example\.com\) is served by a certificate listed before it \(\S+a\.crt\)/.test(error.message),
  );
  // A wildcard taken before, and a certificate for no DNS name at all (an IP address only).
  const sameWildcard = await makeCert('b-wild', '/CN=bw', 'DNS:*.example.net');
  assert.throws(() => new TlsContextHolder([b, sameWildcard]), (error: unknown) => error instanceof TlsFilesError && error.configKey === 'certificates[1]');
  const ipOnly = await makeCert('ip', '/CN=not a host name', 'IP:127.0.0.1');
  assert.throws(() => new TlsContextHolder([a, ipOnly]), /it is for no DNS name/);
  // As the default, it is the one for clients that ask for no name: fine.
  assert.equal(new TlsContextHolder([ipOnly, a]).certificate.file, ipOnly.cert);
  // An exact name under an earlier wildcard is a name of its own.
  assert.equal(new TlsContextHolder([wild, a]).certificates.length, 2);
});

test('a file that cannot be used is named by its place in the list and which of the pair it is', async () => {
  const broken = join(dir, 'broken.crt');
  await writeFile(broken, 'not a certificate\n');
  const cases: Array<[Pair, string, RegExp]> = [
    [{ cert: join(dir, 'missing.crt'), key: b.key }, 'certificates[1].cert', /missing\.crt with key \S+: ENOENT$/],
    [{ cert: b.cert, key: join(dir, 'missing.key') }, 'certificates[1].key', /: ENOENT$/],
    [{ cert: broken, key: b.key }, 'certificates[1].cert', /not a PEM certificate/],
    [{ cert: b.cert, key: c.key }, 'certificates[1]', /the key does not belong to the certificate/],
  ];
  for (const [files, configKey, message] of cases) {
    assert.throws(() => new TlsContextHolder([a, files]), (error: unknown) => error instanceof TlsFilesError && error.configKey === configKey && message.test(error.message), configKey);
  }
  // One certificate (`certificate:`) is named as before, as a whole.
  assert.throws(() => new TlsContextHolder({ cert: broken, key: a.key }), (error: unknown) => error instanceof TlsFilesError && error.configKey === 'certificate');
});

test('every certificate is served under the one TLS policy: min_version TLSv1.3 and no renegotiation whichever SNI picks', async () => {
  const strict: TlsPolicy = { ...TLS_POLICY_DEFAULTS, minVersion: 'TLSv1.3' };
  const holder = new TlsContextHolder([a, b], strict);
  const { server, port } = await wrapping(() => holder);
  try {
    for (const name of [undefined, 'imap.example.org', 'a.example.net']) {
      assert.match(await served(port, name, { maxVersion: 'TLSv1.2' }), /^refused/, `${name ?? '(no SNI)'}: TLS 1.2 refused`);
      assert.doesNotMatch(await served(port, name), /^refused/, `${name ?? '(no SNI)'}: TLS 1.3 served`);
    }
    // A reload under the default policy: TLS 1.2 for every certificate, without renegotiation.
    assert.ok(holder.reload(TLS_POLICY_DEFAULTS).ok);
    assert.equal(await served(port, 'imap.example.org', { maxVersion: 'TLSv1.2' }), await fingerprintOf(b));
    const renegotiated = await new Promise<string>((resolve) => {
      const socket = connect({ host: '127.0.0.1', port, rejectUnauthorized: false, servername: 'imap.example.org', maxVersion: 'TLSv1.2' }, () => {
        if (!socket.renegotiate({ rejectUnauthorized: false }, (error) => resolve(error === null ? 'renegotiated' : String((error as NodeJS.ErrnoException).code)))) resolve('not started');
      });
      socket.on('error', (error: NodeJS.ErrnoException) => resolve(error.code ?? error.message));
      socket.on('end', () => resolve('closed'));
    });
    assert.notEqual(renegotiated, 'renegotiated');
  } finally {
    server.close();
  }
});

test('a reload takes every re-read file or none: one that cannot be used keeps all in force, under the new policy', async () => {
  const live = [0, 1].map((i) => ({ cert: join(dir, `live${i}.crt`), key: join(dir, `live${i}.key`) }));
  const [l0, l1] = live as [Pair, Pair];
  for (const [from, to] of [[a, l0], [b, l1]] as const) {
    await copyFile(from.cert, to.cert);
    await copyFile(from.key, to.key);
  }
  const holder = new TlsContextHolder(live);
  const { server, port } = await wrapping(() => holder);
  try {
    assert.equal(await served(port, 'imap.example.org'), await fingerprintOf(b));
    // The second renewed (another certificate for its names), the first broken.
    const renewedB = await makeCert('b2', '/CN=b2', 'DNS:imap.example.org,DNS:*.example.net');
    await copyFile(renewedB.cert, l1.cert);
    await copyFile(renewedB.key, l1.key);
    await writeFile(l0.cert, 'not a certificate\n');
    const strict: TlsPolicy = { ...TLS_POLICY_DEFAULTS, minVersion: 'TLSv1.3' };
    const refused = holder.reload(strict);
    assert.ok(!refused.ok);
    assert.ok(refused.error instanceof TlsFilesError && refused.error.configKey === 'certificates[0].cert', String(refused.error.message));
    assert.match(refused.error.message, /not a PEM certificate.*; the certificates in force stay, with the new TLS policy$/);
    assert.equal(await served(port, 'imap.example.org'), await fingerprintOf(b), 'the second is not taken either');
    assert.equal(await served(port, undefined), await fingerprintOf(a));
    assert.match(await served(port, 'imap.example.org', { maxVersion: 'TLSv1.2' }), /^refused/, 'the new policy applies to every certificate kept');
    // The first repaired: both taken.
    await copyFile(a.cert, l0.cert);
    const taken = holder.reload(strict);
    assert.ok(taken.ok);
    assert.deepEqual(taken.certificates.map((x) => x.file), [l0.cert, l1.cert]);
    assert.equal(await served(port, 'imap.example.org'), await fingerprintOf(renewedB));
    // Other files named: replacedBy, all or nothing too.
    assert.throws(() => holder.replacedBy([a, { cert: join(dir, 'gone.crt'), key: b.key }], strict), (error: unknown) => error instanceof MailfrontError && /gone\.crt.*ENOENT; the certificates in force stay$/.test(error.message));
    assert.equal(await served(port, 'imap.example.org'), await fingerprintOf(renewedB));
    assert.ok(holder.reads(live) && !holder.reads([l0]) && !holder.reads(l0) && !holder.reads([l1, l0]));
  } finally {
    server.close();
  }
});
