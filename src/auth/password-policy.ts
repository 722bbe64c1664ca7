/**
 * The LDAP password policy control (draft-behera-ldap-password-policy-10 §6: OpenLDAP's ppolicy
 * overlay, 389 DS), on a user's bind: the request, and the answer it carries back on success and
 * on failure. Reads the answer's BER itself (ldapts 8.2 hands a response control it does not know
 * to the request control of the same type). Also what the user is told of a warning
 * (directory.password_policy's alerts: their texts and how often), which the session sends.
 * Knows nothing of sessions or protocols; ldap.ts decides what an answer means for a login.
 */
import { Control } from 'ldapts';
import type { BerReader } from 'ldapts';
import { LRUCache } from 'lru-cache';
import { berLength } from '../ber.js';
import type { PasswordWarning } from './directory.js';

/** The control's type, of the request and of the answer (draft §6.1, §6.2). */
export const PASSWORD_POLICY_OID = '1.3.6.1.4.1.42.2.27.8.5.1';

/** The error names of the answer (draft §6.2), by their ENUMERATED value. */
const ERRORS = ['passwordExpired', 'accountLocked', 'changeAfterReset', 'passwordModNotAllowed', 'mustSupplyOldPassword', 'insufficientPasswordQuality', 'passwordTooShort', 'passwordTooYoung', 'passwordInHistory'] as const;

/** An error of the answer; `error N` for a value the draft does not name. */
export type PasswordPolicyError = (typeof ERRORS)[number] | `error ${number}`;

/** What the server's answer said: a warning (at most one of the two) and an error, each absent when not sent. */
export interface PasswordPolicyAnswer {
  /** timeBeforeExpiration: the password expires in this many seconds. */
  readonly expiresInS?: number;
  /** graceAuthNsRemaining: the password has expired, and this many more binds with it are allowed. */
  readonly graceLeft?: number;
  readonly error?: PasswordPolicyError;
}

/**
 * The request (no value, not critical: RFC 4511 §4.1.11, a server that does not know it ignores
 * it), one per bind: the server's answer is read into it (`answer`), ldapts giving it the answer's
 * value. `answer` stays undefined when the server sent none, and is 'unreadable' when what it sent
 * is no PasswordPolicyResponseValue.
 */
export class PasswordPolicyRequest extends Control {
  answer: PasswordPolicyAnswer | 'unreadable' | undefined;

  constructor() {
    super(PASSWORD_POLICY_OID, { critical: false });
  }

  protected override parseControl(reader: BerReader): void {
    this.answer = decodePasswordPolicy(reader.buffer) ?? 'unreadable';
  }
}

/** A non-negative INTEGER or ENUMERATED's content (at most 4 bytes of value; a leading 0 may make 5); null when it is none. */
function unsigned(content: Uint8Array): number | null {
  if (content.length === 0 || content.length > 5 || (content[0]! & 0x80) !== 0) return null;
  if (content.length === 5 && content[0] !== 0) return null;
  let value = 0;
  for (const byte of content) value = value * 256 + byte;
  return value;
}

/**
 * The element of `der` at `at`: its tag, content and where the next begins; null when its length
 * is not there, or runs past `end`.
 */
function element(der: Uint8Array, at: number, end: number): { readonly tag: number; readonly content: Uint8Array; readonly next: number } | null {
  const length = berLength(der.subarray(0, end), at);
  if (typeof length !== 'object' || length.start + length.length > end) return null;
  return { tag: der[at]!, content: der.subarray(length.start, length.start + length.length), next: length.start + length.length };
}

/**
 * Reads a PasswordPolicyResponseValue (draft §6.2, implicit tags):
 * SEQUENCE { warning [0] CHOICE { timeBeforeExpiration [0] INTEGER, graceAuthNsRemaining [1]
 * INTEGER } OPTIONAL, error [1] ENUMERATED OPTIONAL }. Null when `value` is not one.
 */
export function decodePasswordPolicy(value: Uint8Array): PasswordPolicyAnswer | null {
  const outer = element(value, 0, value.length);
  if (outer === null || outer.tag !== 0x30 || outer.next !== value.length) return null;
  const body = outer.content;
  let at = 0;
  let expiresInS: number | undefined;
  let graceLeft: number | undefined;
  let error: PasswordPolicyError | undefined;
  if (at < body.length && body[at] === 0xa0) {
    const warning = element(body, at, body.length);
    if (warning === null) return null;
    const choice = element(warning.content, 0, warning.content.length);
    if (choice === null || choice.next !== warning.content.length) return null;
    const n = unsigned(choice.content);
    if (n === null) return null;
    if (choice.tag === 0x80) expiresInS = n;
    else if (choice.tag === 0x81) graceLeft = n;
    else return null;
    at = warning.next;
  }
  if (at < body.length && body[at] === 0x81) {
    const found = element(body, at, body.length);
    const n = found === null ? null : unsigned(found.content);
    if (found === null || n === null) return null;
    error = ERRORS[n] ?? `error ${n}`;
    at = found.next;
  }
  if (at !== body.length) return null;
  return { ...(expiresInS !== undefined ? { expiresInS } : {}), ...(graceLeft !== undefined ? { graceLeft } : {}), ...(error !== undefined ? { error } : {}) };
}

/** What the user is told of a password about to expire, unless directory.password_policy.expiring_alert says otherwise. */
export const DEFAULT_EXPIRING_ALERT = 'Your password expires in {left}, please change it soon.';

