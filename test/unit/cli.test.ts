// The `mailfront` command line run as the command it is, without a running instance: exit codes,
// usage errors, and what the operator commands read of the config file.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { test } from 'node:test';

const CLI = join(dirname(fileURLToPath(import.meta.url)), '../../src/cli/main.js');

interface Run {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs the CLI with `args`; `closeStdout`: the reader of its output goes away at once (`| head -0`). */
function cli(args: readonly string[], options: { closeStdout?: boolean; env?: NodeJS.ProcessEnv } = {}): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [CLI, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: options.env ?? process.env, timeout: 30_000 });
    let stdout = '';
    let stderr = '';
    if (options.closeStdout) child.stdout.destroy();
    else child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    child.on('close', (code) => resolve({ code, stdout, stderr }));
  });
}

test('output to a reader that has gone (| head, | grep -q) ends the command quietly with its own exit code', async () => {
  const help = await cli(['--help'], { closeStdout: true });
  assert.equal(help.stderr, '');
  assert.equal(help.code, 0);
  const version = await cli(['stores', '--version'], { closeStdout: true });
  assert.equal(version.stderr, '');
  assert.equal(version.code, 0);
});
