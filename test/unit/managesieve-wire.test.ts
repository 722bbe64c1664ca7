import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ManageSieveResponseBoundary } from '../../src/protocol/managesieve/index.js';
import { parseResponse, SieveReader, sieveString, type SieveParseEvent, type SieveReaderOptions } from '../../src/protocol/managesieve/wire.js';
import { bytes, chunkers } from './managesieve-harness.js';

const CLIENT: SieveReaderOptions = { maxLineBytes: 64, maxLiteralBytes: 16, maxLineLiteralBytes: 24, strictUtf8: true, rejectForeignProtocols: true };

/** Every event the reader yields for `input`, identical for every chunking (asserted). */
function read(input: string | Uint8Array, options: SieveReaderOptions = CLIENT): { events: SieveParseEvent[]; rest: string } {
  const run = (chunk: (b: Uint8Array) => Uint8Array[]): { events: SieveParseEvent[]; rest: string } => {
    const reader = new SieveReader(options);
    const events: SieveParseEvent[] = [];
    for (const piece of chunk(bytes(input))) {
      reader.push(piece);
      for (let e = reader.next(); e !== null; e = reader.next()) events.push(e);
    }
    return { events, rest: Buffer.from(reader.takeBuffered()).toString('latin1') };
  };
  const expected = run((b) => [b]);
  for (const { label, chunk } of chunkers([input])) assert.deepStrictEqual(run(chunk), expected, label);
  return expected;
}

