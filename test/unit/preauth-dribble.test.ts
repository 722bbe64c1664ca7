/**
 * Input fed one byte at a time: what a pre-auth connection holds must stay near the bytes it has
 * received, not grow with the number of reads (a slow client must not cost more than a fast one).
 */

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runInNewContext } from 'node:vm';
import { setFlagsFromString } from 'node:v8';
import type { PreauthOptions, ProtocolAdapter } from '../../src/protocol/types.js';
import { pop3Adapter } from '../../src/protocol/pop3/index.js';
import { LineReader } from '../../src/protocol/pop3/lines.js';
import { managesieveAdapter } from '../../src/protocol/managesieve/index.js';
import { SieveReader, type SieveParseEvent } from '../../src/protocol/managesieve/wire.js';
import { imapAdapter } from '../../src/protocol/imap/index.js';
import { ImapCommandParser, type ParseEvent } from '../../src/protocol/imap/parser.js';
import { BACKEND_DEFAULTS } from './imap-testkit.js';
import { MAX_LINE_BYTES, MAX_PREAUTH_LITERAL_BYTES } from '../../src/limits.js';

// A real collection before each heap reading, even without --expose-gc on the command line.
setFlagsFromString('--expose-gc');
const collect = runInNewContext('gc') as () => void;

const OPTIONS: PreauthOptions = { tlsActive: true, starttlsAvailable: false, plaintextWithoutTls: false, greetingText: 'mailfront ready' };

/** Heap and ArrayBuffer bytes (Buffers keep their bytes outside the heap) after a full collection. */
function memory(): number {
  collect();
  const m = process.memoryUsage();
  return m.heapUsed + m.arrayBuffers;
}

/** Bytes per machine that was fed `input` one byte per read (and is still reading). */
function bytesPerDribbledMachine(adapter: ProtocolAdapter, input: string): number {
  return bytesPerDribbled(() => {
    const machine = adapter.createPreauth(OPTIONS);
    machine.greeting();
    return machine;
  }, input);
}

/** Anything fed input: a pre-auth machine or a backend login. */
interface Receiver {
  receive(chunk: Uint8Array): readonly unknown[];
}

/** The same for any machine that takes input. */
function bytesPerDribbled(create: () => Receiver, input: string): number {
  const MACHINES = 100;
  const line = Buffer.from(input, 'latin1');
  const machines: Receiver[] = [];
  const before = memory();
  for (let m = 0; m < MACHINES; m++) {
    const machine = create();
    for (let i = 0; i < line.length; i++) {
      const actions = machine.receive(line.subarray(i, i + 1));
      assert.deepEqual(actions, [], `machine ${m} acted after byte ${i}`);
    }
    machines.push(machine);
  }
  const perMachine = (memory() - before) / machines.length;
  assert.equal(machines.length, MACHINES);
  return perMachine;
}

// Just short of the line bound, so every machine keeps reading.
const LONG = 'x'.repeat(MAX_LINE_BYTES - 100);

// The design budget for a slow pre-auth connection; one byte per read used to cost 0.9 MB (POP3)
// and 1.7 MB (ManageSieve and IMAP) for a line of 8 KB.
const BUDGET_BYTES = 64 * 1024;

test('POP3 pre-auth: a long line dribbled one byte at a time stays within the per-connection budget', (t) => {
  const perMachine = bytesPerDribbledMachine(pop3Adapter, `USER ${LONG}`);
  t.diagnostic(`POP3: about ${Math.round(perMachine / 1024)} KiB per machine`);
  assert.ok(perMachine < BUDGET_BYTES, `${Math.round(perMachine)} bytes per POP3 machine`);
});

test('ManageSieve pre-auth: a long line dribbled one byte at a time stays within the per-connection budget', (t) => {
  const perMachine = bytesPerDribbledMachine(managesieveAdapter, `NOOP "${LONG}`);
  t.diagnostic(`ManageSieve: about ${Math.round(perMachine / 1024)} KiB per machine`);
  assert.ok(perMachine < BUDGET_BYTES, `${Math.round(perMachine)} bytes per ManageSieve machine`);
});

test('ManageSieve pre-auth: a literal dribbled one byte at a time stays within the per-connection budget', (t) => {
  // The largest literal allowed before login, not yet complete: its data is held until it is.
  const perMachine = bytesPerDribbledMachine(managesieveAdapter, `AUTHENTICATE "PLAIN" {${MAX_PREAUTH_LITERAL_BYTES}+}\r\n${'x'.repeat(MAX_PREAUTH_LITERAL_BYTES - 10)}`);
  t.diagnostic(`ManageSieve literal: about ${Math.round(perMachine / 1024)} KiB per machine`);
  assert.ok(perMachine < BUDGET_BYTES, `${Math.round(perMachine)} bytes per ManageSieve machine`);
});

