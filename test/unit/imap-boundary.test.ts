import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ImapResponseBoundary } from '../../src/protocol/imap/boundary.js';

/** Feeds `text` split at every position and returns the boundary state after each full feed. */
function boundaryAfter(text: string): boolean {
  const bytes = Buffer.from(text, 'latin1');
  const results = new Set<boolean>();
  for (let cut = 0; cut <= bytes.length; cut++) {
    const t = new ImapResponseBoundary();
    t.observe(bytes.subarray(0, cut));
    t.observe(bytes.subarray(cut));
    results.add(t.atBoundary());
  }
  const byteByByte = new ImapResponseBoundary();
  for (const b of bytes) byteByByte.observe(Uint8Array.of(b));
  results.add(byteByByte.atBoundary());
  assert.equal(results.size, 1, `split-dependent result for ${JSON.stringify(text)}`);
  return [...results][0]!;
}

test('between responses is a boundary; inside a line or a literal is not', () => {
  assert.equal(boundaryAfter(''), true);
  assert.equal(boundaryAfter('* 3 EXISTS\r\n'), true);
  assert.equal(boundaryAfter('* 3 EXI'), false);
  assert.equal(boundaryAfter('* 1 FETCH (BODY[] {10}\r\n0123456789)\r\n'), true);
  assert.equal(boundaryAfter('* 1 FETCH (BODY[] {10}\r\n01234'), false);
  assert.equal(boundaryAfter('* 1 FETCH (BODY[] {10}\r\n0123456789'), false);
  // A literal whose content ends in CRLF and looks like a response is still a literal.
  assert.equal(boundaryAfter('* 1 FETCH (BODY[] {14}\r\n* OK fake\r\n\r\n'), false);
  assert.equal(boundaryAfter('* 1 FETCH (BODY[] {14}\r\n* OK fake\r\n\r\n)\r\n'), true);
  // Two literals on one response line.
  assert.equal(boundaryAfter('* 1 FETCH (BODY[1] {3}\r\nabc BODY[2] {2}\r\nde)\r\n'), true);
  assert.equal(boundaryAfter('* 1 FETCH (BODY[1] {3}\r\nabc BODY[2] {2}\r\nd'), false);
  assert.equal(boundaryAfter('* 1 FETCH (BODY[] {0}\r\n'), false);
  assert.equal(boundaryAfter('a1 OK done\r\n+ idling\r\n'), true);
});
