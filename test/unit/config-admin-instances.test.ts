// admin.instances, the fleet's admin API URLs the operator commands' --all goes to: checked as
// the config is (check-config and serve), and by the operator commands that read it, each problem
// named by its index; a config that lists it still serves the commands sent to one instance.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { ConfigError, loadConfig } from '../../src/config/load.js';
import { tmpDir } from '../integration/servers/tmp.js';

const CLI = join(dirname(fileURLToPath(import.meta.url)), '../../src/cli/main.js');
const TOKEN = 'a-token-of-the-admin-api-0123456789';

const GOOD = `
listeners:
  - { protocol: imap, host: 127.0.0.1, port: 1143, tls: starttls, certificate: { cert: cert.pem, key: key.pem } }
directory:
  urls: [ldap://127.0.0.1:389]
  bind_dn: cn=mailfront,dc=example,dc=org
  bind_password: s3cret
  base_dn: ou=people,dc=example,dc=org
store_map: { file: stores.yaml }
`;

function writeConfig(admin: string): string {
  const dir = tmpDir('admin-instances').path;
  writeFileSync(join(dir, 'mf.yaml'), `${GOOD}${admin}`);
  return join(dir, 'mf.yaml');
}

function cli(args: readonly string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

test('admin.instances: http(s) base URLs, each instance once; a problem names admin.instances[N] and what was expected', () => {
  const good = loadConfig(writeConfig(`admin: { token: ${TOKEN}, instances: ["http://10.0.0.1:9143", "https://mf2.example.org:9143/"] }\n`));
  assert.deepEqual(good.admin.instances, ['http://10.0.0.1:9143', 'https://mf2.example.org:9143']);
  assert.equal(loadConfig(writeConfig(`admin: { token: ${TOKEN} }\n`)).admin.instances, undefined);

  const list = ['http://10.0.0.1:9143', 'ftp://10.0.0.2:9143', 'http://10.0.0.3:9143/api', 'HTTP://10.0.0.1:9143/', 42, 'mf4:9143', 'http://user:pw@10.0.0.5:9143'];
  let error: unknown;
  try {
    loadConfig(writeConfig(`admin: { token: ${TOKEN}, instances: ${JSON.stringify(list)} }\n`));
  } catch (e) {
    error = e;
  }
  assert.ok(error instanceof ConfigError, String(error));
  assert.deepEqual(error.issues.map((i) => i.path), ['admin.instances[1]', 'admin.instances[2]', 'admin.instances[3]', 'admin.instances[4]', 'admin.instances[5]', 'admin.instances[6]']);
  assert.match(error.message, /admin\.instances\[1\]: expected an admin API base URL: http:\/\/ or https:\/\/, a host and an optional port, and nothing after them \(http:\/\/HOST:PORT\), found "ftp:\/\/10\.0\.0\.2:9143"/);
  assert.match(error.message, /admin\.instances\[3\]: expected an instance not listed before \(admin\.instances\[0\] is http:\/\/10\.0\.0\.1:9143 too\)/);
  // A URL's user and password are never shown (check-config's output, config.rejected, a reload's answer): 40 characters or less were quoted in full.
  assert.ok(!/user|:pw@/.test(error.message), error.message);
  assert.match(error.message, /admin\.instances\[6\]: expected an admin API base URL[^\n]*, found "http:\/\/\[credentials hidden\]@10\.0\.0\.5:9143"/);

  // What the URL parser would let through (spaces and newlines dropped, an empty user, port 0), and
  // what is kept: the origin, as the answers' headers and --json keys show it.
  const odd = [' http://10.0.0.1:9143', 'http://10.0.0.1:91\n43', 'http://@10.0.0.1:9143', 'http://10.0.0.1:0'];
  let oddError: unknown;
  try {
    loadConfig(writeConfig(`admin: { token: ${TOKEN}, instances: ${JSON.stringify(odd)} }\n`));
  } catch (e) {
    oddError = e;
  }
  assert.ok(oddError instanceof ConfigError, String(oddError));
  assert.deepEqual(oddError.issues.map((i) => i.path), ['admin.instances[0]', 'admin.instances[1]', 'admin.instances[2]', 'admin.instances[3]']);
  assert.deepEqual(loadConfig(writeConfig(`admin: { token: ${TOKEN}, instances: ["http://MF1.example.org:80/", "http://10.0.0.1:9143/."] }\n`)).admin.instances, ['http://mf1.example.org', 'http://10.0.0.1:9143']);

  for (const value of ['[]', '"http://10.0.0.1:9143"', '{ a: 1 }']) {
    assert.throws(() => loadConfig(writeConfig(`admin: { token: ${TOKEN}, instances: ${value} }\n`)), (e: unknown) => e instanceof ConfigError && e.issues.length === 1 && e.issues[0]!.path === 'admin.instances' && /a non-empty list of admin API base URLs/.test(e.issues[0]!.expected), value);
  }
});

test('the operator commands: --all reads and checks admin.instances; a config listing them still serves a command sent to one instance', async () => {
  const tokens: string[] = [];
  const server = createServer((req, res) => {
    tokens.push(req.headers.authorization ?? '');
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ version: 3, stores: [] }));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  try {
    const port = (server.address() as AddressInfo).port;
    const config = writeConfig(`http: { host: 127.0.0.1, port: ${port} }\nadmin: { token: ${TOKEN}, instances: ["http://127.0.0.1:${port}"] }\n`);
    // Without --all, the http section's instance, the token from the same admin section.
    const one = await cli(['stores', '-c', config]);
    assert.equal(one.code, 0, one.stderr);
    assert.equal(one.stdout, 'store map version 3\nSTORE  SLOT  HOST  ROLE  PREFERRED  HEALTH  SESSIONS\n');
    const all = await cli(['stores', '--all', '-c', config, '--token', 'the-token-given-on-the-command-line']);
    assert.equal(all.code, 0, all.stderr);
    assert.equal(all.stdout, `== http://127.0.0.1:${port} ==\nstore map version 3\nSTORE  SLOT  HOST  ROLE  PREFERRED  HEALTH  SESSIONS\n`);
    assert.deepEqual(tokens, [`Bearer ${TOKEN}`, 'Bearer the-token-given-on-the-command-line']);

    const bad = writeConfig(`admin: { token: ${TOKEN}, instances: ["http://127.0.0.1:${port}", "127.0.0.1:${port}"] }\n`);
    const refused = await cli(['kick', 'alice', '--all', '-c', bad]);
    assert.equal(refused.code, 1);
    assert.match(refused.stderr, /admin\.instances\[1\]: expected an admin API base URL/);
    const none = await cli(['kick', 'alice', '--all', '-c', writeConfig(`admin: { token: ${TOKEN} }\n`)]);
    assert.equal(none.code, 1);
    assert.match(none.stderr, /has no admin\.instances: --all sends the command to the admin API of each instance it lists/);
    const both = await cli(['kick', 'alice', '--all', '--url', `http://127.0.0.1:${port}`, '--token', TOKEN]);
    assert.equal(both.code, 2);
    assert.match(both.stderr, /give --all \(the instances of admin\.instances\) or --url, not both/);
    // A session lives on one instance; the same instance twice, as origins, is one.
    const session = await cli(['kick', '--session', 'b7bea1000001', '--all', '-c', config]);
    assert.equal(session.code, 2);
    assert.match(session.stderr, /--session names a session of one instance: give its --url, not --all or several/);
    const twice = await cli(['stores', '--url', 'http://127.0.0.1:80', '--url', 'http://127.0.0.1', '--token', TOKEN]);
    assert.equal(twice.code, 2);
    assert.match(twice.stderr, /--url http:\/\/127\.0\.0\.1 is given twice/);
    assert.equal(tokens.length, 2, 'no request for a refused command');
  } finally {
    server.close();
  }
});