test('IMAP pre-auth: a long line dribbled one byte at a time stays within the per-connection budget', (t) => {
  const perMachine = bytesPerDribbledMachine(imapAdapter, `a NOOP ${LONG}`);
  t.diagnostic(`IMAP: about ${Math.round(perMachine / 1024)} KiB per machine`);
  assert.ok(perMachine < BUDGET_BYTES, `${Math.round(perMachine)} bytes per IMAP machine`);
});

test('IMAP pre-auth: a literal dribbled one byte at a time stays within the per-connection budget', (t) => {
  // The largest literal allowed before login, not yet complete (non-synchronising, so that the
  // machine sends nothing): its data is held until it is.
  const perMachine = bytesPerDribbledMachine(imapAdapter, `a LOGIN {${MAX_PREAUTH_LITERAL_BYTES}+}\r\n${'y'.repeat(MAX_PREAUTH_LITERAL_BYTES - 10)}`);
  t.diagnostic(`IMAP literal: about ${Math.round(perMachine / 1024)} KiB per machine`);
  assert.ok(perMachine < BUDGET_BYTES, `${Math.round(perMachine)} bytes per IMAP machine`);
});

test('IMAP backend login: a long response line dribbled one byte at a time stays within the per-connection budget', (t) => {
  // The backend is trusted, but a slow or broken one must not cost more than a fast one either.
  const perMachine = bytesPerDribbled(() => imapAdapter.createBackendLogin(BACKEND_DEFAULTS), `* OK ${LONG}`);
  t.diagnostic(`IMAP backend: about ${Math.round(perMachine / 1024)} KiB per machine`);
  assert.ok(perMachine < BUDGET_BYTES, `${Math.round(perMachine)} bytes per IMAP backend login`);
});

test('LineReader: lines, their wire bytes and the rest are the same one byte at a time as in one chunk', () => {
  const input = Buffer.from(`USER ${'a'.repeat(5000)}\r\nbare\n\r\n\rx\r\r\n${'b'.repeat(3000)}\r\npartial\r`, 'latin1');
  const run = (pieces: Uint8Array[]): string[] => {
    const reader = new LineReader();
    const out: string[] = [];
    let held = 0;
    for (const piece of pieces) {
      reader.push(piece);
      held += piece.length;
      for (let line = reader.takeLine(); line !== null; line = reader.takeLine()) {
        out.push(`${line.wireBytes} ${line.content.toString('latin1')}`);
        held -= line.wireBytes;
      }
      assert.equal(reader.pendingBytes, held);
    }
    out.push(`rest ${Buffer.from(reader.takeAll()).toString('latin1')}`);
    assert.equal(reader.pendingBytes, 0);
    return out;
  };
  const whole = run([input]);
  assert.deepEqual(whole.slice(1), ['5 bare', '2 ', `5 \rx\r`, `3002 ${'b'.repeat(3000)}`, 'rest partial\r']);
  assert.deepEqual(run(Array.from(input, (b) => Uint8Array.of(b))), whole);
  // A line handed out stays as it was when the reader's buffer is reused for later input.
  const reader = new LineReader();
  reader.push(Buffer.from('first\r\nsec'));
  const first = reader.takeLine();
  for (let i = 0; i < 2000; i++) reader.push(Buffer.from('y'));
  reader.push(Buffer.from('\n'));
  assert.equal(first?.content.toString(), 'first');
  assert.equal(reader.takeLine()?.content.toString(), `sec${'y'.repeat(2000)}`);
});

