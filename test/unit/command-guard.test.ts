// The guard that keeps UNAUTHENTICATE (and what would hide it: STARTTLS, COMPRESS) from a backend
// after the splice (proxy/command-guard.ts): found as a word of its own wherever it stands and
// however the bytes are split, refused before the byte that ends it goes out; other words pass.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { unauthenticateGuard } from '../../src/proxy/command-guard.js';
import type { CommandGuard } from '../../src/proxy/command-guard.js';
import { imapAdapter } from '../../src/protocol/imap/index.js';
import { managesieveAdapter } from '../../src/protocol/managesieve/index.js';
import { pop3Adapter } from '../../src/protocol/pop3/index.js';

/** Feeds `parts` in order to `guard` (IMAP's by default); the index of the part it refused, or -1. */
function refusedAt(parts: readonly string[], guard: CommandGuard = unauthenticateGuard()): number {
  for (const [i, part] of parts.entries()) {
    const bytes = Buffer.from(part, 'latin1');
    if (guard.refuses(bytes, bytes.length)) return i;
  }
  return -1;
}

/** Every split of `text` into single bytes, and into two parts at every point. */
function everySplit(text: string): string[][] {
  const splits: string[][] = [[...text]];
  for (let at = 0; at <= text.length; at++) splits.push([text.slice(0, at), text.slice(at)]);
  return splits;
}

test('the word is refused wherever a lexer could take it as a command, in the part that ends it, however split', () => {
  const streams = [
    'UNAUTHENTICATE\r\n',
    'unauthenticate\r\n',
    'a1 UnAuthenticate\n',
    'LISTSCRIPTS\r\nUNAUTHENTICATE\r\n',
    // timsieved goes on lexing after a syntax error in the middle of a line.
    '*UNAUTHENTICATE\r\n',
    '1UNAUTHENTICATE\r\n',
    'LISTSCRIPTS(UNAUTHENTICATE\r\n',
    // Behind a literal the server may refuse, or inside one it may not read as data.
    'PUTSCRIPT "x" {999999+}\r\nUNAUTHENTICATE\r\n',
    'a COMPRESS DEFLATE\r\n',
    'STARTTLS\r\n',
    'a APPEND INBOX {8+}\r\nstartTLS\r\n',
  ];
  for (const stream of streams) {
    for (const parts of everySplit(stream)) {
      const at = refusedAt(parts);
      assert.notEqual(at, -1, JSON.stringify(parts));
      // Nothing before the refused part holds the word and the byte after it: the backend has
      // not had the word whole.
      const before = parts.slice(0, at).join('');
      assert.ok(!/(?<![A-Za-z])(unauthenticate|starttls|compress)(?![A-Za-z])[^A-Za-z]/i.test(before), `${JSON.stringify(parts)}: refused too late`);
    }
  }
});

test('longer words, other commands and ordinary traffic pass', () => {
  const streams = [
    'UNAUTHENTICATED\r\n',
    'UNAUTHENTICAT\r\n',
    'XUNAUTHENTICATE\r\n',
    'PUTSCRIPT "mine" {27+}\r\nrequire "fileinto";\r\nkeep;\r\n',
    'a1 UID FETCH 1:* (FLAGS BODY.PEEK[HEADER])\r\n',
    'a2 IDLE\r\nDONE\r\n',
    'a3 APPEND INBOX {40}\r\nSubject: we are unauthenticated here\r\n\r\n',
    'LOGOUT\r\n',
    // On IMAP a word that only ends in one passes: Cyrus imapd reads a command name only after
    // a tag (ManageSieve, below, is another matter).
    'a4 SEARCH TEXT decompress\r\n',
    'a5 APPEND INBOX {15+}\r\nUNAUTHENTICATEd\r\n',
    'b {1+}\r\nXUNAUTHENTICATE\r\n',
  ];
  for (const stream of streams) {
    for (const parts of everySplit(stream)) assert.equal(refusedAt(parts), -1, JSON.stringify(parts));
  }
});

test('the word at the very end of the stream waits for the byte that ends it, and the guard says which word it refused', () => {
  const guard = unauthenticateGuard();
  assert.equal(guard.refuses(Buffer.from('UNAUTHENTICATE'), 14), false);
  assert.equal(guard.refused, null);
  assert.equal(guard.refuses(Buffer.from('\r\n'), 2), true);
  assert.equal(guard.refused, 'UNAUTHENTICATE');
  const other = unauthenticateGuard();
  assert.equal(other.refuses(Buffer.from('a starttls\r\n'), 12), true);
  assert.equal(other.refused, 'STARTTLS');
});

