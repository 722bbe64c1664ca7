import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MAX_AUTHENTICATE_LINE_BYTES, MAX_LINE_BYTES } from '../../src/limits.js';
import { ImapCommandParser, type ImapArg, type ParseEvent } from '../../src/protocol/imap/parser.js';
import { bytes, chunkers, latin1, utf8 } from './imap-testkit.js';

/** Feeds the input in chunks, reading commands after each; returns the events as plain text, then what stays buffered. */
function parse(input: Uint8Array, chunk: (b: Uint8Array) => Uint8Array[], wideMechanisms: readonly string[] = []): string[] {
  const parser = new ImapCommandParser();
  parser.wideMechanisms = wideMechanisms;
  const events: string[] = [];
  for (const piece of chunk(input)) {
    parser.push(piece);
    for (let event = parser.nextCommand(); event !== null; event = parser.nextCommand()) events.push(show(event));
  }
  events.push(`buffered ${latin1(parser.takeBuffered())}`);
  return events;
}

function show(event: ParseEvent): string {
  switch (event.type) {
    case 'command':
      return `${event.command.tag} ${event.command.name}${event.command.args.map((a) => ` ${showArg(a)}`).join('')}`;
    case 'continue':
      return '+';
    case 'line':
      return `line ${event.text}`;
    case 'problem':
      return `${event.fatal ? 'FATAL' : 'BAD'} ${event.problem} tag=${event.tag}`;
  }
}

function showArg(arg: ImapArg): string {
  switch (arg.type) {
    case 'atom':
      return arg.value;
    case 'string':
      return JSON.stringify(arg.value);
    case 'list':
      return `(${arg.items.map(showArg).join(' ')})`;
  }
}

/** Parses whole, split at every position (every 61st beyond 1 KiB) and byte by byte; all must agree. */
function events(input: string | Uint8Array): string[] {
  const data = bytes(input);
  const expected = parse(data, (b) => [b]);
  const all = chunkers(data.length);
  for (const [i, { label, chunk }] of all.entries()) {
    if (i < 1024 || i % 61 === 0 || i === all.length - 1) assert.deepStrictEqual(parse(data, chunk), expected, label);
  }
  return expected;
}

