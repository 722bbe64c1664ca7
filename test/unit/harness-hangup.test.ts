// The test harness's exit hook (test/integration/servers/process.ts) on a hangup: a terminal
// closed, or an ssh session dropped, under `npm test` or `npm run demo` sends SIGHUP to the whole
// process group. Dovecot and mailfront take it as a reload and run on, so the node process that
// started them must stop them before it dies of the signal, as it does on SIGINT and SIGTERM.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { isAlive, waitGone } from '../integration/servers/process.js';

const PROCESS_MODULE = pathToFileURL(join(dirname(fileURLToPath(import.meta.url)), '../integration/servers/process.js')).href;

/** What the harness's process runs: one daemon that ignores SIGHUP (as a reload would), started with spawnDaemon. */
function harnessScript(logFile: string): string {
  return `
    import { readFileSync } from 'node:fs';
    import { spawnDaemon } from ${JSON.stringify(PROCESS_MODULE)};
    const log = ${JSON.stringify(logFile)};
    const daemon = spawnDaemon({ name: 'hup-ignoring', command: 'sh', args: ['-c', 'trap "" HUP; echo ready; exec sleep 600'], logFile: log });
    // Ready once SIGHUP is ignored: before that, the hangup would end the daemon by itself.
    for (let i = 0; i < 200 && !readFileSync(log, 'utf8').includes('ready'); i++) await new Promise((r) => setTimeout(r, 25));
    process.stdout.write(daemon.pid + '\\n');
    setInterval(() => undefined, 60_000);
  `;
}

/** True when the PID is still the `sleep 600` of this test (not a PID reused since). */
function isOurSleep(pid: number): boolean {
  try {
    return isAlive(pid) && readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ').trim() === 'sleep 600';
  } catch {
    return false;
  }
}

test('a SIGHUP to the process group of a process running the harness stops its daemons, then ends the process by SIGHUP', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'mf-harness-hup-'));
  // Its own process group, as a terminal's foreground job has: the hangup goes to all of it.
  const child = spawn(process.execPath, ['--input-type=module', '-e', harnessScript(join(dir, 'daemon.log'))], { detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
  let daemonPid: number | undefined;
  try {
    const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString('utf8')));
    child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString('utf8')));
    for (let i = 0; i < 400 && !stdout.includes('\n'); i++) await sleep(25);
    daemonPid = Number(stdout.trim());
    assert.ok(Number.isInteger(daemonPid) && daemonPid > 0, `the daemon's PID was printed: ${JSON.stringify(stdout)} ${stderr}`);
    assert.ok(isOurSleep(daemonPid), 'the daemon runs');

    process.kill(-child.pid!, 'SIGHUP');
    const how = await Promise.race([exited, sleep(10_000).then(() => undefined)]);
    assert.deepEqual(how, { code: null, signal: 'SIGHUP' }, `the harness's process ended of the hangup; stderr: ${stderr}`);
    assert.deepEqual(await waitGone([daemonPid], 5_000), [], 'the daemon that ignores SIGHUP was stopped by the harness, not left running');
  } finally {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    if (daemonPid !== undefined && isOurSleep(daemonPid)) process.kill(daemonPid, 'SIGKILL');
    rmSync(dir, { recursive: true, force: true });
  }
});