test('SieveReader: lines, literals and the bytes after them are the same one byte at a time as in one chunk', () => {
  const options = { maxLineBytes: 8192, maxLiteralBytes: 4096, maxLineLiteralBytes: 8192, strictUtf8: true, rejectForeignProtocols: true };
  const input = Buffer.from(`NOOP "${'q'.repeat(6000)}"\r\nAUTHENTICATE "PLAIN" {3000+}\r\n${'l'.repeat(3000)} {2+}\r\nab\r\nNOOP\r\nLOGOUT\r\npartial`, 'latin1');
  const run = (pieces: Uint8Array[]): { events: SieveParseEvent[]; rest: string } => {
    const reader = new SieveReader(options);
    const events: SieveParseEvent[] = [];
    for (const piece of pieces) {
      reader.push(piece);
      // Stops after NOOP, as a machine stops reading at a login, so that the rest stays buffered.
      while (events.length < 3) {
        const event = reader.next();
        if (event === null) break;
        events.push(event);
      }
    }
    return { events, rest: Buffer.from(reader.takeBuffered()).toString('latin1') };
  };
  const whole = run([input]);
  assert.deepEqual(
    whole.events.map((e) => (e.type === 'line' ? `${e.wireBytes} ${e.tokens.map((token) => ('value' in token ? token.value.length : token.kind)).join(' ')}` : e.problem)),
    ['6009 4 6000', '3041 12 5 3000 2', '6 4'],
  );
  assert.equal(whole.rest, 'LOGOUT\r\npartial');
  assert.deepEqual(run(Array.from(input, (b) => Uint8Array.of(b))), whole);
});

test('ImapCommandParser: commands, literals, buffered bytes and the rest are the same one byte at a time as in one chunk', () => {
  const input = Buffer.from(
    `a NOOP ${'q'.repeat(6000)}\r\nb LOGIN {3000}\r\n${'l'.repeat(3000)} {2+}\r\nab\r\nc ID ("k" {0+}\r\n)\n` +
      `d LOGIN {3}\r\n\xff\xfe\xfd x\r\ne NOOP x\ry\r\nf LOGIN u p\r\nLOGOUT\r\npartial`,
    'latin1',
  );
  const show = (event: ParseEvent): string => {
    switch (event.type) {
      case 'command':
        return `${event.command.tag} ${event.command.name} ${event.command.args.map((arg) => ('value' in arg ? arg.value.length : arg.items.length)).join(' ')}`;
      case 'continue':
        return '+';
      case 'line':
        return `line ${event.text}`;
      case 'problem':
        return `${event.problem} ${event.tag}`;
    }
  };
  const run = (pieces: Uint8Array[]): { events: string[]; buffered: number[]; rest: string } => {
    const parser = new ImapCommandParser();
    const events: string[] = [];
    const buffered: number[] = [];
    for (const piece of pieces) {
      parser.push(piece);
      // Stops after the LOGIN of f, as the machine stops reading at a login, so that the rest stays buffered.
      while (!events.includes('f LOGIN 1 1')) {
        const event = parser.nextCommand();
        if (event === null) break;
        events.push(show(event));
      }
      buffered.push(parser.bufferedBytes);
    }
    return { events, buffered: [...new Set(buffered)], rest: Buffer.from(parser.takeBuffered()).toString('latin1') };
  };
  const whole = run([input]);
  assert.deepEqual(whole.events, ['a NOOP 6000', '+', 'b LOGIN 3000 2', 'c ID 2', '+', 'bad-utf8 d', 'syntax e', 'f LOGIN 1 1']);
  assert.deepEqual(whole.buffered, ['LOGOUT\r\npartial'.length]);
  assert.equal(whole.rest, 'LOGOUT\r\npartial');
  const dribbled = run(Array.from(input, (b) => Uint8Array.of(b)));
  // Nothing is left unread while the parser reads on; what a login leaves grows byte by byte.
  assert.deepEqual(dribbled.buffered, Array.from({ length: 'LOGOUT\r\npartial'.length + 1 }, (_, i) => i));
  assert.deepEqual({ ...dribbled, buffered: whole.buffered }, whole);

  // The part of a line or literal read so far is not buffered input: takeBuffered() leaves it to the parser.
  for (const [head, tail, expected] of [
    ['a NOOP lo', 'ng\r\n', 'a NOOP 4'],
    ['a LOGIN {4+}\r\nus', 'er p\r\n', 'a LOGIN 4 1'],
  ] as const) {
    const parser = new ImapCommandParser();
    for (const b of Buffer.from(head, 'latin1')) {
      parser.push(Uint8Array.of(b));
      assert.equal(parser.nextCommand(), null);
      assert.equal(parser.bufferedBytes, 0);
    }
    parser.push(Buffer.from('zz'));
    assert.equal(parser.bufferedBytes, 2);
    assert.equal(Buffer.from(parser.takeBuffered()).toString('latin1'), 'zz');
    assert.equal(parser.bufferedBytes, 0);
    parser.push(Buffer.from(tail, 'latin1'));
    const event = parser.nextCommand();
    assert.ok(event !== null);
    assert.equal(show(event), expected);
  }
});
