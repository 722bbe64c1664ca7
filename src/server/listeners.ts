/**
 * Client-facing listeners: plain (with STARTTLS) and implicit TLS, one TCP server per
 * configured listener. A connection from a trusted load balancer first gives its PROXY header
 * (which names the real client); an implicit-TLS connection then does its handshake; then a
 * Session takes over. Owns the listening sockets and the set of live sessions for shutdown;
 * knows nothing of protocols beyond picking the adapter.
 */
import { createServer as createNetServer } from 'node:net';
import type { Server, Socket } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { ListenerConfig } from '../config/schema.js';
import type { EvictedPhase, TlsHandshakeFailureReason } from '../metrics.js';
import { MailfrontError, asMailfrontError } from '../errors.js';
import type { Logger } from '../log.js';
import { CidrSet } from '../net/cidr.js';
import { endOnLateTlsError } from '../net/tls-late-error.js';
import { serverTlsSocket } from '../net/tls-sockets.js';
import { ADDRESS_LIMIT_TEXT, SHUTTING_DOWN_TEXT, TOTAL_LIMIT_TEXT } from '../protocol/rules.js';
import type { ProtocolAdapter } from '../protocol/types.js';
import { Session } from '../session/session.js';
import type { SessionContext } from '../session/session.js';
import { acceptProxyHeader, socketEndpoints } from './proxy-protocol.js';
import { TlsContextHolder } from './tls-config.js';
import type { CertificateInfo, ListenerCertificates } from './tls-config.js';
import type { ConnectionEndpoints } from './proxy-protocol.js';
import type { ConnectionLimiter } from './connection-limits.js';
import { REFUSED_LOG_INTERVAL_MS } from '../limits.js';
import { destroyAfterGrace } from '../net/close-grace.js';
import { LiveSet } from '../live-set.js';

/**
 * Quiet time after which the kernel probes a client connection (TCP keepalive; node's libuv then
 * probes every second, 10 times). A client gone without a FIN (a laptop closed, a phone off the
 * network) during IDLE, or while its session waits for the backend, is noticed after about 70 s of
 * silence; without keepalive only the idle timeout (31 min) would end it, or the kernel's
 * retransmissions (15 min and more) once something is sent. Probes cost nothing to a client that
 * is there, and keep NAT and firewall state of an IDLE connection alive.
 */
export const CLIENT_KEEPALIVE_MS = 60_000;

/**
 * Connections the kernel may hold accepted and not yet taken by mailfront, per listener. With
 * 1024, 2,000 clients connecting at once overflowed it 856 times (each a SYN dropped and sent
 * again a second later: p90 time to greeting 1.07 s); with 4096, none (0.14 s). The kernel caps it
 * at net.core.somaxconn (4096 by default since Linux 5.4; 128 before).
 */
export const LISTEN_BACKLOG = 4096;

/** The limits a connection can be refused by at accept (a user's sessions are counted at login). */
type AcceptLimit = 'total' | 'address';

/** What the log aggregates: refusals by a limit, or connections evicted at max_connections. */
type RefusedKind = AcceptLimit | 'evicted';

/** Connections one limit refused (or evictions) that no line has told of yet. */
interface RefusedSince {
  refused: number;
  /** One of them, for the line: the first refused since the last line. */
  client: string;
  listener: string;
  readonly timer: NodeJS.Timeout;
}

/**
 * The log of connections refused by a connection limit, and of those closed to make room at
 * max_connections (evicted). A flood of connects is what the limits are there for, and a warn
 * line for each would be a flood of its own (300 connects refused, 300 lines): the first refusal
 * by a limit (or eviction) is logged at once, and after it at most one line per interval and
 * limit, with how many since the last line and one of their addresses.
 * mailfront_connections_refused_total and mailfront_connections_evicted_total count every one as
 * it happens.
 */
export class RefusedConnectionsLog {
  private readonly pending = new Map<RefusedKind, RefusedSince>();

  constructor(
    private readonly log: Logger,
    private readonly intervalMs = REFUSED_LOG_INTERVAL_MS,
  ) {}

  /** A connection from `client` on `listener` was closed to make room for a new one (the process at max_connections). */
  evicted(listener: string, client: string): void {
    this.refused('evicted', listener, client);
  }

