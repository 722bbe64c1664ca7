/**
 * Fuzzing the POP3 pre-auth line reader and state machine with fast-check: generated and mutated
 * sessions, cut into chunks at random, must give the same actions as the whole input; every
 * action must be well-formed; the bytes held stay within the pre-auth bounds, a line's exactly
 * (the wider one only for a bearer AUTH line where oauth2 offers it, and a bearer exchange's
 * responses), with oauth2 on and off; a line is closed as too long exactly past its bound. Runs for
 * MAILFRONT_FUZZ_SECONDS in total (default 6; scripts/fuzz.sh runs it for longer).
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { MAX_AUTHENTICATE_LINE_BYTES, MAX_LINE_BYTES, MAX_PIPELINED_HELD_BYTES } from '../../src/limits.js';
import { Pop3Preauth, pop3Adapter } from '../../src/protocol/pop3/index.js';
import { LineReader } from '../../src/protocol/pop3/lines.js';
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
 * The bearer exchanges' pieces: AUTH lines of either mechanism (any case) and SASL response lines,
 * with tokens and lengths around both bounds; and AUTH lines of other mechanisms and near misses
 * as long, which keep MAX_LINE_BYTES.
 */
const bearerPiece: fc.Arbitrary<string> = fc.oneof(
  fc.constantFrom('AUTH OAUTHBEARER\r\n', 'AUTH XOAUTH2\r\n', 'auth oauthbearer\r\n', `AUTH OAUTHBEARER ${bearerResponse('OAUTHBEARER', 40)}\r\n`, `AUTH XOAUTH2 ${bearerResponse('XOAUTH2', 40)}\r\n`, `${b64('\x01')}\r\n`),
  fc.tuple(fc.constantFrom('OAUTHBEARER' as const, 'XOAUTH2' as const), fc.oneof(fc.integer({ min: 6_000, max: 6_200 }), fc.integer({ min: 16_300, max: 16_400 })), fc.constantFrom('AUTH ', 'auth ', '')).map(([mechanism, tokenBytes, auth]) =>
    `${auth === '' ? '' : `${auth}${auth === 'auth ' ? mechanism.toLowerCase() : mechanism} `}${bearerResponse(mechanism, tokenBytes)}\r\n`),
  fc.tuple(fc.constantFrom('AUTH OAUTHBEARER ', 'AUTH XOAUTH2 ', 'Auth XOauth2 ', 'AUTH PLAIN ', 'AUTH LOGIN ', 'AUTH  OAUTHBEARER ', 'AUTH OAUTHBEARERX ', ' AUTH XOAUTH2 ', 'USER ', ''), nearBounds).map(([head, bytes]) => lineOf(head, bytes)),
);

/** Pieces of POP3 sessions: real commands, SASL exchanges, and the bytes line readers trip over. */
const piece: fc.Arbitrary<string | Uint8Array> = fc.oneof(
  { weight: 6, arbitrary: fc.constantFrom(
    'CAPA\r\n', 'USER alice\r\n', 'PASS secret\r\n', 'PASS  two  spaces \r\n', 'PASS\r\n', 'USER\r\n', 'user Alice\r\n',
    'AUTH\r\n', 'AUTH PLAIN\r\n', `AUTH PLAIN ${b64('\0alice\0secret')}\r\n`, `AUTH PLAIN ${b64('admin\0alice\0secret')}\r\n`,
    'AUTH PLAIN =\r\n', 'AUTH LOGIN\r\n', `AUTH LOGIN ${b64('alice')}\r\n`, `${b64('alice')}\r\n`, `${b64('secret')}\r\n`,
    `${b64('\0alice\0se\rcret')}\r\n`, `${b64('\0alice\0')}\r\n`, '=\r\n', '*\r\n', 'AUTH CRAM-MD5\r\n', 'AUTH PLAIN a b c\r\n',
    'STLS\r\n', 'STLS now\r\n', 'QUIT\r\n', 'APOP alice 0123456789abcdef\r\n', 'STAT\r\n', 'RETR 1\r\n', 'NOOP\r\n',
    'GET / HTTP/1.1\r\n', 'PRI * HTTP/2.0\r\n', 'EHLO mail\r\n', '\r\n', '\n', '\r', ' ', '\0', '\x7f', '\xff', '\xc3\xa9',
    'USER \xc3\xa9l\xc3\xa8ve\r\n', 'USER a\0b\r\n',
  ) },
  { weight: 2, arbitrary: fc.uint8Array({ maxLength: 48 }) },
  { weight: 1, arbitrary: fc.string({ maxLength: 40 }).map((s) => Buffer.from(s, 'utf8')) },
  { weight: 1, arbitrary: fc.integer({ min: MAX_LINE_BYTES - 40, max: MAX_LINE_BYTES + 40 }).map((n) => `USER ${'x'.repeat(n)}\r\n`) },
  { weight: 1, arbitrary: fc.integer({ min: 0, max: 6_000 }).map((n) => `AUTH PLAIN ${b64(`\0alice\0${'p'.repeat(n)}`)}\r\n`) },
  { weight: 1, arbitrary: bearerPiece },
);

