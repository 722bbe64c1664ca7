// The guard that keeps UNAUTHENTICATE from a backend after the splice (proxy/command-guard.ts):
// found at the start of any line however the bytes are split, and nothing else refused.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { UnauthenticateGuard } from '../../src/proxy/command-guard.js';
import { imapAdapter } from '../../src/protocol/imap/index.js';
import { managesieveAdapter } from '../../src/protocol/managesieve/index.js';
import { pop3Adapter } from '../../src/protocol/pop3/index.js';

/** Feeds `parts` in order; the index of the part the guard refused, or -1. */
function refusedAt(tagged: boolean, parts: readonly string[]): number {
  const guard = new UnauthenticateGuard(tagged);
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

test('ManageSieve: UNAUTHENTICATE as a command is refused in the part that ends it, however split', () => {
  for (const stream of ['UNAUTHENTICATE\r\n', 'unauthenticate\r\n', 'UnAuthenticate\n', 'LISTSCRIPTS\r\nUNAUTHENTICATE\r\n', '  UNAUTHENTICATE\r\n', 'UNAUTHENTICATE "x"\r\n']) {
    for (const parts of everySplit(stream)) {
      const at = refusedAt(false, parts);
      assert.notEqual(at, -1, JSON.stringify(parts));
      // The refused part holds the byte after the name: the backend has not had the line's end.
      const before = parts.slice(0, at).join('');
      assert.ok(!/UNAUTHENTICATE[\s]/i.test(before), `${JSON.stringify(parts)}: refused too late`);
    }
  }
});

test('ManageSieve: other commands, longer words and the word elsewhere in a line pass', () => {
  for (const stream of ['UNAUTHENTICATED\r\n', 'UNAUTHENTICAT\r\n', 'PUTSCRIPT "UNAUTHENTICATE" {5+}\r\nkeep;\r\n', 'NOOP UNAUTHENTICATE\r\n', 'LOGOUT\r\n', 'XUNAUTHENTICATE\r\n']) {
    for (const parts of everySplit(stream)) assert.equal(refusedAt(false, parts), -1, JSON.stringify(parts));
  }
});

test('IMAP: after any tag, however long, and without regard to case; not as an argument or another command', () => {
  const longTag = 'a'.repeat(300);
  for (const stream of ['a1 UNAUTHENTICATE\r\n', 'a1 NOOP\r\nb2 unauthenticate\r\n', `${longTag} UNAUTHENTICATE\r\n`, '* UNAUTHENTICATE\r\n']) {
    for (const parts of everySplit(stream)) assert.notEqual(refusedAt(true, parts), -1, JSON.stringify(parts));
  }
  for (const stream of ['UNAUTHENTICATE\r\n', 'a1 SELECT UNAUTHENTICATE\r\n', 'a1 UNAUTHENTICATEX\r\n', 'a1 UID FETCH 1 BODY[]\r\n', 'DONE\r\n']) {
    for (const parts of everySplit(stream)) assert.equal(refusedAt(true, parts), -1, JSON.stringify(parts));
  }
});

test('literal data is checked line by line too: a command hidden behind a literal the server refused is still found', () => {
  // The server may refuse a synchronising literal ({N} without +) and never read its bytes as data.
  assert.notEqual(refusedAt(true, ['a APPEND INBOX {20}\r\n', 'b UNAUTHENTICATE\r\n']), -1);
  // The price: a line of message data that reads like the command ("Subject: UNAUTHENTICATE") is
  // refused as well; the same word anywhere else in a line is not.
  assert.notEqual(refusedAt(true, ['a APPEND INBOX {25}\r\n', 'Subject: UNAUTHENTICATE\r\n']), -1);
  assert.equal(refusedAt(true, ['a APPEND INBOX {36}\r\n', 'Subject: please UNAUTHENTICATE\r\n\r\nx\r\n']), -1);
});

test('only the first `length` bytes of a chunk are looked at (the shared read buffer holds older bytes past them)', () => {
  const guard = new UnauthenticateGuard(false);
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
