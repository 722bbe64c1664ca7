/**
 * Keeps a spliced client from logging out of the backend login mailfront made for it.
 *
 * After the splice the backend connection is authenticated as the user mailfront checked. A
 * backend that offers UNAUTHENTICATE (RFC 5804 §2.14.1 for ManageSieve, which Cyrus's timsieved
 * implements; RFC 8437 for IMAP) would take the connection back to the non-authenticated state
 * on that command, and the client could then authenticate there as anyone the backend knows,
 * with passwords the directory never checked and guesses the throttle never counts, from
 * mailfront's address. The guard looks at what the client sends and stops such a command before
 * the byte that ends its name reaches the backend (a backend's lexer needs that byte to see the
 * word whole).
 *
 * It does not follow the protocol's grammar, because the backend's parser need not either:
 * timsieved, after a syntax error, goes on lexing in the middle of the line, so
 * `*UNAUTHENTICATE` or `LISTSCRIPTS(UNAUTHENTICATE` run the command there, and a literal the
 * server refuses leaves its data to be read as commands. So the word is refused wherever it
 * stands as a word of its own (a run of ASCII letters, any case, with no letter either side), in
 * strings and literal data too. The price: a script, message or search that holds the word by
 * itself closes its session. Other words (STARTTLS, COMPRESS) are refused with it where they
 * would hide what follows from the guard (an encrypted or compressed stream); on IMAP the login
 * reply leaves them out of the capabilities, so that a client does not use them unasked.
 *
 * A literal's data may end a word where it ends: timsieved reads `{1+}\r\nX` as a string token
 * of its own, refuses it, and reads the letters right after it as the next command, so
 * `{1+}\r\nXUNAUTHENTICATE` runs UNAUTHENTICATE there. A literal the backend refuses does not
 * end one: its data is read as commands, so `UNAUTH` at the end of a refused literal and
 * `ENTICATE` after it are UNAUTHENTICATE. So both are looked at: the run of letters as a whole,
 * and its part after the end of a literal's data.
 *
 * Words are matched in ASCII: Cyrus and Dovecot compare command names with the C library's
 * isalpha and tolower in the C locale, so a Unicode look-alike (dotless i, long s) is no command
 * to them.
 */

/** Whether a chunk on its way to the backend completes a word that must not reach it. */
export interface CommandGuard {
  /** True when `chunk` (the first `length` bytes) completes a forbidden word: it must not be sent. */
  refuses(chunk: Uint8Array, length: number): boolean;
  /** The word refused, once refuses() said true (for the log). */
  readonly refused: string | null;
}

/** What a client the guard stops is told before the connection closes. */
export const UNAUTHENTICATE_REFUSED = 'UNAUTHENTICATE, STARTTLS and COMPRESS are not available through this proxy once logged in; log in again on a new connection';

/** The words refused on IMAP (RFC 8437 UNAUTHENTICATE; STARTTLS and RFC 4978 COMPRESS would hide what follows). */
export const IMAP_GUARDED_WORDS = ['UNAUTHENTICATE', 'STARTTLS', 'COMPRESS'] as const;
/** On ManageSieve (RFC 5804 has no compression; STARTTLS after login would hide what follows). */
export const SIEVE_GUARDED_WORDS = ['UNAUTHENTICATE', 'STARTTLS'] as const;

function isLetter(byte: number): boolean {
  return (byte >= 0x41 && byte <= 0x5a) || (byte >= 0x61 && byte <= 0x7a);
}

/**
 * Where a literal's announcement stands, byte by byte: `{`, its digits, an optional `+` (or `-`,
 * RFC 7888), `}`, an optional CR, then the LF after which its data begins.
 */
const enum Announcing {
  No,
  Open,
  Digits,
  Plus,
  Close,
  Cr,
}

/** A literal size past which counting stops making sense (the data is never that long). */
const MAX_LITERAL_DIGITS = 15;

/** Refuses the words given (ASCII letters, matched without regard to case) wherever they stand alone. */
export class WordGuard implements CommandGuard {
  private readonly words: readonly Uint8Array[];
  /** The letters of the word being read, upper-cased, while it is no longer than the longest forbidden word. */
  private readonly word: Uint8Array;
  private length = 0;
  /** The word being read is longer than any forbidden one. */
  private tooLong = false;
  /** The same for the letters of the word after a literal's data ended inside it (`afterLiteral`). */
  private readonly tail: Uint8Array;
  private tailLength = 0;
  private tailTooLong = false;
  private afterLiteral = false;
  /** A literal's announcement being read, and the size it gives. */
  private announcing = Announcing.No;
  private digits = 0;
  private size = 0;
  /** Bytes of a literal's data still to come: where it ends, a word ends. */
  private literalLeft = 0;
  refused: string | null = null;

