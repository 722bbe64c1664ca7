/**
 * ManageSieve framing (RFC 5804 §1.2, §4) for both directions: a resumable reader that turns
 * bytes into logical lines of tokens (atoms, quoted strings, literals, response-code parentheses),
 * and the helpers that write strings back. It checks every size bound where the bytes are read
 * and never reads past the end of the line it returns, so what stays buffered is exactly what
 * the peer sent next (pipelined bytes, or bytes to drop after STARTTLS).
 * Must not: decide what a command or response means, or do any I/O.
 *
 * A logical line is one or more CRLF-terminated segments: a segment that ends in "{N}" or "{N+}"
 * is followed by N octets of literal data, and the line goes on after them. A bare LF also ends
 * a segment (as Dovecot and Cyrus accept); a CR anywhere else is a syntax error.
 */

import { literalSizeWithin } from '../rules.js';
import { ByteQueue, latin1, skipSpaces } from '../bytes.js';

/** One element of a line. Strings are quoted strings or literals, already unquoted. */
export type SieveToken =
  | { readonly kind: 'atom'; readonly value: string }
  | { readonly kind: 'string'; readonly value: string }
  | { readonly kind: 'open' }
  | { readonly kind: 'close' };

/** Why a line was rejected; `fatal` problems leave the reader dead. */
export type SieveProblem = 'empty-line' | 'syntax' | 'nul' | 'bad-utf8' | 'line-too-long' | 'literal-too-big' | 'foreign-protocol';

/** What one reading step produced; `wireBytes` counts everything the line used, literals included. */
export type SieveParseEvent =
  | { readonly type: 'line'; readonly tokens: readonly SieveToken[]; readonly wireBytes: number }
  | { readonly type: 'problem'; readonly problem: SieveProblem; readonly fatal: boolean; readonly wireBytes: number };

/** The bounds and checks of one direction. */
export interface SieveReaderOptions {
  /** Bytes of a line's segments, line ends included, literal data excluded. */
  readonly maxLineBytes: number;
  /** Octets of one literal. */
  readonly maxLiteralBytes: number;
  /** Octets of all literals of one line together. */
  readonly maxLineLiteralBytes: number;
  /** Strings must be valid UTF-8 (RFC 5804 §4 "UTF8-2 / UTF8-3 / UTF8-4"); otherwise they are read leniently. */
  readonly strictUtf8: boolean;
  /** Close at once on a first line that belongs to HTTP or SMTP (client side only). */
  readonly rejectForeignProtocols: boolean;
  /**
   * Wider bounds for an AUTHENTICATE line naming one of `wideMechanisms` and, while
   * `saslResponse` is set, a SASL response line (client side only): they carry an OAuth token.
   */
  readonly authenticate?: SieveLineBounds;
}

/** The size bounds of one line. */
export type SieveLineBounds = Pick<SieveReaderOptions, 'maxLineBytes' | 'maxLiteralBytes' | 'maxLineLiteralBytes'>;

const LF = 0x0a;
const CR = 0x0d;
const SP = 0x20;
const DQUOTE = 0x22;
const LPAREN = 0x28;
const RPAREN = 0x29;
const PLUS = 0x2b;
const BACKSLASH = 0x5c;
const LBRACE = 0x7b;
const RBRACE = 0x7d;

// A leading U+FEFF is kept: it is part of the string, not a byte-order mark to drop (the decoder's
// default), or a NOOP's TAG would come back changed and "<U+FEFF>PLAIN" would name PLAIN.
const strictDecoder = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
const lenientDecoder = new TextDecoder('utf-8', { ignoreBOM: true });

/**
 * First words of other protocols' requests. A browser can be made to POST a form to port 4190 and
 * an SMTP client may dial the wrong port; answering such lines one by one would let them drive
 * the dialogue (cross-protocol attacks), so the connection ends without a reply. HTTP methods are
 * case-sensitive, SMTP verbs are not.
 */
