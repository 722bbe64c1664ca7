/**
 * Dialling a backend slot and running the protocol's backend login dialogue over the socket:
 * connect with a deadline, optional TLS (implicit or STARTTLS, verified against a CA file),
 * and a login that ends with a socket ready to splice. Owns no policy about which slot.
 */
import { lookup } from 'node:dns';
import { connect as netConnect, isIP } from 'node:net';
import { bindProblem } from '../net/local-address.js';
import { markedSocketOptions } from '../net/socket-options.js';
import { clientTlsSocket } from '../net/tls-sockets.js';
import type { Socket } from 'node:net';
import { readFileSync } from 'node:fs';
import { checkServerIdentity } from 'node:tls';
import type { ConnectionOptions, TLSSocket } from 'node:tls';
import type { BackendConfig, Config, Protocol } from '../config/schema.js';
import { addressFamily, reservedUsersOf } from '../config/schema.js';
import type { ConfigIssue } from '../config/validate.js';
import { MailfrontError } from '../errors.js';
import type { FailureKind } from '../errors.js';
import type { BackendLoginMachine } from '../protocol/types.js';
import type { Slot } from '../routing/storemap.js';
import type { Cancellation } from '../cancel.js';
import { readDirect, writeNow } from '../net/direct-io.js';

/** A backend connection after a successful login. */
export interface BackendSession {
  readonly socket: Socket;
  /** The backend's post-login capabilities (IMAP), or null. */
  readonly capabilities: string | null;
  /** Bytes the backend sent after its login reply. */
  readonly leftover: Uint8Array;
}

/**
 * The backend settings a `protocol` login uses. ManageSieve has no implicit-TLS port (RFC 5804
 * knows STARTTLS only): under `tls: implicit`, which asks for TLS to the backends, its logins do
 * STARTTLS on the slot's sieve_port. The other protocols use the settings as they are.
 */
export function backendFor(protocol: Protocol, config: BackendConfig): BackendConfig {
  return protocol === 'managesieve' && config.tls === 'implicit' ? { ...config, tls: 'starttls' } : config;
}

/** The port `slot` has for `protocol` under the backend TLS mode, if any, and the key that sets it. */
function slotPortSetting(slot: Slot, protocol: Protocol, tls: BackendConfig['tls']): [number | undefined, string] {
  const implicit = tls === 'implicit';
  switch (protocol) {
    case 'imap':
      return implicit ? [slot.imapsPort, 'imaps_port'] : [slot.imapPort, 'imap_port'];
    case 'pop3':
      return implicit ? [slot.pop3sPort, 'pop3s_port'] : [slot.pop3Port, 'pop3_port'];
    case 'managesieve':
      // Under implicit, ManageSieve does STARTTLS on sieve_port (backendFor()).
      return [slot.sievePort, 'sieve_port'];
  }
}

/** The TCP port of `slot` for `protocol` under the backend TLS mode; throws `no-route` if the slot has none. */
export function slotPort(slot: Slot, protocol: Protocol, tls: BackendConfig['tls']): number {
  const [port, key] = slotPortSetting(slot, protocol, tls);
  if (port === undefined) {
    throw new MailfrontError('SLOT_NO_PORT', 'no-route', `slot "${slot.name}" of store "${slot.store}" has no ${key}`);
  }
  return port;
}

/**
 * The protocol a health probe of `slot` speaks: the first of IMAP, POP3 and ManageSieve the slot
 * has a port for under the store's `backend` settings. Going by either IMAP port whatever the TLS
 * mode, a slot with only imaps_port under tls none (or imap_port under implicit) was probed where
 * it has no port, and shown down for good though its POP3 or ManageSieve answered. A slot with
 * none: the protocol of the first port it has at all (else ManageSieve), whose probe then fails
 * naming the key it lacks.
 */
export function probeProtocol(slot: Slot, backend: BackendConfig): Protocol {
  const protocols: readonly Protocol[] = ['imap', 'pop3', 'managesieve'];
  const served = protocols.find((protocol) => slotPortSetting(slot, protocol, backendFor(protocol, backend).tls)[0] !== undefined);
  if (served !== undefined) return served;
  return slot.imapPort !== undefined || slot.imapsPort !== undefined ? 'imap' : slot.pop3Port !== undefined || slot.pop3sPort !== undefined ? 'pop3' : 'managesieve';
}

/** The code of a login refused because of the identity it would assert to the backend. */
export const IDENTITY_REFUSED = 'BACKEND_IDENTITY_REFUSED';

/**
 * `name` as Cyrus with virtdomains reads it (global.c canonuser): the domain follows the last '@',
 * or failing that the last '%', which it turns into '@'. So "boss%other.com" is boss@other.com.
 */
