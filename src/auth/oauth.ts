/**
 * OAuth 2.0 access tokens as logins (SASL OAUTHBEARER and XOAUTH2): verifies a signed JWT (RFC
 * 7519, RFC 7515) with the issuer's public keys (a JWKS, RFC 7517: from a file, a URL, or both),
 * checks exp, nbf, iat, iss and aud (RFC 9068 §4), and names the user by the configured claim.
 * node:crypto only. The URL's keys are fetched with a deadline, kept, refreshed periodically and
 * for a key id they lack, at most once per jwks_unknown_kid_refetch_ms. A verified token is
 * remembered until min(its exp, token_cache_ms), keyed by an HMAC of it under a key of this
 * process, never by the token.
 * Must not: log a token or any part of it (its claims only, once its signature is verified, and
 * an unverified header's alg and kid shortened); look users up (the session does); know any
 * protocol's wire syntax.
 */
import { constants, createHmac, createPublicKey, randomBytes, verify as verifySignature } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { LRUCache } from 'lru-cache';
import { untilCancelled } from '../cancel.js';
import type { Cancellation } from '../cancel.js';
import { MailfrontError } from '../errors.js';
import type { Logger } from '../log.js';
import type { JwtAlgorithm, OAuthConfig } from './oauth-config.js';
import { JWT_ALGORITHMS } from './oauth-config.js';

/** A token verified: the user its claim names (as the token says it: the session normalises it), and its exp (seconds since the epoch). */
export interface VerifiedToken {
  readonly user: string;
  readonly exp: number;
}

/** The longest JWKS document read (a file or a URL's answer): an IdP's has a few keys of a few KB each. */
const MAX_JWKS_BYTES = 1024 * 1024;
/** Tokens remembered at most (an HMAC and a user name each, about 200 bytes): 100,000 mailboxes' clients refresh tokens every few minutes. */
const MAX_CACHED_TOKENS = 100_000;
/** Keys tried for a token without a kid: a JWKS of an IdP holds a few. */
const MAX_KEYS_TRIED = 8;
/** RSA keys shorter than this are not used (RFC 7518 §3.3: 2048 bits or larger). */
const MIN_RSA_BITS = 2048;
/** How much of a value from a token a log line shows. */
const LOGGED_CHARS = 64;
/** The furthest a NumericDate (seconds) may be from 1970: a Date's range (ECMA-262 §21.4.1.22, ±8.64e15 ms), past which no time can be told. */
const MAX_NUMERIC_DATE_S = 8.64e12;

/** The refusals of a token, each a code of its own in the log (and auth-failed: counted as a wrong password is). */
export const OAUTH_CODES = {
  malformed: 'OAUTH_TOKEN_MALFORMED',
  algorithm: 'OAUTH_ALGORITHM_REFUSED',
  unknownKey: 'OAUTH_UNKNOWN_KEY',
  signature: 'OAUTH_BAD_SIGNATURE',
  expired: 'OAUTH_TOKEN_EXPIRED',
  notYetValid: 'OAUTH_TOKEN_NOT_YET_VALID',
  issuer: 'OAUTH_WRONG_ISSUER',
  audience: 'OAUTH_WRONG_AUDIENCE',
  noUser: 'OAUTH_NO_USER_CLAIM',
  emailUnverified: 'OAUTH_EMAIL_UNVERIFIED',
  /** No key to check the token with, the URL not answering: the IdP's outage, not the client's mistake (auth-tempfail). */
  keysUnavailable: 'OAUTH_KEYS_UNAVAILABLE',
} as const;

/** One usable public key of a JWKS. */
interface JwkKey {
  readonly kid: string | undefined;
  /** The JWK's own alg, when it names one: the only algorithm it verifies. */
  readonly alg: string | undefined;
  readonly key: KeyObject;
}

/** What a JWKS document gave: its usable keys, and the ones left out with why. */
interface KeySet {
  readonly keys: readonly JwkKey[];
  readonly skipped: ReadonlyArray<{ readonly kid: string | undefined; readonly reason: string }>;
  /** Compares two sets: a change empties the cache of verified tokens (a key withdrawn must stop its tokens). */
  readonly fingerprint: string;
}

