/**
 * The one orchestrator of a client session: greeting, pre-auth dialogue (through the protocol
 * adapter), authentication, routing to the store's current master, backend login, splice and
 * a single teardown. Every failure is turned into wire text, log level and reason here, once.
 */
import { randomBytes } from 'node:crypto';
import type { Socket } from 'node:net';
import { TLSSocket } from 'node:tls';
import type { SecureContext, TlsOptions } from 'node:tls';
import { domainToASCII, domainToUnicode } from 'node:url';
import type { Directory, DirectoryUser, PasswordWarning } from '../auth/directory.js';
import type { LoginAttempt } from '../auth/throttle.js';
import { DEFAULT_PASSWORD_ALERTS } from '../auth/password-policy.js';
import type { PasswordAlert, PasswordAlerts } from '../auth/password-policy.js';
import { isIP } from 'node:net';
import type { EvictedPhase, LoginResult, Metrics, SessionMetrics } from '../metrics.js';
import { authFailureReason, backendFailureResult } from '../metrics.js';
import type { CidrSet } from '../net/cidr.js';
import { readDirect, writeNow } from '../net/direct-io.js';
import { endOnLateTlsError } from '../net/tls-late-error.js';
import { serverTlsSocket } from '../net/tls-sockets.js';
import type { Throttle } from '../auth/throttle.js';
import type { LeaveAddressGate, LeaveGate, LoginGate } from '../auth/login-gate.js';
import type { ConnectionLease, ConnectionLimiter } from '../server/connection-limits.js';
import { backendProxyHeader, plainAddress, proxySignatureSoFar } from '../server/proxy-protocol.js';
import type { ConnectionEndpoints } from '../server/proxy-protocol.js';
import { DIRECTORY_CLOSED, FORBIDDEN_IN_USER, WrongPasswordError, countedUser, entryLoginName, findForLogin, normalizeUser } from '../auth/directory.js';
import { CLOSED_AFTER_LOGIN, IDENTITY_REFUSED, assertedIdentityProblem, backendFor, dialSlot, loginToBackend } from '../backend/connect.js';
import type { BackendSession } from '../backend/connect.js';
import { loginAttributeOf } from '../config/schema.js';
import type { Config, ListenerConfig } from '../config/schema.js';
import { MailfrontError, asMailfrontError, isRetryable } from '../errors.js';
import type { FailureKind } from '../errors.js';
import type { Logger } from '../log.js';
import { SplicedSessionEntry } from '../proxy/registry.js';
import type { BackendAttempt, SessionRegistry } from '../proxy/registry.js';
import { splice } from '../proxy/splice.js';
import type { CommandGuard } from '../proxy/command-guard.js';
import type { Splice, SpliceEndReason } from '../proxy/splice.js';
import type { OAuthVerifier } from '../auth/oauth.js';
import type { BearerCredentials, Credentials, LoginRefusal, PreauthAction, PreauthCloseReason, PreauthMachine, ProtocolAdapter } from '../protocol/types.js';
import { sameServer } from '../routing/storemap.js';
import type { Slot, StoreMap } from '../routing/storemap.js';
import { Canceller, NEVER_CANCELLED, untilCancelled, type Cancellation } from '../cancel.js';
import { destroyAfterGrace } from '../net/close-grace.js';
// The per-address refusal of an address a trusted webmail forwarded is worded as the listener words it at accept.
import { ADDRESS_LIMIT_TEXT, SHUTTING_DOWN_PHRASE, TOTAL_LIMIT_TEXT } from '../protocol/rules.js';

/** The phases of a session, in order. */
export type SessionPhase = 'greeting' | 'preauth' | 'authenticating' | 'backend-login' | 'spliced' | 'closing';

/** Why a session ended (a stable word for logs and metrics). */
export type SessionEndReason = PreauthCloseReason | SpliceEndReason | 'client-closed-preauth' | 'client-error-preauth' | 'tls-failed';

/** What a session needs from the process; read at the moment of use so reloads apply to new logins. */
export interface SessionContext {
  readonly config: () => Config;
  readonly storeMap: () => StoreMap;
  readonly directory: () => Directory;
  readonly metrics: Metrics;
  /** Clients whose ID x-originating-ip is believed (webmail servers). */
  readonly trustedNetworks: () => CidrSet;
  readonly throttle: () => Throttle;
  /** The verifier of OAuth bearer tokens, when oauth2 is configured (OAUTHBEARER and XOAUTH2 are offered only then). */
  readonly oauth?: () => OAuthVerifier | undefined;
  /** A few password checks of one user at a time, so that the throttle sees each failure before the next check (auth/login-gate.ts). */
  readonly loginGate: LoginGate;
  readonly limiter: ConnectionLimiter;
  readonly registry: SessionRegistry;
  readonly log: Logger;
  /** The server certificate for STARTTLS, when the listener has one (with several, the default). */
  readonly secureContext: () => SecureContext | undefined;
  /** Picks among the listener's certificates by the client's SNI server name, when it has several (server/tls-config.ts). */
  readonly sniCallback?: () => TlsOptions['SNICallback'];
  /** Whom this instance told of an expiring password lately (directory.password_policy's alerts); absent: nobody is told. */
  readonly passwordAlerts?: PasswordAlerts;
  /** Called once per session end, with the session (for the listener's set and counters kept by the server). */
  readonly onEnd?: (reason: SessionEndReason, session: Session) => void;
}

/**
 * Human sentences for temporary failures; never name hosts or users (those go to the log). Each
 * says "wait": fetchmail takes a POP3 -ERR to a login as temporary only by its words ("wait",
 * "lock", or "service" with "unavailable"), never by its code, and reads any other as a wrong password.
 */
const UNAVAILABLE_TEXT: Partial<Readonly<Record<FailureKind, string>>> = {
  'auth-tempfail': 'Authentication service temporarily unavailable, please wait and try again later.',
  'no-route': 'Your mailbox is temporarily unavailable, please wait and try again later.',
  connect: 'Your mail server is temporarily unavailable, please wait and try again later.',
  'backend-login': 'Your mail server is temporarily unavailable, please wait and try again later.',
  internal: 'Internal error, please wait and try again later.',
};

/** What a login the pre-auth deadline cut short was waiting on, by the failure kind it is counted as (cutByDeadline()). */
const WAITED_ON: Partial<Readonly<Record<FailureKind, string>>> = {
  'auth-tempfail': 'the directory',
  connect: "a connection to the store's master",
  'backend-login': "the store's master to log it in",
};

/** No bytes yet. */
const EMPTY = Buffer.alloc(0);

/** What a kicked client is told. */
const KICKED_TEXT = 'Disconnected by an administrator';

/**
 * A master login refused, the password right: the staff member is no master
 * (directory.master_user_filter), the target is not found, or the target's entry names no one
 * store (another staff member's, say: staff entries need none).
 */
const MASTER_NOT_ALLOWED = 'MASTER_NOT_ALLOWED';
const MASTER_TARGET_UNKNOWN = 'MASTER_TARGET_UNKNOWN';
const MASTER_TARGET_WITHOUT_MAILBOX = 'MASTER_TARGET_WITHOUT_MAILBOX';

/** A master login to a store that logs in in replay mode, and what its client is told (a master: it may know why). */
const MASTER_NEEDS_TRUST_MODE = 'MASTER_USER_NEEDS_TRUST_MODE';
const MASTER_NEEDS_TRUST_MODE_TEXT = "Logging in to another user's mailbox is not available for this mailbox's server.";

/** A bearer-token login to a store in replay mode, and what its client is told: a token is no password to replay. */
const OAUTH_NEEDS_TRUST_MODE = 'OAUTH_NEEDS_TRUST_MODE';
const OAUTH_NEEDS_TRUST_MODE_TEXT = "OAuth login is not available for this mailbox's server, please log in with your password.";

/** The users a master login names: the staff member, whose password is checked, and the target, whose mailbox it opens. */
export interface MasterLoginNames {
  /** Normalised; null when the name is no user name (the login is refused as INVALID_USERNAME). */
  readonly staff: string | null;
  readonly target: string | null;
}

/**
 * Whether `credentials` name another user's mailbox than their own (a master login, with
 * directory.master_user_filter set), and whose: a SASL authzid other than the authcid (the
 * authcid the staff member, taken whole), or, without an authzid, a name `target<separator>staff`
 * split at the first separator, as Dovecot splits at auth_master_user_separator. Each side is
 * normalised on its own (usernames): the domain of `alice@example.com*helpdesk` is alice's.
 * Undefined for an ordinary login, and for every login while the filter is not set (an authzid
 * other than the user is then refused, and a name holding the separator is an ordinary name).
 */
export function masterLoginOf(credentials: Pick<Credentials, 'user' | 'authzid'>, directory: Pick<Config['directory'], 'masterUserFilter' | 'masterUserSeparator'>, usernames: Config['usernames']): MasterLoginNames | undefined {
  if (directory.masterUserFilter === undefined) return undefined;
  if (credentials.authzid !== undefined) {
    const staff = normalizeUser(credentials.user, usernames);
    const target = normalizeUser(credentials.authzid, usernames);
    // RFC 4616: an authzid that is the authcid asks for nothing more than the user's own mailbox.
    return target !== null && target === staff ? undefined : { staff, target };
  }
  const separator = directory.masterUserSeparator;
  const at = separator === null || separator === undefined ? -1 : credentials.user.indexOf(separator);
  if (at < 0) return undefined;
  return { staff: normalizeUser(credentials.user.slice(at + 1), usernames), target: normalizeUser(credentials.user.slice(0, at), usernames) };
}

/** What a client refused by a limit (throttle, sessions per user) is told; names no counts, says "wait" (UNAVAILABLE_TEXT). */
const LIMIT_TEXT = 'Too many login attempts or sessions, please wait and try again later.';

/** What the throttle is asked before a login: its answer says how many failures the address has left (the login gate's turns). */
const ADDRESS_BUDGET = Object.freeze({ addressBudget: true });

/** The code of that refusal. */
const ADDRESS_CONNECTION_LIMIT = 'ADDRESS_CONNECTION_LIMIT';

/** How much of a value a client sent with ID the log shows. */
const LOGGED_CLAIM_CHARS = 64;

/**
 * The characters normalizeUser refuses in a login name (FORBIDDEN_IN_USER): controls (C1's NEL
 * among them), format characters (bidi controls), lone surrogates, line and paragraph separators,
 * joiners, variation selectors and U+FFFD. A log viewer may break a line at them or show the text
 * after them reversed, so a client's own words never reach the log with them.
 */
const UNLOGGABLE = new RegExp(FORBIDDEN_IN_USER.source, 'gu');

/** A value a client sent (an ID claim) as the log shows it: its first 64 characters, the unloggable ones replaced by U+FFFD. */
export function loggableClaim(value: string): string {
  const chars = Array.from(value);
  const kept = chars.length > LOGGED_CLAIM_CHARS ? chars.slice(0, LOGGED_CLAIM_CHARS).join('') : value;
  return kept.replace(UNLOGGABLE, '\ufffd');
}

/**
 * Whether normalizeUser() would make a token's user claim another name in more than letter case
 * and the domain (usernames.domain, local_domains): trimmed, NFKC (fullwidth and other
 * compatibility forms), spaces folded. The IdP tells " alice " and "ａｌｉｃｅ" from alice, so they
 * may be other people's identities there; normalised, they would open alice's mailbox.
 */
