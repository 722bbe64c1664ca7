/**
 * auth/oauth.ts with token introspection (RFC 7662) and OpenID discovery, against the IdP
 * stand-in (test/integration/oauth-idp.ts: a node http server on 127.0.0.1). Opaque tokens are
 * asked of the introspection endpoint with the client's HTTP basic credentials; the answer's
 * `active`, exp, iss, aud / client_id, token type and user claim are checked as a JWT's are; an
 * answer is remembered (active: token_cache_ms; refused: introspection_negative_cache_ms); the
 * IdP slow, failing, refusing mailfront's credentials or answering something else is an outage
 * (auth-tempfail), never a refused token; a flood of tokens asks the IdP at most
 * introspection_concurrency at once, one request per token. Discovery reads jwks_uri and
 * introspection_endpoint from <issuer>/.well-known/openid-configuration, and refuses a document
 * naming another issuer. No log line holds a token or the client secret.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { OAuthVerifier } from '../../src/auth/oauth.js';
import type { OAuthConfig } from '../../src/auth/oauth-config.js';
import { JWT_ALGORITHMS } from '../../src/auth/oauth-config.js';
import { Canceller } from '../../src/cancel.js';
import { MailfrontError } from '../../src/errors.js';
import { assertNoRegisteredSecret, capturedLogger, registerSecrets } from '../integration/front.js';
import { JwksServer, claimsFor, makeKey, signJwt } from '../integration/oauth-idp.js';
import { refusingPort } from '../integration/servers/index.js';

const ISSUER = 'https://idp.example.org/realms/mail';
const AUDIENCE = 'mail';
const CLIENT = { id: 'mailfront:proxy', secret: 'Intro-secret+/=:9f2c' };
registerSecrets([CLIENT.secret]);
const key = makeKey('url-rsa', 'RS256');

const { log, lines } = capturedLogger('debug');
const signal = new Canceller();
let idp: JwksServer;

before(async () => {
  idp = await JwksServer.start([key]);
  idp.clients.set(CLIENT.id, CLIENT.secret);
});
after(async () => {
  assertNoRegisteredSecret(lines, 'the introspection tests\' log');
  await idp?.stop();
});

function config(overrides: { [K in keyof OAuthConfig]?: OAuthConfig[K] | undefined } = {}): OAuthConfig {
  return {
    issuers: [ISSUER],
    audiences: [AUDIENCE],
    jwksUrl: idp.url,
    jwksRefreshMs: 600_000,
    jwksUnknownKidRefetchMs: 60_000,
    jwksTimeoutMs: 2_000,
    userClaim: 'email',
    clockSkewMs: 30_000,
    algorithms: [...JWT_ALGORITHMS],
    tokenCacheMs: 60_000,
    tokenCheck: 'auto',
    introspectionUrl: idp.introspectionUrl,
    clientId: CLIENT.id,
    clientSecret: CLIENT.secret,
    introspectionTimeoutMs: 1_000,
    introspectionConcurrency: 16,
    introspectionNegativeCacheMs: 10_000,
    ...overrides,
  } as OAuthConfig;
}

/** An opaque token the stand-in knows, for `user`, registered with the secret scans. */
function opaque(user: string, extra: Record<string, unknown> = {}): string {
  const token = idp.issue({ token_type: 'Bearer', client_id: 'thunderbird', ...claimsFor(user, ISSUER, AUDIENCE, 300, extra) });
  registerSecrets([token]);
  return token;
}

function madeUp(): string {
  const token = `opq_made_up_${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`;
  registerSecrets([token]);
  return token;
}

async function refusal(verifier: OAuthVerifier, token: string): Promise<MailfrontError> {
  try {
    await verifier.verify(token, signal);
  } catch (error) {
    assert.ok(error instanceof MailfrontError, String(error));
    return error;
  }
  assert.fail('the token was taken');
}

