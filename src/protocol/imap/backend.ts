/**
 * The IMAP backend login dialogue: mailfront logging in to a backend slot on the user's behalf,
 * as explicit named states (greeting, capability, starttls, tls-handshake, login, post-capability,
 * done, failed; an ID with the client's address and its own ID parameters goes out pipelined
 * ahead of the login, in the login state). Credentials go out only as literals or SASL PLAIN.
 * Must not: open connections, time anything out, or show backend text to the client.
 */

import { MAX_BACKEND_DIALOGUE_BYTES, MAX_BACKEND_DIALOGUE_RESPONSES, MAX_BACKEND_RESPONSE_BYTES } from '../../limits.js';
import { encodePlain, hasUnsafeCharacters } from '../sasl.js';
import { ByteQueue } from '../bytes.js';
import type { BackendAction, BackendLoginMachine, BackendLoginOptions, ForwardedClientId } from '../types.js';
import { capabilityAtoms, normalCapabilityList, parseResponseLine, quoteString, safeText, type ResponseLine } from './wire.js';
import { redactCredentials } from '../rules.js';

/** The dialogue's states, in the order they are normally passed. */
export type ImapBackendState =
  | 'greeting' // waiting for "* OK"
  | 'capability' // CAPABILITY sent (greeting had none, or after TLS)
  | 'starttls' // STARTTLS sent
  | 'tls-handshake' // waiting for the session's tlsStarted()
  | 'login' // LOGIN or AUTHENTICATE sent (after a pipelined ID, if any), possibly waiting for "+" continuations
  | 'post-capability' // logged in, CAPABILITY sent because the OK carried none
  | 'done'
  | 'failed';

type Refusal = Extract<BackendAction, { type: 'fail' }>['refusal'];

/**
 * Replayed credentials longer than this (user and password, UTF-8 bytes) go out as AUTHENTICATE
 * PLAIN instead of LOGIN when the backend offers it. Dovecot's imap-login reads all of a
 * command's arguments, literals included, into a buffer of 1026 bytes (LOGIN_MAX_INBUF_SIZE) and
 * answers a longer LOGIN with "* BYE Input buffer full" and a close; an AUTHENTICATE response is
 * read into a buffer of its own, of 8 KiB (LOGIN_MAX_AUTH_BUF_SIZE). 900 leaves room for the
 * literal headers and the space between them. Shorter credentials keep LOGIN, which every
 * backend takes.
 */
export const LONG_CREDENTIALS_BYTES = 900;

/** RFC 7888: LITERAL- allows non-synchronising literals of up to 4096 octets. */
const LITERAL_MINUS_MAX_BYTES = 4096;

/** Longest literal size string we parse from a backend; MAX_BACKEND_RESPONSE_BYTES has fewer digits. */
const MAX_LITERAL_DIGITS = String(MAX_BACKEND_RESPONSE_BYTES).length;

const LF = 0x0a;
const CR = 0x0d;

/** Response codes of a NO to LOGIN that mean a temporary or server-side problem rather than wrong credentials (RFC 5530). */
const UNAVAILABLE_CODES = new Set(['UNAVAILABLE', 'SERVERBUG', 'PRIVACYREQUIRED', 'OVERQUOTA']);

/** Reads backend responses line by line, skipping over literals, with a bound on one response; counts the bytes read in all. */
class ResponseReader {
  private readonly input = new ByteQueue();
  private firstLine: string | null = null;
  // The line being read stays in `input` until its LF is there (copying each read's bytes out
  // held a Uint8Array per read); `scanned` is how much of it was already searched for the LF,
  // so that each byte is scanned once.
  private scanned = 0;
  private responseBytes = 0;
  private literalRemaining = 0;
  /** Bytes of every response read so far, literals included (the machine bounds the dialogue with it). */
  dialogueBytes = 0;

  push(chunk: Uint8Array): void {
    this.input.push(chunk);
  }

  /** Drops everything buffered (after STARTTLS). */
  discard(): void {
    this.input.clear();
    this.scanned = 0;
  }

