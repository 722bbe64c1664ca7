import assert from 'node:assert/strict';
import { test } from 'node:test';
import { constants, deflateRawSync } from 'node:zlib';
import fc from 'fast-check';
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
  // A status response's text ends at its line end, whatever it ends with: a mailbox name the
  // client chose, quoted back in an error, announces no literal.
  assert.equal(boundaryAfter(`a2 NO [NONEXISTENT] Mailbox doesn't exist: x{5}\r\n`), true);
  assert.equal(boundaryAfter('* OK [ALERT] see {12}\r\n* 3 EXISTS\r\n'), true);
  assert.equal(boundaryAfter('* BYE going {3}\r\n'), true);
  assert.equal(boundaryAfter('+ {5}\r\n'), true);
  assert.equal(boundaryAfter(`${'averyveryverylongtag'.repeat(2)} BAD x{5}\r\n`), true);
  // A tag longer than a chunk's worth of head (the client chooses it).
  const longTag = 't'.repeat(200);
  assert.equal(boundaryAfter(`${longTag} NO [NONEXISTENT] no such mailbox: x{5}\r\n`), true);
  // Data responses and a line after a literal still announce one.
  assert.equal(boundaryAfter('* LIST () "/" {5}\r\nINBOX\r\n'), true);
  assert.equal(boundaryAfter('* LIST () "/" {5}\r\nINB'), false);
  assert.equal(boundaryAfter('* 1 FETCH (BODY[1] {2}\r\nab BODY[2] OK {3}\r\nabc)\r\n'), true);
  assert.equal(boundaryAfter('* 1 FETCH (BODY[1] {2}\r\nab BODY[2] OK {3}\r\nab'), false);
  // An atom that begins with a status word is not one.
  assert.equal(boundaryAfter('* OKAY {3}\r\nabc'), false);
});

/** The reference: parses the whole prefix from the start, line by line, literals skipped; a line end without CR is no boundary, ever. */
function referenceAtBoundary(bytes: Buffer): boolean {
  let i = 0;
  let inLine = false;
  while (i < bytes.length) {
    const lf = bytes.indexOf(0x0a, i);
    if (lf < 0) return false;
    if (lf === 0 || bytes[lf - 1] !== 0x0d) return false;
    const line = bytes.subarray(i, lf).toString('latin1');
    // A status response or a continuation request is text to its end (RFC 9051 §7.1); a line
    // that follows a literal continues a response, whatever it starts with.
    const status = !inLine && /^(?:\+(?: |\r|$)|[^ \r]+ (?:OK|NO|BAD|BYE|PREAUTH)(?:[ \r]|$))/i.test(line);
    const literal = status ? null : /\{(\d{1,20})\+?\}\r?$/.exec(line);
    i = lf + 1;
    if (literal === null) {
      inLine = false;
      continue;
    }
    const size = Number(literal[1]);
    if (i + size > bytes.length) return false;
    i += size;
    inLine = true;
  }
  return !inLine;
}

test('on random response streams cut at random places, the tracker agrees with a parse from the start', () => {
  const piece = fc.oneof(
    fc.constantFrom('* 1 EXISTS\r\n', 'a1 OK done\r\n', '* OK }\r\n', '* 2 FETCH (FLAGS (\\Seen))\r\n', '+ idling\r\n', ')\r\n', '\r\n', '}\r\n', '{3}', 'x'),
    fc.string({ maxLength: 40 }).map((body) => `* 1 FETCH (BODY[] {${body.length}}\r\n${body}`),
    fc.string({ maxLength: 40 }).map((body) => `* 1 FETCH (BODY[] {${body.length}+}\r\n${body})\r\n`),
    fc.string({ maxLength: 60 }).map((text) => `* OK ${text.replace(/[\r\n]/g, '')}\r\n`),
    fc.constantFrom('a7 NO x{4}\r\n', '* BYE {3}', '+ {2}\r\n', '* LIST () "/" {3}\r\n', 'abc'),
  );
  fc.assert(
    fc.property(fc.array(piece, { maxLength: 30 }), fc.array(fc.nat(200), { maxLength: 10 }), (pieces, cuts) => {
      const bytes = Buffer.from(pieces.join(''), 'latin1');
      const at = [...new Set(cuts.map((c) => c % (bytes.length + 1)))].sort((a, b) => a - b);
      const tracker = new ImapResponseBoundary();
      let from = 0;
      for (const to of [...at, bytes.length]) {
        tracker.observe(bytes.subarray(from, to));
        from = to;
        assert.equal(tracker.atBoundary(), referenceAtBoundary(bytes.subarray(0, to)), `after ${to} of ${JSON.stringify(bytes.toString('latin1'))}`);
      }
    }),
    { numRuns: 2_000 },
  );
});

test('after COMPRESS DEFLATE no cut of the compressed stream is a boundary, and a line end without CR ends the tracking', () => {
  assert.equal(boundaryAfter('* 3 EXISTS\n'), false);
  assert.equal(boundaryAfter('* 3 EXISTS\r\n* 4 EXISTS\n* 5 EXISTS\r\n'), false);
  // Dovecot's answer to COMPRESS, then its responses compressed (RFC 4978): messages whose
  // text (from a fixed-seed generator) leaves the compressed bytes varied.
  let seed = 7;
  const word = (): string => Array.from({ length: 3 + (seed % 7) }, () => String.fromCharCode(97 + ((seed = (seed * 1103515245 + 12345) % 2 ** 31) % 26))).join('');
  const responses = Array.from({ length: 40 }, (_, n) => {
    const body = Array.from({ length: 60 }, word).join(' ');
    return `* ${n + 1} FETCH (UID ${1000 + n} BODY[TEXT] {${body.length}}\r\n${body})\r\n`;
  });
  const compressed = deflateRawSync(responses.join(''), { flush: constants.Z_SYNC_FLUSH });
  const firstLf = compressed.indexOf(0x0a);
  assert.ok(firstLf > 0 && compressed[firstLf - 1] !== 0x0d, 'premise: the compressed bytes hold a line feed without a CR before it');
  const stream = Buffer.concat([Buffer.from('a1 OK Begin compression.\r\n'), compressed]);
  const start = stream.length - compressed.length;
  for (let cut = start + 1; cut <= stream.length; cut++) {
    const t = new ImapResponseBoundary();
    t.observe(stream.subarray(0, start));
    assert.equal(t.atBoundary(), true);
    t.observe(stream.subarray(start, cut));
    assert.equal(t.atBoundary(), false, `a boundary after ${cut - start} compressed bytes`);
  }
});
