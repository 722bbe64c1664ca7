// Connections closed to make room at max_connections are logged as refusals are: the first at
// once, then at most one session.evicted line per interval, with how many since the last line.
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { afterEach, beforeEach, mock, test } from 'node:test';
import { createLogger } from '../../src/log.js';
import { RefusedConnectionsLog } from '../../src/server/listeners.js';
import { REFUSED_LOG_INTERVAL_MS } from '../../src/limits.js';

let lines: Array<Record<string, unknown>>;
let refusedLog: RefusedConnectionsLog;

beforeEach(() => {
  mock.timers.enable({ apis: ['setTimeout'] });
  lines = [];
  const destination = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(JSON.parse(chunk.toString()) as Record<string, unknown>);
      done();
    },
  });
  refusedLog = new RefusedConnectionsLog(createLogger('info', destination));
});

afterEach(() => mock.timers.reset());

async function said(): Promise<Array<[unknown, unknown, unknown, unknown]>> {
  // pino writes to a stream on the next turns.
  await new Promise((resolve) => setImmediate(resolve));
  return lines.map((l) => [l['event'], l['level'], l['evicted'] ?? l['refused'], l['client']]);
}

test('evictions: one line at once, the rest of the interval in one line at its end, apart from the refusals', async () => {
  refusedLog.evicted('imap', '192.0.2.1');
  refusedLog.refused('total', 'imap', '192.0.2.50');
  for (let i = 0; i < 500; i++) refusedLog.evicted(i % 2 === 0 ? 'imap' : 'imaps', `192.0.2.${2 + (i % 200)}`);
  assert.deepEqual(await said(), [
    ['session.evicted', 'warn', 1, '192.0.2.1'],
    ['session.refused', 'warn', 1, '192.0.2.50'],
  ]);
  mock.timers.tick(REFUSED_LOG_INTERVAL_MS);
  assert.deepEqual((await said())[2], ['session.evicted', 'warn', 500, '192.0.2.2']);
  assert.equal(lines[2]?.['listener'], 'imap');
  assert.equal(lines.length, 3);
  mock.timers.tick(2 * REFUSED_LOG_INTERVAL_MS);
  refusedLog.evicted('pop3', '192.0.2.9');
  assert.deepEqual((await said())[3], ['session.evicted', 'warn', 1, '192.0.2.9']);
});
