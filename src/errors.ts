/**
 * The one error type of mailfront: a stable `code` and a failure `kind`. The kind decides retry
 * (isRetryable, here), the wire answer (the session's refusalFor picks the refusal, which each
 * protocol's machine words with its response code; its UNAVAILABLE_TEXT the sentence), the metric label
 * (metrics.ts) and the admin API's status (admin.ts); the session answers the client once, in
 * its login's catch. Messages may name hosts and users; they never hold secrets.
 */

/** What went wrong, in the words that decide what happens next. */
export type FailureKind =
  | 'config' // configuration is invalid
  | 'auth-failed' // wrong password or unknown user
  | 'not-authorized' // the user authenticated, but may not log in under that name (a backend administrator's, the proxy account's)
  | 'auth-tempfail' // the directory could not answer (down, timed out, broken entry)
  | 'no-route' // user without a store, unknown store, store without a current master
  | 'maintenance' // the user's store is in maintenance (the store map says so): its clients are told the store's reason
  | 'held' // the user's directory entry holds the user (directory.hold_attribute: a mailbox being moved): told the hold's reason
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
  constructor(
    /** Stable, grep-able identifier, e.g. 'LDAP_UNREACHABLE'. */
    readonly code: string,
    readonly kind: FailureKind,
    message: string,
    options?: { cause?: unknown; clientText?: string },
  ) {
    const { clientText, ...errorOptions } = options ?? {};
    super(message, options === undefined ? undefined : errorOptions);
    this.clientText = clientText;
  }
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
