/**
 * Tracks IMAP server responses in a spliced byte stream just enough to know whether the
 * stream sits between two responses: outside any literal (RFC 9051 §4.3) and at the start of a
 * line. Used only to decide whether an untagged BYE may be written before closing; it never
 * alters or buffers the stream. Cost per chunk: one native indexOf and a byte comparison or two
 * per line; only a line that ends in "}" (a literal may follow) or runs on into the next chunk
 * is looked at as text, and the bytes inside literals are skipped unread.
 *
 * A line end without its CR outside a literal means the stream is not IMAP text: after COMPRESS
 * DEFLATE (RFC 4978) the bytes are compressed, and a BYE written among them would garble the
 * stream. From then on the tracker never answers "at a boundary", and a session is closed without
 * a notice. (Before the first such byte, compressed data is read as an unfinished line.)
 */
import type { ResponseBoundaryTracker } from '../types.js';

const LF = 0x0a;
const CR = 0x0d;
const CLOSE_BRACE = 0x7d;
const SPACE = 0x20;
/** Enough of a line's end to see "{N}\r" for any literal size we would believe. */
const TAIL_BYTES = 32;
const LITERAL_AT_END = /\{(\d{1,20})\+?\}\r?$/;
/**
 * The most of a response's start kept to see its tag (or "*", "+") and the word after it: a tag
 * is the client's choice, and one longer than this is taken for a data response's.
 */
const HEAD_BYTES = 8192 + 16;
/**
 * A status response (tagged, or untagged OK/NO/BAD/BYE/PREAUTH) or a continuation request: its
 * text is resp-text (RFC 9051 §7.1), plain text whatever it ends with. "a NO Mailbox doesn't
 * exist: x{5}", a mailbox name the client chose, announces no literal.
 */
const STATUS_RESPONSE = /^(?:\+(?: |\r|$)|[^ \r]+ (?:OK|NO|BAD|BYE|PREAUTH)(?:[ \r]|$))/i;

function latin1(chunk: Uint8Array, start: number, end: number): string {
  return Buffer.from(chunk.buffer, chunk.byteOffset + start, end - start).toString('latin1');
}

/** IMAP response boundary tracker. */
export class ImapResponseBoundary implements ResponseBoundaryTracker {
  private literalLeft = 0;
  private inLine = false;
  /** The last bytes of a line that started in an earlier chunk; '' when the line starts in this one. */
  private tail = '';
  /** The last byte observed (-1: none yet). */
  private lastByte = -1;
  /** A line end without CR was seen: the stream is not IMAP text (see the module comment). */
  private lost = false;
  /** The line under way is a response's first (no literal in it yet): a status response may end it. */
  private firstLine = true;
  /** The first bytes of a response's first line that runs on into later chunks. */
  private head = '';

  observe(chunk: Uint8Array): void {
    if (this.lost || chunk.length === 0) return;
    const byteBefore = this.lastByte;
    this.lastByte = chunk[chunk.length - 1]!;
    let i = 0;
    while (i < chunk.length) {
      if (this.literalLeft > 0) {
        const take = Math.min(this.literalLeft, chunk.length - i);
        this.literalLeft -= take;
        i += take;
        continue;
      }
      const lf = chunk.indexOf(LF, i);
      if (lf < 0) {
        // The line runs on into the next chunk: keep its end to look at with the rest (and, for a
        // response's first line, its start).
        if (this.firstLine && !this.headKnown()) this.head += latin1(chunk, i, this.headEnd(chunk, i, chunk.length));
        this.inLine = true;
        this.tail = (this.tail + latin1(chunk, Math.max(i, chunk.length - TAIL_BYTES), chunk.length)).slice(-TAIL_BYTES);
        return;
      }
      if ((lf > 0 ? chunk[lf - 1] : byteBefore) !== CR) {
        this.lost = true;
        return;
      }
      let literal = this.literalEndingAt(chunk, i, lf);
      if (literal >= 0 && this.firstLine) {
        // Rare: only a line ending in "{N}" gets here.
        const head = this.headKnown() ? this.head : this.head + latin1(chunk, i, this.headEnd(chunk, i, lf));
        if (STATUS_RESPONSE.test(head)) literal = -1;
      }
      this.head = '';
      // The response goes on after a literal; after a line with none the next one starts.
      this.firstLine = literal < 0;
      i = lf + 1;
      // The line goes on after a literal's bytes (even none: "{0}").
      this.literalLeft = Math.max(literal, 0);
      this.inLine = literal >= 0;
    }
  }

  /** The size of the literal announced at the end of the line [start, lf), or -1 for none. */
  private literalEndingAt(chunk: Uint8Array, start: number, lf: number): number {
    const pending = this.tail;
    this.tail = '';
    if (pending === '') {
      // The usual line, whole in this chunk: no literal unless it ends in "}" or "}\r".
      const last = lf > start && chunk[lf - 1] === CR ? lf - 2 : lf - 1;
      if (last < start || chunk[last] !== CLOSE_BRACE) return -1;
      const match = LITERAL_AT_END.exec(latin1(chunk, Math.max(start, lf - TAIL_BYTES), lf));
      return match ? Number(match[1]) : -1;
    }
    const match = LITERAL_AT_END.exec((pending + latin1(chunk, Math.max(start, lf - TAIL_BYTES), lf)).slice(-TAIL_BYTES));
    return match ? Number(match[1]) : -1;
  }

  /** Where the head's part in chunk [i, end) ends: past the first space and 8 bytes, within HEAD_BYTES. */
  private headEnd(chunk: Uint8Array, i: number, end: number): number {
    const cap = Math.min(end, i + HEAD_BYTES - this.head.length);
    const space = this.head.includes(' ') ? i - 1 : chunk.indexOf(SPACE, i);
    return space >= 0 && space < cap ? Math.min(cap, space + 9) : cap;
  }

  /** The head holds the tag and the word after it (8 bytes: "PREAUTH" and what ends it), or all it may. */
  private headKnown(): boolean {
    const space = this.head.indexOf(' ');
    return (space >= 0 && this.head.length > space + 8) || this.head.length >= HEAD_BYTES;
  }

  atBoundary(): boolean {
    return !this.lost && this.literalLeft === 0 && !this.inLine;
  }
}