  /** A connection from `client` on `listener` was refused by `limit`. */
  refused(limit: RefusedKind, listener: string, client: string): void {
    const since = this.pending.get(limit);
    if (since === undefined) {
      this.write(limit, 1, listener, client);
      this.startInterval(limit);
    } else if (since.refused++ === 0) {
      since.client = client;
      since.listener = listener;
    }
  }

  /** Logs the refusals no line has told of yet (the server is stopping) and ends every interval. */
  flush(): void {
    for (const [limit, since] of this.pending) {
      clearTimeout(since.timer);
      if (since.refused > 0) this.write(limit, since.refused, since.listener, since.client);
    }
    this.pending.clear();
  }

  private startInterval(limit: RefusedKind): void {
    // Never what keeps the process up: a stop flushes what is left.
    const timer = setTimeout(() => this.intervalEnded(limit), this.intervalMs).unref();
    this.pending.set(limit, { refused: 0, client: '', listener: '', timer });
  }

  private intervalEnded(limit: RefusedKind): void {
    const since = this.pending.get(limit);
    this.pending.delete(limit);
    // A quiet interval ends the count: the next refusal is logged at once.
    if (since === undefined || since.refused === 0) return;
    this.write(limit, since.refused, since.listener, since.client);
    this.startInterval(limit);
  }

  private write(limit: RefusedKind, refused: number, listener: string, client: string): void {
    if (limit === 'evicted') {
      this.log.warn({ event: 'session.evicted', evicted: refused, listener, client }, refused === 1 ? 'connection limit reached: the oldest connection not logged in closed to make room' : `connection limit reached: ${refused} connections not logged in closed to make room`);
      return;
    }
    this.log.warn({ event: 'session.refused', limit, refused, listener, client }, refused === 1 ? 'connection limit reached' : `connection limit reached: ${refused} connections refused`);
  }
}

/**
 * One refusal log per connection limiter, so per process: the listeners share the limits, and a
 * flood spread over several listeners still gets one line per interval and limit.
 */
const refusedLogs = new WeakMap<ConnectionLimiter, RefusedConnectionsLog>();

function refusedLogOf(limiter: ConnectionLimiter, log: Logger): RefusedConnectionsLog {
  let refusedLog = refusedLogs.get(limiter);
  if (refusedLog === undefined) refusedLogs.set(limiter, (refusedLog = new RefusedConnectionsLog(log)));
  return refusedLog;
}

/**
 * A TCP server for client connections, whose accepted sockets have TCP_NODELAY and keepalive
 * (CLIENT_KEEPALIVE_MS). On Linux they are set once, on the listening socket, and every
 * connection it accepts has them from the kernel (accept copies the listener's socket options;
 * its keepalive timer runs from the start): node's noDelay and keepAlive server options set them
 * on each accepted socket instead, five setsockopt calls per connection (TCP_NODELAY,
 * SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT) of a warm login's 45
 * (docs/performance.md, "System calls per warm login"). A connection whose handshake completed
 * before the listening socket had them (between listen() and the 'listening' event: a restart, or
 * a reload moving the listener, while clients reconnect) waits in the accept queue without them.
 * That queue holds at most `backlog` + 1 and is first in, first out, so the first `perSocket`
 * connections accepted (LISTEN_BACKLOG + 1, the listen() call's backlog and one) get them set
 * each, whatever the loop turn that accepts them (node accepts one connection per turn, not the
 * whole queue), as does every connection elsewhere than on Linux, or where node's listening
 * handle lacks the calls.
 */
export function createClientServer(onConnection: (raw: Socket) => void, perSocket = LISTEN_BACKLOG + 1): Server {
  let inherited = false;
  let setEach = perSocket;
  const server = createNetServer({ allowHalfOpen: true }, (raw) => {
    if (!inherited || setEach > 0) {
      setEach--;
      raw.setNoDelay(true);
      raw.setKeepAlive(true, CLIENT_KEEPALIVE_MS);
    }
    onConnection(raw);
  });
  // Before listen()'s own callback, and before anything is accepted (the poll phase comes after it).
  server.once('listening', () => (inherited = optionsOnListeningSocket(server)));
  return server;
}

/** node's handle of a listening TCP server: libuv's uv_tcp_nodelay and uv_tcp_keepalive, which a listening socket takes as any other. */
interface ListeningHandle {
  setNoDelay?(enable: boolean): number;
  setKeepAlive?(enable: boolean, initialDelaySeconds: number): number;
}

