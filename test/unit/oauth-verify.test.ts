/**
 * auth/oauth.ts: access tokens verified with keys made here (RSA, EC, Ed25519), from a JWKS file
 * and from a JWKS URL served by a node http server on 127.0.0.1 (the IdP stand-in); every refusal
 * has its own code; alg none, HS256 keyed with the public key and an EC token under an RSA kid
 * are refused; unknown kids refetch the URL at most once per interval, one fetch for many logins;
 * a verified token is remembered (by HMAC) and a changed key set forgets it. No log line holds
 * the token or its signature.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { OAuthVerifier } from '../../src/auth/oauth.js';
import type { OAuthConfig } from '../../src/auth/oauth-config.js';
import { JWT_ALGORITHMS } from '../../src/auth/oauth-config.js';
import { Canceller } from '../../src/cancel.js';
import { MailfrontError } from '../../src/errors.js';
import { assertNoRegisteredSecret, capturedLogger, registerSecrets } from '../integration/front.js';
import { JwksServer, claimsFor, hs256WithPublicKey, jwks, makeKey, signJwt, unsignedJwt } from '../integration/oauth-idp.js';

const ISSUER = 'https://idp.example.org/realms/mail';
const AUDIENCE = 'mail';
const rsa = makeKey('rsa-1', 'RS256');
const ec = makeKey('ec-1', 'ES256');
const ed = makeKey('ed-1', 'EdDSA');
const ps = makeKey('ps-1', 'PS256');
const rs384 = makeKey('rsa-384', 'RS384');
const es384 = makeKey('ec-384', 'ES384');
const dir = mkdtempSync(join(tmpdir(), 'oauth-verify-'));
const jwksFile = join(dir, 'jwks.json');
writeFileSync(jwksFile, jwks([rsa, ec, ed, ps, rs384, es384]));
after(() => rmSync(dir, { recursive: true, force: true }));

/**
 * Each case's deadline. The slowest takes about 2 s alone (an RSA key made, a wait of 1.05 s for
 * the refetch interval); 17 s beside two busy loops and other test files (load 11 on two cores),
 * 31 s at about 5 % of a CPU (nice 10 beside two busy loops on its CPU). 60 s is twice the worst
 * and a fifth of the runner's 300 s per file: a case that hangs fails in a minute, by its name,
 * and the cases after it still run.
 */
const CASE = { timeout: 60_000 };

function config(overrides: { [K in keyof OAuthConfig]?: OAuthConfig[K] | undefined } = {}): OAuthConfig {
  return {
    issuers: [ISSUER],
    audiences: [AUDIENCE],
    jwksFile,
    jwksRefreshMs: 600_000,
    jwksUnknownKidRefetchMs: 60_000,
    jwksTimeoutMs: 2_000,
    userClaim: 'email',
    clockSkewMs: 30_000,
    algorithms: [...JWT_ALGORITHMS],
    tokenCacheMs: 60_000,
    ...overrides,
  } as OAuthConfig;
}

const { log, lines } = capturedLogger('debug');
const signal = new Canceller();
const tokens: string[] = [];
/** A token whose every form the log scan looks for. */
function token(value: string): string {
  tokens.push(value);
  const signature = value.split('.')[2] ?? '';
  registerSecrets(signature.length >= 6 ? [value, signature] : [value]);
  return value;
}

async function refusal(verifier: OAuthVerifier, jwt: string): Promise<MailfrontError> {
  try {
    await verifier.verify(jwt, signal);
  } catch (error) {
    assert.ok(error instanceof MailfrontError, String(error));
    return error;
  }
  assert.fail('the token was taken');
}