function cyrusName(name: string): string {
  if (name.includes('@')) return name;
  const percent = name.lastIndexOf('%');
  return percent < 0 ? name : `${name.slice(0, percent)}@${name.slice(percent + 1)}`;
}

/**
 * Whether `name` (lower-cased) is the reserved name `entry` to a backend. Cyrus with virtdomains
 * reads a domain in a name (after the last '@', or failing that the last '%') and drops its
 * defaultdomain, so "cyrus@example.com" is its admin `cyrus` there: an entry without '@' matches
 * the local part as well as the whole name. An entry with '@' names one account in one domain
 * and matches the whole name, read as Cyrus reads it ("boss%other.com" is "boss@other.com").
 */
function isReservedName(name: string, entry: string): boolean {
  if (name === entry) return true;
  const cyrus = cyrusName(name);
  if (entry.includes('@')) return cyrus === entry;
  const at = cyrus.lastIndexOf('@');
  const local = at >= 0 ? cyrus.slice(0, at) : cyrus;
  const percent = local.indexOf('%');
  return local === entry || (percent >= 0 && local.slice(0, percent) === entry);
}

/**
 * Why `user` must not be asserted to a backend under `config`, or null when it may. In the trust
 * modes (master-user, sasl-authzid) the backend takes the name mailfront sends on the proxy
 * account's word, without a password of its own: a directory user whose name is the proxy
 * account's, or a backend administrator's (Cyrus `admins`), would get that account's rights
 * (Cyrus lets its admin SETACL and read any mailbox). Compared without regard to case, as Cyrus
 * lower-cases authorization identities, and by local part too (isReservedName). In master-user
 * mode a name that holds the separator cannot be sent as one name. In replay mode the backend
 * checks the user's own password, so any name may go.
 */
export function assertedIdentityProblem(user: string, config: Pick<BackendConfig, 'loginMode' | 'proxyUser' | 'reservedUsers' | 'masterUserSeparator'>): string | null {
  if (config.loginMode === 'replay') return null;
  // Dovecot splits "user*master" at the separator: "alice*bob" would be read as user alice with
  // master user "bob*proxy" (a failed login at best).
  if (config.loginMode === 'master-user' && user.includes(config.masterUserSeparator)) return `the name holds backend.master_user_separator "${config.masterUserSeparator}", where Dovecot would split it`;
  const name = user.toLowerCase();
  if (config.proxyUser !== undefined && isReservedName(name, config.proxyUser.toLowerCase())) return `the name is the proxy account's (backend.proxy_user), which login_mode ${config.loginMode} never asserts`;
  if (reservedUsersOf(config).some((entry) => isReservedName(name, entry))) return `the name is in backend.reserved_users (a backend administrator), which login_mode ${config.loginMode} never asserts`;
  return null;
}

/** Backend CA files, read once each; a reload empties it (forgetBackendCaFiles) so that a changed file is read again. */
const caCache = new Map<string, Buffer>();

/** Forgets the backend CA files read so far: the next TLS connection to a slot reads its file again. */
export function forgetBackendCaFiles(): void {
  caCache.clear();
}
/**
 * The TLS options for a connection to `slot`. Throws a MailfrontError (kind backend-login: a
 * login failure, not an unreachable slot) when the CA file cannot be read; callers ask before
 * they connect or inside their own error handling, never from a socket's event handler, where a
 * throw would take the process down.
 */
function tlsOptionsFor(slot: Slot, config: BackendConfig): ConnectionOptions {
  let ca: Buffer | undefined;
  if (config.caFile !== undefined) {
    ca = caCache.get(config.caFile);
    if (ca === undefined) {
      try {
        ca = readFileSync(config.caFile);
      } catch (error) {
        throw new MailfrontError('BACKEND_CA_UNREADABLE', 'backend-login', `slot "${slot.name}": the backend CA file ${config.caFile} cannot be read (${(error as NodeJS.ErrnoException).code ?? String(error)})`);
      }
      caCache.set(config.caFile, ca);
    }
  }
  const name = config.tlsServername ?? slot.host;
  // The certificate is checked against `name` either way; SNI carries host names only (RFC 6066 §3).
  return { ...(ca ? { ca } : {}), ...(isIP(name) === 0 ? { servername: name } : {}), checkServerIdentity: (_host, cert) => checkServerIdentity(name, cert), minVersion: 'TLSv1.2', rejectUnauthorized: true };
}

