// `mailfront serve` and the admin token across a reload: the admin API asks the config in force
// for its token at each request, so a SIGHUP after admin.token_file changed puts the new token in
// force (the old one then gets 401, invalid_token), and a reload that sets a token to an instance
// that had none turns the API on (the README: "the API is off without it").
import assert from 'node:assert/strict';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { freePort } from '../integration/servers/index.js';
import { folderWithStoreMap, serve, stop } from './serve-process.js';

const TOKEN = 'serve-admin-token-before-3c9e1a77';
const NEXT_TOKEN = 'serve-admin-token-after-sighup-b52d';

let dir: string;

before(async () => {
  dir = await folderWithStoreMap('mf-serve-admin-token-');
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A config of one plain IMAP listener, the HTTP listener on `httpPort`, and `admin` (a YAML flow mapping) when given. */
async function writeConfig(name: string, port: number, httpPort: number, admin?: string): Promise<string> {
  const config = join(dir, `${name}.yaml`);
  await writeFile(
    config,
    `listeners:\n  - { name: imap, protocol: imap, host: 127.0.0.1, port: ${port}, tls: none, plaintext_without_tls: true }\ndirectory: { urls: ["ldap://127.0.0.1:9"], bind_dn: cn=x, bind_password: x, base_dn: dc=x }\nstore_map: { file: stores.yaml, watch: false }\nhealth: { interval_ms: 0 }\nhttp: { host: 127.0.0.1, port: ${httpPort} }\n${admin === undefined ? '' : `admin: ${admin}\n`}`,
  );
  return config;
}

async function sessions(port: number, token?: string): Promise<{ status: number; authenticate: string | null; body: string }> {
  const response = await fetch(`http://127.0.0.1:${port}/api/sessions`, { headers: token === undefined ? {} : { authorization: `Bearer ${token}` } });
  return { status: response.status, authenticate: response.headers.get('www-authenticate'), body: await response.text() };
}

test('serve: a SIGHUP after admin.token_file changed puts the new admin token in force; the old one gets 401 invalid_token', async () => {
  const [port, httpPort] = [await freePort(), await freePort()];
  const tokenFile = join(dir, 'admin.token');
  await writeFile(tokenFile, `${TOKEN}\n`, { mode: 0o600 });
  const s = serve(await writeConfig('token-file', port, httpPort, '{ token_file: admin.token }'));
  try {
    await s.logged('http.bound');
    const before = await sessions(httpPort, TOKEN);
    assert.equal(before.status, 200, before.body);
    assert.deepEqual(JSON.parse(before.body), { sessions: [] });
    assert.equal((await sessions(httpPort, NEXT_TOKEN)).status, 401);

    await writeFile(tokenFile, `${NEXT_TOKEN}\n`);
    s.child.kill('SIGHUP');
    await s.logged('config.reloaded');
    const old = await sessions(httpPort, TOKEN);
    assert.equal(old.status, 401, old.body);
    assert.equal(old.authenticate, 'Bearer realm="mailfront", error="invalid_token"');
    const next = await sessions(httpPort, NEXT_TOKEN);
    assert.equal(next.status, 200, next.body);
    assert.deepEqual(JSON.parse(next.body), { sessions: [] });
    assert.equal(await stop(s), 0);
    const log = JSON.stringify(s.lines());
    assert.ok(s.lines().length > 5, 'the log was read');
    for (const token of [TOKEN, NEXT_TOKEN]) assert.ok(!log.includes(token), `the token is in the log: ${token}`);
  } finally {
    await stop(s);
  }
});

test('serve: without admin.token the admin API is off; a SIGHUP that adds one turns it on', async () => {
  const [port, httpPort] = [await freePort(), await freePort()];
  const config = await writeConfig('no-token', port, httpPort);
  const s = serve(config);
  try {
    await s.logged('http.bound');
    // Off: no token is taken, not even the one about to be configured, and no challenge is made.
    for (const token of [undefined, TOKEN]) {
      const off = await sessions(httpPort, token);
      assert.equal(off.status, 404, off.body);
      assert.equal(off.authenticate, null);
      assert.match(JSON.parse(off.body).error, /admin API is disabled/);
    }

    await writeConfig('no-token', port, httpPort, `{ token: ${TOKEN} }`);
    s.child.kill('SIGHUP');
    await s.logged('config.reloaded');
    const on = await sessions(httpPort, TOKEN);
    assert.equal(on.status, 200, on.body);
    assert.deepEqual(JSON.parse(on.body), { sessions: [] });
    const wrong = await sessions(httpPort, NEXT_TOKEN);
    assert.equal(wrong.status, 401);
    assert.equal(wrong.authenticate, 'Bearer realm="mailfront", error="invalid_token"');
    assert.equal(await stop(s), 0);
  } finally {
    await stop(s);
  }
});
