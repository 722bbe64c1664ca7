/**
 * The POP3 backend login dialogue: greeting, optional STLS, then USER/PASS or AUTH PLAIN with an
 * optional XCLIENT pipelined ahead of it, as explicit named states (the state name appears in logs).
 * USER/PASS goes out without CAPA: a backend that takes no password without TLS refuses USER, before
 * PASS (Dovecot's disable_plaintext_auth, Cyrus's allowplaintext: no). AUTH PLAIN carries the
 * password in its first command, so on a connection without TLS it goes out only once CAPA lists
 * SASL PLAIN; under TLS it needs no asking. Whether the backend takes XCLIENT is read from its
 * greeting, as Dovecot's own proxy does, which saves a round trip per login.
 * Sans-I/O: backend bytes in, BackendActions out. It owns what is said to the backend before
 * the splice; it must not touch sockets, timers, config or logs, and never sends a credential
 * holding CR, LF or NUL.
 */

import { MAX_BACKEND_RESPONSE_BYTES } from '../../limits.js';
import { encodePlain, hasUnsafeCharacters } from '../sasl.js';
import type { BackendAction, BackendLoginMachine, BackendLoginOptions } from '../types.js';
import { LineReader, lineText, oneLine } from './lines.js';
import { BACKEND_USER_LIMIT_WORDS, redactCredentials } from '../rules.js';

/** The backend dialogue's states, named after what the machine waits for. */
export type Pop3BackendState =
  | 'greeting' // the backend's +OK banner
  | 'stls' // the reply to STLS
  | 'tls-handshake' // the session's TLS handshake (tlsStarted)
  | 'capa' // the reply to CAPA, asked before AUTH PLAIN on a connection without TLS
  | 'capa-list' // CAPA's capability lines, up to the "."
  | 'xclient' // the reply to XCLIENT (the login command is already on its way behind it)
  | 'user' // the reply to USER
  | 'pass' // the reply to PASS
  | 'auth' // the reply to AUTH PLAIN: +OK, -ERR or a "+ " continuation
  | 'auth-response' // the reply after the PLAIN response was sent on a continuation
  | 'done'
  | 'failed';

type Refusal = Extract<BackendAction, { type: 'fail' }>['refusal'];

// RFC 5034 §4: a client must not send an initial response that makes the AUTH command longer
// than RFC 2449's 255 octets; it waits for the empty challenge and sends the response then.
const MAX_AUTH_COMMAND_BYTES = 255;

/**
 * Replayed credentials longer than this (user and password, UTF-8 bytes) go out as AUTH PLAIN
 * instead of USER/PASS. Dovecot's pop3-login reads a command line into a buffer of 1026 bytes
 * (LOGIN_MAX_INBUF_SIZE) and answers a longer PASS with "-ERR Input buffer full" and a close;
 * a SASL response sent on a continuation is read into a buffer of its own, of 8 KiB
 * (LOGIN_MAX_AUTH_BUF_SIZE). Such a PASS is past RFC 2449's 255 octets anyway.
 * Without TLS they go out only when CAPA lists SASL PLAIN (Dovecot offers it wherever it takes
 * USER/PASS: both are plaintext authentication); under TLS without asking, as USER/PASS would.
 * Shorter credentials keep USER/PASS, which every POP3 server takes, with no CAPA.
 */
export const LONG_CREDENTIALS_BYTES = 900;

// Dovecot ignores a SESSION value longer than this (LOGIN_MAX_SESSION_ID_LEN).
const MAX_SESSION_ID_CHARS = 64;