/**
 * The error codes of a TLS failure that waiting will not fix: the certificate did not verify
 * (OpenSSL's X509_V_ERR_* names as Node reports them: CERT_HAS_EXPIRED, UNABLE_TO_GET_ISSUER_CERT,
 * DEPTH_ZERO_SELF_SIGNED_CERT, ERROR_IN_CERT_NOT_AFTER_FIELD, ...; UNSPECIFIED for those Node has
 * no name for: a SHA-1 signature "CA signature digest algorithm too weak", "EE certificate key too
 * weak", an unhandled critical extension), the name did not match (ERR_TLS_CERT_ALTNAME_INVALID),
 * or the two sides cannot agree (ERR_SSL_*, EPROTO: a wrong version, no shared cipher, plaintext
 * on a TLS port).
 */
const TLS_FAILURE_CODES = /^(ERR_TLS_|ERR_SSL_|ERR_OSSL_|CERT_|CRL_|UNABLE_TO_|DEPTH_ZERO_|SELF_SIGNED_|ERROR_IN_|HOSTNAME_MISMATCH$|INVALID_CA$|INVALID_PURPOSE$|PATH_LENGTH_EXCEEDED$|UNSPECIFIED$|EPROTO$)/;

/**
 * The codes of a connection that closed, was reset or went silent: during a TLS handshake too
 * they mean a backend that went away (a restart), not one whose TLS is wrong. Node reports a
 * close before the handshake completed as ECONNRESET ("Client network socket disconnected before
 * secure TLS connection was established"); OpenSSL 3 names a close without close_notify
 * ERR_SSL_UNEXPECTED_EOF_WHILE_READING.
 */
const OUTAGE_CODES = new Set(['ECONNRESET', 'EPIPE', 'ETIMEDOUT', 'ECONNREFUSED', 'ECONNABORTED', 'EHOSTUNREACH', 'ENETUNREACH', 'ENETDOWN', 'EHOSTDOWN', 'ERR_SSL_UNEXPECTED_EOF_WHILE_READING']);

/** The code of a backend connection mailfront could not open for want of its own resources (kind local-resources). */
export const LOCAL_RESOURCES_EXHAUSTED = 'LOCAL_RESOURCES_EXHAUSTED';

/**
 * The codes of a connection mailfront could not open for want of its own resources, with what
 * ran out: no slot is at fault, and every slot would fail alike. Holding the login for a failover
 * would only keep the client's descriptor longer; counting it against the store, or marking the
 * slot down, would blame a backend that was never reached.
 */
const LOCAL_RESOURCE_CODES: ReadonlyMap<string, string> = new Map([
  ['EMFILE', "mailfront's own open-files limit is reached (RLIMIT_NOFILE: LimitNOFILE, ulimit -n)"],
  ['ENFILE', "the system's open-files table is full (fs.file-max)"],
  ['EADDRNOTAVAIL', 'no local port is free for another connection (net.ipv4.ip_local_port_range)'],
]);

/**
 * A TLS failure (an untrusted or mismatched certificate, a failed negotiation) is not an
 * unreachable slot: waiting will not fix it, so it is a login failure, never retried. Decided by
 * the error's code, and by when it happened: a backend that closes or resets the connection
 * during the handshake (a restart) fails with ECONNRESET and a message that speaks of TLS
 * ("Client network socket disconnected before secure TLS connection was established"), and is an
 * outage like any other reset, held for failover.hold_ms; any other error during the handshake
 * (`duringTlsHandshake`: after the TCP connect, before secureConnect) is OpenSSL refusing the
 * peer, whatever code Node gives it, and so a TLS failure. A connection mailfront could not open
 * for want of descriptors or local ports (LOCAL_RESOURCE_CODES) is neither: `local-resources`.
 */
export function connectionFailureKind(error: NodeJS.ErrnoException, duringTlsHandshake = false): 'connect' | 'backend-login' | 'local-resources' {
  const code = error.code ?? '';
  if (LOCAL_RESOURCE_CODES.has(code)) return 'local-resources';
  if (OUTAGE_CODES.has(code)) return 'connect';
  return duringTlsHandshake || TLS_FAILURE_CODES.test(code) ? 'backend-login' : 'connect';
}

/** The code of a backend connection whose source address (backend.source_addresses) the host does not have (kind local-resources). */
export const SOURCE_ADDRESS_NOT_LOCAL = 'BACKEND_SOURCE_ADDRESS_NOT_LOCAL';

/** The code of a slot whose address is of a family none of the source addresses has (an IPv6 slot, IPv4 sources). */
export const SOURCE_FAMILY_MISSING = 'BACKEND_SOURCE_FAMILY_MISSING';

/** A source-address list split by family, and the index of each family's next address. */
interface SourceTurns {
  readonly byFamily: Readonly<Record<4 | 6, readonly string[]>>;
  readonly next: Record<4 | 6, number>;
}