/** A value from a token or a JWKS, as a log line may show it: its first characters, control and format characters replaced. */
function shown(value: unknown): string {
  const text = typeof value === 'string' ? value : JSON.stringify(value) ?? String(value);
  return JSON.stringify(Array.from(text).slice(0, LOGGED_CHARS).join('').replace(/[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/gu, '\ufffd'));
}

function refuse(code: string, message: string): MailfrontError {
  return new MailfrontError(code, 'auth-failed', `the token was refused: ${message}`);
}

/** Whether `key` is of the kind `alg` verifies with (no RSA key for ES256, no EC key for RS256: algorithm confusion). */
function fits(alg: JwtAlgorithm, key: KeyObject): boolean {
  const type = key.asymmetricKeyType;
  switch (alg) {
    case 'RS256':
    case 'RS384':
    case 'RS512':
    case 'PS256':
    case 'PS384':
    case 'PS512':
      return type === 'rsa' || type === 'rsa-pss';
    case 'ES256':
      return type === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'prime256v1';
    case 'ES384':
      return type === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'secp384r1';
    case 'ES512':
      return type === 'ec' && key.asymmetricKeyDetails?.namedCurve === 'secp521r1';
    case 'EdDSA':
      return type === 'ed25519' || type === 'ed448';
  }
}

/** Whether `signature` over `data` is `key`'s under `alg` (RFC 7518 §3, RFC 8037 §3.1). */
function signatureValid(alg: JwtAlgorithm, key: KeyObject, data: Buffer, signature: Buffer): boolean {
  const hash = alg === 'EdDSA' ? null : `sha${alg.slice(2)}`;
  try {
    switch (alg.slice(0, 2)) {
      case 'RS':
        return verifySignature(hash, data, key, signature);
      case 'PS':
        return verifySignature(hash, data, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: constants.RSA_PSS_SALTLEN_DIGEST }, signature);
      case 'ES':
        // JWS ECDSA signatures are R || S (RFC 7518 §3.4), not DER.
        return verifySignature(hash, data, { key, dsaEncoding: 'ieee-p1363' }, signature);
      default:
        return verifySignature(null, data, key, signature);
    }
  } catch {
    return false;
  }
}

/** Reads a JWKS document (RFC 7517 §5): the keys mailfront can verify with; throws when it is no JWKS. */
export function parseJwks(text: string): KeySet {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    throw new Error('not JSON');
  }
  const list = doc !== null && typeof doc === 'object' && !Array.isArray(doc) ? (doc as Record<string, unknown>)['keys'] : undefined;
  if (!Array.isArray(list)) throw new Error('no "keys" list (a JWKS is {"keys": [...]})');
  const keys: JwkKey[] = [];
  const skipped: Array<{ kid: string | undefined; reason: string }> = [];
  const prints: string[] = [];
  for (const item of list) {
    if (item === null || typeof item !== 'object' || Array.isArray(item)) {
      skipped.push({ kid: undefined, reason: 'not a JSON object' });
      continue;
    }
    const jwk = item as Record<string, unknown>;
    const kid = typeof jwk['kid'] === 'string' ? jwk['kid'] : undefined;
    const alg = typeof jwk['alg'] === 'string' ? jwk['alg'] : undefined;
    const skip = (reason: string): void => void skipped.push({ kid, reason });
    // A shared secret (kty oct) verifies HS* MACs: whoever can read the JWKS could sign with it.
    if (jwk['kty'] === 'oct') skip('a symmetric key (kty "oct"): never used');
    else if (jwk['use'] !== undefined && jwk['use'] !== 'sig') skip(`use ${shown(jwk['use'])}: not a signing key`);
    else if (alg !== undefined && !(JWT_ALGORITHMS as readonly string[]).includes(alg)) skip(`alg ${shown(alg)}: not an algorithm mailfront verifies`);
    else {
      let key: KeyObject;
      try {
        // The public part only: a JWK holding a private key (d) gives its public key.
        key = createPublicKey({ key: jwk as unknown as import('node:crypto').JsonWebKey, format: 'jwk' });
      } catch (error) {
        skip(`not a usable public key (${error instanceof Error ? error.message : String(error)})`);
        continue;
      }
      const bits = key.asymmetricKeyDetails?.modulusLength;
      if (bits !== undefined && bits < MIN_RSA_BITS) {
        skip(`an RSA key of ${bits} bits (at least ${MIN_RSA_BITS})`);
        continue;
      }
      keys.push({ kid, alg, key });
      prints.push(JSON.stringify([kid ?? null, alg ?? null, key.export({ format: 'jwk' })]));
    }
  }
  return { keys, skipped, fingerprint: prints.sort().join('\n') };
}

