// A throwaway test CA and a server certificate for localhost / 127.0.0.1, made with the openssl CLI.
// Generated once per process and copied into each caller's directory.
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { run } from './process.js';

export interface TestCerts {
  /** PEM of the test CA that signed the server certificate. */
  readonly caFile: string;
  /** PEM server certificate, CN=localhost, subjectAltName DNS:localhost, IP:127.0.0.1. */
  readonly certFile: string;
  /** PEM private key of the server certificate (unencrypted). */
  readonly keyFile: string;
}

export interface TestCertsPem {
  readonly ca: string;
  readonly cert: string;
  readonly key: string;
}

let generated: Promise<TestCertsPem> | undefined;

async function generate(): Promise<TestCertsPem> {
  const dir = await mkdtemp(join(tmpdir(), 'mailfront-certs-'));
  try {
    const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
    await run('openssl', [
      'req', '-x509', ...ec, '-keyout', join(dir, 'ca.key'), '-out', join(dir, 'ca.crt'), '-days', '3650',
      '-subj', '/O=mailfront tests/CN=mailfront test CA',
      '-addext', 'basicConstraints=critical,CA:TRUE',
      '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
    ]);
    await run('openssl', [
      'req', '-new', ...ec, '-keyout', join(dir, 'server.key'), '-out', join(dir, 'server.csr'),
      '-subj', '/O=mailfront tests/CN=localhost',
    ]);
    await writeFile(
      join(dir, 'server.ext'),
      [
        'basicConstraints = critical, CA:FALSE',
        'keyUsage = critical, digitalSignature, keyAgreement',
        'extendedKeyUsage = serverAuth',
        'subjectAltName = DNS:localhost, IP:127.0.0.1',
        'subjectKeyIdentifier = hash',
        'authorityKeyIdentifier = keyid',
        '',
      ].join('\n'),
    );
    await run('openssl', [
      'x509', '-req', '-in', join(dir, 'server.csr'), '-CA', join(dir, 'ca.crt'), '-CAkey', join(dir, 'ca.key'),
      '-set_serial', `0x${Date.now().toString(16)}`, '-days', '3650', '-sha256',
      '-extfile', join(dir, 'server.ext'), '-out', join(dir, 'server.crt'),
    ]);
    const [ca, cert, key] = await Promise.all(
      ['ca.crt', 'server.crt', 'server.key'].map((name) => readFile(join(dir, name), 'utf8')),
    );
    return { ca: ca ?? '', cert: cert ?? '', key: key ?? '' };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** The PEM texts of the (per-process) test CA, server certificate and key. */
export function testCertsPem(): Promise<TestCertsPem> {
  generated ??= generate().catch((err: unknown) => {
    generated = undefined;
    throw err;
  });
  return generated;
}

/** Writes ca.crt, server.crt and server.key into `dir` and returns their paths. */
export async function makeCerts(dir: string): Promise<TestCerts> {
  const pem = await testCertsPem();
  const certs: TestCerts = {
    caFile: join(dir, 'ca.crt'),
    certFile: join(dir, 'server.crt'),
    keyFile: join(dir, 'server.key'),
  };
  await writeFile(certs.caFile, pem.ca, { mode: 0o644 });
  await writeFile(certs.certFile, pem.cert, { mode: 0o644 });
  await writeFile(certs.keyFile, pem.key, { mode: 0o600 });
  return certs;
}
