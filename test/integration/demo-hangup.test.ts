// `npm run demo` in a terminal that is closed: the hangup (SIGHUP to the terminal's foreground
// process group) must stop everything the demo started, as Ctrl-C does. mailfront and Dovecot
// take SIGHUP as a reload: left to themselves they ran on, on the demo's ports, once the demo's
// own process had died of the signal. The demo runs under script(1), in a pseudo-terminal of its
// own, and the terminal is closed by killing script (its end of the pseudo-terminal closes).
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { descendantsOf, waitGone, type ProcessIdentity } from './servers/index.js';

const DEMO = join(dirname(fileURLToPath(import.meta.url)), '../../scripts/demo.js');

/** The start time of a live process (field 22 of /proc/PID/stat), to tell a reused PID apart. */
function startTime(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return fields[0] === 'Z' ? undefined : fields[19];
  } catch {
    return undefined;
  }
}

test('closing the terminal of `npm run demo` stops mailfront, the Dovecots and slapd', { timeout: 120_000 }, async () => {
  const sandbox = mkdtempSync(join(tmpdir(), 'mf-demo-hup-'));
  const command = `exec ${process.execPath} --enable-source-maps ${DEMO}`;
  const script = spawn('script', ['-qfec', command, '/dev/null'], {
    detached: true,
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, MAILFRONT_DEMO_SANDBOX: sandbox, PATH: `${process.env['PATH'] ?? ''}:/usr/sbin:/sbin` },
  });
  let output = '';
  script.stdout.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
  script.stderr.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
  let started: ProcessIdentity[] = [];
  try {
    const deadline = Date.now() + 90_000;
    while (!/Press Ctrl-C/.test(output)) {
      assert.ok(Date.now() < deadline && script.exitCode === null, `the demo did not start:\n${output}`);
      await sleep(100);
    }
    const mailfrontPid = Number(/mailfront PID (\d+)/.exec(output)?.[1]);
    started = descendantsOf(script.pid!);
    const commands = started.map((p) => readFileSync(`/proc/${p.pid}/cmdline`, 'utf8').replace(/\0/g, ' '));
    assert.ok(started.some((p) => p.pid === mailfrontPid), `mailfront (PID ${mailfrontPid}) runs under the demo`);
    assert.equal(commands.filter((c) => /^\/usr\/sbin\/dovecot /.test(c)).length, 4, commands.join('\n'));
    assert.equal(commands.filter((c) => /^\/usr\/sbin\/slapd /.test(c)).length, 1, commands.join('\n'));

    // The terminal closes: the kernel sends SIGHUP to the demo and every process of its group.
    script.kill('SIGKILL');
    const left = await waitGone(
      started.map((p) => p.pid),
      30_000,
    );
    const leftCommands = left.filter((pid) => started.some((p) => p.pid === pid && startTime(pid) === p.startTime)).map((pid) => `${pid}: ${readFileSync(`/proc/${pid}/cmdline`, 'utf8').replace(/\0/g, ' ')}`);
    assert.deepEqual(leftCommands, [], 'nothing the demo started runs on after the hangup');
  } finally {
    if (script.exitCode === null && script.signalCode === null) script.kill('SIGKILL');
    for (const p of started) {
      if (startTime(p.pid) === p.startTime) {
        try {
          process.kill(p.pid, 'SIGKILL');
        } catch {
          // gone meanwhile
        }
      }
    }
    rmSync(sandbox, { recursive: true, force: true });
  }
});
