// The README's install steps for the systemd unit, run as written (against a folder standing in
// for /, with an `npm` that names the global prefix): the unit must find /usr/bin/mailfront
// working, whatever prefix npm has.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, realpathSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';

const README = readFileSync(join(dirname(fileURLToPath(import.meta.url)), '../../../README.md'), 'utf8');

/** The README's line that puts mailfront where the unit looks for it. */
const LINK_LINE = README.split('\n').find((l) => l.includes('ln -sf') && l.includes('/usr/bin/mailfront'))?.trim();

/** Runs the line with npm's global prefix at `<root><prefix>`, as npm install -g left it; answers what <root>/usr/bin/mailfront runs. */
function install(prefix: string): string {
  const root = mkdtempSync(join(tmpdir(), 'mf-readme-install-'));
  try {
    const npmRoot = join(root, prefix);
    const main = join(npmRoot, 'lib/node_modules/mailfront/dist/src/cli/main.js');
    mkdirSync(dirname(main), { recursive: true });
    writeFileSync(main, '#!/usr/bin/env node\n');
    mkdirSync(join(npmRoot, 'bin'), { recursive: true });
    mkdirSync(join(root, 'usr/bin'), { recursive: true });
    // npm's own link, relative as npm writes it.
    symlinkSync('../lib/node_modules/mailfront/dist/src/cli/main.js', join(npmRoot, 'bin/mailfront'));
    const fakeBin = join(root, 'fake-bin');
    mkdirSync(fakeBin);
    writeFileSync(join(fakeBin, 'npm'), `#!/bin/sh\n[ "$1 $2" = "prefix -g" ] && echo ${JSON.stringify(npmRoot)}\n`);
    chmodSync(join(fakeBin, 'npm'), 0o755);
    execFileSync('bash', ['-euc', LINK_LINE!.replaceAll('/usr/bin/mailfront', join(root, 'usr/bin/mailfront'))], { env: { ...process.env, PATH: `${fakeBin}:${process.env['PATH'] ?? ''}` } });
    return realpathSync(join(root, 'usr/bin/mailfront')).slice(root.length);
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}

test('the README links /usr/bin/mailfront to npm\'s when npm installs elsewhere, and leaves npm\'s link alone when it is /usr/bin/mailfront', () => {
  assert.ok(LINK_LINE !== undefined, 'the README has a line linking /usr/bin/mailfront');
  assert.equal(install('/usr/local'), '/usr/local/lib/node_modules/mailfront/dist/src/cli/main.js');
  // Debian's nodejs and NodeSource: npm's prefix is /usr, and its link is /usr/bin/mailfront.
  assert.equal(install('/usr'), '/usr/lib/node_modules/mailfront/dist/src/cli/main.js');
});