describe('IMAP command parser', () => {
  it('reads atoms, quoted strings with escapes, and lists', () => {
    assert.deepStrictEqual(events('a1 login alice "pa ss\\"wo\\\\rd"\r\nb2 ID ("name" "x" "os" NIL)\r\n'), [
      'a1 LOGIN alice "pa ss\\"wo\\\\rd"',
      'b2 ID ("name" "x" "os" NIL)',
      'buffered ',
    ]);
  });

  it('reads synchronising literals and asks for each one', () => {
    assert.deepStrictEqual(events('a LOGIN {5}\r\nalice {6}\r\nsecret\r\n'), ['+', '+', 'a LOGIN "alice" "secret"', 'buffered ']);
  });

  it('takes literal sizes with leading zeros (RFC 9051: number = 1*DIGIT)', () => {
    assert.deepStrictEqual(events('a LOGIN {05}\r\nalice {00006+}\r\nsecret\r\n'), ['+', 'a LOGIN "alice" "secret"', 'buffered ']);
  });

  it('a NUL answers with the tag when the tag is complete before it, untagged otherwise', () => {
    assert.deepStrictEqual(events('a LOGIN al\x00 pw\r\nb\x00c NOOP\r\n\x00\r\n'), ['BAD nul tag=a', 'BAD nul tag=null', 'BAD nul tag=null', 'buffered ']);
  });

  it('reads non-synchronising literals without asking', () => {
    assert.deepStrictEqual(events('a LOGIN {5+}\r\nalice {5+}\r\nse\r\nt\r\n'), ['a LOGIN "alice" "se\\r\\nt"', 'buffered ']);
  });

  it('decodes literals as UTF-8 and refuses invalid UTF-8 after reading the whole command', () => {
    assert.deepStrictEqual(events(utf8('a LOGIN {5}\r\nj\u00fcrg x\r\n')), ['+', 'a LOGIN "j\u00fcrg" x', 'buffered ']);
    assert.deepStrictEqual(events(Buffer.from('a LOGIN {1}\r\n\xff x\r\nb NOOP\r\n', 'latin1')), ['+', 'BAD bad-utf8 tag=a', 'b NOOP', 'buffered ']);
  });

  it('reads UTF-8 in quoted strings (RFC 9051 §9), escapes included', () => {
    assert.deepStrictEqual(events(utf8('a LOGIN "jos\u00e9" "p\u00e4ss \\"w\u20ac\\" \u{1f600}"\r\nb ID ("name" "K\u00f6nig")\r\n')), [
      'a LOGIN "jos\u00e9" "p\u00e4ss \\"w\u20ac\\" \u{1f600}"',
      'b ID ("name" "K\u00f6nig")',
      'buffered ',
    ]);
    assert.deepStrictEqual(events(utf8('a LOGIN "\ufeffalice" x\r\n')), ['a LOGIN "\ufeffalice" x', 'buffered ']);
  });

  it('refuses quoted strings that are not UTF-8, and 8-bit bytes outside strings, reading on', () => {
    // Latin-1, a lone continuation byte, a sequence cut by the quote, an overlong "/", a surrogate, beyond U+10FFFF.
    for (const bad of ['jos\xe9', '\x80', 'x\xc3', '\xc0\xaf', '\xed\xa0\x80', '\xf4\x90\x80\x80']) {
      assert.deepStrictEqual(events(Buffer.from(`a LOGIN "${bad}" x\r\nb NOOP\r\n`, 'latin1')), ['BAD bad-utf8 tag=a', 'b NOOP', 'buffered '], JSON.stringify(bad));
    }
    assert.deepStrictEqual(events(utf8('a LOGIN jos\u00e9 x\r\nb LOGIN "x"\u00e9 y\r\nc NOOP\r\n')), ['BAD eight-bit tag=a', 'BAD eight-bit tag=b', 'c NOOP', 'buffered ']);
    // NUL and CR stay refused in a string with UTF-8 in it.
    assert.deepStrictEqual(events(utf8('a LOGIN "\u00e9\x00" x\r\nb LOGIN "\u00e9\rx" y\r\nc NOOP\r\n')), ['BAD nul tag=a', 'BAD syntax tag=b', 'c NOOP', 'buffered ']);
    // A line refused for its quoted string still ends the connection when it announces a literal.
    assert.deepStrictEqual(events(Buffer.from('a LOGIN "\xe9" {13}\r\nb LOGIN u p\r\n', 'latin1')), ['FATAL bad-utf8 tag=a', 'buffered ']);
  });

  it('keeps a leading U+FEFF in a literal: it is part of the argument, not a byte-order mark', () => {
    assert.deepStrictEqual(events(utf8('a LOGIN {8}\r\n\ufeffalice {5}\r\n\ufeffpw\r\n')), ['+', '+', 'a LOGIN "\ufeffalice" "\ufeffpw"', 'buffered ']);
  });

  it('accepts a bare LF as line end and tolerates extra spaces', () => {
    assert.deepStrictEqual(events('a NOOP\nb  LOGIN  x y \r\n'), ['a NOOP', 'b LOGIN x y', 'buffered ']);
  });

  it('stops at the end of each command, leaving the rest buffered as received', () => {
    const parser = new ImapCommandParser();
    parser.push(bytes('a LOGIN x y\r\nb SELECT "INBOX"\r\n\xff\x00 partial'));
    assert.equal(show(parser.nextCommand() as ParseEvent), 'a LOGIN x y');
    assert.equal(latin1(parser.takeBuffered()), 'b SELECT "INBOX"\r\n\xff\x00 partial');
  });

  it('rejects bad lines without losing the next command', () => {
    assert.deepStrictEqual(
      events('\r\na NOOP\x00\r\nb LOGIN x\xe9 y\r\nc LOGIN "unterminated\r\n* NOOP\r\nd+ NOOP\r\ne\r\nf NOOP)\r\ng ID ((((((x))))))\r\nh NOOP\rX\r\ni NOOP\r\n'),
      [
        'BAD empty-line tag=null',
        'BAD nul tag=a',
        'BAD eight-bit tag=b',
        'BAD syntax tag=c',
        'BAD bad-tag tag=null',
        'BAD bad-tag tag=null',
        'BAD syntax tag=e',
        'BAD syntax tag=f',
        'BAD syntax tag=g',
        'BAD syntax tag=h',
        'i NOOP',
        'buffered ',
      ],
    );
  });

  it('ends the connection when a rejected line announces a literal (nginx rule)', () => {
    // The literal data would otherwise be read as a command: here it is a LOGIN.
    assert.deepStrictEqual(events('a LOGIN "x {13}\r\nb LOGIN u p\r\n'), ['FATAL syntax tag=a', 'buffered ']);
    assert.deepStrictEqual(events('* LOGIN {13+}\r\nb LOGIN u p\r\n'), ['FATAL bad-tag tag=null', 'buffered ']);
    assert.deepStrictEqual(events('a {13}\r\nb LOGIN u p\r\n'), ['FATAL syntax tag=a', 'buffered ']);
  });

  it('rejects huge literal sizes by their digit count, without reading the data', () => {
    for (const size of ['4294967296', '99999999999999999999', '4097', '0000004097']) {
      assert.deepStrictEqual(events(`a LOGIN {${size}}\r\nb LOGIN u p\r\n`), ['FATAL literal-too-big tag=a', 'buffered ']);
    }
    assert.deepStrictEqual(events('a LOGIN {4097+}\r\nb LOGIN u p\r\n'), ['FATAL nonsync-literal-too-big tag=a', 'buffered ']);
    assert.deepStrictEqual(events('a LOGIN {18446744073709551617+}\r\nb LOGIN u p\r\n'), ['FATAL nonsync-literal-too-big tag=a', 'buffered ']);
  });

  it('accepts literals up to the bound and bounds the literal bytes of one command', () => {
    const big = 'x'.repeat(4096);
    assert.deepStrictEqual(events(`a LOGIN {4096+}\r\n${big} {4096+}\r\n${big}\r\n`), [`a LOGIN ${JSON.stringify(big)} ${JSON.stringify(big)}`, 'buffered ']);
    assert.deepStrictEqual(events(`a ID ({4096+}\r\n${big} {4096+}\r\n${big} {1+}\r\nx)\r\n`), ['FATAL command-too-big tag=a', 'buffered ']);
  });

  it('bounds the line length, literal data excluded, without buffering beyond it', () => {
    const exact = `a NOOP${' '.repeat(MAX_LINE_BYTES - 8)}\r\n`;
    assert.equal(exact.length, MAX_LINE_BYTES);
    assert.deepStrictEqual(parse(bytes(exact), (b) => [b]), ['a NOOP', 'buffered ']);
    const over = `a NOOP${' '.repeat(MAX_LINE_BYTES - 7)}\r\n`;
    assert.deepStrictEqual(parse(bytes(over), (b) => [b]), ['FATAL line-too-long tag=null', 'buffered ']);
    // The bound is checked as bytes arrive: MAX_LINE_BYTES bytes without a line end are enough.
    const parser = new ImapCommandParser();
    parser.push(bytes('a'.repeat(MAX_LINE_BYTES - 1)));
    assert.equal(parser.nextCommand(), null);
    parser.push(bytes('a'));
    assert.equal(show(parser.nextCommand() as ParseEvent), 'FATAL line-too-long tag=null');
    parser.push(bytes('b NOOP\r\n'));
    assert.equal(parser.nextCommand(), null);
    // Literal data does not count towards the line, the lines around it do.
    const literal = 'y'.repeat(4000);
    const half = ' '.repeat(MAX_LINE_BYTES / 2);
    assert.deepStrictEqual(parse(bytes(`a ID ("k"${half}{4000+}\r\n${literal})\r\n`), (b) => [b]), [`a ID ("k" ${JSON.stringify(literal)})`, 'buffered ']);
    assert.deepStrictEqual(parse(bytes(`a ID ("k"${half}{4000+}\r\n${literal}${half})\r\n`), (b) => [b]), [
      'FATAL line-too-long tag=a',
      'buffered ',
    ]);
  });

  it('lets an AUTHENTICATE line of a wideMechanisms mechanism and a bearer SASL response line go on to MAX_AUTHENTICATE_LINE_BYTES, no other line', () => {
    const BEARER = ['OAUTHBEARER', 'XOAUTH2'];
    const response = (lineBytes: number, prefix: string): string => `${prefix}${'A'.repeat(lineBytes - prefix.length - 2)}\r\n`;
    const tooLong = ['FATAL line-too-long tag=null', 'buffered '];
    for (const prefix of ['a AUTHENTICATE OAUTHBEARER ', 'tag.1 authenticate xoauth2 ']) {
      const exact = response(MAX_AUTHENTICATE_LINE_BYTES, prefix);
      const [tag, name, mechanism] = prefix.split(' ');
      const expected = [`${tag} ${name?.toUpperCase()} ${mechanism} ${'A'.repeat(exact.length - prefix.length - 2)}`, 'b NOOP', 'buffered '];
      const shown = (events: string[]): string[] => events.map((e) => (e.length > 80 ? `${e.slice(0, 40)}..${e.length}` : e));
      for (const chunk of [(b: Uint8Array) => [b], (b: Uint8Array) => [b.subarray(0, MAX_LINE_BYTES), b.subarray(MAX_LINE_BYTES)], (b: Uint8Array) => Array.from({ length: Math.ceil(b.length / 1000) }, (_, i) => b.subarray(i * 1000, (i + 1) * 1000))]) {
        assert.deepStrictEqual(shown(parse(bytes(`${exact}b NOOP\r\n`), chunk, BEARER)), shown(expected), prefix);
        assert.deepStrictEqual(parse(bytes(`${response(MAX_AUTHENTICATE_LINE_BYTES + 1, prefix)}b NOOP\r\n`), chunk, BEARER), tooLong);
        // Without wideMechanisms (no oauth2), the same line is too long at MAX_LINE_BYTES.
        assert.deepStrictEqual(parse(bytes(`${exact}b NOOP\r\n`), chunk), tooLong, `${prefix}without wideMechanisms`);
      }
    }
    // Any other line keeps MAX_LINE_BYTES: another mechanism's AUTHENTICATE, a LOGIN, ...
    for (const prefix of ['a AUTHENTICATE PLAIN ', 'a AUTHENTICATE LOGIN ', 'a AUTHENTICATE OAUTHBEARERX ', 'a LOGIN alice ', 'a AUTHENTICATEX OAUTHBEARER ']) {
      assert.deepStrictEqual(parse(bytes(response(MAX_LINE_BYTES + 1, prefix)), (b) => [b], BEARER), tooLong, prefix);
      assert.deepStrictEqual(parse(bytes(response(MAX_LINE_BYTES, prefix)), (b) => [b], BEARER).length, 2, prefix);
    }
    // The raw lines of a bearer mechanism's exchange (its responses): the same wider bound; any other's, MAX_LINE_BYTES.
    const parser = new ImapCommandParser();
    parser.push(bytes(`a AUTHENTICATE XOAUTH2\r\n${'B'.repeat(MAX_AUTHENTICATE_LINE_BYTES - 2)}\r\n`));
    assert.equal(show(parser.nextCommand() as ParseEvent), 'a AUTHENTICATE XOAUTH2');
    assert.equal((parser.nextLine(true) as { text: string }).text.length, MAX_AUTHENTICATE_LINE_BYTES - 2);
    parser.push(bytes('C'.repeat(MAX_AUTHENTICATE_LINE_BYTES)));
    assert.equal(show(parser.nextLine(true) as ParseEvent), 'FATAL line-too-long tag=null');
    const plain = new ImapCommandParser();
    plain.push(bytes(`${'B'.repeat(MAX_LINE_BYTES - 2)}\r\n${'C'.repeat(MAX_LINE_BYTES)}`));
    assert.equal((plain.nextLine(false) as { text: string }).text.length, MAX_LINE_BYTES - 2);
    assert.equal(show(plain.nextLine(false) as ParseEvent), 'FATAL line-too-long tag=null');
  });

  it('finds a bearer AUTHENTICATE line with runs of spaces as the tokenizer reads it, at any length; only in the first MAX_LINE_BYTES', () => {
    const BEARER = ['OAUTHBEARER', 'XOAUTH2'];
    const line = (lineBytes: number, prefix: string): string => `${prefix}${'A'.repeat(lineBytes - prefix.length - 2)}\r\n`;
    const shown = (events: string[]): string[] => events.map((e) => (e.length > 80 ? `${e.slice(0, 40)}..${e.length}` : e));
    const split = (at: number) => (b: Uint8Array) => [b.subarray(0, at), b.subarray(at)];
    const chunks = [(b: Uint8Array) => [b], split(MAX_LINE_BYTES), split(MAX_LINE_BYTES - 1), (b: Uint8Array) => Array.from({ length: Math.ceil(b.length / 997) }, (_, i) => b.subarray(i * 997, (i + 1) * 997))];
    const tooLong = ['FATAL line-too-long tag=null', 'buffered '];
    for (const prefix of ['a  AUTHENTICATE OAUTHBEARER ', 'a AUTHENTICATE  OAUTHBEARER ', ' a AUTHENTICATE OAUTHBEARER ', '   a   authenticate   xoauth2   ']) {
      // A short line with these spaces is the command: a long one is too, up to the wider bound.
      const command = (lineBytes: number): string[] => shown([`a AUTHENTICATE ${prefix.trim().split(/ +/)[2]} ${'A'.repeat(lineBytes - prefix.length - 2)}`, 'b NOOP', 'buffered ']);
      assert.deepStrictEqual(shown(parse(bytes(`${line(200, prefix)}b NOOP\r\n`), (b) => [b], BEARER)), command(200), prefix);
      for (const chunk of chunks) {
        assert.deepStrictEqual(shown(parse(bytes(`${line(MAX_AUTHENTICATE_LINE_BYTES, prefix)}b NOOP\r\n`), chunk, BEARER)), command(MAX_AUTHENTICATE_LINE_BYTES), prefix);
        assert.deepStrictEqual(parse(bytes(`${line(MAX_AUTHENTICATE_LINE_BYTES + 1, prefix)}b NOOP\r\n`), chunk, BEARER), tooLong, prefix);
        assert.deepStrictEqual(parse(bytes(`${line(MAX_LINE_BYTES + 1, prefix)}b NOOP\r\n`), chunk), tooLong, `${prefix}without wideMechanisms`);
      }
    }
    // The tag, AUTHENTICATE and the mechanism with its space must lie in the line's first
    // MAX_LINE_BYTES: a longer tag, or more spaces, is too long however the bytes arrive.
    for (const prefix of [`${'t'.repeat(MAX_LINE_BYTES)} AUTHENTICATE OAUTHBEARER `, `a${' '.repeat(MAX_LINE_BYTES)}AUTHENTICATE OAUTHBEARER `]) {
      for (const chunk of chunks) assert.deepStrictEqual(parse(bytes(`${line(MAX_LINE_BYTES + 200, prefix)}b NOOP\r\n`), chunk, BEARER), tooLong, prefix.slice(-30));
    }
  });

  it('closes at once on HTTP and SMTP requests (cross-protocol attacks)', () => {
    for (const line of ['GET / HTTP/1.1', 'POST /form HTTP/1.1', 'ehlo attacker.example', 'HELO x', 'CONNECT host:993 HTTP/1.1']) {
      assert.deepStrictEqual(events(`${line}\r\na LOGIN u p\r\n`), ['FATAL foreign-protocol tag=null', 'buffered ']);
    }
    // HTTP methods are case-sensitive: "get" is an ordinary (unknown) IMAP tag.
    assert.deepStrictEqual(events('get NOOP\r\n'), ['get NOOP', 'buffered ']);
  });

  it('reads raw lines for SASL responses', () => {
    const parser = new ImapCommandParser();
    parser.push(bytes('a AUTHENTICATE PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\n*\nb NOOP\r\n'));
    assert.equal(show(parser.nextCommand() as ParseEvent), 'a AUTHENTICATE PLAIN');
    assert.equal(show(parser.nextLine(false) as ParseEvent), 'line AGFsaWNlAHNlY3JldA==');
    assert.equal(show(parser.nextLine(false) as ParseEvent), 'line *');
    assert.equal(show(parser.nextCommand() as ParseEvent), 'b NOOP');
  });
});
