// Temporary directories for server instances; removed on stop (and at process exit as a safety net).
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface TmpDir {
  readonly path: string;
  /** Removes the directory and everything in it. Idempotent. */
  remove(): Promise<void>;
}

const live = new Set<string>();
let exitHookInstalled = false;

/** Set MAILFRONT_KEEP_TMP=1 to keep server directories (configs, logs) for debugging. */
export const keepTmp = process.env['MAILFRONT_KEEP_TMP'] === '1';

/** Removes every directory tmpDir() made that is still there (synchronous; used at exit). */
export function removeAllTmpDirsSync(): void {
  if (keepTmp) return;
  for (const dir of live) {
    try {
      rmSync(dir, { recursive: true, force: true });
    } catch {
      // best effort at exit
    }
  }
  live.clear();
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', removeAllTmpDirsSync);
}

/** Creates `os.tmpdir()/mailfront-<prefix>-XXXXXX`, mode 0755 so unprivileged daemon users can traverse it. */
export function tmpDir(prefix: string): TmpDir {
  installExitHook();
  const path = mkdtempSync(join(tmpdir(), `mailfront-${prefix}-`));
  chmodSync(path, 0o755);
  live.add(path);
  let removed = false;
  return {
    path,
    async remove(): Promise<void> {
      if (removed) return;
      removed = true;
      live.delete(path);
      if (keepTmp) {
        process.stderr.write(`harness: keeping ${path} (MAILFRONT_KEEP_TMP=1)\n`);
        return;
      }
      await rm(path, { recursive: true, force: true, maxRetries: 3, retryDelay: 50 });
    },
  };
}
