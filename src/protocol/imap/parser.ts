/**
 * The IMAP pre-auth command parser: a resumable reader in the style of nginx's ngx_mail_parse.
 * It owns the framing of command lines and literals and checks every size bound where the bytes
 * are read; all its state lives in the object, so input may arrive split at any byte. It never
 * reads past the end of the command (or line) it returns: what stays buffered is exactly what the
 * client sent next (pipelined bytes, or bytes to discard after STARTTLS).
 * Must not: decide what a command means, build wire responses, or do any I/O.
 *
 * Lines end in CRLF; a bare LF is accepted as well (as Dovecot does), a CR anywhere else is a
 * syntax error. Line length counts every byte of the command's lines, line ends included, but not
 * literal data. An AUTHENTICATE line naming a bearer mechanism the machine offers, and a SASL
 * response line of one, may be longer (MAX_AUTHENTICATE_LINE_BYTES): they carry an OAuth token.
 */

import { MAX_AUTHENTICATE_LINE_BYTES, MAX_LINE_BYTES, MAX_NONSYNC_LITERAL_BYTES, MAX_PREAUTH_LITERAL_BYTES } from '../../limits.js';
import { ByteQueue, latin1, skipSpaces } from '../bytes.js';
import { literalSizeWithin } from '../rules.js';

/** One argument of a command: an atom, a string (quoted or literal) or a parenthesised list. */
export type ImapArg =
  | { readonly type: 'atom'; readonly value: string }
  | { readonly type: 'string'; readonly value: string }
  | { readonly type: 'list'; readonly items: readonly ImapArg[] };

/** A complete command line: tag, upper-cased command name, arguments. */
export interface ImapCommand {
  readonly tag: string;
  readonly name: string;
  readonly args: readonly ImapArg[];
}

/** Why a line was rejected; the first group only costs the line, the second ends the connection. */
export type ParseProblem =
  | 'empty-line'
  | 'syntax'
  | 'bad-tag'
  | 'nul'
  | 'eight-bit'
  | 'bad-utf8'
  | 'line-too-long'
  | 'literal-too-big'
  | 'nonsync-literal-too-big'
  | 'command-too-big'
  | 'foreign-protocol';

/** What one parsing step produced. */
export type ParseEvent =
  | { readonly type: 'command'; readonly command: ImapCommand }
  /** A synchronising literal was accepted: the client waits for a "+" continuation. */
  | { readonly type: 'continue' }
  /** A raw line (SASL response), from `nextLine`. */
  | { readonly type: 'line'; readonly text: string }
  /**
   * The line was rejected. When `fatal`, the parser stopped reading for good: either a bound was
   * exceeded or the line announced literal data that must never be read as commands (the nginx rule).
   */
  | { readonly type: 'problem'; readonly problem: ParseProblem; readonly tag: string | null; readonly fatal: boolean };

/** Literal bytes of one command: two LOGIN arguments at their largest; ID values are far smaller. */
const MAX_COMMAND_LITERAL_BYTES = 2 * MAX_PREAUTH_LITERAL_BYTES;

/** Nesting of parenthesised lists: pre-auth commands (ID) need one level. */
const MAX_LIST_DEPTH = 4;

const LF = 0x0a;
const CR = 0x0d;
const SP = 0x20;
const DQUOTE = 0x22;
const PLUS = 0x2b;
const LPAREN = 0x28;
const RPAREN = 0x29;
const BACKSLASH = 0x5c;
const LBRACE = 0x7b;
const RBRACE = 0x7d;

/**
 * Literals and quoted strings are UTF-8 text as the client sent it: a leading U+FEFF is a character of the
 * argument, not a byte-order mark to drop (the decoder's default), or a LOGIN literal would
 * lose it and "<U+FEFF>alice" would log in as alice (the SASL decoder keeps it too).
 */
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * A tag or command word that starts another protocol's request. A browser can be made to POST an
 * HTML form to an IMAP port and an SMTP client may dial the wrong port: closing at once means
 * nothing in such a request is ever executed or echoed back (cross-protocol attacks, as go-imap
 * and Mozilla's port banning guard against). HTTP methods are case-sensitive, SMTP verbs are not.
 */
const HTTP_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'OPTIONS', 'CONNECT', 'TRACE', 'PATCH']);
const SMTP_VERBS = new Set(['HELO', 'EHLO']);