describe('a JWKS file', () => {
  const verifier = OAuthVerifier.create(config(), log);
  after(() => verifier.close());

  test('RS256, PS256, RS384, ES256, ES384 and EdDSA tokens are verified; the user is the email claim', CASE, async () => {
    for (const key of [rsa, ps, rs384, ec, es384, ed]) {
      const verified = await verifier.verify(token(signJwt(key, claimsFor('alice', ISSUER, AUDIENCE))), signal);
      assert.equal(verified.user, 'alice@example.org', key.alg);
    }
  });

  test('each refusal has its own code, and is auth-failed', CASE, async () => {
    const cases: Array<[string, string]> = [
      ['not.a-jwt', 'OAUTH_TOKEN_MALFORMED'],
      [signJwt(rsa, claimsFor('alice', ISSUER, AUDIENCE, -120)), 'OAUTH_TOKEN_EXPIRED'],
      [signJwt(rsa, claimsFor('alice', ISSUER, AUDIENCE, 300, { nbf: Math.floor(Date.now() / 1000) + 600 })), 'OAUTH_TOKEN_NOT_YET_VALID'],
      [signJwt(rsa, claimsFor('alice', 'https://evil.example.net/', AUDIENCE)), 'OAUTH_WRONG_ISSUER'],
      [signJwt(rsa, claimsFor('alice', ISSUER, ['account', 'other-app'])), 'OAUTH_WRONG_AUDIENCE'],
      [signJwt(makeKey('rsa-1', 'RS256'), claimsFor('alice', ISSUER, AUDIENCE)), 'OAUTH_BAD_SIGNATURE'],
      [signJwt(makeKey('rsa-unknown', 'RS256'), claimsFor('alice', ISSUER, AUDIENCE)), 'OAUTH_UNKNOWN_KEY'],
      [unsignedJwt(claimsFor('alice', ISSUER, AUDIENCE), 'rsa-1'), 'OAUTH_ALGORITHM_REFUSED'],
      [hs256WithPublicKey(rsa, claimsFor('alice', ISSUER, AUDIENCE)), 'OAUTH_ALGORITHM_REFUSED'],
      // An ES256 token under the RSA key's kid: the key is never used for another algorithm.
      [signJwt(ec, claimsFor('alice', ISSUER, AUDIENCE), { kid: 'rsa-1' }), 'OAUTH_ALGORITHM_REFUSED'],
      [signJwt(rsa, { ...claimsFor('alice', ISSUER, AUDIENCE), exp: undefined }), 'OAUTH_TOKEN_MALFORMED'],
      [signJwt(rsa, claimsFor('alice', ISSUER, AUDIENCE, 300, { email: undefined })), 'OAUTH_NO_USER_CLAIM'],
      [signJwt(rsa, claimsFor('alice', ISSUER, AUDIENCE, 300, { email_verified: false })), 'OAUTH_EMAIL_UNVERIFIED'],
      // Only true vouches for the address: absent, or "false" as a string, does not.
      [signJwt(rsa, claimsFor('alice', ISSUER, AUDIENCE, 300, { email_verified: undefined })), 'OAUTH_EMAIL_UNVERIFIED'],
      [signJwt(rsa, claimsFor('alice', ISSUER, AUDIENCE, 300, { email_verified: 'false' })), 'OAUTH_EMAIL_UNVERIFIED'],
      [signJwt(rsa, claimsFor('alice', ISSUER, AUDIENCE, 300, { email_verified: 'true' })), 'OAUTH_EMAIL_UNVERIFIED'],
      [signJwt(rsa, claimsFor('alice', ISSUER, AUDIENCE), { crit: ['exp'] }), 'OAUTH_TOKEN_MALFORMED'],
      // A JWT names its issuer and its audience: RFC 7662's client_id stands for a missing aud in
      // an introspection answer only, and a missing iss is no issuer of oauth2.issuers.
      [signJwt(rsa, { ...claimsFor('alice', ISSUER, AUDIENCE), iss: undefined }), 'OAUTH_WRONG_ISSUER'],
      [signJwt(rsa, { ...claimsFor('alice', ISSUER, AUDIENCE), aud: undefined, client_id: AUDIENCE }), 'OAUTH_WRONG_AUDIENCE'],
      // The key's own alg binds it: rsa-1 is published for RS256, so a PS256 signature by the same
      // RSA key is refused, though PS256 is allowed and the signature is the key's.
      [signJwt({ ...rsa, alg: 'PS256' }, claimsFor('alice', ISSUER, AUDIENCE)), 'OAUTH_ALGORITHM_REFUSED'],
    ];
    for (const [jwt, code] of cases) {
      if (jwt.includes('.') && jwt.split('.').length === 3 && (jwt.split('.')[2] ?? '').length > 0) token(jwt);
      const error = await refusal(verifier, jwt);
      assert.equal(error.code, code, `${code}: ${error.message}`);
      assert.equal(error.kind, 'auth-failed', code);
    }
  });

  test('a signed exp, nbf or iat beyond the range of a date is refused as malformed (it threw a RangeError)', CASE, async () => {
    for (const claims of [{ nbf: 1e20 }, { iat: 1e20 }, { exp: -1e20 }, { exp: 1e300 }]) {
      const error = await refusal(verifier, token(signJwt(rsa, claimsFor('alice', ISSUER, AUDIENCE, 300, claims))));
      assert.equal(error.code, 'OAUTH_TOKEN_MALFORMED', `${JSON.stringify(claims)}: ${error.message}`);
      assert.equal(error.kind, 'auth-failed');
    }
    // The edge of the range is a time, and refused for what it is.
    assert.equal((await refusal(verifier, token(signJwt(rsa, claimsFor('alice', ISSUER, AUDIENCE, 300, { exp: -8.64e12 }))))).code, 'OAUTH_TOKEN_EXPIRED');
  });

  test('clock skew: a token expired within oauth2.clock_skew_ms is still taken', CASE, async () => {
    const verified = await verifier.verify(token(signJwt(rsa, claimsFor('bob', ISSUER, AUDIENCE, -10))), signal);
    assert.equal(verified.user, 'bob@example.org');
  });

  test('another claim names the user (oauth2.user_claim); an aud list naming the audience is taken', CASE, async () => {
    const other = OAuthVerifier.create(config({ userClaim: 'preferred_username', tokenCacheMs: 0 }), log);
    try {
      assert.equal((await other.verify(token(signJwt(ec, claimsFor('carol', ISSUER, ['account', AUDIENCE]))), signal)).user, 'carol');
      // email_verified speaks of the email claim only.
      assert.equal((await other.verify(token(signJwt(ec, claimsFor('carol', ISSUER, AUDIENCE, 300, { email_verified: undefined }))), signal)).user, 'carol');
      assert.equal(other.cachedTokens, 0, 'token_cache_ms 0: nothing kept');
    } finally {
      other.close();
    }
  });

  test('oauth2.algorithms leaves the others out, whatever the keys', CASE, async () => {
    const rsaOnly = OAuthVerifier.create(config({ algorithms: ['RS256'] }), log);
    try {
      assert.equal((await refusal(rsaOnly, token(signJwt(ec, claimsFor('alice', ISSUER, AUDIENCE))))).code, 'OAUTH_ALGORITHM_REFUSED');
      assert.equal((await refusal(rsaOnly, token(signJwt(ps, claimsFor('alice', ISSUER, AUDIENCE))))).code, 'OAUTH_ALGORITHM_REFUSED');
    } finally {
      rsaOnly.close();
    }
  });

  test('a verified token is remembered by its HMAC until min(exp, token_cache_ms); an expired one is not taken from the cache', CASE, async () => {
    const fresh = OAuthVerifier.create(config(), log);
    try {
      const jwt = token(signJwt(rsa, claimsFor('dave', ISSUER, AUDIENCE)));
      await fresh.verify(jwt, signal);
      assert.equal(fresh.cachedTokens, 1);
      await fresh.verify(jwt, signal);
      assert.equal(fresh.cachedTokens, 1);
      // Expired beyond the skew: never remembered.
      const old = token(signJwt(rsa, claimsFor('dave', ISSUER, AUDIENCE, -3600)));
      await refusal(fresh, old);
      assert.equal(fresh.cachedTokens, 1);
    } finally {
      fresh.close();
    }
  });

  test('a JWKS file that is no JWKS, or holds only a symmetric key, is a config error naming oauth2.jwks_file', CASE, () => {
    const bad = join(dir, 'bad.json');
    writeFileSync(bad, '{"not": "a jwks"}');
    assert.throws(() => OAuthVerifier.create(config({ jwksFile: bad }), log), (e: unknown) => e instanceof MailfrontError && e.kind === 'config' && /oauth2\.jwks_file/.test(e.message));
    writeFileSync(bad, JSON.stringify({ keys: [{ kty: 'oct', k: 'c2VjcmV0LXNlY3JldC1zZWNyZXQ', kid: 'hmac' }] }));
    assert.throws(() => OAuthVerifier.create(config({ jwksFile: bad }), log), (e: unknown) => e instanceof MailfrontError && /no key mailfront can verify with.*symmetric/.test(e.message));
  });
});