const HTTP_METHODS = new Set(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'OPTIONS', 'CONNECT', 'TRACE', 'PATCH', 'PRI']);
const SMTP_VERBS = new Set(['HELO', 'EHLO']);

type SegmentResult =
  | { readonly problem: SieveProblem }
  | { readonly problem: null; readonly literal: { readonly digits: string } | null };

/** A resumable ManageSieve line reader for one direction of one connection. */
export class SieveReader {
  readonly #options: SieveReaderOptions;
  readonly #input = new ByteQueue();
  #dead = false;
  // The logical line being read. The segment being read and a literal's data stay in #input
  // until they are complete (copying each read's bytes out held a Uint8Array per read: 8 KB
  // in 1-byte reads cost 1.7 MB of heap); #scanned is how much of the segment was already
  // searched for its LF, so that each byte is scanned once.
  #scanned = 0;
  #lineBytes = 0;
  #wireBytes = 0;
  #segmentIndex = 0;
  #tokens: SieveToken[] = [];
  #needSeparator = false;
  #deferred: SieveProblem | null = null;
  #literalBytes = 0;
  #lineLiteralBytes = 0;
  #inLiteral = false;
  /** The line is an AUTHENTICATE command of a wideMechanisms mechanism: options.authenticate bounds it. */
  #authenticateLine = false;

  /** Mechanisms (upper case) whose AUTHENTICATE line options.authenticate bounds: set by the machine (the bearer ones while offered), none by default. */
  wideMechanisms: readonly string[] = [];

  /** The next lines are SASL responses of such a mechanism (the machine is in its exchange): options.authenticate bounds them. */
  saslResponse = false;

  constructor(options: SieveReaderOptions) {
    this.#options = options;
  }

  /** Appends a copy of `chunk`; after a fatal problem input is dropped. */
  push(chunk: Uint8Array): void {
    if (!this.#dead) this.#input.push(chunk);
  }

  /** Received bytes not yet returned as part of a line (a partly read line's included). */
  get bufferedBytes(): number {
    return this.#input.length;
  }

  /** The bytes not yet returned as part of a line, exactly as received; they are forgotten. */
  takeBuffered(): Uint8Array {
    this.#scanned = 0;
    return this.#input.take();
  }

  /** Forgets every buffered byte and any partly read line (after STARTTLS). */
  reset(): void {
    this.#input.clear();
    this.#resetLine();
  }

  /** Reads on towards the next line; null when more input is needed (or the reader is dead). */
  next(): SieveParseEvent | null {
    while (!this.#dead) {
      if (this.#inLiteral) {
        if (!this.#readLiteral()) return null;
        continue;
      }
      let segment = this.#readSegment();
      // Looked at only once the line is this long: an AUTHENTICATE line of a wide mechanism with
      // its response quoted may go on to the wider bound; any other line is too long. Only the
      // line's first maxLineBytes are looked at, whatever else is buffered: the answer must not
      // depend on how the bytes arrived.
      if (segment === 'too-long' && this.#options.authenticate !== undefined && !this.#authenticateLine && this.#segmentIndex === 0 && startsWithAuthenticate(this.#input.view().subarray(0, this.#options.maxLineBytes), this.wideMechanisms)) {
        this.#authenticateLine = true;
        segment = this.#readSegment();
      }
      if (segment === null) return null;
      if (segment === 'too-long') return this.#fatal('line-too-long');
      const event = this.#onSegment(segment);
      if (event !== null) return event;
    }
    return null;
  }

  #fatal(problem: SieveProblem): SieveParseEvent {
    const wireBytes = this.#wireBytes;
    this.#dead = true;
    this.#input.clear();
    this.#resetLine();
    return { type: 'problem', problem, fatal: true, wireBytes };
  }

  #reject(problem: SieveProblem): SieveParseEvent {
    const wireBytes = this.#wireBytes;
    this.#resetLine();
    return { type: 'problem', problem, fatal: false, wireBytes };
  }

