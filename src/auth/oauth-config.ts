/**
 * The `oauth2` config section: which OAuth 2.0 access tokens mailfront takes as a login (SASL
 * OAUTHBEARER and XOAUTH2): the issuers and audiences accepted, how a token is checked (a signed
 * JWT locally, an opaque one by the IdP's introspection endpoint, RFC 7662, and its client
 * credentials), where the signing keys and the endpoint come from (a JWKS file, URLs, OpenID
 * discovery), the claim naming the user, the clock skew allowed, the signature algorithms allowed,
 * and how long an answer is remembered.
 * Reads plain YAML data into a typed value with the validate.ts helpers; must not open files or
 * connections (auth/oauth.ts reads the file and fetches the URLs; config/load.ts reads
 * client_secret_file).
 */
import { IssueList, at, bool, int, oneOf, optStr, readSection, str, strList, urlShown } from '../config/validate.js';

/** The signature algorithms mailfront verifies (RFC 7518 §3.1, RFC 8037): public keys only, never `none` nor HS*. */
export const JWT_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'] as const;
export type JwtAlgorithm = (typeof JWT_ALGORITHMS)[number];

/**
 * How a token is checked: `jwt` locally only (signature, times, claims; an opaque token is
 * refused), `introspect` by the IdP's introspection endpoint always (a revoked JWT is seen too),
 * `auto` a JWT locally and any other token by introspection.
 */
export const TOKEN_CHECKS = ['jwt', 'introspect', 'auto'] as const;
export type TokenCheck = (typeof TOKEN_CHECKS)[number];

/** OAuth 2.0 bearer-token logins, as auth/oauth.ts verifies them. */
export interface OAuthConfig {
  /** The `iss` values accepted (compared exactly): one realm reached under several names has several. */
  readonly issuers: readonly string[];
  /** The `aud` values accepted: a token must name one of them (it names the mail service, not another client of the IdP). */
  readonly audiences: readonly string[];
  /** A JWKS file (absolute), read at start and at each reload. */
  readonly jwksFile?: string;
  /** A JWKS URL (https, or http on a loopback address), fetched at start, every jwksRefreshMs, and for a key id it does not know. */
  readonly jwksUrl?: string;
  /** The OpenID Provider configuration document (OpenID Connect Discovery 1.0 §4) read for jwks_uri and introspection_endpoint, fetched with the keys. */
  readonly openidConfigurationUrl?: string;
  /** The issuer that document must name (§4.3): issuers[0] with `discovery: true`; any of issuers with an explicit URL. */
  readonly discoveryIssuers?: readonly string[];
  readonly tokenCheck: TokenCheck;
  /** The IdP's token introspection endpoint (RFC 7662 §2); absent with discovery: the document's introspection_endpoint. */
  readonly introspectionUrl?: string;
  /** The mail service's client at the IdP, whose credentials the introspection request carries (RFC 7662 §2.1, HTTP basic). */
  readonly clientId?: string;
  readonly clientSecret?: string;
  /** Deadline of one introspection, the wait for a free request included. */
  readonly introspectionTimeoutMs: number;
  /** Introspection requests in flight at most; more logins wait for one to end (within the deadline). */
  readonly introspectionConcurrency: number;
  /** How long a token the IdP called inactive is refused without asking again; 0: asked each time. */
  readonly introspectionNegativeCacheMs: number;
  readonly jwksRefreshMs: number;
  /** An unknown key id fetches the URL again at most once per this: a flood of made-up ids cannot hammer the IdP. */
  readonly jwksUnknownKidRefetchMs: number;
  /** Deadline of one fetch of the URL. */
  readonly jwksTimeoutMs: number;
  /** The claim holding the user's name (normalised as a typed name is: usernames). */
  readonly userClaim: string;
  /** How far `exp`, `nbf` and `iat` may be off this host's clock. */
  readonly clockSkewMs: number;
  readonly algorithms: readonly JwtAlgorithm[];
  /** How long a verified token (or an introspection's `active: true`) is remembered (never past its `exp`); 0: every login verifies. */
  readonly tokenCacheMs: number;
}

