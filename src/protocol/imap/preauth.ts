/**
 * The IMAP pre-auth state machine for one client connection: greeting, CAPABILITY, NOOP, LOGOUT,
 * ID, STARTTLS, LOGIN and AUTHENTICATE (PLAIN, LOGIN, and OAUTHBEARER and XOAUTH2 when offered;
 * SASL-IR), with every pre-auth bound.
 * It owns the client-facing wire text before login, in one place.
 * Must not: authenticate anyone, touch sockets, timers, config or logs; it only returns actions.
 */

import { MAX_AUTH_ATTEMPTS, MAX_BAD_COMMANDS, MAX_PIPELINED_BYTES, MAX_PIPELINED_HELD_BYTES, MAX_PREAUTH_COMMANDS } from '../../limits.js';
import { BEARER_MECHANISMS, bearerFailureChallenge, decodeBearer, decodeLoginField, decodePlain, hasUnsafeCharacters, isBearerMechanism, LOGIN_PASSWORD_CHALLENGE, LOGIN_USERNAME_CHALLENGE } from '../sasl.js';
import type { BearerMechanism } from '../sasl.js';
import type {
  BearerCredentials,
  Credentials,
  ForwardedClientId,
  LoginRefusal,
  LoginSuccess,
  PreauthAction,
  PreauthCloseReason,
  PreauthMachine,
  PreauthOptions,
} from '../types.js';
import { ImapCommandParser, type ImapArg, type ImapCommand, type ParseEvent, type ParseProblem } from './parser.js';
import { safeText } from './wire.js';
import { SHUTTING_DOWN_PHRASE, countsAsFailedLogin } from '../rules.js';

type Phase =
  | 'command' // reading commands
  | 'authenticate' // inside an AUTHENTICATE exchange, reading SASL response lines
  | 'login-pending' // a 'login' action is out; input is only buffered
  | 'starttls-pending' // STARTTLS accepted; input is discarded until the handshake is done
  | 'logged-in' // loginSucceeded: the session splices from here
  | 'closed';

interface SaslExchange {
  readonly tag: string;
  readonly mechanism: 'PLAIN' | 'LOGIN' | BearerMechanism;
  /** The LOGIN mechanism's user name once received. */
  user: string | null;
  /** A bearer token was refused and its error challenge sent: the next line is the client's dummy response, answered with the refusal (RFC 7628 §3.2.3). */
  refused?: true;
}

/** RFC 2971 §3.3: at most 30 pairs, field names up to 30 octets, values up to 1024 octets. */
const MAX_ID_PAIRS = 30;
const MAX_ID_FIELD_BYTES = 30;
const MAX_ID_VALUE_BYTES = 1024;

/**
 * Bytes of the client's ID pairs kept for the backend, as encoded: pairs past it are left out (a
 * pair that still fits after one that did not is kept), as Dovecot's proxy keeps 256
 * (LOGIN_MAX_CLIENT_ID_LEN). A mail client's ID is far shorter (imapflow's name, version, vendor
 * and support-url: 122 bytes); the 30 pairs of 1 KiB the RFC allows would be 30 KiB a session,
 * against a goal of 9 KB for a whole idle one.
 */
const MAX_FORWARDED_ID_BYTES = 512;

/**
 * The client's ID pairs kept for the backend: mailfront's ID adds its three fields
 * (x-originating-ip, -port, x-session-id: backend.ts idCommand), and RFC 2971 §3.3 allows 30
 * pairs. Cyrus refuses a longer ID whole ("BAD too many (30) field-value pairs in ID"), the
 * client's address with it.
 */
const MAX_FORWARDED_ID_PAIRS = MAX_ID_PAIRS - 3;

/**
 * ID fields a backend believes only from a trusted proxy (Dovecot's imap-login, from
 * login_trusted_networks: imap_login_id_params in 2.3 and 2.4), never passed on from a client:
 * through mailfront, which the backend trusts, a client would name its own address, port, session
 * id, proxy TTL or passdb fields (x-forward-*). Keys are lower-cased already.
 */
const PROXY_ONLY_ID_FIELD = /^x-(?:originating-|connected-|session-|proxy-|forward-|client-transport$|multiplex$)/;

