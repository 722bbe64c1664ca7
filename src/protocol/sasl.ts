/**
 * SASL PLAIN (RFC 4616) and LOGIN (draft-murchison-sasl-login) decoding and encoding.
 * Pure functions; no I/O. Credentials with CR, LF or NUL inside a field, or that are not UTF-8,
 * are rejected here, so that nothing unsafe or altered can ever be replayed to a backend.
 */

import { MAX_OAUTH_TOKEN_BYTES } from '../limits.js';

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

/** The OAuth 2.0 bearer-token mechanisms: OAUTHBEARER (RFC 7628) and Google's XOAUTH2. */
export type BearerMechanism = 'OAUTHBEARER' | 'XOAUTH2';

/** The bearer mechanisms, as the machines offer them after PLAIN and LOGIN (with oauth2). */
export const BEARER_MECHANISMS: readonly BearerMechanism[] = ['OAUTHBEARER', 'XOAUTH2'];

/** True when `mechanism` (upper case) is a bearer one. */
export function isBearerMechanism(mechanism: string | undefined): mechanism is BearerMechanism {
  return mechanism === 'OAUTHBEARER' || mechanism === 'XOAUTH2';
}

/** The longest access token handed on, in bytes (limits.ts says why). */
export { MAX_OAUTH_TOKEN_BYTES };

/** A decoded OAUTHBEARER or XOAUTH2 client response, or why it was refused. */
export type BearerDecodeResult =
  | { readonly ok: true; readonly user: string | undefined; readonly token: string }
  | { readonly ok: false; readonly reason: 'bad-base64' | 'bad-format' | 'bad-characters' | 'too-long' };

/** RFC 6750 §2.1 b64token: what a bearer token may hold (no space, control character or quote). */
const B64TOKEN = /^[A-Za-z0-9\-._~+/]+=*$/;
/** RFC 7628 §3.1: the auth value, "Bearer" (any case) and the token. */
const AUTH_VALUE = /^bearer +(.*)$/i;
/** RFC 7628 §3.1 key: 1*ALPHA. */
const SASL_KEY = /^[A-Za-z]+$/;

/**
 * Decodes an OAUTHBEARER client response (RFC 7628 §3.1): a GS2 header `n,a=<authzid>,` (no
 * channel binding: "y" is taken as "n", as the client says the server offered none; "p=" is
 * refused), then key=value pairs ended by %x01, `auth=Bearer <token>` among them, then %x01.
 * The authzid is the user the client says the token is for (RFC 5801 saslname, =2C and =3D
 * decoded); absent when it names none.
 */
export function decodeOAuthBearer(base64: string): BearerDecodeResult {
  const text = bearerText(base64);
  if (typeof text !== 'string') return text;
  const firstSeparator = text.indexOf('\x01');
  if (firstSeparator < 0) return { ok: false, reason: 'bad-format' };
  const gs2 = /^([ny]),(?:a=([^,]*))?,$/.exec(text.slice(0, firstSeparator));
  if (gs2 === null) return { ok: false, reason: 'bad-format' };
  let user: string | undefined;
  if (gs2[2] !== undefined) {
    // RFC 5801 §4: "," and "=" are written =2C and =3D; any other "=" is malformed.
    if (/=(?!2C|3D)/.test(gs2[2])) return { ok: false, reason: 'bad-format' };
    user = gs2[2].replace(/=2C/g, ',').replace(/=3D/g, '=');
    if (user === '') return { ok: false, reason: 'bad-format' };
  }
  const pairs = keyValues(text.slice(firstSeparator + 1));
  if (pairs === null) return { ok: false, reason: 'bad-format' };
  return bearerResult(user, pairs.get('auth'));
}

/**
 * Decodes an XOAUTH2 client response (Google's form): `user=<user>` %x01 `auth=Bearer <token>`
 * %x01 %x01. The user is required.
 */
export function decodeXOAuth2(base64: string): BearerDecodeResult {
  const text = bearerText(base64);
  if (typeof text !== 'string') return text;
  const pairs = keyValues(text);
  if (pairs === null) return { ok: false, reason: 'bad-format' };
  const user = pairs.get('user');
  if (user === undefined || user === '') return { ok: false, reason: 'bad-format' };
  return bearerResult(user, pairs.get('auth'));
}

/** Decodes either mechanism's client response. */
export function decodeBearer(mechanism: BearerMechanism, base64: string): BearerDecodeResult {
  return mechanism === 'OAUTHBEARER' ? decodeOAuthBearer(base64) : decodeXOAuth2(base64);
}

/** The response as UTF-8 text, or why it is none; CR, LF and NUL are refused (they are never part of a user name or token). */
function bearerText(base64: string): string | BearerDecodeResult {
  const raw = decodeBase64Strict(base64);
  if (raw === null) return { ok: false, reason: 'bad-base64' };
  const text = utf8Text(raw);
  if (text === null || hasUnsafeCharacters(text)) return { ok: false, reason: 'bad-characters' };
  return text;
}

/** `key=value` %x01 pairs ended by one more %x01 (RFC 7628 §3.1 `*kvpair kvsep`); null when malformed or a key repeats. */
function keyValues(text: string): Map<string, string> | null {
  if (!text.endsWith('\x01')) return null;
  const fields = text.slice(0, -1).split('\x01');
  // The last field of "k=v\x01" + "\x01" split is the empty one before the final separator.
  if (fields.pop() !== '') return null;
  const pairs = new Map<string, string>();
  for (const field of fields) {
    const equals = field.indexOf('=');
    const key = equals < 0 ? '' : field.slice(0, equals).toLowerCase();
    if (!SASL_KEY.test(key) || pairs.has(key)) return null;
    pairs.set(key, field.slice(equals + 1));
  }
  return pairs;
}

function bearerResult(user: string | undefined, auth: string | undefined): BearerDecodeResult {
  const token = auth === undefined ? null : AUTH_VALUE.exec(auth)?.[1];
  if (token === null || token === undefined || token === '') return { ok: false, reason: 'bad-format' };
  if (token.length > MAX_OAUTH_TOKEN_BYTES) return { ok: false, reason: 'too-long' };
  if (!B64TOKEN.test(token)) return { ok: false, reason: 'bad-characters' };
  return { ok: true, user, token };
}

/**
 * The server's error challenge when a token is refused (RFC 7628 §3.2.2; Google's form for
 * XOAUTH2), base64: the client answers it with a dummy response (%x01, "AQ==", or an empty one),
 * and only then gets the refusal. The same for every reason a token is refused.
 */
export function bearerFailureChallenge(mechanism: BearerMechanism): string {
  return mechanism === 'OAUTHBEARER' ? OAUTHBEARER_FAILURE : XOAUTH2_FAILURE;
}

const OAUTHBEARER_FAILURE = Buffer.from('{"status":"invalid_token","schemes":"bearer"}').toString('base64');
const XOAUTH2_FAILURE = Buffer.from('{"status":"401","schemes":"bearer"}').toString('base64');
