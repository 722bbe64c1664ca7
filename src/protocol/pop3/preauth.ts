/**
 * The POP3 pre-auth state machine for one client connection (RFC 1939 AUTHORIZATION state,
 * RFC 2449 CAPA, RFC 2595 STLS, RFC 5034 AUTH). Sans-I/O: bytes in, PreauthActions out.
 * It owns the client's pre-auth dialogue and its limits; it must not touch sockets, timers,
 * the directory, config or logs, and it never decides whether credentials are valid.
 */

import {
  MAX_AUTHENTICATE_LINE_BYTES,
  MAX_AUTH_ATTEMPTS,
  MAX_BAD_COMMANDS,
  MAX_LINE_BYTES,
  MAX_PIPELINED_BYTES,
  MAX_PIPELINED_HELD_BYTES,
  MAX_PREAUTH_COMMANDS,
} from '../../limits.js';
import {
  BEARER_MECHANISMS,
  bearerFailureChallenge,
  decodeBearer,
  decodeLoginField,
  decodePlain,
  hasUnsafeCharacters,
  isBearerMechanism,
  LOGIN_PASSWORD_CHALLENGE,
  LOGIN_USERNAME_CHALLENGE,
} from '../sasl.js';
import type { BearerMechanism } from '../sasl.js';
import type {
  BearerCredentials,
  Credentials,
  LoginRefusal,
  LoginSuccess,
  PreauthAction,
  PreauthCloseReason,
  PreauthMachine,
  PreauthOptions,
} from '../types.js';
import { latin1 } from '../bytes.js';
import { LineReader, lineText, oneLine, strictLineText } from './lines.js';
import { SHUTTING_DOWN_TEXT, countsAsFailedLogin } from '../rules.js';

/**
 * Where the machine is. 'awaiting-login': a 'login' action is out and input is only buffered;
 * 'tls-pending': STLS was answered and input is discarded until the handshake completes.
 */
export type Pop3PreauthState =
  | 'command'
  | 'sasl-plain'
  | 'sasl-login-user'
  | 'sasl-login-password'
  | 'sasl-bearer' // AUTH OAUTHBEARER / XOAUTH2 without an initial response: reading it
  | 'sasl-bearer-refused' // a token refused and its error challenge sent: the next line gets the -ERR (RFC 7628 §3.2.3)
  | 'awaiting-login'
  | 'tls-pending'
  | 'spliced'
  | 'closed';

// RFC 2449 §4 raises RFC 1939's command length (47 octets) to 255 octets, but RFC 5034 SASL
// responses are not commands, and clients in the wild send longer AUTH PLAIN initial responses
// (long passwords and user names), so the shared MAX_LINE_BYTES bounds every line instead. An
// AUTH line of a bearer mechanism and its SASL response lines carry an OAuth token, so
// MAX_AUTHENTICATE_LINE_BYTES bounds them, where those mechanisms are offered (oauth2 set).
const LINE_LIMIT_BYTES = MAX_LINE_BYTES;

/** The starts of AUTH lines of the bearer mechanisms (the initial response follows). */
const BEARER_AUTH_HEADS = BEARER_MECHANISMS.map((mechanism) => `AUTH ${mechanism} `);
const BEARER_AUTH_HEAD_BYTES = Math.max(...BEARER_AUTH_HEADS.map((head) => head.length));

// Verbs of protocols that a browser or a confused client may aim at a POP3 port. A POP3 server
// that answers them line by line can be abused in cross-protocol attacks (an HTML form posting
// to port 110 makes the server "execute" the body; ALPACA-style reflection of our replies into
// another protocol), so such a connection ends at the first such line, without any reply.
const FOREIGN_PROTOCOL_VERBS = new Set([
  'GET', 'POST', 'PUT', 'HEAD', 'OPTIONS', 'CONNECT', 'DELETE', 'PATCH', 'TRACE', 'PRI', // HTTP
  'HELO', 'EHLO', // SMTP
]);

const CRLF = '\r\n';

// RFC 3206 §5: [AUTH] covers "an attempt to authenticate in violation of policy", which is what
// plaintext credentials on a non-secure connection are. [SYS/PERM] would make clients report a
// server fault, and RFC 3206 has no equivalent of IMAP's [PRIVACYREQUIRED].
const PLAINTEXT_REFUSED = '[AUTH] Plaintext authentication disallowed on non-secure connections';