/** Sets TCP_NODELAY and keepalive on `server`'s listening socket; true when its connections have them from it. */
function optionsOnListeningSocket(server: Server): boolean {
  if (process.platform !== 'linux') return false;
  const handle = (server as unknown as { _handle?: ListeningHandle | null })._handle;
  if (typeof handle?.setNoDelay !== 'function' || typeof handle.setKeepAlive !== 'function') return false;
  return handle.setNoDelay(true) === 0 && handle.setKeepAlive(true, Math.floor(CLIENT_KEEPALIVE_MS / 1000)) === 0;
}

/** Errors before a session owns its socket end in 'close'; one handler for every connection, not a closure each. */
function ignoreSocketError(): void {}

/**
 * Waits for an implicit-TLS connection's handshake: null once it is done, else why it failed
 * ('timeout' after `timeoutMs`; 'error', whose message goes to `onError`; 'closed': the client
 * closed, or sent its FIN, which on a half-open socket brings no close by itself), or 'stopped'
 * when the server stops first: the wait puts a function in `underWay` that ends it so, and takes
 * it out when it is over.
 *
 * `wrap` makes the TLS socket only once the client's first bytes (its ClientHello) are read on
 * `raw`. node's TLS layer keeps its input buffer for the connection's life, sized by its first
 * read (crypto_bio.cc, NodeBIO): libuv's suggested 64 KiB when the layer reads the socket itself,
 * the bytes' own size (at least 1 KiB) when it is handed bytes read already, as those a socket
 * holds when it is wrapped (_tls_wrap.js, initRead). Wrapped at accept, an idle IMAPS session
 * held about 6 KiB more after a full collection; the price is a TLS upload read 16 KiB at a time
 * instead of 64 (docs/performance.md, "Memory per idle session"). Until the bytes come, the raw
 * socket's close, FIN or error is the handshake's, as the TLS socket's would be.
 *
 * Every listener added here is removed once the wait is over: left on the socket, their
 * closures held the wait's promise and timer for the session's life. An exception from `wrap`
 * rejects, as it did thrown in accept(): its caller logs it and closes the connection.
 */
function handshake(raw: Socket, wrap: () => TLSSocket, timeoutMs: number, onError: (message: string) => void, underWay: LiveSet<HandshakeWait>): Promise<TlsHandshakeFailureReason | 'stopped' | null> {
  return new Promise((resolve, reject) => {
    let secure: TLSSocket | undefined;
    let settled = false;
    const over = (): void => {
      settled = true;
      clearTimeout(timer);
      underWay.delete(wait);
      stopWaitingForBytes();
      secure?.off('secure', onSecure).off('error', onFailed).off('close', onClosed).off('end', onClosed);
    };
    const settle = (outcome: TlsHandshakeFailureReason | 'stopped' | null): void => {
      if (settled) return;
      over();
      resolve(outcome);
    };
    const wait = new HandshakeWait(() => settle('stopped'));
    underWay.add(wait);
    const onSecure = (): void => settle(null);
    const onFailed = (error: Error): void => {
      if (!settled) onError(error.message);
      settle('error');
    };
    // A client gone during the handshake: nothing is left to wait for (nor to keep alive until the deadline).
    const onClosed = (): void => settle('closed');
    const onFirstBytes = (): void => {
      // 'readable' with nothing to read: the client's FIN, whose 'end' the read emits.
      if (raw.readableLength === 0) return void raw.read();
      stopWaitingForBytes();
      try {
        secure = wrap();
      } catch (error) {
        over();
        return reject(error);
      }
      secure.once('secure', onSecure).once('error', onFailed).once('close', onClosed).once('end', onClosed);
    };
    const stopWaitingForBytes = (): void => {
      raw.off('readable', onFirstBytes).off('error', onFailed).off('close', onClosed).off('end', onClosed);
    };
    const timer = setTimeout(() => settle('timeout'), timeoutMs);
    // Paused mode: the bytes stay in the socket's buffer, which the TLS socket takes them from.
    // Bytes read with a PROXY header are there already, and bring no 'readable' of their own.
    raw.once('error', onFailed).once('close', onClosed).once('end', onClosed);
    if (raw.readableLength > 0) onFirstBytes();
    else raw.on('readable', onFirstBytes);
  });
}

/** A TLS handshake under way, as closeHandshakes() ends its wait; in the listener's LiveSet. */
class HandshakeWait {
  place = -1;
  constructor(readonly stop: () => void) {}
}

