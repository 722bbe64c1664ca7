// `mailfront serve` with http.metrics_token_file: a scrape of /metrics must bear the file's token
// (401 otherwise), /healthz and /readyz stay open, a SIGHUP after the file changed puts the new
// token in force (and one whose file cannot be read is rejected, the token in force kept),
// check-config names the key and the file when the file cannot be used, never the token, the
// operator commands read the http section without reading the file, and no log line holds the token.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { freePort } from '../integration/servers/index.js';
import { CLI, folderWithStoreMap, serve, stop } from './serve-process.js';

const TOKEN = 'serve-metrics-token-5b1f0c8e2d';
const NEXT_TOKEN = 'serve-metrics-token-after-sighup-77a3';
const ADMIN_TOKEN = 'serve-admin-token-0123456789';

let dir: string;

before(async () => {
  dir = await folderWithStoreMap('mf-serve-metrics-token-');
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A config of one plain IMAP listener, the HTTP listener on `httpPort` with `http` added to its section. */
async function writeConfig(name: string, httpPort: number, http: string): Promise<string> {
  const port = await freePort();
  const config = join(dir, `${name}.yaml`);
  await writeFile(
    config,
    `listeners:\n  - { name: imap, protocol: imap, host: 127.0.0.1, port: ${port}, tls: none, plaintext_without_tls: true }\ndirectory: { urls: ["ldap://127.0.0.1:9"], bind_dn: cn=x, bind_password: x, base_dn: dc=x }\nstore_map: { file: stores.yaml, watch: false }\nhealth: { interval_ms: 0 }\nhttp: { host: 127.0.0.1, port: ${httpPort}, ${http} }\nadmin: { token: ${ADMIN_TOKEN} }\n`,
  );
  return config;
}

async function get(port: number, path: string, token?: string): Promise<{ status: number; authenticate: string | null; body: string }> {
  const response = await fetch(`http://127.0.0.1:${port}${path}`, { headers: token === undefined ? {} : { authorization: `Bearer ${token}` } });
  return { status: response.status, authenticate: response.headers.get('www-authenticate'), body: await response.text() };
}

async function cli(args: readonly string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], timeout: 30_000 });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const [code] = (await once(child, 'close')) as [number | null];
  return { code, stdout, stderr };
}

