// `mailfront serve` under a descriptor limit (RLIMIT_NOFILE) too low for its
// connection_limits.max_connections: each client connection takes a descriptor, and its backend
// another. At the limit libuv closes a new connection as it is accepted (EMFILE), before mailfront
// sees it, with no log line or metric: the start and each reload warn of it instead.
import assert from 'node:assert/strict';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { freePort } from '../integration/servers/index.js';
import { folderWithStoreMap, serve, stop } from './serve-process.js';

let dir: string;

before(async () => {
  dir = await folderWithStoreMap('mf-serve-nofile-');
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Writes a config of one plain IMAP listener on `port` with `max_connections`. */
async function writeConfig(file: string, port: number, maxConnections: number): Promise<void> {
  await writeFile(file, `listeners:\n  - { name: imap, protocol: imap, host: 127.0.0.1, port: ${port}, tls: none, plaintext_without_tls: true }\ndirectory: { urls: ["ldap://127.0.0.1:9"], bind_dn: cn=x, bind_password: x, base_dn: dc=x }\nstore_map: { file: stores.yaml, watch: false }\nhealth: { interval_ms: 0 }\nconnection_limits: { max_connections: ${maxConnections} }\n`);
}

/** node under a soft and hard limit of 400 open files. */
const LIMITED = ['prlimit', '--nofile=400:400', '--'];

test('serve warns at start when 2 × max_connections and a margin exceed the descriptor limit', async () => {
  const config = join(dir, 'low.yaml');
  await writeConfig(config, await freePort(), 1000);
  const s = serve(config, [], LIMITED);
  try {
    await s.logged('listener.bound');
    const warning = s.lines().find((l) => l['event'] === 'process.descriptor_limit_low');
    assert.ok(warning, `no process.descriptor_limit_low: ${s.events().join(', ')}`);
    assert.equal(warning['level'], 'warn');
    assert.equal(warning['limit'], 400);
    assert.equal(warning['maxConnections'], 1000);
    assert.equal(warning['needed'], 2100);
  } finally {
    assert.equal(await stop(s), 0);
  }
});

test('serve does not warn under a limit that suffices, and warns at a reload that raises max_connections past it', async () => {
  const config = join(dir, 'reload.yaml');
  const port = await freePort();
  await writeConfig(config, port, 100);
  const s = serve(config, [], LIMITED);
  try {
    await s.logged('listener.bound');
    assert.ok(!s.events().includes('process.descriptor_limit_low'), s.events().join(', '));
    await writeConfig(config, port, 1000);
    s.child.kill('SIGHUP');
    await s.logged('config.reloaded');
    assert.equal(s.lines().find((l) => l['event'] === 'process.descriptor_limit_low')?.['needed'], 2100);
  } finally {
    assert.equal(await stop(s), 0);
  }
});
