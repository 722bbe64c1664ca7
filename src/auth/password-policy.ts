/**
 * The LDAP password policy control (draft-behera-ldap-password-policy-10 §6: OpenLDAP's ppolicy
 * overlay, 389 DS), on a user's bind: the request, and the answer it carries back on success and
 * on failure. Reads the answer's BER itself (ldapts 8.2 hands a response control it does not know
 * to the request control of the same type). Knows nothing of sessions; ldap.ts decides what an
 * answer means for a login.
 */
import { Control } from 'ldapts';
import type { BerReader } from 'ldapts';
import { berLength } from '../ber.js';

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