/** A URL mailfront may fetch keys from: https, or http to a loopback address (a test's or a sidecar's IdP stand-in). */
export function jwksUrlProblem(text: string): string | null {
  let url: URL;
  try {
    url = new URL(text);
  } catch {
    return 'not a URL';
  }
  if (url.username !== '' || url.password !== '') return 'a URL with credentials in it';
  if (url.protocol === 'https:') return null;
  if (url.protocol !== 'http:') return `a ${url.protocol} URL`;
  const host = url.hostname.replace(/^\[|\]$/g, '');
  return host === 'localhost' || host === '::1' || /^127(?:\.\d{1,3}){3}$/.test(host) ? null : 'an http URL to a host that is not a loopback address (keys fetched in the clear could be anyone\'s)';
}

/** Reads the `oauth2` section; undefined when it is absent (no bearer-token logins). */
export function readOAuthConfig(v: unknown, path: string, issues: IssueList, resolvePath: (p: string) => string): OAuthConfig | undefined {
  if (v === undefined || v === null) return undefined;
  const keys = [
    'issuers', 'audiences', 'jwks_file', 'jwks_url', 'jwks_refresh_ms', 'jwks_unknown_kid_refetch_ms', 'jwks_timeout_ms', 'user_claim', 'clock_skew_ms', 'algorithms', 'token_cache_ms',
    'discovery', 'openid_configuration_url', 'token_check', 'introspection_url', 'client_id', 'client_secret', 'introspection_timeout_ms', 'introspection_concurrency', 'introspection_negative_cache_ms',
  ];
  const o = readSection(v, path, keys, issues) ?? {};
  const issuers = strList(o, 'issuers', path, issues);
  const audiences = strList(o, 'audiences', path, issues);
  const jwksFile = o['jwks_file'] === undefined ? undefined : str(o, 'jwks_file', path, issues);
  const url = (key: string): string | undefined => {
    const text = optStr(o, key, path, issues);
    if (text === undefined || text === '') return undefined;
    const problem = jwksUrlProblem(text);
    if (problem !== null) issues.addFinding(at(path, key), 'an https:// URL (http:// only to a loopback address)', `${problem}: ${JSON.stringify(urlShown(text).slice(0, 80))}`);
    return text;
  };
  const jwksUrl = url('jwks_url');
  const introspectionUrl = url('introspection_url');
  // OpenID Connect Discovery §4: the document is at the issuer plus /.well-known/openid-configuration (a trailing / of the issuer dropped).
  const discovery = bool(o, 'discovery', path, issues, false);
  let openidConfigurationUrl = url('openid_configuration_url');
  let discoveryIssuers: readonly string[] | undefined;
  if (openidConfigurationUrl !== undefined) {
    if (discovery) issues.addFinding(at(path, 'discovery'), 'discovery: true or openid_configuration_url, not both (the URL is where discovery reads)', 'both');
    discoveryIssuers = issuers;
  } else if (discovery && issuers[0] !== undefined) {
    openidConfigurationUrl = `${issuers[0].replace(/\/$/, '')}/.well-known/openid-configuration`;
    const problem = jwksUrlProblem(openidConfigurationUrl);
    if (problem !== null) issues.addFinding(at(path, 'discovery'), 'an issuers[0] that is an https:// URL (http:// only to a loopback address): discovery reads <issuer>/.well-known/openid-configuration', `${problem}: ${JSON.stringify(urlShown(issuers[0]).slice(0, 80))}`);
    discoveryIssuers = [issuers[0]];
  }
  const introspectionKnown = introspectionUrl !== undefined || openidConfigurationUrl !== undefined;
  const clientId = optStr(o, 'client_id', path, issues);
  const clientSecret = optStr(o, 'client_secret', path, issues);
  // Introspection configured (its URL, or discovery with the client's credentials, which only
  // introspection uses): JWTs locally, the rest asked of the IdP; else as before, JWTs only.
  const tokenCheck = oneOf(o, 'token_check', path, issues, TOKEN_CHECKS, introspectionUrl !== undefined || (introspectionKnown && clientId !== undefined) ? 'auto' : 'jwt');
  if (tokenCheck === 'jwt' && (clientId !== undefined || o['client_secret'] !== undefined)) {
    issues.add(at(path, 'token_check'), 'auto or introspect where client_id or client_secret is set: the client\'s credentials are sent only with introspection, and token_check jwt asks the IdP nothing (opaque tokens would all be refused)', 'jwt');
  }
  if (tokenCheck !== 'introspect' && jwksFile === undefined && jwksUrl === undefined && openidConfigurationUrl === undefined) {
    issues.add(path, `jwks_file or jwks_url (or both), or discovery: where the keys that sign the tokens are (token_check ${tokenCheck} checks JWTs locally)`, o);
  }
  if (tokenCheck !== 'jwt') {
    if (!introspectionKnown) issues.add(at(path, 'introspection_url'), `the IdP's token introspection endpoint (RFC 7662), or discovery (token_check is ${tokenCheck})`, undefined);
    if (clientId === undefined) issues.add(at(path, 'client_id'), `the mail service's client id at the IdP, sent with each introspection request (token_check is ${tokenCheck})`, undefined);
    // At client_secret's path: the loader drops it when client_secret_file was named but not read (its own issue says why).
    if (clientSecret === undefined) issues.add(at(path, 'client_secret'), `the client's secret, from client_secret_file (token_check is ${tokenCheck})`, undefined);
  }
  // RFC 6749 §2.3.1: the id is form-encoded before HTTP basic; a ":" in it is encoded, so any id works, but a control character is no id.
  if (clientId !== undefined && /[\p{Cc}]/u.test(clientId)) issues.add(at(path, 'client_id'), 'a client id without control characters', clientId);
  let algorithms: JwtAlgorithm[] = [...JWT_ALGORITHMS];
  if (o['algorithms'] !== undefined) {
    algorithms = [];
    strList(o, 'algorithms', path, issues).forEach((name, i) => {
      if ((JWT_ALGORITHMS as readonly string[]).includes(name)) algorithms.push(name as JwtAlgorithm);
      // `none` is no signature, and an HS* "signature" is a MAC anyone holding the key made: with keys published as a JWKS, anyone.
      else issues.add(at(at(path, 'algorithms'), i), `one of ${JWT_ALGORITHMS.join(', ')} (never none or HS256/384/512: mailfront verifies with the issuer's public keys only)`, name);
    });
  }
  const userClaim = str(o, 'user_claim', path, issues, 'email');
  return {
    issuers,
    audiences,
    ...(jwksFile !== undefined && jwksFile !== '' ? { jwksFile: resolvePath(jwksFile) } : {}),
    ...(jwksUrl !== undefined ? { jwksUrl } : {}),
    ...(openidConfigurationUrl !== undefined && discoveryIssuers !== undefined ? { openidConfigurationUrl, discoveryIssuers } : {}),
    tokenCheck,
    ...(introspectionUrl !== undefined ? { introspectionUrl } : {}),
    ...(clientId !== undefined ? { clientId } : {}),
    ...(clientSecret !== undefined ? { clientSecret } : {}),
    introspectionTimeoutMs: int(o, 'introspection_timeout_ms', path, issues, 100, 30_000, 2_000),
    introspectionConcurrency: int(o, 'introspection_concurrency', path, issues, 1, 256, 16),
    introspectionNegativeCacheMs: int(o, 'introspection_negative_cache_ms', path, issues, 0, 300_000, 10_000),
    jwksRefreshMs: int(o, 'jwks_refresh_ms', path, issues, 60_000, 86_400_000, 600_000),
    jwksUnknownKidRefetchMs: int(o, 'jwks_unknown_kid_refetch_ms', path, issues, 1_000, 3_600_000, 60_000),
    jwksTimeoutMs: int(o, 'jwks_timeout_ms', path, issues, 100, 60_000, 5_000),
    userClaim,
    clockSkewMs: int(o, 'clock_skew_ms', path, issues, 0, 600_000, 60_000),
    algorithms,
    tokenCacheMs: int(o, 'token_cache_ms', path, issues, 0, 3_600_000, 60_000),
  };
}