type Token =
  | { readonly kind: 'atom'; readonly value: string }
  | { readonly kind: 'string'; readonly value: string }
  | { readonly kind: 'open' }
  | { readonly kind: 'close' };

const OPEN: Token = { kind: 'open' };
const CLOSE: Token = { kind: 'close' };

type SegmentResult =
  | { readonly problem: ParseProblem }
  | { readonly problem: null; readonly literal: { readonly digits: string; readonly nonsync: boolean } | null; readonly needSeparator: boolean };

/** A resumable IMAP command reader for one client connection. */
export class ImapCommandParser {
  private readonly input = new ByteQueue();
  private dead = false;

  // The line segment being read (the bytes of a line up to its end, or up to a literal) and a
  // literal's data stay in `input` until they are complete (copying each read's bytes out held a
  // Uint8Array per read: 8 KB in 1-byte reads cost 1.7 MB of heap). `scanned` is how much of
  // them was already read: the segment's bytes searched for its LF (each byte is scanned once),
  // or the literal's bytes seen. They are consumed, not buffered: bufferedBytes and
  // takeBuffered() leave them out.
  private scanned = 0;
  private lineBytes = 0;

  // The command being read.
  private segmentIndex = 0;
  private tokens: Token[] = [];
  private needSeparator = false;
  private tag: string | null = null;
  private deferredProblem: ParseProblem | null = null;
  private literalBytes = 0;
  private literalSize = 0;
  private inLiteral = false;
  /** The command is an AUTHENTICATE of a wideMechanisms one, found so when its line reached MAX_LINE_BYTES: it may go on to MAX_AUTHENTICATE_LINE_BYTES. */
  private authenticateLine = false;

  /**
   * Mechanisms (upper case) whose AUTHENTICATE line may go on to MAX_AUTHENTICATE_LINE_BYTES:
   * the bearer ones while the machine offers them (oauth2 set), none otherwise, so that a
   * deployment without oauth2 and a PLAIN or LOGIN line keep MAX_LINE_BYTES.
   */
  wideMechanisms: readonly string[] = [];

  /** Appends received bytes (copied) to the input buffer; after a fatal problem they are dropped. */
  push(chunk: Uint8Array): void {
    if (!this.dead) this.input.push(chunk);
  }

  /** Number of received bytes not yet consumed. */
  get bufferedBytes(): number {
    return this.input.length - this.scanned;
  }

  /** Returns the unconsumed bytes exactly as received and forgets them. */
  takeBuffered(): Uint8Array {
    if (this.scanned === 0) return this.input.take();
    // A partly read segment or literal stays: it belongs to the command being read.
    const input = this.input.view();
    const rest = input.slice(this.scanned);
    const kept = input.slice(0, this.scanned);
    this.input.clear();
    this.input.push(kept);
    return rest;
  }

  /** Forgets all buffered input and any partly read command (after STARTTLS). */
  reset(): void {
    this.input.clear();
    this.scanned = 0;
    this.lineBytes = 0;
    this.resetCommand();
  }

  /** Reads on towards the next command; null when more input is needed (or after a fatal problem). */
  nextCommand(): ParseEvent | null {
    while (!this.dead) {
      if (this.inLiteral) {
        if (!this.readLiteral()) return null;
        continue;
      }
      let segment = this.readSegment(this.authenticateLine ? MAX_AUTHENTICATE_LINE_BYTES : MAX_LINE_BYTES);
      // Looked at only once the line is this long: an AUTHENTICATE line of a bearer mechanism
      // (RFC 4959 SASL-IR, which is never a literal) may carry an OAuth token; any other line is too long.
      // Only the line's first MAX_LINE_BYTES are looked at, whatever else is buffered: the answer
      // must not depend on how the bytes arrived.
      if (segment === 'too-long' && !this.authenticateLine && this.segmentIndex === 0 && isWideAuthenticateLine(this.input.view().subarray(0, MAX_LINE_BYTES), this.wideMechanisms)) {
        this.authenticateLine = true;
        segment = this.readSegment(MAX_AUTHENTICATE_LINE_BYTES);
      }
      if (segment === null) return null;
      if (segment === 'too-long') return this.fatal('line-too-long', this.tag);
      const event = this.onSegment(segment);
      if (event !== null) return event;
    }
    return null;
  }

