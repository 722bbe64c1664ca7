// `mailfront check-config` run as the command it is: it must find what would stop `serve`,
// certificate and key files included, and exit non-zero then.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createServer as createNetServer } from 'node:net';
import type { AddressInfo } from 'node:net';
import { generateKeyPairSync } from 'node:crypto';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';
import { makeCerts } from '../integration/servers/index.js';
import type { TestCerts } from '../integration/servers/index.js';
import { folderWithStoreMap } from './serve-process.js';

const CLI = join(dirname(fileURLToPath(import.meta.url)), '../../src/cli/main.js');

let dir: string;
let certs: TestCerts;
/** A key that belongs to no certificate here. */
let strangerKey: string;

before(async () => {
  dir = await folderWithStoreMap('mf-check-config-');
  certs = await makeCerts(dir);
  strangerKey = join(dir, 'stranger.key');
  // Encoded by the key generation itself: an EC key object's export may deadlock on Node 20 (test/integration/oauth-idp.ts, makeKey()).
  await writeFile(strangerKey, generateKeyPairSync('ec', { namedCurve: 'prime256v1', publicKeyEncoding: { type: 'spki', format: 'pem' }, privateKeyEncoding: { type: 'pkcs8', format: 'pem' } }).privateKey);
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Writes a config with these listeners' certificates (and `extra` lines, a directory CA file say) and runs check-config on it. */
async function checkConfig(name: string, certificates: ReadonlyArray<{ cert: string; key: string }>, directoryExtra = '', storesFile = 'stores.yaml', sections = ''): Promise<{ code: number; stdout: string; stderr: string }> {
  const listeners = certificates.map((c, i) => `  - { name: imap${i}, protocol: imap, host: 127.0.0.1, port: ${1143 + i}, tls: starttls, certificate: { cert: ${JSON.stringify(c.cert)}, key: ${JSON.stringify(c.key)} } }`);
  const file = join(dir, `${name}.yaml`);
  await writeFile(file, `listeners:\n${listeners.join('\n')}\ndirectory: { urls: [ldap://127.0.0.1], bind_dn: cn=x, bind_password: x, base_dn: dc=x${directoryExtra} }\nstore_map: { file: ${storesFile}, watch: false }\n${sections}`);
  return run(file);
}

/** check-config on a config whose throttle.redis has these TLS files (it must connect to nothing: port 9). */
function checkRedisTls(name: string, files: { ca?: string; cert?: string; key?: string }): Promise<{ code: number; stdout: string; stderr: string }> {
  const tls = [files.ca && `ca_file: ${JSON.stringify(files.ca)}`, files.cert && `cert_file: ${JSON.stringify(files.cert)}`, files.key && `key_file: ${JSON.stringify(files.key)}`].filter(Boolean).join(', ');
  return checkConfig(name, [{ cert: certs.certFile, key: certs.keyFile }], '', 'stores.yaml', `throttle: { redis: { url: "rediss://127.0.0.1:9", ${tls} } }\n`);
}

test('check-config reads throttle.redis\'s CA, client certificate and key as the Redis connection would: usable ones pass', async () => {
  const result = await checkRedisTls('redis-good', { ca: certs.caFile, cert: certs.certFile, key: certs.keyFile });
  assert.equal(result.code, 0, result.stderr);
  assert.match(result.stdout, /: OK \(/);
});

test('check-config names throttle.redis\'s TLS file that cannot be read, and exits 1', async () => {
  const missing = join(dir, 'no-such-redis-ca.pem');
  const result = await checkRedisTls('redis-missing', { ca: missing, cert: certs.certFile, key: certs.keyFile });
  assert.equal(result.code, 1, result.stdout);
  assert.ok(result.stderr.includes(`throttle.redis.ca_file: expected a readable file (${missing}), found ENOENT`), result.stderr);
});

test('check-config refuses a Redis client key that is not the certificate\'s, and a Redis CA file without a certificate', async () => {
  const mismatch = await checkRedisTls('redis-mismatch', { cert: certs.certFile, key: strangerKey });
  assert.equal(mismatch.code, 1, mismatch.stdout);
  assert.match(mismatch.stderr, /throttle\.redis: expected a PEM client certificate \(cert_file\) and the key that belongs to it \(key_file\), found [^\n]*key values mismatch/);
  const notCa = await checkRedisTls('redis-not-ca', { ca: strangerKey });
  assert.equal(notCa.code, 1, notCa.stdout);
  assert.ok(notCa.stderr.includes(`throttle.redis.ca_file: expected PEM CA certificates (${strangerKey}), found `), notCa.stderr);
});

/** Runs check-config on `file`. */
function run(file: string): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, 'check-config', file], { timeout: 30_000 }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : -1, stdout, stderr });
    });
  });
}

