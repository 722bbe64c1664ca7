/**
 * Rules the IMAP, POP3 and ManageSieve machines share, so that each is written once, and the
 * human texts of answers every protocol gives (the listeners' too).
 * Must not: do I/O, or know any protocol's wire syntax (each frames these texts its own way).
 */
import type { BackendLoginOptions, LoginRefusal } from './types.js';

/**
 * What a client is told when the server stops: the phrase (IMAP's BYE, ManageSieve's with a full
 * stop), and the sentence that says to come back (POP3's -ERR and the listeners' refusal: fetchmail
 * reads the words, not the code).
 */
export const SHUTTING_DOWN_PHRASE = 'Server shutting down';
export const SHUTTING_DOWN_TEXT = `${SHUTTING_DOWN_PHRASE}, please wait and try again later.`;

/**
 * The refusal of a connection over max_connections (at accept), and what a connection not logged
 * in that a full server closes to make room for a new one is told.
 */
export const TOTAL_LIMIT_TEXT = 'Too many connections, please wait and try again later.';

/** The refusal of a connection over max_connections_per_address (at accept, or at login for a forwarded address). */
export const ADDRESS_LIMIT_TEXT = 'Too many connections from your address, please wait and try again later.';

/**
 * The words of Dovecot's refusal of a login over mail_max_userip_connections (10 by default: the
 * user's connections from one client address), as Dovecot 2.3.19 words it: "Maximum number of
 * connections from user+IP exceeded (mail_max_userip_connections=10)". IMAP sends it with
 * [LIMIT], which says enough; POP3 with [IN-USE] and ManageSieve with no code at all, so there
 * only these words tell the user's limit from a locked maildrop or a refused password.
 */
export const BACKEND_USER_LIMIT_WORDS = /\bMaximum number of connections from user\+IP exceeded\b/i;

/**
 * Whether a refused login counts towards MAX_AUTH_ATTEMPTS: only refusals of the client's own
 * doing (wrong credentials, throttled, a name it may not log in as: a master login the filter does
 * not allow or to no such user, a reserved name). A backend outage or a locked mailbox is no
 * reason to close the connection. A name refused uncounted let one connection go on asking the
 * directory (a bind and a search each time) for as long as its deadline lasted.
 */
export function countsAsFailedLogin(refusal: LoginRefusal): boolean {
  return refusal === 'auth-failed' || refusal === 'limit' || refusal === 'not-authorized';
}

/**
 * The size a literal announces (`{N}`, `{N+}`: its decimal digits), or null when it is above
 * `limit`. Leading zeros are legal and change nothing (RFC 9051 and RFC 5804: number = 1*DIGIT).
 * Digit counts are compared before converting, so that no size can overflow or allocate; the
 * line bound limits how many zeros come first.
 */
export function literalSizeWithin(digits: string, limit: number): number | null {
  const significant = digits.replace(/^0+(?=\d)/, '');
  if (significant.length > String(limit).length) return null;
  const size = Number(significant);
  return size > limit ? null : size;
}

/**
 * `text` (a backend's answer, on its way into a log line or an error), or in its place a note
 * that it was withheld when it holds any form of the credentials mailfront sent: a backend that
 * quotes the command it refuses ("BAD Error in IMAP command LOGIN: ...") must not put a password
 * in the log. Withheld whole, not cut out: where a marker stood would tell a short password
 * ("Authentication [redacted]ed"). Forms: the passwords as sent, as their UTF-8 bytes read as
 * Latin-1 (how a line is decoded), base64 (SASL LOGIN), and the SASL PLAIN messages mailfront
 * sends. Called on a failure only, before the text is shortened.
 */
export function redactCredentials(text: string, options: Pick<BackendLoginOptions, 'user' | 'password' | 'proxyUser' | 'proxyPassword' | 'masterUserSeparator'>): string {
  const { user, password, proxyUser, proxyPassword, masterUserSeparator = '*' } = options;
  const secrets = [password, proxyPassword].filter((s): s is string => s !== undefined && s.length > 0);
  if (secrets.length === 0) return text;
  const forms = new Set<string>();
  const b64 = (s: string): string => Buffer.from(s, 'utf8').toString('base64');
  for (const secret of secrets) {
    forms.add(secret);
    forms.add(Buffer.from(secret, 'utf8').toString('latin1'));
    forms.add(b64(secret));
  }
  const pairs: Array<[string, string]> = [[user, password]];
  if (proxyUser !== undefined && proxyPassword !== undefined) pairs.push([proxyUser, proxyPassword], [`${user}${masterUserSeparator}${proxyUser}`, proxyPassword]);
  for (const authzid of ['', user]) for (const [authcid, secret] of pairs) if (secret.length > 0) forms.add(b64(`${authzid}\0${authcid}\0${secret}`));
  for (const form of forms) if (text.includes(form)) return CREDENTIALS_WITHHELD;
  return text;
}

/** What stands in the log for a backend's answer that quoted the credentials. */
export const CREDENTIALS_WITHHELD = '[the backend\'s answer quoted the credentials sent to it: withheld]';
