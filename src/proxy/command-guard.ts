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
 * On ManageSieve a run of letters that ends in the word is refused, not only one that is the
 * word: timsieved's lexer splits a run of letters where one of its literals ends
 * (`{1+}\r\nXUNAUTHENTICATE` is the string X, then the command UNAUTHENTICATE), and which
 * literals it takes (leading zeros, a bare LF after the announcement, one behind a broken quoted
 * string) is its own; a guard that counted literals could be made to count otherwise. The word
 * it reads as a command always ends a run the guard sees, wherever that run began for it. Cyrus
 * imapd reads a command name only after a tag and a space, and skips literals to the end of the
 * line after an error: on IMAP the whole run is the word (a message that says "decompress"
 * passes).
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
 * Refuses the words given (ASCII letters, matched without regard to case) wherever they stand
 * alone, or, with `suffixes`, wherever a run of letters ends in one.
 */
export class WordGuard implements CommandGuard {
  private readonly words: readonly Uint8Array[];
  /**
   * Upper-cased letters of the run being read: its first ones (as many as the longest word has),
   * or with `suffixes` its last ones.
   */
  private readonly letters: Uint8Array;
  /** Letters in the run so far. */
  private run = 0;
  refused: string | null = null;

  constructor(
    words: readonly string[],
    private readonly suffixes = false,
  ) {
    this.words = words.map((w) => Buffer.from(w.toUpperCase(), 'latin1'));
    this.letters = new Uint8Array(Math.max(...words.map((w) => w.length)));
  }

  refuses(chunk: Uint8Array, length: number): boolean {
    const letters = this.letters;
    for (let i = 0; i < length; i++) {
      const byte = chunk[i]!;
      if (isLetter(byte)) {
        if (this.suffixes) {
          letters.copyWithin(0, 1);
          letters[letters.length - 1] = byte & 0xdf;
        } else if (this.run < letters.length) {
          letters[this.run] = byte & 0xdf;
        }
        this.run++;
        continue;
      }
      if (this.run > 0 && this.forbidden()) return true;
      this.run = 0;
    }
    return false;
  }

  private forbidden(): boolean {
    const letters = this.letters;
    const end = letters.length;
    const found = this.suffixes
      ? this.words.find((w) => w.length <= this.run && w.every((b, i) => b === letters[end - w.length + i]))
      : this.words.find((w) => w.length === this.run && w.every((b, i) => b === letters[i]));
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

/**
 * The guard for a spliced session whose backend may take UNAUTHENTICATE (see the module
 * comment); `suffixes` for a backend whose lexer may split a run of letters (ManageSieve).
 */
export function unauthenticateGuard(words: readonly string[] = IMAP_GUARDED_WORDS, suffixes = false): WordGuard {
  return new WordGuard(words, suffixes);
}