describe('managesieve reader', () => {
  it('reads atoms, quoted strings with escapes, literals of both forms and parentheses', () => {
    const { events } = read('PUTSCRIPT "my \\"s\\" \\\\" {3+}\r\nab\n {2}\r\nxy\r\nOK (TAG "t") "x"\r\n');
    assert.deepEqual(events, [
      { type: 'line', tokens: [{ kind: 'atom', value: 'PUTSCRIPT' }, { kind: 'string', value: 'my "s" \\' }, { kind: 'string', value: 'ab\n' }, { kind: 'string', value: 'xy' }], wireBytes: 43 },
      { type: 'line', tokens: [{ kind: 'atom', value: 'OK' }, { kind: 'open' }, { kind: 'atom', value: 'TAG' }, { kind: 'string', value: 't' }, { kind: 'close' }, { kind: 'string', value: 'x' }], wireBytes: 18 },
    ]);
  });

  it('takes literal sizes with leading zeros (RFC 5804: number = 1*DIGIT), still bounded by value', () => {
    const { events } = read('AUTHENTICATE "PLAIN" {003+}\r\nabc\r\n');
    assert.deepEqual(events, [{ type: 'line', tokens: [{ kind: 'atom', value: 'AUTHENTICATE' }, { kind: 'string', value: 'PLAIN' }, { kind: 'string', value: 'abc' }], wireBytes: 34 }]);
    assert.deepEqual(read('NOOP {000017+}\r\nNOOP\r\n').events.map((e) => e.type === 'problem' && e.problem), ['literal-too-big']);
  });

  it('never reads past the line it returns', () => {
    const reader = new SieveReader(CLIENT);
    reader.push(bytes('NOOP\r\nLISTSCRIPTS\r\npartial'));
    assert.equal(reader.next()?.type, 'line');
    assert.equal(Buffer.from(reader.takeBuffered()).toString(), 'LISTSCRIPTS\r\npartial');
  });

  it('rejects bad escapes, text after a literal marker, stray quotes and 8-bit atoms, reading on afterwards', () => {
    const { events } = read('NOOP "a\\b"\r\nNOOP {3+} x\r\nNOOP "open\r\nN\u00e4\r\nNOOP\r\n');
    assert.deepEqual(
      events.map((e) => (e.type === 'line' ? 'line' : `${e.problem}${e.fatal ? '!' : ''}`)),
      ['syntax', 'syntax', 'syntax', 'syntax', 'line'],
    );
  });

  it('bounds lines, literals and the literals of one line; fatal problems drop everything after them', () => {
    assert.deepEqual(read(`NOOP "${'x'.repeat(70)}"\r\nNOOP\r\n`).events.map((e) => e.type === 'problem' && e.problem), ['line-too-long']);
    assert.deepEqual(read('NOOP {17+}\r\nNOOP\r\n').events.map((e) => e.type === 'problem' && e.problem), ['literal-too-big']);
    assert.deepEqual(read('NOOP {16+}\r\n0123456789abcdef {9+}\r\nNOOP\r\n').events.map((e) => e.type === 'problem' && e.problem), ['literal-too-big']);
    const { events, rest } = read('NOOP {16+}\r\n0123456789abcdef {8+}\r\n01234567\r\nNOOP\r\n');
    assert.deepEqual(events.map((e) => e.type), ['line', 'line']);
    assert.equal(rest, '');
  });

  it('a literal counts towards the line\'s wire bytes but not towards its line bound', () => {
    const { events } = read(`AUTHENTICATE "PLAIN" {16+}\r\n${'a'.repeat(16)}\r\n`);
    assert.deepEqual(events.map((e) => e.wireBytes), [28 + 16 + 2]);
  });

  it('gives an AUTHENTICATE line of a wide mechanism the wider bound with runs of spaces as #tokenize reads it; only in the first maxLineBytes', () => {
    const WIDE: SieveReaderOptions = { ...CLIENT, authenticate: { maxLineBytes: 200, maxLiteralBytes: 100, maxLineLiteralBytes: 150 } };
    const readWide = (input: string): { events: SieveParseEvent[]; rest: string } => {
      const run = (chunk: (b: Uint8Array) => Uint8Array[]): { events: SieveParseEvent[]; rest: string } => {
        const reader = new SieveReader(WIDE);
        reader.wideMechanisms = ['OAUTHBEARER', 'XOAUTH2'];
        const events: SieveParseEvent[] = [];
        for (const piece of chunk(bytes(input))) {
          reader.push(piece);
          for (let e = reader.next(); e !== null; e = reader.next()) events.push(e);
        }
        return { events, rest: Buffer.from(reader.takeBuffered()).toString('latin1') };
      };
      const expected = run((b) => [b]);
      for (const { label, chunk } of chunkers([input])) assert.deepStrictEqual(run(chunk), expected, label);
      return expected;
    };
    const line = (prefix: string, lineBytes: number): string => `${prefix}"${'a'.repeat(lineBytes - prefix.length - 4)}"\r\n`;
    const tooLong = { events: [{ type: 'problem', problem: 'line-too-long', fatal: true, wireBytes: 0 }], rest: '' };
    for (const prefix of ['AUTHENTICATE  "OAUTHBEARER" ', ' AUTHENTICATE "OAUTHBEARER" ', '  authenticate   xoauth2   ', 'AUTHENTICATE OAUTHBEARER ']) {
      for (const lineBytes of [40, 200]) {
        const { events } = readWide(`${line(prefix, lineBytes)}NOOP\r\n`);
        assert.equal(events.length, 2, `${prefix} ${lineBytes}`);
        assert.equal(events[0]?.type === 'line' && events[0].wireBytes, lineBytes, `${prefix} ${lineBytes}`);
      }
      assert.deepStrictEqual(readWide(`${line(prefix, 201)}NOOP\r\n`), tooLong, prefix);
    }
    // The command word and the mechanism with its space lie in the line's first maxLineBytes, or the line is too long whatever the chunks.
    for (const prefix of [`${' '.repeat(64)}AUTHENTICATE "OAUTHBEARER" `, `AUTHENTICATE${' '.repeat(60)}"OAUTHBEARER" `, 'AUTHENTICATE  "PLAIN" ']) {
      assert.deepStrictEqual(readWide(`${line(prefix, 180)}NOOP\r\n`), tooLong, prefix);
    }
  });

  it('keeps a leading U+FEFF in quoted strings and literals, on both sides: part of the string, not a byte-order mark', () => {
    const input = Buffer.from('NOOP "\ufeffabc" {4+}\r\n\ufeffx\r\n', 'utf8');
    const tokens = [{ kind: 'atom', value: 'NOOP' }, { kind: 'string', value: '\ufeffabc' }, { kind: 'string', value: '\ufeffx' }];
    assert.deepEqual(read(input).events, [{ type: 'line', tokens, wireBytes: input.length }]);
    assert.deepEqual(read(input, { ...CLIENT, strictUtf8: false, rejectForeignProtocols: false }).events, [{ type: 'line', tokens, wireBytes: input.length }]);
  });

  it('reads leniently where asked (backend side): invalid UTF-8 becomes U+FFFD, other protocols are not looked for', () => {
    const backend: SieveReaderOptions = { ...CLIENT, strictUtf8: false, rejectForeignProtocols: false };
    const { events } = read(Buffer.concat([Buffer.from('GET "'), Buffer.from([0xff]), Buffer.from('"\r\n')]), backend);
    assert.deepEqual(events, [{ type: 'line', tokens: [{ kind: 'atom', value: 'GET' }, { kind: 'string', value: '\ufffd' }], wireBytes: 9 }]);
  });
});

