/**
 * TLS sockets over TCP ones (accepted clients, backend connections), let go of in full once closed.
 *
 * node's TLS layer gives each connection's TCP handle an accessor `reading` whose getter and
 * setter are closures over the TLS socket (_tls_wrap.js, defineHandleReading()). An accessor of
 * closures made per object keeps what they hold through V8's young collections until the next
 * full one: the TLS socket, and through its listeners the session, its splice, the backend
 * socket and what they hold, each moved to the old generation by the second young collection
 * after the session ended, then collected by a full one. `bench/tls-young-gc.ts` shows it with
 * node alone (Node 20 and 22): a plaintext server that adds such an accessor to each handle
 * keeps what its sessions hold as a TLS one does, and a TLS one whose sockets drop their
 * listeners once closed keeps a sixth of it (docs/performance.md).
 *
 * So once a TLS socket has closed, its listeners and those of the socket under it go: what
 * they reach (all of mailfront's session) is no longer reached from the sockets. Left then are
 * node's own objects of the connection, about 1.5 KB.
 */
import type { Socket } from 'node:net';
import { TLSSocket, connect as tlsConnect } from 'node:tls';
import type { ConnectionOptions, TLSSocketOptions } from 'node:tls';

function ignoreError(): void {}

/** Drops every listener of `socket` but one that swallows errors (none is due after 'close'). */
function dropListeners(socket: Socket): void {
  socket.removeAllListeners().on('error', ignoreError);
}

/**
 * `secure`, made over `under`, whose listeners and `under`'s are dropped once both have closed,
 * in the turn after the later 'close' (every 'close' listener of either has run by then, and
 * node's own work at the TLS socket's close, destroying its TLS state, was queued before).
 * Usually the TLS socket closes after the socket under it; not when that one was destroyed
 * first, its 'close' still to come (a listener of it, such as the one that frees the
 * connection's slot, must still hear it).
 */
export function letGoWhenClosed(secure: TLSSocket, under: Socket): TLSSocket {
  let open = under.closed ? 1 : 2;
  // on(), not once(): 'close' comes once, and a once() wrapper would read as a listener left by
  // a wait that was given up (tls-idle-session.test.ts looks for those).
  const closed = (): void => {
    open -= 1;
    if (open === 0) {
      setImmediate(() => {
        dropListeners(secure);
        dropListeners(under);
      });
    }
  };
  secure.on('close', closed);
  if (open === 2) under.on('close', closed);
  return secure;
}

/** `new TLSSocket(raw, options)`, let go of once closed (letGoWhenClosed()). */
export function serverTlsSocket(raw: Socket, options: TLSSocketOptions): TLSSocket {
  return letGoWhenClosed(new TLSSocket(raw, options), raw);
}

/** `tls.connect()` over `under` (a backend connection), let go of once closed (letGoWhenClosed()). */
export function clientTlsSocket(under: Socket, options: ConnectionOptions): TLSSocket {
  return letGoWhenClosed(tlsConnect({ ...options, socket: under }), under);
}
