/**
 * Fuzzing the IMAP pre-auth parser and state machine with fast-check: generated and mutated
 * sessions, cut into chunks at random, must give the same actions as the whole input; every
 * action must be well-formed; the bytes held stay within the pre-auth bounds, a line's exactly
 * (the wider one only for a bearer AUTHENTICATE line where oauth2 offers it, and a bearer exchange's
 * responses), with oauth2 on and off; a line is closed as too long exactly past its bound. Runs for
 * MAILFRONT_FUZZ_SECONDS in total (default 6; scripts/fuzz.sh runs it for longer).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { MAX_AUTHENTICATE_LINE_BYTES, MAX_LINE_BYTES, MAX_NONSYNC_LITERAL_BYTES, MAX_PIPELINED_HELD_BYTES, MAX_PREAUTH_LITERAL_BYTES } from '../../src/limits.js';
import { imapAdapter } from '../../src/protocol/imap/index.js';
import { ImapCommandParser } from '../../src/protocol/imap/parser.js';
import type { ParseEvent } from '../../src/protocol/imap/parser.js';
import type { PreauthMachine } from '../../src/protocol/types.js';
import { Reach, answers, budgetMs, cut, cuts, edits, fuzz, join, mutate, preauthOptions, runSession } from './harness.js';
import type { Protocol, Session } from './harness.js';

const b64 = (text: string): string => Buffer.from(text, 'latin1').toString('base64');

/** A bearer mechanism's SASL response for a token of `tokenBytes` (base64, as clients send it). */
const bearerResponse = (mechanism: 'OAUTHBEARER' | 'XOAUTH2', tokenBytes: number): string => {
  const token = 'e'.repeat(Math.max(1, tokenBytes));
  return b64(mechanism === 'XOAUTH2' ? `user=alice\x01auth=Bearer ${token}\x01\x01` : `n,a=alice,\x01auth=Bearer ${token}\x01\x01`);
};
/** Line lengths (CRLF included) around the two line bounds. */
const nearBounds = fc.oneof(
  fc.integer({ min: MAX_LINE_BYTES - 40, max: MAX_LINE_BYTES + 40 }),
  fc.integer({ min: MAX_AUTHENTICATE_LINE_BYTES - 40, max: MAX_AUTHENTICATE_LINE_BYTES + 40 }),
);
/** A line of `bytes` bytes (CRLF included) starting with `head`, filled with base64 characters (a token a verifier would refuse). */
const lineOf = (head: string, bytes: number): string => `${head}${'A'.repeat(Math.max(0, bytes - head.length - 2))}\r\n`;
/**
 * The bearer exchanges' pieces: AUTHENTICATE lines of either mechanism (any case, runs of spaces)
 * and SASL response lines, with tokens and lengths around both bounds; and AUTHENTICATE lines of
 * other mechanisms and near misses as long, which keep MAX_LINE_BYTES.
 */
const bearerPiece: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom('b AUTHENTICATE OAUTHBEARER\r\n', 'b AUTHENTICATE XOAUTH2\r\n', `b AUTHENTICATE OAUTHBEARER ${bearerResponse('OAUTHBEARER', 40)}\r\n`, `b authenticate xoauth2 ${bearerResponse('XOAUTH2', 40)}\r\n`, `${b64('\x01')}\r\n`),
  fc.tuple(fc.constantFrom('OAUTHBEARER' as const, 'XOAUTH2' as const), fc.oneof(fc.integer({ min: 6_000, max: 6_200 }), fc.integer({ min: 16_300, max: 16_400 })), fc.constantFrom('b AUTHENTICATE ', 'b  authenticate  ', '')).map(([mechanism, tokenBytes, head]) =>
    `${head === '' ? '' : `${head}${mechanism} `}${bearerResponse(mechanism, tokenBytes)}\r\n`),
  fc.tuple(
    fc.constantFrom('b AUTHENTICATE OAUTHBEARER ', 'b AUTHENTICATE XOAUTH2 ', ' b  Authenticate   XOauth2  ', 'b AUTHENTICATE PLAIN ', 'b AUTHENTICATE LOGIN ', 'b AUTHENTICATE OAUTHBEARERX ', 'b AUTHENTICATE "OAUTHBEARER" ', 'b AUTHENTICATEX XOAUTH2 ', 'b LOGIN ', ''),
    nearBounds,
  ).map(([head, bytes]) => lineOf(head, bytes)),
);

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
  { weight: 1, arbitrary: bearerPiece },
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
  readonly input: { view(): Uint8Array };
  readonly segmentIndex: number;
  readonly inLiteral: boolean;
  readonly authenticateLine: boolean;
}