describe('token introspection (token_check auto)', () => {
  test('an opaque token is asked of the endpoint with the client\'s HTTP basic credentials, form-encoded, and taken when active; its answer is remembered', async () => {
    const verifier = OAuthVerifier.create(config(), log);
    try {
      const token = opaque('alice');
      const before = idp.introspectionRequests;
      assert.equal((await verifier.verify(token, signal)).user, 'alice@example.org');
      assert.equal(idp.introspectionRequests, before + 1);
      const seen = idp.introspectionsSeen.at(-1)!;
      assert.equal(seen.form['token'], token);
      assert.equal(seen.form['token_type_hint'], 'access_token');
      assert.equal(seen.contentType, 'application/x-www-form-urlencoded');
      // RFC 6749 §2.3.1: "mailfront:proxy" and the secret's "+", "/", "=" and ":" are form-encoded before base64.
      assert.equal(seen.authorization, `Basic ${Buffer.from('mailfront%3Aproxy:Intro-secret%2B%2F%3D%3A9f2c').toString('base64')}`);
      assert.equal((await verifier.verify(token, signal)).user, 'alice@example.org');
      assert.equal(idp.introspectionRequests, before + 1, 'the second login was answered by the cache');
    } finally {
      verifier.close();
    }
  });

  test('a JWT is checked locally, without asking the IdP; with token_check jwt an opaque token is refused as before', async () => {
    const verifier = OAuthVerifier.create(config(), log);
    const jwtOnly = OAuthVerifier.create(config({ tokenCheck: 'jwt' }), log);
    try {
      const jwt = signJwt(key, claimsFor('bob', ISSUER, AUDIENCE));
      registerSecrets([jwt, jwt.split('.')[2]!]);
      const before = idp.introspectionRequests;
      assert.equal((await verifier.verify(jwt, signal)).user, 'bob@example.org');
      assert.equal(idp.introspectionRequests, before);
      assert.equal((await refusal(jwtOnly, opaque('bob'))).code, 'OAUTH_TOKEN_MALFORMED');
      assert.equal(idp.introspectionRequests, before);
    } finally {
      verifier.close();
      jwtOnly.close();
    }
  });

  test('token_check introspect: a JWT the IdP revoked is refused, though its signature and times are good', async () => {
    const verifier = OAuthVerifier.create(config({ tokenCheck: 'introspect', tokenCacheMs: 0 }), log);
    try {
      const claims = claimsFor('carol', ISSUER, AUDIENCE);
      const jwt = signJwt(key, claims);
      registerSecrets([jwt, jwt.split('.')[2]!]);
      idp.know(jwt, claims);
      assert.equal((await verifier.verify(jwt, signal)).user, 'carol@example.org');
      idp.revoke(jwt);
      const error = await refusal(verifier, jwt);
      assert.equal(error.code, 'OAUTH_TOKEN_INACTIVE');
      assert.equal(error.kind, 'auth-failed');
    } finally {
      verifier.close();
    }
  });

  test('active false is OAUTH_TOKEN_INACTIVE, remembered for introspection_negative_cache_ms: the same token again does not ask the IdP', async () => {
    const verifier = OAuthVerifier.create(config(), log);
    try {
      const token = madeUp();
      const before = idp.introspectionRequests;
      for (let i = 0; i < 5; i++) {
        const error = await refusal(verifier, token);
        assert.equal(error.code, 'OAUTH_TOKEN_INACTIVE');
        assert.equal(error.kind, 'auth-failed');
      }
      assert.equal(idp.introspectionRequests, before + 1);
    } finally {
      verifier.close();
    }
  });

  test('the answer\'s claims are checked as a JWT\'s: exp, nbf, iss, aud (else client_id), the token type, the user claim, email_verified', async () => {
    const verifier = OAuthVerifier.create(config({ tokenCacheMs: 0 }), log);
    try {
      const cases: Array<[Record<string, unknown>, string]> = [
        [{ exp: Math.floor(Date.now() / 1000) - 600 }, 'OAUTH_TOKEN_EXPIRED'],
        [{ nbf: Math.floor(Date.now() / 1000) + 600 }, 'OAUTH_TOKEN_NOT_YET_VALID'],
        [{ exp: 1e300 }, 'OAUTH_TOKEN_MALFORMED'],
        [{ iss: 'https://evil.example.net/' }, 'OAUTH_WRONG_ISSUER'],
        [{ aud: ['account'] }, 'OAUTH_WRONG_AUDIENCE'],
        // No aud: the client the token was issued to must be one of oauth2.audiences.
        [{ aud: undefined }, 'OAUTH_WRONG_AUDIENCE'],
        [{ token_type: 'refresh_token' }, 'OAUTH_WRONG_TOKEN_TYPE'],
        [{ typ: 'Refresh' }, 'OAUTH_WRONG_TOKEN_TYPE'],
        [{ token_type: 'DPoP' }, 'OAUTH_WRONG_TOKEN_TYPE'],
        // fosite / Ory Hydra: a refresh token's answer has token_use and no token_type.
        [{ token_use: 'refresh_token' }, 'OAUTH_WRONG_TOKEN_TYPE'],
        // A sender-constrained token (RFC 8705): its certificate proof is no part of a mail login.
        [{ cnf: { 'x5t#S256': 'bwcK0esc3ACC3DB2Y5_lESsXE8o9ltc05O89jdN-dg2' } }, 'OAUTH_WRONG_TOKEN_TYPE'],
        [{ email: undefined }, 'OAUTH_NO_USER_CLAIM'],
        [{ email_verified: undefined }, 'OAUTH_EMAIL_UNVERIFIED'],
      ];
      for (const [extra, code] of cases) {
        const error = await refusal(verifier, opaque('dave', extra)).catch((e: unknown) => assert.fail(`${JSON.stringify(extra)}: ${String(e)}`));
        assert.equal(error.code, code, `${JSON.stringify(extra)}: ${error.message}`);
        assert.equal(error.kind, 'auth-failed');
      }
      // Taken: no aud but a client_id of oauth2.audiences; no iss (the issuer's own endpoint answers); no exp (remembered for token_cache_ms only).
      assert.equal((await verifier.verify(opaque('erin', { aud: undefined, client_id: AUDIENCE }), signal)).user, 'erin@example.org');
      assert.equal((await verifier.verify(opaque('erin', { iss: undefined, exp: undefined }), signal)).user, 'erin@example.org');
      assert.equal((await verifier.verify(opaque('erin', { token_use: 'access_token' }), signal)).user, 'erin@example.org');
    } finally {
      verifier.close();
    }
  });

  test('the IdP refusing mailfront\'s credentials (401), failing (500), slow, answering 1 MiB or no RFC 7662 answer: OAUTH_INTROSPECTION_UNAVAILABLE, auth-tempfail, not remembered', async () => {
    const verifier = OAuthVerifier.create(config({ introspectionTimeoutMs: 300 }), log);
    const wrongSecret = OAuthVerifier.create(config({ clientSecret: 'Not-the-secret-4d1e' }), log);
    registerSecrets(['Not-the-secret-4d1e']);
    try {
      const token = opaque('frank');
      const credentials = await refusal(wrongSecret, token);
      assert.equal(credentials.code, 'OAUTH_INTROSPECTION_UNAVAILABLE');
      assert.equal(credentials.kind, 'auth-tempfail');
      assert.match(credentials.message, /HTTP 401.*client_id and client_secret_file/);
      const injected: Array<[() => void, RegExp]> = [
        [() => (idp.introspectionFailWith = 500), /answered HTTP 500/],
        [() => (idp.introspectionDelayMs = 1_000), /no answer within 300 ms \(oauth2\.introspection_timeout_ms\)/],
        [() => (idp.introspectionBody = Buffer.alloc(1024 * 1024, 0x20)), /more than \d+ bytes/],
        [() => (idp.introspectionBody = '{"error":"not_found"}'), /without a boolean "active"/],
        [() => (idp.introspectionBody = '[true]'), /no JSON object/],
      ];
      for (const [inject, message] of injected) {
        inject();
        const started = performance.now();
        const error = await refusal(verifier, token);
        idp.heal();
        assert.equal(error.code, 'OAUTH_INTROSPECTION_UNAVAILABLE', error.message);
        assert.equal(error.kind, 'auth-tempfail');
        assert.match(error.message, message);
        assert.ok(performance.now() - started < 900, 'within the deadline');
      }
      // Nothing of the outage was remembered: the healthy IdP's answer is taken at once.
      assert.equal((await verifier.verify(token, signal)).user, 'frank@example.org');
    } finally {
      verifier.close();
      wrongSecret.close();
    }
  });

  test('a flood: 300 made-up tokens at once ask the IdP at most introspection_concurrency at a time; 50 logins with one token ask once', async () => {
    const verifier = OAuthVerifier.create(config({ introspectionConcurrency: 4, introspectionTimeoutMs: 5_000 }), log);
    try {
      idp.introspectionDelayMs = 20;
      idp.introspectionsPeak = 0;
      const before = idp.introspectionRequests;
      const tokens = Array.from({ length: 300 }, () => `opq_flood_${Math.random().toString(36).slice(2)}${Math.random().toString(36).slice(2)}`);
      registerSecrets(tokens);
      const results = await Promise.allSettled(tokens.map((t) => verifier.verify(t, signal)));
      assert.ok(results.every((r) => r.status === 'rejected' && r.reason instanceof MailfrontError && r.reason.code === 'OAUTH_TOKEN_INACTIVE'));
      assert.equal(idp.introspectionsPeak, 4);
      assert.equal(idp.introspectionRequests, before + 300);

      const one = opaque('gina');
      const many = await Promise.all(Array.from({ length: 50 }, () => verifier.verify(one, signal)));
      assert.ok(many.every((v) => v.user === 'gina@example.org'));
      assert.equal(idp.introspectionRequests, before + 301);
    } finally {
      idp.heal();
      verifier.close();
    }
  });

  test('a flood past the deadline: the logins beyond what the IdP answers in introspection_timeout_ms fail at it as an outage, none waits longer', async () => {
    const verifier = OAuthVerifier.create(config({ introspectionConcurrency: 2, introspectionTimeoutMs: 400, introspectionNegativeCacheMs: 0 }), log);
    try {
      idp.introspectionDelayMs = 150;
      const started = performance.now();
      const results = await Promise.allSettled(Array.from({ length: 40 }, () => verifier.verify(madeUp(), signal)));
      const codes = results.map((r) => (r.status === 'rejected' && r.reason instanceof MailfrontError ? r.reason.code : 'taken'));
      assert.ok(codes.includes('OAUTH_TOKEN_INACTIVE'));
      assert.ok(codes.filter((c) => c === 'OAUTH_INTROSPECTION_UNAVAILABLE').length >= 30, codes.join(' '));
      assert.ok(performance.now() - started < 1_000);
    } finally {
      idp.heal();
      verifier.close();
    }
  });
});

