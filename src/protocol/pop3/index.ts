/**
 * The POP3 protocol adapter: the POP3 half of a session, as the orchestrator sees it.
 * It only wires the pre-auth and backend login machines together; it holds no state and
 * must not import anything with I/O.
 */

import type { ProtocolAdapter } from '../types.js';
import { Pop3BackendLogin } from './backend.js';
import { Pop3Preauth } from './preauth.js';

/** The POP3 adapter; POP3 has no way to say goodbye mid-stream, so drainNotice is always null. */
export const pop3Adapter: ProtocolAdapter = Object.freeze({
  name: 'pop3',
  createPreauth: (options) => new Pop3Preauth(options),
  createBackendLogin: (options) => new Pop3BackendLogin(options),
  // A line inserted into a spliced POP3 stream could land inside a multi-line RETR response
  // and corrupt a message; the connection is just closed.
  drainNotice: () => null,
  // RFC 3206 has no per-client limit code; SYS/TEMP says "try again later" either way.
  connectionRefusal: (_limit, text) => `-ERR [SYS/TEMP] ${text.replace(/[\r\n\0]/g, ' ')}\r\n`,
} satisfies ProtocolAdapter);

export { Pop3Preauth, type Pop3PreauthState } from './preauth.js';
export { Pop3BackendLogin, type Pop3BackendState, classifyRefusal } from './backend.js';