interface MachineInternals {
  readonly parser?: ParserInternals;
  readonly phase?: string;
  readonly sasl?: { readonly mechanism: string } | null;
  readonly options?: { readonly oauth?: boolean; readonly plaintextWithoutTls: boolean };
  readonly tlsActive?: boolean;
}

/** Bytes held by a parser: unread input, and the part of a line or literal data read so far (both in its input queue). */
function parserHeld(parser: ParserInternals): number {
  // Test-only reach into private fields: the bound is about everything held, not just a getter.
  assert.ok(typeof parser.scanned === 'number', 'ImapCommandParser internals changed: update parserHeld() in this fuzz test');
  return parser.bufferedBytes + parser.scanned;
}

/** One command's literals: two LOGIN arguments at their largest (the parser's own bound). */
const MAX_COMMAND_LITERAL_BYTES = 2 * MAX_PREAUTH_LITERAL_BYTES;

/**
 * A line's start that makes it a bearer AUTHENTICATE line (SASL-IR): a tag, AUTHENTICATE and the
 * mechanism, then a space, any case, with runs of spaces before and between them as the tokenizer reads them.
 */
const BEARER_LINE_START = /^ *[^ ]+ +AUTHENTICATE +(?:OAUTHBEARER|XOAUTH2) /i;

const imap: Protocol = {
  adapter: imapAdapter,
  heldBytes(machine: PreauthMachine): number {
    const { parser, phase, sasl, options, tlsActive } = machine as unknown as MachineInternals;
    assert.ok(parser !== undefined && typeof phase === 'string' && options !== undefined && typeof tlsActive === 'boolean' && typeof parser.segmentIndex === 'number', 'ImapPreauthMachine internals changed: update heldBytes() in this fuzz test');
    const held = parserHeld(parser);
    // Before login, a line is refused when it reaches its bound: the wider one only for an
    // AUTHENTICATE line of a bearer mechanism while the machine offers them (oauth2 set, plaintext
    // allowed) and for the responses of a bearer exchange; every other line (PLAIN, LOGIN, any
    // line without oauth2) MAX_LINE_BYTES. A literal being read holds at most its own bound.
    if (phase === 'authenticate') {
      const bound = sasl?.mechanism === 'OAUTHBEARER' || sasl?.mechanism === 'XOAUTH2' ? MAX_AUTHENTICATE_LINE_BYTES : MAX_LINE_BYTES;
      assert.ok(held < bound, `${held} bytes of a ${sasl?.mechanism} response held (bound ${bound})`);
    } else if (phase === 'command' && parser.inLiteral) {
      assert.ok(held < Math.max(MAX_PREAUTH_LITERAL_BYTES, MAX_NONSYNC_LITERAL_BYTES), `${held} bytes of a literal held`);
    } else if (phase === 'command') {
      const offered = options.oauth === true && (tlsActive || options.plaintextWithoutTls);
      // A later segment (after a literal) is in the wider bound only if its line's first was: the parser's word for it.
      const wide = parser.segmentIndex === 0 ? offered && BEARER_LINE_START.test(Buffer.from(parser.input.view().subarray(0, MAX_LINE_BYTES)).toString('latin1')) : parser.authenticateLine;
      const bound = wide ? MAX_AUTHENTICATE_LINE_BYTES : MAX_LINE_BYTES;
      assert.ok(held < bound, `${held} bytes of a line held (bound ${bound}; oauth ${String(options.oauth)}, offered ${String(offered)}, the line starts ${JSON.stringify(Buffer.from(parser.input.view().subarray(0, 40)).toString('latin1'))})`);
    }
    return held;
  },
  checkLine(line: string): void {
    assert.match(line, /^(\*|\+|[\x21-\x7e]+)( |$)/, `not an IMAP response line: ${JSON.stringify(line.slice(0, 120))}`);
    assert.ok(line.length <= MAX_LINE_BYTES + 512, `a response line of ${line.length} characters`);
  },
  // Either a line and a command's literals being read, or pipelined input during a login (these runs
  // feed on past inputFull, as a session does not: the machine's own last bound).
  bounds: { maxHeldBytes: Math.max(MAX_LINE_BYTES + MAX_COMMAND_LITERAL_BYTES, MAX_PIPELINED_HELD_BYTES) },
};