function claimChangedByNormalising(claim: string): boolean {
  if (claim.normalize('NFKC') !== claim) return true;
  const at = claim.lastIndexOf('@');
  // normalizeUser trims the whole name and each side of its "@", and folds runs of spaces (and any other space) into one U+0020.
  if ((at < 0 ? [claim] : [claim.slice(0, at), claim.slice(at + 1)]).some((part) => part !== part.trim() || /[^\S ]| {2}/u.test(part))) return true;
  return at >= 0 && domainMappedOtherwise(claim.slice(at + 1));
}

/**
 * Whether IDNA's mapping (UTS #46, domainToASCII(), which normalizeUser() compares domains
 * with) makes `domain` another one in more than letter case: "example。com" (U+3002, an
 * ideographic full stop, a dot there) or a label holding a character the mapping drops (a soft
 * hyphen). An ASCII label must map to itself; a label outside ASCII must come back from its
 * ASCII form ("müller" from "xn--mller-kva") as it was.
 */
function domainMappedOtherwise(domain: string): boolean {
  const labels = domain.toLowerCase().split('.');
  const mapped = domainToASCII(domain).split('.');
  if (mapped.length !== labels.length) return true;
  return labels.some((label, i) => (/^[\x00-\x7f]*$/.test(label) ? mapped[i] !== label : domainToUnicode(mapped[i] ?? '') !== label));
}

/**
 * The user fields of a log line: `user`, the name the login goes on with (the directory entry's
 * own, directory.login_attribute, once the directory has answered), and `typedUser`, the name
 * the client logged in with (normalised), when it is another (an alias a user filter matched).
 */
function userFields(user: string | undefined, typed: string | undefined): { user?: string; typedUser?: string } {
  if (user === undefined) return {};
  return typed !== undefined && typed !== user ? { user, typedUser: typed } : { user };
}

/** The name a login asserts to the backend, and where it came from. */
interface LoginIdentity {
  /** The entry's own name (directory.login_attribute), or the name typed when the entry has none. */
  readonly name: string;
  /** False when the entry has no name of its own: only a replay login goes on (with the name typed). */
  readonly fromEntry: boolean;
  /** The entry, and the attribute its name was read from (none: user_filter names no one attribute): for the refusal of a login without one. */
  readonly dn: string;
  readonly attribute: string | undefined;
  /** Values of the attribute that are no valid user name (entryLoginName()). */
  readonly unusable: number;
}

/** Maps a failure kind to what the client is told; decided here and nowhere else. */
function refusalFor(kind: FailureKind): LoginRefusal {
  switch (kind) {
    case 'auth-failed':
      return 'auth-failed';
    // The user authenticated, but is not let in under a name the backend would take as its
    // administrator or the proxy account (RFC 5530 AUTHORIZATIONFAILED).
    case 'not-authorized':
      return 'not-authorized';
    case 'in-use':
      return 'in-use';
    case 'login-delay':
      return 'login-delay';
    case 'limit':
      return 'limit';
    // The password was right, but the directory's password policy says it expired, or must be
    // changed after a reset (RFC 5530 EXPIRED): changed elsewhere, not typed again.
    case 'expired':
      return 'expired';
    // The user's store is in maintenance, or the directory holds the user (a mailbox being
    // moved): told so in the store map's or the directory's words (MailfrontError.clientText).
    case 'maintenance':
    case 'held':
    case 'auth-tempfail':
    case 'no-route':
    case 'connect':
    case 'local-resources':
    case 'backend-login':
    case 'config':
    case 'client-protocol':
    case 'aborted':
    case 'internal':
      return 'unavailable';
  }
}

/** Stands in for the pre-auth machine once a session is spliced: nothing more to parse. */
const SPLICED: PreauthMachine = {
  loginPending: false,
  inputFull: false,
  greeting: () => [],
  receive: () => [],
  tlsStarted: () => [],
  loginSucceeded: () => {
    throw new Error('the session is spliced already');
  },
  loginFailed: () => [],
  timedOut: () => [],
  shuttingDown: () => [],
  evicted: () => [],
};

let sessionCounter = 0;
const sessionPrefix = randomBytes(3).toString('hex');
/** A short id unique within the process and unlikely to repeat across processes. */
function newSessionId(): string {
  // Never wraps: a session spliced for days must not share its id with a new one (the registry
  // is keyed by it). Six hex digits until the 16.7 millionth session, more after.
  sessionCounter++;
  return `${sessionPrefix}${sessionCounter.toString(16).padStart(6, '0')}`;
}

/** After a wait: a login whose session was cancelled meanwhile (deadline, hang-up, shutdown) goes no further. */
function throwIfCancelled(cancellation: Cancellation, why: string): void {
  if (cancellation.aborted) throw new MailfrontError('ABORTED', 'aborted', why);
}

function delay(ms: number, signal: Cancellation): Promise<void> {
  return new Promise((resolve) => {
    if (ms <= 0 || signal.aborted) return resolve();
    const timer = setTimeout(done, ms);
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    }
    signal.addEventListener('abort', done, { once: true });
  });
}

/** Runs one client session on `socket` until it ends. Never rejects. */
export class Session {
  readonly id = newSessionId();
  /** Its place in its listener's set of sessions (LiveSet), -1 before and after. */
  listenerPlace = -1;
  private phase: SessionPhase = 'greeting';
  /** The client's socket as last set: read through `socket`. */
  private clientSocket: Socket;
  /**
   * From a STARTTLS until the client's first bytes (its ClientHello) come: makes the TLS socket
   * (startTls()).
   */
  private wrapOnHello: (() => void) | undefined;
  private machine: PreauthMachine;
  /** Cancels a login in progress; made at the first login and let go once spliced. */
  private canceller: Canceller | undefined;
  private readonly log: Logger;
  /** When the connection was accepted (before any PROXY header or TLS handshake): the time of day (ms since the epoch), for the registry. */
  private readonly startedAt: number;
  /**
   * The same moment on the monotonic clock (performance.now()), from which the pre-auth deadline
   * and the session's duration run: a step of the wall clock (NTP) changes neither.
   */
  private readonly acceptedAt: number;
  private clientAddress: string;
  private clientPort: number;
  private readonly endpoints: ConnectionEndpoints;
  private readonly tracker: SessionMetrics;
  /** The first bytes while they may still be the start of a PROXY signature; null once decided. */
  private firstBytes: Buffer | null = EMPTY;
  /** The client address came from a trusted webmail's ID: count it per address, not exempt. */
  private addressForwarded = false;
  /** The forwarded address is counted against the per-address limit (it is outside the trusted networks). */
  private forwardedCounted = false;
  /** What the session logged of the client's ID commands so far (one line of each kind per session). */
  private idLogged = false;
  private idClaimLogged = false;
  /** Client bytes read and used before the splice; the splice counts the rest (pipelined commands included). */
  private preauthBytesRead = 0;
  private preauthBytesWritten = 0;
  private preauthTimer: NodeJS.Timeout | undefined;
  /** The socket whose reading readOnlyWhatFits() stopped, until it starts it again (or the splice does). */
  private readingStopped: Socket | undefined;
  /** The pre-auth deadline cut a login short: the timeout answer ends the session. */
  private loginTimedOut = false;
  /**
   * The refusal of a login decided already, while the session waits out the failure delay (and
   * the throttle's penalty) to answer it: the pre-auth deadline's answer, the stop's and an
   * eviction's give it, not unavailable. `alerts`: what the backend's refusal told the user with [ALERT] (IMAP), sent
   * just before the refusal whichever way it goes out (alertsFirst()).
   */
  private decided: { readonly refusal: LoginRefusal; readonly text: string | undefined; readonly alerts: readonly string[] | undefined } | undefined;
  /** What the login under way waits on, as the kind its failure would have (the directory, a slot), and the last failure it was held for: cutByDeadline() reads them. */
  private loginWaitsOn: FailureKind | undefined;
  private heldFor: MailfrontError | undefined;
  private tlsActive: boolean;
  /** The name the login goes on with: the name typed until the directory names the entry's own. */
  private user: string | undefined;
  /** The name the client logged in with (normalised), for the logs when it is not `user`. */
  private typedUser: string | undefined;
  /** The login names another user's mailbox (masterLoginOf()): counted in mailfront_master_logins_total. */
  private masterAttempt = false;
  /** The login is a bearer token's (OAUTHBEARER, XOAUTH2): counted in mailfront_oauth_logins_total; no password to replay. */
  private bearerAttempt: BearerCredentials['mechanism'] | undefined;
  /**
   * A master login's staff member: the name (the entry's own once the directory has answered),
   * the name typed when it is another (an alias the user filter matched), and, once the password
   * is checked, the entry; `user` is then the target.
   */
  private master: { user: string; typed?: string; dn?: string } | undefined;
  /** The password policy's warning of the login under way, and the entry it is of (a master login's: the staff member's, whose password it is). */
  private passwordWarning: { readonly warning: PasswordWarning; readonly dn: string } | undefined;
  private mechanism: string | undefined;
  private store: string | undefined;
  private slot: string | undefined;
  /** The slot as dialled (host and ports), for the registry. */
  private server: Slot | undefined;
  private splice: Splice | undefined;
  private entry: SplicedSessionEntry | undefined;
  /** What guards the spliced client's commands, if anything (for the log of a refusal). */
  private commandGuard: CommandGuard | undefined;
  private readonly onData = (received: Buffer): void => {
    this.preauthBytesRead += received.length;
    let chunk = received;
    if (this.firstBytes !== null) {
      // A PROXY header from a peer that is not a trusted balancer is an attempt to forge the
      // client address: never treat it as a (garbled) command. The first bytes are held (a copy:
      // they may sit in the shared read buffer) until they can no longer begin a signature.
      if (this.firstBytes.length > 0) chunk = Buffer.concat([this.firstBytes, received]);
      const soFar = proxySignatureSoFar(chunk);
      if (soFar === 'more') {
        this.firstBytes = Buffer.from(chunk);
        return;
      }
      this.firstBytes = null;
      if (soFar === 'header') {
        this.log.info({ event: 'session.proxy_header_refused', client: this.clientAddress }, 'PROXY header from an untrusted peer');
        this.context.metrics.proxyHeader(this.listenerName, 'untrusted');
        this.socket.destroy();
        this.finish('protocol-error');
        return;
      }
    }
    this.perform(this.machine.receive(chunk));
  };
  /** onData for reads through the shared buffer (net/direct-io.ts); the machines copy what they keep. */
  private readonly onDirectRead = (length: number, buffer: Buffer): boolean => {
    this.onData(buffer.subarray(0, length));
    return true;
  };
  private readonly listenerName: string;
  private readonly onPreauthError = (error: Error): void => {
    this.log.debug({ event: 'session.client_error', err: error.message }, 'client connection error before login');
    // After its FIN, a client that closed its socket altogether resets the connection when an
    // answer reaches it: it closed, as it did before that answer was written.
    this.finish(this.socket.readableEnded ? 'client-closed-preauth' : 'client-error-preauth');
  };
  /**
   * The client's FIN ('end') or the connection's close before login. Accepted sockets are
   * half-open: a FIN ends what the client sends, not the session. A login under way goes on, and
   * its answer and the commands pipelined behind it are dealt with as they would be otherwise (a
   * login that succeeds hands them and the FIN to the backend); once nothing waits on a login,
   * the session ends (perform() sees to a FIN that came during one). All within the pre-auth
   * deadline, which still runs. One function for both events: one closure less per session.
   */
  private readonly onPreauthGone = (): void => {
    if (this.machine.loginPending && !this.socket.destroyed) return;
    this.finish('client-closed-preauth');
  };