// One fixed text whatever the cause, so that an unknown user and a wrong password look the same.
const AUTH_FAILED_LINE = '-ERR [AUTH] Authentication failed.';
const NOT_AUTHORIZED_LINE = '-ERR [AUTH] Authorization failed.';

/** The POP3 pre-auth machine; create one per client connection. */
export class Pop3Preauth implements PreauthMachine {
  readonly #options: PreauthOptions;
  readonly #input = new LineReader();
  #state: Pop3PreauthState = 'command';
  #tlsActive: boolean;
  #pendingUser: string | null = null;
  #saslLoginUser = '';
  /** The bearer mechanism of the exchange under way, or of the pending login when it is a bearer login. */
  #bearer: BearerMechanism | null = null;
  #commands = 0;
  #badCommands = 0;
  #failedLogins = 0;

  constructor(options: PreauthOptions) {
    this.#options = options;
    this.#tlsActive = options.tlsActive;
  }

  /** The current state, for logs and tests. */
  get state(): Pop3PreauthState {
    return this.#state;
  }

  get loginPending(): boolean {
    return this.#state === 'awaiting-login';
  }

  get inputFull(): boolean {
    return this.#state === 'awaiting-login' && this.#input.pendingBytes >= MAX_PIPELINED_BYTES;
  }

