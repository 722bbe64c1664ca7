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

/** Runs `remove` however this process ends. */
export function removeAtEnd(remove: () => void): void {
  // Also on an interrupted run (the server harness stops its daemons on SIGINT/SIGTERM itself).
  process.once('exit', remove);
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