  /**
   * Reads one raw line (a SASL response) without interpreting it; null when more input is needed.
   * Up to MAX_LINE_BYTES, or MAX_AUTHENTICATE_LINE_BYTES when it answers a bearer mechanism (`bearer`: an OAuth token).
   */
  nextLine(bearer: boolean): ParseEvent | null {
    if (this.dead) return null;
    const segment = this.readSegment(bearer ? MAX_AUTHENTICATE_LINE_BYTES : MAX_LINE_BYTES);
    if (segment === null) return null;
    if (segment === 'too-long') return this.fatal('line-too-long', null);
    this.lineBytes = 0;
    return { type: 'line', text: latin1(segment) };
  }

  private fatal(problem: ParseProblem, tag: string | null): ParseEvent {
    this.dead = true;
    this.input.clear();
    this.scanned = 0;
    return { type: 'problem', problem, tag, fatal: true };
  }

  private resetCommand(): void {
    this.segmentIndex = 0;
    this.tokens = [];
    this.needSeparator = false;
    this.tag = null;
    this.deferredProblem = null;
    this.literalBytes = 0;
    this.literalSize = 0;
    this.inLiteral = false;
    this.authenticateLine = false;
    this.lineBytes = 0;
  }

  /** A line segment without its line end, 'too-long' when the line bound is crossed, or null for more input. */
  private readSegment(maxLineBytes: number): Uint8Array | 'too-long' | null {
    const input = this.input.view();
    const budget = maxLineBytes - this.lineBytes;
    const window = Math.min(input.length, budget);
    const found = input.subarray(this.scanned, window).indexOf(LF);
    if (found < 0) {
      // The bound is checked here, where bytes are read: never buffer beyond it.
      if (window === budget) return 'too-long';
      this.scanned = window;
      return null;
    }
    const lf = this.scanned + found;
    this.scanned = 0;
    this.lineBytes += lf + 1;
    const end = lf > 0 && input[lf - 1] === CR ? lf - 1 : lf;
    // A copy: the queue's buffer is reused for later input.
    const segment = input.slice(0, end);
    this.input.consume(lf + 1);
    return segment;
  }

  /** Reads literal data, left in the input until all of it is there; true when the literal is complete. */
  private readLiteral(): boolean {
    const input = this.input.view();
    if (input.length < this.literalSize) {
      this.scanned = input.length;
      return false;
    }
    this.scanned = 0;
    let value = '';
    try {
      value = utf8.decode(input.subarray(0, this.literalSize));
    } catch {
      this.deferredProblem ??= 'bad-utf8';
    }
    this.input.consume(this.literalSize);
    this.tokens.push({ kind: 'string', value });
    this.literalSize = 0;
    this.inLiteral = false;
    this.needSeparator = true;
    return true;
  }

  /** Handles one complete line segment; returns an event, or null to read on (a non-synchronising literal follows). */
  private onSegment(segment: Uint8Array): ParseEvent | null {
    const first = this.segmentIndex === 0;
    this.segmentIndex++;
    if (first) {
      if (segment.length === 0) return this.reject('empty-line');
      if (isForeignProtocol(segment)) return this.fatal('foreign-protocol', null);
    }
    const result = tokenizeSegment(segment, this.needSeparator, this.tokens);
    // A NUL stops the tokenizer before the first token; a tag complete before it still gets its tagged BAD.
    if (first) this.tag = result.problem === 'nul' ? tagBeforeNul(segment) : validTag(this.tokens[0]);
    let problem: ParseProblem | null = result.problem;
    if (problem === null && first) {
      if (this.tag === null) problem = 'bad-tag';
      else if (this.tokens[1]?.kind !== 'atom') problem = 'syntax';
    }
    if (problem !== null) {
      // nginx's rule: a rejected line that announces a literal ends the connection, because
      // the literal data that follows must never be read as commands.
      if (endsWithLiteralMarker(segment)) return this.fatal(problem, this.tag);
      return this.reject(problem);
    }
    if (result.problem === null && result.literal !== null) {
      const { digits, nonsync } = result.literal;
      const size = literalSizeWithin(digits, nonsync ? MAX_NONSYNC_LITERAL_BYTES : MAX_PREAUTH_LITERAL_BYTES);
      if (size === null) return this.fatal(nonsync ? 'nonsync-literal-too-big' : 'literal-too-big', this.tag);
      if (this.literalBytes + size > MAX_COMMAND_LITERAL_BYTES) return this.fatal('command-too-big', this.tag);
      this.literalBytes += size;
      this.literalSize = size;
      this.inLiteral = true;
      this.needSeparator = true;
      return nonsync ? null : { type: 'continue' };
    }
    if (this.deferredProblem !== null) return this.reject(this.deferredProblem);
    const command = buildCommand(this.tokens);
    if (command === null) return this.reject('syntax');
    this.resetCommand();
    return { type: 'command', command };
  }