  constructor(words: readonly string[]) {
    this.words = words.map((w) => Buffer.from(w.toUpperCase(), 'latin1'));
    this.word = new Uint8Array(Math.max(...words.map((w) => w.length)));
    this.tail = new Uint8Array(this.word.length);
  }

  refuses(chunk: Uint8Array, length: number): boolean {
    for (let i = 0; i < length; i++) {
      const byte = chunk[i]!;
      const inLiteral = this.literalLeft > 0;
      if (inLiteral) this.literalLeft--;
      else this.announce(byte);
      if (isLetter(byte)) {
        const upper = byte & 0xdf;
        if (this.length < this.word.length) this.word[this.length++] = upper;
        else this.tooLong = true;
        if (this.afterLiteral) {
          if (this.tailLength < this.tail.length) this.tail[this.tailLength++] = upper;
          else this.tailTooLong = true;
        }
        // The literal's last byte: a word may begin after it, for a backend that took the literal.
        if (inLiteral && this.literalLeft === 0) {
          this.afterLiteral = true;
          this.tailLength = 0;
          this.tailTooLong = false;
        }
        continue;
      }
      if (this.endWord()) return true;
    }
    return false;
  }

  /** The word being read ends: true when it, or its part after a literal's data, is a forbidden one. */
  private endWord(): boolean {
    const refused =
      (this.length > 0 && !this.tooLong && this.forbidden(this.word, this.length)) ||
      (this.afterLiteral && this.tailLength > 0 && !this.tailTooLong && this.forbidden(this.tail, this.tailLength));
    this.length = 0;
    this.tooLong = false;
    this.afterLiteral = false;
    return refused;
  }

  /** Follows a literal's announcement outside literal data; its LF starts the data. */
  private announce(byte: number): void {
    switch (this.announcing) {
      case Announcing.Open:
      case Announcing.Digits:
        if (byte >= 0x30 && byte <= 0x39 && this.digits < MAX_LITERAL_DIGITS) {
          this.size = this.size * 10 + (byte - 0x30);
          this.digits++;
          this.announcing = Announcing.Digits;
          return;
        }
        if (this.announcing === Announcing.Digits && (byte === 0x2b || byte === 0x2d)) {
          this.announcing = Announcing.Plus;
          return;
        }
        if (this.announcing === Announcing.Digits && byte === 0x7d) {
          this.announcing = Announcing.Close;
          return;
        }
        break;
      case Announcing.Plus:
        if (byte === 0x7d) {
          this.announcing = Announcing.Close;
          return;
        }
        break;
      case Announcing.Close:
      case Announcing.Cr:
        if (byte === 0x0d && this.announcing === Announcing.Close) {
          this.announcing = Announcing.Cr;
          return;
        }
        if (byte === 0x0a) {
          this.announcing = Announcing.No;
          this.literalLeft = this.size;
          return;
        }
        break;
      case Announcing.No:
        break;
    }
    this.announcing = byte === 0x7b ? Announcing.Open : Announcing.No;
    this.digits = 0;
    this.size = 0;
  }

  private forbidden(letters: Uint8Array, length: number): boolean {
    const found = this.words.find((w) => w.length === length && w.every((b, i) => b === letters[i]));
    if (found !== undefined) this.refused = Buffer.from(found).toString('latin1');
    return found !== undefined;
  }
}

/**
 * Whether a backend whose capabilities are `capabilities` may take UNAUTHENTICATE, so that its
 * spliced sessions need a guard: when it lists it, or when its capabilities are not known (null).
 */
export function mayUnauthenticate(capabilities: string | null): boolean {
  return capabilities === null || /(?:^| )UNAUTHENTICATE(?: |$)/i.test(capabilities);
}

/** The guard for a spliced session whose backend may take UNAUTHENTICATE (see the module comment). */
export function unauthenticateGuard(words: readonly string[] = IMAP_GUARDED_WORDS): WordGuard {
  return new WordGuard(words);
}