const PROPERTIES = 4;

test('IMAP pre-auth machine: any chunking gives the same well-formed actions (logins answered at once)', (t) => {
  // Under MAX_PIPELINED_BYTES of input, so that no pipelining bound depends on what arrived with the login.
  const reach = new Reach();
  const property = fc.property(session(60_000), cuts, (s, c) => {
    const whole = runSession(imap, s, [], 'immediately');
    reach.add(whole);
    assert.deepEqual(runSession(imap, s, c, 'immediately'), whole);
  });
  const kinds = ['login', 'bearer-login', 'starttls', 'tls-started', 'forward', 'client-id', 'close logout', 'close protocol-error', 'close limit', 'close timeout'];
  fuzz(t, property, budgetMs(PROPERTIES), () => reach.has(kinds));
  t.diagnostic(`reached: ${reach.summary()}`);
  reach.expect(kinds);
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
  const kinds = ['login', 'forward', 'close limit'];
  fuzz(t, property, budgetMs(PROPERTIES), () => reach.has(kinds));
  t.diagnostic(`reached: ${reach.summary()}`);
  reach.expect(kinds);
});

test('IMAP pre-auth machine: a line is closed as too long exactly when it passes its bound (the wider one for a bearer AUTHENTICATE line where offered)', (t) => {
  const lineCase = fc.record({
    head: fc.constantFrom('b AUTHENTICATE OAUTHBEARER ', 'b authenticate xoauth2 ', 'b  AUTHENTICATE OAUTHBEARER ', 'b AUTHENTICATE  XOAUTH2 ', '  b   Authenticate   OAuthBearer   ', 'b AUTHENTICATE PLAIN ', 'b AUTHENTICATE LOGIN ', 'b AUTHENTICATE OAUTHBEARERX ', 'b AUTHENTICATE "OAUTHBEARER" ', 'b AUTHENTICATEX XOAUTH2 ', 'bAUTHENTICATE XOAUTH2 ', 'b LOGIN ', 'b AUTHENTICATE '),
    bytes: nearBounds,
    oauth: fc.boolean(),
    tlsActive: fc.boolean(),
    plaintextWithoutTls: fc.boolean(),
  });
  const property = fc.property(lineCase, cuts, ({ head, bytes, oauth, tlsActive, plaintextWithoutTls }, c) => {
    const options = { tlsActive, starttlsAvailable: false, plaintextWithoutTls, greetingText: 'mailfront ready', oauth };
    const trace = runSession(imap, { options, plain: join([lineOf(head, bytes), 'c NOOP\r\n']), afterTls: new Uint8Array(0), answers: [] }, c, 'immediately');
    const wide = oauth && (tlsActive || plaintextWithoutTls) && BEARER_LINE_START.test(head);
    const bound = wide ? MAX_AUTHENTICATE_LINE_BYTES : MAX_LINE_BYTES;
    assert.equal(trace.includes('close limit'), bytes > bound, `${JSON.stringify(head)} line of ${bytes} bytes, bound ${bound}: ${trace.join(' | ').slice(0, 300)}`);
  });
  fuzz(t, property, budgetMs(PROPERTIES));
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
