/**
 * Client-facing listeners: plain (with STARTTLS) and implicit TLS, one server per configured
 * listener, each handing accepted sockets to a new Session. Owns the listening sockets and the
 * set of live sessions for shutdown; knows nothing of protocols beyond picking the adapter.
 */
import { readFileSync } from 'node:fs';
import { createServer as createNetServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import { createSecureContext, createServer as createTlsServer } from 'node:tls';
import type { SecureContext, SecureContextOptions, TLSSocket } from 'node:tls';
import type { ListenerConfig } from '../config/schema.js';
import { MailfrontError } from '../errors.js';
import type { Logger } from '../log.js';
import type { ProtocolAdapter } from '../protocol/types.js';
import { Session } from '../session/session.js';
import type { SessionContext } from '../session/session.js';

/** Reads a listener's certificate and key as TLS options (TLS 1.2 at least). */
export function loadTlsOptions(listener: ListenerConfig): SecureContextOptions | undefined {
  if (listener.certificate === undefined) return undefined;
  try {
    const options: SecureContextOptions = { cert: readFileSync(listener.certificate.cert), key: readFileSync(listener.certificate.key), minVersion: 'TLSv1.2' };
    createSecureContext(options); // fails here, at start-up, on a bad key or certificate
    return options;
  } catch (error) {
    throw new MailfrontError('TLS_FILES_UNUSABLE', 'config', `listener "${listener.name}": cannot load certificate ${listener.certificate.cert} / key ${listener.certificate.key}: ${error instanceof Error ? error.message : String(error)}`);
  }
}

/** One bound listener and the sessions it accepted. */
export class Listener {
  readonly sessions = new Set<Session>();
  private server: Server | undefined;
  private tlsOptions: SecureContextOptions | undefined;
  private secureContext: SecureContext | undefined;

  constructor(
    readonly config: ListenerConfig,
    private readonly adapter: ProtocolAdapter,
    private readonly context: Omit<SessionContext, 'secureContext'>,
    private readonly log: Logger,
  ) {
    this.tlsOptions = loadTlsOptions(config);
    this.secureContext = this.tlsOptions ? createSecureContext(this.tlsOptions) : undefined;
  }

  /** The address actually bound (useful with port 0 in tests). */
  address(): { host: string; port: number } {
    const a = this.server?.address();
    if (a === null || a === undefined || typeof a === 'string') throw new Error(`listener ${this.config.name} is not bound`);
    return { host: a.address, port: a.port };
  }

  /** Binds the listener; rejects with a config error naming the address when it cannot. */
  listen(): Promise<void> {
    const context: SessionContext = { ...this.context, secureContext: () => this.secureContext };
    const accept = (socket: Socket, tlsActive: boolean): void => {
      const session = new Session(socket, this.config, this.adapter, { ...context, onEnd: (reason) => {
        this.sessions.delete(session);
        this.context.onEnd?.(reason);
      } }, tlsActive);
      this.sessions.add(session);
    };
    let server: Server;
    if (this.config.tls === 'implicit') {
      const tlsServer = createTlsServer({ ...this.tlsOptions, handshakeTimeout: this.context.config().session.preauthTimeoutMs }, (socket: TLSSocket) => accept(socket, true));
      tlsServer.on('tlsClientError', (error, socket) => {
        this.log.info({ event: 'session.tls_failed', listener: this.config.name, client: socket.remoteAddress, err: error.message }, 'TLS handshake failed');
        socket.destroy();
      });
      server = tlsServer;
    } else {
      server = createNetServer((socket) => accept(socket, false));
    }
    this.server = server;
    return new Promise((resolve, reject) => {
      const onError = (error: NodeJS.ErrnoException): void => reject(new MailfrontError('LISTEN_FAILED', 'config', `listener "${this.config.name}" cannot bind ${this.config.host}:${this.config.port}: ${error.code ?? error.message}`));
      server.once('error', onError);
      server.listen({ host: this.config.host, port: this.config.port, backlog: 1024 }, () => {
        server.off('error', onError);
        server.on('error', (error) => this.log.error({ event: 'listener.error', listener: this.config.name, err: error.message }, 'listener error'));
        this.log.info({ event: 'listener.bound', listener: this.config.name, protocol: this.config.protocol, address: `${this.config.host}:${this.address().port}`, tls: this.config.tls }, 'listening');
        resolve();
      });
    });
  }

  /** Stops accepting connections; live sessions are left alone. */
  stopAccepting(): Promise<void> {
    const server = this.server;
    if (server === undefined || !server.listening) return Promise.resolve();
    return new Promise((resolve) => server.close(() => resolve()));
  }
}