  /**
   * The client's socket: from STARTTLS on, the TLS one. That one is made when the client's first
   * bytes come (startTls()), or, when something needs the socket before them (the pre-auth
   * deadline's answer, an eviction, a shutdown, the session's end), then: the socket is what it
   * was when STARTTLS wrapped it at once. A socket destroyed meanwhile is left as it is, and so
   * is one whose FIN was read: a TLS socket made on it would hear no end, and the session's end
   * would wait CLOSE_GRACE_MS to destroy it, holding the connection's slot (and making an SSL
   * object for a client gone).
   */
  private get socket(): Socket {
    if (this.wrapOnHello !== undefined && !this.clientSocket.destroyed && !this.clientSocket.readableEnded) this.wrapOnHello();
    return this.clientSocket;
  }

  private set socket(socket: Socket) {
    this.clientSocket = socket;
  }

  constructor(
    socket: Socket,
    listener: ListenerConfig,
    private readonly adapter: ProtocolAdapter,
    private readonly context: SessionContext,
    tlsActive: boolean,
    endpoints: ConnectionEndpoints,
    private readonly lease: ConnectionLease,
    acceptedAt: number = performance.now(),
  ) {
    this.acceptedAt = acceptedAt;
    this.startedAt = Math.round(Date.now() - (performance.now() - acceptedAt));
    this.clientSocket = socket;
    this.tlsActive = tlsActive;
    this.endpoints = endpoints;
    this.clientAddress = endpoints.client.address;
    this.clientPort = endpoints.client.port;
    this.listenerName = listener.name;
    this.log = context.log.child({ session: this.id });
    this.tracker = context.metrics.sessionStarted(adapter.name);
    const config = context.config();
    const starttlsAvailable = listener.tls === 'starttls' && !tlsActive;
    this.machine = adapter.createPreauth({
      tlsActive,
      starttlsAvailable,
      plaintextWithoutTls: listener.plaintextWithoutTls,
      ...(context.oauth?.() !== undefined ? { oauth: true } : {}),
      greetingText: config.session.greeting,
    });
    this.log.debug({ event: 'session.started', protocol: adapter.name, listener: listener.name, client: this.clientAddress, clientPort: this.clientPort, ...(endpoints.header?.kind === 'proxied' ? { via: endpoints.peer.address } : {}), tls: tlsActive }, 'session started');
    // preauth_timeout_ms runs from accept to a successful login, the PROXY header and an
    // implicit-TLS handshake included; a login in progress is no way around it. Such a login is
    // abandoned (its catch runs in the microtasks the abort starts); on the next turn the
    // machine's timeout answer answers it as unavailable and ends the session, without running
    // what the client pipelined behind it. A login refused already, its answer waiting out the
    // failure delay, is answered at once with its refusal (a wrong password is no outage), then
    // the timeout answer: the deadline cuts the delay short.
    this.preauthTimer = setTimeout(() => {
      if (this.phase === 'authenticating' || this.phase === 'backend-login') {
        this.loginTimedOut = true;
        this.canceller?.abort();
        setImmediate(() => this.perform(this.machine.timedOut()));
      } else if (this.phase === 'preauth' || this.phase === 'greeting') {
        this.perform(this.lastWords((refusal, text) => this.machine.timedOut(refusal, text)));
      }
    }, Math.max(0, acceptedAt + config.session.preauthTimeoutMs - performance.now()));
    // STARTTLS needs the socket's stream as it is: a session that may be offered it reads through 'data'.
    this.attachPreauth(socket, !starttlsAvailable);
    this.perform(this.machine.greeting());
    if (this.phase === 'greeting') this.setPhase('preauth');
    // A FIN that came with a PROXY header (a balancer's health check) may have been read with it: its 'end' is then past.
    if (socket.readableEnded) this.onPreauthGone();
  }

  /**
   * Who the client is, for the login lines: its address (as forwarded, when trusted) and `via`,
   * the trusted webmail that named it with ID (as session.client_id_honoured names it), else the
   * balancer that sent a PROXY header.
   */
  private clientFields(): { client: string; via?: string } {
    if (this.addressForwarded) return { client: this.clientAddress, via: this.endpoints.client.address };
    return this.endpoints.header?.kind === 'proxied' ? { client: this.clientAddress, via: this.endpoints.peer.address } : { client: this.clientAddress };
  }

  private setPhase(phase: Exclude<SessionPhase, 'closing'>): void {
    // A session that is closing stays closing, whatever a late step of its login wants.
    if (this.phase === 'closing') return;
    this.phase = phase;
    this.tracker.phase(phase);
  }

  /**
   * The server is stopping: sessions before login get a BYE; spliced ones are closed by the
   * registry. A login refused already, its answer waiting out the failure delay, is answered at
   * once with its refusal, then the BYE (a wrong password is no outage); one still under way is
   * abandoned, and answered as the machine's goodbye allows (IMAP's tag as unavailable).
   */
  shutdown(): void {
    if (this.phase === 'preauth' || this.phase === 'greeting') this.perform(this.lastWords((refusal, text) => this.machine.shuttingDown(refusal, text)));
    else if (this.phase === 'authenticating' || this.phase === 'backend-login') {
      this.canceller?.abort();
      this.perform(this.machine.shuttingDown());
    } else if (this.phase === 'spliced') this.splice?.close('shutdown', this.adapter.drainNotice(SHUTTING_DOWN_PHRASE));
  }

  /**
   * The process is at max_connections and this session, not logged in, is the oldest such
   * (server/connection-limits.ts, its lease released already): the client is told so as a
   * connection refused at the limit is (IMAP `* BYE [UNAVAILABLE]`, POP3 `-ERR [SYS/TEMP]`,
   * ManageSieve `BYE (TRYLATER)`), and the session ends (`evicted`). A login refused already,
   * its answer waiting out the failure delay (and the throttle's penalty), is answered first with
   * its refusal, as at a stop (a wrong password is no full server: a POP3 client would retry it);
   * its failure was counted when it was decided, and is not again. One still waiting on the
   * throttle or its turn is answered as at a stop (IMAP's tag as unavailable). Never waits on the
   * client: the lines go out if the socket takes them, and finish() closes within
   * CLOSE_GRACE_MS. A STARTTLS handshake under way is just closed. Returns the phase it was
   * evicted in; undefined when it was ending already (its socket is then closed at once).
   */
  evict(): EvictedPhase | undefined {
    const phase = this.phase;
    if (phase === 'closing') {
      this.socket.destroy();
      return undefined;
    }
    // Never evictable there: its lease says so (loginStarted(), loggedIn()).
    if (phase !== 'preauth' && phase !== 'authenticating') return undefined;
    if (this.socket instanceof TLSSocket && !this.tlsActive) this.socket.destroy();
    else if (this.socket.writable) this.perform(this.lastWords((refusal, text) => this.machine.evicted(this.adapter.connectionRefusal('total', TOTAL_LIMIT_TEXT), refusal, text)));
    // The machine's close ended the session already, unless it had nothing more to say.
    this.finish('evicted');
    return phase;
  }

  /**
   * The session's end before login, as the machine says it (`say`: timedOut(), shuttingDown() or
   * evicted()), given the refusal of a login decided already, if any: the backend's alerts of that
   * refusal first (alertsFirst()), then the machine's answer to the login and its goodbye.
   */
  private lastWords(say: (refusal: LoginRefusal | undefined, text: string | undefined) => PreauthAction[]): PreauthAction[] {
    const decided = this.decided;
    return [...this.alertsFirst(decided?.alerts), ...say(decided?.refusal, decided?.text)];
  }

  /**
   * What a backend's refusal of the login told the user with [ALERT] (`alerts`), as the lines that
   * go just before the login's answer (IMAP's untagged OK [ALERT], loginAlert(); RFC 9051 §7.1:
   * presented to the user), in the same write. Asked before the machine answers the login: nothing
   * when no login waits for its answer, or the protocol has no alert (POP3, ManageSieve).
   */
  private alertsFirst(alerts: readonly string[] | undefined): PreauthAction[] {
    const adapter = this.adapter;
    if (alerts === undefined || alerts.length === 0 || adapter.loginAlert === undefined || !this.machine.loginPending) return [];
    return [{ type: 'send', data: alerts.map((text) => adapter.loginAlert!(text)).join('') }];
  }

  /** Like shutdown(), but leaves a spliced session running (used while draining). */
  shutdownIfNotSpliced(): void {
    if (this.phase !== 'spliced') this.shutdown();
  }

  private attachPreauth(socket: Socket, direct: boolean): void {
    if (direct && readDirect(socket, this.onDirectRead)) socket.resume();
    else socket.on('data', this.onData);
    socket.on('error', this.onPreauthError);
    socket.on('end', this.onPreauthGone);
    socket.on('close', this.onPreauthGone);
  }

  private detachPreauth(socket: Socket): void {
    socket.off('data', this.onData);
    socket.off('error', this.onPreauthError);
    socket.off('end', this.onPreauthGone);
    socket.off('close', this.onPreauthGone);
  }

  private perform(actions: PreauthAction[]): void {
    // Consecutive sends (untagged and tagged lines of one answer) leave in one write.
    let pending = '';
    const flush = (): void => {
      if (pending !== '') this.preauthBytesWritten += writeNow(this.socket, pending);
      pending = '';
    };
    try {
      this.performEach(actions, (data) => (pending += data), flush);
    } finally {
      flush();
    }
    // The client sent its FIN (onPreauthGone()) and what it sent before is answered: a failed
    // login's refusal, and the commands pipelined behind it, were the last of it.
    // (Not while a STARTTLS waits for the client's first bytes: the TLS socket, not made yet, has seen no FIN.)
    if (this.phase === 'preauth' && this.wrapOnHello === undefined && this.socket.readableEnded && !this.machine.loginPending) this.finish('client-closed-preauth');
    this.readOnlyWhatFits();
  }

  /**
   * Stops reading the client while its login is pending with MAX_PIPELINED_BYTES pipelined
   * behind it (machine.inputFull), and starts again once it is answered: the rest of what the
   * client pipelined waits in the kernel's buffers, and TCP flow control holds the client, instead
   * of the session holding it all or ending. A login that succeeds leaves it to the splice, which
   * reads the socket again after the machine's bytes (the same pause: socket.pause() also stops
   * readDirect()'s reads); one refused starts reading here, and the machine reads what follows as
   * pre-auth commands, as it does what it held. The pre-auth deadline runs on meanwhile.
   */
  private readOnlyWhatFits(): void {
    if (this.phase === 'closing' || this.phase === 'spliced') return;
    const full = this.machine.inputFull;
    if (full && this.readingStopped === undefined) {
      this.readingStopped = this.socket;
      this.socket.pause();
    } else if (!full && this.readingStopped !== undefined) {
      // A STARTTLS pipelined behind a refused login stopped the plain socket itself; the TLS one reads on its own.
      if (this.readingStopped === this.socket) this.socket.resume();
      this.readingStopped = undefined;
    }
  }