/**
 * Where each source-address list stands in its turns. Keyed by the list, a frozen config's: the
 * profiles and stores that inherit it hold the same list and take its addresses in one turn; a
 * reload reads a new list, which starts at its first address (new connections only).
 */
const sourceTurns = new WeakMap<readonly string[], SourceTurns>();

/**
 * The address the next connection of `family` under `config` leaves from: its source addresses
 * of that family in turn (round-robin, as Dovecot's login_source_ips), so that connections to
 * one backend spread over the ports of each. Undefined when it has none (the kernel picks), null
 * when it has none of that family.
 */
export function nextSourceAddress(config: Pick<BackendConfig, 'sourceAddresses'>, family: 4 | 6): string | null | undefined {
  const list = config.sourceAddresses;
  if (list === undefined) return undefined;
  let turns = sourceTurns.get(list);
  if (turns === undefined) {
    turns = { byFamily: { 4: list.filter((a) => addressFamily(a) === 4), 6: list.filter((a) => addressFamily(a) === 6) }, next: { 4: 0, 6: 0 } };
    sourceTurns.set(list, turns);
  }
  const addresses = turns.byFamily[family];
  if (addresses.length === 0) return null;
  const index = turns.next[family];
  turns.next[family] = (index + 1) % addresses.length;
  return addresses[index]!;
}

/**
 * What a connection's failure says of its source address (backend.source_addresses), when it is
 * mailfront's own want of it rather than the slot's failure; undefined otherwise.
 * - EADDRNOTAVAIL at the bind: the host does not have the address.
 * - EADDRINUSE: no port of the address is free. Node binds the socket before it connects, and
 *   libuv binds with SO_REUSEADDR: with every port of ip_local_port_range taken, the kernel may
 *   hand out one in use instead of failing the bind, and the connect then fails with EADDRINUSE.
 *   Taken as the slot's failure (kind connect), it held every login for failover.hold_ms and
 *   marked healthy slots down.
 */
export function sourceAddressFailure(error: NodeJS.ErrnoException, source: string): { readonly code: string; readonly message: string } | undefined {
  if (error.code === 'EADDRNOTAVAIL' && error.syscall === 'bind') return { code: SOURCE_ADDRESS_NOT_LOCAL, message: `no connection could be opened: the source address ${source} (backend.source_addresses) is not an address of this host (EADDRNOTAVAIL); not a failure of the slot` };
  if (error.code === 'EADDRINUSE') return { code: LOCAL_RESOURCES_EXHAUSTED, message: `no connection could be opened: no local port is free on the source address ${source} (EADDRINUSE at the ${error.syscall ?? 'socket'}; each source address has the ports of net.ipv4.ip_local_port_range, for every backend together); not a failure of the slot` };
  return undefined;
}

/** The families `config`'s source addresses have, in words ("IPv4", "IPv4 and IPv6"). */
function sourceFamilies(config: Pick<BackendConfig, 'sourceAddresses'>): string {
  const families = [4, 6].filter((f) => config.sourceAddresses?.some((a) => addressFamily(a) === f));
  return families.map((f) => `IPv${f}`).join(' and ');
}

/** The source-address lists of `config` (backend and profiles), by config path. */
export function configSourceAddresses(config: Pick<Config, 'backend' | 'backendProfiles'>): ReadonlyArray<readonly [path: string, addresses: readonly string[] | undefined]> {
  return [['backend.source_addresses', config.backend.sourceAddresses], ...[...config.backendProfiles].map(([name, profile]) => [`backend_profiles.${name}.source_addresses`, profile.sourceAddresses] as const)];
}

/**
 * The source addresses of `named` the host does not have (each bound once, on port 0, and let go
 * of): a connection from one would fail at once (EADDRNOTAVAIL). An address asked about already
 * (inherited under another path; in `checked`, addresses asked about before) is not asked again.
 * For start, check-config and reload, before anything is set up.
 */
export async function unusableSourceAddresses(named: ReadonlyArray<readonly [path: string, addresses: readonly string[] | undefined]>, checked = new Set<string>()): Promise<ConfigIssue[]> {
  const issues: ConfigIssue[] = [];
  for (const [path, addresses] of named) {
    for (const [i, address] of (addresses ?? []).entries()) {
      if (checked.has(address)) continue;
      checked.add(address);
      const problem = await bindProblem(address);
      if (problem !== null) issues.push({ path: `${path}[${i}]`, expected: `an address of this host (the kernel would not bind a socket to it: ${problem})`, found: JSON.stringify(address) });
    }
  }
  return issues;
}

