/**
 * The benchmark's load client: a minimal IMAP and POP3 client over one TCP or TLS socket,
 * light enough that thousands of them fit in one process. Commands may be pipelined; each
 * resolves on its own response. IMAP literals in responses are counted and skipped, never
 * copied, so a 10 MB FETCH costs the client little more than the read itself.
 * Not a general client: it understands exactly what the benchmark sends.
 */
import { connect as netConnect, type Socket } from 'node:net';
import { TLSSocket, connect as tlsConnect } from 'node:tls';

export type Protocol = 'imap' | 'pop3';

export interface ConnectOptions {
  readonly port: number;
  readonly host?: string;
  /** Implicit TLS (the certificate is not verified: loopback benchmark). */
  readonly tls?: boolean;
  /** Deadline for connect, greeting and each command (default 10 s). */
  readonly timeoutMs?: number;
  /** With `tls`: a session to offer for resumption (a former connection's lastSession). */
  readonly session?: Buffer;
}

/** A response: the status word and, for IMAP, the untagged lines' count and literal bytes. */
export interface Reply {
  readonly ok: boolean;
  readonly line: string;
  /** IMAP literal bytes received with this response (e.g. a FETCH body). */
  readonly literalBytes: number;
}

interface Waiter {
  /** IMAP tag, or null for POP3 / greeting / continuation waits. */
  readonly tag: string | null;
  /** Resolve on a '+' continuation line (IMAP IDLE, AUTHENTICATE). */
  readonly continuation: boolean;
  readonly resolve: (reply: Reply) => void;
  readonly reject: (error: Error) => void;
  readonly timer: NodeJS.Timeout;
}

const EMPTY = Buffer.alloc(0);
const READ_BUFFER = Buffer.allocUnsafe(256 * 1024);
const LITERAL_AT_END = /\{(\d+)\+?\}$/;

/** One client connection. */
export class MailClient {
  private pending: Buffer = EMPTY;
  private literalLeft = 0;
  private literalBytes = 0;
  private readonly waiters: Waiter[] = [];
  private failure: Error | undefined;
  private tagCounter = 0;
  private greeted = false;
  /** With TLS: the last session the server gave (a TLS 1.3 ticket), to resume with later; none after some resumptions. */
  lastSession: Buffer | undefined;

  private constructor(
    readonly socket: Socket,
    readonly protocol: Protocol,
    private readonly timeoutMs: number,
  ) {
    if (socket instanceof TLSSocket) {
      socket.on('data', (chunk: Buffer) => this.receive(chunk));
      // Tickets come after the handshake, before or with the greeting: listened for from the start.
      socket.on('session', (session: Buffer) => (this.lastSession = session));
    }
    socket.on('error', (error) => this.fail(error));
    socket.on('close', () => this.fail(new Error('connection closed')));
  }

  /** Connects and waits for the greeting. */
  static async open(protocol: Protocol, options: ConnectOptions): Promise<MailClient> {
    const host = options.host ?? '127.0.0.1';
    const timeoutMs = options.timeoutMs ?? 10_000;
    let client: MailClient | undefined;
    // Plain sockets read into one shared buffer (receive() copies what it keeps), so thousands of
    // idle clients cost no read buffers and a large FETCH allocates nothing per chunk.
    const socket: Socket = options.tls
      ? tlsConnect({ host, port: options.port, rejectUnauthorized: false, servername: 'localhost', ...(options.session !== undefined ? { session: options.session } : {}) })
      : netConnect({ host, port: options.port, onread: { buffer: READ_BUFFER, callback: (n) => {
        client?.receive(READ_BUFFER.subarray(0, n));
        return true;
      } } });
    socket.setNoDelay(true);
    client = new MailClient(socket, protocol, timeoutMs);
    const greeting = await client.expect(null, false);
    client.greeted = true;
    if (!greeting.ok) {
      client.destroy();
      throw new Error(`bad greeting: ${greeting.line}`);
    }
    return client;
  }

  private expect(tag: string | null, continuation: boolean): Promise<Reply> {
    if (this.failure) return Promise.reject(this.failure);
    return new Promise<Reply>((resolve, reject) => {
      const timer = setTimeout(() => this.fail(new Error(`no answer within ${this.timeoutMs} ms`)), this.timeoutMs);
      this.waiters.push({ tag, continuation, resolve, reject, timer });
    });
  }