  private performEach(actions: PreauthAction[], send: (data: string) => void, flush: () => void): void {
    for (const action of actions) {
      if (this.phase === 'closing' || this.phase === 'spliced') return;
      if (action.type !== 'send') flush();
      switch (action.type) {
        case 'send':
          send(action.data);
          break;
        case 'starttls':
          this.startTls();
          return;
        case 'login':
        case 'bearer-login':
          this.setPhase('authenticating');
          void this.login(action.credentials);
          break;
        case 'client-id':
          this.clientId(action.params);
          break;
        case 'close':
          this.socket.end();
          this.finish(action.reason);
          return;
        default: {
          const exhaustive: never = action;
          throw new Error(`unknown pre-auth action ${JSON.stringify(exhaustive)}`);
        }
      }
    }
  }

  /**
   * A webmail server on a trusted network may name its user's address with ID
   * x-originating-ip (and -port); from anyone else the claim is ignored.
   */
  private clientId(params: ReadonlyMap<string, string | null>): void {
    const ip = params.get('x-originating-ip');
    // A client may send ID dozens of times before login, each with values of up to 1 KiB: the
    // log gets the first ID and the first address claimed, shortened and cleaned. The address in
    // force is on the session's later lines (session.spliced, session.finished) in any case.
    if (!this.idLogged) {
      this.idLogged = true;
      const logged = Object.fromEntries([...params].map(([field, value]) => [loggableClaim(field), value === null ? null : loggableClaim(value)]));
      this.log.debug({ event: 'session.client_id', params: logged }, 'client sent ID');
    }
    if (ip === undefined || ip === null) return;
    const trusted = this.context.trustedNetworks().contains(this.endpoints.client.address);
    // A zone id means nothing beyond the webmail's own host, and no PROXY header can carry it.
    const valid = isIP(ip) !== 0 && !ip.includes('%');
    this.context.metrics.clientIdAddress(trusted && valid);
    const firstClaim = !this.idClaimLogged;
    this.idClaimLogged = true;
    if (!trusted || !valid) {
      if (firstClaim) {
        const claimed = loggableClaim(ip);
        this.log.info({ event: 'session.client_id_ignored', claimed, ...(claimed !== ip ? { claimedLength: ip.length } : {}), trusted, valid }, 'x-originating-ip ignored');
      }
      return;
    }
    const port = Number(params.get('x-originating-port'));
    // One spelling per address (::ffff:192.0.2.1 is 192.0.2.1, 2001:DB8:0:0::1 is 2001:db8::1) for
    // limits, throttle, logs and the backend; the text as sent is logged too when it differs.
    this.clientAddress = plainAddress(ip);
    if (firstClaim) this.log.info({ event: 'session.client_id_honoured', client: this.clientAddress, ...(this.clientAddress !== ip ? { claimed: ip } : {}), via: this.endpoints.client.address }, 'client address from a trusted ID');
    this.clientPort = Number.isInteger(port) && port > 0 && port < 65536 ? port : 0;
    this.addressForwarded = true;
    // From now on the connection counts against the forwarded address's per-address limit, as a
    // client behind a NAT does (the webmail server's own address is not counted). Over it, the
    // connection stays as it was counted, and its login is refused (login()). An address of the
    // trusted networks is exempt, forwarded or not, as it is when it connects itself.
    this.forwardedCounted = !this.context.trustedNetworks().contains(this.clientAddress);
    if (this.forwardedCounted) this.lease.countAddress(this.clientAddress);
    else this.lease.uncountAddress();
  }

  private startTls(): void {
    const secureContext = this.context.secureContext();
    const plain = this.socket;
    this.detachPreauth(plain);
    plain.pause();
    if (secureContext === undefined) {
      this.finish('tls-failed');
      return;
    }
    const failed = (error: Error): void => {
      if (this.tlsActive) return;
      // As the implicit-TLS listener's line says it (the session's own lines before it are debug).
      this.log.info({ event: 'session.tls_failed', listener: this.listenerName, client: this.clientAddress, reason: 'error', err: error.message }, 'TLS handshake failed');
      this.finish('tls-failed');
    };
    // A FIN during the handshake: the socket is half-open, and no 'close' would come until the deadline.
    const gone = (): void => {
      if (!this.tlsActive) this.finish('client-closed-preauth');
    };
    // The socket is wrapped once the client's first bytes are in its buffer: node's TLS layer
    // keeps an input buffer the size of its first read for the connection's life, 64 KiB when it
    // reads the socket itself (docs/performance.md, "Memory per idle session"). Until then its end or error is
    // the handshake's, as the TLS socket's would be.
    const onHello = (): void => {
      // 'readable' with nothing to read: the client's FIN, whose 'end' the read emits.
      if (plain.readableLength === 0) return void plain.read();
      wrap();
    };
    const wrap = (): void => {
      this.wrapOnHello = undefined;
      plain.off('readable', onHello).off('error', failed).off('end', gone);
      // Wrapping the socket hands every later byte to the TLS layer: plaintext a client queued
      // behind STARTTLS is never read as a command (the machine dropped what it had already).
      const SNICallback = this.context.sniCallback?.();
      const secure = serverTlsSocket(plain, { isServer: true, secureContext, ...(SNICallback !== undefined ? { SNICallback } : {}) });
      this.socket = secure;
      secure.once('secure', () => {
        // The handshake's listeners go (left on, they were no-ops held for the session's life).
        secure.off('error', failed).off('end', gone);
        this.context.metrics.tlsHandshake(this.listenerName, secure.getProtocol(), secure.isSessionReused());
        endOnLateTlsError(secure);
        this.tlsActive = true;
        this.attachPreauth(secure, false);
        this.perform(this.machine.tlsStarted());
      });
      secure.on('error', failed);
      secure.once('end', gone);
    };
    // Before the splice only: once spliced, the splice watches the TLS socket and says why the session ended.
    plain.on('close', () => {
      if (this.phase !== 'spliced') this.finish('client-closed-preauth');
    });
    this.wrapOnHello = wrap;
    plain.on('readable', onHello).once('error', failed).once('end', gone);
    // The client's FIN was read already: it came while a login pipelined before the STARTTLS was
    // under way (onPreauthGone() let the login go on). No ClientHello follows a FIN, and neither
    // event above comes again: the session would wait for the pre-auth deadline.
    if (plain.readableEnded) gone();
  }

  /**
   * What a login the pre-auth deadline cut short (its wait `abort`ed) is logged and counted as:
   * the kind of what it waited on (the directory, the store's master), with the last failure it
   * was held for, so that a fleet's failure counts as one (MailfrontLoginErrors) and not as a
   * client that went away. A wait on neither (the throttle, a turn behind another login of the
   * user) stays `aborted`.
   */
  private cutByDeadline(abort: MailfrontError): MailfrontError {
    const kind = this.loginWaitsOn ?? 'aborted';
    const waitedOn = WAITED_ON[kind];
    if (waitedOn === undefined) return new MailfrontError('PREAUTH_DEADLINE', 'aborted', abort.message, { cause: abort });
    const held = this.heldFor === undefined ? '' : `; held for it (failover.hold_ms), last error: ${this.heldFor.message}`;
    return new MailfrontError('PREAUTH_DEADLINE', kind, `the login was waiting on ${waitedOn}${held}`, { cause: abort });
  }

  /** Counts a login attempt as `result` (mailfront_logins_total, and mailfront_master_logins_total for a master login), with its time since `started`, when it was read. */
  private countLogin(result: LoginResult, started: number): void {
    this.context.metrics.loginResult(this.adapter.name, result, (performance.now() - started) / 1000);
    if (this.masterAttempt) this.context.metrics.masterLogin(this.adapter.name, result);
    if (this.bearerAttempt !== undefined) this.context.metrics.oauthLogin(this.adapter.name, this.bearerAttempt, result);
  }

  /**
   * A master login's fields for its log lines: `master`, the staff member (the entry's own name
   * once known), `typedMaster`, the staff member's name as typed when it is another (as
   * `typedUser` is for users), and `masterDn`, the staff member's entry, once known.
   */
  private masterFields(): { master?: string; typedMaster?: string; masterDn?: string } {
    const master = this.master;
    if (master === undefined) return {};
    return { master: master.user, ...(master.typed !== undefined ? { typedMaster: master.typed } : {}), ...(master.dn !== undefined ? { masterDn: master.dn } : {}) };
  }

  /** Whether `user` (the entry `dn`), or a master login's staff member, was kicked since the login read `kicksAtStart`. */
  private kickedSince(user: string, dn: string, kicksAtStart: number): boolean {
    const registry = this.context.registry;
    const master = this.master;
    return registry.kickedSince(user, dn, kicksAtStart) || (master?.dn !== undefined && registry.kickedSince(master.user, master.dn, kicksAtStart));
  }

  /**
   * A master login, the staff member's password checked (`staff`, as the directory answered for
   * `staffName`, the name typed): whether the staff member may log in as another user
   * (directory.master_user_filter, its {user} the entry's own name, asked of the directory itself
   * at every login: never from a cache, so that a cached login of the staff member cannot skip
   * it), then the entry of
   * `target`, looked up in the directory itself for this protocol (never from a cache of logins:
   * no password of the target's was given, and none of its logins is kept). In that order: to
   * someone who is no master, whether the target exists is not told. A target whose entry names
   * no one store (none: another staff member's) has no mailbox to open. The refusals are
   * `not-authorized` (RFC 5530 AUTHORIZATIONFAILED), logged at info, and no failure for the
   * throttle: the password was right. The staff member's own entry needs no store, and its hold is not the
   * target's.
   */
  private async masterTarget(directory: Directory, staff: DirectoryUser, staffName: string, target: string, config: Config, cancellation: Cancellation): Promise<DirectoryUser> {
    const login = entryLoginName(staff.loginNames ?? [], staffName, config.usernames);
    const master = { user: login.kind === 'name' ? login.name : staffName, ...(login.kind === 'name' && login.name !== staffName ? { typed: staffName } : {}), dn: staff.dn };
    this.master = master;
    // A reload may replace (and close) the directory between this login's steps, each a call of
    // its own: the rest is asked of the one in force (with its settings), as the admin API's kick does.
    let current = directory;
    const ask = async <T>(step: (d: Directory) => Promise<T>): Promise<T> => {
      try {
        return await step(current);
      } catch (caught) {
        const now = this.context.directory();
        if (now === current || asMailfrontError(caught).code !== DIRECTORY_CLOSED) throw caught;
        current = now;
        return step(now);
      }
    };
    // {user} of the filter is the entry's own name, as the log names the staff member: with a user
    // filter that matches aliases, the name typed may be one the master filter compares with
    // nothing (help@example.com against uid={user}), and the same entry would be refused under it.
    const named = master.user === staff.user ? staff : { ...staff, user: master.user };
    const allowed = await ask(async (d) => (d.masterAllowed === undefined ? false : d.masterAllowed(named, cancellation)));
    throwIfCancelled(cancellation, 'the login was cancelled while the directory answered');
    if (!allowed) throw new MailfrontError(MASTER_NOT_ALLOWED, 'not-authorized', `"${master.user}" (${master.dn}) asked to log in as "${target}" and may not: the entry does not match directory.master_user_filter`);
    const found = await ask((d) => d.lookup(target, cancellation, this.adapter.name));
    throwIfCancelled(cancellation, 'the login was cancelled while the directory answered');
    if (found === null) throw new MailfrontError(MASTER_TARGET_UNKNOWN, 'not-authorized', `"${master.user}" (${master.dn}) asked to log in as "${target}", whom the directory does not find${current.byProtocol === true ? ` for ${this.adapter.name}` : ''}`);
    // An entry without a store of its own (a colleague's staff entry: the README's set-up gives
    // them none) has no mailbox to open: the staff member's mistake, not the fleet's, so not the
    // user's own login's no-route (an error line, "temporarily unavailable", a fleet failure).
    const stores = found.storeValues !== undefined && found.storeValues > 1 ? found.storeValues : found.store === null ? 0 : 1;
    if (stores !== 1) throw new MailfrontError(MASTER_TARGET_WITHOUT_MAILBOX, 'not-authorized', `"${master.user}" (${master.dn}) asked to log in as "${target}", whose directory entry ${found.dn} has ${stores === 0 ? 'no' : `${stores} values of`} ${config.directory.storeAttribute}${stores === 0 ? ' attribute' : ''}: no mailbox to open`);
    return found;
  }

