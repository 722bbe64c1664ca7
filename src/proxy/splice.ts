/**
 * The splice: after backend login, bytes flow both ways untouched, with backpressure, an idle
 * deadline, and one end reported exactly once. No parsing and no copies per chunk after login.
 *
 * Two relays do the work, chosen per session:
 *
 * - **Direct** (both ends plain TCP, the usual case behind a TLS-terminating balancer and for
 *   every backend connection): each socket reads into one buffer shared by the whole process
 *   (node's `onread` user buffer, installed after login), and the bytes are written to the other
 *   socket's descriptor with a synchronous `write(2)` before the read callback returns. The
 *   shared buffer is therefore free again at once: no buffer is allocated per read, none is
 *   held per session, and nothing is left for the garbage collector. When the kernel takes only
 *   part of a chunk, the rest is copied once, queued on the socket, and the reading side stops
 *   until it has gone out (backpressure both ways, at most one chunk buffered per direction).
 * - **Stream** (either end TLS, or a node without the user-buffer hooks): a `data` handler per
 *   direction that writes and pauses its source until `drain`.
 *
 * The idle deadline is one sweep per distinct timeout shared by every splice, not a timer per
 * socket (memory per idle session).
 */
import { Socket } from 'node:net';
import { plainDescriptor, writeToDescriptor } from '../net/write-now.js';
import type { ResponseBoundaryTracker } from '../protocol/types.js';

/** Why a splice ended. */
export type SpliceEndReason = 'client-closed' | 'backend-closed' | 'client-error' | 'backend-error' | 'idle-timeout' | 'kicked' | 'drained' | 'shutdown';

/** A running splice. */
export interface Splice {
  /** Resolves once, when both sockets are closed. */
  readonly ended: Promise<SpliceEndReason>;
  /** Ends the splice now; `notice` (if any) is written to the client first. */
  close(reason: Extract<SpliceEndReason, 'kicked' | 'drained' | 'shutdown'>, notice: string | null): void;
  /** Bytes relayed so far, the pipelined and leftover bytes included. */
  readonly bytesFromClient: number;
  readonly bytesToClient: number;
  /** Which relay runs this splice (for tests and diagnostics). */
  readonly relay: 'direct' | 'stream';
}

/** The read size of the direct relay: a few large reads beat many small ones for big FETCHes. */
const SHARED_READ_BYTES = 128 * 1024;
let sharedReadBuffer: Buffer | undefined;

/**
 * node's per-socket slots for a user read buffer (`net.Socket` `onread` option). They exist
 * only as symbols on the socket, so they are found by name once; without them (another node)
 * every session uses the stream relay.
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

interface TcpHandle {
  useUserBuffer(buffer: Uint8Array): void;
}

/** The descriptor of a plain TCP socket the direct relay may use, or -1. */
function directDescriptor(socket: Socket): number {
  const fd = userBufferSlots === null ? -1 : plainDescriptor(socket);
  if (fd < 0) return -1;
  const handle = (socket as unknown as { _handle: Partial<TcpHandle> })._handle;
  if (typeof handle.useUserBuffer !== 'function') return -1;
  // Bytes node has read but nobody consumed yet would be skipped by the user buffer.
  if (socket.readableLength > 0) return -1;
  return fd;
}

/** One sweep per idle timeout value checks every splice's last activity. */
class IdleSweep {
  private readonly members = new Set<SpliceSession>();
  private timer: NodeJS.Timeout | undefined;

  constructor(private readonly timeoutMs: number) {}

  add(member: SpliceSession): void {
    this.members.add(member);
    if (this.timer === undefined) {
      // A session ends between timeoutMs and timeoutMs + one interval after its last byte.
      const interval = Math.min(Math.max(Math.floor(this.timeoutMs / 10), 100), 10_000);
      this.timer = setInterval(() => this.sweep(), interval);
      this.timer.unref();
    }
  }

  delete(member: SpliceSession): void {
    this.members.delete(member);
    if (this.members.size === 0 && this.timer !== undefined) {
      clearInterval(this.timer);
      this.timer = undefined;
      idleSweeps.delete(this.timeoutMs);
    }
  }

  private sweep(): void {
    const now = Date.now();
    for (const member of this.members) {
      if (now - member.lastActivity >= this.timeoutMs) member.finish('idle-timeout');
    }
  }
}
const idleSweeps = new Map<number, IdleSweep>();

function idleSweepFor(timeoutMs: number): IdleSweep {
  let sweep = idleSweeps.get(timeoutMs);
  if (sweep === undefined) {
    sweep = new IdleSweep(timeoutMs);
    idleSweeps.set(timeoutMs, sweep);
  }
  return sweep;
}

class SpliceSession implements Splice {
  readonly ended: Promise<SpliceEndReason>;
  readonly relay: 'direct' | 'stream';
  bytesFromClient: number;
  bytesToClient: number;
  lastActivity = Date.now();
  private endReason: SpliceEndReason | null = null;
  private closedCount = 0;
  private resolveEnded!: (reason: SpliceEndReason) => void;
  private readonly sweep: IdleSweep;

