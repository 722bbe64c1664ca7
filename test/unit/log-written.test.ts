// logWritten(), the end of a stop, on a stdout that is a pipe, a socket or a terminal: SonicBoom
// ends its flush with an fsync, which those refuse (EINVAL) once the lines are written. That is no
// write failure: lines logged while the flush went on are not given up, and nothing is said on
// stderr. A file of its own: a give-up drops the process's pending lines for good.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { test } from 'node:test';
import { createLogger, logWritten } from '../../src/log.js';

test("a flush whose fsync stdout refuses (EINVAL: a pipe) is no write failure: the lines logged meanwhile are kept, and stderr says nothing", async () => {
  const original = { write: fs.write, fsync: fs.fsync, writeSync: fs.writeSync };
  const written: string[] = [];
  const said: string[] = [];
  // stdout's writes take 20 ms, so that a line logged after the flush began is still pending at its fsync.
  (fs as unknown as { write: unknown }).write = (fd: number, data: string | Uint8Array, ...rest: unknown[]): void => {
    if (fd !== 1) return void (original.write as unknown as (...args: unknown[]) => void)(fd, data, ...rest);
    const done = rest.at(-1) as (error: Error | null, n: number) => void;
    const text = typeof data === 'string' ? data : Buffer.from(data).toString();
    setTimeout(() => {
      written.push(text);
      done(null, Buffer.byteLength(text));
    }, 20);
  };
  (fs as unknown as { fsync: unknown }).fsync = (fd: number, done: (error: Error | null) => void): void => {
    if (fd !== 1) return void original.fsync(fd, done);
    process.nextTick(done, Object.assign(new Error('EINVAL: invalid argument, fsync'), { code: 'EINVAL' }));
  };
  (fs as unknown as { writeSync: unknown }).writeSync = (fd: number, ...rest: unknown[]): number => {
    if (fd === 2) return said.push(String(rest[0]));
    if (fd === 1) return written.push(String(rest[0]));
    return (original.writeSync as unknown as (...args: unknown[]) => number)(fd, ...rest);
  };
  syncBuiltinESMExports();
  try {
    const log = createLogger('info');
    log.info({ event: 'test.before' }, 'a line before the stop');
    const done = logWritten(log, 5_000);
    log.info({ event: 'test.during' }, 'a line while the flush goes on');
    await done;
    assert.deepEqual(said, [], 'nothing said on stderr');
    // What the exit would write (pino's flushSync at exit, which a give-up turns off).
    log.flush();
    await new Promise((resolve) => setTimeout(resolve, 100));
    const text = written.join('');
    assert.match(text, /"event":"test\.before"/);
    assert.match(text, /"event":"test\.during"/, 'the line logged meanwhile is written');
  } finally {
    (fs as unknown as { write: unknown }).write = original.write;
    (fs as unknown as { fsync: unknown }).fsync = original.fsync;
    (fs as unknown as { writeSync: unknown }).writeSync = original.writeSync;
    syncBuiltinESMExports();
  }
});
