/**
 * The contract between the session orchestrator and a protocol adapter (IMAP, POP3, ManageSieve).
 * Adapters are sans-I/O: they take bytes and return actions; they own no socket, timer,
 * directory client or config object. Everything they need is passed in as plain options.
 */
import type { CommandGuard } from '../proxy/command-guard.js';

/** Credentials decoded from the client; `password` is a secret and must never be logged. */
export interface Credentials {
  /** The login name exactly as the client sent it (normalisation happens in auth/). */
  readonly user: string;
  readonly password: string;
  /** SASL authorization identity, when the client sent a non-empty one. */
  readonly authzid?: string;
  /** How the client authenticated: for logs and metrics only. */
  readonly mechanism: 'LOGIN' | 'PLAIN' | 'SASL-LOGIN' | 'USER-PASS';
}

/**
 * An OAuth 2.0 bearer token decoded from the client (OAUTHBEARER, RFC 7628, or XOAUTH2): the
 * token is a secret and must never be logged, nor sent to a backend as a password.
 */
export interface BearerCredentials {
  /** The user the client says the token is for (OAUTHBEARER's authzid, XOAUTH2's user=), as sent; absent when OAUTHBEARER names none. */
  readonly user?: string;
  readonly token: string;
  readonly mechanism: 'OAUTHBEARER' | 'XOAUTH2';
}

/** Why a login attempt did not succeed, as the session decided it; decides the wire text. */
export type LoginRefusal =
  | 'auth-failed' // wrong password or unknown user: one fixed text
  | 'unavailable' // directory or backend outage, user without a store: temporary failure
  | 'limit' // throttled or over a connection limit
  | 'in-use' // the backend says the mailbox is locked (POP3 [IN-USE])
  | 'login-delay' // the backend says the user logged in too recently (POP3 [LOGIN-DELAY])
  | 'not-authorized' // authenticated, but never let in under that name (a backend administrator's, the proxy account's)
  | 'expired'; // the password was right, but the directory says it expired or must be changed (RFC 5530 EXPIRED)

/** What the pre-auth machine asks the session to do, in order. */
export type PreauthAction =
  /** Write these bytes to the client. */
  | { readonly type: 'send'; readonly data: string }
  /**
   * Upgrade the client connection to TLS now (after the preceding sends are flushed).
   * The machine has already discarded every byte that followed the STARTTLS/STLS command;
   * the session must also discard anything it has read but not yet fed.
   */
  | { readonly type: 'starttls' }
  /**
   * Authenticate these credentials and log in to the backend. Until the session calls
   * `loginSucceeded` or `loginFailed`, the machine only buffers further input (see `inputFull`).
   */
  | { readonly type: 'login'; readonly credentials: Credentials }
  /**
   * Verify this bearer token, find its user and log in to the backend on the user's behalf; as
   * `login` otherwise. A refusal of the token (`auth-failed`) is answered with the mechanism's
   * error challenge, and the refusal once the client has answered it (RFC 7628 §3.2.3).
   */
  | { readonly type: 'bearer-login'; readonly credentials: BearerCredentials }
  /** The client sent ID parameters before login (IMAP); keys lower-cased. */
  | { readonly type: 'client-id'; readonly params: ReadonlyMap<string, string | null> }
  /** End the connection after the preceding sends; `reason` is a stable word for logs/metrics. */
  | { readonly type: 'close'; readonly reason: PreauthCloseReason };

export type PreauthCloseReason =
  | 'logout' // client said LOGOUT/QUIT
  | 'protocol-error' // unknown command before login, garbage, or too many bad commands
  | 'limit' // line, literal or command-count limit exceeded
  | 'timeout'
  | 'shutdown'
  | 'evicted'; // a full process closed the connection to admit a new one (evicted())

/** Facts about the client connection that change what the adapter offers. */
export interface PreauthOptions {
  /** The connection is already TLS (implicit TLS listener, or after STARTTLS). */
  readonly tlsActive: boolean;
  /** STARTTLS/STLS may be offered (the listener has a certificate and is not implicit TLS). */
  readonly starttlsAvailable: boolean;
  /** Plaintext credentials are accepted without TLS on this listener (trusted network). */
  readonly plaintextWithoutTls: boolean;
  /** OAUTHBEARER and XOAUTH2 are offered (oauth2 is configured), where PLAIN is. */
  readonly oauth?: boolean;
  /** Text after the greeting's OK, e.g. "mailfront ready". */
  readonly greetingText: string;
}

/** Result of a successful backend login as the client should see it. */
export interface LoginSuccess {
  /** Bytes to send to the client (tagged OK with the backend's post-login capabilities, or +OK). */
  readonly reply: string;
  /** Bytes the client sent after its login command, to be forwarded to the backend first. */
  readonly pipelined: Uint8Array;
}

