/**
 * The one error type of mailfront: a stable `code` and a failure `kind`. The kind decides retry
 * (isRetryable, here), the wire answer (the session's refusalFor picks the refusal, which each
 * protocol's machine words with its response code; its UNAVAILABLE_TEXT the sentence), the metric label
 * (metrics.ts) and the admin API's status (admin.ts); the session answers the client once, in
 * its login's catch. Messages may name hosts and users; they never hold secrets.
 */
import { MAX_MAINTENANCE_REASON_BYTES } from './limits.js';

/** What went wrong, in the words that decide what happens next. */
export type FailureKind =
  | 'config' // configuration is invalid
  | 'auth-failed' // wrong password or unknown user
  | 'not-authorized' // the user authenticated, but may not log in under that name (a backend administrator's, the proxy account's)
  | 'auth-tempfail' // the directory could not answer (down, timed out, broken entry)
  | 'no-route' // user without a store, unknown store, store without a current master
  | 'maintenance' // the user's store is in maintenance (the store map says so): its clients are told the store's reason
  | 'held' // the user's directory entry holds the user (directory.hold_attribute: a mailbox being moved): told the hold's reason
  | 'expired' // the password was right, but the directory's password policy says it expired or must be changed after a reset
  | 'connect' // backend slot unreachable or refused the connection
  | 'local-resources' // mailfront could not open a connection for want of its own resources (open files, local ports): no slot's fault
  | 'backend-login' // backend refused our login or spoke nonsense
  | 'in-use' // backend says the mailbox is locked
  | 'login-delay' // backend says the user logged in too recently (POP3 [LOGIN-DELAY])
  | 'limit' // a size, time or count bound was exceeded
  | 'client-protocol' // the client broke the protocol
  | 'aborted' // the session ended while the operation waited
  | 'internal'; // a bug

export class MailfrontError extends Error {
  override readonly name = 'MailfrontError';
  /**
   * What the client is told, where the failure has words of its own for it (the reason of a
   * store in maintenance, from the store map; of a user's hold, from the directory); otherwise
   * the session's fixed text for the kind.
   */
  readonly clientText: string | undefined;
  /**
   * What a backend that refused the login told the user with IMAP [ALERT] (BackendAction fail's
   * `alerts`, made safe and bounded): passed on to the client before mailfront's own refusal,
   * which keeps its code and text (RFC 9051 §7.1: an alert must be presented to the user).
   */
  readonly alerts: readonly string[] | undefined;
  constructor(
    /** Stable, grep-able identifier, e.g. 'LDAP_UNREACHABLE'. */
    readonly code: string,
    readonly kind: FailureKind,
    message: string,
    options?: { cause?: unknown; clientText?: string; alerts?: readonly string[] },
  ) {
    const { clientText, alerts, ...errorOptions } = options ?? {};
    super(message, options === undefined ? undefined : errorOptions);
    this.clientText = clientText;
    this.alerts = alerts;
  }
}

/**
 * A reason an operator gives clients (a store's maintenance, a user's hold) is printable ASCII.
 * IMAP4rev1's response text is 7-bit (RFC 3501 §9: TEXT-CHAR is CHAR, %x01-7F), and mailfront
 * offers neither IMAP4rev2 nor UTF8=ACCEPT before login; no control character can break the line
 * it is sent on (CR, LF, NUL) either.
 */
const PRINTABLE_ASCII = /^[\x20-\x7e]+$/;

/**
 * Words YAML 1.1, LDAP habits or a person take for off (or on): as a reason they would put a
 * store in maintenance, or hold a user, with its clients told "off". Refused, whatever their case.
 */
const SWITCH_WORDS = new Set(['true', 'false', 'yes', 'no', 'on', 'off', 'y', 'n', '0', '1', 'null', '~', 'none', 'enabled', 'disabled']);

/** What a reason told to clients must be (tellableReason()), for the problems that name one that is not. */
export const TELLABLE_REASON = `printable ASCII of 1 to ${MAX_MAINTENANCE_REASON_BYTES} characters (IMAP's response text is 7-bit), that does not begin with "[" (a response code it would fake) nor begin or end with a space, and is not a word such as "off" or "no"`;

/**
 * Whether `text` may be told to clients as an operator's reason (a MailfrontError's clientText:
 * a store's maintenance, a user's hold), as TELLABLE_REASON says. A text that begins with "[" is
 * refused: an IMAP client would read `NO [UNAVAILABLE] [ALERT] ...` as naming another code, and it
 * means nothing to a person.
 */
export function tellableReason(text: string): boolean {
  return text.length <= MAX_MAINTENANCE_REASON_BYTES && PRINTABLE_ASCII.test(text) && !text.startsWith('[') && text.trim() === text && !SWITCH_WORDS.has(text.toLowerCase());
}

/** Wraps anything thrown into a MailfrontError, keeping MailfrontErrors as they are. */
export function asMailfrontError(error: unknown, fallbackCode = 'INTERNAL'): MailfrontError {
  if (error instanceof MailfrontError) return error;
  const message = error instanceof Error ? error.message : String(error);
  return new MailfrontError(fallbackCode, 'internal', message, { cause: error });
}

/** True for failures worth retrying against the store's current master while a login is held (the session's dial loop). */
export function isRetryable(kind: FailureKind): boolean {
  return kind === 'connect';
}
