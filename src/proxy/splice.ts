/**
 * The splice: after backend login, bytes flow both ways untouched, with backpressure, an idle
 * deadline, and one end reported exactly once. No copies per chunk after login, and no parsing
 * beyond what a drain notice needs: for IMAP, the backend's bytes are scanned for line ends and
 * literal sizes (protocol/imap/boundary.ts, about 16 µs per 64 KiB of short lines, literals
 * skipped unread) so that a BYE is only ever written between two responses; and where the
 * backend offers UNAUTHENTICATE, the client's words are checked for it (command-guard.ts).
 *
 * Two relays do the work, chosen per direction:
 *
 * - **Direct** (the reading end plain TCP, the usual case behind a TLS-terminating balancer and
 *   for every backend connection): reads go into one buffer shared by the whole process
 *   (`readDirect()` in net/direct-io.ts; the session and the backend login read that way
 *   already where they can), and the bytes are written to the other socket's descriptor with a
 *   synchronous `write(2)` before the read callback returns. The shared buffer is therefore free
 *   again at once: no buffer is allocated per read, none is held per session, and nothing is
 *   left for the garbage collector. When the kernel takes only part of a chunk, the rest is
 *   copied once, queued on the socket, and the reading side stops until it has gone out
 *   (backpressure both ways, at most one chunk buffered per direction). When the other end is
 *   TLS, each read is copied and queued on it, with a pause until `drain` when it is full.
 * - **Stream** (the reading end TLS, bytes node had buffered already, or a node without the
 *   user-buffer hooks): a `data` handler that writes and pauses its source until `drain`.
 *
 * The idle deadline is one sweep per distinct timeout shared by every splice, not a timer per
 * socket (memory per idle session), timed by the monotonic clock. The same sweep ends a splice whose upload is stalled behind
 * a backend that does not read: while that direction waits, the client's socket is not read, so
 * the client's close would go unseen until the idle timeout. Only that direction is checked: while
 * a download waits for a slow client, the client's socket is still read (or written to, which a
 * hang-up fails), so its close is seen anyway, and the backend is read again once the client has
 * taken its bytes.
 *
 * A client's FIN is a half-close, as it is to a server it talks to directly: what it sent goes to
 * the backend, then the FIN, and the backend's answers still go to the client until the backend
 * closes (halfClosedQuiet bounds the wait; see clientEnded()). A backend's FIN ends the
 * session once what is queued for the client has gone out.
 */
import { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import { plainDescriptor, readDirect, readsDirect, writeToDescriptor } from '../net/direct-io.js';
import type { ResponseBoundaryTracker } from '../protocol/types.js';
import type { CommandGuard } from './command-guard.js';
import { SPLICE_STALL_TIMEOUT_MS } from '../limits.js';
import { destroyAfterGrace } from '../net/close-grace.js';
import { LiveSet } from '../live-set.js';

/**
 * How long a splice whose client has sent its FIN waits for the backend's close with nothing
 * relayed (each byte to the client starts it again), or the idle timeout if shorter. Dovecot and
 * Cyrus answer what was pipelined before the FIN and close at once (milliseconds), so this only
 * ends a backend that does not close, or a client that half-closed and reads nothing: neither
 * holds the session's two descriptors and its slot in the limits for the 31 min of the idle
 * timeout. Quiet time, not a total: a long download (`RETR` of a large message, then the FIN, as
 * `nc -N` does) is not cut while it moves. 60 s, as the pre-auth timeout's default and Dovecot's
 * login_timeout: far beyond what a working backend takes to answer one pipelined command.
 * While bytes wait on the client's socket the client is reading (or gone, which keepalive and
 * the failed write tell): the idle timeout bounds that, as for any splice, since libuv writes
 * again only once a third of the kernel's send buffer has drained, and a client reading at
 * 16 KiB/s saw no completed write for over 60 s. (An object, not a constant, so that a test can
 * shorten it.)
 */
export const halfClosedQuiet = { ms: 60_000 };

/** Why a splice ended. */
export type SpliceEndReason = 'client-closed' | 'backend-closed' | 'client-error' | 'backend-error' | 'idle-timeout' | 'stalled' | 'kicked' | 'drained' | 'shutdown' | 'command-refused';

/** A running splice. */
export interface Splice {
  /** Resolves once, when both sockets are closed. */
  readonly ended: Promise<SpliceEndReason>;
  /** Ends the splice now; `notice` (if any) is written to the client first. Does nothing once it is ending. */
  close(reason: Extract<SpliceEndReason, 'kicked' | 'drained' | 'shutdown'>, notice: string | null): void;
  /** It is ending: closed by close(), or one side is gone. */
  readonly ending: boolean;
  /** Bytes relayed so far, the pipelined and leftover bytes included. */
  readonly bytesFromClient: number;
  readonly bytesToClient: number;
  /** Which relay runs this splice (for tests and diagnostics). */
  readonly relay: 'direct' | 'stream';
}

/** One sweep per idle timeout value (and stall time) checks every splice's last activity. */
class IdleSweep {
  private readonly members = new LiveSet<SpliceSession>('sweepPlace');
  private timer: NodeJS.Timeout | undefined;

  constructor(
    readonly timeoutMs: number,
    /** Quiet time after which a splice whose upload is held back is looked at (at most timeoutMs). */
    private readonly stallMs: number,
  ) {}

  add(member: SpliceSession): void {
    this.members.add(member);
    if (this.timer === undefined) {
      // A session ends between its deadline and one interval after it; the interval follows the
      // shorter deadline, the stall time (the same as the idle timeout's for every idle timeout
      // of 5 min or more, and the idle timeout itself below that).
      const interval = Math.min(Math.max(Math.floor(this.stallMs / 10), 100), 10_000);
      this.timer = setInterval(() => this.sweep(), interval);
      this.timer.unref();
    }
  }

  delete(member: SpliceSession): void {
    this.members.delete(member);
    if (this.members.size === 0 && this.timer !== undefined) {
      clearInterval(this.timer);
      this.timer = undefined;
      idleSweeps.delete(sweepKey(this.timeoutMs, this.stallMs));
    }
  }

  private sweep(): void {
    const now = performance.now();
    // finish() takes the member it ends out of the set, and no other.
    this.members.forEachFromLast((member) => {
      if (now - member.lastActivity < this.stallMs) return;
      // stalled() counts a backend queue that moved as activity, hence the second look.
      if (member.stalled()) member.finish('stalled');
      else if (now - member.lastActivity >= this.timeoutMs) member.finish('idle-timeout');
    });
  }
}
const idleSweeps = new Map<string, IdleSweep>();

function sweepKey(timeoutMs: number, stallMs: number): string {
  return `${timeoutMs}/${stallMs}`;
}

function idleSweepFor(timeoutMs: number, stallMs: number): IdleSweep {
  const key = sweepKey(timeoutMs, stallMs);
  let sweep = idleSweeps.get(key);
  if (sweep === undefined) {
    sweep = new IdleSweep(timeoutMs, stallMs);
    idleSweeps.set(key, sweep);
  }
  return sweep;
}

class SpliceSession implements Splice {
  readonly ended: Promise<SpliceEndReason>;
  readonly relay: 'direct' | 'stream';
  /** Its place in its idle sweep's set (LiveSet), -1 while in none. */
  sweepPlace = -1;
  bytesFromClient: number;
  bytesToClient: number;
  /**
   * performance.now() of the last bytes relayed: a monotonic clock, so that a step of the wall
   * clock (NTP, an operator) neither ends every splice as idle at once nor keeps them open past
   * their timeout. As cheap per chunk as Date.now(), and never reported: the session's log gives wall times.
   */
  lastActivity = performance.now();
  /**
   * While the client's socket is paused until the backend takes what is queued for it
   * (backpressure on the upload), the bytes that were still queued when last looked at; -1
   * while the upload flows. Set at a pause and cleared at the resume, never per chunk.
   */
  private queuedForBackend = -1;
  private endReason: SpliceEndReason | null = null;
  /** A side being ended after its last bytes (a notice, or the other side's close): finish() leaves it to flush, bounded by a timer. */
  private clientEnding = false;
  private backendEnding = false;
  private closedCount = 0;
  /** Set once the client has sent its FIN and the splice waits for the backend's close (clientEnded()). */
  private halfClosedTimer: NodeJS.Timeout | undefined;
  private resolveEnded!: (reason: SpliceEndReason) => void;
  private readonly sweep: IdleSweep;

  constructor(
    private readonly client: Socket,
    private readonly backend: Socket,
    pipelined: Uint8Array,
    leftover: Uint8Array,
    idleTimeoutMs: number,
    private readonly tracker: ResponseBoundaryTracker | null,
    private readonly guard: CommandGuard | null,
    /** Written to the client (between responses) when the guard stops a command. */
    private readonly refusalNotice: string | null,
    stallTimeoutMs: number,
  ) {
    this.ended = new Promise<SpliceEndReason>((resolve) => (this.resolveEnded = resolve));
    this.bytesFromClient = pipelined.length;
    this.bytesToClient = leftover.length;

    client.on('error', () => this.finish(this.clientFailed()));
    backend.on('error', () => this.finish('backend-error'));
    client.on('end', () => this.clientEnded());
    // After the client's FIN, the backend's close is the end the client asked for.
    backend.on('end', () => this.peerEnded(client, this.halfClosedTimer === undefined ? 'backend-closed' : 'client-closed'));
    client.on('close', () => this.onClose('client-closed'));
    backend.on('close', () => this.onClose('backend-closed'));
    this.sweep = idleSweepFor(idleTimeoutMs, Math.min(idleTimeoutMs, stallTimeoutMs));
    this.sweep.add(this);

    if (pipelined.length > 0) {
      if (guard?.refuses(pipelined, pipelined.length) === true) {
        this.refuse();
        this.relay = 'stream';
        return;
      }
      backend.write(pipelined);
    }
    if (leftover.length > 0) {
      tracker?.observe(leftover);
      client.write(leftover);
    }

    const up = this.relayDirect(client, backend, false) || this.relayStream(client, backend, false);
    const down = this.relayDirect(backend, client, true) || this.relayStream(backend, client, true);
    this.relay = up === 'direct' && down === 'direct' ? 'direct' : 'stream';
    client.resume();
    backend.resume();
    // The client's FIN came before its login was answered (its commands pipelined behind the
    // login, then the FIN): its 'end' is past, and the backend gets the FIN now, after them.
    if (client.readableEnded) this.clientEnded();
  }

  /**
   * Reads `from` through the shared buffer and writes each read to `to`'s descriptor (see the
   * module comment); 'direct' when both hold, 'stream' when `to` is TLS (each read is then
   * copied and queued on it), null when `from` cannot be read that way.
   */
  private relayDirect(from: Socket, to: Socket, toClient: boolean): 'direct' | 'stream' | null {
    const toPlain = plainDescriptor(to) >= 0;
    const resume = this.resumer(from, to);
    const started = readDirect(from, (length, chunk) => {
      // Ended: what a client being ended still sends is read and dropped (see lingerOnClient()).
      if (this.endReason !== null) return !toClient && this.clientEnding;
      if (!toClient && this.guard?.refuses(chunk, length) === true) {
        this.refuse();
        return false;
      }
      this.relayed(chunk, length, toClient);
      // Looked up at every read, not kept: a socket destroyed without an error closes its
      // descriptor at once, before its 'close' event, and the number may already belong to
      // another connection.
      const toFd = toPlain ? plainDescriptor(to) : -1;
      if (toPlain && toFd < 0) {
        this.finish(toClient ? 'client-closed' : 'backend-closed');
        return false;
      }
      // Earlier writes still queued on the socket go first: then this chunk queues behind them.
      const taken = toFd >= 0 && to.writableLength === 0 ? writeToDescriptor(toFd, chunk, length) : 0;
      if (taken < 0) {
        this.finish(toClient ? this.clientFailed() : 'backend-error');
        return false;
      }
      if (taken === length) return true;
      // The shared buffer is read into again next: what is queued is a copy.
      const rest = Buffer.from(chunk.subarray(taken, length));
      if (!toPlain) {
        if (to.write(rest)) return true;
        to.once('drain', resume);
      } else {
        to.write(rest, resume);
      }
      from.pause();
      if (!toClient) this.uploadHeld();
      return false;
    });
    return started ? (toPlain ? 'direct' : 'stream') : null;
  }

  /** The portable relay: `data` events, and a pause until `drain` when `to` is full. */
  private relayStream(from: Socket, to: Socket, toClient: boolean): 'stream' {
    // A socket the session or the backend login read through the shared buffer emits no 'data':
    // relayed this way, its bytes would be dropped in silence. readDirect() declines such a
    // socket only once it is destroyed, so this cannot happen; if it ever does, the session ends.
    if (readsDirect(from) && !from.destroyed) {
      this.finish(toClient ? 'backend-error' : 'client-error');
      return 'stream';
    }
    const resume = this.resumer(from, to);
    from.on('data', (chunk: Buffer) => {
      if (this.endReason !== null) return;
      if (!toClient && this.guard?.refuses(chunk, chunk.length) === true) {
        this.refuse();
        return;
      }
      this.relayed(chunk, chunk.length, toClient);
      if (!to.write(chunk)) {
        from.pause();
        if (!toClient) this.uploadHeld();
        to.once('drain', resume);
      }
    });
    return 'stream';
  }

  /** Accounts for the first `length` bytes of `chunk` on their way: activity for the idle sweep, byte counts, the response tracker. */
  private relayed(chunk: Buffer, length: number, toClient: boolean): void {
    this.lastActivity = performance.now();
    if (toClient) {
      this.bytesToClient += length;
      this.tracker?.observe(length === chunk.length ? chunk : chunk.subarray(0, length));
    } else {
      this.bytesFromClient += length;
    }
  }

  /** Restarts reading `from` once its queued remainder has gone out to `to`, unless the splice has ended. */
  private resumer(from: Socket, to: Socket): () => void {
    return () => {
      if (this.endReason !== null) return;
      // What was queued went out: the peer reads.
      this.lastActivity = performance.now();
      if (to === this.backend) this.queuedForBackend = -1;
      from.resume();
    };
  }

  /** The backend does not keep up with the client: the client's socket is paused (see queuedForBackend). */
  private uploadHeld(): void {
    this.queuedForBackend = queuedBytes(this.backend);
  }

  /**
   * Whether the upload is stalled: the client's socket paused because the backend took nothing
   * since the sweep last looked (a queue that moved is a backend reading, however slowly, and
   * counts as activity), and nothing queued for the client. Called by the sweep only, once the
   * splice has been quiet for the stall time.
   *
   * A download is never a stall. While bytes are queued for the client, a write to it is under
   * way, and a client that hangs up fails that write (its kernel resets a connection closed with
   * bytes unread), so its close is seen; and the queue is no measure of a slow reader: libuv
   * writes again only once the kernel calls the socket writable, about when a third of its send
   * buffer (up to net.ipv4.tcp_wmem's maximum, 4 MiB by default) has gone, which takes a client
   * reading 3,000 bytes a second longer than 5 min. Downloads are left to the idle timeout.
   */
  stalled(): boolean {
    if (this.queuedForBackend < 0 || queuedBytes(this.client) > 0) return false;
    const queued = queuedBytes(this.backend);
    if (queued === this.queuedForBackend) return true;
    this.queuedForBackend = queued;
    this.lastActivity = performance.now();
    return false;
  }

  finish(reason: SpliceEndReason): void {
    if (this.endReason === null) this.endReason = reason;
    this.sweep.delete(this);
    clearTimeout(this.halfClosedTimer);
    if (!this.clientEnding) this.client.destroy();
    if (!this.backendEnding) this.backend.destroy();
  }

  /**
   * The client sent its FIN. What it sent before goes to the backend (what is queued on the
   * backend's socket included), then the FIN, as a client connected to the backend directly
   * would have it: `DELE 1` and `QUIT`, or `LOGOUT`, then a half-close (`nc -N`, a script's
   * shutdown(SHUT_WR)) must get their answers, and the backend has acted on them whatever the
   * client gets (a POP3 deletion is committed at QUIT). The splice goes on relaying the backend's
   * answers until the backend closes (peerEnded()), or nothing has been relayed for
   * halfClosedQuiet.ms with nothing queued for the client, the idle timeout while something is
   * (whichever is shorter). That bound takes over from the idle
   * sweep: the client sends nothing more, and an upload held back is bounded by it too.
   *
   * A client socket that cannot be written once its peer's FIN has come (allowHalfOpen off, or
   * already closing) ends the splice at once, as before: only what is queued for the backend goes.
   */
  private clientEnded(): void {
    if (this.endReason !== null || this.halfClosedTimer !== undefined || !this.client.allowHalfOpen || !this.client.writable || !this.backend.writable) {
      this.peerEnded(this.backend, 'client-closed');
      return;
    }
    this.sweep.delete(this);
    this.backend.end();
    // The quiet time runs from the FIN.
    this.lastActivity = performance.now();
    this.halfClosedCheck(this.lastActivity);
  }

  /**
   * The half-close's bound: once nothing has gone to the client for the quiet time, the backend
   * has not closed in time; until then, a look again when it would be up. (A closure only for a
   * half-closed splice, not a field of every one: memory per idle session.)
   */
  private halfClosedCheck(now: number): void {
    if (this.endReason !== null) return;
    const quietBoundMs = Math.min(this.sweep.timeoutMs, halfClosedQuiet.ms);
    // A download under way (bytes queued for the client) is bounded by the idle timeout alone;
    // looked at again within the quiet bound, which applies once the queue has drained.
    const boundMs = queuedBytes(this.client) > 0 ? this.sweep.timeoutMs : quietBoundMs;
    const quietMs = now - this.lastActivity;
    if (quietMs >= boundMs) this.finish('client-closed');
    else this.halfClosedTimer = setTimeout(() => this.halfClosedCheck(performance.now()), Math.min(boundMs - quietMs, quietBoundMs)).unref();
  }

  /**
   * Why a failed client socket ends the splice: 'client-error', or 'client-closed' once the client
   * has sent its FIN. A client that closed its socket altogether (not half) resets the connection
   * when the backend's last answers reach it: it closed, as it did before that answer was relayed.
   */
  private clientFailed(): SpliceEndReason {
    return this.client.readableEnded ? 'client-closed' : 'client-error';
  }

  /**
   * One side sent its end (the backend, or a client whose socket cannot be half-closed: see
   * clientEnded()). What is still queued for the other side, `to` (below its socket's
   * mark the relay keeps reading, so the end can arrive before those bytes leave: a backend's
   * last line before it closes, a client's LOGOUT), goes out first, then `to` is ended too.
   * A TLS socket is ended so even with nothing queued: its end() sends the close_notify alert
   * (RFC 8446 §6.1) before the TCP close, where destroy() would close the connection without
   * one, and clients that check (python ssl with suppress_ragged_eofs=False, openssl s_client)
   * report the end of every spliced session over TLS as a truncation attack.
   */
  private peerEnded(to: Socket, reason: SpliceEndReason): void {
    if (this.endReason === null && to.writable && (to.writableLength > 0 || to instanceof TLSSocket)) {
      this.endReason = reason;
      this.endAfterQueued(to);
    }
    this.finish(reason);
  }

  /**
   * Ends `to` once its queued bytes are out (the splice ends gracefully: a drain notice, or the
   * other side's close), destroying it if that takes longer than CLOSE_GRACE_MS.
   */
  private endAfterQueued(to: Socket, last?: string): void {
    if (to === this.client) this.lingerOnClient();
    else this.backendEnding = true;
    if (last === undefined) to.end();
    else to.end(last);
    destroyAfterGrace(to);
  }

  /**
   * The client is being ended (a FIN after what is queued for it): what it still sends is read
   * and dropped until its own FIN or CLOSE_GRACE_MS, its socket resumed if the upload was held
   * back. A socket closed with bytes it never read resets the connection (RFC 1122 4.2.2.13), and a
   * client whose command was on its way when its session was drained got ECONNRESET, and may
   * lose what it had not read yet, a notice included, instead of reading the end of the stream.
   */
  private lingerOnClient(): void {
    this.clientEnding = true;
    this.client.resume();
  }

  private onClose(reason: SpliceEndReason): void {
    this.finish(reason);
    this.closedCount++;
    if (this.closedCount === 2) this.resolveEnded(this.endReason ?? reason);
  }

  /** The guard stopped a command: the session ends, and the backend never sees that command's line end. */
  private refuse(): void {
    this.close('command-refused', this.refusalNotice);
  }

  get ending(): boolean {
    return this.endReason !== null || this.closedCount > 0;
  }

  close(reason: Extract<SpliceEndReason, 'kicked' | 'drained' | 'shutdown' | 'command-refused'>, notice: string | null): void {
    if (this.endReason !== null) return;
    this.endReason = reason;
    this.sweep.delete(this);
    clearTimeout(this.halfClosedTimer);
    // A notice is written only between two responses; in the middle of one (a literal, say)
    // the client would read it as data, so then the connection just ends, and so does POP3's
    // (drainNotice() is null): a line it never asked for could land inside a RETR.
    // What is queued for the client goes out first, then the notice if any, then the FIN; the
    // backend's close (just below) must not cut that short. (A socket error destroys the socket
    // by itself.)
    if (this.client.writable) this.endAfterQueued(this.client, notice !== null && (this.tracker?.atBoundary() ?? false) ? notice : undefined);
    else this.client.destroy();
    this.backend.destroy();
  }
}

/**
 * Bytes not yet taken by the kernel for `socket`: what node queued, and what libuv still holds
 * of a write under way (for TLS, the TCP handle's under it, where the encrypted bytes wait).
 * node's queue only shrinks when a whole write is done, libuv's as the peer reads; node's own
 * socket timeout tells an active write by the latter (net.js, Socket.prototype._onTimeout).
 */
function queuedBytes(socket: Socket): number {
  type Handle = { writeQueueSize?: number; _parent?: Handle } | null | undefined;
  const handle = (socket as unknown as { _handle: Handle })._handle;
  return socket.writableLength + (handle?._parent?.writeQueueSize ?? handle?.writeQueueSize ?? 0);
}

/**
 * Starts splicing `client` and `backend`. `pipelined` goes to the backend first (bytes the
 * client sent after its login command) and `leftover` to the client (bytes the backend sent
 * after its login reply). `stallTimeoutMs` is SPLICE_STALL_TIMEOUT_MS but in tests, which scale
 * it down without the idle timeout.
 */
export function splice(
  client: Socket,
  backend: Socket,
  pipelined: Uint8Array,
  leftover: Uint8Array,
  idleTimeoutMs: number,
  tracker: ResponseBoundaryTracker | null = null,
  guard: CommandGuard | null = null,
  refusalNotice: string | null = null,
  stallTimeoutMs: number = SPLICE_STALL_TIMEOUT_MS,
): Splice {
  return new SpliceSession(client, backend, pipelined, leftover, idleTimeoutMs, tracker, guard, refusalNotice, stallTimeoutMs);
}