/**
 * The client's own ID parameters (IMAP, RFC 2971) from its last ID before login, to go on to the
 * backend in mailfront's ID: field-value pairs encoded as IMAP strings, without the fields a
 * backend believes only from a trusted proxy (x-originating-ip, x-session-id, x-forward-*, …).
 */
export interface ForwardedClientId {
  /** The pairs, separated by spaces: the quoted ones first, then those with a literal ({N+}, 8-bit text). */
  readonly pairs: string;
  /** The length of the leading part of `pairs` without literals: what a backend that offers neither LITERAL+ nor LITERAL- gets. */
  readonly quotedLength: number;
}

/** A pre-auth state machine for one client connection. */
export interface PreauthMachine {
  /** A `login` action is out and not yet answered (loginSucceeded, loginFailed or timedOut). */
  readonly loginPending: boolean;
  /**
   * A login is pending and the machine holds MAX_PIPELINED_BYTES or more pipelined behind it:
   * the session reads no more of the client until this is false again (the login answered).
   * The machine closes the connection only past MAX_PIPELINED_HELD_BYTES.
   */
  readonly inputFull: boolean;
  /**
   * The client's ID parameters to forward (IMAP); absent or null when it sent none, or none that
   * may be forwarded. Read at login; cleared by STARTTLS.
   */
  readonly clientId?: ForwardedClientId | null;
  /** The greeting to send on accept (and nothing else). */
  greeting(): PreauthAction[];
  /** Feed bytes from the client; returns what to do. Never throws on any input. */
  receive(chunk: Uint8Array): PreauthAction[];
  /** The TLS handshake after a `starttls` action completed. */
  tlsStarted(): PreauthAction[];
  /**
   * The backend accepted the login. `backendCapabilities` is the backend's post-login
   * capability list (IMAP), or null when not applicable or unknown.
   */
  loginSucceeded(backendCapabilities: string | null): LoginSuccess;
  /** The login was refused; `text` is a human sentence (never a secret). Resumes processing buffered input. */
  loginFailed(refusal: LoginRefusal, text?: string): PreauthAction[];
  /**
   * The pre-auth deadline passed: a BYE/-ERR and a close; a login under way is answered first,
   * and nothing buffered behind it is run. Answered with `refusal` (and `text`, as loginFailed()
   * takes them) when the session has decided it already and waits out the failure delay;
   * otherwise, still undecided (the directory or the backend not answered), as unavailable. A
   * bearer token refused gets the mechanism's final refusal at once, without its error challenge.
   */
  timedOut(refusal?: LoginRefusal, text?: string): PreauthAction[];
  /**
   * The server is shutting down: a BYE/-ERR and a close; nothing buffered behind a login under
   * way is run. A login the session has decided already, waiting out the failure delay, gets its
   * `refusal` (and `text`) first, as timedOut() gives it: the stop cuts the delay short. One still
   * undecided gets an answer only where the goodbye is none: IMAP's untagged BYE leaves the tag
   * open, so the login is answered as unavailable first; POP3's -ERR and ManageSieve's BYE
   * (RFC 5804 §4, response-nobye) are the pending command's answer themselves, a temporary one.
   */
  shuttingDown(refusal?: LoginRefusal, text?: string): PreauthAction[];
  /**
   * The process is at max_connections and closes this connection, not logged in, to admit a new
   * one: `goodbye` (the adapter's connectionRefusal('total'), its line ending included) and a
   * close (`evicted`); nothing buffered behind a login under way is run. A login the session has
   * decided already, waiting out the failure delay, gets its `refusal` (and `text`) first, as
   * shuttingDown() gives it: a wrong password is not told as a full server. One still undecided
   * (waiting on the throttle or its turn) is answered as at a stop: IMAP's tag as unavailable
   * first; POP3's -ERR and ManageSieve's BYE answer the command themselves.
   */
  evicted(goodbye: string, refusal?: LoginRefusal, text?: string): PreauthAction[];
}

/** How mailfront logs in to a backend slot on the user's behalf. */
export type BackendLoginMode = 'replay' | 'master-user' | 'sasl-authzid';

export interface BackendLoginOptions {
  readonly mode: BackendLoginMode;
  /** The user as routed (normalised). */
  readonly user: string;
  /** The user's password (mode 'replay'). */
  readonly password: string;
  /** Proxy account: Dovecot master user (mode 'master-user') or Cyrus proxyservers account (mode 'sasl-authzid'). */
  readonly proxyUser?: string;
  readonly proxyPassword?: string;
  /** Separator between user and master user for 'master-user' LOGIN (Dovecot default '*'). */
  readonly masterUserSeparator?: string;
  /** Issue STARTTLS before logging in. */
  readonly starttls: boolean;
  /** The connection is TLS from its first byte (backend.tls: implicit): a password may go out without STARTTLS. */
  readonly implicitTls?: boolean;
  /** Forward the client's address (IMAP ID x-originating-ip / POP3 XCLIENT) when set. */
  readonly forward?: { readonly ip: string; readonly port: number; readonly sessionId: string };
  /** The client's own ID parameters, for the backend's ID after the forwarded address (IMAP); none when absent or null. */
  readonly clientId?: ForwardedClientId | null;
}

