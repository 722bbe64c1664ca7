// `mailfront serve` and a SIGTERM or SIGINT that comes while it starts (`docker stop` right after
// `docker run`, a pod deleted while it starts). When node is PID 1 of its PID namespace (a
// container without an init) the kernel drops a signal the process has no handler for: serve's
// handlers came once the server was up, and such a SIGTERM was lost, the process running on until
// killed. Outside a container the same signal took the default action and killed the process
// mid-start. Each signal is sent by the serve process itself at a chosen point of its start (a
// module loader hook, see signalAt()), not after a delay.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { freePort } from '../integration/servers/index.js';
import { CLI, DIST_SRC, folderWithStoreMap, serve, signalAt, stop } from './serve-process.js';

let dir: string;

before(async () => {
  dir = await folderWithStoreMap('mf-serve-stop-');
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** A config of one plain IMAP listener on a free port, the store map from a file. */
async function writeConfig(name: string): Promise<string> {
  const port = await freePort();
  const config = join(dir, `${name}.yaml`);
  await writeFile(config, `listeners:\n  - { name: imap, protocol: imap, host: 127.0.0.1, port: ${port}, tls: none, plaintext_without_tls: true }\ndirectory: { urls: ["ldap://127.0.0.1:9"], bind_dn: cn=x, bind_password: x, base_dn: dc=x }\nstore_map: { file: stores.yaml, watch: false }\nhealth: { interval_ms: 0 }\n`);
  return config;
}

for (const signal of ['SIGTERM', 'SIGINT'] as const) {
  test(`a ${signal} while serve starts is kept: the server stops once it is up, and exits 0`, async () => {
    // src/main.js is loaded by serve after the config is read, just before the server starts.
    const s = serve(await writeConfig(`during-start-${signal}`), signalAt([join(DIST_SRC, 'main.js'), signal]));
    try {
      assert.deepEqual(await s.exited, { code: 0, signal: null });
      assert.deepEqual(s.events().filter((e) => ['listener.bound', 'server.stopping', 'server.stopped'].includes(String(e))), ['listener.bound', 'server.stopping', 'server.stopped']);
    } finally {
      await stop(s);
    }
  });
}

test('two stop signals while serve starts: it stops once up, and the second ends the drain (server.drain_ended)', async () => {
  const s = serve(await writeConfig('two-during-start'), signalAt([join(DIST_SRC, 'config/load.js'), 'SIGTERM'], [join(DIST_SRC, 'main.js'), 'SIGINT']));
  try {
    assert.deepEqual(await s.exited, { code: 0, signal: null });
    assert.equal(s.lines().find((l) => l['event'] === 'server.drain_ended')?.['signal'], 'SIGINT');
    // (The SIGINT may reach the handler only once the stop, with no session to drain, is done.)
    assert.ok(s.events().includes('server.stopped'), s.events().join(', '));
  } finally {
    await stop(s);
  }
});

test('another command ends on a SIGTERM that came before it gave the signal back, as it did', async () => {
  // check-config of a config that is fine: without the signal it would exit 0.
  const config = await writeConfig('check-config');
  const child = spawn(process.execPath, [...signalAt([CLI, 'SIGTERM']), CLI, 'check-config', config], { stdio: 'ignore' });
  const exited = await new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, sig) => resolve({ code, signal: sig })));
  assert.deepEqual(exited, { code: null, signal: 'SIGTERM' });
});