/** True when two listener configs need different sockets (anything else can change in place). */
export function needsRebind(a: ListenerConfig, b: ListenerConfig): boolean {
  return a.host !== b.host || a.port !== b.port || a.protocol !== b.protocol || a.tls !== b.tls;
}

/** The certificates a listener's config names, as it names them (`certificate` or `certificates`); undefined for none. */
function certificatesOf(config: ListenerConfig): ListenerCertificates | undefined {
  return config.certificates ?? config.certificate;
}

/** `config` with the certificates of `from` in place of its own. */
function withCertificatesOf(config: ListenerConfig, from: ListenerConfig): ListenerConfig {
  const { certificate: _one, certificates: _list, ...rest } = config;
  return { ...rest, ...(from.certificate !== undefined ? { certificate: from.certificate } : {}), ...(from.certificates !== undefined ? { certificates: from.certificates } : {}) };
}

/**
 * What the logs say of a certificate: subject, validity, fingerprint, and with several (SNI) the
 * file and the names it is chosen for.
 */
function certificateFields(certificate: CertificateInfo, of: number): Record<string, unknown> {
  return { subject: certificate.subject, validTo: certificate.validTo, fingerprint: certificate.fingerprint256, ...(of > 1 ? { file: certificate.file, names: certificate.names } : {}) };
}

/** One bound listener and the sessions it accepted. */
export class Listener {
  readonly sessions = new LiveSet<Session>('listenerPlace');
  private server: Server | undefined;
  private tls: TlsContextHolder | undefined;
  private proxyTrusted: CidrSet;
  /** What every session of this listener gets: one object for all of them, not one each. */
  private readonly sessionContext: SessionContext;
  private readonly refusedLog: RefusedConnectionsLog;

  constructor(
    private listenerConfig: ListenerConfig,
    private readonly adapter: ProtocolAdapter,
    private readonly context: Omit<SessionContext, 'secureContext' | 'sniCallback'>,
    private readonly log: Logger,
  ) {
    const certificates = certificatesOf(listenerConfig);
    this.tls = certificates !== undefined ? new TlsContextHolder(certificates, context.config().tls) : undefined;
    this.proxyTrusted = new CidrSet(listenerConfig.proxyProtocol?.trustedNetworks ?? []);
    this.refusedLog = refusedLogOf(context.limiter, log);
    this.sessionContext = {
      ...context,
      secureContext: () => this.tls?.context,
      sniCallback: () => this.tls?.sniCallback,
      onEnd: (reason, session) => {
        this.sessions.delete(session);
        context.onEnd?.(reason, session);
        this.checkRetired();
      },
    };
  }

  get config(): ListenerConfig {
    return this.listenerConfig;
  }

  /**
   * Takes new settings that need no new socket (certificate files re-read, TLS policy, PROXY
   * networks, plaintext policy); new sessions use them. Certificates that cannot be used are
   * reported and the working ones stay, all of them.
   */
  reconfigure(next: ListenerConfig): void {
    const policy = this.context.config().tls;
    // What cannot fail is taken first, so that a certificate that cannot be used holds back
    // nothing else. Until new certificates are in force, the config in force names the files of
    // the ones that are: the next reload then tries the new files again.
    const inForce = this.listenerConfig;
    this.proxyTrusted = new CidrSet(next.proxyProtocol?.trustedNetworks ?? []);
    this.listenerConfig = withCertificatesOf(next, inForce);
    const files = certificatesOf(next);
    try {
      if (files === undefined) this.tls = undefined;
      else if (this.tls === undefined || !this.tls.reads(files)) {
        // Other files in place of working certificates: an expired one is refused, as on a re-read.
        this.tls = this.tls === undefined ? new TlsContextHolder(files, policy) : this.tls.replacedBy(files, policy);
        this.logCertificates(next.name, this.tls.certificates);
      } else {
        const result = this.tls.reload(policy);
        if (!result.ok) throw result.error;
        this.logCertificates(next.name, result.certificates);
      }
      this.listenerConfig = next;
    } finally {
      // Under its name from now on, whether the files were taken or not (a renamed listener's old series are dropped by the reload).
      this.publishCertificates(next);
    }
  }

  /** Which certificates a listener serves from now on (a reload re-read them, or took other files): one line each. */
  private logCertificates(listener: string, certificates: readonly CertificateInfo[]): void {
    for (const certificate of certificates) {
      this.log.info({ event: 'listener.certificate_reloaded', listener, ...certificateFields(certificate, certificates.length) }, 'certificate reloaded');
    }
  }