/** What the backend login machine asks the session to do. */
export type BackendAction =
  | { readonly type: 'send'; readonly data: Uint8Array }
  /** Upgrade the backend connection to TLS now; the machine discarded bytes after the OK. */
  | { readonly type: 'starttls' }
  /**
   * Logged in. `capabilities` is the post-login capability list (IMAP), whether the greeting offered
   * UNAUTHENTICATE (ManageSieve: "UNAUTHENTICATE" or ""), or null.
   * `leftover` are bytes the backend sent after the login reply (to relay to the client).
   */
  | { readonly type: 'done'; readonly capabilities: string | null; readonly leftover: Uint8Array }
  /**
   * Login failed. `refusal` classifies it (`limit`: the backend's own limit of the user's
   * connections, Dovecot's mail_max_userip_connections); `detail` is the backend's text for the
   * log (never shown to the client as is). `alerts`: the texts the backend's answer gave with
   * [ALERT] (IMAP: its tagged NO's, and untagged ones of the login's answer), each made safe for one
   * line and bounded, which must be presented to the user (RFC 9051 §7.1): the session passes them
   * on before its own refusal (ProtocolAdapter.loginAlert). Absent when there are none.
   */
  | { readonly type: 'fail'; readonly refusal: 'auth-failed' | 'unavailable' | 'in-use' | 'login-delay' | 'limit'; readonly detail: string; readonly alerts?: readonly string[] };

/** A backend login dialogue as explicit named states (the state name appears in logs). */
export interface BackendLoginMachine {
  readonly state: string;
  /**
   * True once the dialogue is past the greeting, the capabilities and STARTTLS, and the login
   * has gone out (with an ID or XCLIENT ahead of it, if any): the backend was reached and is
   * answering this login. A close or reset from then on is its refusal of this login (Dovecot
   * closes on a command too long for its input buffer), not an unreachable slot to wait for.
   */
  readonly loginSent: boolean;
  /** Feed bytes from the backend (the greeting first). */
  receive(chunk: Uint8Array): BackendAction[];
  /** The TLS handshake after a `starttls` action completed. */
  tlsStarted(): BackendAction[];
}

/**
 * Follows the backend-to-client byte stream of a spliced session (without changing it) to tell
 * whether a notice such as an untagged BYE could be inserted now without landing inside a
 * response or a literal.
 */
export interface ResponseBoundaryTracker {
  observe(chunk: Uint8Array): void;
  atBoundary(): boolean;
}

/** The protocols mailfront fronts. */
export type ProtocolName = 'imap' | 'pop3' | 'managesieve';

/** A protocol adapter: the per-protocol half of a session (a vtable, as in Dovecot's login proxy). */
export interface ProtocolAdapter {
  readonly name: ProtocolName;
  createPreauth(options: PreauthOptions): PreauthMachine;
  createBackendLogin(options: BackendLoginOptions): BackendLoginMachine;
  /**
   * Bytes to send a spliced client before closing it because its master was demoted, or null
   * when nothing can be sent safely mid-stream (POP3).
   */
  drainNotice(text: string): string | null;
  /**
   * The whole answer to a connection refused before its greeting because a connection limit
   * is reached: 'total' (the server is full) or 'address' (too many from this client). 'total'
   * is also the last word to a client whose login is cut short (a kick): an untagged BYE, or
   * POP3's -ERR [SYS/TEMP] as the answer to its PASS.
   */
  connectionRefusal(limit: 'total' | 'address', text: string): string;
  /**
   * A line telling the user `text` (an operator's, the session's: a password about to expire),
   * sent just before the reply of a login that succeeded: IMAP's untagged OK [ALERT], which a
   * client must show its user (RFC 9051 §7.1). Absent: the protocol has no such line (POP3, RFC
   * 2449 and 3206; ManageSieve, whose WARNINGS is about scripts, RFC 5804).
   */
  loginAlert?(text: string): string;
  /** A tracker for where drainNotice may be inserted; absent when there is no notice to insert. */
  createResponseTracker?(): ResponseBoundaryTracker;
  /**
   * A guard on what the spliced client sends (proxy/command-guard.ts), given the backend's
   * post-login capabilities (IMAP) or null, and the last words to a client it stops, and the
   * capabilities to show the client instead (without the commands the guard refuses); null when
   * the backend needs none.
   */
  createCommandGuard?(backendCapabilities: string | null): { readonly guard: CommandGuard; readonly notice: string; readonly capabilities?: string } | null;
}
