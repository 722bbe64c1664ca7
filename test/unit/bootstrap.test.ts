// scripts/bootstrap.sh as a normal user with Debian packages missing (a dpkg-query on PATH that
// reports them missing; nothing is installed): what it prints must install them with the same
// protections a root run has, never a bare `apt-get install` that leaves Debian's daemons running
// on their default ports and enabled at boot. Without stdin and with CI=true it never prompts.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
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

/**
 * A folder of fake commands: dpkg-query says every package is missing (or, `installed`, that
 * every one is there); apt-get records how it was run, and each call's arguments in `calls`.
 */
function fakeTools(installed = false): { dir: string; log: string; calls: string } {
  const dir = mkdtempSync(join(tmpdir(), 'mf-bootstrap-'));
  chmodSync(dir, 0o755);
  const log = join(dir, 'apt.log');
  const calls = join(dir, 'apt-calls.log');
  const tool = (name: string, body: string): void => {
    writeFileSync(join(dir, name), `#!/bin/sh\n${body}\n`);
    chmodSync(join(dir, name), 0o755);
  };
  tool('dpkg-query', installed ? 'printf installed' : 'printf not-installed; exit 1');
  // What keeps Debian's daemons from starting as they install: policy-rc.d refusing, no debconf prompt.
  tool('apt-get', `echo "$*" >>${JSON.stringify(calls)}; [ "$1" = install ] && { p=none; [ -x /usr/sbin/policy-rc.d ] && { /usr/sbin/policy-rc.d x start; p=$?; }; echo "install frontend=$DEBIAN_FRONTEND policy-rc.d=$p" >>${JSON.stringify(log)}; }; exit 0`);
  for (const name of ['systemctl', 'update-rc.d']) tool(name, 'exit 0');
  return { dir, log, calls };
}

/** What `npm run demo` uses: slapd (loaded with ldapmodify), Dovecot for IMAP and POP3, openssl, python3. */
const DEMO_PACKAGES = 'slapd ldap-utils dovecot-imapd dovecot-pop3d openssl python3';

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

test('bootstrap --demo as a normal user with packages missing lists the demo\'s packages only, and prints the --demo command that installs them as a root run does', { skip: process.getuid?.() !== 0 && 'needs root to run the script as another user and the printed command as root' }, () => {
  const fake = fakeTools();
  try {
    const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${fake.dir}:${process.env['PATH'] ?? ''}`, CI: 'true', npm_lifecycle_event: 'demo' };
    delete env['DEBIAN_FRONTEND'];
    const bootstrap = bootstrapCopy(fake.dir);
    const asUser = spawnSync('bash', [bootstrap, '--demo'], { env, uid: NOBODY, gid: NOBODY, stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8', timeout: 60_000 });
    assert.equal(asUser.status, 1, asUser.stderr);
    // No redis-server, haproxy, prometheus, sieve-connect, systemd nor Cyrus' libraries: the demo runs none.
    assert.match(asUser.stderr, new RegExp(`missing Debian packages: ${DEMO_PACKAGES}\n`));
    assert.match(asUser.stderr, new RegExp(`by hand, as root: .*policy-rc\\.d.*DEBIAN_FRONTEND=noninteractive apt-get install -y ${DEMO_PACKAGES}, then systemctl disable slapd dovecot\n`));
    assert.match(asUser.stderr, /then run sudo npm run demo/);
    const printed = asUser.stdout.trim().split('\n');
    assert.equal(printed.length, 1, asUser.stdout);
    assert.match(printed[0]!, /^sudo bash \S+\/scripts\/bootstrap\.sh --demo --packages-only$/);
    const asRoot = spawnSync('bash', ['-c', printed[0]!.replace(/^sudo /, '')], { env, stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8', timeout: 60_000 });
    assert.equal(asRoot.status, 0, asRoot.stderr);
    assert.deepEqual(readFileSync(fake.log, 'utf8').trim().split('\n'), ['install frontend=noninteractive policy-rc.d=101']);
    const installs = readFileSync(fake.calls, 'utf8').trim().split('\n').filter((call) => call.startsWith('install '));
    assert.deepEqual(installs, [`install -y -q -o DPkg::Lock::Timeout=300 ${DEMO_PACKAGES}`]);
  } finally {
    rmSync(fake.dir, { recursive: true, force: true });
  }
});

test('bootstrap --demo as root with the demo\'s packages in place fetches no Cyrus and ends there', { skip: process.getuid?.() !== 0 && 'the script runs as root here (a normal user is told to use sudo)' }, () => {
  const fake = fakeTools(true);
  try {
    const env: NodeJS.ProcessEnv = { ...process.env, PATH: `${fake.dir}:${process.env['PATH'] ?? ''}`, CI: 'true' };
    const bootstrap = bootstrapCopy(fake.dir);
    const run = spawnSync('bash', [bootstrap, '--demo'], { env, stdio: ['ignore', 'pipe', 'pipe'], encoding: 'utf8', timeout: 60_000 });
    assert.equal(run.status, 0, run.stderr);
    assert.doesNotMatch(run.stderr, /Cyrus/);
    assert.equal(existsSync(fake.calls), false, `apt-get was run: ${existsSync(fake.calls) ? readFileSync(fake.calls, 'utf8') : ''}`);
    assert.equal(existsSync(join(dirname(dirname(bootstrap)), '.cache')), false, 'nothing unpacked');
  } finally {
    rmSync(fake.dir, { recursive: true, force: true });
  }
});