  private reject(problem: ParseProblem): ParseEvent {
    const tag = this.tag;
    this.resetCommand();
    return { type: 'problem', problem, tag, fatal: false };
  }
}

const AUTHENTICATE_WORD = 'AUTHENTICATE';

/**
 * True when `line` starts with a tag, the command word AUTHENTICATE and one of `mechanisms`, then a
 * space (any case). Runs of spaces before and between them are skipped, as tokenizeSegment does:
 * a line it reads as such a command is one at any length.
 */
function isWideAuthenticateLine(line: Uint8Array, mechanisms: readonly string[]): boolean {
  if (mechanisms.length === 0) return false;
  const tagStart = skipSpaces(line, 0);
  const tagEnd = line.indexOf(SP, tagStart);
  if (tagEnd <= tagStart) return false;
  const start = skipSpaces(line, tagEnd);
  const wordEnd = start + AUTHENTICATE_WORD.length;
  if (line[wordEnd] !== SP || latin1(line.subarray(start, wordEnd)).toUpperCase() !== AUTHENTICATE_WORD) return false;
  const mechanismStart = skipSpaces(line, wordEnd);
  const end = line.indexOf(SP, mechanismStart);
  return end > mechanismStart && mechanisms.includes(latin1(line.subarray(mechanismStart, end)).toUpperCase());
}

function isAtomChar(c: number): boolean {
  // RFC 3501 ATOM-CHAR, widened by list-wildcards and "]" so that post-auth commands parse
  // far enough to be refused by name.
  return c > SP && c < 0x7f && c !== LPAREN && c !== RPAREN && c !== LBRACE && c !== DQUOTE && c !== BACKSLASH;
}

