// A tiny raw line client for IMAP and POP3 over TCP or TLS: for things real client libraries
// cannot do (SASL PLAIN with an authzid, hostile input) and for checking servers directly.
// Simple by design: IMAP literals in responses are read as ordinary lines.
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect, type TLSSocket } from 'node:tls';

export interface LineClientOptions {
  readonly host?: string;
  /** Implicit TLS; `ca` is the PEM of the CA to trust. */
  readonly tls?: { readonly ca?: string | Buffer; readonly servername?: string; readonly rejectUnauthorized?: boolean };
  /** Per-read deadline (default 10 s). */
  readonly timeoutMs?: number;
  /** Connect from this loopback address (127.0.0.0/8), to look like another client. */
  readonly localAddress?: string;
}

export type ImapStatus = 'OK' | 'NO' | 'BAD';

export interface ImapResult {
  readonly tag: string;
  readonly status: ImapStatus;
  /** The tagged line after the status word. */
  readonly text: string;
  /** Untagged and continuation lines received before the tagged response. */
  readonly untagged: string[];
}

export class LineClient {
  private buffer = Buffer.alloc(0);
  private readonly lines: string[] = [];
  private waiter: (() => void) | undefined;
  private closed = false;
  private error: Error | undefined;
  private tagCounter = 0;

  private constructor(
    readonly socket: Socket | TLSSocket,
    private readonly timeoutMs: number,
  ) {
    socket.on('data', (chunk: Buffer) => {
      this.buffer = Buffer.concat([this.buffer, chunk]);
      for (;;) {
        const nl = this.buffer.indexOf(0x0a);
        if (nl < 0) break;
        const end = nl > 0 && this.buffer[nl - 1] === 0x0d ? nl - 1 : nl;
        this.lines.push(this.buffer.subarray(0, end).toString('utf8'));
        this.buffer = this.buffer.subarray(nl + 1);
      }
      this.wake();
    });
    socket.on('error', (err) => {
      this.error = err;
      this.wake();
    });
    socket.on('close', () => {
      this.closed = true;
      this.wake();
    });
  }

  static connect(port: number, options: LineClientOptions = {}): Promise<LineClient> {
    const host = options.host ?? '127.0.0.1';
    const timeoutMs = options.timeoutMs ?? 10_000;
    return new Promise((resolve, reject) => {
      const tls = options.tls;
      const socket: Socket | TLSSocket = tls
        ? tlsConnect({
            host,
            port,
            ...(options.localAddress !== undefined ? { localAddress: options.localAddress } : {}),
            servername: tls.servername ?? 'localhost',
            rejectUnauthorized: tls.rejectUnauthorized ?? true,
            ...(tls.ca !== undefined ? { ca: tls.ca } : {}),
          })
        : netConnect({ host, port, ...(options.localAddress !== undefined ? { localAddress: options.localAddress } : {}) });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new Error(`connect ${host}:${port} timed out`));
      }, timeoutMs);
      socket.once(tls ? 'secureConnect' : 'connect', () => {
        clearTimeout(timer);
        socket.removeListener('error', reject);
        resolve(new LineClient(socket, timeoutMs));
      });
      socket.once('error', (err) => {
        clearTimeout(timer);
        reject(err);
      });
    });
  }

  private wake(): void {
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.();
  }

  /** The next line, without its CRLF. Rejects on close, error or timeout. */
  async readLine(timeoutMs = this.timeoutMs): Promise<string> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const line = this.lines.shift();
      if (line !== undefined) return line;
      if (this.error) throw this.error;
      if (this.closed) throw new Error('connection closed');
      const left = deadline - Date.now();
      if (left <= 0) throw new Error('timed out waiting for a line');
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, left);
        this.waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  }

  write(data: string | Buffer): void {
    this.socket.write(data);
  }

  /** Writes `line` + CRLF. */
  send(line: string): void {
    this.socket.write(`${line}\r\n`);
  }

  nextTag(): string {
    this.tagCounter += 1;
    return `h${this.tagCounter}`;
  }

  /** Reads lines until the tagged response for `tag`. */
  async imapResult(tag: string): Promise<ImapResult> {
    const untagged: string[] = [];
    for (;;) {
      const line = await this.readLine();
      if (line.startsWith(`${tag} `)) {
        const rest = line.slice(tag.length + 1);
        const space = rest.indexOf(' ');
        const status = (space < 0 ? rest : rest.slice(0, space)).toUpperCase();
        if (status !== 'OK' && status !== 'NO' && status !== 'BAD') throw new Error(`unexpected tagged line: ${line}`);
        return { tag, status, text: space < 0 ? '' : rest.slice(space + 1), untagged };
      }
      untagged.push(line);
    }
  }

  /** Sends `<tag> <command>` and waits for its tagged response. */
  async imap(command: string): Promise<ImapResult> {
    const tag = this.nextTag();
    this.send(`${tag} ${command}`);
    return this.imapResult(tag);
  }

  /** Like imap() but rejects unless the result is OK. */
  async imapOk(command: string): Promise<ImapResult> {
    const result = await this.imap(command);
    if (result.status !== 'OK') throw new Error(`IMAP ${command.split(' ')[0] ?? ''} failed: ${result.status} ${result.text}`);
    return result;
  }

  /** `AUTHENTICATE PLAIN` with an initial response (SASL-IR): authzid \0 authcid \0 password. */
  authenticatePlain(authzid: string, authcid: string, password: string): Promise<ImapResult> {
    const blob = Buffer.from(`${authzid}\0${authcid}\0${password}`, 'utf8').toString('base64');
    return this.imap(`AUTHENTICATE PLAIN ${blob}`);
  }

  /** APPEND with a synchronizing literal. */
  async append(mailbox: string, message: string | Buffer): Promise<ImapResult> {
    const body = typeof message === 'string' ? Buffer.from(message, 'utf8') : message;
    const tag = this.nextTag();
    this.send(`${tag} APPEND ${quoteImap(mailbox)} {${body.length}}`);
    const line = await this.readLine();
    if (!line.startsWith('+')) {
      if (line.startsWith(`${tag} `)) throw new Error(`APPEND refused: ${line}`);
      throw new Error(`APPEND: expected a continuation, got: ${line}`);
    }
    this.write(Buffer.concat([body, Buffer.from('\r\n')]));
    return this.imapResult(tag);
  }

  /** Sends a POP3 command and returns its status line (rejects unless +OK). */
  async pop3(command: string): Promise<string> {
    this.send(command);
    const line = await this.readLine();
    if (!line.startsWith('+OK')) throw new Error(`POP3 ${command.split(' ')[0] ?? ''} failed: ${line}`);
    return line;
  }

  /** Sends a POP3 command with a multi-line answer; returns the lines (dot-unstuffed, without the final "."). */
  async pop3Multi(command: string): Promise<string[]> {
    await this.pop3(command);
    const lines: string[] = [];
    for (;;) {
      const line = await this.readLine();
      if (line === '.') return lines;
      lines.push(line.startsWith('..') ? line.slice(1) : line);
    }
  }

  /** Resolves when the server has closed the connection (or after the timeout). */
  async waitClosed(timeoutMs = this.timeoutMs): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.closed && Date.now() < deadline) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.max(1, deadline - Date.now()));
        this.waiter = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    return this.closed;
  }

  close(): void {
    this.socket.destroy();
  }
}

/** An IMAP quoted string. */
export function quoteImap(value: string): string {
  return `"${value.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
}
