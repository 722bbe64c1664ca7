/**
 * OAuth 2.0 access tokens as logins (SASL OAUTHBEARER and XOAUTH2): verifies a signed JWT (RFC
 * 7519, RFC 7515) with the issuer's public keys (a JWKS, RFC 7517: from a file, a URL, or both),
 * or asks the IdP's introspection endpoint (RFC 7662) of a token, per oauth2.token_check;
 * checks exp, nbf, iat, iss and aud (RFC 9068 §4), and names the user by the configured claim.
 * node:crypto only. The URL's keys (and, with discovery, the OpenID configuration document that
 * names the URLs) are fetched with a deadline, kept, refreshed periodically and for a key id they
 * lack, at most once per jwks_unknown_kid_refetch_ms. Introspection requests are bounded in
 * number (introspection_concurrency, one per token however many logins wait on it) and time. A
 * verified token is remembered until min(its exp, token_cache_ms), a token the IdP refused for
 * introspection_negative_cache_ms, keyed by an HMAC of it under a key of this process, never by
 * the token.
 * Every request to the IdP is counted by its result (metrics.ts: oauthIdpFetch, oauthIntrospection).
 * Must not: log a token or any part of it (its claims only, once its signature is verified or
 * the IdP vouched for them, and an unverified header's alg and kid shortened), nor the client
 * secret; look users up (the session does); know any protocol's wire syntax.
 */
import { constants, createHmac, createPublicKey, randomBytes, verify as verifySignature } from 'node:crypto';
import type { KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import type { Agent } from 'node:http';
import { LRUCache } from 'lru-cache';
import { untilCancelled } from '../cancel.js';
import type { Cancellation } from '../cancel.js';
import { urlShown } from '../config/validate.js';
import { MailfrontError } from '../errors.js';
import type { Logger } from '../log.js';
import type { Metrics, OAuthIdpResult } from '../metrics.js';
import type { JwtAlgorithm, OAuthConfig } from './oauth-config.js';
import { JWT_ALGORITHMS, jwksUrlProblem } from './oauth-config.js';

/** A token verified: the user its claim names (as the token says it: the session normalises it), and its exp (seconds since the epoch; Infinity when an introspection answer gave none). */
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
/** The longest OpenID configuration document or introspection answer read: a few KB each (Keycloak's document is about 6 KB). */
const MAX_IDP_ANSWER_BYTES = 256 * 1024;
/** Tokens refused by introspection remembered at most (an HMAC and a refusal each): a flood of made-up tokens is bounded by the throttle and the concurrency, not by this. */
const MAX_REFUSED_TOKENS = 10_000;
/** Logins waiting for a free introspection request at most; more are answered as an outage at once (a flood must not queue without end). */
const MAX_INTROSPECTION_WAITING = 1_000;
/**
 * The part of introspection_timeout_ms a request to the IdP must have had for its expiry to be
 * counted as the IdP's `timeout`. A login that waited for a free request (introspection_concurrency)
 * is still sent with whatever is left of its deadline (a burst is answered within it), but such a
 * request expiring with less is counted `timeout-queued`: mailfront's queue, not the IdP, took the time.
 */
const INTROSPECTION_TIMEOUT_FLOOR = 0.5;
/** An idle keep-alive connection to the introspection endpoint is closed after this: before the IdP's own idle timeout (5 s at least in common servers), so that a request never meets a connection the IdP is closing. */
const IDLE_CONNECTION_MS = 4_000;
/** The token types an introspection answer may give an access token (RFC 7662 §2.2 token_type; Keycloak's typ). */
const ACCESS_TOKEN_TYPES = new Set(['bearer', 'access_token', 'at+jwt', 'application/at+jwt']);
/** token_use values of an access token (fosite / Ory Hydra's introspection; AWS Cognito's JWTs). */
const ACCESS_TOKEN_USES = new Set(['access_token', 'access']);
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
  /** The IdP's introspection endpoint answered `active: false`: revoked, expired, or never issued (RFC 7662 §2.2). */
  inactive: 'OAUTH_TOKEN_INACTIVE',
  /** The introspection answer says another kind of token (a refresh or ID token, a DPoP-bound one). */
  tokenType: 'OAUTH_WRONG_TOKEN_TYPE',
  /** No key to check the token with, the URL not answering: the IdP's outage, not the client's mistake (auth-tempfail). */
  keysUnavailable: 'OAUTH_KEYS_UNAVAILABLE',
  /** The introspection endpoint did not answer (down, slow, refusing mailfront's credentials, no RFC 7662 answer, too many asked at once): auth-tempfail. */
  introspectionUnavailable: 'OAUTH_INTROSPECTION_UNAVAILABLE',
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

/**
 * The introspection endpoint's URL (oauth2.introspection_url, or the OpenID configuration's) is
 * told as config issues tell it (urlShown()): the message reaches the login's log line, and such
 * a URL may carry a secret (`?client_secret=`).
 */
function introspectionUnavailable(url: string, message: string): MailfrontError {
  return new MailfrontError(OAUTH_CODES.introspectionUnavailable, 'auth-tempfail', `the token could not be checked: ${urlShown(url)} (oauth2 introspection) ${message}`);
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

/** A request's answer that is not 200. Its body is not kept: an endpoint that echoes the request would put the token in the log. */
class HttpStatusError extends Error {
  constructor(readonly status: number) {
    super(`HTTP status ${status}`);
  }
}

/** A request to the IdP that failed otherwise than by its status or its connection: its metric result. */
class IdpRequestError extends Error {
  constructor(
    message: string,
    readonly result: 'timeout' | 'bad-answer',
  ) {
    super(message);
  }
}

/** The metric result of a request fetchText() failed (the one place that decides it): a status by its class; anything else that is not its own, the connection's. */
function idpResultOf(error: unknown): OAuthIdpResult {
  if (error instanceof HttpStatusError) return error.status >= 400 && error.status < 500 ? 'http-4xx' : error.status >= 500 && error.status < 600 ? 'http-5xx' : 'http-other';
  if (error instanceof IdpRequestError) return error.result;
  return 'connection-error';
}

/** What fetchText() sends besides a GET's defaults. */
interface FetchOptions {
  /** How long the request may take from now. */
  readonly timeoutMs: number;
  /** The deadline as the message names it: its length and the config key it comes from. */
  readonly deadline: string;
  readonly maxBytes: number;
  /** A POST's form body (introspection), with its extra headers (HTTP basic). */
  readonly post?: { readonly body: string; readonly headers: Readonly<Record<string, string>> };
  /** Keep-alive connections to share; none: a connection of its own. */
  readonly agent?: Agent;
}

/** GETs (or POSTs a form to) `url` (http or https): its body, within the deadline and `maxBytes`; no redirect followed. */
function fetchText(url: string, options: FetchOptions): Promise<string> {
  const { timeoutMs, maxBytes } = options;
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
    const post = options.post;
    const headers: Record<string, string> = { accept: 'application/json', ...(post === undefined ? {} : { 'content-type': 'application/x-www-form-urlencoded', 'content-length': String(Buffer.byteLength(post.body)), ...post.headers }) };
    const send = target.protocol === 'https:' ? https.request : http.request;
    const request = send(target, { method: post === undefined ? 'GET' : 'POST', headers, agent: options.agent ?? false }, (response) => {
      const status = response.statusCode ?? 0;
      const chunks: Buffer[] = [];
      let size = 0;
      response.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size > maxBytes) settle(new IdpRequestError(`an answer of more than ${maxBytes} bytes`, 'bad-answer'));
        else chunks.push(chunk);
      });
      response.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        settle(status === 200 ? null : new HttpStatusError(status), text);
      });
      response.on('error', (error) => settle(error));
      response.on('close', () => settle(new Error('the connection closed before the answer ended')));
    });
    const timer = setTimeout(() => settle(new IdpRequestError(`no answer within ${options.deadline}`, 'timeout')), timeoutMs);
    request.on('error', (error) => settle(error));
    request.end(post?.body);
  });
}

