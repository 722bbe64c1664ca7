// The stdout logger writes a batch that has not filled within LOG_FLUSH_INTERVAL_MS, and nothing
// when nothing is pending: SonicBoom's own periodic flush wrote nothing (a 0-byte write through
// libuv's thread pool, with its hand-offs) five times a second, on an idle process too.
import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { LOG_FLUSH_INTERVAL_MS, createLogger } from '../../src/log.js';

test('an idle logger writes nothing to stdout, and a line waits at most about one flush interval', async () => {
  // SonicBoom writes through fs.write (looked up at each call): stdout's writes are taken here,
  // not written (they would land in the test runner's output).
  const writes: string[] = [];
  const original = fs.write;
  (fs as unknown as { write: unknown }).write = (fd: number, data: string | Uint8Array, ...rest: unknown[]): void => {
    if (fd !== 1) return void (original as unknown as (...args: unknown[]) => void)(fd, data, ...rest);
    const done = rest.at(-1) as (error: Error | null, written: number) => void;
    writes.push(typeof data === 'string' ? data : Buffer.from(data).toString());
    process.nextTick(done, null, typeof data === 'string' ? Buffer.byteLength(data) : data.byteLength);
  };
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
    (fs as unknown as { write: unknown }).write = original;
  }
});