/** The POP3 backend login machine; create one per backend connection. */
export class Pop3BackendLogin implements BackendLoginMachine {
  readonly #options: BackendLoginOptions;
  readonly #input = new LineReader();
  #state: Pop3BackendState = 'greeting';
  #consumedBytes = 0;
  #xclient = false;
  /** The state the pipelined login command put the machine in, entered once XCLIENT is answered. */
  #afterXclient: Pop3BackendState = 'user';
  #pendingPassword = '';
  #saslResponse = '';
  #loginSent = false;
  /** TLS from the first byte (backend.tls: implicit) or since our STLS: AUTH PLAIN needs no CAPA. */
  #tls: boolean;
  /** CAPA's answer once read: its -ERR line if it refused, the SASL mechanisms, whether it lists USER. */
  #capa: { readonly refused: string | null; readonly sasl: readonly string[]; readonly user: boolean } | null = null;
  /** CAPA's list as it is read. */
  #capaSasl: string[] = [];
  #capaUser = false;

  constructor(options: BackendLoginOptions) {
    this.#options = options;
    this.#tls = options.implicitTls === true;
  }

  /** The current state's name, for logs. */
  get state(): Pop3BackendState {
    return this.#state;
  }

  get loginSent(): boolean {
    return this.#loginSent;
  }

  receive(chunk: Uint8Array): BackendAction[] {
    switch (this.#state) {
      case 'tls-handshake':
        // Bytes after the STLS +OK and before the handshake are discarded: a man in the middle
        // could otherwise inject responses that we would read as sent under TLS.
        return [];
      case 'done':
      case 'failed':
        return [];
      case 'greeting':
      case 'stls':
      case 'capa':
      case 'capa-list':
      case 'xclient':
      case 'user':
      case 'pass':
      case 'auth':
      case 'auth-response':
        this.#input.push(chunk);
        return this.#drain();
    }
  }

