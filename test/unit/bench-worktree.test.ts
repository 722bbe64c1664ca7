import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const WORKTREE_JS = fileURLToPath(new URL('../../bench/worktree.js', import.meta.url));
const SERVERS_JS = fileURLToPath(new URL('../integration/servers/process.js', import.meta.url));

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * A process like bench:compare: a remover registered with removeAtEnd, then a daemon started
 * through the server harness (which installs its own SIGINT/SIGTERM handler), then the signal.
 */
async function interrupted(signal: 'SIGINT' | 'SIGTERM'): Promise<{ removed: boolean; signal: NodeJS.Signals | null; daemonPid: number }> {
  const dir = mkdtempSync(join(tmpdir(), 'bench-worktree-test-'));
  try {
    const marker = join(dir, 'removed');
    const script = join(dir, 'child.mjs');
    writeFileSync(
      script,
      `import { writeFileSync } from 'node:fs';
import { removeAtEnd } from ${JSON.stringify(WORKTREE_JS)};
import { spawnDaemon } from ${JSON.stringify(SERVERS_JS)};
removeAtEnd(() => writeFileSync(${JSON.stringify(marker)}, 'yes'));
const d = spawnDaemon({ name: 'sleep', command: '/bin/sleep', args: ['30'], logFile: ${JSON.stringify(join(dir, 'sleep.log'))} });
writeFileSync(${JSON.stringify(join(dir, 'pid'))}, String(d.pid));
setTimeout(() => process.kill(process.pid, ${JSON.stringify(signal)}), 200);
setTimeout(() => undefined, 10_000);
`,
    );
    const child = spawn(process.execPath, [script], { stdio: 'ignore' });
    const exit = await new Promise<NodeJS.Signals | null>((resolve) => child.on('exit', (_code, sig) => resolve(sig)));
    const daemonPid = Number(readFileSync(join(dir, 'pid'), 'utf8'));
    return { removed: existsSync(marker), signal: exit, daemonPid };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

for (const signal of ['SIGINT', 'SIGTERM'] as const) {
  test(`bench:compare's worktree is removed on ${signal}, and the harness still stops its daemons and the process dies of the signal`, { timeout: 20_000 }, async () => {
    const r = await interrupted(signal);
    assert.equal(r.removed, true, 'the remover ran');
    assert.equal(r.signal, signal);
    assert.ok(r.daemonPid > 0);
    // The harness SIGKILLs its daemons before it raises the signal again.
    for (let i = 0; i < 50 && alive(r.daemonPid); i++) await new Promise((resolve) => setTimeout(resolve, 100));
    assert.equal(alive(r.daemonPid), false, `the daemon ${r.daemonPid} was stopped`);
  });
}
