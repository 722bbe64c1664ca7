/**
 * The ManageSieve (RFC 5804) pre-auth state machine for one client connection: the capability
 * greeting, CAPABILITY, NOOP, LOGOUT, STARTTLS (with the capabilities re-sent after TLS) and
 * AUTHENTICATE (PLAIN, LOGIN, and OAUTHBEARER and XOAUTH2 when offered; with or without an
 * initial response), with every pre-auth bound.
 * It owns the client-facing wire text before login, in one place.
 * Must not: authenticate anyone, touch sockets, timers, config or logs; it only returns actions.
 */

import {
  MAX_AUTHENTICATE_LINE_BYTES,
  MAX_AUTH_ATTEMPTS,
  MAX_BAD_COMMANDS,
  MAX_LINE_BYTES,
  MAX_NONSYNC_LITERAL_BYTES,
  MAX_PIPELINED_BYTES,
  MAX_PIPELINED_HELD_BYTES,
  MAX_PREAUTH_COMMANDS,
  MAX_PREAUTH_LITERAL_BYTES,
  MAX_SASL_RESPONSE_BYTES,
} from '../../limits.js';
import { BEARER_MECHANISMS, bearerFailureChallenge, decodeBearer, decodeLoginField, decodePlain, hasUnsafeCharacters, isBearerMechanism, LOGIN_PASSWORD_CHALLENGE, LOGIN_USERNAME_CHALLENGE } from '../sasl.js';
import type { BearerMechanism } from '../sasl.js';
import type { BearerCredentials, Credentials, LoginRefusal, LoginSuccess, PreauthAction, PreauthCloseReason, PreauthMachine, PreauthOptions } from '../types.js';
import { oneLineText, SieveReader, sieveString, type SieveProblem, type SieveToken } from './wire.js';
import { SHUTTING_DOWN_PHRASE, countsAsFailedLogin } from '../rules.js';

type Phase =
  | 'command' // reading commands
  | 'sasl' // inside an AUTHENTICATE exchange, reading the client's SASL response strings
  | 'login-pending' // a 'login' action is out; input is only buffered
  | 'tls-pending' // STARTTLS accepted; input is discarded until the handshake is done
  | 'logged-in' // loginSucceeded: the session splices from here
  | 'closed';

interface SaslExchange {
  readonly mechanism: 'PLAIN' | 'LOGIN' | BearerMechanism;
  /** The LOGIN mechanism's user name once received. */
  user: string | null;
  /** A bearer token was refused and its error challenge sent: the next string is the client's dummy response, answered with the refusal (RFC 7628 §3.2.3). */
  refused?: true;
}

/**
 * The SIEVE capability offered before login: the extensions that both Dovecot Pigeonhole 0.5
 * and Cyrus timsieved 3.6 list. A proxy cannot know the user's backend before login, and clients
 * such as Roundcube's managesieve plugin build their filter editor from this list without asking
 * again, so it must never name an extension a backend lacks. After login, CAPABILITY is answered
 * by the backend itself, with its exact list (and OWNER).
 */
export const PREAUTH_SIEVE_EXTENSIONS: readonly string[] = [
  'fileinto', 'reject', 'envelope', 'encoded-character', 'vacation', 'subaddress', 'comparator-i;ascii-numeric',
  'relational', 'regex', 'imap4flags', 'copy', 'include', 'variables', 'body', 'enotify', 'environment', 'mailbox',
  'date', 'index', 'ihave', 'duplicate',
];

/** RFC 5804 commands of the authenticated state: refused by name before login. */
const AFTER_LOGIN_COMMANDS = new Set([
  'PUTSCRIPT', 'LISTSCRIPTS', 'SETACTIVE', 'GETSCRIPT', 'DELETESCRIPT', 'RENAMESCRIPT', 'CHECKSCRIPT', 'HAVESPACE', 'UNAUTHENTICATE',
]);

