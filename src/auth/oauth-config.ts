/**
 * The `oauth2` config section: which OAuth 2.0 access tokens (signed JWTs) mailfront takes as a
 * login (SASL OAUTHBEARER and XOAUTH2): the issuers and audiences accepted, where the signing keys
 * come from (a JWKS file, a JWKS URL, or both), the claim naming the user, the clock skew allowed,
 * the signature algorithms allowed, and how long a verified token is remembered.
 * Reads plain YAML data into a typed value with the validate.ts helpers; must not open files or
 * connections (auth/oauth.ts reads the file and fetches the URL).
 */
import { IssueList, at, int, readSection, str, strList } from '../config/validate.js';

/** The signature algorithms mailfront verifies (RFC 7518 §3.1, RFC 8037): public keys only, never `none` nor HS*. */
export const JWT_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA'] as const;
export type JwtAlgorithm = (typeof JWT_ALGORITHMS)[number];

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
  /** How long a verified token is remembered (never past its `exp`); 0: every login verifies. */
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
  const keys = ['issuers', 'audiences', 'jwks_file', 'jwks_url', 'jwks_refresh_ms', 'jwks_unknown_kid_refetch_ms', 'jwks_timeout_ms', 'user_claim', 'clock_skew_ms', 'algorithms', 'token_cache_ms'];
  const o = readSection(v, path, keys, issues) ?? {};
  const issuers = strList(o, 'issuers', path, issues);
  const audiences = strList(o, 'audiences', path, issues);
  const jwksFile = o['jwks_file'] === undefined ? undefined : str(o, 'jwks_file', path, issues);
  const jwksUrl = o['jwks_url'] === undefined ? undefined : str(o, 'jwks_url', path, issues);
  if (jwksFile === undefined && jwksUrl === undefined) issues.add(path, 'jwks_file or jwks_url (or both): where the keys that sign the tokens are', o);
  if (jwksUrl !== undefined && jwksUrl !== '') {
    const problem = jwksUrlProblem(jwksUrl);
    if (problem !== null) issues.addFinding(at(path, 'jwks_url'), 'an https:// URL (http:// only to a loopback address)', `${problem}: ${JSON.stringify(jwksUrl.slice(0, 80))}`);
  }
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
    ...(jwksUrl !== undefined && jwksUrl !== '' ? { jwksUrl } : {}),
    jwksRefreshMs: int(o, 'jwks_refresh_ms', path, issues, 60_000, 86_400_000, 600_000),
    jwksUnknownKidRefetchMs: int(o, 'jwks_unknown_kid_refetch_ms', path, issues, 1_000, 3_600_000, 60_000),
    jwksTimeoutMs: int(o, 'jwks_timeout_ms', path, issues, 100, 60_000, 5_000),
    userClaim,
    clockSkewMs: int(o, 'clock_skew_ms', path, issues, 0, 600_000, 60_000),
    algorithms,
    tokenCacheMs: int(o, 'token_cache_ms', path, issues, 0, 3_600_000, 60_000),
  };
}