describe('managesieve strings and responses', () => {
  it('quotes what it can and sends the rest as literals in the sender\'s form', () => {
    assert.equal(sieveString('a "b" \\c', 'server'), '"a \\"b\\" \\\\c"');
    assert.equal(sieveString('line\r\nbreak', 'server'), '{11}\r\nline\r\nbreak');
    assert.equal(sieveString('x'.repeat(1025), 'client'), `{1025+}\r\n${'x'.repeat(1025)}`);
    assert.equal(sieveString('ü'.repeat(512), 'server'), `"${'ü'.repeat(512)}"`);
    assert.equal(sieveString('ü'.repeat(513), 'server').slice(0, 7), '{1026}\r');
  });

  it('takes OK/NO/BYE lines apart, nested extension data included', () => {
    const tokens = (line: string) => {
      const reader = new SieveReader({ ...CLIENT, maxLineBytes: 200, strictUtf8: false, rejectForeignProtocols: false });
      reader.push(bytes(line));
      const event = reader.next();
      assert.equal(event?.type, 'line');
      return event?.type === 'line' ? event.tokens : [];
    };
    assert.deepEqual(parseResponse(tokens('OK\r\n')), { status: 'OK', code: null, text: '' });
    assert.deepEqual(parseResponse(tokens('no (quota/maxsize) "too big"\r\n')), { status: 'NO', code: 'QUOTA/MAXSIZE', text: 'too big' });
    assert.deepEqual(parseResponse(tokens('BYE (X-EXT (1 "a" (b))) "bye"\r\n')), { status: 'BYE', code: 'X-EXT', text: 'bye' });
    assert.equal(parseResponse(tokens('"SASL" "PLAIN"\r\n')), null);
    assert.equal(parseResponse(tokens('OKAY\r\n')), null);
  });
});

describe('managesieve response boundary (where a drain BYE may go)', () => {
  function boundaryAfter(text: string): boolean {
    const results = new Set<boolean>();
    for (const { chunk } of chunkers([text])) {
      const tracker = new ManageSieveResponseBoundary();
      for (const piece of chunk(bytes(text))) tracker.observe(piece);
      results.add(tracker.atBoundary());
    }
    assert.equal(results.size, 1, `chunking changed the result for ${JSON.stringify(text)}`);
    return [...results][0] as boolean;
  }

  it('is at a boundary between lines, not inside a line or a literal', () => {
    assert.equal(boundaryAfter(''), true);
    assert.equal(boundaryAfter('OK "Logged in."\r\n'), true);
    assert.equal(boundaryAfter('"s1" ACTI'), false);
    assert.equal(boundaryAfter('"s1" ACTIVE\r\n"s2"\r\n'), true);
    // A GETSCRIPT body that looks like responses is still a literal.
    assert.equal(boundaryAfter('{18}\r\nOK "fake"\r\nkeep;\r\n'), false);
    assert.equal(boundaryAfter('{18}\r\nOK "fake"\r\nkeep;\r\n\r\n'), true);
    assert.equal(boundaryAfter('{18}\r\nOK "fake"\r\nkeep;\r\n\r\nOK "Getscript completed."\r\n'), true);
    assert.equal(boundaryAfter('OK (TAG {3}\r\nabc) "Done"\r\n'), true);
    assert.equal(boundaryAfter('OK (TAG {3}\r\nabc'), false);
    assert.equal(boundaryAfter('{0}\r\n'), false);
    assert.equal(boundaryAfter('{0}\r\n\r\n'), true);
  });
});