/** A value as application/x-www-form-urlencoded writes it (RFC 6749 §2.3.1 encodes the client id and secret so before HTTP basic). */
function formEncoded(value: string): string {
  return new URLSearchParams([['', value]]).toString().slice(1);
}

/** What the OpenID configuration document gave (OpenID Connect Discovery 1.0 §3). */
interface Discovered {
  readonly issuer: string;
  readonly jwksUri: string | undefined;
  readonly introspectionEndpoint: string | undefined;
}

/** Reads an OpenID configuration document: throws when it is none, names another issuer, or a URL mailfront may not fetch. */
function parseDiscovery(text: string, issuers: readonly string[]): Discovered {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    throw new Error('not JSON');
  }
  if (doc === null || typeof doc !== 'object' || Array.isArray(doc)) throw new Error('not a JSON object');
  const fields = doc as Record<string, unknown>;
  const issuer = fields['issuer'];
  // §4.3: a document naming another issuer may be anyone's (a mix-up); its keys would sign that issuer's tokens.
  if (typeof issuer !== 'string' || !issuers.includes(issuer)) throw new Error(`its issuer ${shown(issuer)} is not ${issuers.length === 1 ? `the configured one (${shown(issuers[0])})` : 'one of oauth2.issuers'}`);
  const url = (name: string): string | undefined => {
    const value = fields[name];
    if (value === undefined) return undefined;
    if (typeof value !== 'string') throw new Error(`its ${name} is not a string`);
    const problem = jwksUrlProblem(value);
    if (problem !== null) throw new Error(`its ${name} ${shown(value)} is ${problem} (https://, or http:// to a loopback address only)`);
    return value;
  };
  return { issuer, jwksUri: url('jwks_uri'), introspectionEndpoint: url('introspection_endpoint') };
}

