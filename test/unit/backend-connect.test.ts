// Dialling a slot over TLS against fake backends on loopback: which failures are an outage to wait
// for (kind connect) and which a TLS failure that waiting will not fix (kind backend-login); and
// when a close counts as an answer to the login.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { TLSSocket } from 'node:tls';
import type { AddressInfo, Server, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { connectionFailureKind, dialSlot, loginToBackend, probeSlot } from '../../src/backend/connect.js';
import type { BackendConfig } from '../../src/config/schema.js';
import { ImapBackendLoginMachine } from '../../src/protocol/imap/backend.js';
import { ManageSieveBackendLogin } from '../../src/protocol/managesieve/backend.js';
import type { Slot } from '../../src/routing/storemap.js';
import { testCertsPem } from '../integration/servers/certs.js';
import { mailfrontFailure as failureOf } from '../mailfront-failure.js';

let dir: string;
let caFile: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'mailfront-connect-'));
  caFile = join(dir, 'ca.crt');
  await writeFile(caFile, (await testCertsPem()).ca);
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

function backendConfig(tls: BackendConfig['tls'], extra: Partial<BackendConfig> = {}): BackendConfig {
  return { loginMode: 'replay', masterUserSeparator: '*', tls, caFile, tlsServername: 'localhost', forwardClientAddress: false, connectTimeoutMs: 2_000, loginTimeoutMs: 2_000, proxyProtocol: 'none', ...extra } as BackendConfig;
}

