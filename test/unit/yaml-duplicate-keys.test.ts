// A key given twice in one YAML mapping is refused, in the config file and in the store map
// alike, naming the file and the second key's line and column. The library's own check
// (uniqueKeys) compared each key with every key before it, O(keys²): a store map of 50,000
// stores took 59 s to parse (17 s without); mailfront checks each mapping's keys with a Set.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { ConfigError, loadConfig, readStoreMapFile } from '../../src/config/load.js';

const dir = mkdtempSync(join(tmpdir(), 'mf-duplicate-keys-'));
after(() => rmSync(dir, { recursive: true, force: true }));

/** The problems a file of `text` is refused with by `read`, as the error lists them. */
function problems(name: string, text: string, read: (file: string) => unknown): string[] {
  const file = join(dir, name);
  writeFileSync(file, text);
  try {
    read(file);
  } catch (error) {
    assert.ok(error instanceof ConfigError, String(error));
    assert.equal(error.file, file);
    assert.ok(error.message.startsWith(`${file}: `), error.message);
    return error.issues.map((i) => `${i.path}: expected ${i.expected}, found ${i.found}`);
  }
  return assert.fail(`taken: ${text}`);
}

const twice = (line: number, column: number): string => `line ${line} column ${column}: expected each key at most once in a mapping, found duplicate key`;
const slot = (port: number): string => `{ host: 127.0.0.1, imap_port: ${port} }`;

test('store map: a key given twice is refused at its second place, in block and flow mappings, quoted or not, nested or not, in order', () => {
  const map = (body: string): string => `stores:\n${body}`;
  const cases: ReadonlyArray<readonly [string, readonly string[]]> = [
    [map(`  alpha: { current_master: a1, slots: { a1: ${slot(10143)} } }\n  alpha: { current_master: a1, slots: { a1: ${slot(10143)} } }\n`), [twice(3, 3)]],
    [map(`  alpha:\n    current_master: a1\n    current_master: a1\n    slots:\n      a1: ${slot(10143)}\n`), [twice(4, 5)]],
    [map(`  alpha:\n    current_master: a1\n    slots:\n      a1: { host: 127.0.0.1, imap_port: 10143, host: 127.0.0.2 }\n`), [twice(5, 48)]],
    [map(`  "alpha": { current_master: a1, slots: { a1: ${slot(10143)} } }\n  'alpha': { current_master: a1, slots: { a1: ${slot(10143)} } }\n`), [twice(3, 3)]],
    // Several at once, each named, in the order of the file (an outer one after inner ones).
    [map(`  alpha:\n    current_master: a1\n    slots:\n      a1: ${slot(10143)}\n      a1: ${slot(10144)}\n      a1: ${slot(10145)}\nstores: {}\n`), [twice(6, 7), twice(7, 7), twice(8, 1)]],
  ];
  for (const [text, expected] of cases) assert.deepEqual(problems('stores.yaml', text, (f) => readStoreMapFile(f)), expected, text);
});

test('config file: a key given twice is refused the same way, at any depth', () => {
  const listener = '  - { name: imap, protocol: imap, host: 127.0.0.1, port: 1143, tls: none, plaintext_without_tls: true }\n';
  const rest = 'directory: { urls: [ldap://127.0.0.1], bind_dn: cn=x, bind_password: x, base_dn: dc=x }\nstore_map: { file: stores.yaml, watch: false }\n';
  assert.deepEqual(problems('top.yaml', `listeners:\n${listener}${rest}listeners: []\n`, loadConfig), [twice(5, 1)]);
  assert.deepEqual(problems('nested.yaml', `listeners:\n${listener}${rest}health:\n  interval_ms: 1000\n  interval_ms: 2000\n`, loadConfig), [twice(7, 3)]);
  assert.deepEqual(problems('in-list.yaml', `listeners:\n  - { name: imap, name: pop3, protocol: imap, host: 127.0.0.1, port: 1143, tls: none, plaintext_without_tls: true }\n${rest}`, loadConfig), [twice(2, 19)]);
});

test('keys that differ are no duplicates: by case, or the same key in two mappings', () => {
  const file = join(dir, 'distinct.yaml');
  writeFileSync(file, `stores:\n  alpha:\n    current_master: a1\n    slots:\n      a1: ${slot(10143)}\n      A1: ${slot(10144)}\n  beta:\n    current_master: a1\n    slots:\n      a1: ${slot(10145)}\n`);
  assert.ok(readStoreMapFile(file));
});