test('check-config takes nat64_prefixes of /96 and names each entry that is not one, with what it expected', async () => {
  const certificates = [{ cert: certs.certFile, key: certs.keyFile }];
  const good = await checkConfig('nat64-good', certificates, '', 'stores.yaml', 'nat64_prefixes: [64:ff9b::/96, "2001:db8:46::/96"]\n');
  assert.equal(good.code, 0, good.stderr);
  const bad = await checkConfig('nat64-bad', certificates, '', 'stores.yaml', 'nat64_prefixes: [64:ff9b::/96, "64:ff9b:1::/48", 10.0.0.0/8, "64:ff9b::1/96"]\n');
  assert.equal(bad.code, 1, bad.stdout);
  const expected = 'expected an IPv6 /96 prefix without host bits whose last 32 bits are an IPv4 address (RFC 6052), such as 64:ff9b::/96 or 2001:db8:46::/96; only /96 is read';
  for (const [i, found] of [[1, '64:ff9b:1::/48'], [2, '10.0.0.0/8'], [3, '64:ff9b::1/96']] as const) assert.ok(bad.stderr.includes(`nat64_prefixes[${i}]: ${expected}, found "${found}"`), bad.stderr);
  assert.ok(!bad.stderr.includes('nat64_prefixes[0]'), bad.stderr);
});

