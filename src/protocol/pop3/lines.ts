/**
 * A resumable POP3 line splitter (RFC 1939 §3: every command and response line ends in CRLF),
 * used by both directions. It owns only the bytes not yet taken as lines; it does not decide
 * limits, meaning or what to discard: its callers do.
 */

/** One complete line: its content without the line end, and how many bytes it used on the wire. */
export interface RawLine {
  readonly content: Buffer;
  readonly wireBytes: number;
}

const LF = 0x0a;
const CR = 0x0d;
const EMPTY = Buffer.alloc(0);

/**
 * Collects chunks and hands out complete lines; a bare LF also ends a line, as in Dovecot and Cyrus.
 * The bytes live in one growable buffer: a line that arrives one byte per read costs what its
 * bytes cost, not a Buffer object per read (8 KB in 1-byte reads held 0.9 MB of heap).
 */
export class LineReader {
  #buffer: Buffer = EMPTY;
  #start = 0;
  #end = 0;
  // Bytes after #start already searched without finding an LF: each byte is scanned once, so a
  // line fed one byte at a time costs linear time, not quadratic.
  #scanned = 0;

  /** Bytes held that are not yet part of a complete line (or not yet taken). */
  get pendingBytes(): number {
    return this.#end - this.#start;
  }

  /** Appends a copy of `chunk` (the caller may reuse its buffer). */
  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    if (this.#end + chunk.length > this.#buffer.length) {
      // Moved to the front when that frees enough room, otherwise grown by doubling: amortised
      // O(1) per byte either way.
      const live = this.#end - this.#start;
      if (live + chunk.length <= this.#buffer.length / 2) {
        this.#buffer.copyWithin(0, this.#start, this.#end);
      } else {
        const grown = Buffer.alloc(Math.max(2 * this.#buffer.length, live + chunk.length, 256));
        this.#buffer.copy(grown, 0, this.#start, this.#end);
        this.#buffer = grown;
      }
      this.#start = 0;
      this.#end = live;
    }
    this.#buffer.set(chunk, this.#end);
    this.#end += chunk.length;
  }

  /** Removes and returns the next complete line, or null when no line end has arrived yet. */
  takeLine(): RawLine | null {
    const lf = this.#buffer.subarray(0, this.#end).indexOf(LF, this.#start + this.#scanned);
    if (lf < 0) {
      this.#scanned = this.#end - this.#start;
      return null;
    }
    const wireBytes = lf + 1 - this.#start;
    let end = lf;
    if (end > this.#start && this.#buffer[end - 1] === CR) end--;
    // A copy: the buffer is reused for later input, and the caller may keep the line.
    const content = Buffer.from(this.#buffer.subarray(this.#start, end));
    this.#start = lf + 1;
    this.#scanned = 0;
    if (this.#start === this.#end) this.#start = this.#end = 0;
    return { content, wireBytes };
  }

  /** Removes and returns every byte held, exactly as received. */
  takeAll(): Uint8Array {
    // A fresh copy, not a view of the reader's buffer (nor a slice of Node's shared pool).
    const all = new Uint8Array(this.#buffer.subarray(this.#start, this.#end));
    this.clear();
    return all;
  }

  /** Drops every byte held, and the buffer with them. */
  clear(): void {
    this.#buffer = EMPTY;
    this.#start = 0;
    this.#end = 0;
    this.#scanned = 0;
  }
}

/** Decodes a line's content as UTF-8 (invalid sequences become U+FFFD and can never match a secret). */
export function lineText(content: Buffer): string {
  return content.toString('utf8');
}

/** Makes a text safe for one response line: no CR, LF, NUL or other controls, bounded length. */
export function oneLine(text: string, maxChars = 200): string {
  const flat = text.replace(/[\x00-\x1f\x7f]+/g, ' ').trim();
  return flat.length > maxChars ? `${flat.slice(0, maxChars)}...` : flat;
}
