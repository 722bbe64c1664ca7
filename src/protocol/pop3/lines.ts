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

/** Collects chunks and hands out complete lines; a bare LF also ends a line, as in Dovecot and Cyrus. */
export class LineReader {
  #parts: Buffer[] = [];
  #size = 0;
  // Leading parts already searched without finding an LF: each byte is scanned once, so a line
  // fed one byte at a time costs linear time, not quadratic.
  #scannedParts = 0;

  /** Bytes held that are not yet part of a complete line (or not yet taken). */
  get pendingBytes(): number {
    return this.#size;
  }

  /** Appends a copy of `chunk` (the caller may reuse its buffer). */
  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    this.#parts.push(Buffer.from(chunk));
    this.#size += chunk.length;
  }

  /** Removes and returns the next complete line, or null when no line end has arrived yet. */
  takeLine(): RawLine | null {
    for (let i = this.#scannedParts; i < this.#parts.length; i++) {
      const part = this.#parts[i] as Buffer;
      const lf = part.indexOf(LF);
      if (lf < 0) {
        this.#scannedParts = i + 1;
        continue;
      }
      const head = this.#parts.slice(0, i);
      head.push(part.subarray(0, lf + 1));
      const rest = part.subarray(lf + 1);
      this.#parts = rest.length > 0 ? [rest, ...this.#parts.slice(i + 1)] : this.#parts.slice(i + 1);
      this.#scannedParts = 0;
      const raw = head.length === 1 ? (head[0] as Buffer) : Buffer.concat(head);
      this.#size -= raw.length;
      let end = raw.length - 1;
      if (end > 0 && raw[end - 1] === CR) end--;
      return { content: raw.subarray(0, end), wireBytes: raw.length };
    }
    return null;
  }

  /** Removes and returns every byte held, exactly as received. */
  takeAll(): Uint8Array {
    // A fresh copy: Buffer.concat may return a slice of Node's shared pool.
    const all = new Uint8Array(Buffer.concat(this.#parts));
    this.clear();
    return all;
  }

  /** Drops every byte held. */
  clear(): void {
    this.#parts = [];
    this.#size = 0;
    this.#scannedParts = 0;
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
