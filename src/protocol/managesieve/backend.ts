/**
 * The ManageSieve backend login dialogue: mailfront logging in to a backend slot on the user's
 * behalf, as explicit named states (greeting, starttls, tls-handshake, capability, xclient,
 * authenticate, done, failed). Credentials go out only inside SASL PLAIN, never with CR, LF or NUL.
 * Must not: open connections, time anything out, or show backend text to the client.
 */

import { MAX_BACKEND_DIALOGUE_BYTES, MAX_BACKEND_DIALOGUE_RESPONSES, MAX_BACKEND_RESPONSE_BYTES } from '../../limits.js';
import { encodePlain, hasUnsafeCharacters } from '../sasl.js';
import type { BackendAction, BackendLoginMachine, BackendLoginOptions } from '../types.js';
import { oneLineText, parseResponse, SieveReader, sieveString, type SieveToken } from './wire.js';
import { BACKEND_USER_LIMIT_WORDS, redactCredentials } from '../rules.js';

/** The dialogue's states, named after what the machine waits for. */
export type ManageSieveBackendState =
  | 'greeting' // the capability list and OK the backend greets with
  | 'starttls' // the reply to STARTTLS
  | 'tls-handshake' // the session's TLS handshake (tlsStarted)
  | 'capability' // the capability list the backend re-sends after TLS (RFC 5804 §2.2)
  | 'xclient' // the reply to XCLIENT
  | 'authenticate' // the reply to AUTHENTICATE "PLAIN"
  | 'done'
  | 'failed';

type Refusal = Extract<BackendAction, { type: 'fail' }>['refusal'];

/**
 * Response codes of a NO to AUTHENTICATE that are the fleet's trouble, not the credentials'
 * (RFC 5804 §1.3): try later, or a backend that wants TLS or another mechanism from mailfront.
 */
const UNAVAILABLE_CODES = new Set(['TRYLATER', 'ENCRYPT-NEEDED', 'AUTH-TOO-WEAK', 'TRANSITION-NEEDED']);

// Dovecot ignores a SESSION value longer than this (LOGIN_MAX_SESSION_ID_LEN).
const MAX_SESSION_ID_CHARS = 64;

/** What the backend's capability list says, as far as the login needs it. */
interface BackendCapabilities {
  saslMechanisms: string[];
  starttls: boolean;
  xclient: boolean;
  /** RFC 5804 §2.14.1: a spliced client could log in there again as someone else. */
  unauthenticate: boolean;
}