test('only the first `length` bytes of a chunk are looked at (the shared read buffer holds older bytes past them)', () => {
  const guard = unauthenticateGuard();
  const chunk = Buffer.from('NOOP\r\nUNAUTHENTICATE\r\n', 'latin1');
  assert.equal(guard.refuses(chunk, 6), false);
});

test('which sessions are guarded: IMAP when the backend offers UNAUTHENTICATE (or said nothing), ManageSieve always, POP3 never', () => {
  assert.equal(imapAdapter.createCommandGuard?.('IMAP4rev1 SASL-IR ID ENABLE IDLE'), null);
  assert.ok(imapAdapter.createCommandGuard?.('IMAP4rev1 UNAUTHENTICATE IDLE'));
  assert.ok(imapAdapter.createCommandGuard?.('IMAP4rev1 IDLE unauthenticate'));
  assert.equal(imapAdapter.createCommandGuard?.('IMAP4rev1 X-UNAUTHENTICATE'), null);
  assert.ok(imapAdapter.createCommandGuard?.(null));
  assert.match(imapAdapter.createCommandGuard?.(null)?.notice ?? '', /^\* BYE .+\r\n$/);
  assert.match(managesieveAdapter.createCommandGuard?.(null)?.notice ?? '', /^BYE ".+"\r\n$/);
  assert.equal(pop3Adapter.createCommandGuard, undefined);
});

test('a guarded IMAP login shows the capabilities without what the guard refuses, so that no client turns COMPRESS on by itself', () => {
  const guarded = imapAdapter.createCommandGuard?.('IMAP4rev1 UNAUTHENTICATE COMPRESS=DEFLATE IDLE STARTTLS compress=x COMPRESSOR LITERAL+');
  assert.equal(guarded?.capabilities, 'IMAP4rev1 IDLE COMPRESSOR LITERAL+');
});

test('ManageSieve refuses UNAUTHENTICATE and STARTTLS, not COMPRESS (no such thing there)', () => {
  const sieve = managesieveAdapter.createCommandGuard?.(null)?.guard;
  assert.ok(sieve);
  const text = Buffer.from('PUTSCRIPT "v" {29+}\r\nPlease compress big files.\r\n\r\n');
  assert.equal(sieve.refuses(text, text.length), false);
  const bad = Buffer.from('starttls\r\n');
  assert.equal(sieve.refuses(bad, bad.length), true);
});

test('ManageSieve refuses a run of letters that ends in the word, wherever timsieved may think a literal ended', () => {
  // timsieved reads {1+}CRLF X as a string token, then UNAUTHENTICATE as the next command; and
  // which literals it takes (leading zeros; not a bare LF after the announcement, nor one behind
  // a quoted string broken by CR) is its own. Each of these ran UNAUTHENTICATE (or STARTTLS)
  // there through a guard that counted literals.
  const streams = [
    '{1+}\r\nXUNAUTHENTICATE\r\n',
    '{0000000000000001+}\r\nXUNAUTHENTICATE\r\n',
    '"{50+}\r\n{1+}\r\nXUNAUTHENTICATE\r\n',
    '{50}\r\n{1+}\r\nXUNAUTHENTICATE\r\n',
    '{50-}\r\n{1+}\r\nXUNAUTHENTICATE\r\n',
    '{50+}\n{1+}\r\nXUNAUTHENTICATE\r\n',
    '{0000000000000001+}\r\nXSTARTTLS\r\n',
    'PUTSCRIPT "x" {10+}\r\n    UNAUTHENTICATE\r\n',
  ];
  for (const stream of streams) {
    for (const parts of everySplit(stream)) {
      const sieve = managesieveAdapter.createCommandGuard?.(null)?.guard;
      assert.ok(sieve);
      const at = refusedAt(parts, sieve);
      assert.notEqual(at, -1, JSON.stringify(parts));
      assert.ok(!/(unauthenticate|starttls)[^A-Za-z]/i.test(parts.slice(0, at).join('')), `${JSON.stringify(parts)}: refused too late`);
    }
  }
  // Ordinary scripts pass: words that hold one but do not end in it.
  const sieve = managesieveAdapter.createCommandGuard?.(null)?.guard;
  const script = Buffer.from('PUTSCRIPT "v" {52+}\r\nrequire "vacation"; # unauthenticated, starttlsx\r\n\r\n');
  assert.equal(sieve?.refuses(script, script.length), false);
});
