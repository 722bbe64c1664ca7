// `mailfront serve` and a SIGHUP that comes while it starts (`systemctl start mailfront;
// systemctl reload mailfront`): SIGHUP's default action ends the process, so it must be handled
// from the first moment the CLI's code runs, and one that may have missed the operator's edit
// must reload once the server is up. Each SIGHUP is sent by the serve process itself at a chosen
// point of its start (a module loader hook adds the kill to a module's code), not after a delay:
// node's own start-up, before any JS, takes from 40 to over 200 ms on a busy machine.
import assert from 'node:assert/strict';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { freePort } from '../integration/servers/index.js';
import { CLI, DIST_SRC, folderWithStoreMap, serve, signalAt, stop } from './serve-process.js';

let dir: string;

before(async () => {
  dir = await folderWithStoreMap('mf-serve-sighup-');
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

/** The value of the series `series` (name and labels as exposed) in /metrics on `port`, or undefined when it is not there. */
async function metric(port: number, series: string): Promise<number | undefined> {
  const response = await fetch(`http://127.0.0.1:${port}/metrics`);
  assert.equal(response.status, 200);
  const line = (await response.text()).split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

test('a SIGHUP that is rejected sets mailfront_config_last_reload_success to 0 and counts a failure; a good one after it sets it to 1', async () => {
  const [port, httpPort] = [await freePort(), await freePort()];
  const config = join(dir, 'reload-metrics.yaml');
  const good = `listeners:\n  - { name: imap, protocol: imap, host: 127.0.0.1, port: ${port}, tls: none, plaintext_without_tls: true }\ndirectory: { urls: ["ldap://127.0.0.1:9"], bind_dn: cn=x, bind_password: x, base_dn: dc=x }\nstore_map: { file: stores.yaml, watch: false }\nhealth: { interval_ms: 0 }\nhttp: { host: 127.0.0.1, port: ${httpPort} }\n`;
  await writeFile(config, good);
  const s = serve(config);
  try {
    await s.logged('http.bound');
    await s.logged('listener.bound');
    const gauge = (): Promise<number | undefined> => metric(httpPort, 'mailfront_config_last_reload_success');
    const reloads = (result: string): Promise<number | undefined> => metric(httpPort, `mailfront_config_reloads_total{result="${result}"}`);
    assert.equal(await gauge(), 1);
    const failuresBefore = (await reloads('failure')) ?? 0;
    const successesBefore = (await reloads('success')) ?? 0;

    // Not YAML: rejected, the running config stays in force.
    await writeFile(config, `${good}listeners: [ {\n`);
    s.child.kill('SIGHUP');
    await s.logged('config.rejected');
    assert.equal(await gauge(), 0);
    assert.equal(await reloads('failure'), failuresBefore + 1);
    assert.equal((await reloads('success')) ?? 0, successesBefore);

    await writeFile(config, good);
    s.child.kill('SIGHUP');
    await s.logged('config.reloaded');
    assert.equal(await gauge(), 1);
    assert.equal(await reloads('success'), successesBefore + 1);
    assert.equal(await reloads('failure'), failuresBefore + 1);
    assert.equal(await stop(s), 0);
  } finally {
    await stop(s);
  }
});
