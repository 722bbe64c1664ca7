/**
 * The ManageSieve (RFC 5804) protocol adapter: the pre-auth machine, the backend login dialogue,
 * the drain notice and its response-boundary tracker, behind the ProtocolAdapter interface the
 * session uses for every protocol.
 * Must not: hold state of its own or do any I/O.
 */

import { SIEVE_GUARDED_WORDS, UNAUTHENTICATE_REFUSED, mayUnauthenticate, unauthenticateGuard } from '../../proxy/command-guard.js';
import type { ProtocolAdapter } from '../types.js';
import { ManageSieveBackendLogin } from './backend.js';
import { ManageSieveResponseBoundary } from './boundary.js';
import { ManageSievePreauth } from './preauth.js';
import { oneLineText, sieveString } from './wire.js';

/** The ManageSieve adapter. */
export const managesieveAdapter: ProtocolAdapter = Object.freeze({
  name: 'managesieve',
  createPreauth: (options) => new ManageSievePreauth(options),
  createBackendLogin: (options) => new ManageSieveBackendLogin(options),
  // RFC 5804 §1.3: BYE ends the connection, and TRYLATER tells the client to come back; the
  // store's new master answers the reconnect. Written only between responses (the tracker).
  drainNotice: (text) => `BYE (TRYLATER) ${sieveString(oneLineText(text), 'server')}\r\n`,
  createResponseTracker: () => new ManageSieveResponseBoundary(),
  // Cyrus's timsieved offers UNAUTHENTICATE (RFC 5804 §2.14.1) in its greeting: those sessions
  // are guarded. Dovecot's Pigeonhole does not offer it, and its sessions are not: the guard
  // refuses the words in a script too, and a vacation text that says STARTTLS could not be
  // uploaded. (The backend login passes on '' or 'UNAUTHENTICATE'; null, unknown, is guarded.)
  createCommandGuard: (capabilities) =>
    mayUnauthenticate(capabilities) ? { guard: unauthenticateGuard(SIEVE_GUARDED_WORDS, true), notice: `BYE ${sieveString(UNAUTHENTICATE_REFUSED, 'server')}\r\n` } : null,
  connectionRefusal: (_limit, text) => `BYE (TRYLATER) ${sieveString(oneLineText(text), 'server')}\r\n`,
} satisfies ProtocolAdapter);

export { ManageSievePreauth, PREAUTH_SIEVE_EXTENSIONS } from './preauth.js';
export { ManageSieveBackendLogin, type ManageSieveBackendState } from './backend.js';
export { ManageSieveResponseBoundary } from './boundary.js';