  greeting(): PreauthAction[] {
    // No APOP timestamp (RFC 1939 §7): APOP's digest binds the password to our challenge, so
    // it could never be replayed to a backend.
    const text = oneLine(this.#options.greetingText);
    return [send(text.length > 0 ? `+OK ${text}` : '+OK')];
  }

  receive(chunk: Uint8Array): PreauthAction[] {
    switch (this.#state) {
      case 'tls-pending':
        // STARTTLS command injection (CVE-2011-0411 and kin): bytes that arrived before the
        // TLS handshake must never be read as commands sent under TLS.
        return [];
      case 'spliced':
      case 'closed':
        return [];
      case 'awaiting-login':
        this.#input.push(chunk);
        return this.#checkPipelinedBound();
      case 'command':
      case 'sasl-plain':
      case 'sasl-login-user':
      case 'sasl-login-password':
      case 'sasl-bearer':
      case 'sasl-bearer-refused':
        this.#input.push(chunk);
        return this.#drain();
    }
  }

  tlsStarted(): PreauthAction[] {
    if (this.#state !== 'tls-pending') return [];
    this.#tlsActive = true;
    this.#state = 'command';
    // RFC 2595 §4: the server sends no new greeting after STLS; the client issues CAPA again.
    return [];
  }

  loginSucceeded(_backendCapabilities: string | null): LoginSuccess {
    if (this.#state !== 'awaiting-login') {
      throw new Error(`pop3 preauth: loginSucceeded in state ${this.#state}`);
    }
    this.#state = 'spliced';
    this.#bearer = null;
    // RFC 2449 §6.6 PIPELINING: whatever the client sent after its PASS/AUTH is passed on
    // exactly as received, for the backend to answer after the splice.
    return { reply: '+OK Logged in.\r\n', pipelined: this.#input.takeAll() };
  }

  loginFailed(refusal: LoginRefusal, text?: string): PreauthAction[] {
    if (this.#state !== 'awaiting-login') return [];
    const bearer = this.#bearer;
    this.#bearer = null;
    if (bearer !== null && refusal === 'auth-failed') {
      // Counted once the client has answered the error challenge, with the -ERR.
      return [...this.#refuseBearer(bearer), ...this.#drain()];
    }
    const actions: PreauthAction[] = [send(refusalLine(refusal, text))];
    if (countsAsFailedLogin(refusal)) this.#failedLogins++;
    if (this.#failedLogins >= MAX_AUTH_ATTEMPTS) {
      actions.push(...this.#close('limit'));
      return actions;
    }
    this.#state = 'command';
    this.#pendingUser = null;
    actions.push(...this.#drain());
    return actions;
  }

  timedOut(refusal: LoginRefusal = 'unavailable', text?: string): PreauthAction[] {
    return this.#lastWords(refusal, text, `-ERR No login within the time allowed${CRLF}`, 'timeout');
  }

  shuttingDown(refusal?: LoginRefusal, text?: string): PreauthAction[] {
    // A login refused already is answered so first; one undecided is answered by the -ERR itself,
    // POP3's one answer to its PASS or AUTH. Worded as the other temporary answers ("wait"):
    // fetchmail reads the words, not the code.
    return this.#lastWords(refusal, text, `-ERR [SYS/TEMP] ${SHUTTING_DOWN_TEXT}${CRLF}`, 'shutdown');
  }

  evicted(goodbye: string, refusal?: LoginRefusal, text?: string): PreauthAction[] {
    // As at a stop: a wrong password's -ERR [AUTH] first (fetchmail would otherwise retry the
    // same password, the -ERR [SYS/TEMP] taken for an outage); one undecided, the -ERR answers it.
    return this.#lastWords(refusal, text, goodbye, 'evicted');
  }

  /**
   * The session's end before login (the deadline, a stop, an eviction): a login under way is
   * answered first with `refusal` (none: `goodbye` answers it), and what the client pipelined
   * behind it is not run; then `goodbye` (whole lines, CRLF included) and the close.
   */
  #lastWords(refusal: LoginRefusal | undefined, text: string | undefined, goodbye: string, reason: PreauthCloseReason): PreauthAction[] {
    if (this.#state === 'closed' || this.#state === 'spliced') return [];
    const pending = this.#state === 'awaiting-login' && refusal !== undefined ? [send(refusalLine(refusal, text))] : [];
    return [...pending, { type: 'send', data: goodbye }, ...this.#close(reason)];
  }

  #close(reason: PreauthCloseReason): PreauthAction[] {
    this.#state = 'closed';
    this.#input.clear();
    return [{ type: 'close', reason }];
  }

  #checkPipelinedBound(): PreauthAction[] {
    if (this.#input.pendingBytes <= MAX_PIPELINED_HELD_BYTES) return [];
    return [send('-ERR Too much input during login'), ...this.#close('limit')];
  }

  /** Handles every complete line held, until the machine has to wait. */
  #drain(): PreauthAction[] {
    const actions: PreauthAction[] = [];
    for (;;) {
      switch (this.#state) {
        case 'awaiting-login':
          actions.push(...this.#checkPipelinedBound());
          return actions;
        case 'tls-pending':
          this.#input.clear();
          return actions;
        case 'spliced':
        case 'closed':
          return actions;
        case 'command':
        case 'sasl-plain':
        case 'sasl-login-user':
        case 'sasl-login-password':
        case 'sasl-bearer':
        case 'sasl-bearer-refused':
          break;
      }
      const line = this.#input.takeLine();
      if (line === null) {
        // A line that has reached the limit without its end can only be too long: refuse it
        // now instead of buffering more of it.
        if (this.#input.pendingBytes >= this.#lineLimit(this.#input.head(BEARER_AUTH_HEAD_BYTES))) actions.push(...this.#lineTooLong());
        return actions;
      }
      if (line.wireBytes > this.#lineLimit(line.content)) {
        actions.push(...this.#lineTooLong());
        return actions;
      }
      const state = this.#state;
      if (state === 'command') {
        // USER and PASS take their arguments from the line as they are; a line that is not
        // UTF-8 is still read (its verb may be anything) but never gives credentials.
        const strict = strictLineText(line.content);
        actions.push(...this.#command(strict ?? lineText(line.content), strict !== null));
      } else {
        // A SASL response is base64: bytes that are not UTF-8 are not base64 either.
        actions.push(...this.#saslResponse(state, lineText(line.content)));
      }
    }
  }

  /** The bound of the line starting with `head`: wider for a bearer mechanism's AUTH line and SASL responses, where they are offered. */
  #lineLimit(head: Uint8Array): number {
    switch (this.#state) {
      case 'sasl-bearer':
      case 'sasl-bearer-refused':
        return MAX_AUTHENTICATE_LINE_BYTES;
      case 'command': {
        if (!this.#bearerOffered()) return LINE_LIMIT_BYTES;
        const start = latin1(head.subarray(0, BEARER_AUTH_HEAD_BYTES)).toUpperCase();
        return BEARER_AUTH_HEADS.some((bearerHead) => start.startsWith(bearerHead)) ? MAX_AUTHENTICATE_LINE_BYTES : LINE_LIMIT_BYTES;
      }
      case 'sasl-plain':
      case 'sasl-login-user':
      case 'sasl-login-password':
      case 'awaiting-login':
      case 'tls-pending':
      case 'spliced':
      case 'closed':
        return LINE_LIMIT_BYTES;
    }
  }

  #lineTooLong(): PreauthAction[] {
    return [send('-ERR line too long'), ...this.#close('limit')];
  }

  #plaintextAllowed(): boolean {
    return this.#tlsActive || this.#options.plaintextWithoutTls;
  }

  #stlsOffered(): boolean {
    return this.#options.starttlsAvailable && !this.#tlsActive;
  }

  /** `utf8`: whether the line was valid UTF-8 (`text` is then exactly what the client sent). */
  #command(text: string, utf8: boolean): PreauthAction[] {
    const space = text.indexOf(' ');
    const verb = (space < 0 ? text : text.slice(0, space)).toUpperCase();
    const argument = space < 0 ? null : text.slice(space + 1);

    if (FOREIGN_PROTOCOL_VERBS.has(verb)) return this.#close('protocol-error');

    this.#commands++;
    if (this.#commands > MAX_PREAUTH_COMMANDS) {
      return [send('-ERR Too many commands'), ...this.#close('limit')];
    }

    switch (verb) {
      case 'CAPA':
        return [send(this.#capabilities())];
      case 'USER':
        return this.#user(argument, utf8);
      case 'PASS':
        return this.#pass(argument, utf8);
      case 'AUTH':
        return this.#auth(argument);
      case 'STLS':
        return this.#stls(argument);
      case 'QUIT':
        return [send('+OK Logging out'), ...this.#close('logout')];
      case 'APOP':
        return this.#bad('APOP is not supported');
      default:
        // NOOP, STAT and the rest are TRANSACTION-state commands (RFC 1939 §5).
        return this.#bad('Unknown command');
    }
  }

  #capabilities(): string {
    const lines = ['+OK Capability list follows'];
    // A bearer token is a credential as a password is: offered, and taken, only where PLAIN is.
    if (this.#plaintextAllowed()) lines.push('USER', `SASL ${this.#mechanisms().join(' ')}`);
    if (this.#stlsOffered()) lines.push('STLS');
    // TOP and UIDL are the backend's commands, offered by every backend mailfront logs in to
    // (Dovecot and Cyrus pop3d list them before login too). Clients decide from the pre-login
    // CAPA: Thunderbird uses TOP (headers only, size limits) and reads a failed UIDL by it.
    lines.push('TOP', 'UIDL', 'RESP-CODES', 'AUTH-RESP-CODE', 'PIPELINING', '.');
    return lines.join(CRLF);
  }

  #user(argument: string | null, utf8: boolean): PreauthAction[] {
    if (!this.#plaintextAllowed()) return this.#bad(PLAINTEXT_REFUSED);
    if (argument === null || argument.length === 0) return this.#bad('Missing user name');
    // Bytes that are not UTF-8 are refused as the SASL path refuses them (sasl.ts): decoded
    // leniently they would become U+FFFD, another name than the one the client sent.
    if (!utf8 || hasUnsafeCharacters(argument)) return this.#bad('[AUTH] Invalid characters in user name');
    this.#pendingUser = argument;
    return [send('+OK')];
  }

  #pass(argument: string | null, utf8: boolean): PreauthAction[] {
    if (!this.#plaintextAllowed()) return this.#bad(PLAINTEXT_REFUSED);
    const user = this.#pendingUser;
    if (user === null) return this.#bad('No user name given');
    this.#pendingUser = null;
    // As in the SASL path: a password that is not UTF-8 would reach the directory and the
    // backend altered (U+FFFD for each bad sequence), so it never becomes a login.
    if (!utf8) return this.#bad('[AUTH] Invalid characters in credentials');
    // RFC 1939 §7 leaves open whether a password may contain spaces; everything after the
    // single separating space is the password, spaces included.
    return this.#login({ user, password: argument ?? '', mechanism: 'USER-PASS' });
  }

  #auth(argument: string | null): PreauthAction[] {
    if (argument === null || argument.length === 0) {
      // Pre-RFC 5034 mechanism discovery (RFC 1734 clients such as older Outlook).
      const mechanisms = this.#plaintextAllowed() ? this.#mechanisms() : [];
      return [send(['+OK', ...mechanisms, '.'].join(CRLF))];
    }
    const words = argument.split(' ');
    if (words.length > 2 || words.some((w) => w.length === 0)) return this.#bad('Syntax error');
    const mechanism = (words[0] as string).toUpperCase();
    const initial = words[1];
    if (!this.#mechanisms().includes(mechanism)) return this.#bad('Unsupported authentication mechanism');
    if (!this.#plaintextAllowed()) return this.#bad(PLAINTEXT_REFUSED);
    this.#pendingUser = null;
    // RFC 5034 §4: an initial response of "=" is an empty response.
    const response = initial === '=' ? '' : initial;
    if (isBearerMechanism(mechanism)) {
      this.#bearer = mechanism;
      if (response !== undefined) return this.#bearerResponse(mechanism, response);
      this.#state = 'sasl-bearer';
      return [send('+ ')];
    }
    if (mechanism === 'PLAIN') {
      if (response !== undefined) return this.#plainResponse(response);
      this.#state = 'sasl-plain';
      return [send('+ ')];
    }
    if (response !== undefined) return this.#loginUserResponse(response);
    this.#state = 'sasl-login-user';
    return [send(`+ ${LOGIN_USERNAME_CHALLENGE}`)];
  }

  /** OAUTHBEARER and XOAUTH2 are offered (and so taken): with oauth2, where plaintext credentials are allowed. */
  #bearerOffered(): boolean {
    return this.#options.oauth === true && this.#plaintextAllowed();
  }

  /** The SASL mechanisms offered (where plaintext credentials are allowed). */
  #mechanisms(): string[] {
    return this.#options.oauth === true ? ['PLAIN', 'LOGIN', ...BEARER_MECHANISMS] : ['PLAIN', 'LOGIN'];
  }

  #saslResponse(state: 'sasl-plain' | 'sasl-login-user' | 'sasl-login-password' | 'sasl-bearer' | 'sasl-bearer-refused', text: string): PreauthAction[] {
    this.#state = 'command';
    // RFC 7628 §3.2.3: whatever answers the error challenge (%x01, or a "*" that cancels what has
    // failed already), the exchange ends with the refusal, counted.
    if (state === 'sasl-bearer-refused') {
      this.#bearer = null;
      return this.#failedLocally();
    }
    // RFC 5034 §4: a line of "*" cancels the exchange, and the server answers -ERR.
    if (text === '*') {
      this.#saslLoginUser = '';
      this.#bearer = null;
      return [send('-ERR Authentication cancelled')];
    }
    switch (state) {
      case 'sasl-bearer':
        return this.#bearerResponse(this.#bearer ?? 'OAUTHBEARER', text);
      case 'sasl-plain':
        return this.#plainResponse(text);
      case 'sasl-login-user':
        return this.#loginUserResponse(text);
      case 'sasl-login-password':
        return this.#loginPasswordResponse(text);
    }
  }

  #plainResponse(base64: string): PreauthAction[] {
    const decoded = decodePlain(base64);
    if (!decoded.ok) return this.#saslRefused(decoded.reason);
    const credentials: Credentials =
      decoded.authzid.length > 0
        ? { user: decoded.user, password: decoded.password, authzid: decoded.authzid, mechanism: 'PLAIN' }
        : { user: decoded.user, password: decoded.password, mechanism: 'PLAIN' };
    return this.#login(credentials);
  }

  #loginUserResponse(base64: string): PreauthAction[] {
    const decoded = decodeLoginField(base64);
    if (!decoded.ok) return this.#saslRefused(decoded.reason);
    if (decoded.value.length === 0) return this.#saslRefused('bad-format');
    this.#saslLoginUser = decoded.value;
    this.#state = 'sasl-login-password';
    return [send(`+ ${LOGIN_PASSWORD_CHALLENGE}`)];
  }

  #loginPasswordResponse(base64: string): PreauthAction[] {
    const user = this.#saslLoginUser;
    this.#saslLoginUser = '';
    const decoded = decodeLoginField(base64);
    if (!decoded.ok) return this.#saslRefused(decoded.reason);
    return this.#login({ user, password: decoded.value, mechanism: 'SASL-LOGIN' });
  }

  #bearerResponse(mechanism: BearerMechanism, base64: string): PreauthAction[] {
    const decoded = decodeBearer(mechanism, base64);
    if (!decoded.ok) {
      // A token that can be no token (too long, characters no token has) is refused as a wrong one is.
      if (decoded.reason === 'too-long' || decoded.reason === 'bad-characters') return this.#refuseBearer(mechanism);
      this.#bearer = null;
      return this.#saslRefused(decoded.reason);
    }
    if (decoded.user !== undefined && hasUnsafeCharacters(decoded.user)) {
      this.#bearer = null;
      return this.#saslRefused('bad-characters');
    }
    const credentials: BearerCredentials = decoded.user === undefined ? { token: decoded.token, mechanism } : { user: decoded.user, token: decoded.token, mechanism };
    this.#state = 'awaiting-login';
    return [{ type: 'bearer-login', credentials }];
  }

  /** Sends the bearer mechanism's error challenge: the client's next line gets the -ERR (RFC 7628 §3.2.3). */
  #refuseBearer(mechanism: BearerMechanism): PreauthAction[] {
    this.#bearer = mechanism;
    this.#state = 'sasl-bearer-refused';
    return [send(`+ ${bearerFailureChallenge(mechanism)}`)];
  }

  /** A refusal decided here (no login handed on), counted as a failed login. */
  #failedLocally(): PreauthAction[] {
    this.#failedLogins++;
    const actions: PreauthAction[] = [send(AUTH_FAILED_LINE)];
    if (this.#failedLogins >= MAX_AUTH_ATTEMPTS) actions.push(...this.#close('limit'));
    return actions;
  }

  #saslRefused(reason: 'bad-base64' | 'bad-format' | 'bad-characters'): PreauthAction[] {
    // RFC 5034 §4: a response that cannot be decoded is rejected with -ERR. Credentials with
    // CR, LF or NUL could never be sent to a backend safely, so they never become a login.
    return this.#bad(reason === 'bad-characters' ? '[AUTH] Invalid characters in credentials' : 'Invalid SASL response');
  }

  #login(credentials: Credentials): PreauthAction[] {
    if (hasUnsafeCharacters(credentials.user) || hasUnsafeCharacters(credentials.password)) {
      return this.#bad('[AUTH] Invalid characters in credentials');
    }
    if (credentials.password.length === 0) {
      // An empty password can never be right, and to an LDAP server it means an
      // unauthenticated bind that "succeeds" (RFC 4513 §5.1.2): refuse it here as well.
      this.#failedLogins++;
      const actions: PreauthAction[] = [send(AUTH_FAILED_LINE)];
      if (this.#failedLogins >= MAX_AUTH_ATTEMPTS) actions.push(...this.#close('limit'));
      return actions;
    }
    this.#state = 'awaiting-login';
    return [{ type: 'login', credentials }];
  }

  #stls(argument: string | null): PreauthAction[] {
    // "STLS " (an empty argument after the space) is taken, as Dovecot's pop3-login takes it (it reads no argument).
    if (argument !== null && argument !== '') return this.#bad('Syntax error');
    if (!this.#stlsOffered()) return this.#bad('STLS not available');
    this.#state = 'tls-pending';
    this.#pendingUser = null;
    this.#input.clear();
    return [send('+OK Begin TLS negotiation'), { type: 'starttls' }];
  }

  /** Answers a bad command; the MAX_BAD_COMMANDS-th one also ends the connection. */
  #bad(text: string): PreauthAction[] {
    this.#badCommands++;
    if (this.#badCommands >= MAX_BAD_COMMANDS) {
      return [send('-ERR Too many invalid commands'), ...this.#close('protocol-error')];
    }
    return [send(`-ERR ${text}`)];
  }
}

function send(line: string): PreauthAction {
  return { type: 'send', data: line + CRLF };
}

function refusalLine(refusal: LoginRefusal, text: string | undefined): string {
  const given = text === undefined ? '' : oneLine(text);
  switch (refusal) {
    case 'auth-failed':
      return AUTH_FAILED_LINE;
    // The default texts say "wait": fetchmail reads a -ERR to a login as temporary by its words
    // alone ("wait", "lock", "service ... unavailable"), and any other as a wrong password.
    case 'unavailable':
      return `-ERR [SYS/TEMP] ${given || 'Temporary failure, please wait and try again later.'}`;
    case 'limit':
      // RFC 3206 has no code for throttling or connection limits; [SYS/TEMP] tells the client
      // the failure is temporary and not its password's fault, so it does not re-prompt.
      return `-ERR [SYS/TEMP] ${given || 'Too many connections or login attempts, please wait and try again later.'}`;
    case 'in-use':
      // RFC 2449 §8.1: [IN-USE] means the maildrop is locked by another session.
      return `-ERR [IN-USE] ${given || 'Mailbox is locked by another session.'}`;
    case 'login-delay':
      // RFC 2449 §8.1.2: [LOGIN-DELAY] means the user logged in too recently (a server's
      // minimum poll interval); the client should poll less often, not ask for a new password.
      return `-ERR [LOGIN-DELAY] ${given || 'Logged in too recently, please wait and try again later.'}`;
    case 'not-authorized':
      // RFC 3206 §5: [AUTH], a refusal for a reason of authentication or policy.
      return NOT_AUTHORIZED_LINE;
    // RFC 3206 has no code for an expired password: [AUTH], with the words that say so (no
    // "wait": the client should not retry it as a temporary failure).
    case 'expired':
      return `-ERR [AUTH] ${given || 'Your password has expired, please change it and log in again.'}`;
  }
}