/** A fake backend on loopback; `onConnection` plays it. */
async function fakeBackend(onConnection: (socket: Socket) => void): Promise<{ server: Server; slot: Slot }> {
  const server = createServer((socket) => {
    socket.on('error', () => undefined);
    onConnection(socket);
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  const slot = { name: 's1', store: 'st', host: '127.0.0.1', imapPort: port, imapsPort: port, pop3Port: port, sievePort: port } as unknown as Slot;
  return { server, slot };
}


/** Implicit TLS: the backend reads the ClientHello, then `end`s (FIN) or resets the connection. */
for (const how of ['closes', 'resets'] as const) {
  test(`a backend that ${how} the connection during the implicit-TLS handshake is an outage (connect), not a TLS failure`, async () => {
    const { server, slot } = await fakeBackend((socket) => socket.once('data', () => (how === 'closes' ? socket.end() : socket.resetAndDestroy())));
    try {
      const error = await failureOf(dialSlot(slot, 'imap', backendConfig('implicit'), new AbortController().signal));
      assert.equal(error.kind, 'connect', `${error.code}: ${error.message}`);
    } finally {
      server.close();
    }
  });
}

test('a backend that resets the connection during the handshake after STARTTLS is an outage (connect)', async () => {
  const { server, slot } = await fakeBackend((socket) => {
    socket.write('* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n');
    socket.on('data', (data) => {
      const starttls = /^(\S+) STARTTLS\r\n/.exec(data.toString('latin1'));
      if (starttls !== null) socket.write(`${starttls[1]} OK begin TLS\r\n`);
      else socket.resetAndDestroy(); // the ClientHello
    });
  });
  try {
    const config = backendConfig('starttls');
    const socket = await dialSlot(slot, 'imap', config, new AbortController().signal);
    const machine = new ImapBackendLoginMachine({ mode: 'replay', user: 'u', password: 'p', starttls: true });
    const error = await failureOf(loginToBackend(socket, slot, machine, config, new AbortController().signal));
    assert.equal(error.kind, 'connect', `${error.code}: ${error.message}`);
  } finally {
    server.close();
  }
});

test('a certificate the CA did not sign, or one for another name, is a TLS failure (backend-login)', async () => {
  const { cert, key } = await testCertsPem();
  const { TLSSocket } = await import('node:tls');
  const { server, slot } = await fakeBackend((socket) => {
    const secure = new TLSSocket(socket, { isServer: true, cert, key });
    secure.on('error', () => undefined);
  });
  try {
    const otherCa = join(dir, 'other-ca.crt');
    // The server's own certificate as the only CA: it is not a CA, so nothing verifies.
    await writeFile(otherCa, cert);
    const untrusted = await failureOf(dialSlot(slot, 'imap', backendConfig('implicit', { caFile: otherCa }), new AbortController().signal));
    assert.equal(untrusted.kind, 'backend-login', `${untrusted.code}: ${untrusted.message}`);
    const misnamed = await failureOf(dialSlot(slot, 'imap', backendConfig('implicit', { tlsServername: 'imap.example.org' }), new AbortController().signal));
    assert.equal(misnamed.kind, 'backend-login', `${misnamed.code}: ${misnamed.message}`);
  } finally {
    server.close();
  }
});

test('connectionFailureKind: certificate and negotiation codes are backend-login; resets, closes and timeouts are connect, whatever the message says', () => {
  const kind = (code: string, message = 'x'): string => connectionFailureKind(Object.assign(new Error(message), { code }));
  for (const code of ['CERT_HAS_EXPIRED', 'CERT_NOT_YET_VALID', 'UNABLE_TO_VERIFY_LEAF_SIGNATURE', 'UNABLE_TO_GET_ISSUER_CERT_LOCALLY', 'DEPTH_ZERO_SELF_SIGNED_CERT', 'SELF_SIGNED_CERT_IN_CHAIN', 'ERROR_IN_CERT_NOT_AFTER_FIELD', 'ERR_TLS_CERT_ALTNAME_INVALID', 'ERR_SSL_WRONG_VERSION_NUMBER', 'ERR_SSL_SSLV3_ALERT_HANDSHAKE_FAILURE', 'HOSTNAME_MISMATCH', 'INVALID_CA']) {
    assert.equal(kind(code), 'backend-login', code);
  }
  for (const code of ['ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ECONNREFUSED', 'ERR_SSL_UNEXPECTED_EOF_WHILE_READING']) {
    assert.equal(kind(code, 'Client network socket disconnected before secure TLS connection was established'), 'connect', code);
  }
});

/** A backend that offers STARTTLS the protocol's way and, once asked, does TLS with the test certificate. */
const STARTTLS_BACKENDS = {
  imap: { greeting: '* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n', command: /^(\S+) STARTTLS\r\n/, answer: (m: RegExpExecArray) => `${m[1]} OK Begin TLS\r\n` },
  pop3: { greeting: '+OK ready\r\n', command: /^STLS\r\n/, answer: () => '+OK Begin TLS\r\n' },
  managesieve: { greeting: '"IMPLEMENTATION" "fake"\r\n"SIEVE" "fileinto"\r\n"STARTTLS"\r\nOK "ready"\r\n', command: /^STARTTLS\r\n/, answer: () => 'OK "Begin TLS"\r\n' },
} as const;

for (const protocol of ['imap', 'pop3', 'managesieve'] as const) {
  test(`the health probe of a ${protocol} slot with tls starttls does STARTTLS and a verified handshake: a certificate for another name is down`, async () => {
    const { cert, key } = await testCertsPem();
    const backend = STARTTLS_BACKENDS[protocol];
    let asked = 0;
    const { server, slot } = await fakeBackend((socket) => {
      socket.write(backend.greeting);
      socket.once('data', (data) => {
        const command = backend.command.exec(data.toString('latin1'));
        if (command === null) return void socket.end();
        asked++;
        socket.write(backend.answer(command));
        const secure = new TLSSocket(socket, { isServer: true, cert, key });
        secure.on('error', () => undefined);
      });
    });
    try {
      // The certificate names localhost: good for a slot known as localhost, not for another name.
      await probeSlot(slot, protocol, backendConfig('starttls'), AbortSignal.timeout(2_000));
      assert.equal(asked, 1, 'the probe asked for STARTTLS');
      await assert.rejects(probeSlot(slot, protocol, backendConfig('starttls', { tlsServername: 'imap.example.org' }), AbortSignal.timeout(2_000)), /STARTTLS handshake failed: .*imap\.example\.org/);
    } finally {
      server.close();
    }
  });
}

test('a ManageSieve backend that closes before it answers XCLIENT closed before the login (BACKEND_CLOSED), not in answer to it', async () => {
  // A Dovecot restart killing managesieve-login between XCLIENT and AUTHENTICATE: an unreachable
  // slot, held for failover.hold_ms and retried, not BACKEND_CLOSED_AFTER_LOGIN (one more try only).
  const received: string[] = [];
  const { server, slot } = await fakeBackend((socket) => {
    socket.write('"IMPLEMENTATION" "Dovecot Pigeonhole"\r\n"SASL" "PLAIN"\r\n"XCLIENT"\r\nOK "ready"\r\n');
    socket.once('data', (data) => {
      received.push(data.toString('latin1'));
      socket.destroy();
    });
  });
  try {
    const config = backendConfig('none');
    const machine = new ManageSieveBackendLogin({ mode: 'replay', user: 'ann', password: 'pw', starttls: false, forward: { ip: '192.0.2.7', port: 4000, sessionId: 'abc' } });
    const socket = await dialSlot(slot, 'managesieve', config, AbortSignal.timeout(2_000));
    const failure = await failureOf(loginToBackend(socket, slot, machine, config, AbortSignal.timeout(2_000)));
    assert.deepEqual(received, ['XCLIENT ADDR=192.0.2.7 PORT=4000 SESSION=abc\r\n']);
    assert.equal(failure.code, 'BACKEND_CLOSED', failure.message);
    assert.equal(failure.kind, 'connect');
  } finally {
    server.close();
  }
});

test('the health probe of a slot with tls none reads the greeting only', async () => {
  const received: string[] = [];
  const { server, slot } = await fakeBackend((socket) => {
    socket.write(STARTTLS_BACKENDS.imap.greeting);
    socket.on('data', (data) => received.push(data.toString('latin1')));
  });
  try {
    await probeSlot(slot, 'imap', backendConfig('none'), AbortSignal.timeout(2_000));
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.deepEqual(received, []);
  } finally {
    server.close();
  }
});

test('the health probe of a STARTTLS slot that refuses STARTTLS is down', async () => {
  const { server, slot } = await fakeBackend((socket) => {
    socket.write('+OK ready\r\n');
    socket.once('data', () => socket.write('-ERR not here\r\n'));
  });
  try {
    await assert.rejects(probeSlot(slot, 'pop3', backendConfig('starttls'), AbortSignal.timeout(2_000)), /STLS refused: -ERR not here/);
  } finally {
    server.close();
  }
});