  tlsStarted(): BackendAction[] {
    if (this.#state !== 'tls-handshake') return [];
    this.#tls = true;
    return this.#sendLogin();
  }

  #drain(): BackendAction[] {
    const actions: BackendAction[] = [];
    while (this.#state !== 'done' && this.#state !== 'failed' && this.#state !== 'tls-handshake') {
      const line = this.#input.takeLine();
      if (line === null) {
        // The dialogue before login is small; a backend that sends this much is broken or hostile.
        if (this.#consumedBytes + this.#input.pendingBytes >= MAX_BACKEND_RESPONSE_BYTES) {
          actions.push(this.#fail('unavailable', 'backend response too long'));
        }
        break;
      }
      this.#consumedBytes += line.wireBytes;
      if (this.#consumedBytes > MAX_BACKEND_RESPONSE_BYTES) {
        actions.push(this.#fail('unavailable', 'backend response too long'));
        break;
      }
      actions.push(...this.#line(lineText(line.content)));
    }
    return actions;
  }

  #line(line: string): BackendAction[] {
    const kind = replyKind(line);
    switch (this.#state) {
      case 'greeting':
        if (kind === 'err') return [this.#fail('unavailable', `greeting: ${oneLine(line)}`)];
        if (kind !== 'ok') return [this.#fail('unavailable', `unexpected greeting: ${oneLine(line)}`)];
        // Dovecot's extension: a trusted client is told in the banner that XCLIENT works
        // (pop3-login's "[XCLIENT]" greeting prefix). Without it, XCLIENT would be refused.
        this.#xclient = /^\+OK \[XCLIENT\]/i.test(line);
        if (this.#options.starttls) {
          this.#state = 'stls';
          return [sendLine('STLS')];
        }
        return this.#sendLogin();
      case 'stls':
        if (kind !== 'ok') return [this.#fail('unavailable', `STLS refused: ${oneLine(line)}`)];
        this.#state = 'tls-handshake';
        this.#input.clear();
        return [{ type: 'starttls' }];
      case 'capa':
        if (kind === 'ok') {
          this.#state = 'capa-list';
          return [];
        }
        if (kind === 'err') {
          // A response code says why (RFC 2449 §8, RFC 3206): [SYS/TEMP], [SYS/PERM] or [IN-USE]
          // is the backend refusing this session, not a server without CAPA (Cyrus pop3d with its
          // shutdown file greets, then answers CAPA with [SYS/TEMP] and closes).
          const refusal = sessionRefusal(line);
          if (refusal !== null) return [this.#fail(refusal, `CAPA refused: ${oneLine(line)}`)];
          // A server without CAPA offers no SASL: RFC 5034 §3 has it listed there.
          this.#capa = { refused: oneLine(line), sasl: [], user: false };
          return this.#sendLogin();
        }
        return [this.#fail('unavailable', `unexpected CAPA reply: ${oneLine(line)}`)];
      case 'capa-list':
        if (line !== '.') {
          this.#capaLine(line.startsWith('.') ? line.slice(1) : line); // RFC 1939 §3: dot-stuffed
          return [];
        }
        this.#capa = { refused: null, sasl: this.#capaSasl, user: this.#capaUser };
        return this.#sendLogin();
      case 'xclient':
        // A refused XCLIENT only costs the client's address in the backend's logs; the login
        // command pipelined behind it is answered next.
        if (kind === 'ok' || kind === 'err') {
          this.#state = this.#afterXclient;
          return [];
        }
        return [this.#fail('unavailable', `unexpected XCLIENT reply: ${oneLine(line)}`)];
      case 'user':
        if (kind === 'ok') {
          this.#state = 'pass';
          return [sendLine(`PASS ${this.#passwordToSend()}`)];
        }
        return [this.#loginRefused(line, kind)];
      case 'pass':
      case 'auth-response':
        if (kind === 'ok') return [this.#done()];
        return [this.#loginRefused(line, kind)];
      case 'auth':
        if (kind === 'continue') {
          this.#state = 'auth-response';
          return [sendLine(this.#saslResponse)];
        }
        if (kind === 'ok') return [this.#done()];
        return [this.#loginRefused(line, kind)];
      case 'tls-handshake':
      case 'done':
      case 'failed':
        return [];
    }
  }

  /**
   * The login command, with XCLIENT ahead of it in the same write when the backend takes it.
   * Pipelining without CAPA's PIPELINING (RFC 2449 §6.6) is safe here: only Dovecot's greeting
   * says [XCLIENT], and Dovecot reads pipelined commands in order (its own proxy sends these so).
   */
  #sendLogin(): BackendAction[] {
    const actions = this.#loginCommand();
    // CAPA went out first; the login (and XCLIENT ahead of it) waits for its answer.
    if (this.#state === 'capa') return actions;
    const forward = this.#options.forward;
    const first = actions[0];
    if (first?.type === 'send') this.#loginSent = true;
    if (forward === undefined || !this.#xclient || first?.type !== 'send') return actions;
    const command = xclientCommand(forward);
    if (command === null) return actions;
    this.#afterXclient = this.#state;
    this.#state = 'xclient';
    return [{ type: 'send', data: Buffer.concat([encoder.encode(`${command}\r\n`), first.data]) }, ...actions.slice(1)];
  }

  #loginCommand(): BackendAction[] {
    const { mode, user } = this.#options;
    switch (mode) {
      case 'replay': {
        const { password } = this.#options;
        if (encoder.encode(user).length + encoder.encode(password).length <= LONG_CREDENTIALS_BYTES) return this.#sendUser(user, password);
        if (user.length === 0 || hasUnsafeCharacters(user) || hasUnsafeCharacters(password)) {
          return [this.#fail('auth-failed', 'credentials cannot be sent safely')];
        }
        return this.#authPlain(encodePlain('', user, password), `credentials over ${LONG_CREDENTIALS_BYTES} bytes need SASL PLAIN`);
      }
      case 'master-user': {
        const { proxyUser, proxyPassword } = this.#options;
        if (proxyUser === undefined || proxyPassword === undefined) {
          return [this.#fail('unavailable', 'master-user login needs proxyUser and proxyPassword')];
        }
        // Dovecot's master user login: "user*master" with the master user's password.
        const separator = this.#options.masterUserSeparator ?? '*';
        return this.#sendUser(`${user}${separator}${proxyUser}`, proxyPassword);
      }
      case 'sasl-authzid': {
        const { proxyUser, proxyPassword } = this.#options;
        if (proxyUser === undefined || proxyPassword === undefined) {
          return [this.#fail('unavailable', 'sasl-authzid login needs proxyUser and proxyPassword')];
        }
        if ([user, proxyUser, proxyPassword].some(hasUnsafeCharacters) || user.length === 0) {
          return [this.#fail('auth-failed', 'credentials cannot be sent safely')];
        }
        // RFC 4616: authzid NUL authcid NUL password; Cyrus lets the proxyservers account
        // (authcid) act as the user (authzid).
        return this.#authPlain(encodePlain(user, proxyUser, proxyPassword), 'login mode sasl-authzid needs SASL PLAIN');
      }
    }
  }

  /**
   * AUTH PLAIN with this base64 response: on the command when it fits (RFC 5034 §4), else on the
   * "+ " continuation. Without TLS, CAPA first, and AUTH only when its SASL line lists PLAIN: the
   * response is the password (the proxy account's, which can act as any user) in clear, and a
   * backend that takes no password without TLS (Dovecot's disable_plaintext_auth, Cyrus's
   * allowplaintext: no) lists neither PLAIN nor USER there; it would refuse the login after the
   * password had crossed the network. As IMAP's LOGINDISABLED, a setup to change, not a password.
   */
  #authPlain(response: string, needs: string): BackendAction[] {
    if (!this.#tls) {
      const capa = this.#capa;
      if (capa === null) {
        this.#state = 'capa';
        return [sendLine('CAPA')];
      }
      if (!capa.sasl.includes('PLAIN')) {
        if (capa.refused !== null) return [this.#fail('unavailable', `capa: ${needs}, and the backend does not answer CAPA (${capa.refused})`)];
        if (!capa.user) {
          return [this.#fail('unavailable', 'capa: the backend offers neither SASL PLAIN nor USER (it takes no password on a connection without TLS): set backend.tls to starttls or implicit')];
        }
        return [this.#fail('unavailable', `capa: ${needs}, which the backend does not offer here (it offers "${capa.sasl.join(' ')}")`)];
      }
    }
    this.#saslResponse = response;
    this.#state = 'auth';
    const withInitial = `AUTH PLAIN ${response}`;
    return [sendLine(withInitial.length + 2 <= MAX_AUTH_COMMAND_BYTES ? withInitial : 'AUTH PLAIN')];
  }

  /** One line of CAPA's list: the SASL mechanisms (RFC 2449 §6.3, RFC 5034 §3) and USER (RFC 2449 §6.2). */
  #capaLine(line: string): void {
    const [name = '', ...words] = line.split(' ').filter((w) => w !== '');
    switch (name.toUpperCase()) {
      case 'SASL':
        this.#capaSasl = words.map((w) => w.toUpperCase());
        return;
      case 'USER':
        this.#capaUser = true;
        return;
    }
  }

  #sendUser(loginName: string, password: string): BackendAction[] {
    // USER takes one argument (RFC 1939 §7): a space would split it, CR/LF would start a new command.
    if (loginName.length === 0 || hasUnsafeCharacters(loginName) || loginName.includes(' ') || hasUnsafeCharacters(password)) {
      return [this.#fail('auth-failed', 'credentials cannot be sent safely')];
    }
    this.#pendingPassword = password;
    this.#state = 'user';
    return [sendLine(`USER ${loginName}`)];
  }

  #passwordToSend(): string {
    const password = this.#pendingPassword;
    this.#pendingPassword = '';
    return password;
  }

  #done(): BackendAction {
    this.#state = 'done';
    this.#saslResponse = '';
    return { type: 'done', capabilities: null, leftover: this.#input.takeAll() };
  }

  #loginRefused(line: string, kind: ReplyKind): BackendAction {
    if (kind !== 'err') return this.#fail('unavailable', `unexpected login reply: ${line}`);
    return this.#fail(classifyRefusal(line), line);
  }

  #fail(refusal: Refusal, detail: string): BackendAction {
    this.#state = 'failed';
    this.#input.clear();
    this.#pendingPassword = '';
    this.#saslResponse = '';
    // Redacted whole, then shortened: a password cut in two by the shortening would not be found.
    return { type: 'fail', refusal, detail: oneLine(redactCredentials(detail, this.#options)) };
  }
}

type ReplyKind = 'ok' | 'err' | 'continue' | 'other';

function replyKind(line: string): ReplyKind {
  if (/^\+OK(?: |$)/i.test(line)) return 'ok';
  if (/^-ERR(?: |$)/i.test(line)) return 'err';
  // RFC 5034 §4: a continuation is "+" SP base64; some servers omit the space when it is empty.
  if (line === '+' || line.startsWith('+ ')) return 'continue';
  return 'other';
}

/** Maps a backend's -ERR to a refusal by its RFC 2449/3206 response code. */
export function classifyRefusal(line: string): Refusal {
  const code = /^-ERR \[([^\]]*)\]/i.exec(line)?.[1]?.toUpperCase() ?? '';
  // Dovecot answers a login over mail_max_userip_connections with [IN-USE] and its own words: the
  // user's connections, not a locked maildrop (BACKEND_USER_LIMIT_WORDS).
  if (BACKEND_USER_LIMIT_WORDS.test(line)) return 'limit';
  if (code === 'IN-USE' || code.startsWith('IN-USE/')) return 'in-use';
  // RFC 2449 §8.1.2: the user logs in more often than the server allows (Cyrus pop3d's
  // popminpoll): the user's own doing, relayed so that the client waits, not the server's trouble.
  if (code === 'LOGIN-DELAY' || code.startsWith('LOGIN-DELAY/')) return 'login-delay';
  // [SYS/TEMP] and [SYS/PERM] are the server's own trouble, never the user's password (RFC 3206 §4).
  if (code === 'SYS' || code.startsWith('SYS/')) return 'unavailable';
  return 'auth-failed';
}

/**
 * The refusal an -ERR with a response code means when it answers CAPA, which carries no
 * credentials: whatever classifyRefusal() reads as other than a refused password (the server's
 * trouble, a held mailbox, a limit). Null for a bare -ERR, how a server without CAPA answers,
 * and for [AUTH] or an unknown code, which say nothing of this session.
 */
function sessionRefusal(line: string): Refusal | null {
  if (!/^-ERR \[[^\]]*\]/i.test(line)) return null;
  const refusal = classifyRefusal(line);
  return refusal === 'auth-failed' ? null : refusal;
}

/** Dovecot's XCLIENT command, or null when the values cannot be sent safely. */
function xclientCommand(forward: NonNullable<BackendLoginOptions['forward']>): string | null {
  const { ip, port, sessionId } = forward;
  const ipv4 = /^\d{1,3}(?:\.\d{1,3}){3}$/;
  const ipv6 = /^[0-9A-Fa-f:.]+$/;
  if (!(ipv4.test(ip) || (ip.includes(':') && ipv6.test(ip)))) return null;
  let command = `XCLIENT ADDR=${ip}`;
  if (Number.isInteger(port) && port >= 0 && port <= 65535) command += ` PORT=${port}`;
  if (sessionId.length <= MAX_SESSION_ID_CHARS && /^[A-Za-z0-9+/=._-]+$/.test(sessionId)) {
    command += ` SESSION=${sessionId}`;
  }
  return command;
}

const encoder = new TextEncoder();

function sendLine(line: string): BackendAction {
  return { type: 'send', data: encoder.encode(`${line}\r\n`) };
}