// RFC 5804 §4: clients send "{N+}" literals, which are never acknowledged; a "{N}" from a client
// gets no continuation either (the protocol has none), so both obey the non-synchronising bound.
const LITERAL_LIMIT_BYTES = Math.min(MAX_PREAUTH_LITERAL_BYTES, MAX_NONSYNC_LITERAL_BYTES);

const AUTH_FAILED_LINE = 'NO "Authentication failed."';
/** RFC 5804 has no response code for it: a plain NO. */
const NOT_AUTHORIZED_LINE = 'NO "Authorization failed."';

/** Texts for rejected lines (NO) and for lines that end the connection (BYE). */
const PROBLEM_TEXT: Record<SieveProblem, string> = {
  'empty-line': 'Empty command line.',
  syntax: 'Syntax error.',
  nul: 'NUL characters are not allowed.',
  'bad-utf8': 'Strings must be valid UTF-8.',
  'line-too-long': 'Line too long.',
  'literal-too-big': 'Literal too big.',
  'foreign-protocol': '',
};

/** The ManageSieve pre-auth machine; see PreauthMachine for the contract. */
export class ManageSievePreauth implements PreauthMachine {
  readonly #options: PreauthOptions;
  readonly #reader = new SieveReader({
    maxLineBytes: MAX_LINE_BYTES,
    maxLiteralBytes: LITERAL_LIMIT_BYTES,
    // AUTHENTICATE has two strings, each of which may be a literal.
    maxLineLiteralBytes: 2 * LITERAL_LIMIT_BYTES,
    strictUtf8: true,
    rejectForeignProtocols: true,
    // AUTHENTICATE of a bearer mechanism and the SASL responses after it: a response at its
    // largest (an OAuth token), quoted or as a literal, beside a mechanism name as long as any
    // other literal. Only while those mechanisms are offered (#run sets the reader's fields).
    authenticate: {
      maxLineBytes: MAX_AUTHENTICATE_LINE_BYTES,
      maxLiteralBytes: MAX_SASL_RESPONSE_BYTES,
      maxLineLiteralBytes: LITERAL_LIMIT_BYTES + MAX_SASL_RESPONSE_BYTES,
    },
  });
  #phase: Phase = 'command';
  #tlsActive: boolean;
  #sasl: SaslExchange | null = null;
  #commands = 0;
  #badCommands = 0;
  #failedLogins = 0;
  /** The pending login's bearer mechanism, when it is a bearer login: its refusal goes through the error challenge. */
  #pendingBearer: BearerMechanism | null = null;

  constructor(options: PreauthOptions) {
    this.#options = options;
    this.#tlsActive = options.tlsActive;
  }

  get loginPending(): boolean {
    return this.#phase === 'login-pending';
  }

  get inputFull(): boolean {
    return this.#phase === 'login-pending' && this.#reader.bufferedBytes >= MAX_PIPELINED_BYTES;
  }

  greeting(): PreauthAction[] {
    // RFC 5804 §1.7: the greeting is a capability response, ended by OK.
    const text = oneLineText(this.#options.greetingText);
    return [send(`${this.#capabilities()}OK${text === '' ? '' : ` ${sieveString(text, 'server')}`}\r\n`)];
  }

  receive(chunk: Uint8Array): PreauthAction[] {
    switch (this.#phase) {
      case 'command':
      case 'sasl':
        this.#reader.push(chunk);
        return this.#run([]);
      case 'login-pending':
        this.#reader.push(chunk);
        return this.#reader.bufferedBytes > MAX_PIPELINED_HELD_BYTES ? this.#tooMuchPipelined([]) : [];
      case 'tls-pending':
        // CVE-2011-0411 class: bytes that arrived before the TLS handshake must never be executed
        // after it, or a man in the middle could inject commands into the TLS session.
        return [];
      case 'logged-in':
      case 'closed':
        return [];
    }
  }

  tlsStarted(): PreauthAction[] {
    if (this.#phase !== 'tls-pending') return [];
    this.#tlsActive = true;
    this.#reader.reset();
    this.#phase = 'command';
    // RFC 5804 §2.2: after the handshake the server MUST re-issue the capability list, which
    // may have changed (SASL mechanisms, no STARTTLS).
    return [send(`${this.#capabilities()}OK "TLS negotiation successful."\r\n`)];
  }

  loginSucceeded(_backendCapabilities: string | null): LoginSuccess {
    if (this.#phase !== 'login-pending') throw new Error(`managesieve preauth: loginSucceeded in phase ${this.#phase}`);
    this.#phase = 'logged-in';
    this.#pendingBearer = null;
    // RFC 5804 §2.1 (ABNF response-authenticate): capabilities follow a successful AUTHENTICATE
    // only when a SASL security layer was negotiated, and MUST be omitted otherwise. PLAIN and
    // LOGIN have none, so the answer is a bare OK; a client that wants the post-login list
    // (it differs: OWNER, MAXREDIRECTS, the backend's own SIEVE list) sends CAPABILITY, which
    // the backend answers through the splice.
    return { reply: 'OK "Logged in."\r\n', pipelined: this.#reader.takeBuffered() };
  }

  loginFailed(refusal: LoginRefusal, text?: string): PreauthAction[] {
    if (this.#phase !== 'login-pending') return [];
    const out: PreauthAction[] = [];
    const bearer = this.#pendingBearer;
    this.#pendingBearer = null;
    if (bearer !== null && refusal === 'auth-failed') {
      // Counted once the client has answered the error challenge, with the NO.
      this.#refuseBearer(bearer, out);
      return this.#run(out);
    }
    push(out, refusalLine(refusal, text));
    this.#phase = 'command';
    if (countsAsFailedLogin(refusal) && this.#countFailedLogin(out)) return out;
    return this.#run(out);
  }

  timedOut(refusal: LoginRefusal = 'unavailable', text?: string): PreauthAction[] {
    return this.#lastWords(refusal, text, 'BYE "No login within the time allowed."\r\n', 'timeout');
  }

  shuttingDown(refusal?: LoginRefusal, text?: string): PreauthAction[] {
    // A login refused already is answered so first; one undecided is answered by the BYE itself
    // (RFC 5804 §4: BYE ends a command as NO does), TRYLATER.
    return this.#lastWords(refusal, text, `BYE (TRYLATER) "${SHUTTING_DOWN_PHRASE}."\r\n`, 'shutdown');
  }

  evicted(goodbye: string, refusal?: LoginRefusal, text?: string): PreauthAction[] {
    // As at a stop: a login refused already gets its NO first; one undecided, the BYE answers it.
    return this.#lastWords(refusal, text, goodbye, 'evicted');
  }

  /**
   * The session's end before login (the deadline, a stop, an eviction): a login under way is
   * answered first with `refusal` (none: `goodbye` answers it), and what the client pipelined
   * behind it is not run; then `goodbye` (whole lines, CRLF included) and the close.
   */
  #lastWords(refusal: LoginRefusal | undefined, text: string | undefined, goodbye: string, reason: PreauthCloseReason): PreauthAction[] {
    if (this.#phase === 'closed' || this.#phase === 'logged-in') return [];
    const out: PreauthAction[] = [];
    if (this.#phase === 'login-pending' && refusal !== undefined) {
      this.#pendingBearer = null;
      push(out, refusalLine(refusal, text));
    }
    pushBytes(out, goodbye);
    return this.#close(out, null, reason);
  }

  #plaintextAllowed(): boolean {
    return this.#tlsActive || this.#options.plaintextWithoutTls;
  }

  #starttlsOffered(): boolean {
    return this.#options.starttlsAvailable && !this.#tlsActive;
  }

  /** OAUTHBEARER and XOAUTH2 are offered (and so taken): with oauth2, where plaintext credentials are allowed. */
  #bearerOffered(): boolean {
    return this.#options.oauth === true && this.#plaintextAllowed();
  }

  /** The SASL mechanisms offered where plaintext credentials are allowed: a bearer token is a credential as a password is. */
  #mechanisms(): string[] {
    return this.#options.oauth === true ? ['PLAIN', 'LOGIN', ...BEARER_MECHANISMS] : ['PLAIN', 'LOGIN'];
  }

  /** The capability lines (RFC 5804 §1.7), each ending in CRLF, without the final OK. */
  #capabilities(): string {
    const lines = ['"IMPLEMENTATION" "mailfront"'];
    // RFC 5804 §1.7: the SASL list is empty when the client must do STARTTLS first; no
    // mechanism is offered where it would be refused.
    lines.push(`"SASL" "${this.#plaintextAllowed() ? this.#mechanisms().join(' ') : ''}"`);
    lines.push(`"SIEVE" "${PREAUTH_SIEVE_EXTENSIONS.join(' ')}"`);
    lines.push('"NOTIFY" "mailto"');
    if (this.#starttlsOffered()) lines.push('"STARTTLS"');
    lines.push('"VERSION" "1.0"');
    return lines.map((line) => `${line}\r\n`).join('');
  }

  /** Processes buffered input for as long as the phase reads commands or SASL responses. */
  #run(out: PreauthAction[]): PreauthAction[] {
    for (;;) {
      if (this.#phase !== 'command' && this.#phase !== 'sasl') return out;
      // Only a bearer mechanism's lines carry an OAuth token, longer than any other line may be.
      this.#reader.wideMechanisms = this.#bearerOffered() ? BEARER_MECHANISMS : [];
      this.#reader.saslResponse = this.#phase === 'sasl' && isBearerMechanism(this.#sasl?.mechanism);
      const event = this.#reader.next();
      if (event === null) return out;
      if (event.type === 'problem') {
        if (event.fatal) return this.#closeForProblem(event.problem, out);
        if (this.#phase === 'sasl') {
          const refused = this.#sasl?.refused === true;
          this.#endSasl();
          // A token refused already: whatever answers its error challenge gets the refusal, counted.
          if (refused) this.#refuseLocally(out);
          else this.#bad(out, 'Invalid SASL response.');
        } else if (this.#countCommand(out)) {
          this.#bad(out, PROBLEM_TEXT[event.problem]);
        }
        continue;
      }
      if (this.#phase === 'sasl') this.#onSaslResponse(event.tokens, out);
      else if (this.#countCommand(out)) this.#onCommand(event.tokens, out);
    }
  }

  #closeForProblem(problem: SieveProblem, out: PreauthAction[]): PreauthAction[] {
    switch (problem) {
      case 'foreign-protocol':
        // Not a word back: nothing of another protocol's request is answered or echoed.
        return this.#close(out, null, 'protocol-error');
      case 'line-too-long':
      case 'literal-too-big':
        return this.#close(out, `BYE ${sieveString(PROBLEM_TEXT[problem], 'server')}`, 'limit');
      case 'empty-line':
      case 'syntax':
      case 'nul':
      case 'bad-utf8':
        return this.#close(out, 'BYE "Invalid command with literal data."', 'protocol-error');
    }
  }

  /** Counts a command line; false (and closed) when there were too many. */
  #countCommand(out: PreauthAction[]): boolean {
    this.#commands++;
    if (this.#commands <= MAX_PREAUTH_COMMANDS) return true;
    this.#close(out, 'BYE "Too many commands before login."', 'limit');
    return false;
  }

  #onCommand(tokens: readonly SieveToken[], out: PreauthAction[]): void {
    const [head, ...args] = tokens;
    if (head?.kind !== 'atom') return this.#bad(out, 'Syntax error: expected a command name.');
    // Parentheses only occur in server responses (RFC 5804 §4).
    if (args.some((arg) => arg.kind === 'open' || arg.kind === 'close')) return this.#bad(out, PROBLEM_TEXT.syntax);
    const name = head.value.toUpperCase();
    switch (name) {
      case 'CAPABILITY':
        if (args.length > 0) return this.#bad(out, 'CAPABILITY takes no arguments.');
        push(out, `${this.#capabilities()}OK "Capability completed."`);
        return;
      case 'NOOP':
        return this.#onNoop(args, out);
      case 'LOGOUT':
        if (args.length > 0) return this.#bad(out, 'LOGOUT takes no arguments.');
        this.#close(out, 'OK "Logout completed."', 'logout');
        return;
      case 'STARTTLS':
        return this.#onStarttls(args, out);
      case 'AUTHENTICATE':
        return this.#onAuthenticate(args, out);
      default:
        return this.#bad(out, AFTER_LOGIN_COMMANDS.has(name) ? 'Authenticate first.' : 'Unknown command.');
    }
  }

  #onNoop(args: readonly SieveToken[], out: PreauthAction[]): void {
    const [tag, ...extra] = args;
    if (tag === undefined) {
      push(out, 'OK "Done"');
      return;
    }
    if (tag.kind !== 'string' || extra.length > 0) return this.#bad(out, 'NOOP takes one string argument at most.');
    // RFC 5804 §2.13: the string comes back in a TAG response code (clients use it to resync).
    push(out, `OK (TAG ${sieveString(tag.value, 'server')}) "Done"`);
  }

  #onStarttls(args: readonly SieveToken[], out: PreauthAction[]): void {
    if (args.length > 0) return this.#bad(out, 'STARTTLS takes no arguments.');
    if (this.#tlsActive) return this.#bad(out, 'TLS is already active.');
    if (!this.#options.starttlsAvailable) return this.#bad(out, 'STARTTLS is not available.');
    push(out, 'OK "Begin TLS negotiation now."');
    out.push({ type: 'starttls' });
    this.#reader.reset();
    this.#phase = 'tls-pending';
  }

  #onAuthenticate(args: readonly SieveToken[], out: PreauthAction[]): void {
    const [mechanismArg, initialArg, ...extra] = args;
    // RFC 5804 §2.1: AUTHENTICATE auth-type [initial-response], both strings; an atom is taken
    // as well, as Dovecot does.
    const mechanismText = textOf(mechanismArg);
    const initial = initialArg === undefined ? null : textOf(initialArg);
    if (mechanismText === null || extra.length > 0 || (initialArg !== undefined && initial === null)) {
      return this.#bad(out, 'Syntax error in AUTHENTICATE.');
    }
    const mechanism = mechanismText.toUpperCase();
    if (!this.#mechanisms().includes(mechanism)) return this.#bad(out, 'Unsupported authentication mechanism.');
    if (!this.#plaintextAllowed()) {
      // RFC 5804 §1.3: ENCRYPT-NEEDED tells the client to do STARTTLS and try again.
      return this.#bad(out, 'Plaintext authentication is not allowed without TLS.', 'ENCRYPT-NEEDED');
    }
    this.#sasl = { mechanism: mechanism as SaslExchange['mechanism'], user: null };
    this.#phase = 'sasl';
    if (initial !== null) return this.#onSaslValue(initial, out);
    // RFC 5804 §2.1: a challenge is a string on a line of its own; PLAIN's first one is empty, as are OAUTHBEARER's and XOAUTH2's.
    push(out, mechanism === 'LOGIN' ? sieveString(LOGIN_USERNAME_CHALLENGE, 'server') : '""');
  }

  #onSaslResponse(tokens: readonly SieveToken[], out: PreauthAction[]): void {
    // RFC 7628 §3.2.3: whatever answers the error challenge, the exchange ends with the refusal, counted.
    if (this.#sasl?.refused === true) {
      this.#endSasl();
      return this.#refuseLocally(out);
    }
    const [response, ...extra] = tokens;
    if (response?.kind !== 'string' || extra.length > 0) {
      this.#endSasl();
      return this.#bad(out, 'Invalid SASL response.');
    }
    this.#onSaslValue(response.value, out);
  }

  #onSaslValue(value: string, out: PreauthAction[]): void {
    const sasl = this.#sasl;
    if (sasl === null) return;
    // RFC 5804 §2.1: a client cancels with the string "*", and the server answers NO.
    if (value === '*') {
      this.#endSasl();
      push(out, 'NO "Authentication cancelled."');
      return;
    }
    if (isBearerMechanism(sasl.mechanism)) {
      const mechanism = sasl.mechanism;
      const decoded = decodeBearer(mechanism, value);
      if (!decoded.ok) {
        // A token that can be no token (too long, characters no token has) is refused as a wrong one is.
        if (decoded.reason === 'too-long' || decoded.reason === 'bad-characters') return this.#refuseBearer(mechanism, out);
        this.#endSasl();
        return this.#bad(out, 'Invalid SASL response.');
      }
      this.#endSasl();
      const credentials: BearerCredentials = decoded.user === undefined ? { token: decoded.token, mechanism } : { user: decoded.user, token: decoded.token, mechanism };
      return this.#startBearerLogin(credentials, out);
    }
    if (sasl.mechanism === 'PLAIN') {
      const decoded = decodePlain(value);
      this.#endSasl();
      if (!decoded.ok) return decoded.reason === 'bad-characters' ? this.#refuseLocally(out) : this.#bad(out, 'Invalid SASL response.');
      const credentials: Credentials =
        decoded.authzid === ''
          ? { user: decoded.user, password: decoded.password, mechanism: 'PLAIN' }
          : { user: decoded.user, password: decoded.password, authzid: decoded.authzid, mechanism: 'PLAIN' };
      return this.#startLogin(credentials, out);
    }
    const field = decodeLoginField(value);
    if (!field.ok) {
      this.#endSasl();
      return field.reason === 'bad-characters' ? this.#refuseLocally(out) : this.#bad(out, 'Invalid SASL response.');
    }
    if (sasl.user === null) {
      if (field.value === '') {
        this.#endSasl();
        return this.#bad(out, 'Invalid SASL response.');
      }
      sasl.user = field.value;
      push(out, sieveString(LOGIN_PASSWORD_CHALLENGE, 'server'));
      return;
    }
    const user = sasl.user;
    this.#endSasl();
    this.#startLogin({ user, password: field.value, mechanism: 'SASL-LOGIN' }, out);
  }

  #endSasl(): void {
    this.#sasl = null;
    this.#phase = 'command';
  }

  #startLogin(credentials: Credentials, out: PreauthAction[]): void {
    const { user, password } = credentials;
    // Never hand on what could not be replayed safely; an empty password can never be right
    // (and is an unauthenticated bind to an LDAP server, RFC 4513 §5.1.2).
    if (user === '' || password === '' || hasUnsafeCharacters(user) || hasUnsafeCharacters(password)) return this.#refuseLocally(out);
    this.#phase = 'login-pending';
    out.push({ type: 'login', credentials });
    // Checked after the action as for later input, so the outcome does not depend on the chunking.
    if (this.#reader.bufferedBytes > MAX_PIPELINED_HELD_BYTES) this.#tooMuchPipelined(out);
  }

  #startBearerLogin(credentials: BearerCredentials, out: PreauthAction[]): void {
    if (credentials.user !== undefined && hasUnsafeCharacters(credentials.user)) return this.#refuseLocally(out);
    this.#pendingBearer = credentials.mechanism;
    this.#phase = 'login-pending';
    out.push({ type: 'bearer-login', credentials });
    if (this.#reader.bufferedBytes > MAX_PIPELINED_HELD_BYTES) this.#tooMuchPipelined(out);
  }

  /** Sends the bearer mechanism's error challenge (a string on a line of its own): the client's next string gets the NO (RFC 7628 §3.2.3). */
  #refuseBearer(mechanism: BearerMechanism, out: PreauthAction[]): void {
    this.#sasl = { mechanism, user: null, refused: true };
    this.#phase = 'sasl';
    push(out, sieveString(bearerFailureChallenge(mechanism), 'server'));
  }

  #tooMuchPipelined(out: PreauthAction[]): PreauthAction[] {
    return this.#close(out, 'BYE "Too much input while logging in."', 'limit');
  }

  #refuseLocally(out: PreauthAction[]): void {
    push(out, AUTH_FAILED_LINE);
    this.#countFailedLogin(out);
  }

  /** Counts a failed login; true (and closed) when that was one too many. */
  #countFailedLogin(out: PreauthAction[]): boolean {
    this.#failedLogins++;
    if (this.#failedLogins < MAX_AUTH_ATTEMPTS) return false;
    this.#close(out, 'BYE "Too many failed login attempts."', 'limit');
    return true;
  }

  /** Answers NO and counts a bad command; the MAX_BAD_COMMANDS-th also ends the connection. */
  #bad(out: PreauthAction[], text: string, code?: string): void {
    push(out, `NO ${code === undefined ? '' : `(${code}) `}${sieveString(text, 'server')}`);
    this.#badCommands++;
    if (this.#badCommands >= MAX_BAD_COMMANDS) this.#close(out, 'BYE "Too many invalid commands."', 'protocol-error');
  }

  #close(out: PreauthAction[], line: string | null, reason: PreauthCloseReason): PreauthAction[] {
    if (line !== null) push(out, line);
    out.push({ type: 'close', reason });
    this.#phase = 'closed';
    this.#sasl = null;
    this.#reader.reset();
    return out;
  }
}