/**
 * TCP keepalive on every backend connection, after this long without traffic. A backend host that
 * dies (power, a kernel panic, a cut link) sends no FIN or RST: a spliced session whose client
 * sits in IDLE, sending nothing for up to 29 minutes, would otherwise wait for its idle timeout
 * (31 min) to see it. libuv (1.46, Node 20.20's) then probes every second, ten times (TCP_KEEPINTVL
 * 1, TCP_KEEPCNT 10), so the connection fails (ETIMEDOUT) and the session ends about 70 s after the
 * host went silent; its client reconnects, to the current master. An older libuv leaves interval
 * and count to the kernel (Linux: 75 s, 9). A live backend answers each probe, unseen above TCP.
 */
const BACKEND_KEEPALIVE_IDLE_MS = 60_000;

/** Rejects when the signal fires, destroying `socket`. */
function onAbort(signal: Cancellation, socket: Socket, reject: (e: unknown) => void, what: string): () => void {
  const listener = (): void => {
    socket.destroy();
    reject(new MailfrontError('ABORTED', 'aborted', `the session ended during ${what}`));
  };
  signal.addEventListener('abort', listener, { once: true });
  return () => signal.removeEventListener('abort', listener);
}

/**
 * Opens a TCP connection to `slot` within the configured deadline, from the next of the source
 * addresses of the slot's family when the config has them (a slot named by host name is looked
 * up first, and dialled at the first address of a family they have); writes `proxyHeader` (PROXY
 * protocol) first when given, then does the TLS handshake for implicit TLS.
 */
export function dialSlot(slot: Slot, protocol: Protocol, config: BackendConfig, signal: Cancellation, proxyHeader: Buffer | null = null): Promise<Socket> {
  const port = slotPort(slot, protocol, config.tls);
  let tlsOptions: ConnectionOptions | undefined;
  try {
    if (config.tls === 'implicit') tlsOptions = tlsOptionsFor(slot, config);
  } catch (error) {
    return Promise.reject(error);
  }
  return new Promise<Socket>((resolve, reject) => {
    let socket: Socket | undefined;
    let settled = false;
    // Set once the TCP connection is up and the TLS handshake runs over it.
    let handshaking = false;
    // The source address the connection leaves from (backend.source_addresses), named in its errors.
    let source: string | undefined;
    const fail = (code: string, message: string, cause?: NodeJS.ErrnoException, kind: FailureKind = cause ? connectionFailureKind(cause, handshaking) : 'connect'): void => {
      if (settled) return;
      settled = true;
      cleanup();
      socket?.destroy();
      reject(new MailfrontError(code, kind, `slot "${slot.name}" (${slot.host}:${port}${source === undefined ? '' : ` from ${source}`}): ${message}`, cause === undefined ? undefined : { cause }));
    };
    const timer = setTimeout(() => fail('BACKEND_CONNECT_TIMEOUT', `no connection within ${config.connectTimeoutMs} ms`), config.connectTimeoutMs);
    const onError = (error: NodeJS.ErrnoException): void => {
      const sourceFailure = source === undefined ? undefined : sourceAddressFailure(error, source);
      if (sourceFailure !== undefined) return fail(sourceFailure.code, sourceFailure.message, error, 'local-resources');
      const local = LOCAL_RESOURCE_CODES.get(error.code ?? '');
      if (local === undefined) fail('BACKEND_CONNECT_FAILED', error.message, error);
      else fail(LOCAL_RESOURCES_EXHAUSTED, `no connection could be opened: ${error.code}, ${local}; not a failure of the slot`, error);
    };
    const onAbortSignal = (): void => {
      if (settled) return;
      settled = true;
      cleanup();
      socket?.destroy();
      reject(new MailfrontError('ABORTED', 'aborted', 'the session ended during a backend connect'));
    };
    function cleanup(): void {
      clearTimeout(timer);
      signal.removeEventListener('abort', onAbortSignal);
      socket?.off('error', onError);
    }
    const open = (host: string, localAddress: string | undefined): void => {
      source = localAddress;
      // Implicit TLS and STARTTLS run over this socket, so the keepalive covers them too.
      const plain = netConnect(markedSocketOptions({ host, port, ...(localAddress === undefined ? {} : { localAddress }), noDelay: true, keepAlive: true, keepAliveInitialDelay: BACKEND_KEEPALIVE_IDLE_MS }));
      socket = plain;
      plain.once('error', onError);
      plain.once('connect', () => {
        if (proxyHeader !== null) writeNow(plain, proxyHeader);
        if (tlsOptions === undefined) return ready(plain);
        plain.off('error', onError);
        handshaking = true;
        const secure = clientTlsSocket(plain, tlsOptions);
        socket = secure;
        secure.once('error', onError);
        secure.once('secureConnect', () => ready(secure));
      });
    };
    const ready = (connected: Socket): void => {
      if (settled) return;
      settled = true;
      cleanup();
      resolve(connected);
    };
    if (signal.aborted) return onAbortSignal();
    signal.addEventListener('abort', onAbortSignal, { once: true });
    if (config.sourceAddresses === undefined) return open(slot.host, undefined);
    const family = addressFamily(slot.host);
    const missing = `backend.source_addresses of its store holds ${sourceFamilies(config)} addresses only`;
    if (family !== undefined) {
      // The store map refuses such a slot (sourceFamilyProblem); a map checked before would not.
      const from = nextSourceAddress(config, family);
      if (from === null) return fail(SOURCE_FAMILY_MISSING, `no connection from an IPv${family} address: ${missing}`, undefined, 'config');
      return open(slot.host, from ?? undefined);
    }
    // A name: its addresses are asked for here, within the connect deadline, so that the source
    // address can be of the family dialled (Node binds before it connects, to one family).
    lookup(slot.host, { all: true }, (error, addresses) => {
      if (settled) return;
      if (error) return onError(error);
      const usable = addresses.find((a) => (a.family === 4 || a.family === 6) && config.sourceAddresses?.some((s) => addressFamily(s) === a.family));
      if (usable === undefined) return fail(SOURCE_FAMILY_MISSING, `no connection from its addresses (${addresses.map((a) => a.address).join(', ') || 'none'}): ${missing}`, undefined, 'connect');
      open(usable.address, nextSourceAddress(config, usable.family as 4 | 6) ?? undefined);
    });
  });
}

