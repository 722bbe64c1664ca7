/**
 * A git ref of this repository built into a temporary worktree, for bench:compare
 * (bench/compare.ts): the worktree shares this checkout's node_modules and is removed again.
 */
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface BuiltRef {
  /** The build's CLI (dist/src/cli/main.js). */
  readonly main: string;
  /** The ref as given, with its commit. */
  readonly label: string;
  /** Removes the worktree (idempotent). */
  remove(): void;
}

/** Removes `dir`, a worktree of `repoRoot` or what is left of one; returns a remover that runs once. */
export function worktreeRemover(repoRoot: string, dir: string): () => void {
  let removed = false;
  return (): void => {
    if (removed) return;
    removed = true;
    try {
      execFileSync('git', ['-C', repoRoot, 'worktree', 'remove', '--force', dir], { stdio: 'ignore' });
    } catch {
      // Not registered yet, or already gone: the directory is removed below either way.
    }
    rmSync(dir, { recursive: true, force: true });
  };
}

/** Runs `remove` however this process ends: at exit, and on SIGINT or SIGTERM. */
export function removeAtEnd(remove: () => void): void {
  process.once('exit', remove);
  // On SIGINT/SIGTERM 'exit' never fires: the server harness (test/integration/servers/process.ts)
  // kills its daemons and dies of the signal raised again. So remove first, then raise it again:
  // the harness's handler, which acts only when no other listener is left, then does its part,
  // and the process dies of the signal as it would have.
  for (const sig of ['SIGINT', 'SIGTERM'] as const) {
    const onSignal = (): void => {
      process.removeListener(sig, onSignal);
      remove();
      process.kill(process.pid, sig);
    };
    process.on(sig, onSignal);
  }
}

/** Builds `gitRef` of `repoRoot` into a temporary worktree. */
export function buildRef(repoRoot: string, gitRef: string, say: (text: string) => void): BuiltRef {
  const commit = execFileSync('git', ['-C', repoRoot, 'rev-parse', '--short', `${gitRef}^{commit}`], { encoding: 'utf8' }).trim();
  const dir = mkdtempSync(join(tmpdir(), 'mailfront-compare-'));
  const remove = worktreeRemover(repoRoot, dir);
  removeAtEnd(remove);
  try {
    execFileSync('git', ['-C', repoRoot, 'worktree', 'add', '--detach', '--force', dir, commit], { stdio: 'ignore' });
    symlinkSync(join(repoRoot, 'node_modules'), join(dir, 'node_modules'), 'dir');
    say(`building ${gitRef} (${commit}) in ${dir}`);
    execFileSync(process.execPath, [join(repoRoot, 'node_modules/typescript/bin/tsc'), '-p', join(dir, 'tsconfig.json')], { stdio: 'inherit' });
    const main = join(dir, 'dist/src/cli/main.js');
    if (!existsSync(main)) throw new Error(`${gitRef}: no dist/src/cli/main.js after the build`);
    return { main, label: gitRef === commit ? commit : `${gitRef} (${commit})`, remove };
  } catch (error) {
    remove();
    throw error;
  }
}
