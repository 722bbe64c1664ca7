// logWritten(), the end of a stop, on a stdout that is a pipe, a socket or a terminal: SonicBoom
// ends its flush with an fsync, which those refuse (EINVAL) once the lines are written. That is no
// write failure: lines logged while the flush went on are not given up, and nothing is said on
// stderr. A file of its own: a give-up drops the process's pending lines for good.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createLogger, logWritten } from '../../src/log.js';
import { standInForStdio } from './stdio-stand-ins.js';

test("a flush whose fsync stdout refuses (EINVAL: a pipe) is no write failure: the lines logged meanwhile are kept, and stderr says nothing", async () => {
  const written: string[] = [];
  const said: string[] = [];
  const restore = standInForStdio({
    // stdout's writes take 20 ms, so that a line logged after the flush began is still pending at its fsync.
    write: (text, done) =>
      setTimeout(() => {
        written.push(text);
        done(null);
      }, 20),
    fsync: (done) => process.nextTick(done, Object.assign(new Error('EINVAL: invalid argument, fsync'), { code: 'EINVAL' })),
    writeSync: (fd, text) => (fd === 2 ? said.push(text) : written.push(text)),
  });
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
    restore();
  }
});
