// scripts/bootstrap.sh as a normal user with Debian packages missing (a dpkg-query on PATH that
// reports them missing; nothing is installed): what it prints must install them with the same
// protections a root run has, never a bare `apt-get install` that leaves Debian's daemons running
// on their default ports and enabled at boot. Without stdin and with CI=true it never prompts.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';

const BOOTSTRAP_SOURCE = join(dirname(fileURLToPath(import.meta.url)), '../../../scripts/bootstrap.sh');

/**
 * A copy of the script in a checkout of its own that every user can read: the real one may be
 * under /root, where a CI clones, and out of a normal user's reach. Its node_modules is up to
 * date, so step 1 has nothing to do.
 */
function bootstrapCopy(dir: string): string {
  const repo = join(dir, 'repo');
  mkdirSync(join(repo, 'scripts'), { recursive: true });
  mkdirSync(join(repo, 'node_modules'));
  writeFileSync(join(repo, 'package-lock.json'), '{}\n');
  writeFileSync(join(repo, 'node_modules', '.package-lock.json'), '{}\n');
  const past = new Date(Date.now() - 60_000);
  utimesSync(join(repo, 'package-lock.json'), past, past);
  copyFileSync(BOOTSTRAP_SOURCE, join(repo, 'scripts', 'bootstrap.sh'));
  for (const path of [repo, join(repo, 'scripts'), join(repo, 'node_modules')]) chmodSync(path, 0o755);
  return join(repo, 'scripts', 'bootstrap.sh');
}
const NOBODY = 65534;

/** A folder of fake commands: dpkg-query says every package is missing; apt-get records how it was run. */
function fakeTools(): { dir: string; log: string } {
  const dir = mkdtempSync(join(tmpdir(), 'mf-bootstrap-'));
  chmodSync(dir, 0o755);
  const log = join(dir, 'apt.log');
  const tool = (name: string, body: string): void => {
    writeFileSync(join(dir, name), `#!/bin/sh\n${body}\n`);
    chmodSync(join(dir, name), 0o755);
  };
  tool('dpkg-query', 'printf not-installed; exit 1');
  // What keeps Debian's daemons from starting as they install: policy-rc.d refusing, no debconf prompt.
  tool('apt-get', `[ "$1" = install ] && { p=none; [ -x /usr/sbin/policy-rc.d ] && { /usr/sbin/policy-rc.d x start; p=$?; }; echo "install frontend=$DEBIAN_FRONTEND policy-rc.d=$p" >>${JSON.stringify(log)}; }; exit 0`);
  for (const name of ['systemctl', 'update-rc.d']) tool(name, 'exit 0');
  return { dir, log };
}

test('bootstrap as a normal user with packages missing prints a command that installs them with policy-rc.d and without prompts, and exits 1', { skip: process.getuid?.() !== 0 && 'needs root to run the script as another user and the printed command as root' }, () => {
  const fake = fakeTools();
  try {
    const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${fake.dir}:${process.env['PATH'] ?? ''}`, CI: 'true', npm_lifecycle_event: 'test' };
    delete env['DEBIAN_FRONTEND'];
    const bootstrap = bootstrapCopy(fake.dir);
    const asUser = spawnSync('bash', [bootstrap], { env, uid: NOBODY, gid: NOBODY, stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8', timeout: 60_000 });
    assert.equal(asUser.status, 1, asUser.stderr);
    // The package list stays visible for those who install by hand, with what they must do too.
    assert.match(asUser.stderr, /missing Debian packages: slapd ldap-utils dovecot-imapd .* python3\n/);
    assert.match(asUser.stderr, /by hand, as root: .*policy-rc\.d.*DEBIAN_FRONTEND=noninteractive apt-get install -y slapd .*systemctl disable slapd dovecot redis-server haproxy prometheus/);
    assert.match(asUser.stderr, /then run sudo npm test/);
    const printed = asUser.stdout.trim().split('\n');
    assert.equal(printed.length, 1, asUser.stdout);
    assert.match(printed[0]!, /^sudo /);
    // Run as printed (sudo is who we are already): the install happens with the protections on.
    const asRoot = spawnSync('bash', ['-c', printed[0]!.replace(/^sudo /, '').replaceAll('sudo ', '')], { env, stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8', timeout: 60_000 });
    assert.equal(asRoot.status, 0, asRoot.stderr);
    assert.deepEqual(readFileSync(fake.log, 'utf8').trim().split('\n'), ['install frontend=noninteractive policy-rc.d=101']);
  } finally {
    rmSync(fake.dir, { recursive: true, force: true });
  }
});
