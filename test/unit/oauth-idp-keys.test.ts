/**
 * The IdP stand-in's keys (test/integration/oauth-idp.ts makeKey()) can be exported and used at
 * once without deadlocking the process. A key object straight from generateKeyPairSync() shares a
 * lock with the job that made it, and Node 20's export of an EC key holds that lock while it
 * allocates: a garbage collection there frees the job, whose destructor takes the same lock, and
 * the main thread sleeps for good. oauth-verify hung so while making its JWKS at its start, until
 * the runner's 300 s timeout. Here, in a process of its own (a deadlock would take this one with
 * it), 400 keys each exported 100 times as a JWK, as the stand-in's JWKS does for every request,
 * with new space kept at 1 MiB so that collections come often: with the keys as
 * generateKeyPairSync() returned them, the process stopped after 5 to 48 keys (8 runs of 8); it
 * takes well under a second.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';

const KEYS = 400;
const EXPORTS_PER_KEY = 100;
/** No new key for this long: the process is stuck (it makes one in about a millisecond, a hundred times that on a busy machine). */
const STALL_MS = 10_000;

/** The state of process `pid` (R running, S asleep, ...) and its main thread's wait channel, for the failure message. */
function stateOf(pid: number): string {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return `state ${stat.slice(stat.lastIndexOf(')') + 2).split(' ')[0] ?? '?'}, wchan ${readFileSync(`/proc/${pid}/wchan`, 'utf8') || '-'}`;
  } catch {
    return 'gone';
  }
}

test(`${KEYS} EC keys of the IdP stand-in, each exported ${EXPORTS_PER_KEY} times as a JWK at once, do not deadlock the process`, { timeout: 120_000 }, async () => {
  const idp = new URL('../integration/oauth-idp.js', import.meta.url).href;
  const script = `
    import { writeSync } from 'node:fs';
    import { makeKey, publicJwk } from ${JSON.stringify(idp)};
    for (let i = 1; i <= ${KEYS}; i++) {
      const key = makeKey('k' + i, i % 2 === 0 ? 'ES256' : 'ES384');
      for (let j = 0; j < ${EXPORTS_PER_KEY}; j++) publicJwk(key);
      writeSync(1, i + '\\n');
    }`;
  // Young collections every megabyte or so: the lock is held for a small share of the allocations.
  const child = spawn(process.execPath, ['--max-semi-space-size=1', '--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
  let made = 0;
  let stderr = '';
  let lastProgressAt = Date.now();
  child.stdout.setEncoding('utf8').on('data', (chunk: string) => {
    const last = chunk.trim().split('\n').pop();
    if (last !== undefined && last !== '') made = Number(last);
    lastProgressAt = Date.now();
  });
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const stalled = new Promise<string>((resolve) => {
    const timer = setInterval(() => {
      if (Date.now() - lastProgressAt < STALL_MS) return;
      clearInterval(timer);
      resolve(stateOf(child.pid!));
    }, 250);
    void exited.then(() => clearInterval(timer));
  });
  const outcome = await Promise.race([exited.then((code) => ({ code })), stalled.then((state) => ({ state }))]);
  if ('state' in outcome) {
    child.kill('SIGKILL');
    await exited;
    assert.fail(`no key made for ${STALL_MS} ms after ${made} of ${KEYS} (${outcome.state}): the process is stuck, as in a deadlock on the key's lock`);
  }
  assert.equal(outcome.code, 0, stderr);
  assert.equal(made, KEYS);
});