/** GETs `url` (http or https): its body, within `timeoutMs` and `maxBytes`; no redirect followed. */
function fetchText(url: string, timeoutMs: number, maxBytes: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const target = new URL(url);
    let settled = false;
    const settle = (error: Error | null, text?: string): void => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (error !== null) {
        request.destroy();
        reject(error);
      } else resolve(text ?? '');
    };
    const get = target.protocol === 'https:' ? https.get : http.get;
    const request = get(target, { headers: { accept: 'application/json' }, agent: false }, (response) => {
      if (response.statusCode !== 200) {
        response.resume();
        settle(new Error(`HTTP status ${response.statusCode ?? 'none'}`));
        return;
      }
      const chunks: Buffer[] = [];
      let size = 0;
      response.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > maxBytes) settle(new Error(`an answer of more than ${maxBytes} bytes`));
        else chunks.push(chunk);
      });
      response.on('end', () => settle(null, Buffer.concat(chunks).toString('utf8')));
      response.on('error', (error) => settle(error));
      response.on('close', () => settle(new Error('the connection closed before the answer ended')));
    });
    const timer = setTimeout(() => settle(new Error(`no answer within ${timeoutMs} ms (oauth2.jwks_timeout_ms)`)), timeoutMs);
    request.on('error', (error) => settle(error));
  });
}

/** A segment of a compact JWS: base64url, without padding (RFC 7515 §2). */
const BASE64URL = /^[A-Za-z0-9_-]+$/;

function jsonObject(segment: string): Record<string, unknown> | null {
  try {
    const value: unknown = JSON.parse(Buffer.from(segment, 'base64url').toString('utf8'));
    return value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : null;
  } catch {
    return null;
  }
}

/** Verifies access tokens for one oauth2 config; made at start and at each reload (create()). */
export class OAuthVerifier {
  private fileKeys: KeySet | undefined;
  /** The URL's keys as last fetched; undefined until a fetch has given some. */
  private urlKeys: KeySet | undefined;
  /** When the last fetch of the URL began (performance.now()); none yet: -Infinity. */
  private lastFetchAt = Number.NEGATIVE_INFINITY;
  private fetching: Promise<void> | null = null;
  private readonly refreshTimer: NodeJS.Timeout | undefined;
  private readonly tokens: LRUCache<string, VerifiedToken> | undefined;
  /** The tokens' cache key is an HMAC under this: nothing kept can be turned back into a token. */
  private readonly cacheKey = randomBytes(32);
  private closed = false;

  private constructor(
    readonly config: OAuthConfig,
    private readonly log: Logger,
    previous: OAuthVerifier | undefined,
  ) {
    if (config.jwksFile !== undefined) this.fileKeys = OAuthVerifier.readFile(config.jwksFile, log);
    this.tokens = config.tokenCacheMs > 0 ? new LRUCache<string, VerifiedToken>({ max: MAX_CACHED_TOKENS, ttl: config.tokenCacheMs, ttlAutopurge: false }) : undefined;
    if (config.jwksUrl !== undefined) {
      // A reload that keeps the URL keeps its keys and its rate limit.
      if (previous?.config.jwksUrl === config.jwksUrl) {
        this.urlKeys = previous.urlKeys;
        this.lastFetchAt = previous.lastFetchAt;
      }
      if (this.urlKeys === undefined) this.fetchKeys('start');
      this.refreshTimer = setInterval(() => this.fetchKeys('refresh'), config.jwksRefreshMs);
      this.refreshTimer.unref();
    }
  }