/** Whether `token` is a compact JWS mailfront could check locally: three base64url parts, a JSON header naming an alg. Anything else is opaque (a JWE too). */
function looksLikeJwt(token: string): boolean {
  const parts = token.split('.');
  if (parts.length !== 3 || !BASE64URL.test(parts[0] ?? '') || !BASE64URL.test(parts[1] ?? '')) return false;
  return typeof jsonObject(parts[0] ?? '')?.['alg'] === 'string';
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
  /** The URL urlKeys came from (oauth2.jwks_url, or the discovered jwks_uri). */
  private urlKeysFrom: string | undefined;
  /** The OpenID configuration document as last read; undefined until a read has given one. */
  private discovered: Discovered | undefined;
  /** When the last fetch of the URLs began (performance.now()); none yet: -Infinity. */
  private lastFetchAt = Number.NEGATIVE_INFINITY;
  private fetching: Promise<void> | null = null;
  private readonly refreshTimer: NodeJS.Timeout | undefined;
  private readonly tokens: LRUCache<string, VerifiedToken> | undefined;
  /** Tokens the introspection refused, with the refusal: a client repeating a revoked token does not ask the IdP each time. */
  private readonly refused: LRUCache<string, { readonly code: string; readonly message: string }> | undefined;
  /** The tokens' cache key is an HMAC under this: nothing kept can be turned back into a token. */
  private readonly cacheKey = randomBytes(32);
  /** Introspections under way, by the token's HMAC: one request per token, however many logins wait on it. */
  private readonly asking = new Map<string, Promise<VerifiedToken>>();
  /** Introspection requests in flight, and the logins waiting for one to end (introspection_concurrency). */
  private inFlight = 0;
  private readonly waiting: Array<() => void> = [];
  /** Keep-alive connections to the introspection endpoint, by protocol: a TLS handshake per login would cost the IdP more than its answer. */
  private readonly agents = new Map<string, Agent>();
  private closed = false;

  private constructor(
    readonly config: OAuthConfig,
    private readonly log: Logger,
    private readonly metrics: Metrics | undefined,
    previous: OAuthVerifier | undefined,
  ) {
    if (config.jwksFile !== undefined) this.fileKeys = OAuthVerifier.readFile(config.jwksFile, log);
    this.tokens = config.tokenCacheMs > 0 ? new LRUCache<string, VerifiedToken>({ max: MAX_CACHED_TOKENS, ttl: config.tokenCacheMs, ttlAutopurge: false }) : undefined;
    this.refused = config.tokenCheck !== 'jwt' && config.introspectionNegativeCacheMs > 0 ? new LRUCache({ max: MAX_REFUSED_TOKENS, ttl: config.introspectionNegativeCacheMs, ttlAutopurge: false }) : undefined;
    // A reload that keeps the document's URL keeps what it said (its issuer still one asked for), and one that keeps the keys' URL keeps its keys and its rate limit.
    const kept = previous?.discovered;
    if (config.openidConfigurationUrl !== undefined && previous?.config.openidConfigurationUrl === config.openidConfigurationUrl && kept !== undefined && config.discoveryIssuers?.includes(kept.issuer) === true) this.discovered = kept;
    const url = this.jwksUrl;
    if (url !== undefined && previous?.urlKeysFrom === url) {
      this.urlKeys = previous.urlKeys;
      this.urlKeysFrom = url;
      this.lastFetchAt = previous.lastFetchAt;
    }
    if (this.fetchesUrls) {
      if ((this.keysNeeded && this.urlKeys === undefined) || (config.openidConfigurationUrl !== undefined && this.discovered === undefined)) this.fetchKeys('start');
      this.refreshTimer = setInterval(() => this.fetchKeys('refresh'), config.jwksRefreshMs);
      this.refreshTimer.unref();
    }
  }

  /**
   * A verifier for `config`: reads its JWKS file (throws a config error naming oauth2.jwks_file
   * when it is no JWKS or holds no key mailfront can use) and starts fetching its URLs, keeping the
   * URLs' keys and document of `previous` when the URLs are the same (a reload). Its requests to
   * the IdP are counted in `metrics`.
   */
  static create(config: OAuthConfig, log: Logger, metrics?: Metrics, previous?: OAuthVerifier): OAuthVerifier {
    return new OAuthVerifier(config, log, metrics, previous);
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

  /** Stops the periodic refresh (a reload replaced this verifier, or the server stops); the introspection connections close once their requests end. */
  close(): void {
    // A reload's verifier counts again from 0: one that failed to start (its reload rejected)
    // resets the running one's count too, which its next failed request makes 1 again.
    if (!this.closed) this.metrics?.oauthIdpStopped();
    this.closed = true;
    if (this.refreshTimer !== undefined) clearInterval(this.refreshTimer);
    if (this.inFlight === 0) this.closeConnections();
  }

  /** How many verified tokens are remembered (tests, metrics). */
  get cachedTokens(): number {
    return this.tokens?.size ?? 0;
  }

  /** Whether tokens are checked locally with keys (token_check jwt or auto). */
  private get keysNeeded(): boolean {
    return this.config.tokenCheck !== 'introspect';
  }

  /** Where the keys are fetched from: oauth2.jwks_url, else the document's jwks_uri. */
  private get jwksUrl(): string | undefined {
    return this.keysNeeded ? (this.config.jwksUrl ?? this.discovered?.jwksUri) : undefined;
  }

  /** Where tokens are introspected: oauth2.introspection_url, else the document's introspection_endpoint. */
  private get introspectionUrl(): string | undefined {
    return this.config.introspectionUrl ?? this.discovered?.introspectionEndpoint;
  }

  /** Whether anything is fetched: the document, or the keys' URL when keys are used. */
  private get fetchesUrls(): boolean {
    return this.config.openidConfigurationUrl !== undefined || (this.keysNeeded && this.config.jwksUrl !== undefined);
  }

  /**
   * Verifies `token`: its user and exp, or a MailfrontError: auth-failed with an OAUTH_* code
   * saying why (OAUTH_CODES), auth-tempfail when no key could be had to check it
   * (OAUTH_KEYS_UNAVAILABLE) or the introspection endpoint did not answer
   * (OAUTH_INTROSPECTION_UNAVAILABLE), aborted when `signal` fired while the keys were fetched or
   * the IdP asked.
   */
  async verify(token: string, signal: Cancellation): Promise<VerifiedToken> {
    const now = Date.now();
    const cacheKey = createHmac('sha256', this.cacheKey).update(token).digest('base64url');
    const cached = this.tokens?.get(cacheKey);
    if (cached !== undefined && cached.exp * 1000 + this.config.clockSkewMs >= now) return cached;
    const refused = this.refused?.get(cacheKey);
    if (refused !== undefined) throw new MailfrontError(refused.code, 'auth-failed', `${refused.message} (the IdP's answer, remembered for oauth2.introspection_negative_cache_ms)`);
    const check = this.config.tokenCheck;
    if (check === 'introspect' || (check === 'auto' && !looksLikeJwt(token))) return this.introspected(token, cacheKey, signal);
    const verified = await this.verifiedJwt(token, signal, now);
    this.remember(cacheKey, verified, now);
    return verified;
  }

  /** Checks a JWT locally: its header, key and signature, then its claims. */
  private async verifiedJwt(token: string, signal: Cancellation, now: number): Promise<VerifiedToken> {
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

    const fromUrl = this.fetchesUrls && this.keysNeeded;
    let known = this.keysNamed(kid);
    if (known.length === 0 && fromUrl) {
      await untilCancelled(this.refetch('unknown-kid'), signal, 'the login was cancelled while the keys were fetched');
      known = this.keysNamed(kid);
    }
    if (known.length === 0) {
      // The URL not fetched yet (down since start): the key may well be there.
      if (fromUrl && this.urlKeys === undefined) {
        const source = this.config.jwksUrl !== undefined ? `${urlShown(this.config.jwksUrl)} (oauth2.jwks_url) has` : `${urlShown(this.jwksUrl ?? this.config.openidConfigurationUrl ?? '')} (oauth2 discovery) has`;
        throw new MailfrontError(OAUTH_CODES.keysUnavailable, 'auth-tempfail', `no signing keys to check the token with: ${source} not answered with a JWKS yet`);
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
    return this.checkClaims(claims, now, 'jwt');
  }

  /**
   * The claims' verdict, a JWT's or an introspection answer's (RFC 7662 §2.2: the same names):
   * exp (required of a JWT; an answer without one is remembered for token_cache_ms only), nbf,
   * iat, iss (an answer may leave it out: it is the issuer's own), aud (an answer without one: its
   * client_id must be one of oauth2.audiences), the user's claim and email_verified.
   */
  private checkClaims(claims: Record<string, unknown>, now: number, from: 'jwt' | 'introspection'): VerifiedToken {
    // A refresh or ID token the IdP says so of without token_type (fosite / Ory Hydra's
    // introspection: token_use refresh_token; AWS Cognito's JWTs: token_use id): never sent to
    // a resource server (RFC 6749 §1.5), and one that lives for weeks is no mail password.
    const use = claims['token_use'];
    if (use !== undefined && !(typeof use === 'string' && ACCESS_TOKEN_USES.has(use.toLowerCase()))) throw refuse(OAUTH_CODES.tokenType, `its token_use is ${shown(use)}, not an access token's`);
    // A sender-constrained token (RFC 8705 certificate-bound, RFC 9449 DPoP): its holder must
    // prove the key, a proof no IMAP, POP3 or ManageSieve login carries; taken as a bearer token,
    // a stolen one would log in.
    if (claims['cnf'] !== undefined) throw refuse(OAUTH_CODES.tokenType, 'it is bound to a key (cnf: RFC 8705, RFC 9449), whose proof a mail login cannot give');
    const skew = this.config.clockSkewMs;
    const exp = claims['exp'];
    let expires = Number.POSITIVE_INFINITY;
    if (exp !== undefined || from === 'jwt') {
      if (typeof exp !== 'number' || !Number.isFinite(exp)) throw refuse(OAUTH_CODES.malformed, exp === undefined ? 'it has no exp (an access token must expire)' : 'its exp is not a number');
      // No time at all (1e20 s): no IdP writes one, and the log's date of it would throw a RangeError.
      if (Math.abs(exp) > MAX_NUMERIC_DATE_S) throw refuse(OAUTH_CODES.malformed, `its exp ${exp} is no time (more than ${MAX_NUMERIC_DATE_S} s from 1970)`);
      if (exp * 1000 + skew < now) throw refuse(OAUTH_CODES.expired, `it expired at ${new Date(exp * 1000).toISOString()} (oauth2.clock_skew_ms ${skew})`);
      expires = exp;
    }
    for (const name of ['nbf', 'iat'] as const) {
      const at = claims[name];
      if (at === undefined) continue;
      if (typeof at !== 'number' || !Number.isFinite(at)) throw refuse(OAUTH_CODES.malformed, `its ${name} is not a number`);
      if (Math.abs(at) > MAX_NUMERIC_DATE_S) throw refuse(OAUTH_CODES.malformed, `its ${name} ${at} is no time (more than ${MAX_NUMERIC_DATE_S} s from 1970)`);
      if (at * 1000 - skew > now) throw refuse(OAUTH_CODES.notYetValid, `its ${name} is ${new Date(at * 1000).toISOString()}, later than now (oauth2.clock_skew_ms ${skew})`);
    }
    const iss = claims['iss'];
    if ((iss !== undefined || from === 'jwt') && (typeof iss !== 'string' || !this.config.issuers.includes(iss))) throw refuse(OAUTH_CODES.issuer, `iss ${shown(iss)} is not one of oauth2.issuers`);
    const aud = claims['aud'];
    if (aud === undefined && from === 'introspection') {
      // RFC 7662 §2.2 client_id: the client the token was issued to, the audience an IdP without audiences has.
      const clientId = claims['client_id'];
      if (typeof clientId !== 'string' || !this.config.audiences.includes(clientId)) throw refuse(OAUTH_CODES.audience, `it has no aud, and its client_id ${shown(clientId)} is not one of oauth2.audiences`);
    } else {
      const audiences = typeof aud === 'string' ? [aud] : Array.isArray(aud) ? aud : [];
      if (!audiences.some((a) => typeof a === 'string' && this.config.audiences.includes(a))) throw refuse(OAUTH_CODES.audience, `aud ${shown(aud)} names none of oauth2.audiences`);
    }
    const user = claims[this.config.userClaim];
    if (typeof user !== 'string' || user === '') throw refuse(OAUTH_CODES.noUser, `it has no ${this.config.userClaim} (oauth2.user_claim) string`);
    // An IdP that lets its users type any address marks it unverified: such an address names no
    // one. Only true vouches for it (OpenID Connect Core §5.1): a token without email_verified
    // says nothing of the address, and "false" as a string is no boolean.
    const verifiedEmail = claims['email_verified'];
    if (this.config.userClaim === 'email' && verifiedEmail !== true) throw refuse(OAUTH_CODES.emailUnverified, `its email ${shown(user)} is not verified (email_verified ${verifiedEmail === undefined ? 'absent' : shown(verifiedEmail)}, not true)`);
    return { user, exp: expires };
  }

  /** Remembers a verified token until min(its exp, token_cache_ms). */
  private remember(cacheKey: string, verified: VerifiedToken, now: number): void {
    const remaining = verified.exp * 1000 + this.config.clockSkewMs - now;
    if (this.tokens !== undefined && remaining > 0) this.tokens.set(cacheKey, verified, { ttl: Math.min(this.config.tokenCacheMs, remaining) });
  }

  /** The IdP's verdict on `token`: the introspection under way for it, or a new one; each login waits with its own cancellation. */
  private introspected(token: string, cacheKey: string, signal: Cancellation): Promise<VerifiedToken> {
    let asked = this.asking.get(cacheKey);
    if (asked === undefined) {
      const introspection = this.introspect(token, cacheKey);
      asked = introspection;
      this.asking.set(cacheKey, introspection);
      void introspection.catch(() => undefined).finally(() => this.asking.delete(cacheKey));
    }
    return untilCancelled(asked, signal, 'the login was cancelled while the IdP was asked about its token');
  }

  /**
   * Asks the introspection endpoint about `token` (RFC 7662 §2.1: a form POST with the client's
   * HTTP basic credentials) within introspection_timeout_ms, the wait for a free request
   * included, and checks its answer; remembers the verdict (active: token_cache_ms; refused:
   * introspection_negative_cache_ms). A login whose deadline passed before a request was free
   * fails unasked (counted not-sent); one sent with less than INTROSPECTION_TIMEOUT_FLOOR of it
   * that expires is counted timeout-queued, not the IdP's timeout. Never asked of one login's
   * cancellation: others may wait on it.
   */
  private async introspect(token: string, cacheKey: string): Promise<VerifiedToken> {
    const deadline = performance.now() + this.config.introspectionTimeoutMs;
    // Discovery not read yet (started a moment ago, or failing): the endpoint may well be in it.
    if (this.introspectionUrl === undefined && this.config.openidConfigurationUrl !== undefined) await this.refetch('introspection');
    const url = this.introspectionUrl;
    if (url === undefined) {
      const source = this.config.openidConfigurationUrl ?? '';
      throw introspectionUnavailable(source, this.discovered === undefined ? 'could not be read: no introspection endpoint is known yet (oauth.discovery_failed)' : 'names no introspection_endpoint, and oauth2 has no introspection_url');
    }
    try {
      await this.freeRequest(url, deadline);
    } catch (error) {
      this.metrics?.oauthIntrospectionNotSent();
      throw error;
    }
    const sentAt = performance.now();
    const timeoutMs = Math.max(1, deadline - sentAt);
    const queued = timeoutMs < this.config.introspectionTimeoutMs * INTROSPECTION_TIMEOUT_FLOOR;
    let text: string;
    try {
      const credentials = Buffer.from(`${formEncoded(this.config.clientId ?? '')}:${formEncoded(this.config.clientSecret ?? '')}`).toString('base64');
      text = await fetchText(url, {
        timeoutMs,
        // Not queued: the few ms before sending are part of the configured deadline, which the message names.
        deadline: queued
          ? `${Math.round(timeoutMs)} ms (oauth2.introspection_timeout_ms less ${Math.round(this.config.introspectionTimeoutMs - timeoutMs)} ms spent before sending, waiting for a free request)`
          : `${this.config.introspectionTimeoutMs} ms (oauth2.introspection_timeout_ms)`,
        maxBytes: MAX_IDP_ANSWER_BYTES,
        post: { body: new URLSearchParams({ token, token_type_hint: 'access_token' }).toString(), headers: { authorization: `Basic ${credentials}` } },
        agent: this.agentFor(url),
      });
    } catch (error) {
      const result = idpResultOf(error);
      this.metrics?.oauthIntrospection(result === 'timeout' && queued ? 'timeout-queued' : result, (performance.now() - sentAt) / 1000);
      if (error instanceof HttpStatusError && (error.status === 401 || error.status === 403)) {
        throw introspectionUnavailable(url, `refused mailfront's client credentials (HTTP ${error.status}): check oauth2.client_id and client_secret_file, and that the client may introspect tokens`);
      }
      throw introspectionUnavailable(url, error instanceof HttpStatusError ? `answered HTTP ${error.status}` : `did not answer: ${error instanceof Error ? error.message : String(error)}`);
    } finally {
      this.releaseRequest();
    }
    const seconds = (performance.now() - sentAt) / 1000;
    let answer: unknown;
    try {
      answer = JSON.parse(text);
    } catch {
      answer = undefined;
    }
    const fields = answer !== null && typeof answer === 'object' && !Array.isArray(answer) ? (answer as Record<string, unknown>) : undefined;
    // Not a verdict on the token: a wrong URL (another endpoint's JSON) must not refuse, and count against, every user.
    this.metrics?.oauthIntrospection(typeof fields?.['active'] === 'boolean' ? 'ok' : 'bad-answer', seconds);
    if (fields === undefined) throw introspectionUnavailable(url, 'answered with no JSON object (RFC 7662 §2.2)');
    if (typeof fields['active'] !== 'boolean') throw introspectionUnavailable(url, 'answered without a boolean "active" (RFC 7662 §2.2): is it the introspection endpoint?');
    try {
      if (fields['active'] !== true) throw refuse(OAUTH_CODES.inactive, 'the IdP says it is not active (revoked, expired, or never issued: RFC 7662 §2.2)');
      for (const name of ['token_type', 'typ'] as const) {
        const type = fields[name];
        if (type !== undefined && !(typeof type === 'string' && ACCESS_TOKEN_TYPES.has(type.toLowerCase()))) throw refuse(OAUTH_CODES.tokenType, `its ${name} is ${shown(type)}, not an access token's (Bearer)`);
      }
      const now = Date.now();
      const verified = this.checkClaims(fields, now, 'introspection');
      this.remember(cacheKey, verified, now);
      return verified;
    } catch (error) {
      if (error instanceof MailfrontError && error.kind === 'auth-failed') this.refused?.set(cacheKey, { code: error.code, message: error.message });
      throw error;
    }
  }

  /** Takes one of introspection_concurrency's requests, waiting until `deadline` for one to end; at most MAX_INTROSPECTION_WAITING wait. */
  private freeRequest(url: string, deadline: number): Promise<void> {
    // The discovery document read first (it names the endpoint) may have taken the time.
    if (performance.now() >= deadline) return Promise.reject(introspectionUnavailable(url, `was not asked: oauth2.introspection_timeout_ms (${this.config.introspectionTimeoutMs} ms) passed while the OpenID configuration was read`));
    if (this.inFlight < this.config.introspectionConcurrency) {
      this.inFlight++;
      return Promise.resolve();
    }
    const busy = (): string => `${this.inFlight} requests in flight (oauth2.introspection_concurrency ${this.config.introspectionConcurrency}) and ${this.waiting.length} logins waiting: the IdP slow, or a flood of tokens`;
    if (this.waiting.length >= MAX_INTROSPECTION_WAITING) return Promise.reject(introspectionUnavailable(url, `was not asked: ${busy()}`));
    return new Promise((resolve, reject) => {
      const grant = (): void => {
        clearTimeout(timer);
        this.inFlight++;
        resolve();
      };
      const timer = setTimeout(() => {
        const index = this.waiting.indexOf(grant);
        if (index >= 0) this.waiting.splice(index, 1);
        reject(introspectionUnavailable(url, `was not asked within oauth2.introspection_timeout_ms (${this.config.introspectionTimeoutMs} ms): ${busy()}`));
      }, Math.max(0, deadline - performance.now()));
      this.waiting.push(grant);
    });
  }

  private releaseRequest(): void {
    this.inFlight--;
    this.waiting.shift()?.();
    if (this.closed && this.inFlight === 0) this.closeConnections();
  }

  /** The keep-alive connections for `url`'s protocol, as many as requests may be in flight. */
  private agentFor(url: string): Agent {
    const protocol = new URL(url).protocol;
    let agent = this.agents.get(protocol);
    if (agent === undefined) {
      const options = { keepAlive: true, maxSockets: this.config.introspectionConcurrency, timeout: IDLE_CONNECTION_MS };
      agent = protocol === 'https:' ? new https.Agent(options) : new http.Agent(options);
      this.agents.set(protocol, agent);
    }
    return agent;
  }

  private closeConnections(): void {
    for (const agent of this.agents.values()) agent.destroy();
    this.agents.clear();
  }

  /** The keys a token's kid names (none given: every key); the file's first, then the URL's. */
  private keysNamed(kid: string | undefined): JwkKey[] {
    const all = [...(this.fileKeys?.keys ?? []), ...(this.urlKeys?.keys ?? [])];
    return kid === undefined ? all : all.filter((k) => k.kid === kid);
  }

  /** A fetch for what the URLs lack (a key id; the document's endpoint): the one under way, or a new one when the last began long enough ago. */
  private refetch(why: 'unknown-kid' | 'introspection'): Promise<void> {
    if (this.fetching === null && performance.now() - this.lastFetchAt >= this.config.jwksUnknownKidRefetchMs) this.fetchKeys(why);
    return this.fetching ?? Promise.resolve();
  }

  /** Fetches the document (with discovery) and the keys' URL unless a fetch is under way; never rejects (a failure keeps what was had, and is logged). */
  private fetchKeys(why: 'start' | 'refresh' | 'unknown-kid' | 'introspection'): void {
    if (!this.fetchesUrls || this.fetching !== null || this.closed) return;
    this.lastFetchAt = performance.now();
    this.fetching = this.fetchUrls(why).finally(() => {
      this.fetching = null;
    });
  }

  private async fetchUrls(why: 'start' | 'refresh' | 'unknown-kid' | 'introspection'): Promise<void> {
    // The document first: it names the keys' URL. An unknown kid fetches the keys only, once the document has been read.
    if (this.config.openidConfigurationUrl !== undefined && (why === 'start' || why === 'refresh' || this.discovered === undefined)) await this.discover(why);
    const url = this.jwksUrl;
    if (url !== undefined && why !== 'introspection') await this.loadKeys(url, why);
  }

  /** Reads the OpenID configuration document; never rejects (a failure keeps the document read before, and is logged). */
  private async discover(why: string): Promise<void> {
    // Logged as config issues show it (urlShown()): a configured URL may carry a secret in its query.
    const source = this.config.openidConfigurationUrl ?? '';
    // Whether the IdP answered 200: a failure after it is the answer's (bad-answer), not the request's.
    let answered = false;
    try {
      const text = await fetchText(source, { timeoutMs: this.config.jwksTimeoutMs, deadline: `${this.config.jwksTimeoutMs} ms (oauth2.jwks_timeout_ms)`, maxBytes: MAX_IDP_ANSWER_BYTES });
      answered = true;
      const found = parseDiscovery(text, this.config.discoveryIssuers ?? this.config.issuers);
      if (this.keysNeeded && this.config.jwksUrl === undefined && this.config.jwksFile === undefined && found.jwksUri === undefined) throw new Error('it names no jwks_uri, and oauth2 has no jwks_url nor jwks_file');
      if (this.config.tokenCheck !== 'jwt' && this.config.introspectionUrl === undefined && found.introspectionEndpoint === undefined) throw new Error(`it names no introspection_endpoint, and oauth2 has no introspection_url (token_check ${this.config.tokenCheck})`);
      this.metrics?.oauthIdpFetch('discovery', 'ok');
      const changed = JSON.stringify(found) !== JSON.stringify(this.discovered);
      this.discovered = found;
      if (changed) this.log.info({ event: 'oauth.discovery_loaded', source: urlShown(source), why, issuer: found.issuer, jwksUri: found.jwksUri ?? null, introspectionEndpoint: found.introspectionEndpoint ?? null }, 'OpenID configuration read');
    } catch (error) {
      this.metrics?.oauthIdpFetch('discovery', answered ? 'bad-answer' : idpResultOf(error));
      this.log.error({ event: 'oauth.discovery_failed', source: urlShown(source), why, err: error instanceof Error ? error.message : String(error) }, this.discovered === undefined ? 'the OpenID configuration could not be read: OAuth logins that need its URLs fail until it is' : 'the OpenID configuration could not be read again: what it said before stays in use');
    }
  }

  /** Fetches the keys of `url`; never rejects (a failure keeps the keys held, and is logged). */
  private async loadKeys(url: string, why: string): Promise<void> {
    // `url` is logged as config issues show it (urlShown()): oauth2.jwks_url may carry a secret in its query.
    let answered = false;
    try {
      const text = await fetchText(url, { timeoutMs: this.config.jwksTimeoutMs, deadline: `${this.config.jwksTimeoutMs} ms (oauth2.jwks_timeout_ms)`, maxBytes: MAX_JWKS_BYTES });
      answered = true;
      const set = parseJwks(text);
      if (set.keys.length === 0) throw new Error(`no key mailfront can verify with${set.skipped.length > 0 ? ` (${set.skipped.map((s) => `${s.kid ?? 'a key without kid'}: ${s.reason}`).join('; ')})` : ''}`);
      this.metrics?.oauthIdpFetch('jwks', 'ok');
      if (set.fingerprint === this.urlKeys?.fingerprint) {
        this.urlKeysFrom = url;
        return;
      }
      // A key withdrawn must stop its tokens at once, not when their cache entries end.
      if (this.urlKeys !== undefined) this.tokens?.clear();
      this.urlKeys = set;
      this.urlKeysFrom = url;
      for (const { kid, reason } of set.skipped) this.log.warn({ event: 'oauth.jwks_key_skipped', source: urlShown(url), kid, reason }, 'a key of the JWKS is not used');
      this.log.info({ event: 'oauth.jwks_loaded', source: urlShown(url), why, keys: set.keys.length, kids: set.keys.map((k) => k.kid ?? null) }, 'OAuth signing keys loaded');
    } catch (error) {
      this.metrics?.oauthIdpFetch('jwks', answered ? 'bad-answer' : idpResultOf(error));
      this.log.error({ event: 'oauth.jwks_fetch_failed', source: urlShown(url), why, keys: this.urlKeys?.keys.length ?? 0, err: error instanceof Error ? error.message : String(error) }, this.urlKeys === undefined ? 'OAuth signing keys could not be fetched: OAuth logins fail until they are' : 'OAuth signing keys could not be fetched again: the keys fetched before stay in use');
    }
  }
}