describe('OpenID discovery', () => {
  test('discovery reads jwks_uri and introspection_endpoint from the issuer\'s document: a JWT is verified with its keys, an opaque token introspected', async () => {
    const verifier = OAuthVerifier.create(config({ issuers: [idp.issuer], jwksUrl: undefined, introspectionUrl: undefined, openidConfigurationUrl: `${idp.issuer}/.well-known/openid-configuration`, discoveryIssuers: [idp.issuer] }), log);
    try {
      const jwt = signJwt(key, claimsFor('hank', idp.issuer, AUDIENCE));
      registerSecrets([jwt, jwt.split('.')[2]!]);
      assert.equal((await verifier.verify(jwt, signal)).user, 'hank@example.org');
      const token = idp.issue({ ...claimsFor('ivy', idp.issuer, AUDIENCE), token_type: 'Bearer' });
      registerSecrets([token]);
      assert.equal((await verifier.verify(token, signal)).user, 'ivy@example.org');
      assert.ok(lines.some((l) => l.includes('"oauth.discovery_loaded"') && l.includes(idp.introspectionUrl)));
    } finally {
      verifier.close();
    }
  });

  test('a document naming another issuer, or an http jwks_uri beyond loopback, is not used: logins wait for it as an outage (auth-tempfail)', async () => {
    const documents = [
      { issuer: 'https://evil.example.net/realms/mail', jwks_uri: idp.url, introspection_endpoint: idp.introspectionUrl },
      { issuer: idp.issuer, jwks_uri: 'http://keys.example.net/certs', introspection_endpoint: idp.introspectionUrl },
    ];
    for (const document of documents) {
      idp.discoveryDocument = document;
      const mark = lines.length;
      const verifier = OAuthVerifier.create(config({ issuers: [idp.issuer], jwksUrl: undefined, introspectionUrl: undefined, openidConfigurationUrl: idp.discoveryUrl, discoveryIssuers: [idp.issuer] }), log);
      try {
        const jwt = signJwt(key, claimsFor('jack', idp.issuer, AUDIENCE));
        registerSecrets([jwt, jwt.split('.')[2]!]);
        const error = await refusal(verifier, jwt);
        assert.equal(error.code, 'OAUTH_KEYS_UNAVAILABLE', error.message);
        assert.equal(error.kind, 'auth-tempfail');
        const opaqueError = await refusal(verifier, madeUp());
        assert.equal(opaqueError.code, 'OAUTH_INTROSPECTION_UNAVAILABLE', opaqueError.message);
        assert.ok(lines.slice(mark).some((l) => l.includes('"oauth.discovery_failed"')), 'logged');
      } finally {
        verifier.close();
      }
    }
    idp.heal();
  });
});

