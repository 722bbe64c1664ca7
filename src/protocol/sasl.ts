/**
 * SASL PLAIN (RFC 4616) and LOGIN (draft-murchison-sasl-login) decoding and encoding.
 * Pure functions; no I/O. Credentials with CR, LF or NUL inside a field, or that are not UTF-8,
 * are rejected here, so that nothing unsafe or altered can ever be replayed to a backend.
 */

/** A decoded SASL result: credentials, or the reason they were refused. */
export type SaslDecodeResult =
  | { readonly ok: true; readonly authzid: string; readonly user: string; readonly password: string }
  | { readonly ok: false; readonly reason: 'bad-base64' | 'bad-format' | 'bad-characters' };

const BASE64_RE = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/** Decodes strict base64 (no whitespace, correct padding); null when malformed. */
export function decodeBase64Strict(text: string): Buffer | null {
  if (!BASE64_RE.test(text)) return null;
  return Buffer.from(text, 'base64');
}

/** RFC 4616 §2: the fields are UTF-8; bytes that are not cannot be passed on faithfully (they would become U+FFFD). */
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** A field as UTF-8 text, or null when its bytes are not valid UTF-8. */
function utf8Text(bytes: Uint8Array): string | null {
  try {
    return utf8.decode(bytes);
  } catch {
    return null;
  }
}

/** True when a credential field holds a character that must never reach a backend. */
export function hasUnsafeCharacters(value: string): boolean {
  return /[\r\n\0]/.test(value);
}

/** Decodes a SASL PLAIN message: authzid NUL authcid NUL passwd (RFC 4616 §2). */
export function decodePlain(base64: string): SaslDecodeResult {
  const raw = decodeBase64Strict(base64);
  if (raw === null) return { ok: false, reason: 'bad-base64' };
  const parts: Buffer[] = [];
  let start = 0;
  for (let i = 0; i < raw.length; i++) {
    if (raw[i] === 0) {
      parts.push(raw.subarray(start, i));
      start = i + 1;
    }
  }
  parts.push(raw.subarray(start));
  if (parts.length !== 3) return { ok: false, reason: 'bad-format' };
  const texts = parts.map(utf8Text);
  if (texts.includes(null)) return { ok: false, reason: 'bad-characters' };
  const [authzid, user, password] = texts as [string, string, string];
  if (user.length === 0) return { ok: false, reason: 'bad-format' };
  if ([authzid, user, password].some(hasUnsafeCharacters)) return { ok: false, reason: 'bad-characters' };
  return { ok: true, authzid, user, password };
}

/** Decodes one SASL LOGIN response (a base64 username or password). */
export function decodeLoginField(base64: string): { ok: true; value: string } | { ok: false; reason: 'bad-base64' | 'bad-characters' } {
  const raw = decodeBase64Strict(base64);
  if (raw === null) return { ok: false, reason: 'bad-base64' };
  const value = utf8Text(raw);
  if (value === null || hasUnsafeCharacters(value)) return { ok: false, reason: 'bad-characters' };
  return { ok: true, value };
}

/** Encodes a SASL PLAIN message as base64. */
export function encodePlain(authzid: string, user: string, password: string): string {
  return Buffer.from(`${authzid}\0${user}\0${password}`, 'utf8').toString('base64');
}

/** The LOGIN mechanism's challenges, base64 of "Username:" and "Password:". */
export const LOGIN_USERNAME_CHALLENGE = Buffer.from('Username:').toString('base64');
export const LOGIN_PASSWORD_CHALLENGE = Buffer.from('Password:').toString('base64');
