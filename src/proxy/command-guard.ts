/**
 * Keeps a spliced client from logging out of the backend login mailfront made for it.
 *
 * After the splice the backend connection is authenticated as the user mailfront checked. A
 * backend that offers UNAUTHENTICATE (RFC 5804 §2.14.1 for ManageSieve, which Cyrus's timsieved
 * implements; RFC 8437 for IMAP) would take the connection back to the non-authenticated state
 * on that command, and the client could then authenticate there as anyone the backend knows,
 * with passwords the directory never checked and guesses the throttle never counts, from
 * mailfront's address. The guard looks at what the client sends and stops such a command
 * before its line end reaches the backend (a backend runs a command only at its CRLF).
 *
 * It does not parse literals: it checks the start of every line the client sends, literal data
 * included. Every command starts at the start of a line, so nothing is missed; a line of literal
 * data that reads like the command (an APPEND of a message with a line "a UNAUTHENTICATE") is
 * refused too, which costs that session and nothing else. The scan is one pass: bytes past a
 * line's command name are skipped with indexOf.
 */

const LF = 0x0a;
const CR = 0x0d;
const SP = 0x20;
const TAB = 0x09;
const COMMAND = Buffer.from('UNAUTHENTICATE');

/** What a client the guard stops is told before the connection closes. */
export const UNAUTHENTICATE_REFUSED = 'UNAUTHENTICATE is not available through this proxy; log in again on a new connection';

/** Whether a chunk on its way to the backend completes the command that must not reach it. */
export interface CommandGuard {
  /** True when `chunk` (the first `length` bytes) holds the forbidden command up to its end (SP, CR or LF): it must not be sent. */
  refuses(chunk: Uint8Array, length: number): boolean;
}

const enum State {
  /** At a line's start (IMAP: in the tag). */
  Tag,
  /** Matching the command name; `matched` bytes so far. */
  Name,
  /** The name matched in full: the next byte says whether it is the command or a longer word. */
  AfterName,
  /** Not the command: skipping to the line's end. */
  Skip,
}

/** The guard for one spliced session; `tagged` for IMAP (a tag and a space come before the command). */
export class UnauthenticateGuard implements CommandGuard {
  private state: State;
  private matched = 0;

  constructor(private readonly tagged: boolean) {
    this.state = tagged ? State.Tag : State.Name;
  }

  refuses(chunk: Uint8Array, length: number): boolean {
    let i = 0;
    while (i < length) {
      const byte = chunk[i]!;
      switch (this.state) {
        case State.Skip: {
          const lf = chunk.indexOf(LF, i);
          if (lf < 0 || lf >= length) return false;
          i = lf + 1;
          this.lineStart();
          continue;
        }
        case State.Tag:
          if (byte === LF) this.lineStart();
          else if (byte === SP) {
            this.state = State.Name;
            this.matched = 0;
          } else if (byte === CR) this.state = State.Skip;
          break;
        case State.Name:
          // Blanks before the name are passed over: a lenient backend parser may take them.
          if (this.matched === 0 && (byte === SP || byte === TAB)) break;
          // Matched without regard to case (an ASCII lower-case letter is compared upper-cased).
          if ((byte >= 0x61 && byte <= 0x7a ? byte - 0x20 : byte) === COMMAND[this.matched]) {
            this.matched++;
            if (this.matched === COMMAND.length) this.state = State.AfterName;
          } else if (byte === LF) this.lineStart();
          else this.state = State.Skip;
          break;
        case State.AfterName:
          if (byte === SP || byte === CR || byte === LF) return true;
          this.state = State.Skip;
          continue;
      }
      i++;
    }
    return false;
  }

  private lineStart(): void {
    this.state = this.tagged ? State.Tag : State.Name;
    this.matched = 0;
  }
}