  /**
   * A bearer login's user: the token verified (auth/oauth.ts: signature, exp, nbf, iss, aud), its
   * claim (oauth2.user_claim) normalised as a typed name is (refused when that changes more than
   * its letter case and domain: another identity at the IdP), the name the client gave with it
   * (`given`, normalised: OAUTHBEARER's authzid, XOAUTH2's user=), if any, the same user, then the
   * user's entry found with the service account for this protocol, through the cache of entries
   * a password login uses (findForLogin(); no user bind: the token is the proof; never from the
   * cache of logins, which is keyed by passwords), and not locked there (ACCOUNT_LOCKED: findForLogin() reads what a bind would have refused). Each
   * refusal is auth-failed with a code of its own, counted as a wrong password is; a user the
   * directory does not find is UNKNOWN_USER, as for a password.
   */
  private async bearerUser(bearer: BearerCredentials, given: string | null, config: Config, cancellation: Cancellation): Promise<{ user: string; found: DirectoryUser }> {
    const verifier = this.context.oauth?.();
    if (verifier === undefined) throw new MailfrontError('OAUTH_NOT_CONFIGURED', 'auth-failed', 'a bearer token, and oauth2 is no longer configured (a reload took it away)');
    const verified = await verifier.verify(bearer.token, cancellation);
    throwIfCancelled(cancellation, 'the login was cancelled while its token was verified');
    const user = normalizeUser(verified.user, config.usernames);
    const claim = verifier.config.userClaim;
    if (user === null) throw new MailfrontError('OAUTH_USER_UNUSABLE', 'auth-failed', `the token's ${claim} (oauth2.user_claim) ${JSON.stringify(loggableClaim(verified.user))} is no user name (empty, too long, not in a local domain, or with control characters)`);
    if (claimChangedByNormalising(verified.user)) throw new MailfrontError('OAUTH_USER_UNUSABLE', 'auth-failed', `the token's ${claim} (oauth2.user_claim) ${JSON.stringify(loggableClaim(verified.user))} is not a name as the directory has it: normalised, it would be "${user}" (spaces trimmed or folded, Unicode compatibility forms such as fullwidth letters, or a domain IDNA maps to another), which the IdP tells from it`);
    // The client's name only has to denote the token's user: the directory matches names without regard to case.
    if (given !== null && given.toLowerCase() !== user.toLowerCase()) throw new MailfrontError('OAUTH_USER_MISMATCH', 'auth-failed', `the client named the user "${given}" and the token's ${claim} (oauth2.user_claim) names "${user}"`);
    this.user = this.typedUser = user;
    // The directory in force now, not at the login's start: a reload while the token was verified
    // (a JWKS fetch may take seconds) closes the one before. From the cache of entries, as a
    // password login's search: a webmail may log in with its token on every page view.
    const directory = this.context.directory();
    const found = await findForLogin(directory, user, cancellation, this.adapter.name);
    throwIfCancelled(cancellation, 'the login was cancelled while the directory answered');
    if (found === null) throw new MailfrontError('UNKNOWN_USER', 'auth-failed', `the token's user "${user}" is not in the directory${directory.byProtocol === true ? ` for ${this.adapter.name}` : ''}`);
    // No bind, whose refusal would say it: the entry's lock attributes do. Told as a refused token (as a lock is told as a wrong password).
    if (found.locked !== undefined) throw new MailfrontError('ACCOUNT_LOCKED', 'auth-failed', `the directory has locked the account ${found.dn} of the token's user "${user}" (${found.locked})`);
    return { user, found };
  }

  private get cancellation(): Cancellation {
    this.canceller ??= new Canceller();
    return this.canceller;
  }

