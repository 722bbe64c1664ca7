/**
 * Fuzzing the POP3 pre-auth line reader and state machine with fast-check: generated and mutated
 * sessions, cut into chunks at random, must give the same actions as the whole input; every
 * action must be well-formed; the bytes held stay within the pre-auth bounds. Runs for
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
let lastPushed: LineReader | undefined;
const originalPush = LineReader.prototype.push;
LineReader.prototype.push = function push(this: LineReader, chunk: Uint8Array): void {
  lastPushed = this;
  originalPush.call(this, chunk);
};

const pop3: Protocol = {
  adapter: {
    ...pop3Adapter,
    createPreauth(options) {
      const machine = pop3Adapter.createPreauth(options);
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
    const held = readers.get(machine)?.pendingBytes ?? 0;
    // Before login a line is refused when it reaches the limit (an AUTH line's and a SASL
    // response's is the wider one); during one, pipelined input is bounded
    // (these runs feed on past inputFull, as a session does not: the machine's own last bound).
    const authLine = machine.state !== 'command' || Buffer.from(readers.get(machine)?.head(5) ?? []).toString('latin1').toUpperCase() === 'AUTH ';
    const bound = machine.state === 'awaiting-login' ? MAX_PIPELINED_HELD_BYTES : authLine ? MAX_AUTHENTICATE_LINE_BYTES : MAX_LINE_BYTES;
    assert.ok(held <= bound, `${held} bytes held in state ${machine.state} (bound ${bound})`);
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

const PROPERTIES = 3;

test('POP3 pre-auth machine: any chunking gives the same well-formed actions (logins answered at once)', (t) => {
  const reach = new Reach();
  const property = fc.property(session(60_000), cuts, (s, c) => {
    const whole = runSession(pop3, s, [], 'immediately');
    reach.add(whole);
    assert.deepEqual(runSession(pop3, s, c, 'immediately'), whole);
  });
  fuzz(t, property, budgetMs(PROPERTIES));
  t.diagnostic(`reached: ${reach.summary()}`);
  reach.expect(['login', 'starttls', 'tls-started', 'forward', 'close logout', 'close protocol-error', 'close limit', 'close timeout']);
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
  fuzz(t, property, budgetMs(PROPERTIES));
  t.diagnostic(`reached: ${reach.summary()}`);
  reach.expect(['login', 'forward', 'close limit']);
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
