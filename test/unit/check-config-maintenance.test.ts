// `mailfront check-config` says which stores of the map it read are in maintenance: their logins
// are refused from the moment the map is in force, which an operator deploying it should know.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { after, before, test } from 'node:test';

const CLI = join(dirname(fileURLToPath(import.meta.url)), '../../src/cli/main.js');

let dir: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'mf-check-maint-'));
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** check-config on a config whose store map has these stores (name → maintenance value, or undefined). */
async function check(name: string, stores: ReadonlyArray<readonly [string, string | undefined]>): Promise<{ code: number; stdout: string; stderr: string }> {
  const entries = stores.map(([store, maintenance], i) => `  ${store}:\n    current_master: ${store}-s\n${maintenance === undefined ? '' : `    maintenance: ${maintenance}\n`}    slots:\n      ${store}-s: { host: 127.0.0.1, imap_port: ${2000 + i} }\n`);
  await writeFile(join(dir, `${name}-stores.yaml`), `stores:\n${entries.join('')}`);
  const file = join(dir, `${name}.yaml`);
  await writeFile(file, `listeners:\n  - { name: imap, protocol: imap, host: 127.0.0.1, port: 1143, plaintext_without_tls: true }\ndirectory: { urls: [ldap://127.0.0.1], bind_dn: cn=x, bind_password: x, base_dn: dc=x }\nstore_map: { file: ${name}-stores.yaml, watch: false }\n`);
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, 'check-config', file], { timeout: 30_000 }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : -1, stdout, stderr });
    });
  });
}

test('check-config names the stores in maintenance, and says nothing of it when none is', async () => {
  const none = await check('none', [['a', undefined], ['b', 'false']]);
  assert.equal(none.code, 0, none.stderr);
  assert.match(none.stdout, /: OK \(1 listeners, 2 stores, 2 slots from /);
  assert.doesNotMatch(none.stdout, /maintenance/);
  const some = await check('some', [['a', 'true'], ['b', undefined], ['c', '"Moving to new disks, please wait"']]);
  assert.equal(some.code, 0, some.stderr);
  assert.match(some.stdout, /\n2 stores in maintenance, logins refused: a, c\n$/);
  const one = await check('one', [['a', undefined], ['b', 'true']]);
  assert.match(one.stdout, /\n1 store in maintenance, logins refused: b\n$/);
});

test('check-config counts the stores in maintenance past the tenth instead of naming them all', async () => {
  const stores = Array.from({ length: 13 }, (_, i) => [`store${String(i).padStart(2, '0')}`, 'true'] as const);
  const result = await check('many', stores);
  assert.equal(result.code, 0, result.stderr);
  assert.match(result.stdout, /\n13 stores in maintenance, logins refused: store00, store01, store02, store03, store04, store05, store06, store07, store08, store09 and 3 more\n$/);
});