  /** The unconsumed bytes, exactly as received (a partly read line is not among them); the reader is empty afterwards. */
  takeBuffered(): Uint8Array {
    const rest = this.input.view().slice(this.scanned);
    this.discard();
    return rest;
  }

  /** The first line of the next complete response; 'too-long' past the bound; null for more input. */
  next(): string | 'too-long' | null {
    for (;;) {
      if (this.literalRemaining > 0) {
        const take = Math.min(this.literalRemaining, this.input.length);
        this.input.consume(take);
        this.dialogueBytes += take;
        this.literalRemaining -= take;
        if (this.literalRemaining > 0) return null;
      }
      const input = this.input.view();
      const budget = MAX_BACKEND_RESPONSE_BYTES - this.responseBytes;
      const window = Math.min(input.length, budget);
      const found = input.subarray(this.scanned, window).indexOf(LF);
      if (found < 0) {
        if (window === budget) return 'too-long';
        this.scanned = window;
        return null;
      }
      const lf = this.scanned + found;
      this.scanned = 0;
      // Decoded straight from the queue, however many reads the line took.
      const end = lf > 0 && input[lf - 1] === CR ? lf - 1 : lf;
      const segment = Buffer.from(input.buffer, input.byteOffset, end).toString('latin1');
      this.responseBytes += lf + 1;
      this.dialogueBytes += lf + 1;
      this.input.consume(lf + 1);
      const first = this.firstLine === null;
      this.firstLine ??= segment;
      // Untagged data (ID, LIST, ...) may carry literals: "{N}" at a line end announces N octets
      // that belong to the same response (RFC 3501 §4.3). A status response (tagged, untagged
      // OK/NO/BAD/BYE/PREAUTH) or a continuation request ends in resp-text, plain text to the end
      // of the line (RFC 3501 §7.1, RFC 9051 §7.1): "{30}" there is words, and waiting for 30
      // octets would hold the login until its timeout.
      const literal = segment.endsWith('}') && !(first && isStatusLine(segment)) ? /\{(\d+)\+?\}$/.exec(segment) : null;
      if (literal !== null) {
        const digits = literal[1] as string;
        if (digits.length > MAX_LITERAL_DIGITS || this.responseBytes + Number(digits) > MAX_BACKEND_RESPONSE_BYTES) return 'too-long';
        this.responseBytes += Number(digits);
        this.literalRemaining = Number(digits);
        continue;
      }
      const line = this.firstLine;
      this.firstLine = null;
      this.responseBytes = 0;
      return line;
    }
  }
}

/** Untagged status responses: their text runs to the end of the line. */
const UNTAGGED_STATUS = /^\* (?:OK|NO|BAD|BYE|PREAUTH)(?: |$)/i;

/**
 * Whether the first line of a response is a status response or a continuation request, whose
 * text can hold no literal: every tagged line (tag SP resp-cond-state), "+ ...", and untagged
 * OK, NO, BAD, BYE and PREAUTH. Only other untagged lines are data that may.
 */
function isStatusLine(line: string): boolean {
  return !line.startsWith('* ') || UNTAGGED_STATUS.test(line);
}

/**
 * Capability lists already taken apart. A backend announces the same one or two lists at every
 * login, so each is split and upper-cased once; the sets are shared, hence read-only. Bounded:
 * odd backends cannot make it grow past CAPABILITY_SETS_MAX lists.
 */
const capabilitySets = new Map<string, ReadonlySet<string>>();
const CAPABILITY_SETS_MAX = 64;

function capabilitySet(list: string): ReadonlySet<string> {
  let set = capabilitySets.get(list);
  if (set === undefined) {
    set = new Set(capabilityAtoms(list).map((atom) => atom.toUpperCase()));
    if (capabilitySets.size >= CAPABILITY_SETS_MAX) capabilitySets.clear();
    capabilitySets.set(list, set);
  }
  return set;
}

