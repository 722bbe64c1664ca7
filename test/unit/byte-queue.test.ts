/**
 * The byte queue under the IMAP parsers: what it hands out must stay as it was when later input
 * reuses its storage (it takes its storage from node's shared Buffer pool).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ByteQueue } from '../../src/protocol/bytes.js';

const text = (bytes: Uint8Array): string => Buffer.from(bytes).toString('latin1');

test('take() and slices of view() are copies: input pushed later does not change them', () => {
  const q = new ByteQueue();
  q.push(Buffer.from('a1 LOGIN ann secret\r\n'));
  const line = q.view().slice(0, 8);
  q.consume(8);
  const rest = q.take();
  q.push(Buffer.from('XXXXXXXXXXXXXXXXXXXXXXXXXXXXXX'));
  assert.equal(text(line), 'a1 LOGIN');
  assert.equal(text(rest), ' ann secret\r\n');
  assert.equal(q.view() instanceof Buffer, false);
});

test('bytes survive compaction and growth in order, one byte at a time or in large chunks', () => {
  const q = new ByteQueue();
  let expected = '';
  for (let i = 0; i < 3000; i++) {
    const chunk = i % 100 === 0 ? 'x'.repeat(1500) : String.fromCharCode(97 + (i % 26));
    q.push(Buffer.from(chunk, 'latin1'));
    expected += chunk;
    if (i % 7 === 0) {
      const n = Math.min(5, q.length);
      assert.equal(text(q.view().subarray(0, n)), expected.slice(0, n));
      q.consume(n);
      expected = expected.slice(n);
    }
  }
  assert.equal(text(q.take()), expected);
  assert.equal(q.length, 0);
});
