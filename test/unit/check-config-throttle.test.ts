// `mailfront check-config` reads throttle.redis's TLS files (ca_file, cert_file, key_file) as
// the Redis connection would, and names the key of one that cannot be used; it connects to nothing.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { makeCerts } from '../integration/servers/index.js';
import type { TestCerts } from '../integration/servers/index.js';

const CLI = join(dirname(fileURLToPath(import.meta.url)), '../../src/cli/main.js');

let dir: string;
let certs: TestCerts;
/** A key that belongs to no certificate here. */
let strangerKey: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'mf-check-config-throttle-'));
  certs = await makeCerts(dir);
  strangerKey = join(dir, 'stranger.key');
  await writeFile(strangerKey, generateKeyPairSync('ec', { namedCurve: 'prime256v1' }).privateKey.export({ type: 'pkcs8', format: 'pem' }));
  await writeFile(join(dir, 'stores.yaml'), 'stores:\n  store1:\n    current_master: slot1\n    slots:\n      slot1: { host: 127.0.0.1, imap_port: 1430 }\n');
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Writes a config whose throttle.redis has these TLS files and runs check-config on it. */
async function checkConfig(name: string, files: { ca?: string; cert?: string; key?: string }): Promise<{ code: number; stdout: string; stderr: string }> {
  const tls = [files.ca && `ca_file: ${JSON.stringify(files.ca)}`, files.cert && `cert_file: ${JSON.stringify(files.cert)}`, files.key && `key_file: ${JSON.stringify(files.key)}`].filter(Boolean).join(', ');
  const file = join(dir, `${name}.yaml`);
  await writeFile(
    file,
    [
      'listeners:',
      `  - { name: imap, protocol: imap, host: 127.0.0.1, port: 1143, tls: starttls, certificate: { cert: ${JSON.stringify(certs.certFile)}, key: ${JSON.stringify(certs.keyFile)} } }`,
      'directory: { urls: [ldap://127.0.0.1], bind_dn: cn=x, bind_password: x, base_dn: dc=x }',
      'store_map: { file: stores.yaml, watch: false }',
      // Port 9 (discard): nothing must connect there.
      `throttle: { redis: { url: "rediss://127.0.0.1:9", ${tls} } }`,
      '',
    ].join('\n'),
  );
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, 'check-config', file], { timeout: 30_000 }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : -1, stdout, stderr });
    });
  });
}

test('check-config reads throttle.redis\'s CA, client certificate and key: usable ones pass', async () => {
  const result = await checkConfig('good', { ca: certs.caFile, cert: certs.certFile, key: certs.keyFile });
  assert.equal(result.code, 0, result.stderr);
  assert.match(result.stdout, /: OK \(/);
});

test('check-config names throttle.redis\'s TLS file that cannot be read, and exits 1', async () => {
  const missing = join(dir, 'no-such-redis-ca.pem');
  const result = await checkConfig('missing', { ca: missing, cert: certs.certFile, key: certs.keyFile });
  assert.equal(result.code, 1, result.stdout);
  assert.ok(result.stderr.includes(`throttle.redis.ca_file: expected a readable file (${missing}), found ENOENT`), result.stderr);
});

test('check-config refuses a client key that is not the certificate\'s, and a CA file without a certificate', async () => {
  const mismatch = await checkConfig('mismatch', { cert: certs.certFile, key: strangerKey });
  assert.equal(mismatch.code, 1, mismatch.stdout);
  assert.match(mismatch.stderr, /throttle\.redis: expected a PEM client certificate \(cert_file\) and the key that belongs to it \(key_file\), found [^\n]*key values mismatch/);
  const notCa = await checkConfig('not-ca', { ca: strangerKey });
  assert.equal(notCa.code, 1, notCa.stdout);
  assert.ok(notCa.stderr.includes(`throttle.redis.ca_file: expected PEM CA certificates (${strangerKey}), found `), notCa.stderr);
});