function send(data: string): PreauthAction {
  return { type: 'send', data };
}

/** Appends one response line, merged into a send right before it so that a burst is one write. */
function push(out: PreauthAction[], line: string): void {
  pushBytes(out, `${line}\r\n`);
}

/** Appends bytes as they are (whole lines, CRLF included), merged as push() merges a line. */
function pushBytes(out: PreauthAction[], data: string): void {
  const last = out[out.length - 1];
  if (last?.type === 'send') out[out.length - 1] = send(`${last.data}${data}`);
  else out.push(send(data));
}

function textOf(token: SieveToken | undefined): string | null {
  return token?.kind === 'string' || token?.kind === 'atom' ? token.value : null;
}

function refusalLine(refusal: LoginRefusal, text: string | undefined): string {
  const given = text === undefined ? '' : oneLineText(text);
  switch (refusal) {
    case 'auth-failed':
      // One fixed text whatever happened, so that a wrong password and an unknown user look the same.
      return AUTH_FAILED_LINE;
    // Only a POP3 backend says [LOGIN-DELAY]; ManageSieve has no such code.
    case 'login-delay':
    case 'unavailable':
      // RFC 5804 §1.3: TRYLATER means a temporary failure the client should retry later.
      return `NO (TRYLATER) ${sieveString(given || 'Temporary failure, please try again later.', 'server')}`;
    case 'limit':
      return `NO (TRYLATER) ${sieveString(given || 'Too many login attempts or connections, please try again later.', 'server')}`;
    case 'in-use':
      // RFC 5804 has no "in use" code; TRYLATER says the same thing to a client.
      return `NO (TRYLATER) ${sieveString(given || 'Your account is in use, please try again later.', 'server')}`;
    case 'not-authorized':
      return NOT_AUTHORIZED_LINE;
    // RFC 5804 §1.3 has no code for an expired password: NO with the words that say so, as a wrong password's has none.
    case 'expired':
      return `NO ${sieveString(given || 'Your password has expired, please change it and log in again.', 'server')}`;
  }
}