  constructor(
    private readonly client: Socket,
    private readonly backend: Socket,
    pipelined: Uint8Array,
    leftover: Uint8Array,
    idleTimeoutMs: number,
    private readonly tracker: ResponseBoundaryTracker | null,
  ) {
    this.ended = new Promise<SpliceEndReason>((resolve) => (this.resolveEnded = resolve));
    this.bytesFromClient = pipelined.length;
    this.bytesToClient = leftover.length;

    client.on('error', () => this.finish('client-error'));
    backend.on('error', () => this.finish('backend-error'));
    // A half-close from either side ends the session: IMAP and POP3 have no use for half-open connections.
    client.on('end', () => this.finish('client-closed'));
    backend.on('end', () => this.finish('backend-closed'));
    client.on('close', () => this.onClose('client-closed'));
    backend.on('close', () => this.onClose('backend-closed'));
    this.sweep = idleSweepFor(idleTimeoutMs);
    this.sweep.add(this);

    if (pipelined.length > 0) backend.write(pipelined);
    if (leftover.length > 0) {
      tracker?.observe(leftover);
      client.write(leftover);
    }

    const clientFd = directDescriptor(client);
    const backendFd = directDescriptor(backend);
    if (clientFd >= 0 && backendFd >= 0) {
      this.relay = 'direct';
      sharedReadBuffer ??= Buffer.allocUnsafeSlow(SHARED_READ_BYTES);
      this.relayDirect(client, backend, backendFd, false);
      this.relayDirect(backend, client, clientFd, true);
    } else {
      this.relay = 'stream';
      this.relayStream(client, backend, false);
      this.relayStream(backend, client, true);
    }
    client.resume();
    backend.resume();
  }

  /** Bytes read from `from` go straight to descriptor `toFd` (see the module comment). */
  private relayDirect(from: Socket, to: Socket, toFd: number, toClient: boolean): void {
    // directDescriptor() gave a descriptor only when the slots exist.
    const slots = userBufferSlots!;
    const buffer = sharedReadBuffer!;
    // While a remainder is queued on `to`, `from` is not read.
    const resume = this.resumer(from);
    const onRead = (length: number, chunk: Buffer): boolean => {
      if (this.endReason !== null) return false;
      this.relayed(chunk, length, toClient);
      // Earlier writes still queued on the socket go first: then this chunk queues behind them.
      const taken = to.writableLength === 0 ? writeToDescriptor(toFd, chunk, length) : 0;
      if (taken < 0) {
        this.finish(toClient ? 'client-error' : 'backend-error');
        return false;
      }
      if (taken === length) return true;
      to.write(Buffer.from(chunk.subarray(taken, length)), resume);
      from.pause();
      return false;
    };
    const target = from as unknown as Record<symbol, unknown>;
    target[slots.buffer] = buffer;
    target[slots.callback] = onRead;
    target[slots.generator] = null;
    (from as unknown as { _handle: TcpHandle })._handle.useUserBuffer(buffer);
  }

  /** The portable relay: `data` events, and a pause until `drain` when `to` is full. */
  private relayStream(from: Socket, to: Socket, toClient: boolean): void {
    const resume = this.resumer(from);
    from.on('data', (chunk: Buffer) => {
      this.relayed(chunk, chunk.length, toClient);
      if (!to.write(chunk)) {
        from.pause();
        to.once('drain', resume);
      }
    });
  }

  /** Accounts for the first `length` bytes of `chunk` on their way: activity for the idle sweep, byte counts, the response tracker. */
  private relayed(chunk: Buffer, length: number, toClient: boolean): void {
    this.lastActivity = Date.now();
    if (toClient) {
      this.bytesToClient += length;
      this.tracker?.observe(length === chunk.length ? chunk : chunk.subarray(0, length));
    } else {
      this.bytesFromClient += length;
    }
  }

  /** Restarts reading `from` once its queued remainder has gone out, unless the splice has ended. */
  private resumer(from: Socket): () => void {
    return () => {
      if (this.endReason === null) from.resume();
    };
  }

  finish(reason: SpliceEndReason): void {
    if (this.endReason === null) this.endReason = reason;
    this.sweep.delete(this);
    this.client.destroy();
    this.backend.destroy();
  }

  private onClose(reason: SpliceEndReason): void {
    this.finish(reason);
    this.closedCount++;
    if (this.closedCount === 2) this.resolveEnded(this.endReason ?? reason);
  }

  close(reason: Extract<SpliceEndReason, 'kicked' | 'drained' | 'shutdown'>, notice: string | null): void {
    if (this.endReason !== null) return;
    this.endReason = reason;
    this.sweep.delete(this);
    this.backend.destroy();
    // A notice is written only between two responses; in the middle of one (a literal, say)
    // the client would read it as data, so then the connection just closes.
    if (notice !== null && this.client.writable && (this.tracker?.atBoundary() ?? false)) {
      this.client.end(notice);
      // A client that does not read must not hold its socket open.
      setTimeout(() => this.client.destroy(), 1_000).unref();
    } else {
      this.client.destroy();
    }
  }
}

/**
 * Starts splicing `client` and `backend`. `pipelined` goes to the backend first (bytes the
 * client sent after its login command) and `leftover` to the client (bytes the backend sent
 * after its login reply).
 */
export function splice(client: Socket, backend: Socket, pipelined: Uint8Array, leftover: Uint8Array, idleTimeoutMs: number, tracker: ResponseBoundaryTracker | null = null): Splice {
  return new SpliceSession(client, backend, pipelined, leftover, idleTimeoutMs, tracker);
}
