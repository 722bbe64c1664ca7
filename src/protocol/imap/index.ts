/**
 * The IMAP protocol adapter: the pre-auth machine, the backend login dialogue and the drain
 * notice, behind the ProtocolAdapter interface the session uses for every protocol.
 * Must not: hold state of its own or do any I/O.
 */

import { IMAP_GUARDED_WORDS, UNAUTHENTICATE_REFUSED, mayUnauthenticate, unauthenticateGuard } from '../../proxy/command-guard.js';
import type { ProtocolAdapter } from '../types.js';
import { ImapBackendLoginMachine, MAX_ALERT_CHARS } from './backend.js';
import { ImapPreauthMachine } from './preauth.js';
import { safeText } from './wire.js';
import { ImapResponseBoundary } from './boundary.js';

/**
 * A capability list without what the guard refuses (UNAUTHENTICATE, STARTTLS, COMPRESS=…): a
 * client such as imapflow or Thunderbird turns COMPRESS on by itself when it is offered.
 */
function withoutGuarded(capabilities: string): string {
  return capabilities
    .split(' ')
    .filter((atom) => atom !== '' && !IMAP_GUARDED_WORDS.some((word) => atom.toUpperCase() === word || atom.toUpperCase().startsWith(`${word}=`)))
    .join(' ');
}

/** The IMAP adapter. */
export const imapAdapter: ProtocolAdapter = Object.freeze({
  name: 'imap',
  createPreauth: (options) => new ImapPreauthMachine(options),
  createBackendLogin: (options) => new ImapBackendLoginMachine(options),
  // RFC 9051 §7.1.5: an untagged BYE may be sent at any time, even mid-stream; [UNAVAILABLE]
  // (RFC 5530) tells the client to come back, and the store's new master will answer it.
  drainNotice: (text) => `* BYE [UNAVAILABLE] ${safeText(text)}\r\n`,
  createResponseTracker: () => new ImapResponseBoundary(),
  // A backend that offers UNAUTHENTICATE (RFC 8437) would let a spliced client log in there
  // again as someone else: its sessions are guarded. Dovecot does not offer it; Cyrus 3.6 offers it
  // to its admins only, not in its AUTHENTICATE reply (admins are backend.reserved_users, never spliced).
  createCommandGuard: (capabilities) =>
    mayUnauthenticate(capabilities)
      ? { guard: unauthenticateGuard(), notice: `* BYE ${UNAUTHENTICATE_REFUSED}\r\n`, ...(capabilities === null ? {} : { capabilities: withoutGuarded(capabilities) }) }
      : null,
  // RFC 5530: [UNAVAILABLE] for a temporary server-side condition, [LIMIT] for a per-client one.
  connectionRefusal: (limit, text) => `* BYE [${limit === 'total' ? 'UNAVAILABLE' : 'LIMIT'}] ${safeText(text)}\r\n`,
  // RFC 9051 §7.1: [ALERT] text must be presented to the user (Thunderbird shows a dialog). Before
  // the tagged OK, as part of the login's answer; made safe and bounded as a backend's alert is.
  loginAlert: (text) => `* OK [ALERT] ${safeText(text, MAX_ALERT_CHARS)}\r\n`,
} satisfies ProtocolAdapter);