/** The code of a backend connection that closed (or was reset) after the login command went out. */
export const CLOSED_AFTER_LOGIN = 'BACKEND_CLOSED_AFTER_LOGIN';

/**
 * Drives `machine` over `socket` until it logs in or fails, within `config.loginTimeoutMs`.
 * On success the socket is paused, has no listeners of ours left, and may have been replaced by
 * a TLS socket (STARTTLS). On failure the socket is destroyed.
 */
export function loginToBackend(initial: Socket, slot: Slot, machine: BackendLoginMachine, config: BackendConfig, signal: Cancellation): Promise<BackendSession> {
  return new Promise<BackendSession>((resolve, reject) => {
    let socket: Socket = initial;
    let finished = false;
    // Between STARTTLS's handshake start and its secureConnect.
    let handshaking = false;
    const timer = setTimeout(() => fail(new MailfrontError('BACKEND_LOGIN_TIMEOUT', 'backend-login', `slot "${slot.name}": no login within ${config.loginTimeoutMs} ms (state ${machine.state})`)), config.loginTimeoutMs);
    const removeAbort = onAbort(signal, initial, (e) => fail(e), 'the backend login');

    function detach(): void {
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('close', onClose);
    }
    function fail(error: unknown): void {
      if (finished) return;
      finished = true;
      clearTimeout(timer);
      removeAbort();
      detach();
      socket.destroy();
      reject(error);
    }
    // A close or reset before the login went out is an unreachable slot (a restart, a crash),
    // worth waiting for. After it, it is either a crash at that moment (the failover or the
    // restart is worth waiting for too) or the backend's answer to this login (a command it will
    // not take), which would be the same on every attempt: BACKEND_CLOSED_AFTER_LOGIN, held like
    // an unreachable slot, and the session gives it one more attempt only (loginToCurrentMaster).
    function onError(error: NodeJS.ErrnoException): void {
      if (machine.loginSent) fail(new MailfrontError(CLOSED_AFTER_LOGIN, 'connect', `slot "${slot.name}": ${error.message} in answer to the login (state ${machine.state})`, { cause: error }));
      else fail(new MailfrontError('BACKEND_CONNECTION_ERROR', connectionFailureKind(error, handshaking), `slot "${slot.name}": ${error.message} (state ${machine.state})`, { cause: error }));
    }
    function onClose(): void {
      if (machine.loginSent) fail(new MailfrontError(CLOSED_AFTER_LOGIN, 'connect', `slot "${slot.name}" closed the connection in answer to the login (state ${machine.state})`));
      else fail(new MailfrontError('BACKEND_CLOSED', 'connect', `slot "${slot.name}" closed the connection during login (state ${machine.state})`));
    }
    function onData(chunk: Buffer): void {
      if (!finished) perform(machine.receive(chunk));
    }
    /** onData for reads through the shared buffer (net/direct-io.ts); the machines copy what they keep. */
    function onDirectRead(length: number, buffer: Buffer): boolean {
      onData(buffer.subarray(0, length));
      return true;
    }
    function attach(s: Socket): void {
      // With STARTTLS ahead the socket's stream must stay as it is: then the login reads through 'data'.
      if (config.tls !== 'none' || !readDirect(s, onDirectRead)) s.on('data', onData);
      s.on('error', onError);
      s.on('close', onClose);
    }
    function perform(actions: ReturnType<BackendLoginMachine['receive']>): void {
      // Consecutive sends (e.g. CAPABILITY, ID, LOGIN) leave in one write: one syscall, one packet.
      let pending: Uint8Array[] = [];
      const flush = (): void => {
        if (pending.length === 1) writeNow(socket, pending[0]!);
        else if (pending.length > 1) writeNow(socket, Buffer.concat(pending));
        pending = [];
      };
      for (const action of actions) {
        if (finished) return;
        if (action.type !== 'send') flush();
        switch (action.type) {
          case 'send':
            pending.push(action.data);
            break;
          case 'starttls': {
            let tlsOptions: ConnectionOptions;
            try {
              tlsOptions = tlsOptionsFor(slot, config);
            } catch (error) {
              fail(error);
              return;
            }
            detach();
            socket.pause();
            const plain = socket;
            const secure: TLSSocket = clientTlsSocket(plain, tlsOptions);
            socket = secure;
            handshaking = true;
            attach(secure);
            // Data listeners are attached after the handshake completes, so bytes buffered
            // before it (a STARTTLS injection) never reach the machine.
            secure.off('data', onData);
            secure.once('secureConnect', () => {
              handshaking = false;
              if (finished) return;
              secure.on('data', onData);
              perform(machine.tlsStarted());
            });
            return;
          }
          case 'done':
            finished = true;
            clearTimeout(timer);
            removeAbort();
            detach();
            socket.pause();
            resolve({ socket, capabilities: action.capabilities, leftover: action.leftover });
            return;
          case 'fail': {
            // A backend that refuses a login the directory accepted is a fault of the fleet, not of
            // the user: the client gets a temporary failure (kind backend-login), never "wrong password".
            // But for the user's own doing: a locked mailbox, a POP3 poll too soon, and the
            // backend's limit of the user's connections (Dovecot's mail_max_userip_connections,
            // kind limit, answered as mailfront's own max_sessions_per_user: no fleet failure).
            const [code, kind] = action.refusal === 'in-use' ? (['BACKEND_MAILBOX_IN_USE', 'in-use'] as const) : action.refusal === 'login-delay' ? (['BACKEND_LOGIN_DELAY', 'login-delay'] as const) : action.refusal === 'limit' ? (['BACKEND_USER_LIMIT', 'limit'] as const) : action.refusal === 'auth-failed' ? (['BACKEND_REFUSED_LOGIN', 'backend-login'] as const) : (['BACKEND_UNAVAILABLE', 'backend-login'] as const);
            fail(new MailfrontError(code, kind, `slot "${slot.name}": ${action.detail} (state ${machine.state})`, action.alerts !== undefined ? { alerts: action.alerts } : undefined));
            return;
          }
          default: {
            const exhaustive: never = action;
            throw new Error(`unknown backend action ${JSON.stringify(exhaustive)}`);
          }
        }
      }
      flush();
    }
    attach(socket);
    socket.resume();
  });
}

