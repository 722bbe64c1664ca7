// A raw protocol client that keeps every byte it sent and received, for the tests that hold the
// session.finished line's byte counts against what really crossed the wire.
import { once } from 'node:events';
import { connect as netConnect, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';

export class CountingClient {
  /** Everything received, as latin1 text (one character per byte). */
  text = '';
  /** Bytes written so far. */
  sent = 0;
  /** Resolves once the connection has closed. */
  readonly closed: Promise<void>;
  private socket: Socket;
  private onText: () => void = () => {};
  private markClosed: () => void = () => {};

  private constructor(socket: Socket) {
    this.socket = socket;
    this.closed = new Promise((resolve) => (this.markClosed = resolve));
    this.listen(socket);
  }

  /** Connects (from `localAddress`, a loopback address, when given) and waits for the greeting's first line. */
  static async connect(port: number, localAddress?: string): Promise<CountingClient> {
    const client = new CountingClient(netConnect({ port, host: '127.0.0.1', ...(localAddress !== undefined ? { localAddress } : {}) }));
    await client.until(/\r\n/);
    client.port = client.socket.localPort ?? 0;
    return client;
  }

  /** The local port: the `clientPort` of this session's log lines (kept: a closed socket has none). */
  port = 0;

  /** Resolves once what was received matches `pattern`. */
  until(pattern: RegExp): Promise<void> {
    return new Promise((resolve) => {
      this.onText = () => pattern.test(this.text) && resolve();
      this.onText();
    });
  }

  send(text: string): void {
    this.sent += Buffer.byteLength(text);
    this.socket.write(text);
  }

  /** Starts TLS on the connection (after the server said yes to STARTTLS or STLS). */
  async startTls(ca: string): Promise<void> {
    this.socket.removeAllListeners('data');
    const secure = tlsConnect({ socket: this.socket, ca, servername: 'localhost' });
    await once(secure, 'secureConnect');
    this.socket = secure;
    this.listen(secure);
  }

  /** Bytes received. */
  get received(): number {
    return Buffer.byteLength(this.text, 'latin1');
  }

  private listen(socket: Socket): void {
    socket.on('data', (chunk: Buffer) => {
      this.text += chunk.toString('latin1');
      this.onText();
    });
    socket.on('close', () => this.markClosed());
  }
}