  #resetLine(): void {
    this.#scanned = 0;
    this.#lineBytes = 0;
    this.#wireBytes = 0;
    this.#segmentIndex = 0;
    this.#tokens = [];
    this.#needSeparator = false;
    this.#deferred = null;
    this.#literalBytes = 0;
    this.#lineLiteralBytes = 0;
    this.#inLiteral = false;
    this.#authenticateLine = false;
  }

  /** Sets #authenticateLine once the line's first tokens are AUTHENTICATE and a mechanism of wideMechanisms (quoted, an atom or a literal). */
  #noteAuthenticate(): void {
    if (this.#authenticateLine || this.#options.authenticate === undefined || this.wideMechanisms.length === 0) return;
    const [word, mechanism] = this.#tokens;
    if (word?.kind !== 'atom' || word.value.length !== AUTHENTICATE.length || word.value.toUpperCase() !== AUTHENTICATE) return;
    if (mechanism?.kind !== 'atom' && mechanism?.kind !== 'string') return;
    // Lengths first: this runs at each segment and literal of the line, a mechanism literal may be 4 KiB.
    const name = mechanism.value;
    this.#authenticateLine = this.wideMechanisms.some((wide) => wide.length === name.length && wide === name.toUpperCase());
  }

  #bounds(): SieveLineBounds {
    return this.#options.authenticate !== undefined && (this.saslResponse || this.#authenticateLine) ? this.#options.authenticate : this.#options;
  }

  /** The next segment without its line end; 'too-long' once the line bound is reached without one. */
  #readSegment(): Uint8Array | 'too-long' | null {
    const input = this.#input.view();
    const budget = this.#bounds().maxLineBytes - this.#lineBytes;
    const window = Math.min(input.length, budget);
    const found = input.subarray(this.#scanned, window).indexOf(LF);
    if (found < 0) {
      // Checked where the bytes are read: nothing beyond the bound is ever buffered as a line.
      if (window === budget) return 'too-long';
      this.#scanned = window;
      return null;
    }
    const lf = this.#scanned + found;
    this.#scanned = 0;
    this.#lineBytes += lf + 1;
    this.#wireBytes += lf + 1;
    const end = lf > 0 && input[lf - 1] === CR ? lf - 1 : lf;
    // A copy: the queue's buffer is reused for later input.
    const segment = input.slice(0, end);
    this.#input.consume(lf + 1);
    return segment;
  }

  /** Reads literal data, left in the input until all of it is there; true once the literal is complete. */
  #readLiteral(): boolean {
    const input = this.#input.view();
    if (input.length < this.#literalBytes) return false;
    const value = this.#decode(input.subarray(0, this.#literalBytes));
    this.#input.consume(this.#literalBytes);
    this.#wireBytes += this.#literalBytes;
    if (value === null) this.#deferred ??= 'bad-utf8';
    this.#tokens.push({ kind: 'string', value: value ?? '' });
    this.#noteAuthenticate();
    this.#literalBytes = 0;
    this.#inLiteral = false;
    this.#needSeparator = true;
    return true;
  }

  #decode(bytes: Uint8Array): string | null {
    if (!this.#options.strictUtf8) return lenientDecoder.decode(bytes);
    try {
      return strictDecoder.decode(bytes);
    } catch {
      return null;
    }
  }

  /** Handles a complete segment: a line event, a problem, or null when literal data follows. */
  #onSegment(segment: Uint8Array): SieveParseEvent | null {
    const first = this.#segmentIndex === 0;
    this.#segmentIndex++;
    if (first) {
      if (segment.length === 0) return this.#reject('empty-line');
      if (this.#options.rejectForeignProtocols && isForeignProtocol(segment)) return this.#fatal('foreign-protocol');
    }
    const result = this.#tokenize(segment);
    this.#noteAuthenticate();
    if (result.problem !== null) {
      // nginx's rule: a rejected line that announces a literal ends the connection, because its
      // data could not be skipped safely and must never be read as commands.
      if (endsWithLiteralMarker(segment)) return this.#fatal(result.problem);
      return this.#reject(result.problem);
    }
    if (result.literal !== null) {
      const bounds = this.#bounds();
      const size = literalSizeWithin(result.literal.digits, bounds.maxLiteralBytes);
      if (size === null) return this.#fatal('literal-too-big');
      if (this.#lineLiteralBytes + size > bounds.maxLineLiteralBytes) return this.#fatal('literal-too-big');
      this.#lineLiteralBytes += size;
      this.#literalBytes = size;
      this.#inLiteral = true;
      return null;
    }
    if (this.#deferred !== null) return this.#reject(this.#deferred);
    const event: SieveParseEvent = { type: 'line', tokens: this.#tokens, wireBytes: this.#wireBytes };
    this.#resetLine();
    return event;
  }

  #tokenize(segment: Uint8Array): SegmentResult {
    if (segment.includes(0)) return { problem: 'nul' };
    const out = this.#tokens;
    let separatorNeeded = this.#needSeparator;
    let i = 0;
    while (i < segment.length) {
      const c = segment[i] as number;
      if (c === SP) {
        separatorNeeded = false;
        i++;
        continue;
      }
      if (c === RPAREN) {
        out.push({ kind: 'close' });
        separatorNeeded = true;
        i++;
        continue;
      }
      if (separatorNeeded) return { problem: 'syntax' };
      if (c === LPAREN) {
        out.push({ kind: 'open' });
        i++;
        continue;
      }
      if (c === DQUOTE) {
        const bytes: number[] = [];
        let j = i + 1;
        for (;;) {
          if (j >= segment.length) return { problem: 'syntax' };
          const b = segment[j] as number;
          if (b === DQUOTE) break;
          if (b === BACKSLASH) {
            // RFC 5804 §4: QUOTED-SPECIALS are the only characters that may be escaped.
            const escaped = segment[j + 1];
            if (escaped !== DQUOTE && escaped !== BACKSLASH) return { problem: 'syntax' };
            bytes.push(escaped);
            j += 2;
            continue;
          }
          if (b === CR) return { problem: 'syntax' };
          bytes.push(b);
          j++;
        }
        const value = this.#decode(Uint8Array.from(bytes));
        if (value === null) return { problem: 'bad-utf8' };
        out.push({ kind: 'string', value });
        separatorNeeded = true;
        i = j + 1;
        continue;
      }
      if (c === LBRACE) {
        let j = i + 1;
        while (j < segment.length && isDigit(segment[j] as number)) j++;
        const digits = latin1(segment.subarray(i + 1, j));
        // RFC 5804 §4: clients send "{N+}", servers "{N}"; both are read the same way, since
        // ManageSieve has no continuation request to wait for.
        if (segment[j] === PLUS) j++;
        if (digits.length === 0 || segment[j] !== RBRACE || j !== segment.length - 1) return { problem: 'syntax' };
        this.#needSeparator = true;
        return { problem: null, literal: { digits } };
      }
      if (isAtomChar(c)) {
        let j = i;
        while (j < segment.length && isAtomChar(segment[j] as number)) j++;
        out.push({ kind: 'atom', value: latin1(segment.subarray(i, j)) });
        separatorNeeded = true;
        i = j;
        continue;
      }
      return { problem: 'syntax' };
    }
    this.#needSeparator = separatorNeeded;
    return { problem: null, literal: null };
  }
}

function isDigit(c: number): boolean {
  return c >= 0x30 && c <= 0x39;
}

function isAtomChar(c: number): boolean {
  return c > SP && c < 0x7f && c !== DQUOTE && c !== LPAREN && c !== RPAREN && c !== LBRACE && c !== BACKSLASH;
}

/** True when the segment ends in "{digits}" or "{digits+}", whatever came before. */
function endsWithLiteralMarker(segment: Uint8Array): boolean {
  let j = segment.length - 1;
  if (segment[j] !== RBRACE) return false;
  j--;
  if (segment[j] === PLUS) j--;
  const lastDigit = j;
  while (j >= 0 && isDigit(segment[j] as number)) j--;
  return j < lastDigit && segment[j] === LBRACE;
}

function isForeignProtocol(segment: Uint8Array): boolean {
  const space = segment.indexOf(SP);
  const word = latin1(space < 0 ? segment : segment.subarray(0, space));
  return HTTP_METHODS.has(word) || SMTP_VERBS.has(word.toUpperCase());
}

const AUTHENTICATE = 'AUTHENTICATE';

/**
 * True when `line` starts with the command word AUTHENTICATE and one of `mechanisms`, quoted or not,
 * then a space (any case). Runs of spaces before and between them are skipped, as #tokenize does:
 * a line it reads as such a command is one at any length.
 */
function startsWithAuthenticate(line: Uint8Array, mechanisms: readonly string[]): boolean {
  if (mechanisms.length === 0) return false;
  const wordStart = skipSpaces(line, 0);
  const wordEnd = wordStart + AUTHENTICATE.length;
  if (line[wordEnd] !== SP || latin1(line.subarray(wordStart, wordEnd)).toUpperCase() !== AUTHENTICATE) return false;
  const start = skipSpaces(line, wordEnd);
  const end = line.indexOf(SP, start);
  if (end <= start) return false;
  const word = latin1(line.subarray(start, end)).toUpperCase();
  return mechanisms.some((mechanism) => word === mechanism || word === `"${mechanism}"`);
}

/** RFC 5804 §4: a quoted string holds at most 1024 octets; longer values go as literals. */
const MAX_QUOTED_BYTES = 1024;

/**
 * A ManageSieve string for `value`: quoted when RFC 5804 allows it, otherwise a literal, in the
 * form the sender must use ("{N}" from a server, "{N+}" from a client; §4 literal-s2c/-c2s).
 */
export function sieveString(value: string, from: 'server' | 'client'): string {
  const bytes = Buffer.byteLength(value, 'utf8');
  if (bytes <= MAX_QUOTED_BYTES && !/[\0\r\n]/.test(value)) return `"${value.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
  return from === 'server' ? `{${bytes}}\r\n${value}` : `{${bytes}+}\r\n${value}`;
}

/** Replaces control characters with spaces and bounds the length, so text is safe on one line (and in a log). */
export function oneLineText(text: string, maxChars = 200): string {
  const cleaned = text.replace(/[\x00-\x1f\x7f]+/g, ' ').trim();
  return cleaned.length > maxChars ? `${cleaned.slice(0, maxChars)}...` : cleaned;
}

/** A response line (RFC 5804 §4 response-oknobye) taken apart, or null for a data line. */
export interface SieveResponse {
  readonly status: 'OK' | 'NO' | 'BYE';
  /** The response code's first word, upper-cased (e.g. TRYLATER, SASL, TAG), or null. */
  readonly code: string | null;
  /** The human text, or '' when there is none. */
  readonly text: string;
}

/** Reads a line's tokens as OK/NO/BYE with an optional response code and text; null for anything else. */
export function parseResponse(tokens: readonly SieveToken[]): SieveResponse | null {
  const [head, ...rest] = tokens;
  if (head?.kind !== 'atom') return null;
  const word = head.value.toUpperCase();
  const status = word === 'OK' || word === 'NO' || word === 'BYE' ? word : null;
  if (status === null) return null;
  let code: string | null = null;
  let i = 0;
  if (rest[0]?.kind === 'open') {
    const name = rest[1];
    code = name?.kind === 'atom' || name?.kind === 'string' ? name.value.toUpperCase() : '';
    let depth = 0;
    for (; i < rest.length; i++) {
      const token = rest[i] as SieveToken;
      if (token.kind === 'open') depth++;
      else if (token.kind === 'close' && --depth === 0) break;
    }
    i++;
  }
  const textToken = rest[i];
  return { status, code, text: textToken?.kind === 'string' ? textToken.value : '' };
}