  private async login(credentials: Credentials | BearerCredentials): Promise<void> {
    const config = this.context.config();
    // The monotonic clock times the failure delay and the hold: a step of the wall clock (NTP)
    // answered a failed or held login at once (forward) or kept it past its deadline (back).
    const started = performance.now();
    const kicksAtStart = this.context.registry.kicksSoFar;
    // A bearer token (OAUTHBEARER, XOAUTH2): its user is the token's (bearerUser()); the name the
    // client gave with it, if any, goes by until the token is verified.
    const bearer = 'token' in credentials ? credentials : undefined;
    // What the throttle fingerprints a failure by (never kept as it is).
    const secret = 'token' in credentials ? credentials.token : credentials.password;
    // A master login (directory.master_user_filter): the staff member's password is checked, and
    // the target's mailbox opened. Otherwise the user is both.
    const named = bearer === undefined ? masterLoginOf(credentials as Credentials, config.directory, config.usernames) : undefined;
    const given = bearer === undefined ? (credentials as Credentials).user : bearer.user;
    // The user whose password is checked, and the user whose mailbox the login opens (as typed, normalised).
    let user = named === undefined ? (given === undefined ? null : normalizeUser(given, config.usernames)) : named.staff;
    let typed = named === undefined ? user : named.target;
    this.loginWaitsOn = undefined;
    this.decided = undefined;
    this.heldFor = undefined;
    // What the throttle, the login gate and the failure counts go by (countedUser): the user whose
    // password is tried, the staff member's in a master login.
    const subject = user === null ? user : countedUser(user, config.usernames);
    const throttle = this.context.throttle();
    const attempt = {
      user: subject,
      address: this.clientAddress,
      // A webmail server is exempt from per-address counting, unless it named its user's address;
      // so is an address of throttle.exempt_networks (a carrier's NAT), whose claims are not believed.
      trusted: (!this.addressForwarded && this.context.trustedNetworks().contains(this.clientAddress)) || throttle.exempts(this.clientAddress),
    };
    // The login gate takes an address's turns by the key its failures are counted under (an IPv6
    // network of throttle.ipv6_prefix_bits), which it keys as it is (addressKey() of a key is the key).
    const gateAddress = throttle.addressKey(attempt.address);
    let penaltyMs = 0;
    // The entry's own name, once the directory has given it (the failure lines name both).
    let asserted: string | undefined;
    // What a THROTTLED refusal reached: the user's limit or the address's.
    let throttledBy: 'user' | 'address' | undefined;
    // Made now, before the first wait, so that a deadline or a hang-up during any step of the
    // login (the throttle's Redis round trip included) cancels it.
    const cancellation = this.cancellation;
    // The user's turn at the gate lasts from the throttle's check until the check's outcome is
    // counted, and so does the address's (taken with the check: as many as it has failures left).
    let leaveUserGate: LeaveGate | undefined;
    let leaveAddressGate: LeaveAddressGate | undefined;
    /** `failureCounted` false: the login counted no failure for the address (a success). */
    const leaveGate = (failureCounted = true): void => {
      leaveUserGate?.();
      leaveAddressGate?.(failureCounted);
    };
    // The directory's check of the password while the login waits for it (see abandonedCheck()).
    let checking: Promise<DirectoryUser> | undefined;
    // The gate's turns went with an abandoned check: left once it is counted, not on the way out.
    let turnsKept = false;
    try {
      // The name typed, from the start: a login the limits or the throttle refuse names its user in session.finished too.
      this.user = typed ?? undefined;
      this.typedUser = this.user;
      // Each login anew: a session may try several (a master login refused, then the user's own).
      this.masterAttempt = named !== undefined;
      this.bearerAttempt = bearer?.mechanism;
      this.passwordWarning = undefined;
      this.master = named !== undefined && named.staff !== null ? { user: named.staff } : undefined;
      // A forwarded address counted at ID time holds its count; one that was at the limit then
      // is tried again, and refused if it still is (before anything reaches the directory).
      if (this.forwardedCounted && !this.lease.countAddress(this.clientAddress)) {
        this.context.metrics.connectionRefused('address');
        throw new MailfrontError(ADDRESS_CONNECTION_LIMIT, 'limit', `the address forwarded by the trusted webmail server ${this.endpoints.client.address} has ${config.connectionLimits.maxConnectionsPerAddress} connections already`);
      }
      if (subject !== null) leaveUserGate = this.context.loginGate.tryEnter(subject) ?? (await this.context.loginGate.enter(subject, cancellation));
      // The address's turn: at once where it has room (a login's usual way), else checkAddress()
      // asks the throttle again and waits for one.
      const gate = this.context.loginGate;
      // A trusted network's address is not counted: no turn to take.
      const addressCheck = attempt.trusted ? undefined : gate.beginAddressCheck(gateAddress);
      const mark = addressCheck?.failures ?? 0;
      // Never rejects: a check begun is always ended, by tryAddressTurn() or endAddressCheck().
      let verdict = await throttle.check(attempt, ADDRESS_BUDGET);
      if (addressCheck !== undefined) {
        const turn = verdict.refused || verdict.addressLeft === undefined ? gate.endAddressCheck(addressCheck) : gate.tryAddressTurn(addressCheck, verdict.addressLeft, mark);
        if (typeof turn === 'function') {
          leaveAddressGate = turn;
        } else if (turn !== undefined) {
          const checked = await gate.checkAddress(gateAddress, () => throttle.check(attempt, ADDRESS_BUDGET), cancellation, turn === 'wait');
          leaveAddressGate = checked.leave;
          verdict = checked.verdict;
        }
      }
      throwIfCancelled(cancellation, 'the login was cancelled while the throttle answered');
      if (verdict.refused) {
        throttledBy = verdict.refusedBy ?? 'user';
        this.context.metrics.throttleRefusal(throttledBy);
        throw new MailfrontError('THROTTLED', 'limit', `too many failed logins for this ${throttledBy}${named !== undefined && throttledBy === 'user' ? ` (the staff member "${user ?? ''}", whose password a master login tries)` : ''}; refused for ${Math.ceil(verdict.refusedForMs / 1000)} s more`);
      }
      // A bearer token without a name (OAUTHBEARER's authzid is optional) is named by its claim.
      const unnamed = bearer !== undefined && given === undefined;
      if ((user === null || typed === null) && !unnamed) {
        throw new MailfrontError('INVALID_USERNAME', 'auth-failed', `the user name${named !== undefined ? ` (${user === null ? 'the staff member\'s' : 'the target\'s'}, in a master login)` : ''} is empty, too long, not in a local domain, or has control characters`);
      }
      // RFC 4616 §2: an authorization identity other than the authenticated one needs the right
      // to act as it, and mailfront gives no client that right. Logging in as the authcid
      // instead would put a client that asked for another mailbox in the wrong one.
      // (With directory.master_user_filter set, such a login is a master login instead: named.)
      if (named === undefined && bearer === undefined && 'authzid' in credentials && credentials.authzid !== undefined && normalizeUser(credentials.authzid, config.usernames) !== user) {
        throw new MailfrontError('AUTHZID_REFUSED', 'auth-failed', `the client asked to act as another user (authzid ${JSON.stringify(loggableClaim(credentials.authzid))})`);
      }
      // From here the login is under way (the directory asked, then the backend): a full process
      // does not close it to make room; it is about to be a session or to fail. Before it (the
      // throttle, a turn at the gate, which a flood of logins for one user can make long) it may.
      this.lease.loginStarted();
      this.loginWaitsOn = 'auth-tempfail';
      const directory = this.context.directory();
      let found: DirectoryUser;
      if (bearer !== undefined) {
        ({ user, found } = await this.bearerUser(bearer, user, config, cancellation));
        typed = user;
      } else {
        if (user === null || typed === null) throw new MailfrontError('INVALID_USERNAME', 'auth-failed', 'the user name is empty, too long, not in a local domain, or has control characters');
        // Asked without the session's cancellation (the directory goes on to the end of its search
        // and bind anyway): what it answers is counted even when the session stops waiting first.
        checking = directory.authenticate(user, secret, NEVER_CANCELLED, this.adapter.name);
        found = await untilCancelled(checking, cancellation, 'the session ended during a directory lookup');
        checking = undefined;
        if (found.passwordWarning !== undefined) this.passwordWarning = { warning: found.passwordWarning, dn: found.dn };
      }
      throwIfCancelled(cancellation, 'the login was cancelled while the directory answered');
      void throttle.recordSuccess(attempt);
      leaveGate(false);
      this.mechanism = credentials.mechanism;
      if (named !== undefined) found = await this.masterTarget(directory, found, user, typed, config, cancellation);
      // From here on the login is the entry's own name, not the one typed: a user filter that
      // matches aliases (mail) finds alice's entry for "info@example.com", which a backend reads
      // as another user's mailbox (entryLoginName()).
      const loginAttribute = loginAttributeOf(config.directory);
      const login = entryLoginName(found.loginNames ?? [], typed, config.usernames);
      const name = login.kind === 'name' ? login.name : typed;
      if (login.kind !== 'ambiguous') {
        this.user = name;
        asserted = name;
      }
      this.log.debug({ event: 'session.authenticated', ...userFields(this.user, typed), ...this.masterFields(), mechanism: credentials.mechanism }, 'user authenticated');
      // The directory holds the user (a mailbox being moved): refused now, the password checked
      // (to anyone else it is one more wrong password), with the hold's reason, as a store in
      // maintenance is: no slot dialled, no wait for a master, no sessions-per-user count, no failure for the
      // throttle. The user's sessions spliced on this instance (the cache of logins may have let
      // them in since the hold was set) are closed with the reason, and the cache forgets the
      // user, so that their clients do not come back in through it: nothing writes to the mailbox.
      // Its logins under way (at their backend, or held for a master) are stopped as a kick stops
      // them: read before the hold, they would be spliced after it was seen.
      if (found.hold !== undefined) {
        if (found.store !== null) this.store = found.store;
        this.context.registry.userKicked(name, [found.dn], { hold: found.hold });
        // Not a staff member's sessions in other users' mailboxes: the hold is of this user's mailbox.
        const spliced = this.context.registry.ofUserAndEntries(name, [found.dn]).filter((entry) => entry.user === name || entry.dn === found.dn);
        for (const entry of spliced) entry.close('kicked', found.hold);
        if (spliced.length > 0) this.context.directory().forget(name, new Set([found.dn]));
        throw new MailfrontError('USER_HELD', 'held', `the directory entry ${found.dn} holds the user (directory.hold_attribute ${config.directory.holdAttribute ?? ''})${spliced.length > 0 ? `; the user's ${spliced.length} spliced ${spliced.length === 1 ? 'session was' : 'sessions were'} closed` : ''}`, { clientText: found.hold });
      }
      // Said only now, the password checked: to anyone else the user is one more wrong password.
      if (login.kind === 'ambiguous') {
        throw new MailfrontError('USER_LOGIN_AMBIGUOUS', 'auth-tempfail', `the directory entry ${found.dn} has ${login.names.length} names in ${loginAttribute} (directory.login_attribute), none of them "${typed}", the name typed; it must have one, the name the backend knows the user by`);
      }
      // authenticate() refuses such an entry itself, and masterTarget() a master login's target: kept for a directory that does not.
      if (found.storeValues !== undefined && found.storeValues > 1) {
        throw new MailfrontError('USER_STORE_AMBIGUOUS', 'no-route', `the directory entry ${found.dn} has ${found.storeValues} values of ${config.directory.storeAttribute}; it must have one, the user's store`);
      }
      if (found.store === null) throw new MailfrontError('USER_WITHOUT_STORE', 'no-route', `the directory entry ${found.dn} has no store attribute`);
      this.store = found.store;
      // A store in maintenance refuses the login now, the password checked (to anyone else it is
      // one more wrong password): no slot dialled, no hold, no sessions-per-user count.
      this.context.storeMap().currentMaster(found.store);
      // Counted by the entry's name, as the throttle counts by the name typed (all spellings one, usernames.lowercase or not).
      if (!this.lease.claimUser(config.usernames.lowercase ? name : name.toLowerCase())) {
        this.context.metrics.connectionRefused('user');
        throw new MailfrontError('USER_SESSION_LIMIT', 'limit', `user "${name}" has ${config.connectionLimits.maxSessionsPerUser} sessions already`);
      }
      this.setPhase('backend-login');
      const identity: LoginIdentity = { name, fromEntry: login.kind === 'name', dn: found.dn, attribute: loginAttribute, unusable: login.kind === 'none' ? login.unusable : 0 };
      // null: a kick stopped the login (held while the master is down, say).
      // A bearer login has no password: only a login mode that asserts the user on the proxy account's word takes it (connectBackend()).
      const backend = await this.loginToCurrentMaster(found.store, identity, bearer === undefined ? secret : '', config, kicksAtStart);
      if (this.phase === 'backend-login' && !this.socket.destroyed && (backend === null || this.kickedSince(name, found.dn, kicksAtStart))) {
        // An operator kicked the user while this login was under way (after a password change,
        // say): the connection is closed with the protocol's last word, as a spliced session of
        // the user would have been. Not through the pre-auth machine: it would go on to run
        // what the client sent behind its login (a LOGOUT, another LOGIN).
        // A kick because the directory holds the user (the kick's lookup, or another login, saw
        // the hold): told the hold's reason, as the user's spliced sessions are.
        backend?.socket.destroy();
        this.lease.releaseUser();
        const held = this.context.registry.kickHold(name, found.dn, kicksAtStart);
        this.log.info({ event: 'session.kicked', ...userFields(name, typed), ...this.masterFields(), store: this.store, slot: this.slot, phase: 'backend-login', ...(held !== undefined ? { held: true } : {}) }, 'session closed: kicked during its login');
        if (this.socket.writable) this.preauthBytesWritten += writeNow(this.socket, this.adapter.connectionRefusal('total', held ?? KICKED_TEXT));
        this.countLogin('aborted', started);
        this.finish('kicked');
        return;
      }
      if (backend === null) throw new MailfrontError('ABORTED', 'aborted', 'the session ended as its login was stopped by a kick');
      // A client that left (or a deadline that passed) while the backend answered: no success (startSplice counts one).
      if (!this.startSplice(backend, found.dn, kicksAtStart, started)) this.countLogin('aborted', started);
    } catch (caught) {
      const error = asMailfrontError(caught);
      this.lease.releaseUser();
      // Abandoned while the directory checked the password (the client hung up, the deadline, a
      // stop): its answer is still counted, and the gate's turns kept until then.
      if (checking !== undefined && error.kind === 'aborted') {
        turnsKept = true;
        this.abandonedCheck(checking, attempt, secret, leaveGate, typed ?? undefined, config);
      }
      // The session ended while its login was under way (the client hung up, the server is
      // stopping, or the deadline's answer came first): the attempt is counted as abandoned,
      // and nothing more is said or logged.
      if (this.phase === 'closing') {
        this.countLogin('aborted', started);
        return;
      }
      if (this.loginTimedOut) {
        // Cut short by the deadline: the timer's answer follows (the login's refusal, then the
        // timeout), and nothing the client pipelined behind the login is run, as the refusal below would.
        const failure = error.kind === 'aborted' ? this.cutByDeadline(error) : error;
        const loginMs = performance.now() - started;
        this.context.metrics.loginResult(this.adapter.name, failure.kind, loginMs / 1000);
        this.log.error({ event: 'session.login_failed', protocol: this.adapter.name, ...userFields(asserted ?? typed ?? undefined, typed ?? undefined), ...this.masterFields(), store: this.store, code: failure.code, kind: failure.kind, ...this.clientFields(), listener: this.listenerName, reason: `the pre-auth deadline passed: ${failure.message}`, loginMs: Math.round(loginMs) }, 'login could not be completed');
        if (this.masterAttempt) this.context.metrics.masterLogin(this.adapter.name, failure.kind);
        if (this.bearerAttempt !== undefined) this.context.metrics.oauthLogin(this.adapter.name, this.bearerAttempt, failure.kind);
        return;
      }
      if (error.kind === 'aborted' && (this.socket.destroyed || this.phase !== 'authenticating' && this.phase !== 'backend-login')) {
        this.countLogin('aborted', started);
        return;
      }
      this.setPhase('preauth');
      // Before login again, the failure delay included: evictable, in its place by age.
      this.lease.loginFailed();
      this.slot = undefined;
      const refusal = refusalFor(error.kind);
      const text = error.clientText ?? (refusal !== 'limit' ? UNAVAILABLE_TEXT[error.kind] : error.code === ADDRESS_CONNECTION_LIMIT ? ADDRESS_LIMIT_TEXT : LIMIT_TEXT);
      // Decided: the deadline, the stop or an eviction, if it comes during the waits below, answers this refusal.
      this.decided = { refusal, text, alerts: error.alerts };
      // A wrong password for an entry found under an alias: logged by the entry's own name too, as
      // its success would be (in a master login, the staff member's entry).
      if (error instanceof WrongPasswordError && user !== null) {
        const login = entryLoginName(error.loginNames, user, config.usernames);
        if (login.kind === 'name') {
          if (named === undefined) asserted = this.user = login.name;
          else this.master = { user: login.name, ...(login.name !== user ? { typed: user } : {}) };
        }
      }
      if (error.kind === 'auth-failed') {
        this.context.metrics.authFailure(authFailureReason(error.code));
        penaltyMs = (await throttle.recordFailure(attempt, secret)).delayMs;
      }
      // Counted: the next check of this user may go (not after the answer's delay below).
      leaveGate(error.kind === 'auth-failed');
      const fields = { event: 'session.login_failed', protocol: this.adapter.name, ...userFields(asserted ?? typed ?? undefined, typed ?? undefined), ...this.masterFields(), store: this.store, code: error.code, kind: error.kind, ...(throttledBy !== undefined ? { by: throttledBy } : {}), ...this.clientFields(), listener: this.listenerName, reason: error.message, loginMs: Math.round(performance.now() - started), ...(penaltyMs > 0 ? { penaltyMs } : {}), ...(error.alerts !== undefined ? { backendAlerts: error.alerts.length } : {}) };
      // A POP3 client polling faster than the backend allows ([LOGIN-DELAY]) is the user's doing,
      // not the fleet's; a store in maintenance, or a user held by the directory, the operator's;
      // a master login refused to someone who is no master, or for a target that does not exist or has no mailbox, the client's.
      if (refusal === 'auth-failed' || refusal === 'limit' || refusal === 'login-delay' || error.kind === 'maintenance' || error.kind === 'held' || error.kind === 'expired' || error.code === MASTER_NOT_ALLOWED || error.code === MASTER_TARGET_UNKNOWN || error.code === MASTER_TARGET_WITHOUT_MAILBOX) this.log.info(fields, 'login failed');
      else this.log.error(fields, 'login could not be completed');
      // Same answer after the same time for an unknown user and a wrong password (and a
      // throttled login looks no faster); repeated failures add the throttle's penalty. Every
      // other refusal waits as long: a client pipelining logins while the directory or its store
      // is down gets one answer, and writes one error line, per delay, not one per command.
      await delay(started + config.session.authFailureDelayMs + penaltyMs - performance.now(), this.cancellation);
      this.store = undefined;
      this.decided = undefined;
      if (this.phase === 'preauth' && !this.socket.destroyed) this.perform([...this.alertsFirst(error.alerts), ...this.machine.loginFailed(refusal, text)]);
      // Counted once answered (or once its client or session went), the failure delay included: what the client waited.
      this.countLogin(error.kind, started);
    } finally {
      // Every way out (a cancelled login, a kick) leaves the gate; leaving twice does nothing.
      if (!turnsKept) leaveGate();
    }
  }

  /**
   * The directory's answer to the password of a login abandoned before it came (the client hung
   * up, the pre-auth deadline, a stop), counted as the login would have counted it: a wrong
   * password is a failure for the throttle (and the auth-failure metric), a right one a success.
   * The user's and the address's turns at the gate are kept until then. Without this a client
   * that sent `LOGIN user guess` and reset the connection had every guess checked by the
   * directory (which goes on to the end of its bind), none counted, and none waiting for a turn:
   * any number of distinct passwords per user, at once, past `failures_per_user` and unseen but
   * by the directory's own lockout. The turns are kept at most as long as the directory's
   * deadlines allow a search and a bind on two servers; the answer is counted whenever it comes.
   */
  private abandonedCheck(checking: Promise<DirectoryUser>, attempt: LoginAttempt, secret: string, leaveGate: (failureCounted?: boolean) => void, typed: string | undefined, config: Config): void {
    const throttle = this.context.throttle();
    const { connectTimeoutMs, operationTimeoutMs } = config.directory;
    // Its outcome unknown then: left as a failure would leave it (the address's checks in flight count it).
    const timer = setTimeout(() => leaveGate(), 2 * (connectTimeoutMs + 2 * operationTimeoutMs));
    timer.unref();
    const leave = (failureCounted: boolean): void => {
      clearTimeout(timer);
      leaveGate(failureCounted);
    };
    checking.then(
      () => {
        void throttle.recordSuccess(attempt);
        leave(false);
      },
      async (caught: unknown) => {
        const error = asMailfrontError(caught);
        if (error.kind !== 'auth-failed') return leave(false);
        this.context.metrics.authFailure(authFailureReason(error.code));
        // As session.login_failed names a master login: the mailbox's user, and the staff member whose password it was.
        this.log.info({ event: 'session.abandoned_login_failed', protocol: this.adapter.name, ...userFields(typed, typed), ...this.masterFields(), code: error.code, ...this.clientFields(), listener: this.listenerName }, 'a login its client abandoned was refused by the directory: counted as a failure');
        await throttle.recordFailure(attempt, secret).catch(() => undefined);
        leave(true);
      },
    );
  }

  /**
   * Logs in to the store's current master. While the master is unreachable the login is held
   * and retried, reading the store map afresh each time so that a failover during the wait is
   * followed. A failover off the slot while the login is connecting or logging in to it (a
   * master that accepts connections and never greets, say) cuts that attempt short and the
   * login goes on at once with the new master. A login that completes on a slot that stopped
   * being master meanwhile is dropped and retried: no session is ever spliced to a demoted master.
   * A kick of the user (registry.userKicked) stops the login at once, held or not: null.
   */
  private async loginToCurrentMaster(storeName: string, identity: LoginIdentity, password: string, config: Config, kicksAtLogin: number): Promise<BackendSession | null> {
    const deadline = performance.now() + config.failover.holdMs;
    const registry = this.context.registry;
    const session = this.cancellation;
    // A master that moves is followed at least once, whatever the hold (hold_ms 0, or an attempt
    // that outlasted it); after that, only within the hold.
    let movesFollowed = 0;
    const follow = (): void => {
      if (movesFollowed++ > 0 && performance.now() >= deadline) throw new MailfrontError('MASTER_KEEPS_CHANGING', 'no-route', `store "${storeName}" changed its master during every login attempt`);
    };
    // A backend that closed in answer to the login: a crash is waited for like any outage, but a
    // backend that closes on this login every time is not asked a third time.
    let closedAfterLogin = 0;
    for (let attempt = 1; ; attempt++) {
      throwIfCancelled(session, 'the session ended while its login was under way');
      // A kick between two attempts (a master that changed as a login completed) stopped none.
      if (this.kickedSince(identity.name, identity.dn, kicksAtLogin)) return null;
      const { store, slot } = this.context.storeMap().currentMaster(storeName);
      this.slot = slot.name;
      this.server = slot;
      // The attempt's own cancellation: the session's end, a failover off this slot, or a kick.
      const cancel = new Canceller();
      const sessionEnded = (): void => cancel.abort();
      session.addEventListener('abort', sessionEnded);
      let moved = false;
      let kicked = false;
      const watch: BackendAttempt = {
        store: storeName,
        slot: slot.name,
        protocol: this.adapter.name,
        user: identity.name,
        dn: identity.dn,
        ...(this.master?.dn !== undefined ? { master: { user: this.master.user, dn: this.master.dn } } : {}),
        kicksAtLogin,
        stop: (why) => {
          if (why === 'kicked') kicked = true;
          else moved = true;
          cancel.abort();
        },
        attemptPlace: -1,
      };
      registry.attemptStarted(watch);
      try {
        const backend = await this.connectBackend(slot, store.backend, identity, password, cancel);
        let now: Slot;
        try {
          now = this.context.storeMap().currentMaster(storeName).slot;
        } catch (caught) {
          // The store went into maintenance (or left the map) as the login completed.
          backend.socket.destroy();
          throw caught;
        }
        if (sameServer(now, slot, this.adapter.name)) return backend;
        backend.socket.destroy();
        follow();
        this.log.warn({ event: 'session.master_changed_during_login', store: storeName, slot: slot.name, currentMaster: now.name }, 'the master changed during backend login; following it');
      } catch (caught) {
        const error = asMailfrontError(caught);
        throwIfCancelled(session, 'the session ended while its backend login was under way');
        if (kicked) return null;
        // Failed, or cut short, on a slot that is no longer the master: on to the new one now. A
        // store that went into maintenance meanwhile (which cuts the attempt short too) throws
        // its refusal here: a login held for its master is not routed once the operator says so.
        const now = this.context.storeMap().currentMaster(storeName).slot;
        if (moved || !sameServer(now, slot, this.adapter.name)) {
          follow();
          this.log.warn({ event: 'session.master_changed_during_login', store: storeName, slot: slot.name, currentMaster: now.name, err: error.message }, 'the master changed during backend login; following it');
          continue;
        }
        if (error.code === CLOSED_AFTER_LOGIN && ++closedAfterLogin > 1) throw new MailfrontError(error.code, 'backend-login', `${error.message}, twice`, { cause: error });
        if (!isRetryable(error.kind) || performance.now() >= deadline) throw error;
        this.log.warn({ event: 'session.backend_retry', store: storeName, slot: slot.name, attempt, err: error.message }, 'current master unreachable; holding the login');
        this.heldFor = error;
        this.loginWaitsOn = error.kind;
        // The attempt's cancellation: a kick or a failover during the wait ends it at once.
        await delay(Math.min(250 * attempt, 1_000, deadline - performance.now()), cancel);
        throwIfCancelled(session, 'the session ended while its login was held');
        if (kicked) return null;
      } finally {
        registry.attemptEnded(watch);
        session.removeEventListener('abort', sessionEnded);
      }
    }
  }

  private async connectBackend(slot: Slot, storeBackend: Config['backend'], identity: LoginIdentity, password: string, cancel: Cancellation): Promise<BackendSession> {
    const backendConfig = backendFor(this.adapter.name, storeBackend);
    const user = identity.name;
    // A master login has the staff member's password, not the target's: only a login mode in
    // which the backend believes the name it is sent (the proxy account's word) can open the
    // target's mailbox. Checked before the slot is dialled, at every attempt (the store map may change).
    // Likewise a bearer login: mailfront has the user's token, which is no password for the backend.
    if (this.bearerAttempt !== undefined && backendConfig.loginMode === 'replay') {
      throw new MailfrontError(OAUTH_NEEDS_TRUST_MODE, 'config', `"${user}" logged in with an OAuth token (${this.bearerAttempt}), and store "${slot.store}" logs in with login_mode replay: an OAuth login needs master-user or sasl-authzid (a token is no password to replay)`, { clientText: OAUTH_NEEDS_TRUST_MODE_TEXT });
    }
    if (this.master !== undefined && backendConfig.loginMode === 'replay') {
      throw new MailfrontError(MASTER_NEEDS_TRUST_MODE, 'config', `"${this.master.user}" asked to log in as "${user}", whose store "${slot.store}" logs in with login_mode replay: a master login needs master-user or sasl-authzid (mailfront does not have the target's password)`, { clientText: MASTER_NEEDS_TRUST_MODE_TEXT });
    }
    // An entry without a name of its own: master-user and sasl-authzid would assert the name
    // typed on the proxy account's word, and that may be another user's (an alias). replay goes
    // on with it: the backend checks the user's password against that name itself.
    if (!identity.fromEntry && backendConfig.loginMode !== 'replay') {
      throw new MailfrontError(
        'USER_WITHOUT_LOGIN_NAME',
        'auth-tempfail',
        identity.attribute === undefined
          ? `directory.login_attribute is not set and user_filter compares {user} with no one attribute (an alias may match), so the name of the directory entry ${identity.dn} is not known, and login_mode ${backendConfig.loginMode} of store "${slot.store}" asserts the entry's name to the backend, never the name typed ("${user}"); set directory.login_attribute to the attribute holding the name the backend knows users by`
          : `the directory entry ${identity.dn} has no ${identity.attribute} (directory.login_attribute)${identity.unusable > 0 ? ` that is a user name under usernames (${identity.unusable} ${identity.unusable === 1 ? 'value is' : 'values are'} not)` : ''}, and login_mode ${backendConfig.loginMode} of store "${slot.store}" asserts the entry's name to the backend, never the name typed ("${user}"); set directory.login_attribute to the attribute holding the name the backend knows users by (on Active Directory, sAMAccountName or userPrincipalName)`,
      );
    }
    // Checked before the slot is dialled: nothing of such a login reaches the backend. Kind
    // not-authorized: the password was right, so it is no failure for the throttle; a name of
    // the directory that is also the backend's administrator or the proxy account is a setup
    // the operator must change (an error line).
    const identityProblem = assertedIdentityProblem(user, backendConfig);
    if (identityProblem !== null) throw new MailfrontError(IDENTITY_REFUSED, 'not-authorized', `user "${user}" of store "${slot.store}" not logged in: ${identityProblem}`);
    const metrics = this.context.metrics;
    const connectStarted = performance.now();
    this.loginWaitsOn = 'connect';
    let socket: Socket;
    try {
      const proxyHeader = backendProxyHeader(backendConfig.proxyProtocol, { address: this.clientAddress, port: this.clientPort }, this.endpoints);
      socket = await dialSlot(slot, this.adapter.name, backendConfig, cancel, proxyHeader);
      metrics.backendConnect(slot.store, 'success', (performance.now() - connectStarted) / 1000);
    } catch (caught) {
      const error = asMailfrontError(caught);
      // mailfront's own limits (descriptors, local ports) are no failure of the store's slot.
      if (error.kind !== 'local-resources') metrics.backendConnect(slot.store, backendFailureResult(error.code, error.kind), (performance.now() - connectStarted) / 1000);
      throw error;
    }
    this.log.debug({ event: 'session.backend_connected', store: slot.store, slot: slot.name }, 'backend connected');
    const loginStarted = performance.now();
    const machine = this.adapter.createBackendLogin({
      mode: backendConfig.loginMode,
      user,
      password,
      ...(backendConfig.proxyUser !== undefined ? { proxyUser: backendConfig.proxyUser } : {}),
      ...(backendConfig.proxyPassword !== undefined ? { proxyPassword: backendConfig.proxyPassword } : {}),
      masterUserSeparator: backendConfig.masterUserSeparator,
      starttls: backendConfig.tls === 'starttls',
      implicitTls: backendConfig.tls === 'implicit',
      ...(backendConfig.forwardClientAddress ? { forward: { ip: this.clientAddress, port: this.clientPort, sessionId: this.id } } : {}),
      clientId: backendConfig.forwardClientId ? (this.machine.clientId ?? null) : null,
    });
    this.loginWaitsOn = 'backend-login';
    try {
      const session = await loginToBackend(socket, slot, machine, backendConfig, cancel);
      metrics.backendLogin(slot.store, 'success', (performance.now() - loginStarted) / 1000);
      return session;
    } catch (caught) {
      const error = asMailfrontError(caught);
      metrics.backendLogin(slot.store, backendFailureResult(error.code, error.kind), (performance.now() - loginStarted) / 1000);
      throw error;
    }
  }

  /** Splices the session to its logged-in backend and counts the login (`started`: when it was read); false (the backend closed) when the session can no longer be. */
  private startSplice(backend: BackendSession, dn: string, kicksAtLogin: number, started: number): boolean {
    if (this.phase !== 'backend-login' || this.socket.destroyed) {
      backend.socket.destroy();
      return false;
    }
    clearTimeout(this.preauthTimer);
    this.preauthTimer = undefined;
    // The login is over: nothing is left to cancel.
    this.canceller = undefined;
    this.heldFor = undefined;
    // A guard on what the client sends, where the backend needs one; the login reply then shows
    // the capabilities without the commands it refuses.
    const guarded = this.adapter.createCommandGuard?.(backend.capabilities) ?? null;
    this.commandGuard = guarded?.guard;
    const success = this.machine.loginSucceeded(guarded?.capabilities ?? backend.capabilities);
    // The pre-auth machine and its buffers are never used again: let them go (memory per idle session).
    this.machine = SPLICED;
    this.detachPreauth(this.socket);
    this.setPhase('spliced');
    this.lease.loggedIn();
    const alert = this.passwordAlert();
    this.preauthBytesWritten += writeNow(this.socket, alert?.state === 'told' && this.adapter.loginAlert !== undefined ? `${this.adapter.loginAlert(alert.text)}${success.reply}` : success.reply);
    const loginMs = performance.now() - started;
    // Commands the client sent behind its login were read here but reach the backend through
    // the splice, which counts them as its own.
    this.preauthBytesRead -= success.pipelined.length;
    const running = splice(this.socket, backend.socket, success.pipelined, backend.leftover, this.context.config().session.idleTimeoutMs, this.adapter.createResponseTracker?.() ?? null, guarded?.guard ?? null, guarded?.notice ?? null);
    this.splice = running;
    const entry: SplicedSessionEntry = new SplicedSessionEntry(
      {
        id: this.id,
        protocol: this.adapter.name,
        user: this.user ?? '',
        dn,
        ...(this.master?.dn !== undefined ? { master: { user: this.master.user, dn: this.master.dn } } : {}),
        kicksAtLogin,
        store: this.store ?? '',
        slot: this.slot ?? '',
        server: this.server!,
        clientAddress: this.clientAddress,
        startedAt: this.startedAt,
      },
      running,
      (reason, hold) => {
        // Already ending (a kick, then a drain's turn): one line, one close.
        if (running.ending) return;
        // Drained from a store in maintenance: told the store's reason, not that it moved.
        const maintenance = reason === 'drained' ? (this.context.storeMap().stores.get(entry.store)?.maintenance ?? null) : null;
        // Kicked because the directory holds the user: told the hold's reason, as its logins are.
        const held = reason === 'kicked' ? hold : undefined;
        this.log.info({ event: reason === 'kicked' ? 'session.kicked' : 'session.drained', ...userFields(this.user, this.typedUser), ...this.masterFields(), store: this.store, slot: this.slot, ...(maintenance !== null ? { maintenance: true } : {}), ...(held !== undefined ? { held: true } : {}) }, `session closed: ${reason}`);
        running.close(reason, this.adapter.drainNotice(maintenance ?? held ?? (reason === 'drained' ? 'Mailbox moved to another server, please reconnect' : KICKED_TEXT)));
      },
    );
    this.entry = entry;
    this.context.registry.add(entry);
    // The one info line of a login (session.started and session.authenticated are debug): who, how, from where, to where.
    // A master login's too, with the staff member and entry: the audit record of a staff member in
    // another user's mailbox (the backend's log names the target only).
    // With the password policy's warning: whether the client was told (passwordAlert).
    const warned = alert === undefined || this.passwordWarning === undefined ? {} : { passwordWarning: this.passwordWarning.warning.kind, passwordAlert: alert.state };
    this.log.info({ event: 'session.spliced', protocol: this.adapter.name, ...userFields(this.user, this.typedUser), ...this.masterFields(), mechanism: this.mechanism, store: this.store, slot: this.slot, ...this.clientFields(), listener: this.listenerName, tls: this.tlsActive, loginMs: Math.round(loginMs), ...warned }, 'spliced to backend');
    this.context.metrics.loginResult(this.adapter.name, 'success', loginMs / 1000);
    if (this.masterAttempt) this.context.metrics.masterLogin(this.adapter.name, 'success');
    if (this.bearerAttempt !== undefined) this.context.metrics.oauthLogin(this.adapter.name, this.bearerAttempt, 'success');
    void running.ended.then((reason) => this.finish(reason));
    return true;
  }

  /**
   * What the client of a login let in with a password policy warning is told, now that its login
   * succeeded (directory.password_policy's alerts): `protocol` when it has no way to tell it
   * (POP3, ManageSieve), `off` when nothing keeps track of whom this instance told; undefined
   * without a warning. Asked once per login, as its answer is sent: an alert it says is `told`
   * counts as told, lest the next connection of the same client tell it again.
   */
  private passwordAlert(): PasswordAlert | { readonly state: 'protocol' } | undefined {
    const warned = this.passwordWarning;
    if (warned === undefined) return undefined;
    if (this.adapter.loginAlert === undefined) return { state: 'protocol' };
    const alerts = this.context.passwordAlerts;
    if (alerts === undefined) return { state: 'off' };
    const { directory } = this.context.config();
    // A reload that turned the policy off while this login waited on its backend: nothing is told
    // (the defaults are only for a policy on, set up without the config reader).
    if (directory.passwordPolicy === false) return { state: 'off' };
    return alerts.take(warned.warning, warned.dn, directory.passwordAlerts ?? DEFAULT_PASSWORD_ALERTS, directory.cacheMaxEntries);
  }

  /** Ends the session exactly once: timers, sockets, registry, one log line. */
  private finish(reason: SessionEndReason): void {
    if (this.phase === 'closing') return;
    const phaseAtEnd = this.phase;
    this.phase = 'closing';
    clearTimeout(this.preauthTimer);
    this.canceller?.abort();
    // The splice counts its own bytes (its direct relay writes past the socket's counters); what
    // the scrapes have not yet taken goes to the counter now.
    if (this.entry) {
      this.context.registry.remove(this.entry);
      this.context.metrics.splicedTraffic(this.entry);
      this.entry.letGo();
    }
    const spliced = this.splice;
    this.tracker.ended(reason);
    if (phaseAtEnd !== 'spliced') {
      // Let a final BYE/-ERR flush, but never wait on a client that does not read.
      if (!this.socket.destroyed) {
        this.socket.end();
        destroyAfterGrace(this.socket);
      }
    }
    if (reason === 'command-refused') {
      // A client trying to log out of the backend login mailfront made, to log in there again.
      const command = this.commandGuard?.refused ?? 'UNAUTHENTICATE';
      this.log.warn({ event: 'session.command_refused', command, protocol: this.adapter.name, ...userFields(this.user, this.typedUser), ...this.masterFields(), store: this.store, slot: this.slot, client: this.clientAddress }, `the client sent ${command}: session closed, the command not passed on`);
    }
    this.log.info(
      {
        event: 'session.finished',
        reason,
        phase: phaseAtEnd,
        protocol: this.adapter.name,
        ...userFields(this.user, this.typedUser),
        ...this.masterFields(),
        store: this.store,
        slot: phaseAtEnd === 'spliced' ? this.slot : undefined,
        ...this.clientFields(),
        clientPort: this.clientPort,
        listener: this.listenerName,
        bytesFromClient: this.preauthBytesRead + (spliced?.bytesFromClient ?? 0),
        bytesToClient: this.preauthBytesWritten + (spliced?.bytesToClient ?? 0),
        durationMs: Math.round(performance.now() - this.acceptedAt),
      },
      'session finished',
    );
    this.context.onEnd?.(reason, this);
  }
}