test('check-config loads the listeners\' certificates and keys: usable ones pass', async () => {
  const result = await checkConfig('good', [{ cert: certs.certFile, key: certs.keyFile }]);
  assert.equal(result.code, 0, result.stderr);
  assert.match(result.stdout, /: OK \(1 listeners, 1 stores, 1 slots from /);
});

test('check-config names the listener and the file when a certificate or key is missing, and exits 1', async () => {
  const missing = join(dir, 'missing.crt');
  const result = await checkConfig('missing', [{ cert: certs.certFile, key: certs.keyFile }, { cert: missing, key: certs.keyFile }]);
  assert.equal(result.code, 1, result.stdout);
  assert.match(result.stderr, /^mailfront: invalid configuration\n/);
  assert.ok(result.stderr.includes(`listeners[1].certificate.cert: expected a readable file (${missing}), found ENOENT`), result.stderr);
  assert.ok(!result.stderr.includes('listeners[0]'), result.stderr);
});

test('check-config refuses a key that does not belong to its certificate, and a file that is not a certificate', async () => {
  const result = await checkConfig('mismatch', [{ cert: certs.certFile, key: strangerKey }, { cert: certs.keyFile, key: certs.keyFile }]);
  assert.equal(result.code, 1, result.stdout);
  assert.ok(result.stderr.includes(`listeners[0].certificate: expected a PEM certificate and the key that belongs to it, usable with the tls policy, found cannot use certificate ${certs.certFile} with key ${strangerKey}: `), result.stderr);
  assert.match(result.stderr, /listeners\[0\]\.certificate: [^\n]*the key does not belong to the certificate/);
  assert.ok(result.stderr.includes(`listeners[1].certificate: expected a PEM certificate and the key that belongs to it, usable with the tls policy, found cannot use certificate ${certs.keyFile} with key ${certs.keyFile}: not a PEM certificate`), result.stderr);
});

test('check-config names a CA file that cannot be read, in the config and in the store map, and exits 1', async () => {
  const good = [{ cert: certs.certFile, key: certs.keyFile }];
  const missing = join(dir, 'no-such-ca.pem');
  const directory = await checkConfig('directory-ca', good, `, ca_file: ${JSON.stringify(missing)}`);
  assert.equal(directory.code, 1, directory.stdout);
  assert.ok(directory.stderr.includes(`directory.ca_file: expected a readable file (${missing}), found ENOENT`), directory.stderr);
  await writeFile(join(dir, 'stores-ca.yaml'), `stores:\n  store1:\n    current_master: slot1\n    backend: { tls: implicit, ca_file: ${JSON.stringify(missing)} }\n    slots:\n      slot1: { host: 127.0.0.1, imaps_port: 1993 }\n`);
  const store = await checkConfig('store-ca', good, '', 'stores-ca.yaml');
  assert.equal(store.code, 1, store.stdout);
  assert.ok(store.stderr.includes(`stores.store1.backend.ca_file: expected a readable file (${missing}), found ENOENT`), store.stderr);
});

test('check-config refuses a CA file with no usable certificate (empty, garbage, cut short), as serve and a reload do', async () => {
  const good = [{ cert: certs.certFile, key: certs.keyFile }];
  const garbage = join(dir, 'garbage-ca.pem');
  await writeFile(garbage, 'not a certificate\n');
  const directory = await checkConfig('directory-garbage-ca', good, `, ca_file: ${JSON.stringify(garbage)}`);
  assert.equal(directory.code, 1, directory.stdout);
  assert.ok(directory.stderr.includes(`directory.ca_file: expected PEM CA certificates (${garbage}), found holds no PEM certificate`), directory.stderr);
  const cut = join(dir, 'cut-ca.pem');
  const pem = await readFile(certs.caFile, 'utf8');
  await writeFile(cut, pem.slice(0, pem.length / 2));
  await writeFile(join(dir, 'stores-cut-ca.yaml'), `stores:\n  store1:\n    current_master: slot1\n    backend: { tls: implicit, ca_file: ${JSON.stringify(cut)} }\n    slots:\n      slot1: { host: 127.0.0.1, imaps_port: 1993 }\n`);
  const store = await checkConfig('store-cut-ca', good, '', 'stores-cut-ca.yaml');
  assert.equal(store.code, 1, store.stdout);
  assert.ok(store.stderr.includes(`stores.store1.backend.ca_file: expected PEM CA certificates (${cut}), found ends inside a PEM certificate`), store.stderr);
});

/** The problem lines check-config printed (indented, one per problem). */
function problemLines(stderr: string): string[] {
  return stderr.split('\n').filter((l) => l.startsWith('  '));
}

test('check-config reads the store map even when a listener\'s file is missing: both files\' problems in one run', async () => {
  const missingCert = join(dir, 'gone.crt');
  const missingCa = join(dir, 'gone-ca.pem');
  await writeFile(join(dir, 'stores-gone-ca.yaml'), `stores:\n  store1:\n    current_master: slot1\n    backend: { tls: implicit, ca_file: ${JSON.stringify(missingCa)} }\n    slots:\n      slot1: { host: 127.0.0.1, imaps_port: 1993 }\n`);
  const result = await checkConfig('both-files', [{ cert: missingCert, key: certs.keyFile }], '', 'stores-gone-ca.yaml');
  assert.equal(result.code, 1, result.stdout);
  assert.deepEqual(problemLines(result.stderr), [
    `  listeners[0].certificate.cert: expected a readable file (${missingCert}), found ENOENT`,
    `  stores.store1.backend.ca_file: expected a readable file (${missingCa}), found ENOENT`,
  ]);
  assert.match(result.stderr, /^mailfront: invalid configuration\n\S+both-files\.yaml: 1 problem\n.*\n[^\n]*stores-gone-ca\.yaml: 1 problem\n/);
});

test('an LDAP store map\'s CA file that cannot be read is one problem under the key naming it (directory.ca_file when inherited), with the others', async () => {
  const missingCert = join(dir, 'gone-ldap.crt');
  const missingCa = join(dir, 'gone-ldap-ca.pem');
  // The store map's LDAP server is never asked (port 9): its CA file stops it before.
  const write = async (name: string, directoryCa: string, storeMapCa: string): Promise<string> => {
    const file = join(dir, `${name}.yaml`);
    await writeFile(file, `listeners:\n  - { name: imap, protocol: imap, host: 127.0.0.1, port: 1143, tls: starttls, certificate: { cert: ${JSON.stringify(missingCert)}, key: ${JSON.stringify(certs.keyFile)} } }\ndirectory: { urls: ["ldaps://127.0.0.1:9"], bind_dn: cn=x, bind_password: x, base_dn: dc=x${directoryCa} }\nstore_map: { ldap: { base_dn: "ou=stores,dc=x"${storeMapCa} } }\n`);
    return file;
  };
  const inherited = await run(await write('ldap-ca-inherited', `, ca_file: ${JSON.stringify(missingCa)}`, ''));
  assert.equal(inherited.code, 1, inherited.stdout);
  assert.deepEqual(problemLines(inherited.stderr), [
    `  listeners[0].certificate.cert: expected a readable file (${missingCert}), found ENOENT`,
    `  directory.ca_file: expected a readable file (${missingCa}), found ENOENT`,
  ]);
  const own = await run(await write('ldap-ca-own', '', `, ca_file: ${JSON.stringify(missingCa)}`));
  assert.equal(own.code, 1, own.stdout);
  assert.deepEqual(problemLines(own.stderr), [
    `  listeners[0].certificate.cert: expected a readable file (${missingCert}), found ENOENT`,
    `  store_map.ldap.ca_file: expected a readable file (${missingCa}), found ENOENT`,
  ]);
});

test('check-config names a missing certificate file once, however many listeners name it', async () => {
  const missing = join(dir, 'shared-missing.crt');
  const result = await checkConfig('shared-missing', [{ cert: missing, key: certs.keyFile }, { cert: missing, key: certs.keyFile }]);
  assert.equal(result.code, 1, result.stdout);
  assert.deepEqual(problemLines(result.stderr), [`  listeners[0].certificate.cert: expected a readable file (${missing}), found ENOENT`]);
});

test('a secret file that cannot be read is one problem, naming the file as resolved', async () => {
  const file = join(dir, 'secret-missing.yaml');
  await writeFile(file, `listeners:\n  - { name: imap, protocol: imap, host: 127.0.0.1, port: 1143, tls: none, plaintext_without_tls: true }\ndirectory: { urls: [ldap://127.0.0.1], bind_dn: cn=x, bind_password_file: secrets/ldap, base_dn: dc=x }\nstore_map: { file: stores.yaml, watch: false }\n`);
  const result = await run(file);
  assert.equal(result.code, 1, result.stdout);
  assert.deepEqual(problemLines(result.stderr), [`  directory.bind_password_file: expected a readable file (${join(dir, 'secrets/ldap')}), found ENOENT`]);
});

test('a key given twice is told as that, not as a value that needed quotes', async () => {
  const file = join(dir, 'duplicate-key.yaml');
  await writeFile(file, `listeners: []\nlisteners: []\n`);
  const result = await run(file);
  assert.equal(result.code, 1, result.stdout);
  assert.deepEqual(problemLines(result.stderr), ['  line 2 column 1: expected each key at most once in a mapping, found duplicate key']);
});

/** check-config on a config with these listeners (YAML flow mappings) and sections. */
async function checkListeners(name: string, listeners: readonly string[], sections = ''): Promise<{ code: number; stdout: string; stderr: string }> {
  const file = join(dir, `${name}.yaml`);
  await writeFile(file, `listeners:\n${listeners.map((l) => `  - ${l}`).join('\n')}\ndirectory: { urls: [ldap://127.0.0.1], bind_dn: cn=x, bind_password: x, base_dn: dc=x }\nstore_map: { file: stores.yaml, watch: false }\n${sections}`);
  return run(file);
}

test('check-config warns of a listener host and an http.host this host does not have (serve would not bind them), each under its path, without failing (the running instance may hold one: a reload keeps its socket), and says nothing of a host whose port the running instance holds', async () => {
  // The running instance holds its listeners' port: check-config asks of the address alone.
  const running = createNetServer();
  await new Promise<void>((resolve) => running.listen(0, '127.0.0.1', resolve));
  const port = (running.address() as AddressInfo).port;
  const plain = (name: string, host: string, listenPort: number): string => `{ name: ${name}, protocol: imap, host: "${host}", port: ${listenPort}, tls: none, plaintext_without_tls: true }`;
  try {
    const held = await checkListeners('listen-held', [plain('imap-held', '127.0.0.1', port), plain('imap-lo2', '127.0.0.2', port)], `http: { host: 127.0.0.3, port: ${port} }\n`);
    assert.equal(held.code, 0, held.stderr);
    assert.match(held.stdout, /: OK \(2 listeners/);
    assert.ok(!held.stdout.includes('not an address of this host'), held.stdout);
  } finally {
    running.close();
  }
  // 192.0.2.0/24 and 198.51.100.0/24 are documentation blocks (RFC 5737): no host has them. Bound on port 0 and let go of; nothing is sent.
  const foreign = await checkListeners('listen-foreign', [plain('imap-vip', '192.0.2.10', 1143), plain('imap-lo', '127.0.0.1', 1144), plain('pop3-vip', '192.0.2.10', 1110).replace('imap,', 'pop3,')], 'http: { host: 198.51.100.9, port: 9143 }\n');
  assert.equal(foreign.code, 0, foreign.stderr);
  const found = (path: string, host: string): RegExp => new RegExp(`^warning: ${path.replace(/[.[\]]/g, '\\$&')}: ${host.replace(/\./g, '\\.')} is not an address of this host \\(the kernel would not bind a socket to it: EADDRNOTAVAIL\\): serve would not start with it`, 'm');
  assert.match(foreign.stdout, found('listeners[0].host', '192.0.2.10'));
  assert.match(foreign.stdout, found('listeners[2].host', '192.0.2.10'));
  assert.match(foreign.stdout, found('http.host', '198.51.100.9'));
  assert.ok(!foreign.stdout.includes('listeners[1].host'), foreign.stdout);
});

test('a secret in a URL\'s query (oauth2.introspection_url, throttle.redis.url) is never printed: the values are hidden, the parameters named', async () => {
  const secrets = ['Idp-query-secret-2b7f', 'Redis-q-pw-4c'];
  const oauth2 = `oauth2: { issuers: [https://sso.example.com/realms/mail], audiences: [mail], introspection_url: "http://sso.example.com/introspect?client_secret=${secrets[0]}&x=1", client_id: mailfront, client_secret: Client-secret-1 }\n`;
  const throttle = `throttle: { redis: { url: "redis://h/db?password=${secrets[1]}" } }\n`;
  const result = await checkConfig('query-secrets', [{ cert: certs.certFile, key: certs.keyFile }], '', 'stores.yaml', oauth2 + throttle);
  assert.equal(result.code, 1, result.stdout);
  const problems = problemLines(result.stderr);
  assert.ok(problems.includes('  oauth2.introspection_url: expected an https:// URL (http:// only to a loopback address), found an http URL to a host that is not a loopback address (keys fetched in the clear could be anyone\'s): "http://sso.example.com/introspect?client_secret=[hidden]&x=[hidden]"'), result.stderr);
  assert.ok(problems.includes('  throttle.redis.url: expected a redis:// or rediss:// URL whose path, if any, is a database number (redis://host:6379/0), found "redis://h/db?password=[hidden]"'), result.stderr);
  for (const secret of secrets) assert.ok(!result.stderr.includes(secret) && !result.stdout.includes(secret), `${secret} is in:\n${result.stderr}`);
});
