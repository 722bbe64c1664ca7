/**
 * The log line's time field: the cached second must never show in a line of another second,
 * whatever order the clock gives the times in.
 */
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { test } from 'node:test';
import { createLogger, isoTimeField } from '../../src/log.js';

const expected = (t: number): string => `,"time":"${new Date(t).toISOString()}"`;

test('isoTimeField writes what Date#toISOString writes, across second, minute, day and year boundaries', () => {
  const bases = [Date.UTC(2026, 10, 22, 4, 59, 59), Date.UTC(2026, 11, 31, 23, 59, 59), Date.UTC(2028, 1, 28, 23, 59, 59), 0];
  for (const base of bases) {
    for (const ms of [0, 1, 9, 10, 99, 100, 101, 999, 1000, 1001, 1999, 2000]) {
      const t = base + ms;
      assert.equal(isoTimeField(t), expected(t), `t = ${t}`);
    }
  }
});

test('isoTimeField follows a clock that steps back, and interleaved seconds', () => {
  const a = Date.UTC(2026, 10, 22, 10, 0, 5, 250);
  const b = Date.UTC(2026, 10, 22, 10, 0, 4, 750);
  for (const t of [a, b, a, a + 1, b - 1, b, a - 999, a + 750]) assert.equal(isoTimeField(t), expected(t), `t = ${t}`);
});

test('a logged line carries the time of its writing in ISO 8601 UTC', async () => {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(chunk.toString());
      done();
    },
  });
  const before = Date.now();
  createLogger('info', sink).info({ event: 'test.time' }, 'hello');
  const after = Date.now();
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(lines.length, 1);
  const time = (JSON.parse(lines[0]!) as { time: string }).time;
  assert.match(time, /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
  const t = Date.parse(time);
  assert.ok(t >= before && t <= after, `${time} between ${new Date(before).toISOString()} and ${new Date(after).toISOString()}`);
});

test('a secret under any of the keys the log redacts is written as [redacted], never as given', async () => {
  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(chunk.toString());
      done();
    },
  });
  const log = createLogger('debug', sink);
  const keys = ['password', 'bindPassword', 'proxyPassword', 'probePassword', 'bind_password', 'proxy_password', 'auth_password', 'token', 'sasl', 'credentials', 'authorization', 'clientSecret', 'client_secret'];
  keys.forEach((key, i) => log.info({ event: 'test.redaction', [key]: `Redact-me-${i}-secret` }, 'a line that should never carry a secret'));
  await new Promise((resolve) => setImmediate(resolve));
  assert.equal(lines.length, keys.length);
  keys.forEach((key, i) => {
    const line = JSON.parse(lines[i]!) as Record<string, unknown>;
    assert.equal(line[key], '[redacted]', key);
    assert.ok(!lines[i]!.includes(`Redact-me-${i}-secret`), lines[i]);
  });
});