const bytesOf = (maxBytes: number): fc.Arbitrary<Uint8Array> =>
  fc.tuple(fc.array(piece, { maxLength: 30 }), edits, fc.boolean()).map(([pieces, e, damage]) => {
    const whole = join(pieces);
    return (damage ? mutate(whole, e) : whole).subarray(0, maxBytes);
  });

const session = (maxBytes: number): fc.Arbitrary<Session> =>
  fc.record({
    options: preauthOptions,
    // Often STLS first, so that the dialogue after the handshake gets its share of runs.
    plain: fc.oneof(bytesOf(maxBytes), fc.tuple(fc.constantFrom('STLS\r\n', 'CAPA\r\nSTLS\r\n'), bytesOf(maxBytes)).map(join)),
    afterTls: bytesOf(maxBytes),
    answers,
  });

// Pop3Preauth keeps its LineReader in a #private field: the test learns which reader belongs to
// the machine by watching the reader's push (the machine pushes every chunk it keeps).
const readers = new WeakMap<PreauthMachine, LineReader>();
/** Whether each machine offers the bearer mechanisms now: oauth2 set and plaintext allowed (TLS active, or allowed without). */
const bearerOffered = new WeakMap<PreauthMachine, () => boolean>();
let lastPushed: LineReader | undefined;
const originalPush = LineReader.prototype.push;
LineReader.prototype.push = function push(this: LineReader, chunk: Uint8Array): void {
  lastPushed = this;
  originalPush.call(this, chunk);
};

const BEARER_HEADS = ['AUTH OAUTHBEARER ', 'AUTH XOAUTH2 '];
const BEARER_HEAD_BYTES = Math.max(...BEARER_HEADS.map((h) => h.length));

const pop3: Protocol = {
  adapter: {
    ...pop3Adapter,
    createPreauth(options) {
      const machine = pop3Adapter.createPreauth(options);
      let tlsActive = options.tlsActive;
      const tlsStarted = machine.tlsStarted.bind(machine);
      machine.tlsStarted = () => {
        if (machine instanceof Pop3Preauth && machine.state === 'tls-pending') tlsActive = true;
        return tlsStarted();
      };
      bearerOffered.set(machine, () => options.oauth === true && (tlsActive || options.plaintextWithoutTls));
      const receive = machine.receive.bind(machine);
      machine.receive = (chunk) => {
        lastPushed = undefined;
        const actions = receive(chunk);
        if (lastPushed !== undefined) readers.set(machine, lastPushed);
        return actions;
      };
      return machine;
    },
  },
  heldBytes(machine: PreauthMachine): number {
    assert.ok(machine instanceof Pop3Preauth);
    const reader = readers.get(machine);
    const held = reader?.pendingBytes ?? 0;
    if (machine.state === 'awaiting-login') {
      // During a login, pipelined input is bounded (these runs feed on past inputFull, as a
      // session does not: the machine's own last bound).
      assert.ok(held <= MAX_PIPELINED_HELD_BYTES, `${held} bytes held during a login`);
      return held;
    }
    // Before login, a line is refused when it reaches its bound: the wider one only for an AUTH
    // line of a bearer mechanism while the machine offers them, and for the responses of a bearer
    // exchange; every other line (AUTH PLAIN, LOGIN, USER, any line without oauth2) MAX_LINE_BYTES.
    const head = Buffer.from(reader?.head(BEARER_HEAD_BYTES) ?? []).toString('latin1').toUpperCase();
    const bearerLine = machine.state === 'command' && bearerOffered.get(machine)?.() === true && BEARER_HEADS.some((h) => head.startsWith(h));
    const wide = bearerLine || machine.state === 'sasl-bearer' || machine.state === 'sasl-bearer-refused';
    const bound = wide ? MAX_AUTHENTICATE_LINE_BYTES : MAX_LINE_BYTES;
    assert.ok(held < bound, `${held} bytes of a line held in state ${machine.state} (bound ${bound}; the line starts ${JSON.stringify(head)})`);
    return held;
  },
  checkLine(line: string): void {
    // Status lines, SASL challenges, and the lines of a CAPA or AUTH listing.
    assert.match(line, /^(\+OK( |$)|-ERR( |$)|\+ |[A-Z0-9][A-Z0-9 -]*$|\.$)/, `not a POP3 response line: ${JSON.stringify(line.slice(0, 120))}`);
    // RFC 2449 §4: a response line is at most 512 octets with its CRLF.
    assert.ok(Buffer.byteLength(line) <= 510, `a response line of ${Buffer.byteLength(line)} bytes`);
  },
  bounds: { maxHeldBytes: MAX_PIPELINED_HELD_BYTES },
};

