/**
 * Fuzzing the IMAP pre-auth parser and state machine with fast-check: generated and mutated
 * sessions, cut into chunks at random, must give the same actions as the whole input; every
 * action must be well-formed; the bytes held stay within the pre-auth bounds. Runs for
 * MAILFRONT_FUZZ_SECONDS in total (default 6; scripts/fuzz.sh runs it for longer).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { MAX_LINE_BYTES, MAX_PIPELINED_HELD_BYTES, MAX_PREAUTH_LITERAL_BYTES } from '../../src/limits.js';
import { imapAdapter } from '../../src/protocol/imap/index.js';
import { ImapCommandParser } from '../../src/protocol/imap/parser.js';
import type { ParseEvent } from '../../src/protocol/imap/parser.js';
import type { PreauthMachine } from '../../src/protocol/types.js';
import { Reach, answers, budgetMs, cut, cuts, edits, fuzz, join, mutate, preauthOptions, runSession } from './harness.js';
import type { Protocol, Session } from './harness.js';

const b64 = (text: string): string => Buffer.from(text, 'latin1').toString('base64');

/** Pieces of IMAP sessions: real commands, SASL exchanges, literals, and the bytes parsers trip over. */
const piece: fc.Arbitrary<string | Uint8Array> = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom(
    'a1 CAPABILITY\r\n', 'a2 NOOP\r\n', 'a3 LOGOUT\r\n', 'a4 STARTTLS\r\n', 'a5 LOGIN alice secret\r\n',
    'a6 LOGIN "al ice" "p\\"w\\\\"\r\n', 'a7 AUTHENTICATE PLAIN\r\n', `a8 AUTHENTICATE PLAIN ${b64('\0alice\0secret')}\r\n`,
    `a8b AUTHENTICATE PLAIN ${b64('admin\0alice\0secret')}\r\n`, 'a9 AUTHENTICATE LOGIN\r\n', `${b64('alice')}\r\n`,
    `${b64('secret')}\r\n`, `${b64('\0alice\0se\ncret')}\r\n`, '=\r\n', '*\r\n', 'a AUTHENTICATE PLAIN =\r\n',
    'a AUTHENTICATE CRAM-MD5\r\n', 'a ID ("name" "x" "version" "1.0")\r\n', 'a ID NIL\r\n', 'a ID ("k" {3+}\r\nabc)\r\n',
    'a SELECT INBOX\r\n', 'a UID FETCH 1:* (FLAGS)\r\n', 'GET / HTTP/1.1\r\n', 'POST /x HTTP/1.0\r\n', 'EHLO mail\r\n',
    'a LOGIN {5}\r\n', 'alice {6}\r\n', 'secret\r\n', 'a LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n', 'a LOGIN {4097}\r\n',
    'a LOGIN {4097+}\r\n', 'a LOGIN {99999999999999999999}\r\n', 'a LOGIN alice {0}\r\n\r\n', 'x BAD {3}\r\n',
    'a (((((((\r\n', 'a LOGIN ((a)) b\r\n', '+\r\n', 'a+ NOOP\r\n', 'a% NOOP\r\n', '\r\n', '\n', '\r', ' ', '(', ')', '{', '}',
    '"', '\\', '\0', '\x7f', '\xff', '\xc3\xa9', 'a LOGIN "\xc3\xa9" x\r\n', 'a LOGIN {2}\r\n\xc3\x28 x\r\n',
  ) },
  { weight: 2, arbitrary: fc.uint8Array({ maxLength: 48 }) },
  { weight: 1, arbitrary: fc.string({ maxLength: 40 }).map((s) => Buffer.from(s, 'utf8')) },
  { weight: 1, arbitrary: fc.integer({ min: MAX_LINE_BYTES - 40, max: MAX_LINE_BYTES + 40 }).map((n) => `a LOGIN ${'x'.repeat(n)}\r\n`) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: MAX_PREAUTH_LITERAL_BYTES }).chain((n) => fc.constantFrom(`a LOGIN {${n}}\r\n${'y'.repeat(n)} pw\r\n`, `a LOGIN {${n}+}\r\n${'y'.repeat(n)} {2+}\r\npw\r\n`)) },
);

/** A session: pieces joined, sometimes damaged afterwards. */
const bytesOf = (maxBytes: number): fc.Arbitrary<Uint8Array> =>
  fc.tuple(fc.array(piece, { maxLength: 30 }), edits, fc.boolean()).map(([pieces, e, damage]) => {
    const whole = join(pieces);
    return (damage ? mutate(whole, e) : whole).subarray(0, maxBytes);
  });