/** The ManageSieve backend login machine; create one per backend connection. */
export class ManageSieveBackendLogin implements BackendLoginMachine {
  readonly #options: BackendLoginOptions;
  readonly #reader = new SieveReader({
    maxLineBytes: MAX_BACKEND_RESPONSE_BYTES,
    maxLiteralBytes: MAX_BACKEND_RESPONSE_BYTES,
    maxLineLiteralBytes: MAX_BACKEND_RESPONSE_BYTES,
    strictUtf8: false,
    rejectForeignProtocols: false,
  });
  #state: ManageSieveBackendState = 'greeting';
  #capabilities: BackendCapabilities = emptyCapabilities();
  /** Bytes of the response being read (a capability list spans many lines). */
  #responseBytes = 0;
  /** Bytes and lines of the whole dialogue so far. */
  #dialogueBytes = 0;
  #lines = 0;
  #loginSent = false;

  constructor(options: BackendLoginOptions) {
    this.#options = options;
  }

  /** The current state's name, for logs. */
  get state(): ManageSieveBackendState {
    return this.#state;
  }

  get loginSent(): boolean {
    return this.#loginSent;
  }

  receive(chunk: Uint8Array): BackendAction[] {
    switch (this.#state) {
      case 'greeting':
      case 'starttls':
      case 'capability':
      case 'xclient':
      case 'authenticate':
        this.#reader.push(chunk);
        return this.#run([]);
      case 'tls-handshake':
        // Bytes after the STARTTLS OK and before the handshake could be a man in the middle's.
        return [];
      case 'done':
      case 'failed':
        return [];
    }
  }

  tlsStarted(): BackendAction[] {
    if (this.#state !== 'tls-handshake') return [];
    // RFC 5804 §2.2: capabilities learned before TLS are forgotten; the server re-sends them
    // unasked once the handshake is done.
    this.#capabilities = emptyCapabilities();
    this.#state = 'capability';
    return this.#run([]);
  }

  #run(out: BackendAction[]): BackendAction[] {
    while (this.#state !== 'done' && this.#state !== 'failed' && this.#state !== 'tls-handshake') {
      const event = this.#reader.next();
      if (event === null) break;
      // The dialogue before login is small; a backend that sends this much is broken or hostile.
      this.#responseBytes += event.wireBytes;
      if (this.#responseBytes > MAX_BACKEND_RESPONSE_BYTES || (event.type === 'problem' && event.problem === 'line-too-long')) {
        this.#fail(out, 'unavailable', 'backend response too long');
        break;
      }
      // Each state takes a bounded response, but the bound starts again at every status line:
      // the dialogue as a whole is bounded too, in bytes and in lines (parsing is the cost).
      this.#dialogueBytes += event.wireBytes;
      this.#lines++;
      if (this.#dialogueBytes > MAX_BACKEND_DIALOGUE_BYTES) {
        this.#fail(out, 'unavailable', `${this.#state}: login dialogue longer than ${MAX_BACKEND_DIALOGUE_BYTES} bytes`);
        break;
      }
      if (this.#lines > MAX_BACKEND_DIALOGUE_RESPONSES) {
        this.#fail(out, 'unavailable', `${this.#state}: more than ${MAX_BACKEND_DIALOGUE_RESPONSES} lines in the login dialogue`);
        break;
      }
      if (event.type === 'problem') {
        this.#fail(out, 'unavailable', `unreadable backend response (${event.problem})`);
        break;
      }
      this.#onLine(event.tokens, out);
    }
    return out;
  }

  #onLine(tokens: readonly SieveToken[], out: BackendAction[]): void {
    const response = parseResponse(tokens);
    if (response === null) return this.#onData(tokens, out);
    this.#responseBytes = 0;
    const detail = `${response.status}${response.code === null ? '' : ` (${response.code})`} ${response.text}`;
    if (response.status === 'BYE') return this.#fail(out, 'unavailable', `${this.#state}: ${detail}`);
    switch (this.#state) {
      case 'greeting':
        if (response.status !== 'OK') return this.#fail(out, 'unavailable', `greeting: ${detail}`);
        return this.#afterGreeting(out);
      case 'starttls':
        if (response.status !== 'OK') return this.#fail(out, 'unavailable', `starttls: ${detail}`);
        // Whatever followed the OK in plaintext is dropped, never read as sent under TLS.
        this.#reader.reset();
        this.#state = 'tls-handshake';
        out.push({ type: 'starttls' });
        return;
      case 'capability':
        if (response.status !== 'OK') return this.#fail(out, 'unavailable', `capability: ${detail}`);
        return this.#afterCapabilities(out);
      case 'xclient':
        // A refused XCLIENT only costs the client's address in the backend's logs.
        return this.#sendAuthenticate(out);
      case 'authenticate':
        if (response.status === 'OK') return this.#done(out);
        // Dovecot's refusal over mail_max_userip_connections is a NO without a code: its words say so.
        return this.#fail(out, response.code !== null && UNAVAILABLE_CODES.has(response.code) ? 'unavailable' : BACKEND_USER_LIMIT_WORDS.test(response.text) ? 'limit' : 'auth-failed', `authenticate: ${detail}`);
      case 'tls-handshake':
      case 'done':
      case 'failed':
        return;
    }
  }

  /** A line that is not OK/NO/BYE: a capability while one is expected, otherwise unexpected. */
  #onData(tokens: readonly SieveToken[], out: BackendAction[]): void {
    switch (this.#state) {
      case 'greeting':
      case 'capability':
        return this.#onCapability(tokens);
      case 'authenticate':
        // PLAIN is done in one step: a challenge after the initial response is nonsense.
        return this.#fail(out, 'unavailable', 'authenticate: unexpected SASL challenge');
      case 'starttls':
      case 'xclient':
        return this.#fail(out, 'unavailable', `${this.#state}: unexpected data before the reply`);
      case 'tls-handshake':
      case 'done':
      case 'failed':
        return;
    }
  }

  #onCapability(tokens: readonly SieveToken[]): void {
    const [name, value] = tokens;
    if (name?.kind !== 'string') return;
    const words = value?.kind === 'string' ? value.value.split(' ').filter((w) => w !== '') : [];
    switch (name.value.toUpperCase()) {
      case 'SASL':
        this.#capabilities.saslMechanisms = words.map((w) => w.toUpperCase());
        return;
      case 'STARTTLS':
        this.#capabilities.starttls = true;
        return;
      case 'XCLIENT':
        // Dovecot's managesieve-login lists XCLIENT to its login_trusted_networks only.
        this.#capabilities.xclient = true;
        return;
      case 'UNAUTHENTICATE':
        // Cyrus's timsieved lists it in its greeting; Dovecot's Pigeonhole does not offer it.
        this.#capabilities.unauthenticate = true;
        return;
    }
  }

  #afterGreeting(out: BackendAction[]): void {
    const problem = this.#credentialsProblem();
    if (problem !== null) return this.#fail(out, problem.refusal, `greeting: ${problem.detail}`);
    if (this.#options.starttls) {
      if (!this.#capabilities.starttls) return this.#fail(out, 'unavailable', 'greeting: the backend does not offer STARTTLS');
      this.#state = 'starttls';
      out.push(sendLine('STARTTLS'));
      return;
    }
    this.#afterCapabilities(out);
  }

  #afterCapabilities(out: BackendAction[]): void {
    if (!this.#capabilities.saslMechanisms.includes('PLAIN')) {
      // Dovecot and Cyrus list no mechanism at all where they take no password without TLS.
      const hint = this.#state === 'greeting' && this.#capabilities.saslMechanisms.length === 0 ? ': if it takes no password on a connection without TLS, set backend.tls to starttls or implicit' : '';
      return this.#fail(out, 'unavailable', `${this.#state}: the backend does not offer SASL PLAIN here (it offers "${this.#capabilities.saslMechanisms.join(' ')}")${hint}`);
    }
    const forward = this.#options.forward;
    const command = forward !== undefined && this.#capabilities.xclient ? xclientCommand(forward) : null;
    if (command !== null) {
      this.#state = 'xclient';
      out.push(sendLine(command));
      return;
    }
    this.#sendAuthenticate(out);
  }

  #sendAuthenticate(out: BackendAction[]): void {
    const { mode, user, password, proxyUser = '', proxyPassword = '' } = this.#options;
    let response: string;
    switch (mode) {
      case 'replay':
        response = encodePlain('', user, password);
        break;
      case 'master-user':
        // Dovecot's master user login "user*master", the same as for IMAP and POP3, so that one
        // auth_master_user_separator serves every protocol (Dovecot also takes authzid=user).
        response = encodePlain('', `${user}${this.#options.masterUserSeparator ?? '*'}${proxyUser}`, proxyPassword);
        break;
      case 'sasl-authzid':
        // RFC 4616: authzid = the user, authcid = the proxy account (Cyrus `proxyservers`).
        response = encodePlain(user, proxyUser, proxyPassword);
        break;
    }
    this.#state = 'authenticate';
    // Only now, not at XCLIENT: unlike IMAP's ID and POP3's XCLIENT, which share the login's
    // write, XCLIENT here waits for its answer alone, and a close meanwhile (a Dovecot restart
    // taking managesieve-login down) is an unreachable slot to hold for, not this login's answer.
    this.#loginSent = true;
    // RFC 5804 §2.1: the initial response rides on the command as a string.
    out.push(sendLine(`AUTHENTICATE "PLAIN" ${sieveString(response, 'client')}`));
  }

  /** What makes the configured credentials unsendable, if anything. */
  #credentialsProblem(): { refusal: Refusal; detail: string } | null {
    const { mode, user, password, proxyUser, proxyPassword, masterUserSeparator } = this.#options;
    if (mode !== 'replay' && (proxyUser === undefined || proxyPassword === undefined || proxyUser === '')) {
      return { refusal: 'unavailable', detail: `login mode ${mode} needs a proxy user and password` };
    }
    const sent = mode === 'replay' ? [user, password] : [user, proxyUser ?? '', proxyPassword ?? '', masterUserSeparator ?? ''];
    // NUL would shift the PLAIN fields; CR and LF have no business in a credential.
    if (user === '' || sent.some(hasUnsafeCharacters)) return { refusal: 'auth-failed', detail: 'credentials with unsafe characters' };
    return null;
  }

  #done(out: BackendAction[]): void {
    this.#state = 'done';
    // No CAPABILITY round trip after login: the client's reply carries none (RFC 5804 §2.1),
    // and a client that asks gets the backend's own answer through the splice. What the session
    // is told is whether the greeting offered UNAUTHENTICATE (its command guard depends on it).
    out.push({ type: 'done', capabilities: this.#capabilities.unauthenticate ? 'UNAUTHENTICATE' : '', leftover: this.#reader.takeBuffered() });
  }

  #fail(out: BackendAction[], refusal: Refusal, detail: string): void {
    this.#state = 'failed';
    this.#reader.reset();
    out.push({ type: 'fail', refusal, detail: oneLineText(redactCredentials(detail, this.#options)) });
  }
}

function emptyCapabilities(): BackendCapabilities {
  return { saslMechanisms: [], starttls: false, xclient: false, unauthenticate: false };
}

/** Dovecot's XCLIENT command (managesieve-login), or null when the values cannot be sent safely. */
function xclientCommand(forward: NonNullable<BackendLoginOptions['forward']>): string | null {
  const { ip, port, sessionId } = forward;
  const ipv4 = /^\d{1,3}(?:\.\d{1,3}){3}$/;
  const ipv6 = /^[0-9A-Fa-f:.]+$/;
  if (!(ipv4.test(ip) || (ip.includes(':') && ipv6.test(ip)))) return null;
  let command = `XCLIENT ADDR=${ip}`;
  if (Number.isInteger(port) && port >= 0 && port <= 65535) command += ` PORT=${port}`;
  if (sessionId.length <= MAX_SESSION_ID_CHARS && /^[A-Za-z0-9+/=._-]+$/.test(sessionId)) command += ` SESSION=${sessionId}`;
  return command;
}

const encoder = new TextEncoder();

function sendLine(line: string): BackendAction {
  return { type: 'send', data: encoder.encode(`${line}\r\n`) };
}
