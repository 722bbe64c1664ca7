/**
 * A resumable POP3 line splitter (RFC 1939 §3: every command and response line ends in CRLF),
 * used by both directions. It owns only the bytes not yet taken as lines; it does not decide
 * limits, meaning or what to discard: its callers do.
 */
import { ByteQueue } from '../bytes.js';

/** One complete line: its content without the line end, and how many bytes it used on the wire. */
export interface RawLine {
  readonly content: Buffer;
  readonly wireBytes: number;
}

const LF = 0x0a;
const CR = 0x0d;

/**
 * Collects chunks and hands out complete lines; a bare LF also ends a line, as in Dovecot and Cyrus.
 * The bytes live in one growable queue: a line that arrives one byte per read costs what its
 * bytes cost, not a Buffer object per read (8 KB in 1-byte reads held 0.9 MB of heap).
 */
export class LineReader {
  #queue = new ByteQueue();
  // Bytes at the queue's head already searched without finding an LF: each byte is scanned
  // once, so a line fed one byte at a time costs linear time, not quadratic.
  #scanned = 0;

  /** Bytes held that are not yet part of a complete line (or not yet taken). */
  get pendingBytes(): number {
    return this.#queue.length;
  }

  /** Appends a copy of `chunk` (the caller may reuse its buffer). */
  push(chunk: Uint8Array): void {
    this.#queue.push(chunk);
  }

  /** Removes and returns the next complete line, or null when no line end has arrived yet. */
  takeLine(): RawLine | null {
    const held = this.#queue.view();
    const lf = held.indexOf(LF, this.#scanned);
    if (lf < 0) {
      this.#scanned = held.length;
      return null;
    }
    const end = lf > 0 && held[lf - 1] === CR ? lf - 1 : lf;
    // A copy: the queue is reused for later input, and the caller may keep the line.
    const content = Buffer.from(held.subarray(0, end));
    this.#queue.consume(lf + 1);
    this.#scanned = 0;
    return { content, wireBytes: lf + 1 };
  }

  /** The first `count` bytes held (fewer if fewer are held), left in place: a view, valid until the next push or take. */
  head(count: number): Uint8Array {
    return this.#queue.view().subarray(0, count);
  }

  /** Removes and returns every byte held, exactly as received (a copy). */
  takeAll(): Uint8Array {
    const all = this.#queue.take();
    this.clear();
    return all;
  }

  /** Drops every byte held, and the queue's buffer with them. */
  clear(): void {
    this.#queue = new ByteQueue();
    this.#scanned = 0;
  }
}

/** Decodes a line's content as UTF-8, invalid sequences becoming U+FFFD: for lines that are read, never passed on. */
export function lineText(content: Buffer): string {
  return content.toString('utf8');
}

// A BOM at the start is kept: it is part of what the client sent.
const strictUtf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * A line's content as UTF-8, or null when its bytes are not valid UTF-8. Credentials are passed
 * on to the directory and (replay) the backend: lineText() would alter them (two Latin-1
 * passwords "p\xe4ss" and "p\xf6ss" would both become "p\ufffdss"), so they are read with this.
 */
export function strictLineText(content: Buffer): string | null {
  try {
    return strictUtf8.decode(content);
  } catch {
    return null;
  }
}

/** Makes a text safe for one response line: no CR, LF, NUL or other controls, bounded length. */
export function oneLine(text: string, maxChars = 200): string {
  const flat = text.replace(/[\x00-\x1f\x7f]+/g, ' ').trim();
  return flat.length > maxChars ? `${flat.slice(0, maxChars)}...` : flat;
}
