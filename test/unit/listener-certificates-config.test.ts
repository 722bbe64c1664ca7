// A listener's `certificates:` list as the config reader and `mailfront check-config` take it:
// relative files resolved, `certificate` and `certificates` not both, never an empty list; and
// check-config names the entry (and the file of the pair) at fault, as serve would refuse it.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { ConfigError, loadConfig } from '../../src/config/load.js';
import { run as runCommand, tmpDir } from '../integration/servers/index.js';
import { ONE_SLOT_STORE_MAP } from './serve-process.js';

const CLI = join(dirname(fileURLToPath(import.meta.url)), '../../src/cli/main.js');
const dir = tmpDir('listener-certificates');

const REST = `directory: { urls: [ldap://127.0.0.1], bind_dn: cn=x, bind_password: x, base_dn: dc=x }\nstore_map: { file: stores.yaml, watch: false }\n`;

/** A config whose one listener has `certificateYaml` (the keys after `tls: implicit, `). */
function configWith(name: string, certificateYaml: string): string {
  const file = join(dir.path, `${name}.yaml`);
  writeFileSync(file, `listeners:\n  - { name: imaps, protocol: imap, host: 127.0.0.1, port: 1993, tls: implicit, ${certificateYaml} }\n${REST}`);
  return file;
}

function issuesOf(file: string): ReadonlyArray<{ path: string; expected: string }> {
  try {
    loadConfig(file);
  } catch (error) {
    assert.ok(error instanceof ConfigError, String(error));
    return error.issues;
  }
  return [];
}

function checkConfig(file: string): Promise<{ code: number; stderr: string; stdout: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, 'check-config', file], { timeout: 30_000 }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : -1, stdout, stderr });
    });
  });
}

async function selfSigned(name: string, san: string): Promise<void> {
  await runCommand('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', join(dir.path, `${name}.key`), '-out', join(dir.path, `${name}.crt`), '-days', '30', '-subj', `/CN=${name}`, '-addext', `subjectAltName=${san}`]);
}

before(async () => {
  writeFileSync(join(dir.path, 'stores.yaml'), ONE_SLOT_STORE_MAP);
  await Promise.all([selfSigned('a', 'DNS:mail.example.com'), selfSigned('b', 'DNS:imap.example.org'), selfSigned('a2', 'DNS:mail.example.com')]);
});

after(() => dir.remove());

test('certificates: a list of {cert, key}, files resolved against the config\'s folder', () => {
  const config = loadConfig(configWith('list', 'certificates: [{ cert: a.crt, key: a.key }, { cert: b.crt, key: b.key }]'));
  assert.deepEqual(config.listeners[0]?.certificates, [
    { cert: join(dir.path, 'a.crt'), key: join(dir.path, 'a.key') },
    { cert: join(dir.path, 'b.crt'), key: join(dir.path, 'b.key') },
  ]);
  assert.equal(config.listeners[0]?.certificate, undefined);
  // certificate: keeps working as it did.
  assert.deepEqual(loadConfig(configWith('one', 'certificate: { cert: a.crt, key: a.key }')).listeners[0]?.certificate, { cert: join(dir.path, 'a.crt'), key: join(dir.path, 'a.key') });
});

test('certificate and certificates together, an empty list, a list of something else, an entry without its key: each named by its path', () => {
  assert.deepEqual(issuesOf(configWith('both', 'certificate: { cert: a.crt, key: a.key }, certificates: [{ cert: b.crt, key: b.key }]')).map((i) => [i.path, i.expected]), [
    ['listeners[0].certificates', 'either certificate (one) or certificates (a list), not both'],
  ]);
  assert.deepEqual(issuesOf(configWith('empty', 'certificates: []')).map((i) => i.path), ['listeners[0].certificates']);
  assert.deepEqual(issuesOf(configWith('mapping', 'certificates: { cert: a.crt, key: a.key }')).map((i) => i.path), ['listeners[0].certificates']);
  assert.deepEqual(issuesOf(configWith('entry', 'certificates: [{ cert: a.crt, key: a.key }, { cert: b.crt }, { cert: b.crt, key: b.key, colour: 1 }]')).map((i) => i.path), ['listeners[0].certificates[1].key', 'listeners[0].certificates[2].colour']);
  // Neither, on a TLS listener: the message names both ways.
  const none = issuesOf(configWith('none', 'plaintext_without_tls: false'));
  assert.deepEqual(none.map((i) => [i.path, i.expected]), [['listeners[0].certificate', 'cert and key files (tls is "implicit"), or certificates: a list of them']]);
});

test('check-config loads every certificate of the list and names the one at fault: a file, a pair, one no client would be given', async () => {
  const good = await checkConfig(configWith('check-good', 'certificates: [{ cert: a.crt, key: a.key }, { cert: b.crt, key: b.key }]'));
  assert.equal(good.code, 0, good.stderr);
  const missing = await checkConfig(configWith('check-missing', 'certificates: [{ cert: a.crt, key: a.key }, { cert: nope.crt, key: b.key }]'));
  assert.equal(missing.code, 1, missing.stdout);
  assert.ok(missing.stderr.includes(`listeners[0].certificates[1].cert: expected a readable file (${join(dir.path, 'nope.crt')}), found ENOENT`), missing.stderr);
  const mismatch = await checkConfig(configWith('check-mismatch', 'certificates: [{ cert: a.crt, key: a.key }, { cert: b.crt, key: a.key }]'));
  assert.equal(mismatch.code, 1, mismatch.stdout);
  assert.match(mismatch.stderr, /listeners\[0\]\.certificates\[1\]: expected PEM certificates, each with the key that belongs to it[^\n]*the key does not belong to the certificate/);
  const notPem = await checkConfig(configWith('check-not-pem', 'certificates: [{ cert: a.crt, key: a.key }, { cert: b.key, key: b.key }]'));
  assert.match(notPem.stderr, /listeners\[0\]\.certificates\[1\]\.cert: [^\n]*not a PEM certificate/);
  // A renewed certificate listed after the one it replaces would never be served.
  const shadowed = await checkConfig(configWith('check-shadowed', 'certificates: [{ cert: a.crt, key: a.key }, { cert: b.crt, key: b.key }, { cert: a2.crt, key: a2.key }]'));
  assert.equal(shadowed.code, 1, shadowed.stdout);
  assert.match(shadowed.stderr, /listeners\[0\]\.certificates\[2\]: [^\n]*no client would be given it: every name it is for \(mail\.example\.com\) is served by a certificate listed before it/);
});
