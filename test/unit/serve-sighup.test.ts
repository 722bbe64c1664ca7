// `mailfront serve` and a SIGHUP that comes while it starts (`systemctl start mailfront;
// systemctl reload mailfront`): SIGHUP's default action ends the process, so it must be handled
// from the first moment the CLI's code runs, and one that may have missed the operator's edit
// must reload once the server is up. Each SIGHUP is sent by the serve process itself at a chosen
// point of its start (a module loader hook adds the kill to a module's code), not after a delay:
// node's own start-up, before any JS, takes from 40 to over 200 ms on a busy machine.
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { freePort } from '../integration/servers/index.js';
import { CLI, DIST_SRC, serve, signalAt, stop } from './serve-process.js';

let dir: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'mf-serve-sighup-'));
  await writeFile(join(dir, 'stores.yaml'), 'stores:\n  store1:\n    current_master: slot1\n    slots:\n      slot1: { host: 127.0.0.1, imap_port: 1430 }\n');
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** node's options for a serve process that sends itself SIGHUP when `module` (a file of the build) is evaluated. */
function hangupAt(module: string): string[] {
  return signalAt([module, 'SIGHUP']);
}

/** A config of one plain IMAP listener on a free port, the store map from a file. */
async function writeConfig(name: string): Promise<string> {
  const port = await freePort();
  const config = join(dir, `${name}.yaml`);
  await writeFile(config, `listeners:\n  - { name: imap, protocol: imap, host: 127.0.0.1, port: ${port}, tls: none, plaintext_without_tls: true }\ndirectory: { urls: ["ldap://127.0.0.1:9"], bind_dn: cn=x, bind_password: x, base_dn: dc=x }\nstore_map: { file: stores.yaml, watch: false }\nhealth: { interval_ms: 0 }\n`);
  return config;
}

test('a SIGHUP as the CLI\'s code begins does not end serve; the start, which reads the config after it, answers it (no reload)', async () => {
  const s = serve(await writeConfig('first-module'), hangupAt(CLI));
  try {
    await s.logged('listener.bound');
    // A SIGHUP now is a reload as usual, and the only one: none was left over from the start.
    s.child.kill('SIGHUP');
    await s.logged('config.reloaded');
    assert.deepEqual(s.events().filter((e) => e === 'config.reloaded'), ['config.reloaded']);
    assert.equal(await stop(s), 0);
  } finally {
    await stop(s);
  }
});

test('a SIGHUP while serve reads its config is a reload once the server is up: the edit may have come after the read', async () => {
  // config/load.js is loaded by serve's loadConfig, just before it reads the file.
  const s = serve(await writeConfig('while-reading'), hangupAt(join(DIST_SRC, 'config/load.js')));
  try {
    await s.logged('listener.bound');
    await s.logged('config.reloaded');
    assert.equal(await stop(s), 0);
  } finally {
    await stop(s);
  }
});