/** The IMAP backend login machine; see BackendLoginMachine for the contract. */
export class ImapBackendLoginMachine implements BackendLoginMachine {
  private current: ImapBackendState = 'greeting';
  private readonly reader = new ResponseReader();
  private tagCounter = 0;
  private tag = '';
  /** The backend's capabilities, upper-cased, or null when not (or no longer) known. */
  private capabilities: ReadonlySet<string> | null = null;
  /** TLS is in force: from the first byte (backend.tls: implicit), or since our STARTTLS. */
  private tlsDone: boolean;
  /** The tag of the ID pipelined ahead of the login command, until its reply is in. */
  private idTag: string | null = null;
  /** Parts of the login command still waiting for a "+" continuation. */
  private continuations: Uint8Array[] = [];
  private loginCapabilities: string | null = null;
  /**
   * [ALERT]s of the backend's login answer (untagged, or its tagged answer's), for the client (RFC
   * 9051 §7.1: presented to the user): each as the untagged line a login that succeeds passes on,
   * and as its text alone, which a refused login's answer carries (the session words it).
   */
  private alerts: { readonly line: string; readonly text: string }[] = [];
  private loginCommandSent = false;
  /** Responses read so far, of any kind. */
  private responses = 0;

  constructor(private readonly options: BackendLoginOptions) {
    this.tlsDone = options.implicitTls === true;
  }

  /** The current state's name, for logs. */
  get state(): ImapBackendState {
    return this.current;
  }

  get loginSent(): boolean {
    return this.loginCommandSent;
  }

  receive(chunk: Uint8Array): BackendAction[] {
    switch (this.current) {
      case 'greeting':
      case 'capability':
      case 'starttls':
      case 'login':
      case 'post-capability':
        this.reader.push(chunk);
        return this.run([]);
      case 'tls-handshake':
      case 'done':
      case 'failed':
        return [];
    }
  }

  tlsStarted(): BackendAction[] {
    if (this.current !== 'tls-handshake') return [];
    this.tlsDone = true;
    // RFC 3501 §6.2.1: capabilities learned before TLS must be discarded and asked for again.
    this.setCapabilities(null);
    const out: BackendAction[] = [];
    this.command(out, 'CAPABILITY', 'capability');
    return out;
  }

  private run(out: BackendAction[]): BackendAction[] {
    while (this.current !== 'done' && this.current !== 'failed' && this.current !== 'tls-handshake') {
      const line = this.reader.next();
      if (line === null) break;
      if (line === 'too-long') {
        this.fail(out, 'unavailable', `${this.current}: response longer than ${MAX_BACKEND_RESPONSE_BYTES} bytes`);
        break;
      }
      // Untagged responses are ignored while a tagged one is awaited: a backend that keeps
      // sending them would keep the login (and this loop) going until the login timeout.
      this.responses++;
      if (this.reader.dialogueBytes > MAX_BACKEND_DIALOGUE_BYTES) {
        this.fail(out, 'unavailable', `${this.current}: login dialogue longer than ${MAX_BACKEND_DIALOGUE_BYTES} bytes`);
        break;
      }
      if (this.responses > MAX_BACKEND_DIALOGUE_RESPONSES) {
        this.fail(out, 'unavailable', `${this.current}: more than ${MAX_BACKEND_DIALOGUE_RESPONSES} responses in the login dialogue`);
        break;
      }
      this.onResponse(parseResponseLine(line), line, out);
    }
    return out;
  }

