// Certificate checks that Node reports without a name of its own (code 'UNSPECIFIED': a SHA-1
// signature, a leaf key too weak, an unhandled critical extension) fail a backend login as TLS
// failures (kind backend-login), through implicit TLS and through STARTTLS, like an untrusted
// certificate; they were taken for an outage (kind connect) and held for failover.hold_ms.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { once } from 'node:events';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import type { AddressInfo, Server, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TLSSocket } from 'node:tls';
import { after, before, test } from 'node:test';
import { connectionFailureKind, dialSlot, loginToBackend } from '../../src/backend/connect.js';
import type { BackendConfig } from '../../src/config/schema.js';
import { MailfrontError } from '../../src/errors.js';
import { ImapBackendLoginMachine } from '../../src/protocol/imap/backend.js';
import type { Slot } from '../../src/routing/storemap.js';

let dir: string;
let caFile: string;
/** name → PEM certificate and key of a leaf for localhost signed by the test CA. */
const leaves = new Map<string, { cert: string; key: string }>();

const openssl = (...args: string[]): void => void execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });

/** A leaf for localhost / 127.0.0.1 signed by the CA with `digest`, its key from `keyArgs`, plus `extra` extension lines. */
function leaf(name: string, digest: string, keyArgs: string[], extra: string[] = []): void {
  openssl('req', '-new', ...keyArgs, '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', '/CN=localhost');
  writeFileSync(join(dir, `${name}.ext`), ['basicConstraints = critical, CA:FALSE', 'extendedKeyUsage = serverAuth', 'subjectAltName = DNS:localhost, IP:127.0.0.1', ...extra, ''].join('\n'));
  openssl('x509', '-req', '-in', `${name}.csr`, '-CA', 'ca.crt', '-CAkey', 'ca.key', '-set_serial', String(leaves.size + 2), '-days', '30', `-${digest}`, '-extfile', `${name}.ext`, '-out', `${name}.crt`);
  leaves.set(name, { cert: readFileSync(join(dir, `${name}.crt`), 'utf8'), key: readFileSync(join(dir, `${name}.key`), 'utf8') });
}

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'mailfront-tls-failures-'));
  caFile = join(dir, 'ca.crt');
  openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '30', '-sha256', '-subj', '/CN=mailfront test CA', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign');
  leaf('good', 'sha256', ['-newkey', 'rsa:2048']);
  leaf('sha1-signed', 'sha1', ['-newkey', 'rsa:2048']);
  leaf('critical-extension', 'sha256', ['-newkey', 'rsa:2048'], ['1.2.3.4.5 = critical, ASN1:UTF8String:unknown']);
  leaf('768-bit-key', 'sha256', ['-newkey', 'rsa:768']);
});

after(() => {
  rmSync(dir, { recursive: true, force: true });
});

function backendConfig(tls: BackendConfig['tls']): BackendConfig {
  return { loginMode: 'replay', masterUserSeparator: '*', tls, caFile, tlsServername: 'localhost', forwardClientAddress: false, connectTimeoutMs: 2_000, loginTimeoutMs: 2_000, proxyProtocol: 'none' } as BackendConfig;
}

/** A backend on loopback with the leaf `name`: implicit TLS, or IMAP STARTTLS. The low security level lets it offer the weak ones. */
async function tlsBackend(name: string, mode: 'implicit' | 'starttls'): Promise<{ server: Server; slot: Slot }> {
  const { cert, key } = leaves.get(name)!;
  const serve = (socket: Socket): void => {
    const secure = new TLSSocket(socket, { isServer: true, cert, key, ciphers: 'DEFAULT@SECLEVEL=0' });
    secure.on('error', () => undefined);
    secure.write('* OK [CAPABILITY IMAP4rev1] ready\r\n');
    // Every command is taken: the login completes.
    secure.on('data', (data) => {
      for (const line of data.toString('latin1').split('\r\n')) {
        const [tag, command] = line.split(' ');
        if (command?.toUpperCase() === 'CAPABILITY') secure.write('* CAPABILITY IMAP4rev1\r\n');
        if (tag) secure.write(`${tag} OK done\r\n`);
      }
    });
  };
  const server = createServer((socket) => {
    socket.on('error', () => undefined);
    if (mode === 'implicit') return serve(socket);
    socket.write('* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n');
    socket.once('data', (data) => {
      const starttls = /^(\S+) STARTTLS\r\n/.exec(data.toString('latin1'));
      if (starttls === null) return void socket.end();
      socket.write(`${starttls[1]} OK Begin TLS\r\n`);
      serve(socket);
    });
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  return { server, slot: { name: 's1', store: 'st', host: '127.0.0.1', imapPort: port, imapsPort: port, pop3Port: port, sievePort: port } as unknown as Slot };
}

/** How a login to the backend with the leaf `name` fails, or 'ok'. */
async function outcome(name: string, mode: 'implicit' | 'starttls'): Promise<string> {
  const { server, slot } = await tlsBackend(name, mode);
  try {
    const config = backendConfig(mode);
    const socket = await dialSlot(slot, 'imap', config, new AbortController().signal);
    const machine = new ImapBackendLoginMachine({ mode: 'replay', user: 'tls-user', password: 'Tls-password-7e7e', starttls: mode === 'starttls' });
    const session = await loginToBackend(socket, slot, machine, config, new AbortController().signal);
    session.socket.destroy();
    return 'ok';
  } catch (error) {
    assert.ok(error instanceof MailfrontError, String(error));
    return `${error.kind}: ${error.message}`;
  } finally {
    server.close();
  }
}

for (const mode of ['implicit', 'starttls'] as const) {
  test(`backend tls ${mode}: a SHA-1 signature, a 768-bit key or an unhandled critical extension in the certificate is a TLS failure (backend-login), not an outage`, async () => {
    assert.equal(await outcome('good', mode), 'ok');
    assert.match(await outcome('sha1-signed', mode), /^backend-login: .*digest algorithm too weak/);
    assert.match(await outcome('768-bit-key', mode), /^backend-login: .*key too weak/);
    assert.match(await outcome('critical-extension', mode), /^backend-login: .*critical extension/);
  });
}

test('connectionFailureKind: UNSPECIFIED and EPROTO are TLS failures; during a handshake any code but a close, reset or timeout is', () => {
  const kind = (code: string | undefined, handshake = false): string => connectionFailureKind(Object.assign(new Error('x'), code === undefined ? {} : { code }), handshake);
  assert.equal(kind('UNSPECIFIED'), 'backend-login');
  assert.equal(kind('EPROTO'), 'backend-login');
  assert.equal(kind('SOME_NEW_CODE', true), 'backend-login');
  assert.equal(kind(undefined, true), 'backend-login');
  assert.equal(kind('SOME_NEW_CODE'), 'connect');
  for (const code of ['ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ECONNREFUSED', 'ERR_SSL_UNEXPECTED_EOF_WHILE_READING']) assert.equal(kind(code, true), 'connect', code);
});
