/**
 * The identity an LDAP server's certificate must show is the URL's host (RFC 4513 §3.1.3, RFC 6125),
 * an IP address included, over StartTLS as over ldaps:// (openLdapClient in src/auth/ldap.ts).
 * StartTLS wraps the socket already open, and node, given neither host nor servername, checked
 * the certificate against 'localhost': one naming only localhost was taken for ldap://127.0.0.1
 * (the service and users' passwords then went to whoever held it), and one naming 127.0.0.1 was
 * refused. An IPv6 literal's brackets ('[::1]') are no part of the name either.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { TLSSocket, createServer as createTlsServer } from 'node:tls';
import { openLdapClient } from '../../src/auth/ldap.js';

let dir: string;
const certs = new Map<string, { cert: Buffer; key: Buffer }>();

/** A self-signed certificate whose only name is `san` (e.g. DNS:localhost, IP:127.0.0.1). */
function certNaming(san: string): { cert: Buffer; key: Buffer } {
  const base = join(dir, san.replace(/[^a-z0-9]/gi, '_'));
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1', '-subj', '/CN=ldap test', '-addext', `subjectAltName=${san}`, '-keyout', `${base}.key`, '-out', `${base}.crt`], { stdio: 'ignore' });
  return { cert: readFileSync(`${base}.crt`), key: readFileSync(`${base}.key`) };
}

before(() => {
  dir = mkdtempSync(join(tmpdir(), 'mailfront-ldap-tls-'));
  for (const san of ['DNS:localhost', 'IP:127.0.0.1', 'IP:::1']) certs.set(san, certNaming(san));
});

after(() => rmSync(dir, { recursive: true, force: true }));

/** One BER TLV of short length. */
function tlv(tag: number, ...parts: Buffer[]): Buffer {
  const body = Buffer.concat(parts);
  return Buffer.concat([Buffer.from([tag, body.length]), body]);
}

/** An LDAPResult of success for message `id`, of the protocol op `tag` (bind 0x61, extended 0x78). */
const success = (id: number, tag: number): Buffer => tlv(0x30, tlv(0x02, Buffer.from([id])), tlv(tag, tlv(0x0a, Buffer.from([0])), tlv(0x04), tlv(0x04)));

/** An LDAP server that answers binds and StartTLS with success, then speaks TLS with `identity`. */
function fakeLdap(identity: { cert: Buffer; key: Buffer }, secure: boolean): Server {
  const serve = (socket: Socket): void => {
    socket.on('error', () => undefined);
    const onData = (data: Buffer): void => {
      const id = data[4]!;
      const op = data[5];
      if (op === 0x60) socket.write(success(id, 0x61));
      else if (op === 0x77) {
        socket.write(success(id, 0x78));
        socket.removeListener('data', onData);
        serve(new TLSSocket(socket, { isServer: true, ...identity }));
      }
    };
    socket.on('data', onData);
  };
  return secure ? createTlsServer(identity, serve) : createServer(serve);
}

/** Whether a client of `scheme://host` (StartTLS for ldap://) trusting `identity`'s certificate binds to a server showing it. */
async function binds(identity: { cert: Buffer; key: Buffer }, scheme: 'ldap' | 'ldaps', host: string): Promise<true | string> {
  const server = fakeLdap(identity, scheme === 'ldaps');
  const address = host.startsWith('[') ? host.slice(1, -1) : host === 'localhost' ? '127.0.0.1' : host;
  await new Promise<void>((resolve) => server.listen(0, address, resolve));
  const { port } = server.address() as { port: number };
  try {
    const client = await openLdapClient(`${scheme}://${host}:${port}`, { tls: { ca: identity.cert }, starttls: scheme === 'ldap', operationTimeoutMs: 5_000, connectTimeoutMs: 5_000, autoRebind: false });
    await client.bind('cn=service,dc=example,dc=org', 'service-password-1');
    await client.unbind().catch(() => undefined);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code ?? (error as Error).message;
  } finally {
    server.close();
  }
}

test('StartTLS to an IP address checks the certificate against that address, not localhost', async () => {
  assert.equal(await binds(certs.get('DNS:localhost')!, 'ldap', '127.0.0.1'), 'ERR_TLS_CERT_ALTNAME_INVALID', 'a certificate naming only localhost, for ldap://127.0.0.1');
  assert.equal(await binds(certs.get('IP:127.0.0.1')!, 'ldap', '127.0.0.1'), true, 'a certificate naming 127.0.0.1');
});

test('StartTLS and ldaps:// to an IPv6 literal check its address, without brackets', async () => {
  assert.equal(await binds(certs.get('IP:::1')!, 'ldap', '[::1]'), true, 'StartTLS, a certificate naming ::1');
  assert.equal(await binds(certs.get('IP:::1')!, 'ldaps', '[::1]'), true, 'ldaps://, a certificate naming ::1');
  assert.equal(await binds(certs.get('DNS:localhost')!, 'ldap', '[::1]'), 'ERR_TLS_CERT_ALTNAME_INVALID', 'StartTLS, a certificate naming only localhost');
});

test('a host name is checked as before, over StartTLS and ldaps://', async () => {
  assert.equal(await binds(certs.get('DNS:localhost')!, 'ldap', 'localhost'), true);
  assert.equal(await binds(certs.get('DNS:localhost')!, 'ldaps', 'localhost'), true);
  assert.equal(await binds(certs.get('IP:127.0.0.1')!, 'ldaps', '127.0.0.1'), true);
  assert.equal(await binds(certs.get('DNS:localhost')!, 'ldaps', '127.0.0.1'), 'ERR_TLS_CERT_ALTNAME_INVALID');
});
