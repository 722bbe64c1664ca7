/**
 * Follows the backend-to-client stream of a spliced ManageSieve session just far enough to tell
 * whether it sits between two response lines: outside a literal (RFC 5804 §4 literal-s2c, e.g. a
 * GETSCRIPT body) and at the start of a line. It decides only whether a BYE may be written
 * before a drain closes the session; it never alters or buffers the stream.
 */
import type { ResponseBoundaryTracker } from '../types.js';

const LF = 0x0a;
/** Enough of a line's end to see "{N}\r" for any literal size worth believing. */
const TAIL_CHARS = 32;
const LITERAL_AT_END = /\{(\d{1,20})\+?\}\r?$/;

/** ManageSieve response boundary tracker. */
export class ManageSieveResponseBoundary implements ResponseBoundaryTracker {
  #literalLeft = 0;
  #inLine = false;
  #tail = '';

  observe(chunk: Uint8Array): void {
    let i = 0;
    while (i < chunk.length) {
      if (this.#literalLeft > 0) {
        const take = Math.min(this.#literalLeft, chunk.length - i);
        this.#literalLeft -= take;
        i += take;
        continue;
      }
      const lf = chunk.indexOf(LF, i);
      const end = lf < 0 ? chunk.length : lf;
      if (end > i) {
        this.#inLine = true;
        const from = Math.max(i, end - TAIL_CHARS);
        this.#tail = (this.#tail + Buffer.from(chunk.buffer, chunk.byteOffset + from, end - from).toString('latin1')).slice(-TAIL_CHARS);
      }
      if (lf < 0) return;
      i = lf + 1;
      const literal = LITERAL_AT_END.exec(this.#tail);
      this.#tail = '';
      // After a literal's data the same line goes on (a GETSCRIPT body is followed by CRLF).
      if (literal !== null) this.#literalLeft = Number(literal[1]);
      this.#inLine = literal !== null;
    }
  }

  atBoundary(): boolean {
    return this.#literalLeft === 0 && !this.#inLine;
  }
}