const EIGHT_BIT = /[^\x00-\x7f]/;

const AUTH_FAILED_TEXT = 'NO [AUTHENTICATIONFAILED] Authentication failed.';
/** RFC 5530: authenticated, but the identity may not be used. */
const NOT_AUTHORIZED_TEXT = 'NO [AUTHORIZATIONFAILED] Authorization failed.';

/**
 * Capabilities that only mean something before login (RFC 9051 §6.2: STARTTLS, LOGINDISABLED,
 * AUTH=…). Cyrus still lists them after login; the login reply leaves them out.
 */
const PREAUTH_ONLY_CAPABILITY = /^(?:STARTTLS|LOGINDISABLED|AUTH=.*)$/i;

/**
 * The login reply's capability code for each post-login list a backend sent. A backend sends
 * the same list at every login, so each is cleaned and filtered once, not per login (as its
 * backend login machine splits it once). Bounded: odd backends cannot make it grow past
 * LOGIN_CAPABILITY_CODES_MAX lists.
 */
const loginCapabilityCodes = new Map<string, string>();
const LOGIN_CAPABILITY_CODES_MAX = 64;

function loginCapabilityCode(list: string): string {
  let code = loginCapabilityCodes.get(list);
  if (code === undefined) {
    const atoms = safeText(list, Number.MAX_SAFE_INTEGER).split(' ');
    const kept = atoms.filter((atom) => atom !== '' && !PREAUTH_ONLY_CAPABILITY.test(atom)).join(' ');
    code = kept === '' ? '' : `[CAPABILITY ${kept}] `;
    if (loginCapabilityCodes.size >= LOGIN_CAPABILITY_CODES_MAX) loginCapabilityCodes.clear();
    loginCapabilityCodes.set(list, code);
  }
  return code;
}

/** What a rejected line gets: the tagged BAD text, and for fatal problems the BYE text and close reason. */
const PROBLEM_RESPONSES: Record<ParseProblem, { readonly bad: string; readonly bye: string; readonly reason: PreauthCloseReason }> = {
  'empty-line': { bad: 'Empty command line', bye: 'Invalid command with literal data', reason: 'protocol-error' },
  syntax: { bad: 'Syntax error', bye: 'Invalid command with literal data', reason: 'protocol-error' },
  'bad-tag': { bad: 'Invalid tag', bye: 'Invalid command with literal data', reason: 'protocol-error' },
  nul: { bad: 'NUL characters are not allowed', bye: 'Invalid command with literal data', reason: 'protocol-error' },
  'eight-bit': { bad: '8-bit characters are only allowed in strings', bye: 'Invalid command with literal data', reason: 'protocol-error' },
  'bad-utf8': { bad: 'Strings must be valid UTF-8', bye: 'Invalid command with literal data', reason: 'protocol-error' },
  'line-too-long': { bad: '[TOOBIG] Command line too long', bye: '[LIMIT] Command line too long', reason: 'limit' },
  'literal-too-big': { bad: '[TOOBIG] Literal too big', bye: '[LIMIT] Literal too big', reason: 'limit' },
  // RFC 7888 (LITERAL-): a server answers an oversized non-synchronising literal with [TOOBIG]
  // and, having no way to skip the data safely, closes the connection.
  'nonsync-literal-too-big': { bad: '[TOOBIG] Non-synchronizing literal too big', bye: '[LIMIT] Literal too big', reason: 'limit' },
  'command-too-big': { bad: '[TOOBIG] Command too big', bye: '[LIMIT] Command too big', reason: 'limit' },
  'foreign-protocol': { bad: 'Not an IMAP command', bye: 'This is an IMAP server', reason: 'protocol-error' },
};