const session = (maxBytes: number): fc.Arbitrary<Session> =>
  fc.record({
    options: preauthOptions,
    // Often a STARTTLS first, so that the dialogue after the handshake gets its share of runs.
    plain: fc.oneof(bytesOf(maxBytes), fc.tuple(fc.constantFrom('s STARTTLS\r\n', 's1 CAPABILITY\r\ns2 STARTTLS\r\n'), bytesOf(maxBytes)).map(join)),
    afterTls: bytesOf(maxBytes),
    answers,
  });

interface ParserInternals {
  readonly bufferedBytes: number;
  readonly scanned: number;
}

/** Bytes held by a parser: unread input, and the part of a line or literal data read so far (both in its input queue). */
function parserHeld(parser: ParserInternals): number {
  // Test-only reach into private fields: the bound is about everything held, not just a getter.
  assert.ok(typeof parser.scanned === 'number', 'ImapCommandParser internals changed: update parserHeld() in this fuzz test');
  return parser.bufferedBytes + parser.scanned;
}

/** One command's literals: two LOGIN arguments at their largest (the parser's own bound). */
const MAX_COMMAND_LITERAL_BYTES = 2 * MAX_PREAUTH_LITERAL_BYTES;

const imap: Protocol = {
  adapter: imapAdapter,
  heldBytes(machine: PreauthMachine): number {
    const parser = (machine as unknown as { parser?: ParserInternals }).parser;
    assert.ok(parser !== undefined, 'ImapPreauthMachine internals changed: update heldBytes() in this fuzz test');
    return parserHeld(parser);
  },
  checkLine(line: string): void {
    assert.match(line, /^(\*|\+|[\x21-\x7e]+)( |$)/, `not an IMAP response line: ${JSON.stringify(line.slice(0, 120))}`);
    assert.ok(line.length <= MAX_LINE_BYTES + 512, `a response line of ${line.length} characters`);
  },
  // Either a line and a command's literals being read, or pipelined input during a login (these runs
  // feed on past inputFull, as a session does not: the machine's own last bound).
  bounds: { maxHeldBytes: Math.max(MAX_LINE_BYTES + MAX_COMMAND_LITERAL_BYTES, MAX_PIPELINED_HELD_BYTES) },
};

const PROPERTIES = 3;

test('IMAP pre-auth machine: any chunking gives the same well-formed actions (logins answered at once)', (t) => {
  // Under MAX_PIPELINED_BYTES of input, so that no pipelining bound depends on what arrived with the login.
  const reach = new Reach();
  const property = fc.property(session(60_000), cuts, (s, c) => {
    const whole = runSession(imap, s, [], 'immediately');
    reach.add(whole);
    assert.deepEqual(runSession(imap, s, c, 'immediately'), whole);
  });
  fuzz(t, property, budgetMs(PROPERTIES));
  t.diagnostic(`reached: ${reach.summary()}`);
  reach.expect(['login', 'starttls', 'tls-started', 'forward', 'client-id', 'close logout', 'close protocol-error', 'close limit', 'close timeout']);
});

test('IMAP pre-auth machine: the same with logins answered only after all input (pipelining bound reached)', (t) => {
  const flood = fc.constantFrom(new Uint8Array(0), Buffer.from('a NOOP\r\n'.repeat(Math.ceil((MAX_PIPELINED_HELD_BYTES + 100) / 8))));
  const big = fc.tuple(session(60_000), flood).map(([s, extra]): Session => ({ ...s, plain: join([s.plain, extra]) }));
  const reach = new Reach();
  const property = fc.property(big, cuts, (s, c) => {
    const whole = runSession(imap, s, [], 'at-end');
    reach.add(whole);
    assert.deepEqual(runSession(imap, s, c, 'at-end'), whole);
  });
  fuzz(t, property, budgetMs(PROPERTIES));
  t.diagnostic(`reached: ${reach.summary()}`);
  reach.expect(['login', 'forward', 'close limit']);
});

function parserEvents(bytes: Uint8Array, positions: readonly number[]): string[] {
  const parser = new ImapCommandParser();
  const events: string[] = [];
  for (const chunk of cut(bytes, positions)) {
    parser.push(chunk);
    for (let event: ParseEvent | null = parser.nextCommand(); event !== null; event = parser.nextCommand()) events.push(JSON.stringify(event));
    // Everything pushed is consumed at once: unread input never piles up in the parser.
    assert.equal(parser.bufferedBytes, 0);
    const held = parserHeld(parser as unknown as ParserInternals);
    assert.ok(held <= MAX_LINE_BYTES + MAX_COMMAND_LITERAL_BYTES, `the parser holds ${held} bytes`);
  }
  return events;
}

test('IMAP command parser: any chunking gives the same events, and nothing piles up', (t) => {
  const property = fc.property(bytesOf(200_000), cuts, (bytes, c) => {
    assert.deepEqual(parserEvents(bytes, c), parserEvents(bytes, []));
  });
  fuzz(t, property, budgetMs(PROPERTIES));
});
