/**
 * TLS errors after a server-side handshake, on a TLS socket made with `new TLSSocket()`.
 *
 * node emits a TLS error that comes after the handshake (a record that does not decrypt: "bad
 * record mac"; an alert) as 'error' only once a tls.Server has released control of the socket
 * (_tls_wrap.js: onerror, _emitTLSError, _controlReleased). mailfront makes its TLS sockets
 * itself (after a PROXY header, after STARTTLS), so no server ever does: the error went only to
 * node's internal '_tlsError' event, and the socket stayed open with its TLS layer dead until
 * the client closed or the idle timeout (31 min), holding the session and its backend.
 */
import type { TLSSocket } from 'node:tls';

/** One listener for every socket (called with the socket as `this`), not a closure each. */
function destroyWithError(this: TLSSocket, error: Error): void {
  // destroy(error) emits 'error', which node's own listener passes to '_tlsError' again: a no-op then.
  if (!this.destroyed) this.destroy(error);
}

/**
 * Makes a TLS error after `secure`'s handshake end it with that error, as a socket error: its
 * 'error' listeners (the session's, the splice's) hear it, then 'close'. node's own 'error'
 * listener stays on the socket (control is not released), so an error never finds it without one.
 */
export function endOnLateTlsError(secure: TLSSocket): void {
  secure.on('_tlsError', destroyWithError);
}
