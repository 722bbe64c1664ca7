/**
 * Stand-ins for the file calls src/log.ts writes stdout and stderr through, for a test's time:
 * fs.write and fs.fsync on stdout (SonicBoom looks them up at each call) and fs.writeSync on
 * stdout and stderr (what pino's exit flush and log.ts's notices use; log.ts imports writeSync by
 * name, so the module's named exports are synced). Other descriptors, and calls given no
 * stand-in, go to the real ones. Without them the lines would land in the test runner's output.
 */
import fs from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';

export interface StdioStandIns {
  /** An asynchronous write to stdout, its bytes as text: `done(null)` when written (all of it), or with the error. */
  readonly write?: (text: string, done: (error: Error | null) => void) => void;
  /** An fsync of stdout. */
  readonly fsync?: (done: (error: Error | null) => void) => void;
  /** A synchronous write to stdout (1) or stderr (2); what it returns is the call's. */
  readonly writeSync?: (fd: 1 | 2, text: string) => number;
}

type Callback = (...args: unknown[]) => unknown;

/** Puts `standIns` in place; the returned function puts the real calls back. */
export function standInForStdio(standIns: StdioStandIns): () => void {
  const original = { write: fs.write, fsync: fs.fsync, writeSync: fs.writeSync };
  const calls = fs as unknown as Record<'write' | 'fsync' | 'writeSync', unknown>;
  const text = (data: unknown): string => (typeof data === 'string' ? data : Buffer.from(data as Uint8Array).toString());
  const { write, fsync, writeSync } = standIns;
  if (write !== undefined) {
    calls.write = (fd: number, data: string | Uint8Array, ...rest: unknown[]): void => {
      if (fd !== 1) return void (original.write as unknown as Callback)(fd, data, ...rest);
      const done = rest.at(-1) as (error: Error | null, written: number) => void;
      const bytes = typeof data === 'string' ? Buffer.byteLength(data) : data.byteLength;
      write(text(data), (error) => done(error, error === null ? bytes : 0));
    };
  }
  if (fsync !== undefined) {
    calls.fsync = (fd: number, done: (error: Error | null) => void): void => (fd === 1 ? fsync(done) : original.fsync(fd, done));
  }
  if (writeSync !== undefined) {
    calls.writeSync = (fd: number, data: unknown, ...rest: unknown[]): number => (fd === 1 || fd === 2 ? writeSync(fd, text(data)) : ((original.writeSync as unknown as Callback)(fd, data, ...rest) as number));
  }
  syncBuiltinESMExports();
  return () => {
    Object.assign(calls, original);
    syncBuiltinESMExports();
  };
}
