/**
 * The splice: after backend login, bytes flow both ways untouched, with backpressure through
 * stream piping (one bounded buffer per direction), an idle deadline, and one end reported
 * exactly once. No parsing and no copies per chunk after login.
 */
import type { Socket } from 'node:net';
import type { ResponseBoundaryTracker } from '../protocol/types.js';

/** Why a splice ended. */
export type SpliceEndReason = 'client-closed' | 'backend-closed' | 'client-error' | 'backend-error' | 'idle-timeout' | 'kicked' | 'drained' | 'shutdown';

/** A running splice. */
export interface Splice {
  /** Resolves once, when both sockets are closed. */
  readonly ended: Promise<SpliceEndReason>;
  /** Ends the splice now; `notice` (if any) is written to the client first. */
  close(reason: Extract<SpliceEndReason, 'kicked' | 'drained' | 'shutdown'>, notice: string | null): void;
}

/**
 * Starts splicing `client` and `backend`. `pipelined` goes to the backend first (bytes the
 * client sent after its login command) and `leftover` to the client (bytes the backend sent
 * after its login reply).
 */
export function splice(client: Socket, backend: Socket, pipelined: Uint8Array, leftover: Uint8Array, idleTimeoutMs: number, tracker: ResponseBoundaryTracker | null = null): Splice {
  let endReason: SpliceEndReason | null = null;
  let resolveEnded!: (r: SpliceEndReason) => void;
  const ended = new Promise<SpliceEndReason>((r) => (resolveEnded = r));
  let closedCount = 0;

  const finish = (reason: SpliceEndReason): void => {
    if (endReason === null) endReason = reason;
    client.destroy();
    backend.destroy();
  };
  const onClosed = (): void => {
    closedCount++;
    if (closedCount === 2) resolveEnded(endReason ?? 'client-closed');
  };

  client.on('error', () => finish('client-error'));
  backend.on('error', () => finish('backend-error'));
  // A half-close from either side ends the session: IMAP and POP3 have no use for half-open connections.
  client.on('end', () => finish('client-closed'));
  backend.on('end', () => finish('backend-closed'));
  client.on('close', () => {
    finish('client-closed');
    onClosed();
  });
  backend.on('close', () => {
    finish('backend-closed');
    onClosed();
  });

  // The idle deadline runs on the client side: a client in IDLE is quiet both ways until the
  // backend sends a notification, which also resets the timer through the written bytes.
  client.setTimeout(idleTimeoutMs, () => finish('idle-timeout'));
  backend.setTimeout(idleTimeoutMs, () => finish('idle-timeout'));
  client.setNoDelay(true);
  backend.setNoDelay(true);

  if (pipelined.length > 0) backend.write(pipelined);
  if (leftover.length > 0) {
    tracker?.observe(leftover);
    client.write(leftover);
  }
  if (tracker) backend.on('data', (chunk: Buffer) => tracker.observe(chunk));
  client.pipe(backend, { end: false });
  backend.pipe(client, { end: false });
  client.resume();
  backend.resume();

  return {
    ended,
    close(reason, notice) {
      if (endReason !== null) return;
      endReason = reason;
      backend.unpipe(client);
      backend.destroy();
      // A notice is written only between two responses; in the middle of one (a literal, say)
      // the client would read it as data, so then the connection just closes.
      if (notice !== null && client.writable && (tracker?.atBoundary() ?? false)) {
        client.end(notice);
        // A client that does not read must not hold its socket open.
        setTimeout(() => client.destroy(), 1_000).unref();
      } else {
        client.destroy();
      }
    },
  };
}