/** Bytes a probe read past the line it wanted, for its next read. */
interface ProbeInput {
  rest: Buffer;
}

/** Reads the next line a slot sends; resolves with it (without CRLF). Bytes after it stay in `input`. */
function readLine(socket: Socket, signal: Cancellation, input: ProbeInput = { rest: Buffer.alloc(0) }): Promise<string> {
  return new Promise((resolve, reject) => {
    let buffered = input.rest;
    const done = (error: Error | null, line?: string): void => {
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('close', onClose);
      signal.removeEventListener('abort', onAbort);
      if (error) reject(error);
      else resolve(line ?? '');
    };
    const take = (): boolean => {
      const lf = buffered.indexOf(0x0a);
      if (lf >= 0) {
        input.rest = buffered.subarray(lf + 1);
        done(null, buffered.subarray(0, lf).toString('latin1').replace(/\r$/, ''));
        return true;
      }
      if (buffered.length > 4096) {
        done(new Error('line longer than 4096 bytes'));
        return true;
      }
      return false;
    };
    const onData = (chunk: Buffer): void => {
      buffered = Buffer.concat([buffered, chunk]);
      take();
    };
    const onError = (error: Error): void => done(error);
    const onClose = (): void => done(new Error('closed before the line'));
    const onAbort = (): void => done(new Error('no answer in time'));
    socket.on('data', onData);
    socket.once('error', onError);
    socket.once('close', onClose);
    signal.addEventListener('abort', onAbort, { once: true });
    if (signal.aborted) onAbort();
    else take();
  });
}

/** At most this many lines of a greeting or an answer a probe reads before it gives up on the slot. */
const PROBE_MAX_LINES = 64;

