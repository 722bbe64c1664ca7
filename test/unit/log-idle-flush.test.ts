// The stdout logger writes a batch of LOG_BATCH_BYTES at once, one that has not filled within
// LOG_FLUSH_INTERVAL_MS then, and nothing when nothing is pending: SonicBoom's own periodic flush wrote nothing (a 0-byte write through
// libuv's thread pool, with its hand-offs) five times a second, on an idle process too.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { LOG_BATCH_BYTES, LOG_FLUSH_INTERVAL_MS, createLogger, logLoss } from '../../src/log.js';
import { standInForStdio } from './stdio-stand-ins.js';

/** Takes stdout's writes for the test's time, each answered as written in the next tick. */
function takeStdoutWrites(writes: string[]): () => void {
  return standInForStdio({
    write: (text, done) => {
      writes.push(text);
      process.nextTick(done, null);
    },
  });
}

test('lines leave in batches of 12 KiB: a full one at once, less waits for the interval', async () => {
  const writes: string[] = [];
  const restore = takeStdoutWrites(writes);
  try {
    const log = createLogger('info');
    // About 300 bytes a line, as a login's session.spliced is: 8 KiB of them stay pending.
    const line = (i: number): void => log.info({ event: 'test.batched', i, padding: 'x'.repeat(200) }, 'a line of a batch');
    let i = 0;
    while (i < 28) line(i++);
    await sleep(LOG_FLUSH_INTERVAL_MS / 4);
    assert.deepEqual(writes, [], 'a batch of 8 KiB written before the interval');
    while (i < 50) line(i++);
    await sleep(10);
    assert.equal(writes.length, 1, 'the full batch is written at once');
    assert.ok(Buffer.byteLength(writes[0]!) >= LOG_BATCH_BYTES, `a batch of ${Buffer.byteLength(writes[0]!)} bytes`);
    await sleep(LOG_FLUSH_INTERVAL_MS * 2.5);
    assert.equal(writes.join('').split('\n').length - 1, 50, 'every line written');
  } finally {
    restore();
  }
});

test('an idle logger writes nothing to stdout, and a line waits at most about one flush interval', async () => {
  const writes: string[] = [];
  const restore = takeStdoutWrites(writes);
  try {
    const log = createLogger('info');
    await sleep(LOG_FLUSH_INTERVAL_MS * 3.5);
    assert.deepEqual(writes, [], 'writes with no line pending');
    log.info({ event: 'test.flushed' }, 'one line, far from a full batch');
    await sleep(LOG_FLUSH_INTERVAL_MS * 2.5);
    assert.equal(writes.length, 1, `one write for the line: ${JSON.stringify(writes)}`);
    assert.match(writes[0]!, /"event":"test\.flushed"/);
    await sleep(LOG_FLUSH_INTERVAL_MS * 2.5);
    assert.equal(writes.length, 1, 'nothing written once the line is out');
  } finally {
    restore();
  }
});

test("stdout's reader gone (EPIPE): the failed batch is not written again at each interval, one write error is counted, and a flush answers at once", async () => {
  let attempts = 0;
  const said: string[] = [];
  const restore = standInForStdio({
    write: (_text, done) => {
      attempts++;
      process.nextTick(done, Object.assign(new Error('EPIPE: broken pipe, write'), { code: 'EPIPE' }));
    },
    // What mailfront says on stderr, kept out of the runner's output.
    writeSync: (_fd, text) => said.push(text),
  });
  const closedBefore = logLoss.writeErrors.closed;
  try {
    const log = createLogger('info');
    log.info({ event: 'test.lost' }, 'a line its reader will never read');
    await sleep(LOG_FLUSH_INTERVAL_MS * 1.5);
    assert.equal(attempts, 1, 'the line was written once');
    log.info({ event: 'test.after' }, 'a line after the reader left');
    await sleep(LOG_FLUSH_INTERVAL_MS * 5.5);
    assert.equal(attempts, 1, 'no write after EPIPE');
    assert.equal(logLoss.writeErrors.closed - closedBefore, 1, 'one write error');
    assert.equal(said.filter((text) => text.includes('EPIPE')).length, 1, said.join(''));
    const flushed = await new Promise<unknown>((resolve) => log.flush((error?: Error) => resolve(error ?? null)));
    assert.equal(flushed, null);
    assert.equal(attempts, 1, 'nor for a flush');
  } finally {
    restore();
  }
});
