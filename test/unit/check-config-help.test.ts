// `mailfront check-config --help` says what the command reads besides FILE, as the README does:
// the listeners' certificates and keys, the store map, and every CA file (a CA file that cannot be
// read fails the check as a certificate does).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';

const CLI = join(dirname(fileURLToPath(import.meta.url)), '../../src/cli/main.js');

test('check-config --help names the CA files among what it reads', () => {
  const help = spawnSync(process.execPath, [CLI, 'check-config', '--help'], { encoding: 'utf8', timeout: 30_000 });
  assert.equal(help.status, 0, help.stderr);
  const text = help.stdout.replace(/\s+/g, ' ');
  assert.match(text, /certificate and key/);
  assert.match(text, /reads the store map/);
  assert.match(text, /every CA file FILE and the store map name/);
});
