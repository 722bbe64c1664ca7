/**
 * Rules the IMAP, POP3 and ManageSieve machines share, so that each is written once.
 * Must not: do I/O, or know any protocol's wire text.
 */
import type { LoginRefusal } from './types.js';

/**
 * Whether a refused login counts towards MAX_AUTH_ATTEMPTS: only refusals of the client's own
 * doing (wrong credentials, throttled). A backend outage or a locked mailbox is no reason to
 * close the connection.
 */
export function countsAsFailedLogin(refusal: LoginRefusal): boolean {
  return refusal === 'auth-failed' || refusal === 'limit';
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