  /** The expiry of the certificates served, for mailfront_tls_certificate_expiry_timestamp_seconds (none without TLS). */
  private publishCertificates(config: ListenerConfig): void {
    this.context.metrics.listenerCertificates(config.name, config.tls !== 'none' ? (this.tls?.certificates ?? []) : []);
  }

  /** The address actually bound (useful with port 0 in tests). */
  address(): { host: string; port: number } {
    const a = this.server?.address();
    if (a === null || a === undefined || typeof a === 'string') throw new Error(`listener ${this.listenerConfig.name} is not bound`);
    return { host: a.address, port: a.port };
  }

  /** True while the listener accepts connections. */
  get listening(): boolean {
    return this.server?.listening ?? false;
  }

  private async accept(raw: Socket): Promise<void> {
    // The monotonic clock: the pre-auth deadline runs from here (session/session.ts).
    const acceptedAt = performance.now();
    const config = this.listenerConfig;
    const metrics = this.context.metrics;
    const timeoutMs = this.context.config().session.preauthTimeoutMs;
    raw.on('error', ignoreSocketError);
    let endpoints: ConnectionEndpoints;
    if (config.proxyProtocol) {
      try {
        endpoints = await acceptProxyHeader(raw, { isTrusted: (ip) => this.proxyTrusted.contains(ip), timeoutMs: config.proxyProtocol.headerTimeoutMs });
        // A peer outside the trusted networks is not asked for a header: none was read, none is
        // counted. One it sends anyway is counted as untrusted by the session, which sees it.
        if (endpoints.header !== undefined) metrics.proxyHeader(config.name, endpoints.header.kind === 'proxied' ? 'accepted' : 'local');
      } catch (caught) {
        const error = asMailfrontError(caught);
        metrics.proxyHeader(config.name, error.code === 'PROXY_HEADER_TIMEOUT' ? 'timeout' : error.code === 'PROXY_HEADER_CLOSED' ? 'closed' : 'malformed');
        this.log.info({ event: 'session.proxy_header_refused', listener: config.name, peer: raw.remoteAddress, code: error.code, err: error.message }, 'PROXY header refused');
        raw.destroy();
        return;
      }
    } else {
      endpoints = socketEndpoints(raw);
    }
    // A client that hung up while its header was read leaves nothing to serve. One gone before it
    // was accepted has no address, so no header was asked for: on a PROXY listener it is a peer
    // gone before its header (most of HAProxy's checks, which close at once, come to this).
    if (raw.destroyed || raw.remoteAddress === undefined) {
      if (config.proxyProtocol && endpoints.header === undefined && raw.remoteAddress === undefined) metrics.proxyHeader(config.name, 'closed');
      return void raw.destroy();
    }
    if (this.shuttingDown) return this.refuse(raw, config.tls === 'implicit', 'total', SHUTTING_DOWN_TEXT);
    const trusted = this.context.trustedNetworks().contains(endpoints.client.address);
    const admission = this.context.limiter.admit(endpoints.client.address, trusted);
    if (!admission.admitted) {
      this.refusedLog.refused(admission.limit, config.name, endpoints.client.address);
      metrics.connectionRefused(admission.limit);
      const text = admission.limit === 'total' ? TOTAL_LIMIT_TEXT : ADDRESS_LIMIT_TEXT;
      return this.refuse(raw, config.tls === 'implicit', admission.limit, text);
    }
    const lease = admission.lease;
    raw.once('close', () => lease.release());
    let socket: Socket = raw;
    if (config.tls === 'implicit') {
      const secureContext = this.tls?.context;
      if (secureContext === undefined) return void raw.destroy();
      // No handshake began, so none failed. A balancer's health check (check-send-proxy: a v2
      // LOCAL or v1 UNKNOWN header, then a close or a reset) names no client and counts as
      // nothing; a client gone before its first byte counts as closed. (As errors, every check
      // gave TLS-failure alerts a baseline.)
      const goneBeforeTls = (): void => {
        if (endpoints.header === undefined || endpoints.header.kind === 'proxied') metrics.tlsHandshakeFailure(config.name, 'closed');
      };
      // The peer's FIN came with its header (HAProxy's checks send both at once): its 'end' is
      // past, and no TLS layer would hear it; the handshake would wait for the pre-auth deadline.
      if (raw.readableEnded) {
        goneBeforeTls();
        return void raw.destroy();
      }
      const SNICallback = this.tls?.sniCallback;
      // Made once the client's first bytes (its ClientHello) are here: see handshake().
      let secure: TLSSocket | undefined;
      const wrap = (): TLSSocket => (secure = serverTlsSocket(raw, { isServer: true, secureContext, ...(SNICallback !== undefined ? { SNICallback } : {}) }));
      // A handshake under way is a connection not logged in like any other (a flood of
      // handshakes holds the slots as idle sessions do): evicted, it is just closed (no line can
      // be sent before TLS), and counted as evicted, not as a failed handshake.
      let evicted = false;
      lease.evictableBy(() => {
        evicted = true;
        (secure ?? raw).destroy();
        this.evicted('tls-handshake', config.name, endpoints.client.address);
      });
      // No session exists yet: a failed handshake is counted and logged here, once (an error is
      // followed by a close). The handshake spends the session's pre-auth time (it runs from accept).
      let errorMessage = '';
      const failure = await handshake(raw, wrap, Math.max(0, acceptedAt + timeoutMs - performance.now()), (message) => (errorMessage = message), this.handshakes);
      if (evicted) return;
      // The server is stopping (closeHandshakes()): the client is not at fault, and nothing is counted or logged.
      if (failure === 'stopped') return void (secure ?? raw).destroy();
      if (failure !== null) {
        // Not one byte past the PROXY header (if any): a reset or a close before any TLS byte.
        if (failure !== 'timeout' && raw.bytesRead <= (endpoints.header?.length ?? 0)) {
          goneBeforeTls();
          return void (secure ?? raw).destroy();
        }
        metrics.tlsHandshakeFailure(config.name, failure);
        if (failure !== 'closed') {
          const err = failure === 'error' ? errorMessage : `no TLS handshake within the pre-auth time (${timeoutMs} ms from accept)`;
          this.log.info({ event: 'session.tls_failed', listener: config.name, client: endpoints.client.address, reason: failure, err }, failure === 'error' ? 'TLS handshake failed' : 'TLS handshake timed out');
        }
        return void (secure ?? raw).destroy();
      }
      // Settled without a failure: the handshake was done, on the socket wrap() made.
      if (secure === undefined) return void raw.destroy();
      metrics.tlsHandshake(config.name, secure.getProtocol(), secure.isSessionReused());
      endOnLateTlsError(secure);
      socket = secure;
      // The server began to stop during the handshake: no new session is greeted now.
      if (this.shuttingDown) return this.refuse(secure, false, 'total', SHUTTING_DOWN_TEXT);
    }
    // A trusted balancer that says the client reached it over TLS (PP2_CLIENT_SSL: TLS it ended
    // itself, as HAProxy's `send-proxy-v2-ssl` reports) makes the session a TLS one: plaintext
    // logins are allowed as on implicit TLS, and STARTTLS is not offered (TLS within that TLS
    // is no client's idea; the hop from the balancer is the operator's network).
    const tlsActive = config.tls === 'implicit' || (endpoints.header?.kind === 'proxied' && endpoints.header.clientTls === true);
    const session = new Session(socket, config, this.adapter, this.sessionContext, tlsActive, endpoints, lease, acceptedAt);
    this.sessions.add(session);
    // Until its login begins (the session says when: session.ts), a full process may close it to admit a newer one.
    lease.evictableBy(() => {
      const phase = session.evict();
      if (phase !== undefined) this.evicted(phase, config.name, endpoints.client.address);
    });
  }