test('serve: /metrics bears the token of http.metrics_token_file; a SIGHUP puts a changed file in force, an unreadable one is rejected', async () => {
  const httpPort = await freePort();
  const tokenFile = join(dir, 'metrics.token');
  await writeFile(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
  const config = await writeConfig('serve', httpPort, 'metrics_token_file: metrics.token');
  const s = serve(config);
  try {
    await s.logged('http.bound');
    const none = await get(httpPort, '/metrics');
    assert.equal(none.status, 401);
    assert.equal(none.authenticate, 'Bearer realm="mailfront-metrics"');
    const wrong = await get(httpPort, '/metrics', NEXT_TOKEN);
    assert.equal(wrong.status, 401);
    assert.equal(wrong.authenticate, 'Bearer realm="mailfront-metrics", error="invalid_token"');
    const right = await get(httpPort, '/metrics', TOKEN);
    assert.equal(right.status, 200);
    assert.match(right.body, /^mailfront_build_info\{/m);
    // Open: a balancer checks them without a token.
    assert.equal((await get(httpPort, '/healthz')).status, 200);
    assert.notEqual((await get(httpPort, '/readyz')).status, 401);
    // The admin API keeps its own token, and the metrics token is no admin token.
    assert.equal((await get(httpPort, '/api/stores', TOKEN)).status, 401);
    assert.equal((await get(httpPort, '/api/stores', ADMIN_TOKEN)).status, 200);

    // The operator commands read the http section without reading its secret file.
    const stores = await cli(['stores', '-c', config]);
    assert.equal(stores.code, 0, stores.stderr);
    assert.match(stores.stdout, /^store map version \d+\nSTORE /);
    const missingFile = await writeConfig('cli-missing-file', httpPort, `metrics_token_file: ${join(dir, 'nowhere.token')}`);
    const storesAgain = await cli(['stores', '-c', missingFile]);
    assert.equal(storesAgain.code, 0, storesAgain.stderr);

    // A reload reads the file again: the new token from the next scrape on.
    await writeFile(tokenFile, `${NEXT_TOKEN}\n`);
    s.child.kill('SIGHUP');
    await s.logged('config.reloaded');
    assert.equal((await get(httpPort, '/metrics', TOKEN)).status, 401);
    assert.equal((await get(httpPort, '/metrics', NEXT_TOKEN)).status, 200);

    // A file that cannot be read: the reload is rejected, naming the key and the file, and the token in force stays.
    await rm(tokenFile);
    s.child.kill('SIGHUP');
    await s.logged('config.rejected');
    const rejected = s.lines().find((l) => l['event'] === 'config.rejected');
    assert.match(String(rejected?.['err']), new RegExp(`http\\.metrics_token_file: expected a readable file \\(${tokenFile.replaceAll('.', '\\.')}\\), found ENOENT`));
    assert.equal((await get(httpPort, '/metrics', NEXT_TOKEN)).status, 200);
    assert.equal((await get(httpPort, '/metrics')).status, 401);

    assert.equal(await stop(s), 0);
    const log = JSON.stringify(s.lines());
    assert.ok(s.lines().length > 5, 'the log was read');
    for (const token of [TOKEN, NEXT_TOKEN]) assert.ok(!log.includes(token), `the token is in the log: ${token}`);
  } finally {
    await stop(s);
  }
});

test('check-config names http.metrics_token_file and its file when the file cannot be read, holds a token too short or one with a space at its end, never the token', async () => {
  const httpPort = await freePort();
  const missing = join(dir, 'missing.token');
  const unreadable = await check(await writeConfig('check-missing', httpPort, `metrics_token_file: ${missing}`));
  assert.equal(unreadable.code, 1, unreadable.stdout);
  assert.match(unreadable.stderr, new RegExp(`  http\\.metrics_token_file: expected a readable file \\(${missing.replaceAll('.', '\\.')}\\), found ENOENT\\n`));

  const short = join(dir, 'short.token');
  await writeFile(short, 'short-secret-7\n');
  const tooShort = await check(await writeConfig('check-short', httpPort, 'metrics_token_file: short.token'));
  assert.equal(tooShort.code, 1, tooShort.stdout);
  assert.match(tooShort.stderr, new RegExp(`  http\\.metrics_token_file: expected a token of at least 16 characters in the file \\(${short.replaceAll('.', '\\.')}\\), found a string of 14 characters\\n`));
  assert.ok(!tooShort.stderr.includes('short-secret-7'), tooShort.stderr);

  // A space before the line break: not trimmed, refused (every scrape would get 401: Prometheus trims its credentials_file, node the header).
  const spaced = join(dir, 'spaced.token');
  await writeFile(spaced, `${TOKEN} \n`);
  const withSpace = await check(await writeConfig('check-spaced', httpPort, 'metrics_token_file: spaced.token'));
  assert.equal(withSpace.code, 1, withSpace.stdout);
  assert.match(withSpace.stderr, new RegExp(`  http\\.metrics_token_file: expected a token of visible ASCII characters [^\\n]* in the file \\(${spaced.replaceAll('.', '\\.')}\\), found a string of ${TOKEN.length + 1} characters with a space at its end\\n`));
  assert.ok(!withSpace.stderr.includes(TOKEN), withSpace.stderr);

  const both = await check(await writeConfig('check-both', httpPort, `metrics_token: ${TOKEN}, metrics_token_file: short.token`));
  assert.equal(both.code, 1);
  assert.match(both.stderr, /  http\.metrics_token_file: expected either metrics_token or metrics_token_file, not both, found both\n/);
  assert.ok(!both.stderr.includes(TOKEN), both.stderr);

  await writeFile(join(dir, 'good.token'), `${TOKEN}\n`);
  const good = await check(await writeConfig('check-good', httpPort, 'metrics_token_file: good.token'));
  assert.equal(good.code, 0, good.stderr);
  assert.ok(!`${good.stdout}${good.stderr}`.includes(TOKEN));
});

function check(config: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return cli(['check-config', config]);
}