/** A ManageSieve response's last line (RFC 5804 §1.2: OK, NO or BYE). */
function isSieveStatus(line: string): boolean {
  return /^(OK|NO|BYE)\b/i.test(line);
}

/** Reads lines until one that `ends` says is the last; resolves with it. */
async function readUntil(socket: Socket, signal: Cancellation, input: ProbeInput, ends: (line: string) => boolean, what: string): Promise<string> {
  for (let i = 0; i < PROBE_MAX_LINES; i++) {
    const line = await readLine(socket, signal, input);
    if (ends(line)) return line;
  }
  throw new Error(`no end of ${what} within ${PROBE_MAX_LINES} lines`);
}

/**
 * The probe's STARTTLS on a slot whose logins use it: the protocol's command (IMAP STARTTLS,
 * POP3 STLS, ManageSieve STARTTLS) after the greeting, then a handshake verified as a login's
 * is. A slot whose certificate expired or names another host fails every login; without this,
 * a probe that only read the greeting showed it up.
 */
async function probeStartTls(socket: Socket, slot: Slot, protocol: Protocol, config: BackendConfig, signal: Cancellation, input: ProbeInput): Promise<void> {
  let answer: string;
  switch (protocol) {
    case 'imap':
      writeNow(socket, Buffer.from('mfprobe STARTTLS\r\n'));
      answer = await readUntil(socket, signal, input, (line) => /^(mfprobe |\* BYE\b)/i.test(line), 'the STARTTLS answer');
      if (!/^mfprobe OK\b/i.test(answer)) throw new Error(`STARTTLS refused: ${answer.slice(0, 80)}`);
      break;
    case 'pop3':
      writeNow(socket, Buffer.from('STLS\r\n'));
      answer = await readLine(socket, signal, input);
      if (!/^\+OK\b/i.test(answer)) throw new Error(`STLS refused: ${answer.slice(0, 80)}`);
      break;
    case 'managesieve': {
      writeNow(socket, Buffer.from('STARTTLS\r\n'));
      answer = await readUntil(socket, signal, input, isSieveStatus, 'the STARTTLS answer');
      if (!/^OK\b/i.test(answer)) throw new Error(`STARTTLS refused: ${answer.slice(0, 80)}`);
      break;
    }
  }
  const tlsOptions = tlsOptionsFor(slot, config);
  const secure = clientTlsSocket(socket, tlsOptions);
  try {
    await new Promise<void>((resolve, reject) => {
      const onAbort = (): void => reject(new Error('no TLS handshake in time'));
      if (signal.aborted) return onAbort();
      signal.addEventListener('abort', onAbort, { once: true });
      secure.once('secureConnect', () => {
        signal.removeEventListener('abort', onAbort);
        resolve();
      });
      // Kept (not once) until the socket is destroyed: a second error must not go unhandled.
      secure.on('error', (error) => {
        signal.removeEventListener('abort', onAbort);
        reject(new Error(`STARTTLS handshake failed: ${error.message}`, { cause: error }));
      });
    });
  } finally {
    secure.destroy();
  }
}

/**
 * Probes a slot for health: connect and read a positive greeting (and on a slot whose logins use
 * STARTTLS, do it and its verified handshake), or, given a login machine for a probe account,
 * log in. Always closes the connection.
 */
export async function probeSlot(slot: Slot, protocol: Protocol, config: BackendConfig, signal: Cancellation, login?: BackendLoginMachine, proxyHeader: Buffer | null = null): Promise<void> {
  const socket = await dialSlot(slot, protocol, config, signal, proxyHeader);
  // Between two reads no listener of readLine's is attached: an error then must not go unhandled
  // (the next read, or the close, reports the failure).
  socket.on('error', () => undefined);
  try {
    if (login) {
      const session = await loginToBackend(socket, slot, login, config, signal);
      session.socket.destroy();
      return;
    }
    const input: ProbeInput = { rest: Buffer.alloc(0) };
    const greeting = await readLine(socket, signal, input);
    if (!/^(\* OK|\+OK|"IMPLEMENTATION")/i.test(greeting)) throw new Error(`unexpected greeting: ${greeting.slice(0, 80)}`);
    if (config.tls !== 'starttls') return;
    // ManageSieve's greeting is its capability list, ended by OK.
    if (protocol === 'managesieve') {
      const end = await readUntil(socket, signal, input, isSieveStatus, 'the greeting');
      if (!/^OK\b/i.test(end)) throw new Error(`unexpected greeting: ${end.slice(0, 80)}`);
    }
    await probeStartTls(socket, slot, protocol, config, signal, input);
  } finally {
    socket.destroy();
  }
}