  private onResponse(response: ResponseLine, line: string, out: BackendAction[]): void {
    switch (this.current) {
      case 'greeting':
        return this.onGreeting(response, line, out);
      case 'capability':
        if (this.takeUntaggedCapability(response)) return;
        return this.onTagged(response, line, out, () => {
          if (this.capabilities === null) return this.fail(out, 'unavailable', 'capability: no CAPABILITY in the reply');
          this.next(out);
        });
      case 'starttls':
        return this.onTagged(response, line, out, () => {
          // Bytes after the OK were sent in plaintext and could be a man in the middle's: drop them.
          this.reader.discard();
          this.current = 'tls-handshake';
          out.push({ type: 'starttls' });
        });
      case 'login':
        return this.onLoginResponse(response, line, out);
      case 'post-capability':
        if (response.kind === 'untagged' && response.word === 'CAPABILITY') {
          this.loginCapabilities = normalCapabilityList(response.rest);
          return;
        }
        if (response.kind === 'tagged' && response.tag === this.tag) {
          // Already logged in: a failed CAPABILITY only means the client has to ask itself.
          return this.finish(out, response.word === 'OK' ? this.loginCapabilities : null);
        }
        return this.onUnexpected(response, line, out);
      case 'tls-handshake':
      case 'done':
      case 'failed':
        return;
    }
  }

  private onGreeting(response: ResponseLine, line: string, out: BackendAction[]): void {
    if (response.kind !== 'untagged' || response.word !== 'OK') {
      // PREAUTH would mean the backend logged us in as someone already; BYE means it is refusing.
      return this.fail(out, 'unavailable', `greeting: ${line}`);
    }
    const problem = this.credentialsProblem();
    if (problem !== null) return this.fail(out, problem.refusal, `greeting: ${problem.detail}`);
    if (response.codeName === 'CAPABILITY' && response.codeArgs !== null) {
      this.setCapabilities(response.codeArgs);
    }
    this.next(out);
  }

  /** Untagged responses while waiting for a tagged one: CAPABILITY is kept, BYE ends it, the rest is ignored. */
  private takeUntaggedCapability(response: ResponseLine): boolean {
    if (response.kind !== 'untagged' || response.word !== 'CAPABILITY') return false;
    this.setCapabilities(response.rest);
    return true;
  }

  private onTagged(response: ResponseLine, line: string, out: BackendAction[], ok: () => void): void {
    if (response.kind === 'tagged' && response.tag === this.tag) {
      if (response.word === 'OK') return ok();
      return this.fail(out, 'unavailable', `${this.current}: ${line}`);
    }
    this.onUnexpected(response, line, out);
  }

  private onUnexpected(response: ResponseLine, line: string, out: BackendAction[]): void {
    if (response.kind === 'untagged' && response.word !== 'BYE') return;
    this.fail(out, 'unavailable', `${this.current}: unexpected response: ${line}`);
  }

  private onLoginResponse(response: ResponseLine, line: string, out: BackendAction[]): void {
    if (response.kind === 'continuation') {
      const part = this.continuations.shift();
      if (part === undefined) return this.fail(out, 'unavailable', `login: unexpected continuation: ${line}`);
      out.push({ type: 'send', data: part });
      return;
    }
    if (response.kind === 'untagged') {
      if (response.word === 'CAPABILITY') {
        this.loginCapabilities = normalCapabilityList(response.rest);
        return;
      }
      // "Your password expires soon", "quota almost full": the user must see it. Passed on as
      // the first bytes after the login reply (untagged responses may come at any time); only
      // a few, each one safe line.
      if ((response.word === 'OK' || response.word === 'NO') && response.codeName === 'ALERT') {
        this.keepAlert(response);
        return;
      }
      return this.onUnexpected(response, line, out);
    }
    if (response.tag === this.idTag) {
      // The pipelined ID's reply comes first. Its content does not matter, and NO or BAD only
      // means that the backend ignores the forwarded address.
      this.idTag = null;
      return;
    }
    if (response.tag !== this.tag) return this.onUnexpected(response, line, out);
    // The client gets mailfront's own tagged answer, not this one: an [ALERT] here would be lost,
    // so it goes on as an untagged OK [ALERT], after those read before it (RFC 9051 §7.1). A
    // refusal's too ("your account is locked, call the helpdesk"): the session passes it on before
    // its own tagged NO, which keeps mailfront's code and text.
    if (response.codeName === 'ALERT') this.keepAlert(response, 'OK');
    switch (response.word) {
      case 'OK': {
        if (response.codeName === 'CAPABILITY' && response.codeArgs !== null) {
          this.loginCapabilities = normalCapabilityList(response.codeArgs);
        }
        if (this.loginCapabilities !== null) return this.finish(out, this.loginCapabilities);
        return this.command(out, 'CAPABILITY', 'post-capability');
      }
      case 'NO':
        return this.fail(out, classifyLoginNo(response.codeName), `login: ${line}`);
      default:
        return this.fail(out, 'unavailable', `login: ${line}`);
    }
  }

