/**
 * Tracks IMAP server responses in a spliced byte stream just enough to know whether the
 * stream sits between two responses: outside any literal (RFC 9051 §4.3) and at the start of a
 * line. Used only to decide whether an untagged BYE may be written before closing; it never
 * alters or buffers the stream. Cost per chunk: one native indexOf per line, none inside literals.
 */
import type { ResponseBoundaryTracker } from '../types.js';

const LF = 0x0a;
/** Enough of a line's end to see "{N}\r" for any literal size we would believe. */
const TAIL_BYTES = 32;
const LITERAL_AT_END = /\{(\d{1,20})\+?\}\r?$/;

/** IMAP response boundary tracker. */
export class ImapResponseBoundary implements ResponseBoundaryTracker {
  private literalLeft = 0;
  private inLine = false;
  private tail = '';

  observe(chunk: Uint8Array): void {
    let i = 0;
    while (i < chunk.length) {
      if (this.literalLeft > 0) {
        const take = Math.min(this.literalLeft, chunk.length - i);
        this.literalLeft -= take;
        i += take;
        continue;
      }
      const lf = chunk.indexOf(LF, i);
      const end = lf < 0 ? chunk.length : lf;
      if (end > i) {
        this.inLine = true;
        this.tail = (this.tail + Buffer.from(chunk.buffer, chunk.byteOffset + Math.max(i, end - TAIL_BYTES), end - Math.max(i, end - TAIL_BYTES)).toString('latin1')).slice(-TAIL_BYTES);
      }
      if (lf < 0) return;
      i = lf + 1;
      const literal = LITERAL_AT_END.exec(this.tail);
      this.tail = '';
      if (literal) {
        // The line goes on after the literal's bytes.
        this.literalLeft = Number(literal[1]);
        this.inLine = true;
      } else {
        this.inLine = false;
      }
    }
  }

  atBoundary(): boolean {
    return this.literalLeft === 0 && !this.inLine;
  }
}