/** Commands of the authenticated and selected states (RFC 9051 §6.3, §6.4 and extensions) get a clearer BAD. */
const AFTER_LOGIN_COMMANDS = new Set([
  'SELECT', 'EXAMINE', 'CREATE', 'DELETE', 'RENAME', 'SUBSCRIBE', 'UNSUBSCRIBE', 'LIST', 'LSUB', 'NAMESPACE',
  'STATUS', 'APPEND', 'IDLE', 'ENABLE', 'CHECK', 'CLOSE', 'UNSELECT', 'EXPUNGE', 'SEARCH', 'FETCH', 'STORE',
  'COPY', 'MOVE', 'UID', 'GETQUOTA', 'GETQUOTAROOT', 'SETQUOTA', 'GETACL', 'SETACL', 'MYRIGHTS', 'LISTRIGHTS',
  'DELETEACL', 'GETMETADATA', 'SETMETADATA', 'SORT', 'THREAD', 'COMPRESS', 'NOTIFY',
]);

/** The IMAP pre-auth machine; see PreauthMachine for the contract. */
export class ImapPreauthMachine implements PreauthMachine {
  private readonly parser = new ImapCommandParser();
  private phase: Phase = 'command';
  private tlsActive: boolean;
  private sasl: SaslExchange | null = null;
  private loginTag = '';
  /** The pending login's bearer mechanism, when it is a bearer login: its refusal goes through the error challenge. */
  private pendingBearer: BearerMechanism | null = null;
  private commands = 0;
  private badCommands = 0;
  private failedLogins = 0;
  /** The client's last ID before login, encoded for the backend; null (nothing kept) until an ID names something to forward. */
  private forwardedId: ForwardedClientId | null = null;

  constructor(private readonly options: PreauthOptions) {
    this.tlsActive = options.tlsActive;
  }

  get loginPending(): boolean {
    return this.phase === 'login-pending';
  }

  get inputFull(): boolean {
    return this.phase === 'login-pending' && this.parser.bufferedBytes >= MAX_PIPELINED_BYTES;
  }

  get clientId(): ForwardedClientId | null {
    return this.forwardedId;
  }

  greeting(): PreauthAction[] {
    return [send(`* OK [CAPABILITY ${this.capabilities()}] ${safeText(this.options.greetingText)}\r\n`)];
  }

  receive(chunk: Uint8Array): PreauthAction[] {
    switch (this.phase) {
      case 'command':
      case 'authenticate':
        this.parser.push(chunk);
        return this.run([]);
      case 'login-pending':
        this.parser.push(chunk);
        return this.parser.bufferedBytes > MAX_PIPELINED_HELD_BYTES ? this.tooMuchPipelined([]) : [];
      case 'starttls-pending':
        // RFC 3501 §6.2.1 / CVE-2011-0411 class: bytes sent before the TLS handshake must never be
        // executed after it, or a man in the middle could inject commands into the TLS session.
        return [];
      case 'logged-in':
      case 'closed':
        return [];
    }
  }

  tlsStarted(): PreauthAction[] {
    if (this.phase !== 'starttls-pending') return [];
    this.tlsActive = true;
    this.parser.reset();
    // What the client said of itself in plaintext may be a man in the middle's words: only an ID
    // sent under TLS reaches the backend (as capabilities learned before TLS are forgotten).
    this.forwardedId = null;
    this.phase = 'command';
    return [];
  }

  loginSucceeded(backendCapabilities: string | null): LoginSuccess {
    if (this.phase !== 'login-pending') throw new Error(`loginSucceeded in phase ${this.phase}`);
    this.phase = 'logged-in';
    this.pendingBearer = null;
    const code = backendCapabilities === null ? '' : loginCapabilityCode(backendCapabilities);
    return { reply: `${this.loginTag} OK ${code}Logged in\r\n`, pipelined: this.parser.takeBuffered() };
  }

  loginFailed(refusal: LoginRefusal, text?: string): PreauthAction[] {
    if (this.phase !== 'login-pending') return [];
    const out: PreauthAction[] = [];
    const bearer = this.pendingBearer;
    this.pendingBearer = null;
    if (bearer !== null && refusal === 'auth-failed') {
      // Counted once the client has answered the error challenge, with the tagged NO.
      this.refuseBearer(this.loginTag, bearer, out);
      return this.run(out);
    }
    push(out, this.refusalLine(refusal, text));
    this.phase = 'command';
    if (countsAsFailedLogin(refusal) && this.countFailedLogin(out)) return out;
    return this.run(out);
  }