describe('a JWKS URL', () => {
  test('fetched at start; an unknown kid fetches again at most once per interval, one fetch for many logins', CASE, async () => {
    const first = makeKey('url-1', 'RS256');
    const second = makeKey('url-2', 'ES256');
    // Made before the interval starts: made within it, fifty keys took more than the 1 s interval on
    // a busy machine (load 11), and the next made-up kid was rightly fetched for (3 fetches, not 2).
    const bogus = Array.from({ length: 50 }, (_, i) => token(signJwt(makeKey(`bogus-${i}`, 'ES256'), claimsFor('erin', ISSUER, AUDIENCE))));
    const idp = await JwksServer.start([first]);
    const verifier = OAuthVerifier.create(config({ jwksFile: undefined, jwksUrl: idp.url, jwksUnknownKidRefetchMs: 1_000 }), log);
    try {
      assert.equal((await verifier.verify(token(signJwt(first, claimsFor('erin', ISSUER, AUDIENCE))), signal)).user, 'erin@example.org');
      assert.equal(idp.requests, 1, 'the start fetch');
      // The IdP rotates; once the interval since the last fetch has passed, the new kid is fetched for.
      idp.keys = [first, second];
      const rotated = token(signJwt(second, claimsFor('erin', ISSUER, AUDIENCE)));
      await new Promise((r) => setTimeout(r, 1_050));
      const many = await Promise.all(Array.from({ length: 20 }, () => verifier.verify(rotated, signal)));
      assert.ok(many.every((v) => v.user === 'erin@example.org'));
      assert.equal(idp.requests, 2, 'twenty logins with a new kid: one fetch');
      // A flood of made-up kids: no fetch within the interval.
      for (const jwt of bogus) assert.equal((await refusal(verifier, jwt)).code, 'OAUTH_UNKNOWN_KEY');
      assert.equal(idp.requests, 2, 'made-up kids within the interval: no fetch');
    } finally {
      verifier.close();
      await idp.stop();
    }
  });

  test('an IdP down from the start: OAUTH_KEYS_UNAVAILABLE, a temporary failure; once it answers, logins go', CASE, async () => {
    const key = makeKey('late-1', 'RS256');
    const idp = await JwksServer.start([key]);
    idp.failWith = 503;
    const verifier = OAuthVerifier.create(config({ jwksFile: undefined, jwksUrl: idp.url, jwksUnknownKidRefetchMs: 1_000 }), log);
    try {
      const jwt = token(signJwt(key, claimsFor('frank', ISSUER, AUDIENCE)));
      const error = await refusal(verifier, jwt);
      assert.equal(error.code, 'OAUTH_KEYS_UNAVAILABLE');
      assert.equal(error.kind, 'auth-tempfail');
      assert.ok(lines.some((l) => l.includes('"event":"oauth.jwks_fetch_failed"') && l.includes('HTTP status 503')));
      idp.failWith = null;
      await new Promise((r) => setTimeout(r, 1_050));
      assert.equal((await verifier.verify(jwt, signal)).user, 'frank@example.org');
    } finally {
      verifier.close();
      await idp.stop();
    }
  });

  test('a key withdrawn from the URL stops its tokens, cached ones too', CASE, async () => {
    const old = makeKey('old-1', 'RS256');
    const next = makeKey('next-1', 'RS256');
    const idp = await JwksServer.start([old]);
    const verifier = OAuthVerifier.create(config({ jwksFile: undefined, jwksUrl: idp.url, jwksUnknownKidRefetchMs: 1_000 }), log);
    try {
      const jwt = token(signJwt(old, claimsFor('gina', ISSUER, AUDIENCE)));
      await verifier.verify(jwt, signal);
      assert.equal(verifier.cachedTokens, 1);
      idp.keys = [next];
      await new Promise((r) => setTimeout(r, 1_050));
      // A token of the new key brings the new set in; the old key's token is no longer taken, from the cache either.
      await verifier.verify(token(signJwt(next, claimsFor('gina', ISSUER, AUDIENCE))), signal);
      assert.equal((await refusal(verifier, jwt)).code, 'OAUTH_UNKNOWN_KEY');
    } finally {
      verifier.close();
      await idp.stop();
    }
  });
});

test('no log line holds a token or its signature', CASE, () => {
  assert.ok(tokens.length > 20);
  assert.ok(lines.length > 0);
  assertNoRegisteredSecret(lines, 'the verifier\'s log');
});