  /**
   * A verifier for `config`: reads its JWKS file (throws a config error naming oauth2.jwks_file
   * when it is no JWKS or holds no key mailfront can use) and starts fetching its URL, keeping the
   * URL's keys of `previous` when the URL is the same (a reload).
   */
  static create(config: OAuthConfig, log: Logger, previous?: OAuthVerifier): OAuthVerifier {
    return new OAuthVerifier(config, log, previous);
  }

  /** Reads a JWKS file; a config error naming oauth2.jwks_file when it cannot be used. */
  static readFile(file: string, log?: Logger): KeySet {
    let set: KeySet;
    try {
      const text = readFileSync(file);
      if (text.length > MAX_JWKS_BYTES) throw new Error(`more than ${MAX_JWKS_BYTES} bytes`);
      set = parseJwks(text.toString('utf8'));
    } catch (error) {
      throw new MailfrontError('OAUTH_JWKS_FILE', 'config', `oauth2.jwks_file: ${file} is not a JWKS mailfront can read: ${error instanceof Error ? error.message : String(error)}`);
    }
    if (set.keys.length === 0) throw new MailfrontError('OAUTH_JWKS_FILE', 'config', `oauth2.jwks_file: ${file} holds no key mailfront can verify with${set.skipped.length > 0 ? ` (${set.skipped.map((s) => `${s.kid ?? 'a key without kid'}: ${s.reason}`).join('; ')})` : ''}`);
    for (const { kid, reason } of set.skipped) log?.warn({ event: 'oauth.jwks_key_skipped', source: file, kid, reason }, 'a key of the JWKS is not used');
    log?.info({ event: 'oauth.jwks_loaded', source: file, keys: set.keys.length, kids: set.keys.map((k) => k.kid ?? null) }, 'OAuth signing keys loaded');
    return set;
  }

  /** Stops the periodic refresh (a reload replaced this verifier, or the server stops). */
  close(): void {
    this.closed = true;
    if (this.refreshTimer !== undefined) clearInterval(this.refreshTimer);
  }

  /** How many verified tokens are remembered (tests, metrics). */
  get cachedTokens(): number {
    return this.tokens?.size ?? 0;
  }