  timedOut(refusal: LoginRefusal = 'unavailable', text?: string): PreauthAction[] {
    // The time runs from accept (session.preauth_timeout_ms), not from the last command: no "idle".
    return this.lastWords(refusal, text, '* BYE No login within the time allowed\r\n', 'timeout');
  }

  shuttingDown(refusal: LoginRefusal = 'unavailable', text?: string): PreauthAction[] {
    // The untagged BYE answers no command (RFC 9051 §7.1.5): a login under way gets its tagged
    // answer first (as decided, if it was), as at the deadline.
    return this.lastWords(refusal, text, `* BYE [UNAVAILABLE] ${SHUTTING_DOWN_PHRASE}\r\n`, 'shutdown');
  }

  evicted(goodbye: string, refusal: LoginRefusal = 'unavailable', text?: string): PreauthAction[] {
    // As at a stop: the connection limit's untagged BYE answers no command.
    return this.lastWords(refusal, text, goodbye, 'evicted');
  }

  /**
   * The session's end before login (the deadline, a stop, an eviction): a login under way is
   * answered first with `refusal`, and what the client pipelined behind it is not run; then `bye`
   * and the close.
   */
  private lastWords(refusal: LoginRefusal, text: string | undefined, bye: string, reason: PreauthCloseReason): PreauthAction[] {
    if (this.phase === 'closed' || this.phase === 'logged-in') return [];
    const out: PreauthAction[] = [];
    if (this.phase === 'login-pending') {
      this.pendingBearer = null;
      push(out, this.refusalLine(refusal, text));
    }
    return this.close(out, bye, reason);
  }

  /** The tagged answer refusing the pending login; `text` is a human sentence (never a secret). */
  private refusalLine(refusal: LoginRefusal, text?: string): string {
    const given = text === undefined ? '' : safeText(text);
    switch (refusal) {
      case 'auth-failed':
        // One fixed text whatever happened, so that a wrong password and an unknown user look the same.
        return `${this.loginTag} ${AUTH_FAILED_TEXT}\r\n`;
      // Only a POP3 backend says [LOGIN-DELAY]; IMAP has no such code.
      case 'login-delay':
      case 'unavailable':
        return `${this.loginTag} NO [UNAVAILABLE] ${given || 'Temporary failure, please try again later.'}\r\n`;
      case 'limit':
        return `${this.loginTag} NO [LIMIT] ${given || 'Too many login attempts or connections, please try again later.'}\r\n`;
      case 'in-use':
        return `${this.loginTag} NO [INUSE] ${given || 'Mailbox is in use, please try again later.'}\r\n`;
      case 'not-authorized':
        return `${this.loginTag} ${NOT_AUTHORIZED_TEXT}\r\n`;
      // RFC 5530 §3: the passphrase is no longer good; the user should get a new one.
      case 'expired':
        return `${this.loginTag} NO [EXPIRED] ${given || 'Your password has expired, please change it and log in again.'}\r\n`;
    }
  }

  /** The pre-auth capability list; only what is really supported before login. */
  private capabilities(): string {
    const caps = ['IMAP4rev1', 'SASL-IR', 'ID', 'LITERAL-'];
    if (this.options.starttlsAvailable && !this.tlsActive) caps.push('STARTTLS');
    // RFC 3501 §6.2.3, RFC 9051 §6.2.3: no plaintext mechanism is offered where it is refused.
    if (this.plaintextAllowed()) {
      caps.push('AUTH=PLAIN', 'AUTH=LOGIN');
      // A bearer token is a credential as a password is: offered, and taken, only where PLAIN is.
      if (this.options.oauth === true) caps.push('AUTH=OAUTHBEARER', 'AUTH=XOAUTH2');
    } else caps.push('LOGINDISABLED');
    return caps.join(' ');
  }

  private plaintextAllowed(): boolean {
    return this.tlsActive || this.options.plaintextWithoutTls;
  }

  /** The bearer mechanisms are offered (and so taken): with oauth2, where PLAIN is. */
  private bearerOffered(): boolean {
    return this.options.oauth === true && this.plaintextAllowed();
  }