  /** A connection was closed to make room at max_connections: counted, and logged as refusals are. */
  private evicted(phase: EvictedPhase, listener: string, client: string): void {
    this.context.metrics.connectionEvicted(phase);
    this.refusedLog.evicted(listener, client);
  }

  /** Connections accepted that are not sessions yet (a PROXY header or a TLS handshake under way). */
  private accepting = 0;
  /**
   * The implicit-TLS handshakes under way, each with the function that ends its wait
   * (closeHandshakes()). A LiveSet, as the sessions: a Set would keep a TLS session that had been
   * in it at a rehash alive through young collections (src/live-set.ts).
   */
  private readonly handshakes = new LiveSet<HandshakeWait>('place');

  /**
   * The server's stop is at its end (the drain is over, every session told BYE): the connections
   * still in their TLS handshake are closed (no line can reach them before TLS). One that finished
   * its handshake during the drain was told BYE as a session (shutDown()); one that never does
   * waited out the pre-auth deadline after the stop had ended, and logged its timeout after
   * `server.stopped`.
   */
  closeHandshakes(): void {
    for (const wait of this.handshakes) wait.stop();
  }
  /** Who hears that this listener, stopped, has nothing left (whenRetired()). */
  private onRetired: (() => void) | null = null;

  /**
   * Calls `onRetired` once this listener, no longer accepting, has no session and no connection
   * on its way to one: at once when it has none. The owner then lets go of it (a listener a
   * reload stopped would otherwise be kept, with its server and TLS context, for good).
   */
  whenRetired(onRetired: () => void): void {
    this.onRetired = onRetired;
    this.checkRetired();
  }

