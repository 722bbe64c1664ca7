// What stdout does not take is counted and said on stderr (watchLogLoss): a write error once per
// error code (pino re-emits an error that is not EPIPE: one error, seen twice, counts once), and
// bytes dropped for a stalled reader at most once a minute, the count going on meanwhile.
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { test } from 'node:test';
import { logLoss, setLogLossPhase, watchLogLoss } from '../../src/log.js';
import type { LossSource } from '../../src/log.js';

function errno(code: string): Error {
  return Object.assign(new Error(`${code}: write failed`), { code });
}

test('write errors: counted each, said once per code; one error re-emitted counts once', () => {
  const stream = new EventEmitter();
  const said: string[] = [];
  const before = { ...logLoss.writeErrors };
  setLogLossPhase({ kind: 'serving' });
  watchLogLoss(stream as unknown as LossSource, (text) => said.push(text));
  const eio = errno('EIO');
  stream.emit('error', eio);
  stream.emit('error', eio);
  stream.emit('error', errno('EIO'));
  stream.emit('error', errno('EPIPE'));
  // EPIPE: nothing is written after it; another error: the lines are kept and written again.
  assert.deepEqual({ closed: logLoss.writeErrors.closed - before.closed, failed: logLoss.writeErrors.failed - before.failed }, { closed: 1, failed: 2 });
  assert.deepEqual(said, [
    'mailfront: log lines cannot be written to stdout (EIO); mailfront goes on serving, and keeps the lines (up to 16777216 bytes) to write them again once stdout takes them; past that they are dropped (mailfront_log_write_errors_total{kind="failed"}, mailfront_log_bytes_dropped_total)\n',
    'mailfront: log lines cannot be written to stdout (EPIPE: its reader has gone); mailfront goes on serving, and log lines are lost from now on, until a restart (mailfront_log_write_errors_total{kind="closed"})\n',
  ]);
});

// A stop's and a failed start's lost lines are not followed by "goes on serving": neither serves.
test('write errors during the start, a stop and after a failed start say what the process does meanwhile', () => {
  const said: string[] = [];
  try {
    for (const phase of [{ kind: 'starting' }, { kind: 'stopping', ms: 5_000 }, { kind: 'failed-start', ms: 5_000 }] as const) {
      setLogLossPhase(phase);
      const stream = new EventEmitter();
      watchLogLoss(stream as unknown as LossSource, (text) => said.push(text));
      stream.emit('error', errno('ENOSPC'));
      stream.emit('error', errno('EPIPE'));
    }
  } finally {
    setLogLossPhase({ kind: 'serving' });
  }
  assert.deepEqual(said, [
    'mailfront: log lines cannot be written to stdout (ENOSPC); mailfront goes on with its start, and keeps the lines (up to 16777216 bytes) to write them again once stdout takes them; past that they are dropped (mailfront_log_write_errors_total{kind="failed"}, mailfront_log_bytes_dropped_total)\n',
    'mailfront: log lines cannot be written to stdout (EPIPE: its reader has gone); mailfront goes on with its start, and log lines are lost from now on, until a restart (mailfront_log_write_errors_total{kind="closed"})\n',
    'mailfront: log lines cannot be written to stdout (ENOSPC); mailfront goes on with its stop, and gives up the lines stdout has not taken within 5 s (mailfront_log_write_errors_total{kind="failed"}, mailfront_log_bytes_dropped_total)\n',
    'mailfront: log lines cannot be written to stdout (EPIPE: its reader has gone); mailfront goes on with its stop, and log lines are lost (mailfront_log_write_errors_total{kind="closed"})\n',
    'mailfront: log lines cannot be written to stdout (ENOSPC); mailfront exits, as its start failed, and gives up the lines stdout has not taken within 5 s (mailfront_log_write_errors_total{kind="failed"}, mailfront_log_bytes_dropped_total)\n',
    'mailfront: log lines cannot be written to stdout (EPIPE: its reader has gone); mailfront exits, as its start failed, and log lines are lost (mailfront_log_write_errors_total{kind="closed"})\n',
  ]);
});

test('dropped bytes: all counted (UTF-8 bytes, not characters), said at most once a minute', () => {
  const stream = new EventEmitter();
  const said: string[] = [];
  let now = 1_000_000;
  const before = logLoss.bytesDropped;
  watchLogLoss(stream as unknown as LossSource, (text) => said.push(text), () => now);
  stream.emit('drop', '{"msg":"é"}\n');
  stream.emit('drop', Buffer.from('0123456789'));
  now += 59_999;
  stream.emit('drop', 'x');
  assert.equal(logLoss.bytesDropped - before, 13 + 10 + 1);
  assert.equal(said.length, 1);
  assert.match(said[0]!, /^mailfront: stdout has not taken 16777216 bytes of log lines \(its reader stalled, or its writes fail\): \d+ bytes dropped so far \(mailfront_log_bytes_dropped_total\)\n$/);
  now += 1;
  stream.emit('drop', 'y');
  assert.equal(said.length, 2);
});