  /** Processes buffered input for as long as the phase reads commands or SASL lines. */
  private run(out: PreauthAction[]): PreauthAction[] {
    for (;;) {
      let event: ParseEvent | null;
      // Only a bearer mechanism's lines carry an OAuth token, longer than any other line may be.
      if (this.phase === 'command') {
        this.parser.wideMechanisms = this.bearerOffered() ? BEARER_MECHANISMS : [];
        event = this.parser.nextCommand();
      } else if (this.phase === 'authenticate') {
        event = this.parser.nextLine(isBearerMechanism(this.sasl?.mechanism));
      } else return out;
      if (event === null) return out;
      switch (event.type) {
        case 'continue':
          push(out, '+ Ready for literal data\r\n');
          break;
        case 'line':
          this.onSaslResponse(event.text, out);
          break;
        case 'problem': {
          const response = PROBLEM_RESPONSES[event.problem];
          if (event.fatal) {
            const bad = event.tag === null ? '' : `${event.tag} BAD ${response.bad}\r\n`;
            return this.close(out, `${bad}* BYE ${response.bye}\r\n`, response.reason);
          }
          if (this.countCommand(out)) this.bad(out, event.tag, response.bad);
          break;
        }
        case 'command':
          if (this.countCommand(out)) this.onCommand(event.command, out);
          break;
      }
    }
  }

  /** Counts a command line; false (and closed) when there were too many. */
  private countCommand(out: PreauthAction[]): boolean {
    this.commands++;
    if (this.commands <= MAX_PREAUTH_COMMANDS) return true;
    this.close(out, '* BYE [LIMIT] Too many commands before login\r\n', 'limit');
    return false;
  }

  private onCommand(command: ImapCommand, out: PreauthAction[]): void {
    const { tag, name, args } = command;
    switch (name) {
      case 'CAPABILITY':
        if (args.length > 0) return this.bad(out, tag, 'CAPABILITY takes no arguments');
        push(out, `* CAPABILITY ${this.capabilities()}\r\n${tag} OK Capability completed.\r\n`);
        return;
      case 'NOOP':
        if (args.length > 0) return this.bad(out, tag, 'NOOP takes no arguments');
        push(out, `${tag} OK NOOP completed.\r\n`);
        return;
      case 'LOGOUT':
        if (args.length > 0) return this.bad(out, tag, 'LOGOUT takes no arguments');
        this.close(out, `* BYE Logging out\r\n${tag} OK Logout completed.\r\n`, 'logout');
        return;
      case 'ID':
        return this.onId(tag, args, out);
      case 'STARTTLS':
        return this.onStarttls(tag, args, out);
      case 'LOGIN':
        return this.onLogin(tag, args, out);
      case 'AUTHENTICATE':
        return this.onAuthenticate(tag, args, out);
      default:
        return this.bad(out, tag, AFTER_LOGIN_COMMANDS.has(name) ? 'Command is not allowed before login' : 'Unknown command');
    }
  }

  private onId(tag: string, args: readonly ImapArg[], out: PreauthAction[]): void {
    const [arg] = args;
    if (args.length !== 1 || arg === undefined) return this.bad(out, tag, 'ID takes one argument');
    // The last ID before login is the one forwarded, as Dovecot's proxy does (imap_id_retain):
    // ID NIL takes back what an earlier one said; a refused ID changes nothing.
    if (arg.type === 'atom' && arg.value.toUpperCase() === 'NIL') {
      this.forwardedId = null;
      push(out, `* ID ("name" "mailfront")\r\n${tag} OK ID completed.\r\n`);
      return;
    }
    if (arg.type !== 'list') return this.bad(out, tag, 'Invalid ID parameters');
    const params = parseIdParams(arg.items);
    if (params === null) return this.bad(out, tag, 'Invalid ID parameters');
    this.forwardedId = forwardedClientId(params);
    out.push({ type: 'client-id', params });
    push(out, `* ID ("name" "mailfront")\r\n${tag} OK ID completed.\r\n`);
  }