function tokenizeSegment(segment: Uint8Array, needSeparator: boolean, out: Token[]): SegmentResult {
  if (segment.includes(0)) return { problem: 'nul' };
  let separatorNeeded = needSeparator;
  let i = 0;
  while (i < segment.length) {
    const c = segment[i] as number;
    if (c === SP) {
      // Runs of spaces and a trailing space are tolerated; they change nothing.
      separatorNeeded = false;
      i++;
      continue;
    }
    if (c === RPAREN) {
      out.push(CLOSE);
      separatorNeeded = true;
      i++;
      continue;
    }
    if (separatorNeeded) return { problem: c >= 0x80 ? 'eight-bit' : 'syntax' };
    if (c === LPAREN) {
      out.push(OPEN);
      i++;
      continue;
    }
    if (c === DQUOTE) {
      const chars: number[] = [];
      // RFC 9051 §9 (QUOTED-CHAR) allows UTF-8 in a quoted string, and clients send it there
      // (imapflow's LOGIN "josé" "…"); other 8-bit bytes are refused, as in literals. Only a
      // string with such bytes is decoded: ASCII ones are built from their bytes as they are.
      let eightBit = false;
      let j = i + 1;
      for (;;) {
        if (j >= segment.length) return { problem: 'syntax' };
        const b = segment[j] as number;
        if (b === DQUOTE) break;
        if (b === BACKSLASH) {
          const escaped = segment[j + 1];
          if (escaped !== DQUOTE && escaped !== BACKSLASH) return { problem: 'syntax' };
          chars.push(escaped);
          j += 2;
          continue;
        }
        if (b >= 0x80) eightBit = true;
        else if (b === CR) return { problem: 'syntax' };
        chars.push(b);
        j++;
      }
      let value: string;
      if (!eightBit) {
        value = String.fromCharCode(...chars);
      } else {
        try {
          value = utf8.decode(Uint8Array.from(chars));
        } catch {
          return { problem: 'bad-utf8' };
        }
      }
      out.push({ kind: 'string', value });
      separatorNeeded = true;
      i = j + 1;
      continue;
    }
    if (c === LBRACE) {
      let j = i + 1;
      while (j < segment.length && (segment[j] as number) >= 0x30 && (segment[j] as number) <= 0x39) j++;
      const digits = latin1(segment.subarray(i + 1, j));
      const nonsync = segment[j] === PLUS;
      if (nonsync) j++;
      // A literal announcement is only valid as the very last thing on its line.
      if (digits.length === 0 || segment[j] !== RBRACE || j !== segment.length - 1) return { problem: 'syntax' };
      return { problem: null, literal: { digits, nonsync }, needSeparator: true };
    }
    if (isAtomChar(c)) {
      let j = i;
      while (j < segment.length && isAtomChar(segment[j] as number)) j++;
      out.push({ kind: 'atom', value: latin1(segment.subarray(i, j)) });
      separatorNeeded = true;
      i = j;
      continue;
    }
    return { problem: c >= 0x80 ? 'eight-bit' : 'syntax' };
  }
  return { problem: null, literal: null, needSeparator: separatorNeeded };
}

/** True when the line ends in "{digits}" or "{digits+}", whatever came before. */
function endsWithLiteralMarker(segment: Uint8Array): boolean {
  let j = segment.length - 1;
  if (segment[j] !== RBRACE) return false;
  j--;
  if (segment[j] === PLUS) j--;
  const lastDigit = j;
  while (j >= 0 && (segment[j] as number) >= 0x30 && (segment[j] as number) <= 0x39) j--;
  return j < lastDigit && segment[j] === LBRACE;
}

function isForeignProtocol(segment: Uint8Array): boolean {
  const space = segment.indexOf(SP);
  const word = latin1(space < 0 ? segment : segment.subarray(0, space));
  return HTTP_METHODS.has(word) || SMTP_VERBS.has(word.toUpperCase());
}

/** The tag of a line with a NUL in it, when the tag ends (at a space) before the first NUL. */
function tagBeforeNul(segment: Uint8Array): string | null {
  const space = segment.indexOf(SP);
  if (space <= 0 || space > segment.indexOf(0)) return null;
  const tokens: Token[] = [];
  return tokenizeSegment(segment.subarray(0, space), false, tokens).problem === null ? validTag(tokens[0]) : null;
}

function validTag(token: Token | undefined): string | null {
  if (token?.kind !== 'atom') return null;
  // RFC 3501: tag = 1*<any ASTRING-CHAR except "+">; list-wildcards are not ASTRING-CHARs.
  return /[+%*]/.test(token.value) ? null : token.value;
}

function buildCommand(tokens: readonly Token[]): ImapCommand | null {
  const [tag, name] = tokens;
  if (tag?.kind !== 'atom' || name?.kind !== 'atom') return null;
  const root: ImapArg[] = [];
  const stack: ImapArg[][] = [root];
  for (const token of tokens.slice(2)) {
    const top = stack[stack.length - 1] as ImapArg[];
    switch (token.kind) {
      case 'open': {
        if (stack.length > MAX_LIST_DEPTH) return null;
        const items: ImapArg[] = [];
        top.push({ type: 'list', items });
        stack.push(items);
        break;
      }
      case 'close':
        if (stack.length === 1) return null;
        stack.pop();
        break;
      case 'atom':
        top.push({ type: 'atom', value: token.value });
        break;
      case 'string':
        top.push({ type: 'string', value: token.value });
        break;
    }
  }
  if (stack.length !== 1) return null;
  return { tag: tag.value, name: name.value.toUpperCase(), args: root };
}

