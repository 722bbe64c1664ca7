/**
 * Reads and writes on plain TCP sockets without node's stream machinery, for the splice's direct
 * relay and for the short exchanges before it.
 *
 * Reads: `readDirect()` makes node read a socket into one buffer shared by the whole process
 * (node's `onread` user buffer) and hand each read to a callback, which must be done with the
 * bytes when it returns. No buffer is allocated per read, none is held per session, and there is
 * no `data` event, stream buffering or next-tick work per read.
 *
 * Writes: one write(2) straight to the socket's descriptor. Before the splice a session writes
 * a handful of short lines (the greeting, the backend login commands, the login reply); through
 * `socket.write()` each one also costs a write request, a callback on the next tick and the
 * stream's bookkeeping, which is more CPU than the system call itself. The descriptor is
 * non-blocking: whatever the kernel does not take at once, and every write to a TLS socket, a
 * socket still connecting or one with writes queued, goes through `socket.write()` as before,
 * so the order of bytes and the stream's error reporting are kept.
 */
import { writeSync } from 'node:fs';
import { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';

/**
 * The read size, chosen by FETCH throughput through the splice (10 MiB messages, Dovecot behind,
 * the sizes side by side in rounds): 64 KiB, loopback's MTU, did best. 32 and 48 KiB cost 5 to
 * 9 %, 256 and 512 KiB 5 to 14 %, and 96 and 128 KiB were 1 to 3 % behind (docs/performance.md,
 * "FETCH: the direct relay"; why was not profiled).
 */
const SHARED_READ_BYTES = 64 * 1024;
let sharedReadBuffer: Buffer | undefined;

/**
 * node's per-socket slots for a user read buffer (`net.Socket` `onread` option). They exist
 * only as symbols on the socket, so they are found by name once; without them (another node)
 * readDirect() always declines.
 */
interface UserBufferSlots {
  readonly buffer: symbol;
  readonly callback: symbol;
  readonly generator: symbol;
}
const userBufferSlots: UserBufferSlots | null = (() => {
  const symbols = Object.getOwnPropertySymbols(new Socket());
  const find = (name: string): symbol | undefined => symbols.find((s) => s.description === name);
  const buffer = find('kBuffer');
  const callback = find('kBufferCb');
  const generator = find('kBufferGen');
  return buffer && callback && generator ? { buffer, callback, generator } : null;
})();

/**
 * What readDirect() hands over, in node's order: the first `length` bytes of `buffer`, valid only
 * until the callback returns. Returning false stops reading, as `socket.pause()` does; `resume()`
 * restarts it.
 */
export type DirectReader = (length: number, buffer: Buffer) => boolean;

/**
 * From now on, reads of `socket` go to `onRead` through the shared buffer. Returns false, and
 * changes nothing, when that cannot be: a TLS socket, one not connected, node without the hooks,
 * or bytes node has read already and not handed out (they would be skipped: a PROXY header's
 * remainder, say). Calling it again replaces the callback. The socket's `end`, `close` and
 * `error` events are unchanged; `data` is no longer emitted.
 */
export function readDirect(socket: Socket, onRead: DirectReader): boolean {
  if (userBufferSlots === null || socket.readableLength > 0 || plainDescriptor(socket) < 0) return false;
  const handle = (socket as unknown as { _handle: { useUserBuffer?: (buffer: Uint8Array) => void } })._handle;
  if (typeof handle.useUserBuffer !== 'function') return false;
  const slots = userBufferSlots;
  const target = socket as unknown as Record<symbol, unknown>;
  sharedReadBuffer ??= Buffer.allocUnsafeSlow(SHARED_READ_BYTES);
  target[slots.callback] = onRead;
  if (target[slots.buffer] !== sharedReadBuffer) {
    target[slots.buffer] = sharedReadBuffer;
    target[slots.generator] = null;
    handle.useUserBuffer(sharedReadBuffer);
  }
  return true;
}

/**
 * True when `socket` is read through the shared buffer (readDirect() succeeded on it): node then
 * emits no `data`, so a `data` listener would never see its bytes.
 */
export function readsDirect(socket: Socket): boolean {
  return userBufferSlots !== null && sharedReadBuffer !== undefined && (socket as unknown as Record<symbol, unknown>)[userBufferSlots.buffer] === sharedReadBuffer;
}

/** The descriptor of an open, connected plain TCP socket, or -1 (TLS, connecting, closed, or no descriptor on this platform). */
export function plainDescriptor(socket: Socket): number {
  if (socket instanceof TLSSocket || socket.destroyed || socket.connecting) return -1;
  const handle = (socket as unknown as { _handle?: { fd?: unknown } | null })._handle;
  const fd = handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : -1;
}

/**
 * Writes `length` bytes of `chunk` (or all of a string, as UTF-8) to descriptor `fd` if the
 * kernel takes them now. Returns the number of bytes taken: 0 when the socket buffer is full,
 * -1 on a broken connection.
 */
export function writeToDescriptor(fd: number, chunk: Uint8Array | string, length?: number): number {
  try {
    return typeof chunk === 'string' ? writeSync(fd, chunk) : writeSync(fd, chunk, 0, length ?? chunk.length);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    return code === 'EAGAIN' || code === 'EWOULDBLOCK' || code === 'EINTR' ? 0 : -1;
  }
}

/**
 * Writes `data` to `socket`: at once to its descriptor when that is safe (see the module
 * comment), the rest through `socket.write()`. Returns the number of bytes written or queued.
 */
export function writeNow(socket: Socket, data: Uint8Array | string): number {
  const size = typeof data === 'string' ? Buffer.byteLength(data) : data.length;
  const fd = socket.writableLength === 0 && socket.writable ? plainDescriptor(socket) : -1;
  const taken = fd >= 0 ? writeToDescriptor(fd, data) : 0;
  // A broken connection (-1) is left to socket.write(), which reports it as the stream's error.
  if (taken === size) return size;
  if (taken <= 0) socket.write(data);
  else socket.write((typeof data === 'string' ? Buffer.from(data) : data).subarray(taken));
  return size;
}
