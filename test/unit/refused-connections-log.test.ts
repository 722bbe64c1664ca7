// Connections refused by a connection limit: one line for the first, then at most one line per
// interval and limit, with how many were refused since the last line. Connections closed to make
// room at max_connections are logged the same way, in session.evicted lines.
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

/** What the lines so far say: limit, count and example address. */
async function said(): Promise<Array<[unknown, unknown, unknown]>> {
  // pino writes to a stream on the next turns.
  await new Promise((resolve) => setImmediate(resolve));
  for (const line of lines) {
    assert.equal(line['event'], 'session.refused');
    assert.equal(line['level'], 'warn');
  }
  return lines.map((l) => [l['limit'], l['refused'], l['client']]);
}

test('the first refusal is logged at once, the rest of the interval in one line at its end', async () => {
  refusedLog.refused('address', 'imap', '192.0.2.1');
  assert.deepEqual(await said(), [['address', 1, '192.0.2.1']]);
  for (let i = 0; i < 300; i++) refusedLog.refused('address', 'imap', `192.0.2.${2 + (i % 200)}`);
  mock.timers.tick(REFUSED_LOG_INTERVAL_MS - 1);
  assert.equal((await said()).length, 1, 'nothing more before the interval ends');
  mock.timers.tick(1);
  assert.deepEqual(await said(), [['address', 1, '192.0.2.1'], ['address', 300, '192.0.2.2']]);
  assert.equal(lines[1]?.['listener'], 'imap');
});

test('each limit has its own interval; a quiet interval ends the count, and the next refusal is logged at once', async () => {
  refusedLog.refused('address', 'imap', '192.0.2.1');
  refusedLog.refused('total', 'pop3', '192.0.2.9');
  refusedLog.refused('address', 'imap', '192.0.2.2');
  mock.timers.tick(REFUSED_LOG_INTERVAL_MS);
  assert.deepEqual(await said(), [['address', 1, '192.0.2.1'], ['total', 1, '192.0.2.9'], ['address', 1, '192.0.2.2']]);
  // The line just written started an interval of its own: a refusal in it waits for its end.
  refusedLog.refused('address', 'imap', '192.0.2.3');
  mock.timers.tick(REFUSED_LOG_INTERVAL_MS);
  assert.equal((await said()).length, 4);
  // An interval with no refusal writes nothing and ends the count.
  mock.timers.tick(2 * REFUSED_LOG_INTERVAL_MS);
  assert.equal((await said()).length, 4);
  refusedLog.refused('address', 'imap', '192.0.2.4');
  assert.deepEqual((await said()).slice(3), [['address', 1, '192.0.2.3'], ['address', 1, '192.0.2.4']]);
});

test('a stop logs what no line has told of yet', async () => {
  refusedLog.refused('total', 'imap', '192.0.2.1');
  refusedLog.refused('total', 'imap', '192.0.2.2');
  refusedLog.refused('total', 'imap', '192.0.2.3');
  refusedLog.flush();
  assert.deepEqual(await said(), [['total', 1, '192.0.2.1'], ['total', 2, '192.0.2.2']]);
  mock.timers.tick(REFUSED_LOG_INTERVAL_MS);
  refusedLog.flush();
  assert.equal((await said()).length, 2);
});

/** What the lines so far say, refusals and evictions alike: event, level, count and example address. */
async function events(): Promise<Array<[unknown, unknown, unknown, unknown]>> {
  // pino writes to a stream on the next turns.
  await new Promise((resolve) => setImmediate(resolve));
  return lines.map((l) => [l['event'], l['level'], l['evicted'] ?? l['refused'], l['client']]);
}

test('evictions: one line at once, the rest of the interval in one line at its end, apart from the refusals', async () => {
  refusedLog.evicted('imap', '192.0.2.1');
  refusedLog.refused('total', 'imap', '192.0.2.50');
  for (let i = 0; i < 500; i++) refusedLog.evicted(i % 2 === 0 ? 'imap' : 'imaps', `192.0.2.${2 + (i % 200)}`);
  assert.deepEqual(await events(), [
    ['session.evicted', 'warn', 1, '192.0.2.1'],
    ['session.refused', 'warn', 1, '192.0.2.50'],
  ]);
  mock.timers.tick(REFUSED_LOG_INTERVAL_MS);
  assert.deepEqual((await events())[2], ['session.evicted', 'warn', 500, '192.0.2.2']);
  assert.equal(lines[2]?.['listener'], 'imap');
  assert.equal(lines.length, 3);
  mock.timers.tick(2 * REFUSED_LOG_INTERVAL_MS);
  refusedLog.evicted('pop3', '192.0.2.9');
  assert.deepEqual((await events())[3], ['session.evicted', 'warn', 1, '192.0.2.9']);
});