  private onStarttls(tag: string, args: readonly ImapArg[], out: PreauthAction[]): void {
    if (args.length > 0) return this.bad(out, tag, 'STARTTLS takes no arguments');
    if (this.tlsActive) return this.bad(out, tag, 'TLS is already active');
    if (!this.options.starttlsAvailable) return this.bad(out, tag, 'STARTTLS is not available');
    push(out, `${tag} OK Begin TLS negotiation now.\r\n`);
    out.push({ type: 'starttls' });
    this.parser.reset();
    this.phase = 'starttls-pending';
  }

  private onLogin(tag: string, args: readonly ImapArg[], out: PreauthAction[]): void {
    const [userArg, passwordArg] = args;
    const user = astring(userArg);
    const password = astring(passwordArg);
    if (args.length !== 2 || user === null || password === null) return this.bad(out, tag, 'Invalid LOGIN arguments');
    if (!this.plaintextAllowed()) return this.privacyRequired(tag, out);
    this.startLogin(tag, { user, password, mechanism: 'LOGIN' }, out);
  }

  private onAuthenticate(tag: string, args: readonly ImapArg[], out: PreauthAction[]): void {
    const [mechanismArg, initialArg] = args;
    if (args.length > 2 || mechanismArg?.type !== 'atom') return this.bad(out, tag, 'Invalid AUTHENTICATE arguments');
    const mechanism = mechanismArg.value.toUpperCase();
    const bearer = this.options.oauth === true && isBearerMechanism(mechanism);
    if (mechanism !== 'PLAIN' && mechanism !== 'LOGIN' && !bearer) {
      return this.bad(out, tag, 'Unsupported authentication mechanism', 'NO');
    }
    let initial: string | null = null;
    if (initialArg !== undefined) {
      if (initialArg.type !== 'atom') return this.bad(out, tag, 'Invalid initial response');
      // RFC 4959 §3: "=" stands for an empty initial response.
      initial = initialArg.value === '=' ? '' : initialArg.value;
    }
    if (!this.plaintextAllowed()) return this.privacyRequired(tag, out);
    this.sasl = { tag, mechanism: mechanism as SaslExchange['mechanism'], user: null };
    this.phase = 'authenticate';
    if (initial !== null) return this.onSaslResponse(initial, out);
    push(out, mechanism === 'LOGIN' ? `+ ${LOGIN_USERNAME_CHALLENGE}\r\n` : '+ \r\n');
  }

  private onSaslResponse(line: string, out: PreauthAction[]): void {
    const sasl = this.sasl;
    if (sasl === null) return;
    // RFC 7628 §3.2.3: whatever answers the error challenge (%x01, or a "*" that cancels what has
    // failed already), the exchange ends with the refusal, counted.
    if (sasl.refused === true) return this.endSasl(() => this.refuseLocally(sasl.tag, out));
    // RFC 9051 §6.2.2: a line of "*" cancels the exchange, answered with a tagged BAD.
    if (line === '*') return this.endSasl(() => push(out, `${sasl.tag} BAD Authentication cancelled.\r\n`));
    if (isBearerMechanism(sasl.mechanism)) {
      const mechanism = sasl.mechanism;
      const decoded = decodeBearer(mechanism, line);
      if (decoded.ok) {
        const credentials: BearerCredentials = decoded.user === undefined ? { token: decoded.token, mechanism } : { user: decoded.user, token: decoded.token, mechanism };
        return this.endSasl(() => this.startBearerLogin(sasl.tag, credentials, out));
      }
      // A token that can be no token (too long, characters no token has) is refused as a wrong one is.
      if (decoded.reason === 'too-long' || decoded.reason === 'bad-characters') return this.refuseBearer(sasl.tag, mechanism, out);
      return this.endSasl(() => this.bad(out, sasl.tag, 'Invalid SASL response'));
    }
    if (sasl.mechanism === 'PLAIN') {
      const decoded = decodePlain(line);
      // Base64 that is not (RFC 9051 §6.2.2) is BAD; a PLAIN message that is not (no two NULs,
      // no user: RFC 4616 §2, "=" among them) fails the exchange, NO as any failed login.
      if (!decoded.ok) {
        return this.endSasl(() =>
          decoded.reason === 'bad-base64' ? this.bad(out, sasl.tag, 'Invalid SASL response') : this.refuseLocally(sasl.tag, out),
        );
      }
      const credentials: Credentials =
        decoded.authzid === ''
          ? { user: decoded.user, password: decoded.password, mechanism: 'PLAIN' }
          : { user: decoded.user, password: decoded.password, authzid: decoded.authzid, mechanism: 'PLAIN' };
      return this.endSasl(() => this.startLogin(sasl.tag, credentials, out));
    }
    const field = decodeLoginField(line);
    if (!field.ok) {
      return this.endSasl(() =>
        field.reason === 'bad-characters' ? this.refuseLocally(sasl.tag, out) : this.bad(out, sasl.tag, 'Invalid SASL response'),
      );
    }
    if (sasl.user === null) {
      sasl.user = field.value;
      push(out, `+ ${LOGIN_PASSWORD_CHALLENGE}\r\n`);
      return;
    }
    const user = sasl.user;
    return this.endSasl(() => this.startLogin(sasl.tag, { user, password: field.value, mechanism: 'SASL-LOGIN' }, out));
  }