  private checkRetired(): void {
    const onRetired = this.onRetired;
    if (onRetired === null || this.listening || this.sessions.size > 0 || this.accepting > 0) return;
    this.onRetired = null;
    onRetired();
  }

  /** Binds the listener; rejects with a config error naming the address when it cannot. */
  listen(): Promise<void> {
    // allowHalfOpen (createClientServer): a client's FIN is the end of what it sends, not of what
    // it is sent (IMAP LOGOUT or POP3 QUIT, then shutdown(SHUT_WR), still gets its answers: the
    // session and the splice close the connection themselves, session/session.ts and proxy/splice.ts).
    const server = createClientServer((raw) => {
      this.accepting++;
      this.accept(raw)
        .catch((error: unknown) => {
          this.log.error({ event: 'listener.accept_failed', listener: this.listenerConfig.name, err: error instanceof Error ? error.message : String(error) }, 'accepting a connection failed');
          raw.destroy();
        })
        .finally(() => {
          this.accepting--;
          this.checkRetired();
        });
    });
    this.server = server;
    const config = this.listenerConfig;
    return new Promise((resolve, reject) => {
      const onError = (error: NodeJS.ErrnoException): void => reject(new MailfrontError('LISTEN_FAILED', 'config', `listener "${config.name}" cannot bind ${config.host}:${config.port}: ${error.code ?? error.message}`));
      server.once('error', onError);
      server.listen({ host: config.host, port: config.port, backlog: LISTEN_BACKLOG }, () => {
        server.off('error', onError);
        server.on('error', (error) => this.log.error({ event: 'listener.error', listener: config.name, err: error.message }, 'listener error'));
        const certificates = this.tls?.certificates ?? [];
        const certificate = certificates[0];
        this.log.info({ event: 'listener.bound', listener: config.name, protocol: config.protocol, address: `${config.host}:${this.address().port}`, tls: config.tls, proxyProtocol: config.proxyProtocol !== undefined, ...(certificate !== undefined ? certificateFields(certificate, certificates.length) : {}), ...(certificates.length > 1 ? { certificates: certificates.map((c) => certificateFields(c, certificates.length)) } : {}) }, 'listening');
        this.publishCertificates(config);
        resolve();
      });
    });
  }

  /**
   * The server is stopping: no more connections, and those accepted but not yet sessions (a
   * PROXY header or a TLS handshake still under way) are refused when they get that far, so the
   * shutdown's BYE to sessions not yet logged in cannot miss one that logs in after it.
   */
  shutDown(): Promise<void> {
    this.shuttingDown = true;
    this.refusedLog.flush();
    return this.stopAccepting();
  }

  private shuttingDown = false;

  /**
   * Refuses a connection that is not a session (yet): the protocol's refusal line, then the close
   * within CLOSE_GRACE_MS. `beforeTls`: an implicit-TLS client before its handshake, which cannot read a
   * plaintext line and just gets the close.
   */
  private refuse(socket: Socket, beforeTls: boolean, limit: AcceptLimit, text: string): void {
    if (beforeTls) socket.destroy();
    else {
      socket.end(this.adapter.connectionRefusal(limit, text));
      destroyAfterGrace(socket);
    }
  }

  /** Stops accepting connections at once; live sessions are left alone (a reload's listener that is replaced). */
  stopAccepting(): Promise<void> {
    const server = this.server;
    // close() stops listening now; its callback would wait for every session to end.
    if (server !== undefined && server.listening) server.close();
    return Promise.resolve();
  }
}
