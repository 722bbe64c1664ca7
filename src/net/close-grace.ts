/**
 * The close grace of a socket mailfront ends on purpose (a refused connection, a session that ends
 * before its splice, a splice that ends a side after its last bytes): end() lets what is queued
 * go out, and the socket is destroyed CLOSE_GRACE_MS later if it has not closed by then.
 */
import type { Socket } from 'node:net';
import { CLOSE_GRACE_MS } from '../limits.js';

/**
 * Destroys `socket` CLOSE_GRACE_MS from now unless it closes before. The timer is cleared when it
 * closes: left running, it held the socket, and through its listeners the session, for the whole
 * grace after the close, into the old generation (every TLS session ends gracefully: 371 closed
 * TLS sockets held under IMAPS load; docs/performance.md, "What a full collection left behind").
 */
export function destroyAfterGrace(socket: Socket): void {
  // Closed already, or closing: its close comes (or came) without the timer.
  if (socket.destroyed) return;
  const timer = setTimeout(() => socket.destroy(), CLOSE_GRACE_MS).unref();
  socket.once('close', () => clearTimeout(timer));
}