  /**
   * Keeps an [ALERT] of the login answer for the client, as an untagged line of `word` (an
   * untagged one's own), made safe and bounded. One that quotes the credentials sent (the proxy
   * account's password, in master-user or sasl-authzid mode) is not the user's to see: dropped.
   */
  private keepAlert(response: ResponseLine, word = response.word): void {
    if (this.alerts.length >= MAX_ALERTS || redactCredentials(response.rest, this.options) !== response.rest) return;
    // The text after the code: response.rest begins with it ("[ALERT] ..."), its "]" found by the parser.
    this.alerts.push({ line: `* ${word} ${safeText(response.rest, MAX_ALERT_CHARS)}\r\n`, text: safeText(response.rest.slice(response.rest.indexOf(']') + 1), MAX_ALERT_CHARS) });
  }

  /** Takes the next step once the current one is complete. */
  private next(out: BackendAction[]): void {
    if (this.options.starttls && !this.tlsDone) {
      if (this.capabilities === null) return this.command(out, 'CAPABILITY', 'capability');
      if (!this.hasCapability('STARTTLS')) return this.fail(out, 'unavailable', 'starttls: the backend does not offer STARTTLS');
      return this.command(out, 'STARTTLS', 'starttls');
    }
    if (this.capabilities === null) return this.command(out, 'CAPABILITY', 'capability');
    // The client's address goes out as an ID pipelined ahead of the login command, in the same
    // write (as Dovecot's own proxy does): one round trip for both. The backend answers them in
    // order, and LOGIN does not depend on ID's answer. Only to a backend that lists ID (RFC 2971):
    // to another it is an unknown command ahead of the credentials, answered BAD at best. The
    // address is then not forwarded, without a word, as POP3 and ManageSieve send no XCLIENT to
    // a backend that does not offer it. The client's own ID parameters go in the same ID.
    const { forward, clientId } = this.options;
    const id = (forward !== undefined || (clientId !== undefined && clientId !== null)) && this.hasCapability('ID') ? this.idCommand(forward, clientId) : null;
    const at = out.length;
    this.login(out);
    // A login that cannot go out to this backend: nothing was sent, the ID neither.
    if (this.current === 'failed') return;
    this.loginCommandSent = true;
    const first = out[at];
    if (id !== null && first?.type === 'send') out[at] = { type: 'send', data: Buffer.concat([id, first.data]) };
  }

  /**
   * The ID command carrying the client's address and port and the session id, then the client's
   * own ID parameters (tag kept in idTag); null when it would carry nothing.
   */
  private idCommand(forward: BackendLoginOptions['forward'], clientId: ForwardedClientId | null | undefined): Buffer | null {
    const fields: string[] = [];
    const add = (name: string, value: string): void => {
      const quoted = quoteString(value);
      if (quoted !== null) fields.push(`"${name}" ${quoted}`);
    };
    if (forward !== undefined) {
      add('x-originating-ip', forward.ip);
      if (Number.isInteger(forward.port) && forward.port >= 0 && forward.port <= 65535) add('x-originating-port', String(forward.port));
      add('x-session-id', forward.sessionId);
    }
    if (clientId !== undefined && clientId !== null) {
      // Values with 8-bit text are literals ({N+}): to a backend that takes neither LITERAL+ nor
      // LITERAL- (each at most 1 KiB, under LITERAL-'s 4 KiB) they would need a "+" each, ahead
      // of the login: those pairs are left out, the others go.
      const literals = this.hasCapability('LITERAL+') || this.hasCapability('LITERAL-');
      const pairs = literals ? clientId.pairs : clientId.pairs.slice(0, clientId.quotedLength);
      if (pairs !== '') fields.push(pairs);
    }
    if (fields.length === 0) return null;
    this.idTag = this.nextTag();
    return Buffer.from(`${this.idTag} ID (${fields.join(' ')})\r\n`);
  }