/** What the user is told at a grace login, unless directory.password_policy.grace_alert says otherwise. */
export const DEFAULT_GRACE_ALERT = 'Your password has expired, please change it now. Logins left with it: {grace}.';

/** How often a user is told that the password expires, unless directory.password_policy.alert_interval_ms says otherwise: once a day. */
export const DEFAULT_ALERT_INTERVAL_MS = 86_400_000;

/**
 * The placeholders of each alert: the time left in words (`{left}`: "9 days", "1 day", "5 hours",
 * "less than an hour"), whole days and whole hours left (rounded down: 0 on the last day), grace
 * logins left.
 */
export const EXPIRING_ALERT_PLACEHOLDERS = ['{left}', '{days}', '{hours}'] as const;
export const GRACE_ALERT_PLACEHOLDERS = ['{grace}'] as const;

/** The longest alert text configured (its placeholders written out may add a few characters; the IMAP line is bounded again). */
export const MAX_ALERT_TEXT_CHARS = 300;

/** Printable ASCII: IMAP4rev1's response text is 7-bit (RFC 3501 §9), and no control character (CR, LF, NUL) may break its line. */
const PRINTABLE_ASCII = /^[\x20-\x7e]*$/;

/** Why `text` cannot be an alert's text (without its placeholders' check), or undefined when it can. */
export function alertTextProblem(text: string): string | undefined {
  if (text.length > MAX_ALERT_TEXT_CHARS) return `${text.length} characters`;
  if (!PRINTABLE_ASCII.test(text)) return 'a character that is not printable ASCII (a control character such as CR, LF or NUL, or 8-bit text)';
  return undefined;
}

/** What directory.password_policy says the user is told (the reader always sets it when the policy is on). */
export interface PasswordAlertsConfig {
  /** The text of an expiring password's alert (`{left}`, `{days}`, `{hours}`); '' tells nothing. */
  readonly expiringAlert: string;
  /** The text of a grace login's alert (`{grace}`); '' tells nothing. */
  readonly graceAlert: string;
  /** A user told of an expiring password is not told again on this instance for this long (0: at every login). */
  readonly alertIntervalMs: number;
}

/** The defaults of PasswordAlertsConfig. */
export const DEFAULT_PASSWORD_ALERTS: PasswordAlertsConfig = Object.freeze({ expiringAlert: DEFAULT_EXPIRING_ALERT, graceAlert: DEFAULT_GRACE_ALERT, alertIntervalMs: DEFAULT_ALERT_INTERVAL_MS });

/**
 * What a login with a warning gets: the text to tell (`told`), or why nothing is told: the user was
 * told of the expiring password on this instance within alert_interval_ms (`interval`), or the
 * alert's text is '' (`off`).
 */
export type PasswordAlert = { readonly state: 'told'; readonly text: string } | { readonly state: 'interval' | 'off' | 'expired' };

/**
 * Whom this instance told of an expiring password, and when: so that a client opening several
 * connections, and reconnecting all day (Thunderbird), shows its user one dialog a day, not one
 * per connection. By entry (DN: one user under all the names it logs in with), in a bounded LRU;
 * a user it forgot (more users told than it holds) may be told again sooner. Each instance of a
 * fleet keeps its own. A grace login is told every time: each one uses up one of the few left.
 */
export class PasswordAlerts {
  private told: LRUCache<string, true> | undefined;
  private max = 0;

  /**
   * What a login now of the entry `dn` with `warning` is told, by `config`; a `told` answer counts
   * as told (the caller sends it). `maxEntries`: how many users are remembered (the directory
   * caches' bound; a change forgets them all). `now`: performance.now(), the clock of
   * `warning.expiresAt`.
   */
  take(warning: PasswordWarning, dn: string, config: PasswordAlertsConfig, maxEntries: number, now = performance.now()): PasswordAlert {
    if (warning.kind === 'grace') {
      return config.graceAlert === '' ? { state: 'off' } : { state: 'told', text: config.graceAlert.replaceAll('{grace}', String(warning.graceLeft)) };
    }
    if (config.expiringAlert === '') return { state: 'off' };
    // A cached login's warning (auth_cache_ttl_ms) whose time ran out meanwhile: "expires in ..."
    // would be untrue, and the next bind is refused or a grace login, told as such.
    if (warning.expiresAt <= now) return { state: 'expired' };
    if (config.alertIntervalMs > 0) {
      if (this.told === undefined || this.max !== maxEntries) {
        this.told = new LRUCache({ max: maxEntries });
        this.max = maxEntries;
      }
      if (this.told.has(dn)) return { state: 'interval' };
      this.told.set(dn, true, { ttl: config.alertIntervalMs });
    }
    // Rounded down, as the log's expiresInDays: 0 on the last day.
    const leftMs = warning.expiresAt - now;
    const days = Math.floor(leftMs / 86_400_000);
    const hours = Math.floor(leftMs / 3_600_000);
    const text = config.expiringAlert.replaceAll('{left}', timeLeftInWords(days, hours)).replaceAll('{days}', String(days)).replaceAll('{hours}', String(hours));
    return { state: 'told', text };
  }
}

/**
 * `{left}`: whole days while a day or more is left, then whole hours, then "less than an hour";
 * so that the last day does not read "0 days".
 */
export function timeLeftInWords(days: number, hours: number): string {
  if (days >= 1) return days === 1 ? '1 day' : `${days} days`;
  if (hours >= 1) return hours === 1 ? '1 hour' : `${hours} hours`;
  return 'less than an hour';
}
