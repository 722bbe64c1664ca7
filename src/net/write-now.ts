/**
 * One write(2) straight to a plain TCP socket's descriptor, the way the splice's direct relay
 * writes. Before the splice a session writes a handful of short lines (the greeting, the backend
 * login commands, the login reply); through `socket.write()` each one also costs a write request,
 * a callback on the next tick and the stream's bookkeeping, which is more CPU than the system
 * call itself. The descriptor is non-blocking: whatever the kernel does not take at once, and
 * every write to a TLS socket, a socket still connecting or one with writes queued, goes through
 * `socket.write()` as before, so the order of bytes and the stream's error reporting are kept.
 */
import { writeSync } from 'node:fs';
import { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';

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