  private login(out: BackendAction[]): void {
    const { mode, user, password, proxyUser = '', proxyPassword = '' } = this.options;
    // LOGINDISABLED is how Dovecot (disable_plaintext_auth) and Cyrus (allowplaintext: no) say
    // that a connection without TLS takes no password: neither lists AUTH=PLAIN there either.
    // The password (or the proxy account's) would cross the network in clear at every login, to
    // be refused with [PRIVACYREQUIRED]: nothing secret goes out, the slot's backend.tls is what
    // to change (Dovecot's own proxy refuses so too). After our STARTTLS the list is the new one.
    if (this.hasCapability('LOGINDISABLED') && !this.tlsDone) {
      return this.fail(out, 'unavailable', 'login: the backend advertises LOGINDISABLED (it takes no password on a connection without TLS): set backend.tls to starttls or implicit');
    }
    switch (mode) {
      case 'replay':
        if (Buffer.byteLength(user, 'utf8') + Buffer.byteLength(password, 'utf8') > LONG_CREDENTIALS_BYTES && this.hasCapability('AUTH=PLAIN')) {
          return this.authenticatePlain(out, encodePlain('', user, password));
        }
        return this.loginOrPlain(out, user, password);
      case 'master-user':
        return this.loginOrPlain(out, `${user}${this.options.masterUserSeparator ?? '*'}${proxyUser}`, proxyPassword);
      case 'sasl-authzid':
        // A backend that does not list AUTH=PLAIN would refuse it (and the proxy password would
        // have gone out for nothing): a setup to change, not a wrong password.
        if (!this.hasCapability('AUTH=PLAIN')) return this.fail(out, 'unavailable', 'login: login mode sasl-authzid needs AUTH=PLAIN, which the backend does not offer');
        return this.authenticatePlain(out, encodePlain(user, proxyUser, proxyPassword));
    }
  }

  /**
   * LOGIN, unless the backend lists LOGINDISABLED (RFC 3501 §7.2.1, RFC 9051 §6.2.3: the client
   * MUST NOT send LOGIN then); then the same user and password as AUTHENTICATE PLAIN (an empty
   * authzid) where it offers AUTH=PLAIN: Dovecot's LOGIN is its PLAIN mechanism underneath, the
   * master-user separator included.
   */
  private loginOrPlain(out: BackendAction[], loginUser: string, loginPassword: string): void {
    if (!this.hasCapability('LOGINDISABLED')) return this.loginCommand(out, loginUser, loginPassword);
    if (this.hasCapability('AUTH=PLAIN')) return this.authenticatePlain(out, encodePlain('', loginUser, loginPassword));
    return this.fail(out, 'unavailable', 'login: the backend advertises LOGINDISABLED and does not offer AUTH=PLAIN');
  }

  /** AUTHENTICATE PLAIN with this base64 response. */
  private authenticatePlain(out: BackendAction[], response: string): void {
    // RFC 4959: with SASL-IR the response rides on the command; otherwise it waits for "+".
    if (this.hasCapability('SASL-IR')) return this.command(out, `AUTHENTICATE PLAIN ${response}`, 'login');
    this.continuations = [Buffer.from(`${response}\r\n`)];
    return this.command(out, 'AUTHENTICATE PLAIN', 'login');
  }