  /** Leaves the SASL exchange, then lets `next` decide the new phase. */
  private endSasl(next: () => void): void {
    this.sasl = null;
    this.phase = 'command';
    next();
  }

  private startLogin(tag: string, credentials: Credentials, out: PreauthAction[]): void {
    const { user, password } = credentials;
    // Never hand on what could not be replayed safely; an empty user or password can never be
    // right (and an empty password is an anonymous bind to many LDAP servers).
    if (user === '' || password === '' || hasUnsafeCharacters(user) || hasUnsafeCharacters(password)) {
      return this.refuseLocally(tag, out);
    }
    this.loginTag = tag;
    this.phase = 'login-pending';
    out.push({ type: 'login', credentials });
    // Checked after the action, as it is for input arriving later, so that the outcome does not
    // depend on how the input was split into chunks.
    if (this.parser.bufferedBytes > MAX_PIPELINED_HELD_BYTES) this.tooMuchPipelined(out);
  }

  private startBearerLogin(tag: string, credentials: BearerCredentials, out: PreauthAction[]): void {
    if (credentials.user !== undefined && hasUnsafeCharacters(credentials.user)) return this.refuseLocally(tag, out);
    this.loginTag = tag;
    this.pendingBearer = credentials.mechanism;
    this.phase = 'login-pending';
    out.push({ type: 'bearer-login', credentials });
    if (this.parser.bufferedBytes > MAX_PIPELINED_HELD_BYTES) this.tooMuchPipelined(out);
  }

  /** Sends the bearer mechanism's error challenge: the client's next line gets the tagged NO (RFC 7628 §3.2.3). */
  private refuseBearer(tag: string, mechanism: BearerMechanism, out: PreauthAction[]): void {
    this.sasl = { tag, mechanism, user: null, refused: true };
    this.phase = 'authenticate';
    push(out, `+ ${bearerFailureChallenge(mechanism)}\r\n`);
  }

  private tooMuchPipelined(out: PreauthAction[]): PreauthAction[] {
    return this.close(out, '* BYE [LIMIT] Too much input while logging in\r\n', 'limit');
  }

  private refuseLocally(tag: string, out: PreauthAction[]): void {
    push(out, `${tag} ${AUTH_FAILED_TEXT}\r\n`);
    this.countFailedLogin(out);
  }

  /** Counts a failed login; true (and closed) when that was one too many. */
  private countFailedLogin(out: PreauthAction[]): boolean {
    this.failedLogins++;
    if (this.failedLogins < MAX_AUTH_ATTEMPTS) return false;
    this.close(out, '* BYE Too many failed login attempts\r\n', 'limit');
    return true;
  }

  private privacyRequired(tag: string, out: PreauthAction[]): void {
    // RFC 5530 §3: PRIVACYREQUIRED; counted as a bad command, the client ignored LOGINDISABLED.
    this.bad(out, tag, '[PRIVACYREQUIRED] Plaintext authentication is not allowed without TLS.', 'NO');
  }

  private bad(out: PreauthAction[], tag: string | null, text: string, status: 'BAD' | 'NO' = 'BAD'): void {
    push(out, `${tag ?? '*'} ${status} ${text}\r\n`);
    this.badCommands++;
    if (this.badCommands >= MAX_BAD_COMMANDS) this.close(out, '* BYE Too many invalid commands\r\n', 'protocol-error');
  }