test('a secret written into the query of introspection_url or jwks_url is in no error or log line: the values hidden, the parameters named', async () => {
  const introspectionSecret = 'Query-client-secret-6a1e';
  const jwksKey = 'Query-jwks-apikey-0b93';
  registerSecrets([introspectionSecret, jwksKey]);
  const introspectionUrl = `http://127.0.0.1:${await refusingPort()}/introspect?client_secret=${introspectionSecret}`;
  const jwksUrl = `http://127.0.0.1:${await refusingPort()}/certs?apikey=${jwksKey}`;
  const mark = lines.length;
  const verifier = OAuthVerifier.create(config({ introspectionUrl, jwksUrl }), log);
  try {
    const introspection = await refusal(verifier, madeUp());
    assert.equal(introspection.code, 'OAUTH_INTROSPECTION_UNAVAILABLE', introspection.message);
    assert.ok(introspection.message.includes(`${introspectionUrl.replace(/\?.*/, '')}?client_secret=[hidden] (oauth2 introspection)`), introspection.message);
    const jwt = signJwt(key, claimsFor('gina', ISSUER, AUDIENCE));
    registerSecrets([jwt, jwt.split('.')[2]!]);
    const noKeys = await refusal(verifier, jwt);
    assert.equal(noKeys.kind, 'auth-tempfail', noKeys.message);
    assert.ok(noKeys.message.includes(`${jwksUrl.replace(/\?.*/, '')}?apikey=[hidden] (oauth2.jwks_url)`), noKeys.message);
    for (const message of [introspection.message, noKeys.message]) assert.ok(!message.includes(introspectionSecret) && !message.includes(jwksKey), message);
    const failed = lines.slice(mark).map((l) => JSON.parse(l) as Record<string, unknown>).filter((l) => l['event'] === 'oauth.jwks_fetch_failed');
    assert.ok(failed.length > 0, lines.slice(mark).join('\n'));
    for (const line of failed) assert.equal(line['source'], `${jwksUrl.replace(/\?.*/, '')}?apikey=[hidden]`);
    const text = lines.slice(mark).join('\n');
    assert.ok(!text.includes(introspectionSecret) && !text.includes(jwksKey), text);
  } finally {
    verifier.close();
  }
});

test('the log\'s redaction list, the second line of defence, covers the client secret under either name', () => {
  const { log: redacting, lines: written } = capturedLogger('info');
  redacting.info({ event: 'test.redaction', clientSecret: 'Redact-me-client-secret-1' }, 'a line that should never carry a secret');
  redacting.info({ event: 'test.redaction', client_secret: 'Redact-me-client-secret-2' }, 'a line that should never carry a secret');
  const text = written.join('\n');
  assert.ok(!text.includes('Redact-me-client-secret'), text);
  assert.match(text, /"clientSecret":"\[redacted\]"/);
  assert.match(text, /"client_secret":"\[redacted\]"/);
});
