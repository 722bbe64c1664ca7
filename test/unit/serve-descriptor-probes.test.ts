// The descriptor-limit warning counts the health probes: each probe in flight holds a connection.
// Counted as 2 × max_connections + 100 only, 500 stores of 3 slots under max_connections 4000 and
// `ulimit -n 8200` started without a warning, and 1,123 probes failed with EMFILE. A probe round
// holds at most MAX_PROBES_IN_FLIGHT at once, or one per slot when there are fewer.
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { MAX_PROBES_IN_FLIGHT } from '../../src/backend/health.js';
import { freePort } from '../integration/servers/index.js';
import { serve, stop } from './serve-process.js';

let dir: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'mf-serve-nofile-probes-'));
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Writes a store map of `stores` stores of 3 slots (on the discard port: probes fail at once) and a config naming it. */
async function writeConfig(name: string, stores: number, healthIntervalMs: number): Promise<string> {
  let map = 'stores:\n';
  for (let s = 0; s < stores; s++) map += `  st${s}:\n    current_master: sl${s}x0\n    slots:\n${[0, 1, 2].map((j) => `      sl${s}x${j}: { host: 127.0.0.1, imap_port: 9 }\n`).join('')}`;
  await writeFile(join(dir, `${name}.stores.yaml`), map);
  const file = join(dir, `${name}.yaml`);
  await writeFile(file, `listeners:\n  - { name: imap, protocol: imap, host: 127.0.0.1, port: ${await freePort()}, tls: none, plaintext_without_tls: true }\ndirectory: { urls: ["ldap://127.0.0.1:9"], bind_dn: cn=x, bind_password: x, base_dn: dc=x }\nstore_map: { file: ${name}.stores.yaml, watch: false }\nhealth: { interval_ms: ${healthIntervalMs} }\nconnection_limits: { max_connections: 100 }\n`);
  return file;
}

/** node under a soft and hard limit of 400 open files: 2 × 100 connections and 100 more fit, with room for 100 probes. */
const LIMITED = ['prlimit', '--nofile=400:400', '--'];

/** The descriptor_limit_low warning `serve` logs at start under LIMITED, if any. */
async function warningAtStart(config: string): Promise<Record<string, unknown> | undefined> {
  const s = serve(config, [], LIMITED);
  try {
    await s.logged('listener.bound');
    return s.lines().find((l) => l['event'] === 'process.descriptor_limit_low');
  } finally {
    assert.equal(await stop(s), 0);
  }
}

test('the warning counts one descriptor per slot probed, when there are fewer slots than probes in flight at most', async () => {
  const warning = await warningAtStart(await writeConfig('few', 40, 1_000));
  assert.ok(warning, 'no process.descriptor_limit_low for 2 × 100 connections, 120 probes and 100 more under a limit of 400');
  assert.equal(warning['needed'], 2 * 100 + 120 + 100);
  assert.equal(warning['probes'], 120);
  assert.match(String(warning['msg']), /120 health probes at once/);
});

test(`the warning counts ${MAX_PROBES_IN_FLIGHT} probes in flight at most, and none with health probes off`, async () => {
  const warning = await warningAtStart(await writeConfig('many', 100, 1_000));
  assert.equal(warning?.['needed'], 2 * 100 + MAX_PROBES_IN_FLIGHT + 100);
  assert.equal(warning?.['probes'], MAX_PROBES_IN_FLIGHT);
  assert.equal(await warningAtStart(await writeConfig('off', 100, 0)), undefined);
});
