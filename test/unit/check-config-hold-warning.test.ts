// `mailfront check-config` warns (exit 0) when failover.hold_ms is not below
// session.preauth_timeout_ms: a login held for a master that is down is then always cut by the
// pre-auth deadline, which runs from accept, and never by its hold (the support-desk review's
// deadline repro: 10 s beside the default 15 s, nothing checked one against the other).
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
  dir = await mkdtemp(join(tmpdir(), 'mf-check-hold-'));
  await writeFile(join(dir, 'stores.yaml'), 'stores:\n  a:\n    current_master: a1\n    slots:\n      a1: { host: 127.0.0.1, imap_port: 2001 }\n');
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** check-config on a config with these `session` and `failover` sections (YAML flow mappings, or '' for none). */
async function check(name: string, session: string, failover: string): Promise<{ code: number; stdout: string; stderr: string }> {
  const file = join(dir, `${name}.yaml`);
  await writeFile(
    file,
    `listeners:\n  - { name: imap, protocol: imap, host: 127.0.0.1, port: 1143, plaintext_without_tls: true }\ndirectory: { urls: [ldap://127.0.0.1], bind_dn: cn=x, bind_password: x, base_dn: dc=x }\nstore_map: { file: stores.yaml, watch: false }\n${session === '' ? '' : `session: ${session}\n`}${failover === '' ? '' : `failover: ${failover}\n`}`,
  );
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, 'check-config', file], { timeout: 30_000 }, (error, stdout, stderr) => {
      resolve({ code: error === null ? 0 : typeof error.code === 'number' ? error.code : -1, stdout, stderr });
    });
  });
}

test('check-config warns when failover.hold_ms is not below session.preauth_timeout_ms, and the config stays valid', async () => {
  const shorter = await check('shorter', '{ preauth_timeout_ms: 10000 }', '');
  assert.equal(shorter.code, 0, shorter.stderr);
  assert.match(shorter.stdout, /: OK \(1 listeners, 1 stores, 1 slots from [^\n]*\n(?:directory: no server answered [^\n]*\n)?warning: failover\.hold_ms \(15000\) is not below session\.preauth_timeout_ms \(10000\): a login held for a master that is down is cut by the pre-auth deadline, [^\n]*\n$/);
  const equal = await check('equal', '{ preauth_timeout_ms: 20000 }', '{ hold_ms: 20000 }');
  assert.equal(equal.code, 0, equal.stderr);
  assert.match(equal.stdout, /\nwarning: failover\.hold_ms \(20000\) is not below session\.preauth_timeout_ms \(20000\)/);
});

test('check-config says nothing of it with the defaults (15 s within 60 s) or a hold below the deadline', async () => {
  for (const [name, session, failover] of [['defaults', '', ''], ['below', '{ preauth_timeout_ms: 10000 }', '{ hold_ms: 9999 }']] as const) {
    const result = await check(name, session, failover);
    assert.equal(result.code, 0, result.stderr);
    // (The directory, which this config names on a port nothing listens on, is noted, not warned of.)
    assert.match(result.stdout, /: OK \(1 listeners, 1 stores, 1 slots from [^\n]*\n(?:directory: no server answered [^\n]*\n)?$/);
    assert.doesNotMatch(result.stdout, /warning/);
  }
});