  private fail(error: Error): void {
    if (this.failure) return;
    this.failure = error;
    this.socket.destroy();
    for (const w of this.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(error);
    }
  }

  private settle(index: number, reply: Reply): void {
    const [w] = this.waiters.splice(index, 1);
    if (w === undefined) return;
    clearTimeout(w.timer);
    w.resolve(reply);
  }

  /** Takes bytes read from the socket; keeps no reference to `chunk`. */
  receive(chunk: Buffer): void {
    let pos = 0;
    while (pos < chunk.length) {
      if (this.literalLeft > 0) {
        const take = Math.min(this.literalLeft, chunk.length - pos);
        this.literalLeft -= take;
        this.literalBytes += take;
        pos += take;
        continue;
      }
      const nl = chunk.indexOf(0x0a, pos);
      if (nl < 0) {
        this.pending = this.pending.length > 0 ? Buffer.concat([this.pending, chunk.subarray(pos)]) : Buffer.from(chunk.subarray(pos));
        return;
      }
      const raw = this.pending.length > 0 ? Buffer.concat([this.pending, chunk.subarray(pos, nl)]) : chunk.subarray(pos, nl);
      this.pending = EMPTY;
      pos = nl + 1;
      const end = raw.length > 0 && raw[raw.length - 1] === 0x0d ? raw.length - 1 : raw.length;
      this.line(raw.toString('latin1', 0, end));
    }
  }

  private line(text: string): void {
    if (this.protocol === 'pop3' || !this.greeted) {
      // POP3 answers in order; the greeting is the first line of either protocol.
      const ok = this.protocol === 'pop3' ? text.startsWith('+OK') : text.startsWith('* OK') || text.startsWith('* PREAUTH');
      if (this.waiters.length > 0) this.settle(0, { ok, line: text, literalBytes: 0 });
      return;
    }
    if (text.startsWith('+')) {
      const i = this.waiters.findIndex((w) => w.continuation);
      if (i >= 0) this.settle(i, { ok: true, line: text, literalBytes: 0 });
      return;
    }
    if (text.startsWith('* ')) {
      const m = LITERAL_AT_END.exec(text);
      if (m?.[1] !== undefined) this.literalLeft = Number(m[1]);
      return;
    }
    const space = text.indexOf(' ');
    const tag = space > 0 ? text.slice(0, space) : text;
    const i = this.waiters.findIndex((w) => w.tag === tag);
    if (i < 0) return; // the text after a literal, e.g. ")"
    const ok = text.startsWith('OK', space + 1);
    const literalBytes = this.literalBytes;
    this.literalBytes = 0;
    this.settle(i, { ok, line: text, literalBytes });
  }

  /** Sends an IMAP command (the tag is added) and resolves on its tagged response. */
  imap(command: string): Promise<Reply> {
    const tag = `a${++this.tagCounter}`;
    const reply = this.expect(tag, false);
    this.socket.write(`${tag} ${command}\r\n`);
    return reply;
  }

  /** Sends IMAP IDLE and resolves on the server's continuation ("+ idling"). */
  idle(): Promise<Reply> {
    const tag = `a${++this.tagCounter}`;
    const reply = this.expect(null, true);
    this.socket.write(`${tag} IDLE\r\n`);
    return reply;
  }

  /** Sends a POP3 command and resolves on its status line. */
  pop3(command: string): Promise<Reply> {
    const reply = this.expect(null, false);
    this.socket.write(`${command}\r\n`);
    return reply;
  }

  /** Closes the connection at once. */
  destroy(): void {
    this.socket.removeAllListeners('close');
    this.failure ??= new Error('closed by the client');
    this.socket.destroy();
    for (const w of this.waiters.splice(0)) {
      clearTimeout(w.timer);
      w.reject(this.failure);
    }
  }
}

/** An IMAP quoted string (the benchmark's user names and passwords need no escapes, but be safe). */
export function quoted(s: string): string {
  return `"${s.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}

/** Throws with the server's line when a reply is not OK. */
export function mustBeOk(reply: Reply, what: string): Reply {
  if (!reply.ok) throw new Error(`${what}: ${reply.line}`);
  return reply;
}