  private close(out: PreauthAction[], data: string, reason: PreauthCloseReason): PreauthAction[] {
    push(out, data);
    out.push({ type: 'close', reason });
    this.phase = 'closed';
    this.parser.reset();
    return out;
  }
}

function send(data: string): PreauthAction {
  return { type: 'send', data };
}

/** Appends a send, merged with a send right before it so that one write carries a burst of replies. */
function push(out: PreauthAction[], data: string): void {
  const last = out[out.length - 1];
  if (last?.type === 'send') out[out.length - 1] = send(last.data + data);
  else out.push(send(data));
}

function astring(arg: ImapArg | undefined): string | null {
  return arg !== undefined && arg.type !== 'list' ? arg.value : null;
}

function parseIdParams(items: readonly ImapArg[]): Map<string, string | null> | null {
  if (items.length % 2 !== 0 || items.length > 2 * MAX_ID_PAIRS) return null;
  const params = new Map<string, string | null>();
  for (let i = 0; i < items.length; i += 2) {
    const field = items[i];
    const value = items[i + 1];
    if (field?.type !== 'string' || Buffer.byteLength(field.value) > MAX_ID_FIELD_BYTES) return null;
    let parsed: string | null;
    if (value?.type === 'atom' && value.value.toUpperCase() === 'NIL') parsed = null;
    else if (value?.type === 'string' && Buffer.byteLength(value.value) <= MAX_ID_VALUE_BYTES) parsed = value.value;
    else return null;
    // ID values end up in logs: control characters there would forge log lines. (The session
    // also logs no more than the first 64 characters of a value, other characters a log viewer
    // could misread replaced: session.ts loggableClaim.)
    if (/[\x00-\x1f\x7f]/.test(field.value) || (parsed !== null && /[\x00-\x1f\x7f]/.test(parsed))) return null;
    const key = field.value.toLowerCase();
    if (!params.has(key)) params.set(key, parsed);
  }
  return params;
}

/**
 * The ID pairs a backend may be told, encoded (ForwardedClientId): without the fields only a
 * trusted proxy may send, nor those whose value is NIL, within MAX_FORWARDED_ID_PAIRS and
 * MAX_FORWARDED_ID_BYTES; null when none is left.
 */
function forwardedClientId(params: ReadonlyMap<string, string | null>): ForwardedClientId | null {
  const quoted: string[] = [];
  const literal: string[] = [];
  let bytes = 0;
  for (const [field, value] of params) {
    // NIL says the field has no value, and Cyrus 3.6 closes the connection on an ID with one
    // (before the login it is pipelined ahead of): nothing is lost by leaving it out.
    if (value === null || PROXY_ONLY_ID_FIELD.test(field)) continue;
    const pair = `${idString(field)} ${idString(value)}`;
    const size = Buffer.byteLength(pair) + 1;
    if (bytes + size > MAX_FORWARDED_ID_BYTES) continue;
    bytes += size;
    (EIGHT_BIT.test(pair) ? literal : quoted).push(pair);
    if (quoted.length + literal.length === MAX_FORWARDED_ID_PAIRS) break;
  }
  if (bytes === 0) return null;
  // One flat string per session (join() makes one; concatenation would keep every piece).
  const plain = quoted.join(' ');
  return { pairs: literal.length === 0 ? plain : [...quoted, ...literal].join(' '), quotedLength: plain.length };
}

/**
 * An ID field or value as the backend must read it: a quoted string (RFC 3501 §4.3, '\\' and '"'
 * escaped) when 7-bit, else a non-synchronising literal of its UTF-8 bytes, as RFC 3501 allows
 * 8-bit text in literals only (Dovecot's own proxy drops 8-bit characters from a quoted ID
 * value). parseIdParams refused control characters: CR, LF and NUL never reach here.
 */
function idString(value: string): string {
  if (!EIGHT_BIT.test(value)) return `"${value.replace(/[\\"]/g, (c) => `\\${c}`)}"`;
  return `{${Buffer.byteLength(value)}+}\r\n${value}`;
}