  /** LOGIN with both arguments as literals, so that no character needs quoting (as nginx does). */
  private loginCommand(out: BackendAction[], loginUser: string, loginPassword: string): void {
    this.tag = this.nextTag();
    const literalPlus = this.hasCapability('LITERAL+');
    const literalMinus = this.hasCapability('LITERAL-');
    // Built as text and encoded once per write: the literals' contents are UTF-8, the rest ASCII.
    const groups: string[] = [];
    let current = `${this.tag} LOGIN `;
    [loginUser, loginPassword].forEach((value, index) => {
      const length = Buffer.byteLength(value, 'utf8');
      if (index > 0) current += ' ';
      if (literalPlus || (literalMinus && length <= LITERAL_MINUS_MAX_BYTES)) {
        current += `{${length}+}\r\n${value}`;
      } else {
        // A synchronising literal: the rest waits for the backend's "+".
        groups.push(`${current}{${length}}\r\n`);
        current = value;
      }
    });
    groups.push(`${current}\r\n`);
    const [first, ...rest] = groups.map((group) => Buffer.from(group, 'utf8'));
    this.continuations = rest;
    this.current = 'login';
    if (first !== undefined) out.push({ type: 'send', data: first });
  }

  /** What makes the configured credentials unsendable, if anything. */
  private credentialsProblem(): { refusal: Refusal; detail: string } | null {
    const { mode, user, password, proxyUser, proxyPassword, masterUserSeparator } = this.options;
    if (mode !== 'replay' && (proxyUser === undefined || proxyPassword === undefined || proxyUser === '')) {
      return { refusal: 'unavailable', detail: `login mode ${mode} needs a proxy user and password` };
    }
    const sent = mode === 'replay' ? [user, password] : [user, proxyUser ?? '', proxyPassword ?? '', masterUserSeparator ?? ''];
    // Never send CR, LF or NUL, even inside a literal: the session should have refused them already.
    if (user === '' || sent.some(hasUnsafeCharacters)) return { refusal: 'auth-failed', detail: 'credentials with unsafe characters' };
    return null;
  }

  private setCapabilities(list: string | null): void {
    this.capabilities = list === null ? null : capabilitySet(list);
  }

  private hasCapability(name: string): boolean {
    return this.capabilities?.has(name) ?? false;
  }

  private nextTag(): string {
    this.tagCounter++;
    return `mf${this.tagCounter}`;
  }

  private command(out: BackendAction[], text: string, state: ImapBackendState): void {
    this.tag = this.nextTag();
    this.current = state;
    out.push({ type: 'send', data: Buffer.from(`${this.tag} ${text}\r\n`) });
  }

  private finish(out: BackendAction[], capabilities: string | null): void {
    this.current = 'done';
    const rest = this.reader.takeBuffered();
    const leftover = this.alerts.length === 0 ? rest : Buffer.concat([Buffer.from(this.alerts.map((alert) => alert.line).join(''), 'latin1'), rest]);
    out.push({ type: 'done', capabilities, leftover });
  }

  private fail(out: BackendAction[], refusal: Refusal, detail: string): void {
    this.current = 'failed';
    this.reader.discard();
    // What the backend told the user with [ALERT] in its answer goes with the refusal (RFC 9051 §7.1).
    const alerts = this.alerts.map((alert) => alert.text).filter((text) => text !== '');
    out.push({ type: 'fail', refusal, detail: safeText(redactCredentials(detail, this.options)), ...(alerts.length > 0 ? { alerts } : {}) });
  }
}

/** At most this many [ALERT] lines of a backend login reach the client, each at most this long (mailfront's own too: loginAlert). */
const MAX_ALERTS = 4;
export const MAX_ALERT_CHARS = 400;

/** Classifies a tagged NO to LOGIN/AUTHENTICATE by its RFC 5530 response code. */
export function classifyLoginNo(codeName: string | null): Refusal {
  if (codeName === 'INUSE') return 'in-use';
  // RFC 5530 LIMIT: a limit of the user's, such as Dovecot's connections per user and client
  // address (mail_max_userip_connections), not the server's trouble nor the fleet's.
  if (codeName === 'LIMIT') return 'limit';
  if (codeName !== null && UNAVAILABLE_CODES.has(codeName)) return 'unavailable';
  // AUTHENTICATIONFAILED, AUTHORIZATIONFAILED, EXPIRED, no code at all: the credentials were refused.
  return 'auth-failed';
}