  /**
   * Verifies `token`: its user and exp, or a MailfrontError: auth-failed with an OAUTH_* code
   * saying why (OAUTH_CODES), auth-tempfail when no key could be had to check it
   * (OAUTH_KEYS_UNAVAILABLE), aborted when `signal` fired while the keys were fetched.
   */
  async verify(token: string, signal: Cancellation): Promise<VerifiedToken> {
    const now = Date.now();
    const skew = this.config.clockSkewMs;
    const cacheKey = this.tokens === undefined ? '' : createHmac('sha256', this.cacheKey).update(token).digest('base64url');
    const cached = this.tokens?.get(cacheKey);
    if (cached !== undefined && cached.exp * 1000 + skew >= now) return cached;

    const parts = token.split('.');
    // The signature may be empty here: an alg "none" token is then refused for its alg, a reason of its own.
    if (parts.length !== 3 || !BASE64URL.test(parts[0] ?? '') || !BASE64URL.test(parts[1] ?? '') || !/^[A-Za-z0-9_-]*$/.test(parts[2] ?? '')) throw refuse(OAUTH_CODES.malformed, parts.length === 5 ? 'an encrypted token (JWE), not a signed one' : 'not a signed JWT (three base64url parts)');
    const [headerPart, payloadPart, signaturePart] = parts as [string, string, string];
    const header = jsonObject(headerPart);
    if (header === null) throw refuse(OAUTH_CODES.malformed, 'its header is not a JSON object');
    const alg = header['alg'];
    if (typeof alg !== 'string' || !(this.config.algorithms as readonly string[]).includes(alg)) {
      throw refuse(OAUTH_CODES.algorithm, `alg ${shown(alg)} is not one of oauth2.algorithms (${this.config.algorithms.join(', ')})`);
    }
    // RFC 7515 §4.1.11: an extension the verifier must understand, and mailfront understands none.
    if (header['crit'] !== undefined) throw refuse(OAUTH_CODES.malformed, 'its header has "crit" extensions');
    const kid = header['kid'];
    if (kid !== undefined && typeof kid !== 'string') throw refuse(OAUTH_CODES.malformed, 'its kid is not a string');
    const algorithm = alg as JwtAlgorithm;

    let known = this.keysNamed(kid);
    if (known.length === 0 && this.config.jwksUrl !== undefined) {
      await untilCancelled(this.refetchForUnknownKey(), signal, 'the login was cancelled while the keys were fetched');
      known = this.keysNamed(kid);
    }
    if (known.length === 0) {
      // The URL not fetched yet (down since start): the key may well be there.
      if (this.config.jwksUrl !== undefined && this.urlKeys === undefined) {
        throw new MailfrontError(OAUTH_CODES.keysUnavailable, 'auth-tempfail', `no signing keys to check the token with: ${this.config.jwksUrl ?? ''} (oauth2.jwks_url) has not answered with a JWKS yet`);
      }
      throw refuse(OAUTH_CODES.unknownKey, kid === undefined ? 'it names no kid, and no key of the JWKS is without one' : `kid ${shown(kid)} is in no JWKS (fetched again at most every ${this.config.jwksUnknownKidRefetchMs} ms)`);
    }
    const candidates = known.filter((k) => fits(algorithm, k.key) && (k.alg === undefined || k.alg === algorithm)).slice(0, MAX_KEYS_TRIED);
    if (candidates.length === 0) {
      const [first] = known;
      throw refuse(OAUTH_CODES.algorithm, `alg ${algorithm} does not go with the key ${shown(kid ?? 'without kid')} (${first?.alg !== undefined ? `alg ${first.alg}` : `a ${first?.key.asymmetricKeyType ?? ''} key`})`);
    }
    const data = Buffer.from(`${headerPart}.${payloadPart}`, 'ascii');
    const signature = Buffer.from(signaturePart, 'base64url');
    if (!candidates.some((k) => signatureValid(algorithm, k.key, data, signature))) {
      throw refuse(OAUTH_CODES.signature, `its signature (${algorithm}, kid ${shown(kid ?? 'none')}) is not the key's`);
    }

    // From here the claims are the issuer's words.
    const claims = jsonObject(payloadPart);
    if (claims === null) throw refuse(OAUTH_CODES.malformed, 'its claims are not a JSON object');
    const exp = claims['exp'];
    if (typeof exp !== 'number' || !Number.isFinite(exp)) throw refuse(OAUTH_CODES.malformed, 'it has no exp (an access token must expire)');
    // No time at all (1e20 s): no IdP writes one, and the log's date of it would throw a RangeError.
    if (Math.abs(exp) > MAX_NUMERIC_DATE_S) throw refuse(OAUTH_CODES.malformed, `its exp ${exp} is no time (more than ${MAX_NUMERIC_DATE_S} s from 1970)`);
    if (exp * 1000 + skew < now) throw refuse(OAUTH_CODES.expired, `it expired at ${new Date(exp * 1000).toISOString()} (oauth2.clock_skew_ms ${skew})`);
    for (const name of ['nbf', 'iat'] as const) {
      const at = claims[name];
      if (at === undefined) continue;
      if (typeof at !== 'number' || !Number.isFinite(at)) throw refuse(OAUTH_CODES.malformed, `its ${name} is not a number`);
      if (Math.abs(at) > MAX_NUMERIC_DATE_S) throw refuse(OAUTH_CODES.malformed, `its ${name} ${at} is no time (more than ${MAX_NUMERIC_DATE_S} s from 1970)`);
      if (at * 1000 - skew > now) throw refuse(OAUTH_CODES.notYetValid, `its ${name} is ${new Date(at * 1000).toISOString()}, later than now (oauth2.clock_skew_ms ${skew})`);
    }
    const iss = claims['iss'];
    if (typeof iss !== 'string' || !this.config.issuers.includes(iss)) throw refuse(OAUTH_CODES.issuer, `iss ${shown(iss)} is not one of oauth2.issuers`);
    const aud = claims['aud'];
    const audiences = typeof aud === 'string' ? [aud] : Array.isArray(aud) ? aud : [];
    if (!audiences.some((a) => typeof a === 'string' && this.config.audiences.includes(a))) throw refuse(OAUTH_CODES.audience, `aud ${shown(aud)} names none of oauth2.audiences`);
    const user = claims[this.config.userClaim];
    if (typeof user !== 'string' || user === '') throw refuse(OAUTH_CODES.noUser, `it has no ${this.config.userClaim} (oauth2.user_claim) string`);
    // An IdP that lets its users type any address marks it unverified: such an address names no
    // one. Only true vouches for it (OpenID Connect Core §5.1): a token without email_verified
    // says nothing of the address, and "false" as a string is no boolean.
    const verifiedEmail = claims['email_verified'];
    if (this.config.userClaim === 'email' && verifiedEmail !== true) throw refuse(OAUTH_CODES.emailUnverified, `its email ${shown(user)} is not verified (email_verified ${verifiedEmail === undefined ? 'absent' : shown(verifiedEmail)}, not true)`);

    const verified: VerifiedToken = { user, exp };
    const remaining = exp * 1000 + skew - now;
    if (this.tokens !== undefined && remaining > 0) this.tokens.set(cacheKey, verified, { ttl: Math.min(this.config.tokenCacheMs, remaining) });
    return verified;
  }