const PROPERTIES = 4;

test('POP3 pre-auth machine: any chunking gives the same well-formed actions (logins answered at once)', (t) => {
  const reach = new Reach();
  const property = fc.property(session(60_000), cuts, (s, c) => {
    const whole = runSession(pop3, s, [], 'immediately');
    reach.add(whole);
    assert.deepEqual(runSession(pop3, s, c, 'immediately'), whole);
  });
  const kinds = ['login', 'bearer-login', 'starttls', 'tls-started', 'forward', 'close logout', 'close protocol-error', 'close limit', 'close timeout'];
  fuzz(t, property, budgetMs(PROPERTIES), () => reach.has(kinds));
  t.diagnostic(`reached: ${reach.summary()}`);
  reach.expect(kinds);
});

test('POP3 pre-auth machine: the same with logins answered only after all input (pipelining bound reached)', (t) => {
  const flood = fc.constantFrom(new Uint8Array(0), Buffer.from('NOOP\r\n'.repeat(Math.ceil((MAX_PIPELINED_HELD_BYTES + 100) / 6))));
  const big = fc.tuple(session(60_000), flood).map(([s, extra]): Session => ({ ...s, plain: join([s.plain, extra]) }));
  const reach = new Reach();
  const property = fc.property(big, cuts, (s, c) => {
    const whole = runSession(pop3, s, [], 'at-end');
    reach.add(whole);
    assert.deepEqual(runSession(pop3, s, c, 'at-end'), whole);
  });
  const kinds = ['login', 'forward', 'close limit'];
  fuzz(t, property, budgetMs(PROPERTIES), () => reach.has(kinds));
  t.diagnostic(`reached: ${reach.summary()}`);
  reach.expect(kinds);
});

test('POP3 pre-auth machine: a line is closed as too long exactly when it passes its bound (the wider one for a bearer AUTH line where offered)', (t) => {
  const lineCase = fc.record({
    head: fc.constantFrom('AUTH OAUTHBEARER ', 'AUTH XOAUTH2 ', 'auth oauthbearer ', 'Auth XOauth2 ', 'AUTH PLAIN ', 'AUTH LOGIN ', 'AUTH  OAUTHBEARER ', 'AUTH OAUTHBEARERX ', ' AUTH XOAUTH2 ', 'USER ', 'AUTH '),
    bytes: nearBounds,
    oauth: fc.boolean(),
    tlsActive: fc.boolean(),
    plaintextWithoutTls: fc.boolean(),
  });
  const property = fc.property(lineCase, cuts, ({ head, bytes, oauth, tlsActive, plaintextWithoutTls }, c) => {
    const options = { tlsActive, starttlsAvailable: false, plaintextWithoutTls, greetingText: 'mailfront ready', oauth };
    const trace = runSession(pop3, { options, plain: join([lineOf(head, bytes), 'NOOP\r\n']), afterTls: new Uint8Array(0), answers: [] }, c, 'immediately');
    const wide = oauth && (tlsActive || plaintextWithoutTls) && BEARER_HEADS.some((h) => head.toUpperCase().startsWith(h));
    const bound = wide ? MAX_AUTHENTICATE_LINE_BYTES : MAX_LINE_BYTES;
    assert.equal(trace.includes('close limit'), bytes > bound, `${JSON.stringify(head)} line of ${bytes} bytes, bound ${bound}: ${trace.join(' | ').slice(0, 300)}`);
  });
  fuzz(t, property, budgetMs(PROPERTIES));
});

function readLines(bytes: Uint8Array, positions: readonly number[]): string[] {
  const reader = new LineReader();
  const lines: string[] = [];
  let taken = 0;
  let pushed = 0;
  for (const chunk of cut(bytes, positions)) {
    reader.push(chunk);
    pushed += chunk.length;
    for (let line = reader.takeLine(); line !== null; line = reader.takeLine()) {
      assert.ok(!line.content.includes(0x0a), 'a line with an LF inside');
      taken += line.wireBytes;
      lines.push(`${line.wireBytes} ${line.content.toString('latin1')}`);
    }
    // What is held is exactly what is not yet a line, and holds no LF.
    assert.equal(reader.pendingBytes, pushed - taken);
  }
  const rest = Buffer.from(reader.takeAll()).toString('latin1');
  assert.ok(!rest.includes('\n'));
  lines.push(`rest ${rest}`);
  return lines;
}

test('POP3 line reader: any chunking gives the same lines; it holds exactly the unfinished line', (t) => {
  const property = fc.property(bytesOf(200_000), cuts, (bytes, c) => {
    assert.deepEqual(readLines(bytes, c), readLines(bytes, []));
  });
  fuzz(t, property, budgetMs(PROPERTIES));
});
