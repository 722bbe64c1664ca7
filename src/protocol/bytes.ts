/**
 * A growable byte queue for received input, shared by the IMAP, POP3 and ManageSieve readers:
 * amortised O(1) appends and consumption, so that a peer sending one byte at a time cannot make
 * buffering quadratic, nor cost an object per read; and the readers' two small byte helpers
 * (latin1(), skipSpaces()).
 * Must not: interpret the bytes beyond that (the protocols' syntax is their readers').
 */

const EMPTY = new Uint8Array(0);

/** Received bytes not yet consumed, in order. */
export class ByteQueue {
  private buffer: Uint8Array = EMPTY;
  private start = 0;
  private end = 0;

  /** Number of bytes held. */
  get length(): number {
    return this.end - this.start;
  }

  /** Appends a copy of `chunk`. */
  push(chunk: Uint8Array): void {
    if (chunk.length === 0) return;
    if (this.end + chunk.length > this.buffer.length) {
      const live = this.end - this.start;
      // Compact in place only while the queue is at most half full; otherwise grow, so that
      // every byte is moved a bounded number of times on average.
      if (live + chunk.length <= this.buffer.length / 2) {
        this.buffer.copyWithin(0, this.start, this.end);
      } else {
        // From node's shared pool when small: no fresh ArrayBuffer, no zero-filling (every byte
        // read is written first). The machines let go of their queue at login. Held as a plain
        // Uint8Array, so that slice() copies as callers expect (Buffer's slice() is a view).
        const pooled = Buffer.allocUnsafe(Math.max(2 * this.buffer.length, live + chunk.length, 1024));
        const grown = new Uint8Array(pooled.buffer, pooled.byteOffset, pooled.length);
        grown.set(this.buffer.subarray(this.start, this.end), 0);
        this.buffer = grown;
      }
      this.start = 0;
      this.end = live;
    }
    this.buffer.set(chunk, this.end);
    this.end += chunk.length;
  }

  /** The bytes held, as a view that is only valid until the next `push`. */
  view(): Uint8Array {
    return this.buffer.subarray(this.start, this.end);
  }

  /** Drops the first `count` bytes. */
  consume(count: number): void {
    this.start = Math.min(this.start + count, this.end);
    if (this.start === this.end) this.clear();
  }

  /** Returns a copy of every byte held and empties the queue. */
  take(): Uint8Array {
    const bytes = this.buffer.slice(this.start, this.end);
    this.clear();
    return bytes;
  }

  /** Empties the queue. */
  clear(): void {
    this.start = 0;
    this.end = 0;
  }
}

/** `bytes` as text, one character per byte (latin1), read in place. */
export function latin1(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('latin1');
}

/** The index of the first byte at or after `from` in `line` that is not a space (0x20). */
export function skipSpaces(line: Uint8Array, from: number): number {
  let i = from;
  while (line[i] === 0x20) i++;
  return i;
}