  /** The keys a token's kid names (none given: every key); the file's first, then the URL's. */
  private keysNamed(kid: string | undefined): JwkKey[] {
    const all = [...(this.fileKeys?.keys ?? []), ...(this.urlKeys?.keys ?? [])];
    return kid === undefined ? all : all.filter((k) => k.kid === kid);
  }

  /** A fetch for a key id the keys lack: the one under way, or a new one when the last began long enough ago. */
  private refetchForUnknownKey(): Promise<void> {
    if (this.fetching === null && performance.now() - this.lastFetchAt >= this.config.jwksUnknownKidRefetchMs) this.fetchKeys('unknown-kid');
    return this.fetching ?? Promise.resolve();
  }

  /** Fetches the URL's keys unless a fetch is under way; never rejects (a failure keeps the keys held, and is logged). */
  private fetchKeys(why: 'start' | 'refresh' | 'unknown-kid'): void {
    const url = this.config.jwksUrl;
    if (url === undefined || this.fetching !== null || this.closed) return;
    this.lastFetchAt = performance.now();
    this.fetching = fetchText(url, this.config.jwksTimeoutMs, MAX_JWKS_BYTES)
      .then((text) => {
        const set = parseJwks(text);
        if (set.keys.length === 0) throw new Error(`no key mailfront can verify with${set.skipped.length > 0 ? ` (${set.skipped.map((s) => `${s.kid ?? 'a key without kid'}: ${s.reason}`).join('; ')})` : ''}`);
        if (set.fingerprint === this.urlKeys?.fingerprint) return;
        // A key withdrawn must stop its tokens at once, not when their cache entries end.
        if (this.urlKeys !== undefined) this.tokens?.clear();
        this.urlKeys = set;
        for (const { kid, reason } of set.skipped) this.log.warn({ event: 'oauth.jwks_key_skipped', source: url, kid, reason }, 'a key of the JWKS is not used');
        this.log.info({ event: 'oauth.jwks_loaded', source: url, why, keys: set.keys.length, kids: set.keys.map((k) => k.kid ?? null) }, 'OAuth signing keys loaded');
      })
      .catch((error: unknown) => {
        this.log.error({ event: 'oauth.jwks_fetch_failed', source: url, why, keys: this.urlKeys?.keys.length ?? 0, err: error instanceof Error ? error.message : String(error) }, this.urlKeys === undefined ? 'OAuth signing keys could not be fetched: OAuth logins fail until they are' : 'OAuth signing keys could not be fetched again: the keys fetched before stay in use');
      })
      .finally(() => {
        this.fetching = null;
      });
  }
}
